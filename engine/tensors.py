"""OIP tensor datatypes and the conversions between wire contents and numpy arrays.

Numeric tensors never go through per-element Python: raw contents are viewed
with :func:`numpy.frombuffer` and outputs leave as ``ndarray.tobytes()``. Only
BYTES tensors (strings) are walked element by element, as they must be.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

# OIP datatype -> numpy dtype (little-endian, as the protocol's raw contents are).
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES: frozenset[str] = frozenset([*NUMPY_DTYPES, "BYTES"])

# Which InferTensorContents field carries a datatype's typed contents (FP16 has none).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_NP_TO_OIP: dict[np.dtype, str] = {v: k for k, v in NUMPY_DTYPES.items()}
_LEN = struct.Struct("<I")


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype for a numpy array (object/str/bytes arrays are BYTES)."""
    if array.dtype.kind in "OUS":
        return "BYTES"
    try:
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        return _NP_TO_OIP[dtype]
    except KeyError:
        raise ValueError(f"numpy dtype {array.dtype} has no OIP datatype") from None


def decode_bytes(buf: bytes, count: int | None = None) -> list[bytes]:
    """Split raw BYTES contents (4-byte little-endian length, then the bytes, repeated).

    Raises ValueError when the buffer is truncated or, if ``count`` is given,
    holds a different number of elements: found without walking more than ``count``
    of them (a request declaring 2 elements with 15 million empty ones behind them
    held the server's event loop for seconds).
    """
    out: list[bytes] = []
    pos, end = 0, len(buf)
    unpack = _LEN.unpack_from
    while pos < end:
        if count is not None and len(out) == count:
            raise ValueError(f"holds more than {count} elements, shape needs {count}")
        if pos + 4 > end:
            raise ValueError(f"truncated length prefix at byte {pos}")
        (n,) = unpack(buf, pos)
        pos += 4
        if pos + n > end:
            raise ValueError(f"element {len(out)} claims {n} bytes, only {end - pos} left")
        out.append(buf[pos : pos + n])
        pos += n
    if count is not None and len(out) != count:
        raise ValueError(f"holds {len(out)} elements, shape needs {count}")
    return out


def encode_bytes(items: Sequence[bytes | bytearray | str]) -> bytes:
    """Serialize BYTES elements as OIP raw contents; ``str`` elements are UTF-8 encoded.

    Raises TypeError for any other element: ``bytes(7)`` would be seven zero bytes and
    ``bytes(True)`` one, so an int must never be passed through ``bytes()`` here.
    """
    parts: list[bytes] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            data = item.encode()
        elif isinstance(item, (bytes, bytearray)):
            data = bytes(item)
        else:
            raise TypeError(
                f"BYTES element {i}: expected bytes or str, got {type(item).__name__} {item!r:.40}"
            )
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    """An array's raw contents for ``datatype`` (row-major, little-endian)."""
    if datatype == "BYTES":
        return encode_bytes(array.reshape(-1).tolist())
    return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).tobytes()


def from_raw(buf: bytes, datatype: str, shape: Sequence[int]) -> np.ndarray:
    """An array from raw contents; numeric ones are a zero-copy, read-only view of ``buf``."""
    if datatype == "BYTES":
        count = int(np.prod(shape)) if len(shape) else 1
        return np.array(decode_bytes(buf, count), dtype=object).reshape(shape)
    return np.frombuffer(buf, dtype=NUMPY_DTYPES[datatype]).reshape(shape)


def from_typed(contents: object, datatype: str, shape: Sequence[int]) -> np.ndarray:
    """An array from typed ``InferTensorContents`` (the field matching ``datatype``)."""
    values = getattr(contents, CONTENTS_FIELD[datatype])
    if datatype == "BYTES":
        return np.array(list(values), dtype=object).reshape(shape)
    return np.array(values, dtype=NUMPY_DTYPES[datatype]).reshape(shape)
