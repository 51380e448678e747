"""``conveyor serve``: run the inference server until SIGTERM/SIGINT, then drain and exit 0.

Options resolve as flags > ``CONVEYOR_*`` environment > ``[serve]`` in the
``--config`` TOML file (see :mod:`conveyor.config`). grpc and torch are
imported only when the command runs, so ``conveyor --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from conveyor.errors import ConveyorError

log = logging.getLogger("conveyor.engine.cli")


class ServeError(ConveyorError):
    """Bad serve options (port in use, several workers on port 0)."""


def _auth(args: argparse.Namespace) -> Any:
    """Tokens from the flags / CONVEYOR_* variables (comma-separated) and token files."""
    from conveyor.engine.auth import AuthConfig, read_token_file, split_tokens

    tokens = split_tokens(args.auth_token)
    if args.auth_token_file:
        tokens += read_token_file(args.auth_token_file)
    admin = split_tokens(args.admin_token)
    if args.admin_token_file:
        admin += read_token_file(args.admin_token_file)
    if args.auth_exempt_health and not (tokens or admin):
        raise ServeError("--auth-exempt-health needs --auth-token or --auth-token-file")
    config = AuthConfig(tokens=tokens, admin_tokens=admin, exempt_health=args.auth_exempt_health)
    return config if config.enabled else None


def _server_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ServeError("--tls-cert and --tls-key go together")
        from conveyor.engine.server import TLSConfig

        tls = TLSConfig(
            Path(args.tls_cert),
            Path(args.tls_key),
            Path(args.tls_client_ca) if args.tls_client_ca else None,
        )
    return dict(
        repository=args.model_repository,
        host=args.host,
        port=args.port,
        model_control=args.model_control,
        poll_interval=args.poll_interval,
        load_models=tuple(args.load_model or ()),
        version_policy=args.version_policy,
        max_batch_size=args.max_batch_size,
        max_queue_delay_microseconds=args.max_queue_delay_microseconds,
        max_queue_size=args.max_queue_size,
        instance_count=args.instance_count,
        max_message_bytes=args.max_message_bytes,
        grace=args.grace_period,
        reuse_port=args.workers > 1,
        tls=tls,
        auth=_auth(args),
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_concurrent_streams=args.max_concurrent_streams,
        execution_timeout=args.execution_timeout or None,
    )


class _Signals:
    """Catches SIGTERM and SIGINT from installation on (also while models load)."""

    def __init__(self) -> None:
        self.got = threading.Event()
        self.received: list[int] = []
        self._previous = {
            s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)
        }

    def _handler(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        self.got.set()

    def wait(self) -> int:
        """Block until a signal came; returns its number."""
        while not self.got.wait(1.0):
            pass
        return self.received[0]

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


def serve_one(kwargs: dict[str, Any]) -> int:
    """Run one server process until SIGTERM/SIGINT; 0 after a graceful stop."""
    from conveyor.engine.server import Server

    signals = _Signals()
    try:
        server = Server(**kwargs)
        server.start()
        signum = signals.wait()
        log.info("received %s; shutting down", signal.Signals(signum).name)
        server.stop()
    finally:
        signals.restore()
    return 0


def _child(kwargs: dict[str, Any], level: str, fmt: str) -> None:
    from conveyor.log import setup_logging

    setup_logging(level, fmt)
    raise SystemExit(serve_one(kwargs))


def _check_port_free(host: str, port: int) -> None:
    # Several workers bind with SO_REUSEPORT, which would also silently share a
    # port with an unrelated server: check that nobody holds it first.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServeError(f"cannot bind {host}:{port}: {exc.strerror}") from None


def serve_workers(kwargs: dict[str, Any], workers: int, level: str, fmt: str) -> int:
    """``workers`` server processes sharing one port (SO_REUSEPORT); the kernel spreads
    connections across them. Signals are forwarded; exits 0 when all exited 0."""
    import multiprocessing

    if kwargs["port"] == 0:
        raise ServeError("--workers > 1 needs a fixed --port (port 0 would differ per worker)")
    if kwargs["model_control"] == "explicit":
        raise ServeError(
            "--workers > 1 needs --model-control poll: a load/unload RPC would reach "
            "only one of the worker processes"
        )
    _check_port_free(kwargs["host"], kwargs["port"])
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_child, args=(kwargs, level, fmt)) for _ in range(workers)]
    for p in procs:
        p.start()
    log.info("started %d worker processes on port %d", workers, kwargs["port"])
    stopping = threading.Event()

    def forward(signum: int, frame: Any) -> None:
        stopping.set()
        for p in procs:
            if p.is_alive() and p.pid is not None:
                try:
                    import os

                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for p in procs:
            while p.is_alive():
                p.join(0.5)
                if not stopping.is_set() and p.exitcode not in (None, 0):
                    forward(signal.SIGTERM, None)  # one failed: stop the rest
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    codes = [p.exitcode for p in procs]
    return 0 if all(c == 0 for c in codes) else 1


def run(args: argparse.Namespace) -> int:
    if not args.model_repository:
        raise ServeError(
            "--model-repository is required (or CONVEYOR_MODEL_REPOSITORY, or "
            "model-repository in the config file)"
        )
    kwargs = _server_kwargs(args)
    if args.workers < 1:
        raise ServeError("--workers must be >= 1")
    if args.workers == 1:
        return serve_one(kwargs)
    return serve_workers(kwargs, args.workers, args.log_level, args.log_format)


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from conveyor.cli import add_command

    p = add_command(
        subparsers,
        "serve",
        help="serve a model repository over gRPC (Open Inference Protocol v2)",
        parents=[common],
        run=run,
    )
    # Not argparse-required: it may come from CONVEYOR_MODEL_REPOSITORY or the config file.
    p.add_argument(
        "--model-repository", default=None, metavar="DIR", help="REPO/NAME/<version>/ (required)"
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8001, help="gRPC port; 0 = any free (default: 8001)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=8002,
        help="Prometheus metrics port (default: 8002; reserved, served by the metrics stage)",
    )
    p.add_argument(
        "--model-control",
        default="poll",
        choices=("poll", "explicit"),
        help="poll: pick up repository changes; explicit: only load/unload RPCs (default: poll)",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="repository rescan period in poll mode (default: 5)",
    )
    p.add_argument(
        "--load-model",
        nargs="+",
        metavar="NAME",
        help="explicit mode: models to load at start ('*' = all; default: none)",
    )
    p.add_argument(
        "--version-policy",
        default=None,
        help="default when a config.json has none: latest[:N], all, specific:V1,V2 "
        "(default: latest:1)",
    )
    batching = p.add_argument_group("batching (override every model's config.json)")
    batching.add_argument("--max-batch-size", type=int, default=None, help="rows per execution")
    batching.add_argument(
        "--max-queue-delay-microseconds",
        type=int,
        default=None,
        help="how long a queued request waits for a fuller batch",
    )
    batching.add_argument(
        "--max-queue-size", type=int, default=None, help="queued requests before RESOURCE_EXHAUSTED"
    )
    batching.add_argument(
        "--instance-count", type=int, default=None, help="worker threads per model version"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port with SO_REUSEPORT (default: 1)",
    )
    p.add_argument(
        "--grace-period",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, time in-flight requests get to finish (default: 10)",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="largest request/response accepted (default: 64 MiB)",
    )
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="serve TLS with this cert")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="private key for --tls-cert")
    p.add_argument(
        "--tls-client-ca", default=None, metavar="PEM", help="require client certs signed by it"
    )
    p.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=4096,
        help="RPCs handled at once; beyond: RESOURCE_EXHAUSTED (default: 4096)",
    )
    p.add_argument(
        "--max-concurrent-streams",
        type=int,
        default=None,
        help="HTTP/2 streams per client connection; beyond, the client sees UNAVAILABLE "
        "(default: no limit; --max-concurrent-rpcs bounds the server)",
    )
    p.add_argument(
        "--execution-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a batch running longer is answered DEADLINE_EXCEEDED and its worker thread "
        "replaced; 0 = never (default: 60)",
    )
    security = p.add_argument_group("authentication")
    security.add_argument(
        "--auth-token",
        default=None,
        metavar="TOKEN[,TOKEN]",
        help="require 'authorization: Bearer TOKEN' on every RPC; several (comma-separated) "
        "for rotation (prefer CONVEYOR_AUTH_TOKEN or --auth-token-file: flags show in "
        "process lists)",
    )
    security.add_argument(
        "--auth-token-file", default=None, metavar="FILE", help="tokens, one per line"
    )
    security.add_argument(
        "--admin-token",
        default=None,
        metavar="TOKEN[,TOKEN]",
        help="RepositoryModelLoad / Unload need one of these (prefer CONVEYOR_ADMIN_TOKEN)",
    )
    security.add_argument(
        "--admin-token-file", default=None, metavar="FILE", help="admin tokens, one per line"
    )
    security.add_argument(
        "--auth-exempt-health",
        action="store_true",
        help="health checks (grpc.health.v1, ServerLive, ServerReady) need no token",
    )
