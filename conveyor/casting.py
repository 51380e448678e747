"""Client values -> arrays of a tensor's OIP datatype, refusing conversions that change them.

:func:`cast` is what :mod:`conveyor.client` applies to every input tensor, or to
every feature column of one. ``what`` names the tensor (and column) in errors, e.g.
``"input 'categorical', column 'country'"``; every refusal is a :class:`ValueError`.

BYTES: ``str`` and ``bytes`` pass as they are; booleans, integers and floats
become the trainer's vocabulary keys (:func:`conveyor.categories.category_key`:
``7`` -> ``"7"``, ``True`` -> ``"true"``), so a column read back as ints or bools
finds the same vocabulary entries as its strings would. A null (None, NaN,
pandas NA) is refused: vocabularies have no null key (the ingest ``null`` rule
keeps nulls out of training), so it could only map to the out-of-vocabulary id
without telling anyone.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from conveyor.categories import category_key
from conveyor.engine.tensors import NUMPY_DTYPES

__all__ = ["cast"]


def cast(values: Any, datatype: str, what: str) -> np.ndarray:
    """``values`` as an array for ``datatype`` (an object array of str/bytes for BYTES)."""
    if datatype == "BYTES":
        return _to_bytes(values, what)
    return _to_numeric(values, datatype, what)


def _position(shape: tuple[int, ...], flat_index: int) -> str:
    if len(shape) == 1:
        return f"row {flat_index}"
    return f"index {tuple(int(i) for i in np.unravel_index(flat_index, shape))}"


def _is_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(value != value)  # NaN: how pandas and pyarrow hand back a null number
    pandas = sys.modules.get("pandas")  # only loaded if the caller uses it
    return pandas is not None and (value is pandas.NA or value is pandas.NaT)


def _to_bytes(values: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=object)
    except ValueError as exc:  # ragged nesting
        raise ValueError(f"{what}: cannot make a BYTES tensor: {exc}") from None
    if isinstance(values, np.ndarray) and values.dtype.kind in "US":
        return array  # numpy str/bytes arrays hold nothing else
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, value in enumerate(array.reshape(-1).tolist()):
        if isinstance(value, (str, bytes)):
            flat[i] = value
        elif isinstance(value, bytearray):
            flat[i] = bytes(value)
        elif _is_null(value):
            raise ValueError(
                f"{what}: null at {_position(array.shape, i)} (a categorical value has no "
                "null key; impute or drop the row)"
            )
        elif isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
            # numpy scalars as their Python value, so np.True_ is "true" as True is
            flat[i] = category_key(value.item() if isinstance(value, np.generic) else value)
        else:
            raise ValueError(
                f"{what}: {type(value).__name__} value {value!r:.60} at "
                f"{_position(array.shape, i)}: expected str, bytes, bool, int or float"
            )
    return out


def _to_numeric(values: Any, datatype: str, what: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=NUMPY_DTYPES[datatype])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: cannot convert to {datatype}: {exc}") from None
