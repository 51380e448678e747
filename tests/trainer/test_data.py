"""The trainer's data: text sources read as the spec's declared types, like `conveyor ingest`."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_fixtures import make_config

from conveyor.ingest.spec import FeatureSpec, Label, NumericFeature
from conveyor.trainer.data import load_prepared, make_loaders, prepare
from conveyor.trainer.errors import CheckpointError


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


def test_resume_before_a_checkpoint_reuses_the_spec_only_with_its_options(tmp_path: Path) -> None:
    """A run killed before its first checkpoint, resumed with another --label, trained and
    exported a model of the first run's label (its spec.json), exit 0: options were only
    compared against a checkpoint."""
    data = tmp_path / "data"
    data.mkdir()
    rows = "".join(f"{i},{i % 3 * 0.5},{i % 2},{'abc'[i % 3]}\n" for i in range(30))
    (data / "a.csv").write_text("id,x,y,z\n" + rows)
    prepare(make_config(tmp_path, data))
    made = (tmp_path / "run" / "spec.json").stat().st_mtime_ns
    prepare(make_config(tmp_path, data, resume=True))  # the same options: the same files
    assert (tmp_path / "run" / "spec.json").stat().st_mtime_ns == made
    for change, message in [
        ({"label": "z"}, "--label is z but the run's spec .* was made with y"),
        ({"key": None}, "--key is not set but the run's spec .* was made with id"),
        ({"weight": "x"}, "--weight is x but .* made with not set"),
    ]:
        with pytest.raises(CheckpointError, match=f"^--resume: {message}; they must match"):
            prepare(make_config(tmp_path, data, resume=True, **change))
    spec, _ = load_prepared(make_config(tmp_path, data))
    assert spec.label.name == "y"
