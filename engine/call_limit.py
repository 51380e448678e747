"""The server-wide limit on calls in progress (``--max-concurrent-rpcs``), probes exempt.

gRPC's own limit (the server's ``maximum_concurrent_rpcs``) counts every call. With
inference filling it, the health service's Check, OIP's ServerLive and ServerReady
were refused RESOURCE_EXHAUSTED too: liveness probes failed, and an orchestrator
restarted the server, exactly when it was busiest (an open ModelStreamInfer stream
holds a slot for its whole life, idle or not). Triton has no limit that covers its
health endpoints either. Here every method handler except the probes' is wrapped
once, when the services are registered (as :mod:`conveyor.engine.malformed` wraps
them), and counts its own calls: the health service, reflection, and OIP's
ServerLive, ServerReady and ModelReady are never refused.

The count lives on the server's event loop (grpc.aio runs every handler there), so it
needs no lock.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

#: Services and OIP methods the limit never refuses: what probes and tools call.
EXEMPT_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")
EXEMPT_OIP_METHODS = ("ServerLive", "ServerReady", "ModelReady")


def exempt(method: str) -> bool:
    """Whether the full method name ``/package.Service/Method`` is outside the limit."""
    _, service, name = method.split("/", 2)
    if service in EXEMPT_SERVICES:
        return True
    return service == "inference.GRPCInferenceService" and name in EXEMPT_OIP_METHODS


class CallLimit:
    """At most ``limit`` calls of the wrapped methods in progress; more are answered
    RESOURCE_EXHAUSTED at once. ``on_refused(method)`` is called for each refusal."""

    def __init__(self, limit: int, on_refused: Callable[[str], None] | None = None) -> None:
        self.limit = limit
        self.active = 0
        self._on_refused = on_refused

    def _message(self) -> str:
        return f"more than {self.limit} calls in progress (--max-concurrent-rpcs)"

    async def _refuse(self, method: str, context: Any) -> None:
        if self._on_refused is not None:
            self._on_refused(method)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._message())

    def handlers(self, methods: dict[str, grpc.RpcMethodHandler]) -> grpc.GenericRpcHandler:
        """One generic handler serving ``methods`` (full name -> handler), each wrapped."""
        return _Methods({name: self.wrap(name, h) for name, h in methods.items()})

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` counted against the limit (returned as it is when exempt)."""
        if exempt(method):
            return handler
        kw = dict(
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary_response(request: Any, context: Any) -> Any:
                if self.active >= self.limit:
                    await self._refuse(method, context)
                self.active += 1
                try:
                    return await inner(request, context)
                finally:
                    self.active -= 1

            if handler.unary_unary:
                return grpc.unary_unary_rpc_method_handler(unary_response, **kw)
            return grpc.stream_unary_rpc_method_handler(unary_response, **kw)

        inner_stream = handler.unary_stream or handler.stream_stream
        make = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        if not inspect.isasyncgenfunction(inner_stream):
            # A coroutine that answers through context.write (grpc.health's Watch).
            async def streaming_writes(request: Any, context: Any) -> None:
                if self.active >= self.limit:
                    await self._refuse(method, context)
                self.active += 1
                try:
                    await inner_stream(request, context)
                finally:
                    self.active -= 1

            return make(streaming_writes, **kw)

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            if self.active >= self.limit:
                await self._refuse(method, context)
            self.active += 1
            try:
                async for item in inner_stream(request, context):
                    yield item
            finally:
                self.active -= 1

        return make(streaming, **kw)


class _Methods(grpc.GenericRpcHandler):
    def __init__(self, methods: dict[str, grpc.RpcMethodHandler]) -> None:
        self._methods = methods

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return self._methods.get(handler_call_details.method)
