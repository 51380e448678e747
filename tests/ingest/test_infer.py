"""Spec inference: hive partition columns are ignored unless asked for."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conveyor.cli import main
from conveyor.ingest.infer import infer_spec
from conveyor.ingest.loader import StreamLoader
from conveyor.ingest.source import Source
from conveyor.ingest.spec import FeatureSpec


@pytest.fixture
def hive(tmp_path):
    """Two levels of partitions: ``day`` (strings) and ``shard`` (integers)."""
    rng = np.random.default_rng(0)
    for day in ("2026-01-01", "2026-01-02"):
        for shard in (0, 1):
            part = tmp_path / "data" / f"day={day}" / f"shard={shard}"
            part.mkdir(parents=True)
            t = pa.table({"x": rng.standard_normal(20), "c": ["u", "v"] * 10, "y": [0, 1] * 10})
            pq.write_table(t, part / "part-0.parquet")
    return tmp_path / "data"


def test_partition_columns_are_ignored_by_default(hive):
    source = Source(str(hive))
    assert source.partition_names == ["day", "shard"]
    spec = infer_spec(source, "y")
    assert spec.numeric_names == ["x"] and spec.categorical_names == ["c"]
    assert spec.ignore == ["day", "shard"]
    # The spec reads its own source: no extra_column rejection, every row out.
    loader = StreamLoader(source, spec, batch_size=16)
    assert sum(len(b) for b in loader) == 80 and loader.accounting.rows_quarantined == 0


def test_partition_columns_included_on_request(hive):
    spec = infer_spec(Source(str(hive)), "y", include_partitions=True)
    assert spec.numeric_names == ["x", "shard"] and spec.categorical_names == ["c", "day"]
    assert spec.categorical[1].vocab == ["2026-01-01", "2026-01-02"] and spec.ignore == []


def test_a_partition_column_named_as_a_role_keeps_it(hive):
    spec = infer_spec(Source(str(hive)), "y", key="shard")
    assert spec.key == "shard" and spec.ignore == ["day"]


@pytest.mark.parametrize("flag", [False, True])
def test_profile_cli_flag(hive, tmp_path, flag):
    out = tmp_path / f"out{flag}"
    argv = ["ingest", "profile", str(hive), "--label", "y", "--out", str(out)]
    assert main(argv + (["--include-partition-columns"] if flag else [])) == 0
    spec = FeatureSpec.load(out / "spec.json")
    assert ("day" in spec.categorical_names) is flag and ("day" in spec.ignore) is not flag


def test_columns_without_a_value_are_ignored_in_every_format(tmp_path):
    # A Parquet float64 (or string) column of nulls was inferred a required feature: the
    # null rule then quarantined every row, and `conveyor train` found no valid rows. A
    # CSV's column of empty cells (typed null) was already ignored.
    table = pa.table(
        {
            "x": [0.5, 1.5, 2.5, 3.5],
            "allnull": pa.array([None] * 4, pa.float64()),
            "nocat": pa.array([None] * 4, pa.string()),
            "c": ["u", "v", "u", "v"],
            "y": [0, 1, 0, 1],
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "d.csv").write_text("x,allnull,nocat,c,y\n0.5,,,u,0\n1.5,,,v,1\n")
    for path in (tmp_path / "d.parquet", tmp_path / "csv"):
        spec = infer_spec(Source(str(path)), "y")
        assert spec.numeric_names == ["x"], path
        assert [f.name for f in spec.categorical] == ["c"], path
        assert spec.ignore == ["allnull", "nocat"], path
