"""conveyor.casting: client values -> tensors, with nothing changed on the way."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from conveyor.casting import cast
from conveyor.client import ModelInfo, TensorInfo, build_inputs
from conveyor.engine.tensors import decode_bytes, to_raw

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
