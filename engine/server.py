"""The embeddable server: gRPC (OIP v2, health, reflection) over a live model repository.

    from conveyor.engine import Server

    with Server("models/", port=0) as server:      # port 0: a free port
        print(server.address)                      # "127.0.0.1:54321"
        ...                                        # call it with conveyor.client

The server runs its own event loop (uvloop when installed) in a background
thread, so it can be embedded in any program, sync or async. ``stop(grace)``
stops accepting RPCs, lets in-flight ones finish for up to ``grace`` seconds,
then drains and drops the models.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from conveyor.engine.auth import AuthConfig, BearerTokenInterceptor
from conveyor.engine.batcher import DEFAULT_EXECUTION_TIMEOUT, MAX_ABANDONED_THREADS
from conveyor.engine.call_limit import CallLimit
from conveyor.engine.drift import DriftSettings
from conveyor.engine.health_service import HealthServicer
from conveyor.engine.hosts import bare_host, bind_problem, host_port
from conveyor.engine.limits import out_of_range
from conveyor.engine.malformed import LenientHandlers
from conveyor.engine.metrics import MetricsEndpoint, ServerMetrics
from conveyor.engine.model_config import VersionPolicy
from conveyor.engine.protos import grpc_service_pb2 as pb
from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc
from conveyor.engine.repository import MODEL_CONTROL, BatchingOverrides, ModelRepository
from conveyor.engine.service import InferenceServicer
from conveyor.engine.tls import TLSConfig
from conveyor.errors import ConveyorError
from conveyor.standard_streams import open_standard_streams

log = logging.getLogger("conveyor.engine.server")

SERVICE_NAME = "inference.GRPCInferenceService"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# RPCs being handled at once, server-wide; beyond it a new call is answered
# RESOURCE_EXHAUSTED at once (each per-model queue is bounded as well).
DEFAULT_MAX_CONCURRENT_RPCS = 4096
# HTTP/2 streams one connection may open at once (None: gRPC's default, unlimited).
# Off by default: a burst beyond it is refused with REFUSED_STREAM, which clients
# see as UNAVAILABLE; the server-wide RPC limit answers RESOURCE_EXHAUSTED instead.
DEFAULT_MAX_CONCURRENT_STREAMS: int | None = None


class ServerError(ConveyorError):
    """The server could not start (port in use, bad repository)."""


class ServerArgumentError(ServerError, ValueError):
    """An argument of :class:`Server` out of range; the message names it and its value.

    A ValueError, as Python code expects of a bad argument, and a ServerError, so code
    that catches the server's start-up errors (and ``conveyor serve``) catches it too.
    """


def _reflection_pool() -> Any:
    """Our private descriptor pool plus health and reflection, so reflection describes all three."""
    for module in (health_pb2, reflection_pb2):
        proto = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        try:
            pb.POOL.FindFileByName(proto.name)
        except KeyError:
            pb.POOL.Add(proto)
    return pb.POOL


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if bare_host(host).lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare_host(host)).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _new_loop() -> asyncio.AbstractEventLoop:
    open_standard_streams()  # an embedding program may run with fd 0-2 closed
    try:
        import uvloop
    except ImportError:  # optional on platforms without it
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Server:
    """An inference server over ``repository``; use as a context manager or call start/stop.

    Arguments out of range raise :class:`ServerArgumentError` (a ValueError) naming
    the argument, before anything starts.

    Args:
        repository: the model repository directory (``REPO/NAME/<version>/``).
        host: interface to bind (default ``127.0.0.1``; ``0.0.0.0`` for all; an IPv6
            address with or without brackets, ``::1`` or ``[::1]``).
        port: TCP port (default 8001); 0 picks a free one, see :attr:`port`.
        model_control: ``poll`` (default) or ``explicit``.
        poll_interval: seconds between repository scans in poll mode (default 5; > 0).
        load_models: models loaded at start in explicit mode (``*`` = all); refused in
            poll mode, which serves every model (Triton refuses ``--load-model`` too).
        version_policy: default policy, e.g. ``latest:1`` (default), ``all``, ``specific:1,3``.
        max_batch_size, max_queue_delay_microseconds, max_queue_size, instance_count:
            override every model's config.json when set.
        max_message_bytes: largest request or response accepted (default 64 MiB);
            bigger ones are refused with RESOURCE_EXHAUSTED before being read.
        grace: seconds in-flight requests get on stop (default 10; >= 0).
        reuse_port: share the port with other processes (SO_REUSEPORT), for
            multi-process serving; off by default so a used port fails loudly.
        tls: serve TLS instead of plaintext (``client_ca`` set: mutual TLS).
        auth_token: shorthand for ``auth=AuthConfig(tokens=(auth_token,))``.
        auth: bearer tokens, admin tokens, health exemption (see :mod:`conveyor.engine.auth`).
        max_concurrent_rpcs: calls in progress at once (default 4096; an open stream
            counts until it ends); more: RESOURCE_EXHAUSTED. Health, reflection,
            ServerLive, ServerReady and ModelReady are never refused
            (:mod:`conveyor.engine.call_limit`).
        max_concurrent_streams: HTTP/2 streams per connection (default: no limit).
        execution_timeout: seconds one batch may run in a model (default 60) before
            its requests get DEADLINE_EXCEEDED and its worker thread is replaced;
            0 or None = never.
        max_abandoned_threads: hung workers tolerated per model version (default 4);
            beyond, the version answers UNAVAILABLE until one returns.
        metrics_port: serve Prometheus ``/metrics`` on ``host:metrics_port`` (0 = a free
            port, see :attr:`metrics_port`); None (default) = no endpoint, metrics are
            still kept in :attr:`metrics` (``conveyor serve`` passes 8002). A negative
            port is refused: ``conveyor serve --metrics-port -1`` is None here.
        drift: online drift settings (default :class:`DriftSettings()`: on, 10,000-row
            window, PSI threshold 0.2); None = no drift tracking.
    """

    def __init__(
        self,
        repository: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 8001,
        model_control: str = "poll",
        poll_interval: float = 5.0,
        load_models: Iterable[str] = (),
        version_policy: str | VersionPolicy | None = None,
        max_batch_size: int | None = None,
        max_queue_delay_microseconds: int | None = None,
        max_queue_size: int | None = None,
        instance_count: int | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        grace: float = 10.0,
        reuse_port: bool = False,
        tls: TLSConfig | None = None,
        auth_token: str | None = None,
        auth: AuthConfig | None = None,
        max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
        max_concurrent_streams: int | None = DEFAULT_MAX_CONCURRENT_STREAMS,
        execution_timeout: float | None = DEFAULT_EXECUTION_TIMEOUT,
        max_abandoned_threads: int = MAX_ABANDONED_THREADS,
        metrics_port: int | None = None,
        drift: DriftSettings | None = DriftSettings(),  # noqa: B008 (frozen dataclass)
    ) -> None:
        load_models = tuple(load_models)  # read once: it may be an iterator
        if isinstance(version_policy, str):
            try:
                version_policy = VersionPolicy.parse(version_policy)
            except ValueError as exc:
                raise ServerArgumentError(str(exc)) from None
        _check_arguments(
            port=port,
            metrics_port=metrics_port,
            model_control=model_control,
            poll_interval=poll_interval,
            load_models=load_models,
            grace=grace,
            max_message_bytes=max_message_bytes,
            max_concurrent_rpcs=max_concurrent_rpcs,
            max_concurrent_streams=max_concurrent_streams,
        )
        self.repository_path = Path(repository)
        self.host = bare_host(host)
        self._requested_port = port
        self.port: int | None = None
        self.grace = grace
        self._options = dict(
            model_control=model_control,
            poll_interval=poll_interval,
            load_models=load_models,
            version_policy=version_policy,
            overrides=_overrides(
                max_batch_size=max_batch_size,
                max_queue_delay_microseconds=max_queue_delay_microseconds,
                max_queue_size=max_queue_size,
                instance_count=instance_count,
                execution_timeout=execution_timeout,
                max_abandoned_threads=max_abandoned_threads,
            ),
        )
        self._grpc_options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
        self._reuse_port = reuse_port
        self._max_message_bytes = max_message_bytes
        if max_concurrent_streams is not None:
            self._grpc_options.append(("grpc.max_concurrent_streams", max_concurrent_streams))
        self._max_concurrent_rpcs = max_concurrent_rpcs
        self._tls = tls
        if auth is None and auth_token:
            auth = AuthConfig(tokens=(auth_token,))
        self.auth = auth if auth is not None and auth.enabled else None
        # The token check runs before the handler's deserializer, so an
        # unauthenticated message is never parsed. Without tokens, no interceptor
        # runs at all (malformed messages are handled by the handlers themselves).
        self._interceptors: list[grpc.aio.ServerInterceptor] = (
            [BearerTokenInterceptor(self.auth)] if self.auth else []
        )
        if not is_loopback(host):
            missing = [w for w, have in (("TLS", tls), ("auth tokens", self.auth)) if not have]
            if missing:
                log.warning(
                    "binding %s, which is not a loopback address, without %s: anyone who "
                    "can reach the port can %s",
                    host,
                    " or ".join(missing),
                    "read the traffic" if self.auth else "call every RPC, including load/unload",
                )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._stop_requested: asyncio.Event | None = None
        self._stop_wanted = False  # request_stop() before the loop had its event
        self._abandon_loads = False  # request_stop(): do not wait for a load under way
        self._stop_grace: float | None = None
        self.repository: ModelRepository | None = None
        self.servicer: InferenceServicer | None = None
        self._metrics_port = metrics_port
        self.metrics_port: int | None = None
        self.metrics = ServerMetrics()
        self._options["metrics"] = self.metrics
        self._options["drift"] = drift
        self._metrics_endpoint: MetricsEndpoint | None = None

    @property
    def address(self) -> str:
        """``host:port`` to dial (available once started; an IPv6 host in brackets)."""
        return host_port(self.host, self.port or 0)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> Server:
        """Bind, load the models, and serve in a background thread; returns self once ready."""
        if self._thread is not None:
            raise ServerError("server already started")
        if self._started.is_set():
            # Like a gRPC server or a thread: one run. A second start returned at once
            # with the last run's address while a new run bound another port.
            raise ServerError("a Server runs once: create a new one to serve again")
        self._thread = threading.Thread(target=self._run, name="conveyor-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise ServerError(f"server did not start within {timeout}s")
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise self._start_error
        # A program that exits without stop(): stop here, before the interpreter
        # tears down what the serving thread (a daemon) still uses: in-flight
        # requests get the grace period and the models are unloaded.
        atexit.register(self.stop)
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (``grace`` s), unload, join."""
        if self._thread is None:
            return
        atexit.unregister(self.stop)
        if grace is not None:
            self._stop_grace = grace
        self._request_stop(abandon_loads=False)
        self._thread.join()
        self._thread = None

    def load_abandoned(self) -> bool:
        """After :meth:`stop`: whether a model load the stop did not wait for is still
        running (see ``conveyor.engine.load_thread``)."""
        repository = self.repository
        return repository is not None and repository.load_under_way()

    def request_stop(self) -> None:
        """Ask the server to stop, without waiting for it (safe in a signal handler), for a
        process about to exit: a model load under way is abandoned rather than waited for
        (its thread is a daemon; see ``load_thread``), so a start still loading models
        ends there, serving nothing. :meth:`stop` then waits for the drain. A :meth:`stop`
        alone also waits for a load under way, so that no engine thread outlives it."""
        self._request_stop(abandon_loads=True)

    def _request_stop(self, *, abandon_loads: bool) -> None:
        self._abandon_loads = self._abandon_loads or abandon_loads
        self._stop_wanted = True
        loop, event = self._loop, self._stop_requested
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: it is over
                loop.call_soon_threadsafe(event.set)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped (True) or ``timeout`` passed (False)."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the event loop thread ------------------------------------------------------------

    def _run(self) -> None:
        loop = _new_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() or logged
            if not self._started.is_set():
                self._start_error = exc
            else:
                log.exception("server loop failed")
        finally:
            self._started.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _bind(self, server: grpc.aio.Server, target: str, credentials: Any) -> None:
        """Open the metrics page, then add the gRPC port (``self.metrics_port``,
        ``self.port``). In that order: a gRPC server holds its port from add_*_port on and
        lets go only once started and stopped, so nothing may fail after it; a metrics
        page is closed if the gRPC port cannot be had."""
        if self._metrics_port is not None:
            try:
                self._metrics_endpoint = MetricsEndpoint(
                    self.metrics.registry, self.host, self._metrics_port
                )
            except OSError as exc:
                raise ServerError(str(exc)) from None
            self.metrics_port = self._metrics_endpoint.port
        try:
            if credentials is None:
                port = server.add_insecure_port(target)
            else:
                port = server.add_secure_port(target, credentials)
            if not port:
                raise _bind_error(target, "")
        except BaseException as exc:
            if self._metrics_endpoint is not None:
                self._metrics_endpoint.close()
                self._metrics_endpoint = None
            if isinstance(exc, RuntimeError):  # taken since the probe
                raise _bind_error(target, str(exc)) from None
            raise
        self.port = port
        if self.metrics_port is not None:
            # Like the gRPC port: with --metrics-port 0 the log is where to find it.
            log.info("metrics on %s/metrics", host_port(self.host, self.metrics_port))

    async def _serve(self) -> None:
        self._stop_requested = asyncio.Event()
        if self._stop_wanted:  # request_stop() came before the event existed
            self._stop_requested.set()
        try:
            repository = ModelRepository(self.repository_path, **self._options)
        except Exception as exc:
            message = str(exc)  # ModelLoadError names the repository itself
            if not message.startswith("model repository"):
                message = f"model repository: {message}"
            raise ServerError(message) from None
        servicer = InferenceServicer(
            repository, metrics=self.metrics, max_message_bytes=self._max_message_bytes
        )
        # No maximum_concurrent_rpcs here: gRPC's limit counts the health probes too
        # (engine/call_limit.py).
        server = grpc.aio.server(options=self._grpc_options, interceptors=self._interceptors)
        metrics = self.metrics

        def unserved(code: str) -> Callable[[str], None]:
            # An inference request refused before any model saw it names no model:
            # counted with the empty labels of the requests no version served.
            def count(method: str) -> None:
                if method.endswith(("/ModelInfer", "/ModelStreamInfer")):
                    metrics.unserved("", "", code)

            return count

        malformed = unserved("INVALID_ARGUMENT")

        handlers = LenientHandlers(on_malformed=malformed)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, handlers)
        health_servicer = HealthServicer()
        # grpcio's servicer starts with "" SERVING; a readiness probe must not see that
        # while the models load and every inference is refused UNAVAILABLE (Triton
        # answers NOT_SERVING until ready, too). SERVING is set once ready, below.
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, handlers)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
                pool=_reflection_pool(),
            ),
            handlers,
        )
        limit = CallLimit(self._max_concurrent_rpcs, on_refused=unserved("RESOURCE_EXHAUSTED"))
        server.add_generic_rpc_handlers((limit.handlers(handlers.methods),))
        target = host_port(self.host, self._requested_port)
        credentials = None
        if self._tls is not None:
            try:
                credentials = self._tls.server_credentials()
            except ValueError as exc:
                raise ServerError(str(exc)) from None
        # Probed first: gRPC's error says only "Failed to bind" whatever the cause, and
        # it logs its own line to stderr besides (GRPC_VERBOSITY is process-wide, read
        # once at start: it cannot be quietened for this one call).
        problem = bind_problem(self.host, self._requested_port, self._reuse_port)
        if problem is not None:
            raise ServerError(f"cannot bind {target}: {problem}")
        self._bind(server, target, credentials)
        self.repository, self.servicer = repository, servicer
        await server.start()
        try:
            if not await self._started_before_stop(repository):
                return  # stopped while loading: never ready, nothing served
            servicer.ready = True
            for name in ("", SERVICE_NAME):
                await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
            log.info(
                "serving %s on %s",
                self.repository_path,
                self.address,
                extra={"models": sorted(repository.models)},
            )
            self._started.set()
            await self._stop_requested.wait()
        finally:
            servicer.ready = False
            await health_servicer.enter_graceful_shutdown()  # Watch streams end
            servicer.drain()  # ModelStreamInfer streams answer what they read, then end
            grace = self.grace if self._stop_grace is None else self._stop_grace
            log.info("stopping: finishing in-flight requests (grace %.1fs)", grace)
            await server.stop(grace)
            await repository.close(wait_for_load=not self._abandon_loads)
            if self._metrics_endpoint is not None:
                self._metrics_endpoint.close()
            log.info("stopped")

    async def _started_before_stop(self, repository: ModelRepository) -> bool:
        """The repository's start (the initial loads), unless a stop comes first: a SIGTERM
        during a minute of model loading waited for it, then served, then stopped."""
        assert self._stop_requested is not None
        loading = asyncio.ensure_future(repository.start())
        stop = asyncio.ensure_future(self._stop_requested.wait())
        await asyncio.wait({loading, stop}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            stop.cancel()
            loading.result()  # a start error is raised here
            return True
        loading.cancel()  # the load under way is abandoned (repository._load discards it)
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        log.info("stop requested while loading models: not serving")
        return False


def _bind_error(target: str, detail: str) -> ServerError:
    return ServerError(f"cannot bind {target}{': ' + detail if detail else ''}")


def _overrides(**settings: Any) -> BatchingOverrides:
    try:
        return BatchingOverrides(**settings)
    except ValueError as exc:
        raise ServerArgumentError(str(exc)) from None


def _check_arguments(
    *,
    port: int,
    metrics_port: int | None,
    model_control: str,
    poll_interval: float,
    load_models: tuple[str, ...],
    grace: float,
    max_message_bytes: int,
    max_concurrent_rpcs: int,
    max_concurrent_streams: int | None,
) -> None:
    """Refuse what gRPC or the loops would take wrongly: a port gRPC wraps (70000 binds
    4464), models to load that poll mode would ignore, and limits out of their ranges
    (conveyor.engine.limits)."""
    if not 0 <= port <= 65535:
        raise ServerArgumentError(f"port must be 0..65535 (0 = a free port), got {port}")
    if metrics_port is not None and not 0 <= metrics_port <= 65535:
        raise ServerArgumentError(
            "metrics_port must be 0..65535 (0 = a free port), or None for no endpoint "
            f"(conveyor serve's -1), got {metrics_port}"
        )
    if metrics_port == port != 0:
        # One address cannot take both: the second bind failed without saying why.
        raise ServerArgumentError(
            f"metrics_port {metrics_port} is the gRPC port too: give them different ports"
        )
    if model_control not in MODEL_CONTROL:
        raise ServerArgumentError(
            f"model_control: expected poll or explicit, got {model_control!r}"
        )
    if load_models and model_control != "explicit":
        raise ServerArgumentError(
            f"load_models {list(load_models)} needs model_control='explicit' (poll mode "
            "serves every model in the repository)"
        )
    for name, value in (
        ("poll_interval", poll_interval),
        ("grace", grace),
        ("max_message_bytes", max_message_bytes),
        ("max_concurrent_rpcs", max_concurrent_rpcs),
        ("max_concurrent_streams", max_concurrent_streams),
    ):
        rule = out_of_range(name, value)
        if rule is not None:
            unset = " (None = no limit)" if name == "max_concurrent_streams" else ""
            raise ServerArgumentError(f"{name} must be {rule}{unset}, got {value}")
