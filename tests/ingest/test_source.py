import gzip
import re

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


def test_glob_characters_stay_within_one_path_segment(tmp_path):
    # `*` matched across `/` (fnmatch), so g/*.parquet also read g/archive/jan.parquet: the
    # same rows twice, silently.
    (tmp_path / "g" / "archive").mkdir(parents=True)
    write(sample_table(10), tmp_path / "g" / "jan.parquet", "parquet")
    write(sample_table(10), tmp_path / "g" / "archive" / "jan.parquet", "parquet")
    top = Source(str(tmp_path / "g" / "*.parquet"))
    assert top.files == [str(tmp_path / "g" / "jan.parquet")]
    assert read_all(top).num_rows == 10
    deeper = Source(str(tmp_path / "g" / "*" / "j?n.parquet"))
    assert deeper.files == [str(tmp_path / "g" / "archive" / "jan.parquet")]
    assert len(Source(str(tmp_path / "*" / "*" / "[j]an.parquet")).files) == 1


def test_a_glob_naming_directories_reads_the_files_under_them(tmp_path):
    # events/date=* names hive partition directories: as in a shell, each is then read as
    # a directory is. The segment-wise match first found no files at all.
    for part in ("date=2024-01", "date=2024-02", "archive"):
        (tmp_path / "events" / part).mkdir(parents=True)
        write(sample_table(10), tmp_path / "events" / part / "part.parquet", "parquet")
    (tmp_path / "events" / "date=2024-02" / "notes.txt").write_text("not data")
    want = [str(tmp_path / "events" / p / "part.parquet") for p in ("date=2024-01", "date=2024-02")]
    for pattern in ("date=*", "date=*/"):
        assert Source(str(tmp_path / "events" / pattern)).files == want


def test_an_existing_path_with_glob_characters_is_read_as_named(tmp_path):
    # b/run[1] was taken as a glob matching "b/run1" only: "no data files found".
    (tmp_path / "b" / "run[1]").mkdir(parents=True)
    write(sample_table(10), tmp_path / "b" / "run[1]" / "jan.parquet", "parquet")
    expected = [str(tmp_path / "b" / "run[1]" / "jan.parquet")]
    assert Source(str(tmp_path / "b" / "run[1]")).files == expected
    assert Source(str(tmp_path / "b" / "run[1]" / "jan.parquet")).files == expected
    assert Source(str(tmp_path / "b" / "run[[]1]" / "*.parquet")).files == expected  # a glob


@pytest.mark.parametrize(
    ("values", "typ"),
    [
        (["1", "-2147483648", "2147483647"], pa.int32()),
        (["1", "12345678901"], pa.int64()),  # beyond int32: a hashed id, a timestamp
        (["-9223372036854775808", "9223372036854775807"], pa.int64()),
        (["1", "9223372036854775808"], pa.string()),  # beyond int64
        (["1", "x"], pa.string()),
    ],
)
def test_hive_partition_type_holds_every_value(tmp_path, values, typ):
    for value in values:
        (tmp_path / f"id={value}").mkdir()
        write(sample_table(2), tmp_path / f"id={value}" / "part.parquet", "parquet")
    src = Source(str(tmp_path))
    assert src.schema.field("id").type == typ
    got = read_all(src, columns=["id"]).column("id").to_pylist()
    assert sorted(map(str, got)) == sorted(v for v in values for _ in range(2))
    selected = read_all(src, columns=["k"], filter=ds.field("id") == pa.scalar(values[1]).cast(typ))
    assert selected.num_rows == 2


def test_projection_and_filter_pushdown(tmp_path, fmt):
    path = tmp_path / f"d.{EXT[fmt]}"
    write(sample_table(), path, fmt)
    got = read_all(Source(str(path)), columns=["k"], filter=ds.field("k") >= 40)
    assert got.column_names == ["k"] and got.column("k").to_pylist() == list(range(40, 50))
    # Rows keep their index in the file, in every format, also when the filter names a
    # column outside the projection: errors and the quarantine name file rows (Parquet and
    # IPC rows were numbered among those that passed, so "row 280" meant file row 350).
    src = Source(str(path))
    for columns in (["k"], ["x"]):
        chunks = [c for p in src.pieces() for c in src.read(p, columns, ds.field("k") >= 40)]
        assert [r for c in chunks for r in c.rows.tolist()] == list(range(40, 50))
        assert all(c.batch.column_names == columns for c in chunks)


def test_missing_source(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        Source(str(tmp_path / "nope.parquet"))


@pytest.mark.parametrize(
    ("name", "said"),
    [("clean.txt", "the extension '.txt'"), ("clean", "a name with no extension")],
)
def test_unknown_extension_names_the_file_and_how_to_give_the_format(tmp_path, name, said):
    # It said "cannot tell the format (found ['None']); pass format=".
    path = tmp_path / name
    path.write_text("x,y\n1,2\n")
    with pytest.raises(SourceError) as raised:
        Source(str(path))
    message = str(raised.value)
    assert message.startswith(f"{path}: cannot tell the format from {said} (known: .parquet")
    assert message.endswith("; pass format= (one of 'parquet', 'csv', 'json', 'ipc')")
    assert Source(str(path), format="csv").format == "csv"  # the way out it names


def test_a_given_format_reads_files_whose_names_tell_none(tmp_path):
    # Hadoop/Spark text output (part-00000, no extension) was "no data files found" even with
    # format= given.
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "part-00000").write_text("x,k,c,y\n1.5,1,a,0\n")
    (tmp_path / "part-00001.gz").write_bytes(gzip.compress(b"x,k,c,y\n2.5,2,b,1\n"))
    with pytest.raises(SourceError, match=r"no data files found: .*'part-00000'\); pass format="):
        Source(str(tmp_path))
    write(sample_table(3), tmp_path / "other.parquet", "parquet")  # another format: left out
    src = Source(str(tmp_path), format="csv")
    assert [p.rsplit("/", 1)[1] for p in src.files] == ["part-00000", "part-00001.gz"]
    assert read_all(src).column("k").to_pylist() == [1, 2]


def test_files_of_two_formats_are_named(tmp_path):
    write(sample_table(), tmp_path / "a.parquet", "parquet")
    write(sample_table(), tmp_path / "b.csv", "csv")
    with pytest.raises(SourceError, match=r"more than one format \(.*a.parquet is parquet, "):
        Source(str(tmp_path))


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


@pytest.mark.parametrize("fmt", ["parquet", "csv", "ipc"])
def test_a_column_name_repeated_in_a_file_is_named(tmp_path, fmt):
    # It was "Can't unify schema with duplicate field names", naming neither file nor column.
    write(sample_table(), tmp_path / f"a.{EXT[fmt]}", fmt)
    t = sample_table()
    dup = pa.Table.from_arrays(
        [t.column("x"), t.column("k"), t.column("x"), t.column("c"), t.column("y")],
        names=["x", "k", "x", "c", "y"],
    )
    write(dup, tmp_path / f"b.{EXT[fmt]}", fmt)
    said = r"b\.\w+: column names repeated: \['x'\] \(columns: \['x', 'k', 'x', 'c', 'y'\]\)"
    with pytest.raises(SourceError, match=said):
        Source(str(tmp_path))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_file_with_no_rows_first_gives_its_columns_no_type(tmp_path, fmt):
    """An empty Spark part file (a header-only CSV) or an empty pandas partition (object
    columns stored as type null) sorting first: its null types say nothing, and each column
    takes the type of the first file that has values, for inference and reading alike."""
    from conveyor.ingest.infer import infer_spec

    table = sample_table(6)
    empty = pa.table({f.name: pa.nulls(0, pa.null()) for f in table.schema})
    if fmt == "csv":
        (tmp_path / "part-00000.csv").write_text("x,k,c,y\n")
    else:
        pq.write_table(
            empty.set_column(0, "x", pa.array([], pa.float64())), tmp_path / "part-00000.parquet"
        )
    write(table, tmp_path / f"part-00001.{EXT[fmt]}", fmt)
    src = Source(str(tmp_path))
    assert src.schema == table.schema
    assert read_all(src).equals(table)
    spec = infer_spec(src, "y")
    assert spec.label.classes == [0, 1] and spec.categorical_names == ["c"]
    if fmt == "parquet":  # a later file with values still has to agree with the first's type
        t = table.set_column(2, "c", table.column("k"))
        pq.write_table(t, tmp_path / "part-00002.parquet")
        with pytest.raises(SourceError, match=r"column 'c' is int64, not string \(as in .*01"):
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


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_text_timestamps_read_at_one_unit_for_every_file_and_block(tmp_path, fmt):
    # Inference types each file by its first MiB: seconds in a.*, milliseconds in b.*,
    # and in c.* fractions only past the first block. Every row must still parse.
    def write_rows(name, stamps):
        if fmt == "csv":
            text = "ts,x\n" + "".join(f"{t},{i}\n" for i, t in enumerate(stamps))
        else:
            text = "".join(f'{{"ts": "{t}", "x": {i}}}\n' for i, t in enumerate(stamps))
        (tmp_path / f"{name}.{EXT[fmt]}").write_text(text)

    write_rows("a", ["2024-01-01 10:00:00", "9999-12-31 00:00:00"])  # a warehouse sentinel
    write_rows("b", ["2024-01-02 10:00:00.250"])
    write_rows("c", ["2024-01-03 10:00:00"] * 60_000 + ["2024-01-03 10:00:00.125"])
    src = Source(str(tmp_path))
    assert src.schema.field("ts").type == pa.timestamp("us")
    chunks = [c for p in src.pieces() for c in src.read(p)]
    assert not [e for c in chunks for e in c.parse_errors.values() if len(e)]
    got = pa.concat_arrays([c.batch.column("ts") for c in chunks]).to_pylist()
    assert len(got) == 60_004 and got[1].year == 9999
    assert got[2].microsecond == 250_000 and got[-1].microsecond == 125_000


def test_csv_that_is_not_utf8(tmp_path):
    # A Latin-1 header was a raw UnicodeDecodeError traceback; one Latin-1 value rejected the
    # whole file as "corrupt" (naming pyarrow's 1-based row).
    from conveyor.ingest.scan import run_scan
    from conveyor.ingest.spec import CategoricalFeature, FeatureSpec, Label

    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "a.csv").write_bytes("Größe,y\n1,0\n".encode("latin-1"))
    with pytest.raises(SourceError, match=r"h/a\.csv: the header is not UTF-8 text .*UTF-8$"):
        Source(str(tmp_path / "h"))
    (tmp_path / "v.csv").write_bytes("city,y\nMünchen,0\nBerlin,1\nParis,0\n".encode("latin-1"))
    spec = FeatureSpec(
        label=Label("y", "binary", [0, 1]),
        categorical=[CategoricalFeature("city", vocab=["Berlin", "Paris"])],
    )
    for types in (None, spec.declared_types()):  # inferred, or declared by a spec
        src = Source(str(tmp_path / "v.csv"), types=types)
        assert src.schema.field("city").type == pa.string()
        (chunk,) = src.read(src.pieces()[0])
        assert chunk.parse_errors["city"].tolist() == [True, False, False]
        assert chunk.batch.column("city").to_pylist() == [None, "Berlin", "Paris"]
    result = run_scan(src, spec, quarantine_path=tmp_path / "q.parquet", progress=False)
    assert result.accounting.quarantined_by_rule == {"type": 1}
    (row,) = pq.read_table(tmp_path / "q.parquet").to_pylist()
    assert row["_row"] == 0 and row["city"] == "M\ufffdnchen"
    assert row["_reason"] == "column 'city': value 'M\ufffdnchen' is not UTF-8 text"


def test_a_ragged_csv_row_that_is_not_utf8_is_one_error_naming_its_line(tmp_path, capsys):
    # pyarrow decodes a ragged row's bytes before the invalid-row handler sees it: a
    # Latin-1 one printed pyarrow's traceback and failed the file as "corrupt".
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "lat.csv").write_bytes(b"a,b,y\n1,x,0\n3,y,0,extra\xe9\n4,z,1\n")
    with pytest.raises(SourceError, match=r"lat\.csv: line 3 \(row 1\) has the wrong number"):
        Source(str(tmp_path / "a"))  # in the first block: found while inferring types
    long = b"a,b,y\n1,x,0\n3," + b"y" * 2000 + b"\xe9,0,extra\n"  # pyarrow cuts it: "yyy ..."
    (tmp_path / "long.csv").write_bytes(long)
    with pytest.raises(SourceError, match=r"long\.csv: line 3 \(row 1\) has the wrong number"):
        Source(str(tmp_path / "long.csv"))
    head = b"a,b,y\n" + b"".join(b"%d,x,0\n" % i for i in range(300_000))
    (tmp_path / "big.csv").write_bytes(head + b"3,caf\xe9,0,extra\n")
    src = Source(str(tmp_path / "big.csv"))  # past the first block: found while reading
    with pytest.raises(SourceError, match=r"line 300002 \(row 300000\).*re-encode the file"):
        for piece in src.pieces():
            list(src.read(piece))
    assert "Traceback" not in capsys.readouterr().err


def _write_stamped_rows(folder, name, stamps, fmt):
    """``folder/name.<ext>``: columns ts (the ``stamps``), x and y, in CSV or JSON lines."""
    if fmt == "csv":
        text = "ts,x,y\n" + "".join(f"{t},{i},{i % 2}\n" for i, t in enumerate(stamps))
    else:
        text = "".join(f'{{"ts": "{t}", "x": {i}, "y": {i % 2}}}\n' for i, t in enumerate(stamps))
    (folder / f"{name}.{EXT[fmt]}").write_text(text)


@pytest.mark.parametrize("zoned_first", [True, False])
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_text_timestamps_with_and_without_zones_read_as_utc(tmp_path, fmt, zoned_first):
    # A file with offsets and one without quarantined each other's rows as `type` (the first
    # file's zone was the column's), which file lost depending on the names' order.
    from conveyor.ingest.scan import run_scan
    from conveyor.ingest.spec import FeatureSpec, Label, NumericFeature

    zoned = ["2024-01-01T00:00:00Z", "2024-01-02T02:00:00+02:00"]
    naive = ["2024-01-03 00:00:00", "2024-01-04 12:30:00"]
    _write_stamped_rows(tmp_path, "a", zoned if zoned_first else naive, fmt)
    _write_stamped_rows(tmp_path, "b", naive if zoned_first else zoned, fmt)
    (tmp_path / f"c.{EXT[fmt]}").write_text(
        "ts,x,y\nnot a time,0,0\n" if fmt == "csv" else '{"ts": "not a time", "x": 0, "y": 0}\n'
    )
    src = Source(str(tmp_path))
    # pyarrow's JSON reader converts offsets to UTC itself and gives naive values.
    typ = pa.timestamp("us", "UTC" if fmt == "csv" else None)
    assert src.schema.field("ts").type == typ
    got = [t.isoformat() for t in read_all(src).column("ts").to_pylist() if t is not None]
    expected = ["2024-01-01T00:00:00", "2024-01-02T00:00:00", "2024-01-03T00:00:00"]
    expected += ["2024-01-04T12:30:00"]
    assert sorted(t.removesuffix("+00:00") for t in got) == expected
    # The one bad value is a `type` error whose reason names the type it was read as.
    spec = FeatureSpec(label=Label("y", "binary", [0, 1]), numeric=[NumericFeature("x")])
    spec = FeatureSpec.from_dict({**spec.to_dict(), "timestamp": "ts"})
    result = run_scan(src, spec, quarantine_path=tmp_path / "q.parquet", progress=False)
    assert result.accounting.quarantined_by_rule == {"type": 1}
    (reason,) = pq.read_table(tmp_path / "q.parquet").column("_reason").to_pylist()
    assert reason == f"column 'ts': value 'not a time' does not parse as {typ}"


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_a_bad_timestamp_is_a_type_error_whatever_the_file_order(tmp_path, fmt):
    # A file whose values include one that does not parse was read as strings: sorted
    # first, it made the column text for every file and its bad value passed; sorted
    # last, the same value was a `type` error. Alone (one file), a spec's timestamp
    # column decides.
    from conveyor.ingest.scan import run_scan
    from conveyor.ingest.spec import FeatureSpec, Label, NumericFeature

    spec = FeatureSpec(label=Label("y", "binary", [0, 1]), numeric=[NumericFeature("x")])
    spec = FeatureSpec.from_dict({**spec.to_dict(), "timestamp": "ts"})
    bad = ["2024-01-01 00:00:00", "not a date"]
    for folder in ("two", "one"):
        (tmp_path / folder).mkdir()
    _write_stamped_rows(tmp_path / "two", "a", bad, fmt)  # the bad file first
    good = ["2024-01-02 10:00:00", "2024-01-03 10:00:00"]
    _write_stamped_rows(tmp_path / "two", "b", good, fmt)
    _write_stamped_rows(tmp_path / "one", "a", bad, fmt)
    for folder, types in (("two", None), ("one", spec.declared_types())):
        src = Source(str(tmp_path / folder), types=types)
        assert src.schema.field("ts").type == pa.timestamp("us"), folder
        quarantine = tmp_path / f"{folder}.parquet"
        result = run_scan(src, spec, quarantine_path=quarantine, progress=False)
        assert result.accounting.quarantined_by_rule == {"type": 1}, folder
        (row,) = pq.read_table(quarantine).to_pylist()
        assert row["_reason"] == "column 'ts': value 'not a date' does not parse as timestamp[us]"


def test_json_with_mixed_types_keeps_good_rows(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"x": 1.5}\n{"x": "oops"}\n{not json\n{"x": 2}\n')
    src = Source(str(tmp_path / "m.jsonl"))
    (chunk,) = list(src.read(src.pieces()[0]))
    # Mixed types in the inspected head make the column a string; the broken line is reported.
    assert chunk.batch.column("x").to_pylist() == ["1.5", "oops", "2"]
    assert [b.row for b in chunk.bad_lines] == [2]


# -- non-local filesystems: the same code path as local files ---------------------------------
def test_json_file_of_only_broken_lines_is_quarantined_line_by_line(tmp_path):
    # Its schema could not be inferred ("no JSON object rows in the first MiB"), which failed
    # the whole source where a CSV file's broken lines are each a `parse` quarantine.
    from conveyor.ingest.scan import run_scan
    from conveyor.ingest.spec import FeatureSpec, Label, NumericFeature

    (tmp_path / "0.jsonl").write_text('{"x": 3, "y": 0\n[1, 2]\n')  # sorts first
    (tmp_path / "a.jsonl").write_text('{"x": 1, "y": 0}\n{"x": 2, "y": 1}\n')
    src = Source(str(tmp_path))
    assert src.schema.names == ["x", "y"]
    spec = FeatureSpec(label=Label("y", "binary", [0, 1]), numeric=[NumericFeature("x")])
    acc = run_scan(src, spec, quarantine_path=tmp_path / "q.parquet", progress=False).accounting
    assert (acc.rows_in, acc.rows_out, acc.quarantined_by_rule) == (4, 2, {"parse": 2})
    raw = pq.read_table(tmp_path / "q.parquet").column("_raw").to_pylist()
    assert raw == ['{"x": 3, "y": 0', "[1, 2]"]
    with pytest.raises(SourceError, match=r"0\.jsonl: corrupt .*no JSON object rows"):
        Source(str(tmp_path / "0.jsonl"))  # no other file to take the columns from


def memory_filesystem():
    import fsspec  # pinned in the dev extra
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    # A fresh in-memory store per test (fsspec caches instances by arguments).
    return PyFileSystem(FSSpecHandler(fsspec.filesystem("memory", skip_instance_cache=True)))


def test_non_local_pyarrow_filesystem(tmp_path):
    from conveyor.ingest.loader import StreamLoader
    from conveyor.ingest.scan import run_scan
    from conveyor.ingest.spec import CategoricalFeature, FeatureSpec, Label, NumericFeature

    fs = memory_filesystem()
    t = sample_table(40)
    for year in (2020, 2021):
        fs.create_dir(f"bucket/data/year={year}")
        with fs.open_output_stream(f"bucket/data/year={year}/part.parquet") as out:
            pq.write_table(t, out, row_group_size=16)
    src = Source("bucket/data", filesystem=fs)
    assert [f.lstrip("/") for f in src.files] == [
        f"bucket/data/year={y}/part.parquet" for y in (2020, 2021)
    ]
    got = read_all(src)
    assert got.num_rows == 80 and set(got.column("year").to_pylist()) == {2020, 2021}
    assert read_all(Source("bucket/data/year=2021/*.parquet", filesystem=fs)).num_rows == 40

    spec = FeatureSpec(
        label=Label("y", "binary", [0, 1]),
        numeric=[NumericFeature("x"), NumericFeature("k")],
        categorical=[CategoricalFeature("c", vocab=["a", "b", "c"])],
        ignore=["year"],
    )
    loader = StreamLoader(src, spec, batch_size=32, shuffle=True, shuffle_buffer=32)
    rows = sorted(v for b in loader for v in b.features[:, 1].tolist())
    assert rows == sorted(list(range(40)) * 2)
    acc = run_scan(src, spec, quarantine_path=tmp_path / "q.parquet").accounting
    assert acc.rows_in == acc.rows_out == 80


def test_subtree_filesystem_and_csv(tmp_path):
    from pyarrow.fs import LocalFileSystem, SubTreeFileSystem

    (tmp_path / "root" / "d").mkdir(parents=True)
    write(sample_table(), tmp_path / "root" / "d" / "a.csv", "csv")
    fs = SubTreeFileSystem(str(tmp_path / "root"), LocalFileSystem())
    src = Source("d", filesystem=fs)
    assert src.format == "csv" and read_all(src).equals(sample_table())


# -- files that change under a running scan ---------------------------------------------------
def xkcy_spec():
    from conveyor.ingest.spec import CategoricalFeature, FeatureSpec, Label, NumericFeature

    return FeatureSpec(
        label=Label("y", "binary", [0, 1]),
        numeric=[NumericFeature("x"), NumericFeature("k")],
        categorical=[CategoricalFeature("c", vocab=["a", "b", "c"])],
    )


@pytest.mark.parametrize("damage", ["delete", "truncate"])
@pytest.mark.parametrize("fmt", ["parquet", "ipc"])
def test_file_that_disappears_or_is_truncated_during_a_scan(tmp_path, damage, fmt):
    from conveyor.ingest.loader import StreamLoader
    from conveyor.ingest.scan import run_scan

    for i in range(2):
        write(sample_table(), tmp_path / f"p{i}.{EXT[fmt]}", fmt)
    victim = tmp_path / f"p1.{EXT[fmt]}"
    src = Source(str(tmp_path))  # schemas and row counts read; now the file changes
    loader = StreamLoader(src, xkcy_spec(), batch_size=8, prefetch=2)
    if damage == "delete":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes()[:200])
    pattern = rf"{re.escape(str(victim))}: corrupt or truncated {fmt} file"
    with pytest.raises(SourceError, match=pattern):
        run_scan(src, xkcy_spec(), quarantine_path=tmp_path / "q.parquet")
    with pytest.raises(SourceError, match=pattern):
        list(loader)


def test_csv_truncated_mid_line_is_quarantined_not_dropped(tmp_path):
    from conveyor.ingest.scan import run_scan

    path = tmp_path / "t.csv"
    write(sample_table(10), path, "csv")
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex(b",")])  # the last row loses its last field
    result = run_scan(Source(str(path)), xkcy_spec(), quarantine_path=tmp_path / "q.parquet")
    acc = result.accounting
    assert (acc.rows_in, acc.rows_out, dict(acc.quarantined_by_rule)) == (10, 9, {"parse": 1})
    assert pq.read_table(result.quarantine).column("_row").to_pylist() == [9]


# -- declared types for text formats ------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_declared_types_make_bad_values_row_errors(tmp_path, fmt):
    from conveyor.ingest.scan import run_scan

    path = tmp_path / f"b.{EXT[fmt]}"
    if fmt == "csv":
        path.write_text("x,k,c,y\nn/a?,1,a,0\n2.5,2,b,1\n3.5,3,c,0\n")
    else:
        path.write_text(
            '{"x": "n/a?", "k": 1, "c": "a", "y": 0}\n{"x": 2.5, "k": 2, "c": "b", "y": 1}\n'
            '{"x": 3.5, "k": 3, "c": "c", "y": 0}\n'
        )
    # Inferred from the first block alone, x is a string column...
    assert pa.types.is_string(Source(str(path)).schema.field("x").type)
    # ...but a pinned spec says it is a number: the bad value is one row's type error.
    spec = xkcy_spec()
    src = Source(str(path), types=spec.declared_types())
    assert src.schema.field("x").type == pa.float64()
    result = run_scan(src, spec, quarantine_path=tmp_path / "q.parquet")
    assert dict(result.accounting.quarantined_by_rule) == {"type": 1}
    q = pq.read_table(result.quarantine).to_pylist()[0]
    assert (q["_row"], q["_column"], q["_value"]) == (0, "x", "n/a?")
