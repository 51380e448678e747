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

    Strings are themselves, booleans ``"true"``/``"false"``, anything else
    ``str(value)`` (integers as decimal strings: ``42`` -> ``"42"``).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
