"""Input a run cannot train on well is refused with one line naming the flag, file or column,
before training where it can be known then, and at the end of an epoch otherwise (nothing
exported)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from trainer_fixtures import make_config, tabular, write_spec

from conveyor.ingest.spec import FeatureSpec, Label, NumericFeature
from conveyor.trainer.data import prepare
from conveyor.trainer.errors import TrainerError
from conveyor.trainer.launch import DistEnv
from conveyor.trainer.loop import run_worker


def _train(cfg):
    prepare(cfg)
    return run_worker(cfg, DistEnv(), prepared=True)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"lr": math.nan}, "--lr must be a finite number, got nan"),
        ({"lr": math.inf}, "--lr must be a finite number, got inf"),
        ({"lr": 1e38}, "--lr must be < "),
        ({"weight_decay": math.nan}, "--weight-decay must be a finite number"),
        ({"clip_norm": math.inf}, "--clip-norm must be a finite number"),
        ({"min_lr_ratio": math.nan}, "--min-lr-ratio must be a finite number"),
        ({"min_lr_ratio": -1.0}, r"--min-lr-ratio must be in \[0, 1\], got -1.0"),
        ({"min_lr_ratio": 1.5}, r"--min-lr-ratio must be in \[0, 1\], got 1.5"),
        ({"shuffle_buffer": 0}, "--shuffle-buffer must be >= 1 rows, got 0"),
        ({"shuffle_buffer": -5}, "--shuffle-buffer must be >= 1 rows, got -5"),
        ({"dropout": math.nan}, "--dropout must be in"),
        ({"val_fraction": math.nan}, "--val-fraction must be in"),
    ],
)
def test_non_finite_or_out_of_range_options_are_refused(
    tmp_path: Path, option: dict, message: str
) -> None:
    # `nan <= 0` is False: a NaN --lr reached torch (a traceback), an infinite one trained
    # NaN for every epoch and exported it, and --min-lr-ratio -1 made the rate negative.
    with pytest.raises(TrainerError, match=message):
        make_config(tmp_path, tmp_path / "d.parquet", **option)
    make_config(tmp_path, tmp_path / "d.parquet", min_lr_ratio=1.0, shuffle_buffer=1)


def test_a_diverged_run_stops_at_the_epoch_end_and_exports_nothing(
    tmp_path: Path, dataset: Path
) -> None:
    repo = tmp_path / "repo"
    cfg = make_config(
        tmp_path,
        dataset,
        lr=1e30,
        warmup_steps=0,
        clip_norm=0.0,
        epochs=2,
        model_repository=str(repo),
        model_name="m",
    )
    with pytest.raises(TrainerError, match=r"epoch 0: the training loss is nan .*exported"):
        _train(cfg)
    assert not (repo / "m").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _pinned(tmp_path: Path, stats: dict | None, **spec_kw) -> Path:
    """A spec.json of numeric x0..x2 (and ``spec_kw``), with ``stats`` as stats.json beside."""
    kw = {
        "numeric": [NumericFeature(n) for n in ("x0", "x1", "x2")],
        "key": "id",
        "ignore": ["color", "shop"],
        **spec_kw,
    }
    spec = FeatureSpec(label=Label("y", "binary", [0, 1]), **kw)
    path = tmp_path / "pinned" / "spec.json"
    path.parent.mkdir(exist_ok=True)
    spec.save(path)
    if stats is not None:
        (path.parent / "stats.json").write_text(json.dumps(stats))
    return path


def test_stats_beside_the_spec_without_a_feature_is_named(tmp_path: Path, dataset: Path) -> None:
    # It failed in every worker with a bare KeyError: 'x2' from build_model.
    numeric = {n: {"count": 10, "mean": 0.0, "std": 1.0, "min": 0, "max": 1} for n in ("x0", "x1")}
    spec = _pinned(tmp_path, {"numeric": numeric})
    cfg = make_config(tmp_path, dataset, spec=str(spec), label=None)
    with pytest.raises(TrainerError, match=r"stats.json: no statistics of numeric feature 'x2'"):
        prepare(cfg)
    numeric["x2"] = {"mean": None, "std": 1.0}
    (spec.parent / "stats.json").write_text(json.dumps({"numeric": numeric}))
    with pytest.raises(TrainerError, match=r"feature 'x2' has mean None, not a finite"):
        prepare(cfg)


def test_regression_stats_need_the_label_mean_and_std(tmp_path: Path) -> None:
    table = tabular(200, task="regression")
    data = tmp_path / "d.parquet"
    pq.write_table(table, data)
    spec = write_spec(tmp_path, table, "regression")
    numeric = {n: {"mean": 0.0, "std": 1.0} for n in ("x0", "x1", "x2")}
    (spec.parent / "stats.json").write_text(json.dumps({"numeric": numeric, "label": {}}))
    cfg = make_config(tmp_path, data, spec=str(spec), label=None)
    with pytest.raises(TrainerError, match=r"regression label 'y' has mean None"):
        prepare(cfg)


def test_a_spec_without_features_is_refused_before_training(tmp_path: Path) -> None:
    data = tmp_path / "d.parquet"
    pq.write_table(tabular(100).select(["id", "y"]), data)
    # Inferred: it trained a bias-only model (or the whole run, then failed at export).
    with pytest.raises(TrainerError, match=r"inferred from .*d.parquet .*has no features"):
        prepare(make_config(tmp_path / "a", data))
    spec = _pinned(tmp_path, None, numeric=[])
    with pytest.raises(TrainerError, match=r"pinned/spec.json: the spec has no features"):
        prepare(make_config(tmp_path / "b", data, spec=str(spec), label=None))
    assert not (tmp_path / "b" / "run" / "stats.json").exists()  # refused before profiling


@pytest.mark.parametrize(
    ("value", "message"), [(0.0, "is 0 in every row"), (-1.0, "has negative values")]
)
def test_zero_or_negative_weights_are_refused(tmp_path: Path, value: float, message: str) -> None:
    table = tabular(200).append_column("w", pa.array(np.full(200, value)))
    data = tmp_path / "d.parquet"
    pq.write_table(table, data)
    with pytest.raises(TrainerError, match=f"weight column 'w' {message}"):
        prepare(make_config(tmp_path, data, weight="w"))


def test_an_epoch_whose_weights_sum_to_zero_stops_the_run(tmp_path: Path) -> None:
    # Stats without the weight's profile (hand-written): only the epoch's sum can tell.
    table = tabular(200).append_column("w", pa.array(np.zeros(200)))
    data = tmp_path / "d.parquet"
    pq.write_table(table, data)
    numeric = {n: {"mean": 0.0, "std": 1.0} for n in ("x0", "x1", "x2")}
    spec = _pinned(tmp_path, {"numeric": numeric}, weight="w")
    repo = tmp_path / "repo"
    cfg = make_config(
        tmp_path, data, spec=str(spec), label=None, model_repository=str(repo), model_name="m"
    )
    with pytest.raises(TrainerError, match=r"epoch 0: the weight column 'w' sums to <= 0"):
        _train(cfg)
    assert not repo.exists()


def test_no_valid_rows_names_the_column_and_the_rule(tmp_path: Path) -> None:
    # A spec that makes a column of nulls a feature (an inferred one ignores it).
    table = tabular(100).append_column("z", pa.array([None] * 100, pa.float64()))
    data = tmp_path / "d.parquet"
    pq.write_table(table, data)
    spec = FeatureSpec.load(write_spec(tmp_path, table))
    spec = dataclasses.replace(spec, numeric=[*spec.numeric, NumericFeature("z")])
    spec.save(tmp_path / "spec" / "spec.json")
    with pytest.raises(TrainerError) as info:
        prepare(make_config(tmp_path, data, spec=str(tmp_path / "spec" / "spec.json"), label=None))
    message = str(info.value)
    assert "no valid rows to train on: all 100 rows" in message
    assert "null: 100" in message and "column 'z'" in message, message
