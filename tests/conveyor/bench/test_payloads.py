"""Requests from a data file: a row the client refuses is named by its file and row, and
``bench serve`` leaves such rows out and counts them."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conveyor.bench.payloads import PayloadError, SkippedRows, build_payloads, read_columns
from conveyor.client import ModelInfo, TensorInfo

INFO = ModelInfo(
    "fraud",
    ("1",),
    "torchscript",
    (
        TensorInfo("numeric", "FP32", (-1, 1), ("amount",)),
        TensorInfo("categorical", "BYTES", (-1, 1), ("merchant_category",)),
    ),
    (),
)
NEED = ["amount", "merchant_category"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two days of 4 rows; the second day's row 1 has no merchant category."""
    for day, categories in ((1, ["a", "b", "c", "d"]), (2, ["e", None, "g", "h"])):
        part = tmp_path / "data" / f"day={day}"
        part.mkdir(parents=True)
        table = pa.table({"amount": [1.0, 2.0, 3.0, 4.0], "merchant_category": categories})
        pq.write_table(table, part / "part-0.parquet")
    return tmp_path / "data"


def test_rows_are_named_by_their_file(folder: Path) -> None:
    data = read_columns(folder, NEED)
    first, second = (str(folder / f"day={d}" / "part-0.parquet") for d in (1, 2))
    assert data.files == [(first, 4), (second, 4)]
    assert data.where(3) == f"{first}, row 3" and data.where(5) == f"{second}, row 1"
    limited = read_columns(folder, NEED, limit=6)
    assert limited.files == [(first, 4), (second, 2)] and len(limited.columns["amount"]) == 6


def test_a_refused_row_is_an_error_naming_its_file_and_row(folder: Path) -> None:
    # It said "request 2: input 'categorical', column 'merchant_category': null at row 1",
    # a row of the request, not of any file.
    data = read_columns(folder, NEED)
    with pytest.raises(PayloadError) as raised:
        build_payloads(INFO, data.columns, 2, where=data.where)
    assert str(raised.value) == (
        f"{folder / 'day=2' / 'part-0.parquet'}, row 1: input 'categorical', column "
        "'merchant_category': null (a categorical value has no null key; impute or drop the row)"
    )


def test_refused_rows_can_be_left_out_and_counted(folder: Path) -> None:
    data = read_columns(folder, NEED)
    skipped = SkippedRows()
    bodies = build_payloads(INFO, data.columns, 2, skipped=skipped, where=data.where)
    assert skipped.count == 1
    assert skipped.first.startswith(f"{folder / 'day=2' / 'part-0.parquet'}, row 1: input")
    assert len(bodies) == 3  # 7 valid rows: three requests of 2, every one full
    one_row = build_payloads(INFO, data.columns, 1, skipped=SkippedRows(), where=data.where)
    assert len(one_row) == 7


def test_nothing_valid_says_so() -> None:
    columns = {"amount": [1.0, 2.0], "merchant_category": [None, None]}
    skipped = SkippedRows()
    with pytest.raises(
        PayloadError, match=r"has 0 valid row\(s\) of 2, fewer than 1 .* first left out: row 0"
    ):
        build_payloads(INFO, columns, 1, skipped=skipped)
    assert skipped.count == 2


def test_a_null_or_short_vector_row_is_left_out_not_a_crash(tmp_path: Path) -> None:
    # np.stack of a list column with a null row raised a bare ValueError ("all input
    # arrays must have the same shape"): a traceback from bench serve --data.
    path = tmp_path / "vectors.parquet"
    vectors = [[1.0, 2.0], None, [3.0, 4.0], [5.0], [6.0, 7.0]]
    pq.write_table(pa.table({"v": pa.array(vectors, pa.list_(pa.float32()))}), path)
    info = ModelInfo("m", ("1",), "torchscript", (TensorInfo("v", "FP32", (-1, 2)),), ())
    data = read_columns(path, ["v"])
    assert data.columns["v"].shape == (5, 2)
    assert data.invalid == {1: "column 'v': null", 3: "column 'v': 1 values, not 2"}
    skipped = SkippedRows()
    bodies = build_payloads(
        info, data.columns, 1, skipped=skipped, where=data.where, invalid=data.invalid
    )
    assert len(bodies) == 3 and skipped.count == 2
    assert skipped.first == f"{path}, row 1: column 'v': null"
    with pytest.raises(PayloadError, match=r"vectors.parquet, row 1: column 'v': null"):
        build_payloads(info, data.columns, 1, where=data.where, invalid=data.invalid)


def test_a_file_whose_column_has_another_type_is_named(tmp_path: Path) -> None:
    # The second file holds the vectors as strings: pyarrow's ArrowNotImplementedError (a
    # cast from string to list) went up as a traceback naming no file.
    folder = tmp_path / "mixed"
    folder.mkdir()
    vectors = pa.array([[1.0, 2.0]] * 3, pa.list_(pa.float32()))
    pq.write_table(pa.table({"v": vectors}), folder / "a.parquet")
    pq.write_table(pa.table({"v": ["1,2", "3,4"]}), folder / "b.parquet")
    with pytest.raises(PayloadError) as raised:
        read_columns(folder, ["v"])
    assert str(raised.value).startswith(
        f"{folder / 'b.parquet'}: cannot read column 'v' as list<element: float> (the first "
        "file's type; this file holds string): "
    )


def test_rows_short_of_a_request_are_tried_before_they_are_called_valid() -> None:
    # Row 0 failed in the first request, so row 1 was never tried: "the data has 1 valid
    # rows" when neither was valid.
    columns = {"amount": [1.0, 2.0], "merchant_category": [None, None]}
    skipped = SkippedRows()
    with pytest.raises(PayloadError) as raised:
        build_payloads(INFO, columns, 2, skipped=skipped)
    assert str(raised.value).startswith(
        "the data has 0 valid row(s) of 2, fewer than 2 rows per request; the first left out: "
        "row 0: "
    )
    assert skipped.count == 2
    # One valid row of two: it is counted as such, and a short file is still not an error
    # about its rows.
    columns = {"amount": [1.0, 2.0], "merchant_category": [None, "food"]}
    with pytest.raises(PayloadError, match=r"^the data has 1 valid row\(s\) of 2, fewer than 2"):
        build_payloads(INFO, columns, 2, skipped=SkippedRows())
    with pytest.raises(PayloadError, match=r"^the data has 2 rows, fewer than 3 rows per request$"):
        build_payloads(INFO, {"amount": [1.0, 2.0], "merchant_category": ["a", "b"]}, 3)
