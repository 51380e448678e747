"""The quarantine file keeps every value when later tables' types differ from the first's."""

import json

import pyarrow as pa
import pyarrow.parquet as pq

from conveyor.ingest.quarantine import QuarantineWriter
from conveyor.ingest.scan import run_scan
from conveyor.ingest.source import Source
from conveyor.ingest.spec import FeatureSpec, Label, NumericFeature


def rows(**cols) -> pa.Table:
    n = len(next(iter(cols.values())))
    return pa.table({**cols, "_file": ["f"] * n})


def test_a_column_that_does_not_cast_is_widened_and_earlier_rows_rewritten(tmp_path):
    path = tmp_path / "q.parquet"
    with QuarantineWriter(path) as writer:
        writer.write_table(rows(x=[1.0, 2.5], n=pa.nulls(2), k=[1, 2], nest=[[1], [2, 3]]))
        writer.write_table(rows(x=["oops", "3.0"], n=[7, 8], k=[3.0, 4.0], nest=["a", None]))
        writer.write_table(rows(x=[4.0], n=[9], k=[5.5], nest=[[4]], extra=["e"]))
    table = pq.read_table(path)
    assert writer.rows == 5 and table.num_rows == 5
    assert table.column_names == ["x", "n", "k", "nest", "extra", "_file"]
    got = table.to_pydict()
    assert got["x"] == ["1", "2.5", "oops", "3.0", "4"]  # text stays text; floats as text
    assert got["n"] == [None, None, 7, 8, 9]  # an all-null column takes the later type
    assert table.schema.field("n").type == pa.int64()
    assert got["k"] == ["1", "2", "3", "4", "5.5"]  # 3.0 fit int64; 5.5 did not
    assert [json.loads(v) if v and v[0] == "[" else v for v in got["nest"]] == [
        [1],
        [2, 3],
        "a",
        None,
        [4],
    ]
    assert got["extra"] == [None] * 4 + ["e"]
    assert not list(tmp_path.glob("*.widening"))


def test_validate_keeps_json_rows_read_typed_and_as_text(tmp_path):
    """a.jsonl reads typed; b.jsonl has a broken line, so it is re-read line by line as text:
    the quarantine file holds every quarantined row's values (no column nulled)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"x": 1.0, "y": 0}\n{"x": 2.0, "y": null}\n')
    (data / "b.jsonl").write_text(
        '{"x": 3.0, "y": 1}\n{"x": "oops", "y": 0}\n{"x": 7.25, "y": 5}\n{"x": 4.0,\n'
    )
    spec = FeatureSpec(label=Label("y", "binary", [0, 1]), numeric=[NumericFeature("x")])
    source = Source(str(data), types=spec.declared_types())
    result = run_scan(source, spec, quarantine_path=tmp_path / "q.parquet")
    assert result.accounting.rows_quarantined == 4
    q = pq.read_table(tmp_path / "q.parquet").to_pylist()
    kept = {(r["_rule"], r["x"], r["y"]) for r in q}
    assert kept == {
        ("null", "2", None),
        ("parse", None, None),
        ("type", "oops", "0"),
        ("unseen_class", "7.25", "5"),
    }


def test_a_cast_that_changes_values_widens_to_text_instead(tmp_path):
    # Arrow's safe cast rounds float64 into float32, overflows to inf, makes 2 a True
    # and drops struct fields; none of that may happen to a quarantined value.
    path = tmp_path / "q.parquet"
    with QuarantineWriter(path) as w:
        w.write_table(rows(w32=pa.array([0.5], pa.float32()), flag=[True], meta=[{"a": 1}]))
        w.write_table(
            rows(
                w32=pa.array([0.1, 1e300, float("nan")]),
                flag=[2, 0, 1],
                meta=[{"a": 2, "b": "x"}, {"a": 3, "b": "y"}, {"a": 4, "b": "z"}],
            )
        )
        w.write_table(rows(w32=pa.array([0.25], pa.float32()), flag=[False], meta=[{"a": 5}]))
    got = pq.read_table(path).select(["w32", "flag", "meta"]).to_pylist()
    assert [r["w32"] for r in got] == ["0.5", "0.1", "1e+300", "nan", "0.25"]
    assert [r["flag"] for r in got] == ["true", "2", "0", "1", "false"]
    assert json.loads(got[1]["meta"]) == {"a": 2, "b": "x"}


def test_data_columns_named_like_metadata_columns_keep_their_values(tmp_path):
    """A row's own ``_row`` (and ``__file``) keeps its name and value; the metadata columns
    take leading underscores until no name means two things, alike in every file of the
    source (validation and the loader, rows and unsplittable lines), named in the schema."""
    from conveyor.ingest.loader import StreamLoader
    from conveyor.ingest.quarantine import META_FIELDS, META_KEY, meta_names

    (tmp_path / "d.csv").write_text("x,_row,__file,y\n1.5,10,a,0\n,11,b,1\n2.5,12,c,0,EXTRA\n")
    spec = FeatureSpec(
        label=Label("y", "binary", [0, 1]),
        numeric=[NumericFeature("x"), NumericFeature("_row")],
        ignore=["__file"],
    )
    expected = [f"___{f.name.lstrip('_')}" for f in META_FIELDS]
    assert meta_names(["x", "_row", "__file", "y"]) == expected
    assert meta_names(["x", "y"]) == [f.name for f in META_FIELDS]
    source = Source(str(tmp_path / "d.csv"), types=spec.declared_types())
    result = run_scan(source, spec, quarantine_path=tmp_path / "q.parquet")
    assert result.accounting.quarantined_by_rule == {"null": 1, "parse": 1}
    loader = StreamLoader(str(tmp_path / "d.csv"), spec, batch_size=4, prefetch=0,
                          quarantine=str(tmp_path / "lq"))  # fmt: skip
    assert [b.features[:, 1].tolist() for b in loader] == [[10.0]]
    (loaded,) = (tmp_path / "lq").glob("*.parquet")
    for path, data_columns in ((tmp_path / "q.parquet", ["x", "_row", "__file", "y"]),
                               (loaded, ["y", "x", "_row"])):  # fmt: skip
        q = pq.read_table(path)  # one name, one column: readable by name
        assert q.column_names == data_columns + expected
        assert json.loads(q.schema.metadata[META_KEY.encode()]) == expected
        got = q.to_pydict()
        assert got["_row"][0] == "11" and got["___row"] == [1, 2]  # its value, the file's row
        assert got["___rule"] == ["null", "parse"] and got["___raw"][1] == "2.5,12,c,0,EXTRA"
