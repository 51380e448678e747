"""The hold-out split: disjoint, complete, reproducible, independent of sharding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from trainer_fixtures import make_config, tabular

from conveyor.ingest.spec import FeatureSpec, Label, NumericFeature
from conveyor.ingest.split import SplitConfig
from conveyor.trainer.errors import TrainerError
from conveyor.trainer.split import holdout, holdout_filters


def _spec(key: str | None = "id") -> FeatureSpec:
    return FeatureSpec(
        label=Label("y", "binary", [0, 1]),
        numeric=[NumericFeature(n) for n in ("x0", "x1", "x2")],
        key=key,
    )


def test_split_is_a_partition_near_the_fraction() -> None:
    table = tabular(20_000)
    train, val = holdout_filters(_spec(), table.schema, 0.2, seed=0)
    tr, va = table.filter(train), table.filter(val)
    assert tr.num_rows + va.num_rows == table.num_rows
    assert not set(tr["id"].to_pylist()) & set(va["id"].to_pylist())
    assert va.num_rows / table.num_rows == pytest.approx(0.2, abs=0.015)


def test_holdout_uses_the_key_else_the_reader_split() -> None:
    schema = tabular(10).schema
    assert holdout(_spec(), schema, 0.2).method == "key:id"
    assert holdout(_spec(None), schema, 0.2, column="id").method == "key:id"
    hold = holdout(_spec(None), schema, 0.2, seed=3)
    assert hold.method == "position" and hold.train_filter is None is hold.val_filter
    assert hold.train_split == SplitConfig(0.2, 3, "train")
    assert hold.val_split == SplitConfig(0.2, 3, "val")
    assert holdout(_spec(None), schema, 0.0).method == "none"
    with pytest.raises(TrainerError, match="no integer or timestamp key"):
        holdout_filters(_spec(None), schema, 0.2)


def test_split_depends_on_seed_and_not_on_row_order() -> None:
    table = tabular(5000)
    shuffled = table.take(np.random.default_rng(1).permutation(table.num_rows))
    _, val = holdout_filters(_spec(), table.schema, 0.3, seed=0)
    _, val_other_seed = holdout_filters(_spec(), table.schema, 0.3, seed=1)
    ids = set(table.filter(val)["id"].to_pylist())
    assert ids == set(shuffled.filter(val)["id"].to_pylist())
    assert ids != set(table.filter(val_other_seed)["id"].to_pylist())


def test_any_seed_in_range_salts_the_split() -> None:
    # seed * 0x9E3779B1 passed int64 from seed 2^31 and raised OverflowError; it wraps now,
    # leaving the salts of smaller seeds (every split made before) as they were.
    table = tabular(2000)
    splits = [set(table.filter(holdout_filters(_spec(), table.schema, 0.3, seed=s)[1])["id"]
                  .to_pylist()) for s in (7, 2**40 + 7, 2**63 - 1)]  # fmt: skip
    assert all(500 < len(ids) < 700 for ids in splits) and splits[0] != splits[1]


def test_zero_fraction_means_no_split_and_bad_columns_are_errors() -> None:
    table = tabular(10)
    assert holdout_filters(_spec(), table.schema, 0.0) == (None, None)
    with pytest.raises(TrainerError, match="must be an integer or a timestamp"):
        holdout_filters(_spec(), table.schema, 0.2, column="color")
    with pytest.raises(TrainerError, match="not in the data"):
        holdout_filters(_spec(), table.schema, 0.2, column="nope")


@pytest.mark.parametrize("key", ["id", None])
def test_loaders_read_disjoint_splits_over_ranks(tmp_path: Path, key: str | None) -> None:
    from conveyor.trainer.data import load_prepared, make_loaders, prepare

    path = tmp_path / "d.parquet"
    pq.write_table(tabular(1000), path, row_group_size=100)
    cfg = make_config(tmp_path, path, val_fraction=0.25, prefetch=0, key=key)
    prepare(cfg)
    spec, stats = load_prepared(cfg)
    seen = {"train": [], "val": []}
    for rank in range(2):
        train, val = make_loaders(cfg, spec, stats, world_size=2, rank=rank)
        for name, loader in (("train", train), ("val", val)):
            seen[name] += [tuple(r) for b in loader for r in b.features.tolist()]
    assert len(seen["train"]) + len(seen["val"]) == 1000
    assert not set(seen["train"]) & set(seen["val"])
    assert len(seen["val"]) == pytest.approx(250, abs=45)
    # The counts were cached in the run directory: one entry per piece and part without a key
    # (the key path's filters too), so other ranks and a resumed run need not count.
    assert (tmp_path / "run" / "row_counts.json").exists()


def test_int64_keys_keep_their_split() -> None:
    # Pinned buckets: the split of every run made so far must not move.
    from conveyor.trainer.split import _hashable, bucket

    table = pa.table({"k": pa.array([0, 5, -1, 7, 2**62], pa.int64())})
    expr = bucket(_hashable("k", table.schema), seed=0)
    buckets = ds.dataset(table).to_table(columns={"b": expr})["b"].to_pylist()
    assert buckets[:4] == [0, 5472, 51334, 33876]


@pytest.mark.parametrize("kind", ["uint64", "date32"])
def test_uint64_and_date32_split_columns_are_hashed(tmp_path: Path, kind: str) -> None:
    """A uint64 value >= 2**63 failed the checked cast to int64, and date32 has no int64 cast;
    the reader reported either as a "corrupt or truncated parquet file"."""
    from conveyor.trainer.data import load_prepared, make_loaders, prepare

    n = 400
    if kind == "uint64":
        column = pa.array(np.arange(n, dtype=np.uint64) + np.uint64(2**63 - 200), pa.uint64())
    else:
        column = pa.array(np.arange(n, dtype=np.int32) - 200, pa.int32()).cast(pa.date32())
    table = tabular(n).drop_columns(["id"]).append_column("k", column)
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    train_f, val_f = holdout_filters(_spec(None), table.schema, 0.25, column="k")
    val_rows = table.filter(val_f).num_rows
    assert table.filter(train_f).num_rows + val_rows == n and 50 < val_rows < 150
    again = holdout_filters(_spec(None), table.schema, 0.25, column="k")[1]
    assert table.filter(again).equals(table.filter(val_f))  # the same rows every time
    cfg = make_config(tmp_path, path, key=None, split_column="k", prefetch=0, val_fraction=0.25)
    prepare(cfg)
    spec, stats = load_prepared(cfg)
    train, val = make_loaders(cfg, spec, stats, world_size=1, rank=0)
    assert sum(len(b) for b in train) + sum(len(b) for b in val) == n
    assert sum(len(b) for b in val) == val_rows
