import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from conveyor.ingest.errors import SourceError
from conveyor.ingest.source import Source
from tests.ingest.conftest import EXT, sample_table, write


def read_all(src: Source, **kw) -> pa.Table:
    batches = [c.batch for p in src.pieces() for c in src.read(p, **kw)]
    return pa.Table.from_batches(batches)


def test_round_trip_every_format(tmp_path, fmt):
    table = sample_table()
    path = tmp_path / f"d.{EXT[fmt]}"
    write(table, path, fmt)
    src = Source(str(path))
    assert src.format == fmt
    assert read_all(src).equals(table)


def test_directory_with_hive_partitions_and_glob(tmp_path):
    t = sample_table(10)
    for year in (2020, 2021):
        (tmp_path / f"year={year}").mkdir()
        write(t, tmp_path / f"year={year}" / "part.parquet", "parquet")
    (tmp_path / "_SUCCESS").write_text("")
    got = read_all(Source(str(tmp_path)))
    assert got.num_rows == 20 and sorted(set(got.column("year").to_pylist())) == [2020, 2021]
    globbed = Source(str(tmp_path / "year=2021" / "*.parquet"))
    assert read_all(globbed).num_rows == 10
    uri = Source("file://" + str(tmp_path))
    assert read_all(uri).num_rows == 20


def test_projection_and_filter_pushdown(tmp_path, fmt):
    path = tmp_path / f"d.{EXT[fmt]}"
    write(sample_table(), path, fmt)
    got = read_all(Source(str(path)), columns=["k"], filter=ds.field("k") >= 40)
    assert got.column_names == ["k"] and got.column("k").to_pylist() == list(range(40, 50))


def test_missing_source(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        Source(str(tmp_path / "nope.parquet"))


def test_empty_file(tmp_path):
    (tmp_path / "e.parquet").write_bytes(b"")
    with pytest.raises(SourceError, match=r"e\.parquet: empty file"):
        Source(str(tmp_path / "e.parquet"))


def test_corrupt_file(tmp_path):
    (tmp_path / "c.parquet").write_bytes(b"this is not parquet at all")
    with pytest.raises(SourceError, match=r"c\.parquet: corrupt"):
        Source(str(tmp_path / "c.parquet"))


def test_truncated_file(tmp_path):
    write(sample_table(), tmp_path / "t.parquet", "parquet")
    data = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "t.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"t\.parquet: corrupt"):
        Source(str(tmp_path / "t.parquet"))


def test_schema_change_mid_dataset(tmp_path):
    write(sample_table(), tmp_path / "a.parquet", "parquet")
    pq.write_table(sample_table().drop(["x"]), tmp_path / "b.parquet")
    with pytest.raises(SourceError, match=r"b\.parquet: schema differs .*missing columns \['x'\]"):
        Source(str(tmp_path))


def test_type_change_mid_dataset(tmp_path):
    write(sample_table(), tmp_path / "a.parquet", "parquet")
    t = sample_table()
    pq.write_table(t.set_column(1, "k", t.column("k").cast(pa.string())), tmp_path / "b.parquet")
    with pytest.raises(SourceError, match="column 'k' is string, not int64"):
        Source(str(tmp_path))


def test_ragged_csv_row_is_reported_not_dropped(tmp_path):
    (tmp_path / "r.csv").write_text("x,k,c,y\n1,1,a,0\n2,2,b,1,EXTRA\n3,3,c,1\n")
    src = Source(str(tmp_path / "r.csv"))
    chunks = [c for p in src.pieces() for c in src.read(p)]
    bad = [b for c in chunks for b in c.bad_lines]
    assert [(b.row, b.text) for b in bad] == [(1, "2,2,b,1,EXTRA")]
    assert [r for c in chunks for r in c.rows.tolist()] == [0, 2]


def test_unparseable_csv_value_is_marked(tmp_path):
    # Types are inferred from the first 1 MiB block; the bad value sits beyond it.
    n = 200_000
    (tmp_path / "v.csv").write_text("x,k\n" + "1.5,1\n" * n + "abc,3\n")
    src = Source(str(tmp_path / "v.csv"))
    assert src.schema.field("x").type == pa.float64()
    chunks = list(src.read(src.pieces()[0]))
    errors = [i for c in chunks for i in c.rows[c.parse_errors.get("x", [])].tolist()]
    assert errors == [n]
    last = chunks[-1]
    assert last.batch.column("x")[-1].as_py() is None
    assert last.raw.column("x")[-1].as_py() == "abc"


def test_json_with_mixed_types_keeps_good_rows(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"x": 1.5}\n{"x": "oops"}\n{not json\n{"x": 2}\n')
    src = Source(str(tmp_path / "m.jsonl"))
    (chunk,) = list(src.read(src.pieces()[0]))
    # Mixed types in the inspected head make the column a string; the broken line is reported.
    assert chunk.batch.column("x").to_pylist() == ["1.5", "oops", "2"]
    assert [b.row for b in chunk.bad_lines] == [2]
