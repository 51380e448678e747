"""The ranges of the server's numeric limits, one table for both spellings:
``conveyor.engine.Server``'s arguments and ``conveyor serve``'s flags (which name
themselves in the message). Kept free of heavy imports: the CLI checks its flags with
it before anything starts."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# gRPC takes these limits as C ints: a larger value was an OverflowError traceback.
GRPC_INT_MAX = 2**31 - 1
_GRPC_INT_RANGE = f"1..{GRPC_INT_MAX}"

_RANGES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    # 0 rescans the repository without pause.
    "poll_interval": ("a number of seconds > 0", lambda v: v > 0 and math.isfinite(v)),
    "grace": ("a number of seconds >= 0", lambda v: v >= 0 and math.isfinite(v)),
    # gRPC reads -1 as "no limit" and 0 as "refuse everything".
    "max_message_bytes": (_GRPC_INT_RANGE, lambda v: 1 <= v <= GRPC_INT_MAX),
    # gRPC raises a bare ValueError for 0.
    "max_concurrent_rpcs": (_GRPC_INT_RANGE, lambda v: 1 <= v <= GRPC_INT_MAX),
    # HTTP/2 allows 0, which refuses every stream: a server that answers nothing.
    "max_concurrent_streams": (_GRPC_INT_RANGE, lambda v: v is None or 1 <= v <= GRPC_INT_MAX),
}


def out_of_range(argument: str, value: Any) -> str | None:
    """The rule ``value`` breaks for the Server argument ``argument`` (``"1..2147483647"``), or
    None when it is in range (NaN is out of every range)."""
    rule, ok = _RANGES[argument]
    return None if ok(value) else rule
