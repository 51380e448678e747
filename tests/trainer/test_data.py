"""The trainer's data: text sources read as the spec's declared types, like `conveyor ingest`."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_fixtures import make_config

from conveyor.ingest.spec import FeatureSpec, Label, NumericFeature
from conveyor.trainer.data import load_prepared, make_loaders, prepare


@pytest.mark.parametrize("given_spec", [False, True])
def test_csv_is_read_as_the_spec_types_not_the_first_file(tmp_path: Path, given_spec: bool) -> None:
    """Whole numbers in a.csv, fractions in b.csv: inferred per file, b's x would be int64 and
    every row a ``type`` error; as the spec's float64, every row of both is good."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(40)))
    (data / "b.csv").write_text("x,y\n" + "".join(f"{i}.5,{i % 2}\n" for i in range(40)))
    overrides: dict = {"key": None, "val_fraction": 0.0}
    if given_spec:  # a pinned spec without stats.json beside it: profiled by prepare
        spec_path = tmp_path / "pinned" / "spec.json"
        spec_path.parent.mkdir()
        label = Label("y", "binary", [0, 1])
        FeatureSpec(label=label, numeric=[NumericFeature("x")]).save(spec_path)
        overrides.update(spec=str(spec_path), label=None)
    cfg = make_config(tmp_path, data, **overrides)
    prepare(cfg)
    spec, stats = load_prepared(cfg)
    assert [f.name for f in spec.numeric] == ["x"] and stats["rows"] == 80
    train, val = make_loaders(cfg, spec, stats, world_size=1, rank=0)
    assert val is None
    rows = sum(len(b) for b in train)
    acc = train.epoch_accounting[0].to_dict()
    assert rows == 80 and acc["rows_quarantined"] == 0 and acc["quarantined_by_rule"] == {}
