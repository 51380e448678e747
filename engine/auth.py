"""Bearer-token authentication for the gRPC port.

* Several tokens may be valid at once (rotation: add the new one, move the
  clients, remove the old one). A call is compared with every token, always
  all of them, on SHA-256 digests with :func:`hmac.compare_digest`, so neither
  the time taken nor the answer tells which token (or how long a token) exists.
* A missing, malformed or wrong token gets UNAUTHENTICATED with one fixed message.
* Admin tokens: when set, RepositoryModelLoad / RepositoryModelUnload need one
  (a valid non-admin token gets PERMISSION_DENIED); admin tokens also work for
  every other RPC.
* Health (``grpc.health.v1`` and ServerLive / ServerReady) needs a token too
  unless ``exempt_health`` is set, for probes that cannot send headers.

Tokens come from flags, ``CONVEYOR_*`` variables (comma-separated) or files
(one per line, ``#`` comments): see :func:`read_token_file`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from conveyor.errors import ConveyorError

HEALTH_METHODS = (
    "/grpc.health.v1.Health/",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)
ADMIN_METHODS = (
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
)
UNAUTHENTICATED_MESSAGE = "missing or invalid 'authorization: Bearer' token"
_PREFIX = b"bearer "


class AuthConfigError(ConveyorError):
    """A token file that cannot be read, or an empty token."""


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def split_tokens(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Tokens from ``"a,b"`` or a list; blanks dropped (tokens never contain commas)."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(t.strip() for t in items if t and t.strip())


def token_problem(token: str) -> str | None:
    """Why a client could never send ``token`` in an ``authorization`` header (HTTP/2
    header values are printable ASCII), or None. Names the position, never the token."""
    for i, char in enumerate(token):
        if not " " <= char <= "~":
            return (
                f"character {i + 1} is {char!r}: a bearer token is printable ASCII "
                "(an HTTP/2 header value), so no client could send it"
            )
    return None


def read_token_file(path: str | Path) -> tuple[str, ...]:
    """One token per line; blank lines and lines starting with ``#`` (after any
    indentation) are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AuthConfigError(f"token file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise AuthConfigError(
            f"token file {path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start]:#04x})"
        ) from None
    tokens: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        problem = token_problem(line)
        if problem is not None:
            raise AuthConfigError(f"token file {path}: line {number}: {problem}")
        tokens.append(line)
    if not tokens:
        raise AuthConfigError(f"token file {path}: holds no token")
    return tuple(tokens)


@dataclass(frozen=True)
class AuthConfig:
    """Who may call the server.

    Attributes:
        tokens: bearer tokens accepted on every RPC (empty: no token needed,
            unless ``admin_tokens`` is set, which then guards only load/unload).
        admin_tokens: tokens required for RepositoryModelLoad / Unload (empty:
            any of ``tokens``).
        exempt_health: health and liveness RPCs need no token (default False).
    """

    tokens: tuple[str, ...] = ()
    admin_tokens: tuple[str, ...] = ()
    exempt_health: bool = False

    def __post_init__(self) -> None:
        for token in (*self.tokens, *self.admin_tokens):
            if not token or token != token.strip():
                raise AuthConfigError("auth tokens must be non-empty, without surrounding spaces")
            problem = token_problem(token)
            if problem is not None:
                raise AuthConfigError(f"auth token: {problem}")

    @property
    def enabled(self) -> bool:
        return bool(self.tokens or self.admin_tokens)


class _TokenSet:
    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [_digest(t.encode()) for t in tokens]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __contains__(self, given: bytes) -> bool:
        probe = _digest(given)
        found = False
        for digest in self._digests:  # no early exit: the same work whichever matches
            found |= hmac.compare_digest(probe, digest)
        return found


def _bearer(details: grpc.HandlerCallDetails) -> bytes | None:
    for key, value in details.invocation_metadata or ():
        if key == "authorization":
            raw = value.encode() if isinstance(value, str) else bytes(value)
            if raw[: len(_PREFIX)].lower() == _PREFIX:
                return raw[len(_PREFIX) :].strip()
            return None
    return None


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Enforces an :class:`AuthConfig` (or a single ``token``) on every RPC."""

    def __init__(self, config: AuthConfig | str) -> None:
        if isinstance(config, str):
            if not config:
                raise AuthConfigError("auth token must not be empty")
            config = AuthConfig(tokens=(config,))
        self.config = config
        self._admin = _TokenSet(config.admin_tokens)
        self._users = _TokenSet(config.tokens)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        if self.config.exempt_health and method.startswith(HEALTH_METHODS):
            return handler
        admin_only = method.startswith(ADMIN_METHODS) and bool(self._admin)
        if not admin_only and not self._users:
            return handler  # only admin tokens configured: the rest is open
        token = _bearer(details)
        if token is None:
            return _deny(handler, grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        is_admin = token in self._admin
        if admin_only:
            if is_admin:
                return handler
            if token in self._users:
                return _deny(
                    handler,
                    grpc.StatusCode.PERMISSION_DENIED,
                    "model load / unload needs an admin token",
                )
            return _deny(handler, grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        if is_admin or token in self._users:
            return handler
        return _deny(handler, grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)


def _ignore(data: bytes) -> None:
    return None


def _deny(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    async def abort(context: Any) -> None:
        await context.abort(code, message)

    async def unary(request: Any, context: Any) -> Any:
        await abort(context)

    async def streaming(request: Any, context: Any) -> Any:
        await abort(context)
        yield  # pragma: no cover (makes this an async generator, as the handler expects)

    # The request is never parsed: an unauthenticated caller costs no decoding.
    kw = dict(request_deserializer=_ignore, response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    return grpc.stream_stream_rpc_method_handler(streaming, **kw)
