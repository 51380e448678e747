"""Client values -> arrays of a tensor's OIP datatype, refusing conversions that change them.

:func:`cast` is what :mod:`conveyor.client` applies to every input tensor, or to
every feature column of one. ``what`` names the tensor (and column) in errors, e.g.
``"input 'categorical', column 'country'"``; every refusal is a :class:`ValueError`.

BYTES: ``str`` and ``bytes`` pass as they are (``bytes`` must be UTF-8: the server
refuses others, naming the input and element); booleans, integers and floats
become the trainer's vocabulary keys (:func:`conveyor.categories.category_key`:
``7`` -> ``"7"``, ``True`` -> ``"true"``), so a column read back as ints or bools
finds the same vocabulary entries as its strings would. A null (None, NaN,
pandas NA, a masked entry of a numpy masked array) is refused: vocabularies have
no null key (the ingest ``null`` rule keeps nulls out of training), so it could
only map to the out-of-vocabulary id without telling anyone.

Numeric datatypes: an array already of the tensor's dtype is used as it is (no
per-element work); other numpy arrays are checked with vectorised tests, and
only object arrays (mixed Python values) are walked. Refused, naming the value
and its row: strings (never parsed, not even ``"true"``/``"0"``), integers out of
the target's range, floats that are not whole numbers or not finite (NaN is how
a null arrives from pandas/pyarrow) into integer types, anything but booleans, 0
and 1 into BOOL, and finite values that would become infinite in FP16/FP32.
Allowed: booleans into numbers, integers into float types (rounded to the
nearest representable value, as any float conversion is: ``2**53 + 1`` into FP32
is ``2**53``), and a null (None, pandas NA, a masked entry) into float types, as NaN.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from conveyor.categories import category_key
from conveyor.engine.tensors import DATATYPES, NUMPY_DTYPES

__all__ = ["CastError", "cast"]

_FLOAT64_MAX = float(np.finfo(np.float64).max)  # a Python float: compares exactly with any int


class CastError(ValueError):
    """A value :func:`cast` refuses. ``row`` is its row (its first index; None for a scalar
    or a refusal of the whole array) and ``unplaced`` the message without the position, for
    a caller that knows the row by another name (a file's row)."""

    def __init__(self, message: str, row: int | None = None, unplaced: str = "") -> None:
        super().__init__(message)
        self.row = row
        self.unplaced = unplaced or message


def cast(values: Any, datatype: str, what: str) -> np.ndarray:
    """``values`` as an array for ``datatype`` (an object array of str/bytes for BYTES)."""
    if datatype not in DATATYPES:  # a server's datatype this client has no numpy type for
        raise CastError(
            f"{what}: datatype {datatype} is not supported by conveyor "
            f"(it sends {', '.join(sorted(DATATYPES))})"
        )
    if isinstance(values, np.ma.MaskedArray):
        values = _unmasked(values)
    if datatype == "BYTES":
        return _to_bytes(values, what)
    return _to_numeric(values, datatype, what)


def _unmasked(values: np.ma.MaskedArray) -> np.ndarray:
    """A masked array's data with None where it is masked: a masked entry is a null, refused
    or made NaN as None is (``np.asarray`` would drop the mask and send the value under it)."""
    mask = np.ma.getmaskarray(values)
    data = np.ma.getdata(values)
    if not mask.any():
        return data
    out = data.astype(object)
    out[mask] = None
    return out


def _position(shape: tuple[int, ...], flat_index: int) -> str:
    if len(shape) == 1:
        return f"row {flat_index}"
    return f"index {tuple(int(i) for i in np.unravel_index(flat_index, shape))}"


def _refusal(
    what: str, subject: str, shape: tuple[int, ...], flat_index: int, rest: str
) -> CastError:
    """``{what}: {subject} at {position}{rest}``, with the row and the message without it."""
    index = tuple(int(i) for i in np.unravel_index(flat_index, shape))
    within = f" at element {index[1:] if len(index) > 2 else index[1]}" if len(index) > 1 else ""
    return CastError(
        f"{what}: {subject} at {_position(shape, flat_index)}{rest}",
        row=index[0] if index else None,
        unplaced=f"{what}: {subject}{within}{rest}",
    )


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
            raise _refusal(
                what,
                "null",
                array.shape,
                i,
                " (a categorical value has no null key; impute or drop the row)",
            )
        elif isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
            # numpy scalars as their Python value, so np.True_ is "true" as True is
            flat[i] = category_key(value.item() if isinstance(value, np.generic) else value)
        else:
            raise _refusal(
                what,
                f"{type(value).__name__} value {value!r:.60}",
                array.shape,
                i,
                ": expected str, bytes, bool, int or float",
            )
    return out


def _to_numeric(values: Any, datatype: str, what: str) -> np.ndarray:
    dtype = NUMPY_DTYPES[datatype]
    try:
        array = np.asarray(values)
    except ValueError as exc:  # ragged nesting
        raise ValueError(f"{what}: cannot make a {datatype} tensor: {exc}") from None
    if array.dtype == dtype:
        return array  # already right: nothing to check, nothing copied
    if not isinstance(values, np.ndarray) and (
        array.dtype.kind in "US" or (array.dtype.kind == "f" and dtype.kind in "iu")
    ):
        # numpy turned a list mixing numbers and strings into all strings (find the
        # string), or Python ints beside floats or beyond int64 into float64, which
        # rounds those above 2**53 before any check could see them: walk the values
        array = np.asarray(values, dtype=object)
    kind = array.dtype.kind
    if kind == "O":
        array = _from_objects(array, dtype, datatype, what)
        kind = array.dtype.kind
    if kind in "US":
        _refuse(what, datatype, array, np.ones(array.shape, bool), "strings are not parsed")
    if kind not in "biuf":
        raise ValueError(f"{what}: cannot convert {array.dtype} values to {datatype}")
    if dtype.kind == "b":
        if kind != "b":
            _check(what, datatype, array, (array != 0) & (array != 1), "only 0 and 1 are BOOL")
        return array.astype(dtype)
    if dtype.kind in "iu":
        _check_integers(array, dtype, datatype, what)
        return array.astype(dtype)
    with np.errstate(over="ignore"):
        out = array.astype(dtype)
    overflow = np.isinf(out) & ~np.isinf(array) if kind == "f" else np.isinf(out)
    _check(what, datatype, array, overflow, f"out of {datatype}'s range")
    return out


def _check_integers(array: np.ndarray, dtype: np.dtype, datatype: str, what: str) -> None:
    """Refuse values an integer type cannot hold exactly (vectorised, one pass per rule)."""
    info = np.iinfo(dtype)
    out_of_range = f"out of {datatype}'s range [{info.min}, {info.max}]"
    if array.dtype.kind == "b" or array.size == 0:
        return
    if array.dtype.kind in "iu":
        # numpy compares with Python ints beyond the array's own type exactly
        _check(what, datatype, array, (array < info.min) | (array > info.max), out_of_range)
        return
    _check(what, datatype, array, ~np.isfinite(array), "not a finite number (a null?)")
    _check(what, datatype, array, array != np.trunc(array), "not a whole number")
    # info.max + 1 is a power of two, so exact as a float where info.max may not be.
    # Compared in float64: as float16 the bounds of 32- and 64-bit types overflow to inf
    # (a RuntimeWarning, an error under -W error); every float16 value is exact there.
    wide = array.astype(np.float64) if array.dtype.itemsize < 8 else array
    too_big = wide >= float(info.max + 1)
    _check(what, datatype, array, (wide < float(info.min)) | too_big, out_of_range)


def _check(what: str, datatype: str, array: np.ndarray, bad: np.ndarray, reason: str) -> None:
    if bad.any():
        _refuse(what, datatype, array, bad, reason)


def _refuse(what: str, datatype: str, array: np.ndarray, bad: np.ndarray, reason: str) -> None:
    i = int(np.flatnonzero(bad)[0])
    value = array.reshape(-1)[i]
    value = value.item() if isinstance(value, np.generic) else value
    raise _refusal(
        what, repr(value), array.shape, i, f" cannot be sent as {datatype} unchanged: {reason}"
    )


def _from_objects(array: np.ndarray, dtype: np.dtype, datatype: str, what: str) -> np.ndarray:
    """An object array (Python numbers, None, pandas NA, strings ...) checked one element at
    a time against ``dtype``; a null becomes NaN for float types and is refused otherwise."""
    flat = array.reshape(-1).tolist()
    out: list[Any] = []
    for i, value in enumerate(flat):
        if isinstance(value, np.generic):
            value = value.item()
        if _is_null(value) and not isinstance(value, float):
            if dtype.kind == "f":
                out.append(float("nan"))
                continue
            reason = "a null (no integer or BOOL value stands for it)"
        elif isinstance(value, (str, bytes)):
            reason = "strings are not parsed"
        elif not isinstance(value, (bool, int, float)):
            reason = f"a {type(value).__name__} is not a number"
        else:
            reason = _number_problem(value, dtype, datatype)
            if reason is None:
                out.append(value)
                continue
        raise _refusal(
            what,
            f"{value!r:.60}",
            array.shape,
            i,
            f" cannot be sent as {datatype} unchanged: {reason}",
        )
    if dtype.kind == "f":
        # through float64 so the caller's range check sees FP16/FP32 overflow
        return np.array(out, dtype=np.float64).reshape(array.shape)
    return np.array(out, dtype=dtype).reshape(array.shape)


def _number_problem(value: bool | int | float, dtype: np.dtype, datatype: str) -> str | None:
    """Why a Python number cannot become ``dtype`` exactly; None when it can."""
    if isinstance(value, bool):
        return None
    if dtype.kind == "b":
        return None if value in (0, 1) else "only 0 and 1 are BOOL"
    if dtype.kind == "f":
        if isinstance(value, int) and abs(value) > _FLOAT64_MAX:
            return f"out of {datatype}'s range"
        return None
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return "not a finite number (a null?)"
        if not value.is_integer():
            return "not a whole number"
    info = np.iinfo(dtype)
    if not info.min <= value <= info.max:
        return f"out of {datatype}'s range [{info.min}, {info.max}]"
    return None
