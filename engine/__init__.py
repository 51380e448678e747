"""conveyor.engine: the gRPC inference server (Open Inference Protocol v2).

``Server`` is imported lazily so ``import conveyor.engine`` stays light (the
CLI imports submodules without loading grpc or torch).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Server"]


def __getattr__(name: str) -> Any:
    if name == "Server":
        from conveyor.engine.server import Server

        return Server
    raise AttributeError(f"module 'conveyor.engine' has no attribute {name!r}")
