"""The string key of a categorical value, shared by every stage that must agree on it.

The trainer builds each model's vocabulary from these keys (``conveyor.trainer.export``),
the server's drift monitor buckets requests by them (``conveyor.engine.drift``) and the
client SDK sends them (``conveyor.client``), so one definition keeps all three in step.
Kept free of heavy imports: the client must not pull in torch to encode a request.
"""

from __future__ import annotations

from typing import Any

__all__ = ["category_key"]


def category_key(value: Any) -> str:
    """The string a client sends for a categorical value.

    Strings are themselves, booleans ``"true"``/``"false"``, whole floats as the integer
    they hold (``30.0`` -> ``"30"``), anything else ``str(value)`` (integers as decimal
    strings: ``42`` -> ``"42"``). Whole floats so, because pandas turns an integer column
    with a missing value into float64: its ``30.0`` is the vocabulary's ``30``, and keyed
    ``"30.0"`` it was silently out of vocabulary.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
