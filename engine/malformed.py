"""Undecodable request messages get INVALID_ARGUMENT, not grpc's generic INTERNAL.

grpc answers a message its deserializer rejects (bad wire format, a string
field that is not UTF-8) with INTERNAL "Exception deserializing request!",
which tells a client nothing and reads like a server bug. Every method
handler's deserializer is wrapped once, when the services are registered
(:class:`LenientHandlers`): a message that does not parse becomes a marker,
and the call is answered INVALID_ARGUMENT naming the protobuf error.

Wrapping at registration, not in a server interceptor, costs nothing per call:
grpc.aio runs interceptors as a chain of coroutines for every RPC, and the
handler they return would be rebuilt for every RPC too. The services are served
through one generic handler rather than grpc's registered methods, because the
grpc.aio server loop waits on one pending accept per registered method (15 here)
every time it wakes, against one for all generic methods.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc


class _Malformed:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _message(marker: _Malformed) -> str:
    return f"request message does not parse: {marker.reason}"


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # google.protobuf.message.DecodeError and kin
            return _Malformed(str(exc) or type(exc).__name__)

    return parse


def lenient(
    handler: grpc.RpcMethodHandler, on_malformed: Callable[[], None] | None = None
) -> grpc.RpcMethodHandler:
    """``handler`` answering requests whose protobuf does not parse with INVALID_ARGUMENT;
    ``on_malformed()`` is called for each such request (the request counter)."""
    if handler.request_deserializer is None:
        return handler
    said = on_malformed or (lambda: None)
    kw = dict(
        request_deserializer=_lenient(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            if isinstance(request, _Malformed):
                said()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(request))
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kw)
    if handler.unary_stream:
        inner_us = handler.unary_stream
        if not inspect.isasyncgenfunction(inner_us):
            # A coroutine that answers through context.write (grpc.health's Watch):
            # iterating it failed every call with UNKNOWN.
            async def unary_stream_writes(request: Any, context: Any) -> None:
                if isinstance(request, _Malformed):
                    said()
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(request))
                await inner_us(request, context)

            return grpc.unary_stream_rpc_method_handler(unary_stream_writes, **kw)

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, _Malformed):
                said()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(request))
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, **kw)
    inner_stream = handler.stream_stream or handler.stream_unary
    streaming_out = handler.stream_stream is not None

    # A malformed message in a stream ends the request stream there, as if the
    # client had closed it: the handler answers what came before, then the call
    # ends INVALID_ARGUMENT (aborting from inside the handler's reader task
    # instead would race with its writes).
    async def checked(requests: AsyncIterator[Any], bad: list[_Malformed]) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, _Malformed):
                bad.append(request)
                return
            yield request

    if streaming_out:

        async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
            bad: list[_Malformed] = []
            async for item in inner_stream(checked(requests, bad), context):
                yield item
            if bad:
                said()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(bad[0]))

        return grpc.stream_stream_rpc_method_handler(stream_stream, **kw)

    async def stream_unary(requests: Any, context: Any) -> Any:
        bad: list[_Malformed] = []
        response = await inner_stream(checked(requests, bad), context)
        if bad:
            said()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(bad[0]))
        return response

    return grpc.stream_unary_rpc_method_handler(stream_unary, **kw)


class LenientHandlers(grpc.GenericRpcHandler):
    """Collects services for a grpc.aio server, each method wrapped by :func:`lenient`.

    Pass it where generated code expects a server
    (``add_GRPCInferenceServiceServicer_to_server(servicer, handlers)``), then
    register it once: ``server.add_generic_rpc_handlers((handlers,))``.
    """

    def __init__(self, on_malformed: Callable[[str], None] | None = None) -> None:
        """``on_malformed(method)``: called with the full method name of each request
        whose message does not parse."""
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._on_malformed = on_malformed

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        hook = self._on_malformed
        for method, handler in handlers.items():
            name = f"/{service}/{method}"
            said = None if hook is None else functools.partial(hook, name)
            self._methods[name] = lenient(handler, said)

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        # Generated code passes each service twice: as a generic handler and as
        # registered methods; the registered form names its methods, so it is the one kept.
        pass

    @property
    def methods(self) -> dict[str, grpc.RpcMethodHandler]:
        """The wrapped handlers collected so far, by full method name
        (``/package.Service/Method``)."""
        return dict(self._methods)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return self._methods.get(handler_call_details.method)
