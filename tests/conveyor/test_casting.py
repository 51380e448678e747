"""conveyor.casting: client values -> tensors, with nothing changed on the way."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from conveyor.casting import CastError, cast
from conveyor.client import ModelInfo, TensorInfo, build_inputs
from conveyor.engine.tensors import NUMPY_DTYPES, decode_bytes, to_raw

TABLE_INFO = ModelInfo(
    "m",
    ("1",),
    "torchscript",
    (
        TensorInfo("numeric", "FP32", (-1, 2), ("amount", "age")),
        TensorInfo("categorical", "BYTES", (-1, 2), ("country", "flag")),
    ),
    (),
)


def _sent(info: ModelInfo, table: object, name: str) -> list[bytes]:
    """The BYTES elements the client would put on the wire for input ``name``."""
    arrays = dict((spec.name, (spec, a)) for spec, a in build_inputs(info, table))
    spec, array = arrays[name]
    return decode_bytes(to_raw(array, spec.datatype))


# -- BYTES: the trainer's vocabulary keys ------------------------------------------------------

ROWS = {"amount": [1.5, 2.5], "age": [30, 40], "country": [7, 42], "flag": [True, False]}


@pytest.mark.parametrize("kind", ["dict", "pandas", "arrow"])
def test_int_and_bool_categories_are_sent_as_the_trainers_keys(kind: str) -> None:
    table = {"dict": ROWS, "pandas": pd.DataFrame(ROWS), "arrow": pa.table(ROWS)}[kind]
    assert _sent(TABLE_INFO, table, "categorical") == [b"7", b"true", b"42", b"false"]


def test_an_int_column_that_pandas_made_float_keeps_the_int_keys() -> None:
    # An integer column with a missing value is float64 in pandas, still so once the row
    # is dropped: 42.0 was sent as "42.0", silently out of vocabulary.
    rows = pd.DataFrame({**ROWS, "country": [7.0, 42.0]})
    assert _sent(TABLE_INFO, rows, "categorical") == [b"7", b"true", b"42", b"false"]


def test_a_float32_category_is_keyed_as_the_trainer_matched_it() -> None:
    # A float32 column's 0.1 arrives as 0.10000000149011612: the trainer matched it with
    # the spec's 0.1, the SDK sent "0.10000000149011612" and every such row was served as
    # an unseen value (AUC 0.92 -> 0.89 in the review). One key for both spellings.
    from conveyor.categories import category_key

    assert category_key(0.1) == category_key(float(np.float32(0.1))) == "0.1"
    assert category_key(0.30000000000000004) == "0.30000000000000004"  # not a float32 value
    rows = pd.DataFrame({**ROWS, "country": np.array([0.1, 0.2], np.float32)})
    assert _sent(TABLE_INFO, rows, "categorical") == [b"0.1", b"true", b"0.2", b"false"]


def test_string_and_bool_columns_side_by_side_keep_their_own_keys() -> None:
    rows = {"amount": [1.0], "age": [2], "country": ["FR"], "flag": np.array([True])}
    assert _sent(TABLE_INFO, rows, "categorical") == [b"FR", b"true"]


def test_bytes_tensor_given_whole() -> None:
    got = cast(np.array([[np.int64(3), np.True_, "x", b"y", 1.5]], object), "BYTES", "t")
    assert got.tolist() == [["3", "true", "x", b"y", "1.5"]]


@pytest.mark.parametrize(
    "column",
    [["FR", None], pa.array(["FR", None]), pd.Series(["FR", None]), [1.0, float("nan")]],
    ids=["none", "arrow-null", "pandas-none", "nan"],
)
def test_null_category_is_refused_naming_the_column(column: object) -> None:
    rows = {"amount": [1.0, 2.0], "age": [1, 2], "country": column, "flag": ["a", "b"]}
    table = pa.table(rows) if isinstance(column, pa.Array) else rows
    with pytest.raises(ValueError, match=r"'categorical', column 'country': null at row 1"):
        build_inputs(TABLE_INFO, table)


def test_other_objects_are_refused() -> None:
    with pytest.raises(ValueError, match=r"input 'c': dict value .* at row 0"):
        cast([{"a": 1}], "BYTES", "input 'c'")


# -- numbers: refuse what would change ---------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "datatype", "message"),
    [
        ([1.7, -2.9], "INT64", "1.7 at row 0 cannot be sent as INT64 unchanged: not a whole"),
        (np.array([1.0, np.nan]), "INT32", "nan at row 1 .* not a finite number"),
        (np.array([300, -1]), "UINT8", r"300 at row 0 .* out of UINT8's range \[0, 255\]"),
        (np.array([0, -1]), "UINT8", r"-1 at row 1 .* out of UINT8's range"),
        ([2**63], "INT64", "9223372036854775808 at row 0 .* out of INT64's range"),
        ([2**63, -1], "INT64", "9223372036854775808 at row 0 .* out of INT64's range"),
        ([2**53 + 1, 2.5], "INT64", "2.5 at row 1 .* not a whole number"),
        (np.array([2.0**63]), "INT64", r"9.22\d*e\+18 at row 0 .* out of INT64's"),
        (pd.Series([70000, 1]).to_numpy(), "FP16", "70000 at row 0 .* out of FP16's range"),
        ([1e39], "FP32", r"1e\+39 at row 0 .* out of FP32's range"),
        (["true", "false"], "BOOL", "'true' at row 0 .* strings are not parsed"),
        (np.array(["false", "0"]), "BOOL", "'false' at row 0 .* strings are not parsed"),
        ([1.0, "x"], "FP32", "'x' at row 1 .* strings are not parsed"),
        ([0.2, 0.0], "BOOL", "0.2 at row 0 .* only 0 and 1 are BOOL"),
        (np.array([2, 1]), "BOOL", "2 at row 0 .* only 0 and 1 are BOOL"),
        ([1, None], "INT32", "None at row 1 .* a null"),
        (
            pd.array([1, None], dtype="Int64").to_numpy(dtype=object),
            "INT8",
            "<NA> at row 1 .* a null",
        ),
        (np.zeros(2, "datetime64[D]"), "INT64", "cannot convert datetime64"),
    ],
)
def test_lossy_numeric_conversions_are_refused(values: object, datatype: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^input 'x': {message}"):
        cast(values, datatype, "input 'x'")


@pytest.mark.parametrize(
    ("values", "datatype", "expected"),
    [
        ([1.0, -2.0], "INT64", [1, -2]),
        (np.array([255, 0], np.int64), "UINT8", [255, 0]),
        ([2**64 - 1], "UINT64", [2**64 - 1]),
        # Python ints numpy would turn into float64 (beside a float, or beyond int64)
        # and so round before any check: sent exactly.
        ([2**64 - 1, 0], "UINT64", [2**64 - 1, 0]),
        ([[2**63 + 12345, 1]], "UINT64", [[2**63 + 12345, 1]]),
        ([2**53 + 1, 2.0], "INT64", [2**53 + 1, 2]),
        ([True, 2], "INT8", [1, 2]),
        (np.array([1, 0]), "BOOL", [True, False]),
        ([1.5, None], "FP32", [1.5, float("nan")]),  # a null is NaN in a float tensor
        (np.array([np.inf, 2.5]), "FP16", [float("inf"), 2.5]),  # inf stays inf
    ],
)
def test_exact_numeric_conversions_pass(values: object, datatype: str, expected: list) -> None:
    got = cast(values, datatype, "x")
    assert got.dtype == NUMPY_DTYPES[datatype]
    np.testing.assert_array_equal(got, expected)
    if got.dtype.kind in "iu":  # exactly: assert_array_equal may compare in float64
        assert got.tolist() == expected


def test_an_array_of_the_right_dtype_is_used_as_it_is() -> None:
    array = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert cast(array, "FP32", "x") is array


def test_a_bad_numeric_column_is_named() -> None:
    info = ModelInfo("m", ("1",), "x", (TensorInfo("ids", "INT32", (-1, 2), ("a", "b")),), ())
    ((_, ids),) = build_inputs(info, pd.DataFrame({"a": [1, 2], "b": [3.0, 4.0]}))
    assert ids.dtype == np.int32 and ids.tolist() == [[1, 3], [2, 4]]
    with pytest.raises(ValueError, match=r"^input 'ids', column 'b': 4.5 at row 1 .* whole"):
        build_inputs(info, pd.DataFrame({"a": [1, 2], "b": [3.0, 4.5]}))


def test_float16_into_wide_integers_warns_of_nothing() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the int64 bounds overflowed float16: RuntimeWarning
        for datatype in ("INT32", "INT64", "UINT32", "UINT64"):
            got = cast(np.array([1, 2], np.float16), datatype, "x")
            np.testing.assert_array_equal(got, [1, 2])


def test_a_refusal_carries_its_row_and_the_message_without_it() -> None:
    # For callers that name the row themselves (bench serve: the file and its row).
    with pytest.raises(CastError) as raised:
        cast(np.array([[1.0, 2.0], [3.0, 1e300]]), "FP32", "input 'x'")
    assert raised.value.row == 1
    assert str(raised.value).startswith("input 'x': 1e+300 at index (1, 1) cannot be sent")
    assert raised.value.unplaced.startswith("input 'x': 1e+300 at element 1 cannot be sent")
    with pytest.raises(CastError) as raised:
        cast(["a", None], "BYTES", "input 'c'")
    assert raised.value.row == 1 and raised.value.unplaced.startswith("input 'c': null (")


# -- numpy masked arrays: a masked entry is a null ---------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("INT64", [[7, 8]], r"None at index \(0, 1\) .* a null"),
        ("BOOL", [[True, False]], r"None at index \(0, 1\) .* a null"),
        ("BYTES", np.array([["FR", "US"]]), r"null at index \(0, 1\)"),
        ("BYTES", np.array([["FR", "US"]], object), r"null at index \(0, 1\)"),
    ],
)
def test_a_masked_entry_is_refused_as_none_is(datatype: str, data: object, message: str) -> None:
    # np.asarray dropped the mask: the value under it was sent as if it were real
    masked = np.ma.masked_array(data, mask=[[False, True]])
    with pytest.raises(ValueError, match=f"^input 'x': {message}"):
        cast(masked, datatype, "input 'x'")


def test_a_masked_entry_is_nan_in_a_float_tensor_as_none_is() -> None:
    masked = np.ma.masked_array([[1.5, 2.5]], mask=[[False, True]])
    np.testing.assert_array_equal(cast(masked, "FP32", "x"), [[1.5, np.nan]])
    column = np.ma.masked_array(["FR", "US"], mask=[True, False])
    rows = {"amount": [1.0, 2.0], "age": [1, 2], "country": column, "flag": ["a", "b"]}
    with pytest.raises(ValueError, match=r"'categorical', column 'country': null at row 0"):
        build_inputs(TABLE_INFO, rows)


def test_a_masked_array_without_masked_entries_is_its_data() -> None:
    array = np.arange(4, dtype=np.float32).reshape(2, 2)
    assert cast(np.ma.masked_array(array, mask=False), "FP32", "x").tolist() == array.tolist()
    assert cast(np.ma.masked_array([["a"]]), "BYTES", "x").tolist() == [["a"]]
