"""The string key of a categorical value, shared by every stage that must agree on it.

The trainer builds each model's vocabulary from these keys (``conveyor.trainer.export``),
the server's drift monitor buckets requests by them (``conveyor.engine.drift``) and the
client SDK sends them (``conveyor.client``), so one definition keeps all three in step.
Kept free of heavy imports: the client must not pull in torch to encode a request.
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = ["category_key"]


def category_key(value: Any) -> str:
    """The string a client sends for a categorical value.

    Strings are themselves, booleans ``"true"``/``"false"``, whole floats as the integer
    they hold (``30.0`` -> ``"30"``), floats that are exactly float32 values as their
    shortest float32 text (``0.10000000149011612``, float32's 0.1, -> ``"0.1"``), anything
    else ``str(value)`` (integers as decimal strings: ``42`` -> ``"42"``). Whole floats so,
    because pandas turns an integer column with a missing value into float64: its ``30.0``
    is the vocabulary's ``30``, and keyed ``"30.0"`` it was silently out of vocabulary.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        single = _float32_text(value)
        if single is not None:
            return single
    return str(value)


def _float32_text(value: float) -> str | None:
    """The shortest text of ``value`` at float32 precision when it is exactly a float32
    value, else None. A float32 column's 0.1 reaches Python as 0.10000000149011612: the
    trainer matched it with the spec's 0.1 (its lookup casts the vocabulary to the
    column's type), while the SDK sent "0.10000000149011612", out of the vocabulary
    "0.1", and every such row was served as an unseen value."""
    try:
        single = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:  # beyond float32's range
        return None
    if single != value:
        return None
    import numpy as np  # only for floats that are float32 values

    return str(np.float32(value))
