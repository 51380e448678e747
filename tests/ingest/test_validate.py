"""Every row-level rule under each policy it allows, dataset-level rejects, and accounting."""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.ingest.errors import SourceError, SpecError, ValidationError
from conveyor.ingest.quarantine import META_FIELDS
from conveyor.ingest.scan import run_scan
from conveyor.ingest.source import Source
from conveyor.ingest.spec import CategoricalFeature, FeatureSpec, Label, NumericFeature
from conveyor.ingest.validate import Validator

N, BAD_ROW = 8, 3
SPEC = FeatureSpec(
    label=Label("y", "binary", [0, 1]),
    numeric=[NumericFeature("x", min=-5.0, max=5.0, impute=0.0)],
    categorical=[CategoricalFeature("c", vocab=["a", "b"], impute="b")],
    key="id",
)


def good_rows() -> dict[str, list]:
    return {
        "id": list(range(N)),
        "x": [0.5 * i for i in range(N)],
        "c": ["a", "b"] * (N // 2),
        "y": [i % 2 for i in range(N)],
    }


def write_parquet(path, cols) -> str:
    types = {"id": pa.int64(), "x": pa.float64(), "c": pa.string(), "y": pa.int64()}
    pq.write_table(pa.table({k: pa.array(v, types[k]) for k, v in cols.items()}), path)
    return str(path)


def write_csv(path, lines: list[str]) -> str:
    path.write_text("\n".join(["id,x,c,y", *lines]) + "\n")
    return str(path)


def csv_lines(bad: str | None = None) -> list[str]:
    cols = good_rows()
    lines = [f"{cols['id'][i]},{cols['x'][i]},{cols['c'][i]},{cols['y'][i]}" for i in range(N)]
    if bad is not None:
        lines[BAD_ROW] = bad
    return lines


NAN_VALUES = {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf}


def case(rule: str, tmp_path, variant: str | None = None):
    """A file with one bad row at BAD_ROW for ``rule``: (path, column, value as read)."""
    cols = good_rows()
    if rule == "parse":
        return write_csv(tmp_path / "d.csv", csv_lines("3,1.5,a,1,EXTRA")), None, "3,1.5,a,1,EXTRA"
    if rule == "type":
        return write_csv(tmp_path / "d.csv", csv_lines("3,abc,a,1")), "x", "abc"
    column, value = {
        "null": ("x", None),
        "nan": ("x", NAN_VALUES.get(variant or "nan")),
        "range": ("x", 7.5),
        "unseen_category": ("c", "zzz"),
        "unseen_class": ("y", 2),
        "duplicate_key": ("id", 1),
    }[rule]
    cols[column][BAD_ROW] = value
    return write_parquet(tmp_path / "d.parquet", cols), column, value


def scan(path: str, spec: FeatureSpec, tmp_path):
    """Validate every chunk: (accounting, output rows as a list of dicts, quarantine table)."""
    from conveyor.ingest.quarantine import QuarantineWriter

    source = Source(path, types=spec.declared_types())
    qpath = tmp_path / "q.parquet"
    out = []
    with QuarantineWriter(qpath) as writer:
        v = Validator(
            spec, source.schema, file=path, quarantine=writer, where_column=source.where_column
        )
        for piece in source.pieces():
            for chunk in source.read(piece):
                checked = v.check(chunk)
                out += checked.table.filter(pa.array(checked.valid)).to_pylist()
    return v.accounting, out, (pq.read_table(qpath) if qpath.exists() else None)


RULE_POLICIES = [
    ("parse", "reject"),
    ("parse", "quarantine"),
    *[(r, p) for r in ("type", "null", "range") for p in ("reject", "quarantine", "impute")],
    *[("nan", p) for p in ("reject", "quarantine", "impute")],
    ("unseen_category", "reject"),
    ("unseen_category", "quarantine"),
    ("unseen_category", "impute"),
    ("unseen_class", "reject"),
    ("unseen_class", "quarantine"),
    ("duplicate_key", "reject"),
    ("duplicate_key", "quarantine"),
]


@pytest.mark.parametrize(("rule", "policy"), RULE_POLICIES)
def test_rule_under_policy(rule, policy, tmp_path):
    variants = ["nan", "+inf", "-inf"] if rule == "nan" else [None]
    for variant in variants:
        d = tmp_path / str(variant)
        d.mkdir()
        path, column, value = case(rule, d, variant)
        spec = SPEC.with_policies({rule: policy})
        if policy == "reject":
            with pytest.raises(ValidationError) as info:
                scan(path, spec, d)
            err = info.value
            assert (err.file, err.row, err.column, err.rule) == (path, BAD_ROW, column, rule)
            line = str(err)
            assert "\n" not in line and f"row {BAD_ROW}" in line and f"rule {rule!r}" in line
            if column is not None:
                assert f"column {column!r}" in line
            if value is not None:
                assert repr(value) in line and (err.value == value or value != value)
            continue
        acc, out, q = scan(path, spec, d)
        assert acc.balanced() and acc.rows_in == N
        if policy == "quarantine":
            assert (acc.rows_out, acc.rows_quarantined) == (N - 1, 1)
            assert dict(acc.quarantined_by_rule) == {rule: 1}
            assert [r["id"] for r in out] == [i for i in range(N) if i != BAD_ROW]
            row = q.to_pylist()[0]
            assert q.num_rows == 1
            assert (row["_file"], row["_row"], row["_rule"], row["_column"]) == (
                path, BAD_ROW, rule, column,
            )  # fmt: skip
            assert row["_reason"]
            if rule == "parse":
                assert row["_raw"] == value and row["x"] is None
            elif rule == "type":
                # CSV rows are kept as the text that was read.
                assert (row["id"], row["x"], row["c"], row["y"]) == ("3", "abc", "a", "1")
                assert row["_value"] == "abc"
            else:
                got = row[column]
                assert got == value or (value != value and got != got)
                others = {k: row[k] for k in ("id", "x", "c", "y") if k != column}
                expect = {k: v[BAD_ROW] for k, v in good_rows().items() if k != column}
                assert others == expect
        else:  # impute: the row goes out with the declared value
            assert (acc.rows_out, acc.rows_quarantined) == (N, 0)
            assert dict(acc.imputed_by_rule) == {rule: 1}
            bad = out[BAD_ROW]
            if rule == "unseen_category":
                assert bad["c"] == "b"  # the declared impute value
            else:
                assert bad["x"] == 0.0


def test_unseen_category_without_impute_value_maps_to_oov(tmp_path):
    import torch

    from conveyor.ingest.loader import StreamLoader

    path, _, _ = case("unseen_category", tmp_path)
    spec = FeatureSpec.from_dict(
        {**SPEC.to_dict(), "categorical": [{"name": "c", "vocab": ["a", "b"]}]}
    )
    loader = StreamLoader(path, spec, batch_size=N)
    (batch,) = list(loader)
    assert batch.categorical[:, 0].tolist() == [1, 2, 1, 0, 1, 2, 1, 2]
    assert batch.categorical.dtype == torch.int64
    assert loader.accounting.imputed_by_rule == {"unseen_category": 1}


def test_impute_policy_needs_a_value(tmp_path):
    path, _, _ = case("null", tmp_path)
    spec = FeatureSpec.from_dict(
        {**SPEC.to_dict(), "numeric": [{"name": "x"}], "policies": {"null": "impute"}}
    )
    with pytest.raises(SpecError, match="numeric 'x': an impute policy is set but no impute"):
        scan(path, spec, tmp_path)


def test_policy_not_allowed_for_rule():
    with pytest.raises(SpecError, match="rule 'unseen_class': policy 'impute' not one of"):
        SPEC.with_policies({"unseen_class": "impute"})


# -- dataset level ----------------------------------------------------------------------------
def test_missing_column_is_rejected(tmp_path):
    cols = good_rows()
    del cols["c"]
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table(cols), path)
    with pytest.raises(ValidationError) as info:
        scan(str(path), SPEC, tmp_path)
    assert (info.value.file, info.value.column, info.value.rule) == (
        str(path), "c", "missing_column",
    )  # fmt: skip
    assert info.value.row is None


def test_missing_column_impute_fills_declared_value(tmp_path):
    cols = good_rows()
    del cols["c"]
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table(cols), path)
    acc, out, _ = scan(str(path), SPEC.with_policies({"missing_column": "impute"}), tmp_path)
    assert {r["c"] for r in out} == {"b"} and acc.imputed_by_rule["missing_column"] == N


def test_extra_column_is_rejected_unless_ignored(tmp_path):
    cols = {**good_rows(), "notes": ["n"] * N}
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table(cols), path)
    with pytest.raises(ValidationError, match=r"e\.parquet, column 'notes': rule 'extra_column'"):
        scan(str(path), SPEC, tmp_path)
    acc, _, _ = scan(str(path), SPEC.with_policies({"extra_column": "ignore"}), tmp_path)
    assert acc.rows_out == N
    listed = FeatureSpec.from_dict({**SPEC.to_dict(), "ignore": ["notes"]})
    assert scan(str(path), listed, tmp_path)[0].rows_out == N


def test_an_extra_column_is_named_with_the_file_and_row_that_hold_it(tmp_path):
    # It named the source's folder only ("ec, column 'z'"), leaving every file to search.
    spec = FeatureSpec(label=Label("y", "binary", [0, 1]), numeric=[NumericFeature("x")])
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jsonl").write_text('{"x": 0.5, "y": 0}\n{"x": 1.5, "y": 1, "z": 5}\n')
    with pytest.raises(ValidationError, match=r"j/a\.jsonl: row 1, column 'z': rule 'extra_c"):
        scan(str(tmp_path / "j"), spec, tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.csv").write_text("x,y,z\n0.5,0,1\n")
    with pytest.raises(ValidationError, match=r"c/a\.csv, column 'z': rule 'extra_column'"):
        scan(str(tmp_path / "c"), spec, tmp_path)


@pytest.mark.parametrize("mixed", [False, True])
def test_json_key_first_seen_past_the_inferred_block_is_an_extra_column(tmp_path, mixed):
    # Columns are inferred from a JSON file's first MiB; "coupon" first appears past it.
    # It was a parse error on every row holding it: those rows were quarantined. It is the
    # extra_column rule now, naming the row. mixed: a value of the wrong type as well, so
    # the file takes the line-by-line path.
    rows = [{"id": i, "x": 0.5, "c": "a", "y": i % 2, "pad": "p" * 40} for i in range(20_000)]
    for i in range(15_000, 20_000, 7):
        rows[i]["coupon"] = "SAVE10"
    if mixed:
        rows[16_000]["x"] = "oops"
    path = tmp_path / "late.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert path.stat().st_size > 2**20
    spec = FeatureSpec.from_dict({**SPEC.to_dict(), "ignore": ["pad"]})
    with pytest.raises(ValidationError, match=r"late\.jsonl: row 15000, column 'coupon'"):
        scan(str(path), spec, tmp_path)
    acc, out, _ = scan(str(path), spec.with_policies({"extra_column": "ignore"}), tmp_path)
    assert acc.rows_out == 20_000 - mixed and len(out) == acc.rows_out
    listed = FeatureSpec.from_dict({**spec.to_dict(), "ignore": ["pad", "coupon"]})
    assert scan(str(path), listed, tmp_path)[0].rows_out == 20_000 - mixed


def test_schema_contradiction_is_rejected_naming_the_file(tmp_path):
    write_parquet(tmp_path / "a.parquet", good_rows())
    t = pa.table({**good_rows(), "x": pa.array([str(v) for v in good_rows()["x"]])})
    pq.write_table(t, tmp_path / "b.parquet")
    with pytest.raises(SourceError, match=r"b\.parquet: schema differs .*'x' is string"):
        scan(str(tmp_path), SPEC, tmp_path)


# -- accounting -------------------------------------------------------------------------------
KINDS = ["nan", "inf", "null", "range", "unseen_class", "dup"]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 60),
    bad=st.dictionaries(st.integers(0, 59), st.sampled_from(KINDS), max_size=20),
    group=st.integers(1, 16),
)
def test_every_row_is_accounted_for(tmp_path_factory, n, bad, group):
    bad = {i: k for i, k in bad.items() if 0 < i < n}  # row 0 stays good: "dup" repeats its key
    ids = np.arange(n, dtype=np.int64)
    x = np.zeros(n)
    y = np.zeros(n, dtype=np.int64)
    nulls = np.zeros(n, dtype=bool)
    for i, k in bad.items():
        if k == "nan":
            x[i] = np.nan
        elif k == "inf":
            x[i] = -np.inf
        elif k == "null":
            nulls[i] = True
        elif k == "range":
            x[i] = 6.0
        elif k == "unseen_class":
            y[i] = 9
        else:
            ids[i] = 0  # repeats row 0's key
    tmp = tmp_path_factory.mktemp("acc")
    table = pa.table({"id": ids, "x": pa.array(x, mask=nulls), "c": pa.array(["a"] * n), "y": y})
    pq.write_table(table, tmp / "d.parquet", row_group_size=group)
    qpath = tmp / "q.parquet"
    result = run_scan(Source(str(tmp / "d.parquet")), SPEC, quarantine_path=qpath)
    acc = result.accounting
    assert acc.rows_in == n == acc.rows_out + acc.rows_quarantined
    expected = sorted(bad)
    assert acc.rows_quarantined == len(expected) == sum(acc.quarantined_by_rule.values())
    if expected:
        q = pq.read_table(qpath)
        assert sorted(q.column("_row").to_pylist()) == expected
        assert q.schema.names[-len(META_FIELDS) :] == [f.name for f in META_FIELDS]
    else:
        assert result.quarantine is None and not qpath.exists()


@pytest.mark.parametrize(
    ("lo", "hi", "kept"),
    [
        (0.5, None, [1, 5, 10]),  # not truncated to 0
        (None, 9.5, [0, 1, 5]),  # not truncated to 9 either way
        (None, 1e19, [0, 1, 5, 10]),  # beyond int64: no wrap-around, nothing above it
        (-1e19, None, [0, 1, 5, 10]),
        (1e19, None, []),  # every int64 is below it
        (None, -1e19, []),
        (1.0, 5.0, [1, 5]),  # inclusive
    ],
)
def test_integer_range_compares_numerically_in_validate_and_loader(lo, hi, kept, tmp_path):
    """An int64 column against float bounds: the fast path, the row check and a full scan all
    keep exactly the rows numerically within the bounds."""
    from conveyor.ingest.loader import StreamLoader

    path = tmp_path / "d.parquet"
    ages = np.array([0, 1, 5, 10], dtype=np.int64)
    pq.write_table(pa.table({"age": ages, "y": np.array([0, 1, 0, 1])}), path)
    spec = FeatureSpec(
        label=Label("y", "binary", [0, 1]), numeric=[NumericFeature("age", min=lo, max=hi)]
    )
    acc, out, _ = scan(str(path), spec, tmp_path)
    assert [r["age"] for r in out] == kept
    assert acc.quarantined_by_rule == ({"range": 4 - len(kept)} if len(kept) < 4 else {})
    loader = StreamLoader(str(path), spec, batch_size=8, prefetch=0)
    assert [int(v) for b in loader for v in b.features[:, 0].tolist()] == kept
    assert loader.epoch_accounting[0].rows_quarantined == 4 - len(kept)


@pytest.mark.parametrize("bounds", [(0.0, 10.0), (None, None)])
def test_binary_column_of_the_wrong_type_is_a_source_error_before_any_row(bounds, tmp_path):
    """A numeric feature stored as strings in Parquet, or a vocabulary that is not of its IPC
    column's type: validation and the loader both stop at once with a SourceError naming the
    file, the column and the types, rather than comparing strings or crashing mid-stream."""
    import pyarrow.feather as feather

    from conveyor.ingest.loader import StreamLoader

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x": ["1.5", "2.5", "abc", "4"], "y": [0, 1, 0, 1]}), path)
    lo, hi = bounds
    spec = FeatureSpec(
        label=Label("y", "binary", [0, 1]), numeric=[NumericFeature("x", min=lo, max=hi)]
    )
    message = f"{path}: column 'x' is string, but the spec reads it as a number"
    with pytest.raises(SourceError, match=message):
        run_scan(Source(str(path)), spec, quarantine_path=tmp_path / "q.parquet")
    with pytest.raises(SourceError, match=message):
        StreamLoader(str(path), spec, batch_size=8, prefetch=0)
    assert not (tmp_path / "q.parquet").exists()

    ipc = tmp_path / "c.arrow"
    feather.write_feather(pa.table({"c": [1, 2], "y": [0, 1]}), ipc)
    spec = FeatureSpec(
        label=Label("y", "binary", [0, 1]), categorical=[CategoricalFeature("c", ["a", "b"])]
    )
    with pytest.raises(SourceError, match=r"column 'c' is int64, but the spec's values .* str"):
        StreamLoader(str(ipc), spec, batch_size=8, prefetch=0)


def test_dictionary_columns_are_matched_by_their_values(tmp_path):
    """pandas ``category`` columns are dictionary-encoded in Parquet: a categorical feature and
    the label stored so are inferred, validated, profiled and loaded by their values, each file
    with its own dictionary, like the same columns stored as plain strings."""
    from conveyor.ingest.infer import infer_spec
    from conveyor.ingest.loader import StreamLoader
    from conveyor.ingest.profile import ProfileConfig

    def table(c: list, y: list) -> pa.Table:
        x = pa.array([float(i) for i in range(len(c))])
        return pa.table({"x": x, "c": pa.array(c).dictionary_encode(), "y": pa.array(y)})

    files = tmp_path / "data"
    files.mkdir()
    pq.write_table(table(["a", "b", "z", None], ["no", "yes", "no", "maybe"]), files / "a.pq")
    pq.write_table(table(["q", "a", "b"], ["yes", "no", "yes"]), files / "b.pq")
    for path in files.iterdir():  # the label dictionary-encoded too
        t = pq.read_table(path)
        pq.write_table(t.set_column(2, "y", t.column("y").dictionary_encode()), path)
    source = Source(str(files))
    assert pa.types.is_dictionary(source.schema.field("y").type)
    inferred = infer_spec(source, "y")
    assert inferred.label.classes == ["maybe", "no", "yes"]
    assert inferred.categorical[0].vocab == ["a", "b", "q", "z"]
    result = run_scan(source, inferred, quarantine_path=tmp_path / "p.pq", profile=ProfileConfig())
    assert result.accounting.quarantined_by_rule == {"null": 1}
    assert result.stats["categorical"]["c"]["top"] == [["a", 2], ["b", 2], ["q", 1], ["z", 1]]
    assert result.stats["label"]["class_counts"] == {"maybe": 0, "no": 3, "yes": 3}

    spec = FeatureSpec(
        label=Label("y", "binary", ["no", "yes"]),
        numeric=[NumericFeature("x", impute=0.0)],
        categorical=[CategoricalFeature("c", vocab=["a", "b"], impute="b")],
        policies={"unseen_category": "quarantine", "null": "impute"},
    )
    result = run_scan(source, spec, quarantine_path=tmp_path / "q.pq")
    assert result.accounting.quarantined_by_rule == {"unseen_category": 2, "unseen_class": 1}
    q = pq.read_table(tmp_path / "q.pq").to_pydict()
    assert q["_value"] == ["z", "maybe", "q"] and q["c"] == ["z", None, "q"]
    spec.policies = {"unseen_category": "impute", "null": "impute"}
    loader = StreamLoader(str(files), spec, batch_size=8, prefetch=0)
    (batch,) = list(loader)
    # a b z(imputed b) | q(imputed b) a b; the null's row is labelled "maybe": quarantined
    assert batch.categorical[:, 0].tolist() == [1, 2, 2, 2, 1, 2]
    assert batch.label.tolist() == [0, 1, 0, 1, 0, 1]
    assert loader.epoch_accounting[0].quarantined_by_rule == {"unseen_class": 1}


@pytest.mark.parametrize("fmt", ["parquet", "ipc"])
def test_the_same_values_in_other_encodings_are_one_column(tmp_path, fmt):
    """pandas writes a ``category`` column with int8 indices up to 127 categories and int16
    beyond, so partitions of one frame differ in index width; and one writer's ``large_string``
    is another's ``string``. Both were "schema differs"; values that differ still are."""
    import pyarrow.feather as feather

    from conveyor.ingest.infer import infer_spec
    from conveyor.ingest.loader import StreamLoader

    def save(t: pa.Table, name: str) -> None:
        path = tmp_path / f"{name}.{'parquet' if fmt == 'parquet' else 'arrow'}"
        pq.write_table(t, path) if fmt == "parquet" else feather.write_feather(t, path)

    def table(c: list[str], index: pa.DataType, s: pa.DataType) -> pa.Table:
        codes = pa.array(c).dictionary_encode().cast(pa.dictionary(index, pa.string()))
        n = len(c)
        return pa.table({"c": codes, "s": pa.array(c, s), "y": pa.array([i % 2 for i in range(n)])})

    save(table(["a", "b", "a"], pa.int8(), pa.string()), "day1")
    save(table(["b", "c", "a", "c"], pa.int16(), pa.large_string()), "day2")
    source = Source(str(tmp_path))
    assert source.schema.field("c").type == pa.dictionary(pa.int32(), pa.string())
    assert source.schema.field("s").type == pa.large_string()
    spec = infer_spec(source, "y")
    assert spec.categorical[0].vocab == ["a", "b", "c"]
    result = run_scan(source, spec, quarantine_path=tmp_path / "q.parquet", progress=False)
    assert result.accounting.rows_out == 7
    loader = StreamLoader(source, spec, batch_size=8, prefetch=0)
    (batch,) = list(loader)
    assert batch.categorical[:, 0].tolist() == [1, 2, 1, 2, 3, 1, 3]
    save(pa.table({"c": [1], "s": ["a"], "y": [0]}), "day3")
    with pytest.raises(SourceError, match="column 'c' is int64, not dictionary<values=string"):
        Source(str(tmp_path))


def test_impute_value_of_the_wrong_type_is_an_error_before_any_row(tmp_path):
    # It was cast per chunk: a raw ArrowInvalid at the first row to impute, mid-scan or
    # mid-epoch.
    from conveyor.ingest.loader import StreamLoader

    path = tmp_path / "a.csv"
    path.write_text("x,c,y\n1,1,0\n2,2,1\n3,7,0\n")
    spec = FeatureSpec(
        label=Label("y", "binary", [0, 1]),
        numeric=[NumericFeature("x")],
        categorical=[CategoricalFeature("c", vocab=[1, 2], impute="unknown")],
    )
    source = Source(str(path), types=spec.declared_types())
    said = r"a\.csv: column 'c' is int64, but the spec's impute value for it is str 'unknown'"
    with pytest.raises(SourceError, match=said):
        run_scan(source, spec, quarantine_path=tmp_path / "q.parquet", progress=False)
    with pytest.raises(SourceError, match=said):
        StreamLoader(source, spec, batch_size=2, prefetch=0)
    # A numeric impute value that is no number is the spec file's error.
    data = spec.to_dict()
    data["numeric"][0]["impute"] = "abc"
    (tmp_path / "spec.json").write_text(json.dumps(data))
    with pytest.raises(SpecError, match=r"spec\.json: numeric 'x': impute 'abc' is not a number"):
        FeatureSpec.load(tmp_path / "spec.json")


def test_decimal_columns_are_numbers(tmp_path):
    # A warehouse's DECIMAL(p, s) column was put in `ignore` by inference and refused by a
    # spec ("expected an integer or floating-point type").
    from decimal import Decimal

    from conveyor.ingest.infer import infer_spec
    from conveyor.ingest.loader import StreamLoader
    from conveyor.ingest.profile import ProfileConfig

    amounts = ["1.25", "99.10", None, "-3.50", "12.00"]
    amount = pa.array([None if a is None else Decimal(a) for a in amounts], pa.decimal128(10, 2))
    target = pa.array([Decimal("0.5"), Decimal("1.5"), Decimal("2.5"), Decimal("3.5"), None])
    pq.write_table(pa.table({"amount": amount, "y": target}), tmp_path / "a.parquet")
    source = Source(str(tmp_path / "a.parquet"))
    inferred = infer_spec(source, "y")
    assert inferred.numeric_names == ["amount"] and inferred.label.task == "regression"
    spec = FeatureSpec(
        label=Label("y", "regression"),
        numeric=[NumericFeature("amount", min=-1.0, impute=0.0)],
        policies={"null": "impute", "range": "quarantine"},
    )
    result = run_scan(source, spec, quarantine_path=tmp_path / "q.parquet", profile=ProfileConfig())
    assert result.accounting.quarantined_by_rule == {"null": 1, "range": 1}
    assert result.accounting.imputed_by_rule == {"null": 1}
    assert result.stats["numeric"]["amount"]["min"] == 0.0
    assert result.stats["numeric"]["amount"]["max"] >= 99.1
    loader = StreamLoader(source, spec, batch_size=8, prefetch=0)
    (batch,) = list(loader)
    assert batch.features[:, 0].tolist() == pytest.approx([1.25, 99.1, 0.0])
    assert batch.label.tolist() == [0.5, 1.5, 2.5]
