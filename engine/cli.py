"""``conveyor serve``: run the inference server until SIGTERM/SIGINT, then drain and exit 0.

Options resolve as flags > ``CONVEYOR_*`` environment > ``[serve]`` in the
``--config`` TOML file (see :mod:`conveyor.config`). grpc and torch are
imported only when the command runs, so ``conveyor --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from conveyor.engine.hosts import bare_host, bind_problem, host_port
from conveyor.engine.limits import out_of_range
from conveyor.errors import ConveyorError

log = logging.getLogger("conveyor.engine.cli")


class ServeError(ConveyorError):
    """Bad serve options (port in use, several workers on port 0)."""


def _auth(args: argparse.Namespace) -> Any:
    """Tokens from the flags / CONVEYOR_* variables (comma-separated) and token files."""
    from conveyor.engine.auth import AuthConfig, read_token_file

    tokens = _tokens(args.auth_token, "--auth-token / CONVEYOR_AUTH_TOKEN")
    if args.auth_token_file:
        tokens += read_token_file(args.auth_token_file)
    admin = _tokens(args.admin_token, "--admin-token / CONVEYOR_ADMIN_TOKEN")
    if args.admin_token_file:
        admin += read_token_file(args.admin_token_file)
    if args.auth_exempt_health and not (tokens or admin):
        raise ServeError(
            "--auth-exempt-health needs a token to exempt health from: --auth-token, "
            "--auth-token-file, --admin-token or --admin-token-file"
        )
    config = AuthConfig(tokens=tokens, admin_tokens=admin, exempt_health=args.auth_exempt_health)
    return config if config.enabled else None


def _tokens(value: str | None, source: str) -> tuple[str, ...]:
    """The comma-separated tokens of a flag or variable. Set but empty (a secret that
    was not mounted: CONVEYOR_AUTH_TOKEN="") is an error, not a server open to all."""
    from conveyor.engine.auth import split_tokens, token_problem

    tokens = split_tokens(value)
    if value is not None and not tokens:
        raise ServeError(
            f"{source} is set but holds no token ({value!r}); give one, or unset it "
            "to serve without authentication"
        )
    for n, token in enumerate(tokens, 1):
        problem = token_problem(token)
        if problem is not None:
            raise ServeError(f"{source}: token {n}: {problem}")
    return tokens


_SET_BUT_EMPTY = {
    "tls_cert": "--tls-cert / CONVEYOR_TLS_CERT",
    "tls_key": "--tls-key / CONVEYOR_TLS_KEY",
    "tls_client_ca": "--tls-client-ca / CONVEYOR_TLS_CLIENT_CA",
    "auth_token_file": "--auth-token-file / CONVEYOR_AUTH_TOKEN_FILE",
    "admin_token_file": "--admin-token-file / CONVEYOR_ADMIN_TOKEN_FILE",
}


def _check_set_but_empty(args: argparse.Namespace) -> None:
    """A TLS or token-file setting given as "" (a variable whose secret was not mounted,
    ``--tls-client-ca "$CA"`` with CA unset) is an error: taken as "not given", it served
    plaintext, TLS without client certificates, or no authentication, without a word."""
    for attr, source in _SET_BUT_EMPTY.items():
        value = getattr(args, attr, None)
        if value is not None and not str(value).strip():
            raise ServeError(
                f"{source} is set but empty; give a file, or unset it to serve without it"
            )


def _server_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    _check_set_but_empty(args)
    tls = None
    if args.tls_client_ca and not (args.tls_cert and args.tls_key):
        # Without them the CA would be ignored and the server would serve plaintext,
        # the opposite of what the flag asks for.
        raise ServeError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ServeError("--tls-cert and --tls-key go together")
        from conveyor.engine.tls import CertificateDatesError, TLSConfig

        tls = TLSConfig(
            Path(args.tls_cert),
            Path(args.tls_key),
            Path(args.tls_client_ca) if args.tls_client_ca else None,
        )
        try:
            # Checked here as well as in the server, so that --workers N fails once,
            # before any worker process starts.
            tls.server_credentials()
        except CertificateDatesError as exc:
            flag = "--tls-client-ca" if exc.role == "client CA" else "--tls-cert"
            raise ServeError(f"{flag} {exc.path}: {exc.problem}") from None
        except ValueError as exc:
            raise ServeError(str(exc)) from None
    return dict(
        repository=args.model_repository,
        host=bare_host(args.host),
        port=args.port,
        model_control=args.model_control,
        poll_interval=args.poll_interval,
        load_models=tuple(args.load_model or ()),
        version_policy=_version_policy(args.version_policy),
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
        execution_timeout=args.execution_timeout,
        metrics_port=None if args.metrics_port == -1 else args.metrics_port,
        drift=_drift_settings(args),
    )


def _version_policy(flag: str | None) -> Any:
    """``--version-policy`` parsed here, so a bad one is the one error line naming the
    flag (from the server it was a traceback, in every worker of ``--workers N``)."""
    from conveyor.engine.model_config import VersionPolicy

    if flag is None:
        return None
    try:
        return VersionPolicy.parse(flag, where="--version-policy")
    except ValueError as exc:
        raise ServeError(str(exc)) from None


def _check_batching(args: argparse.Namespace) -> None:
    """Refuse bad batching flags here, before any worker process starts (a worker
    failing on them would only be restarted)."""
    from conveyor.engine.repository import BatchingOverrides

    try:
        BatchingOverrides(
            max_batch_size=args.max_batch_size,
            max_queue_delay_microseconds=args.max_queue_delay_microseconds,
            max_queue_size=args.max_queue_size,
            instance_count=args.instance_count,
            execution_timeout=args.execution_timeout,
        )
    except ValueError as exc:
        raise ServeError("--" + str(exc).replace("_", "-")) from None
    rule = out_of_range("max_message_bytes", args.max_message_bytes)
    if rule is not None:
        raise ServeError(f"--max-message-bytes must be {rule}, got {args.max_message_bytes}")


def _check_limits(args: argparse.Namespace) -> None:
    """Refuse out-of-range server flags before anything starts, naming the flag: gRPC
    wraps a port past 65535 (70000 binds 4464) and fails with a traceback on
    --max-concurrent-rpcs 0; --poll-interval 0 rescans the repository without pause.
    ``conveyor.engine.Server`` checks the same ranges (conveyor.engine.limits), naming
    its arguments."""
    if not 0 <= args.port <= 65535:
        raise ServeError(f"--port must be 0..65535 (0 = any free), got {args.port}")
    if not -1 <= args.metrics_port <= 65535:
        raise ServeError(
            f"--metrics-port must be 0..65535 (0 = any free) or -1 (none), got {args.metrics_port}"
        )
    if args.metrics_port == args.port != 0:
        # As the embedded Server refuses it; with --workers the parent binds the metrics
        # port first, and the workers then failed "port in use" by their own endpoint.
        raise ServeError(
            f"--metrics-port {args.metrics_port} is the gRPC port too: give them different ports"
        )
    _check_ranges(
        out_of_range,
        ("--poll-interval", "poll_interval", args.poll_interval),
        ("--grace-period", "grace", args.grace_period),
        ("--max-concurrent-rpcs", "max_concurrent_rpcs", args.max_concurrent_rpcs),
        ("--max-concurrent-streams", "max_concurrent_streams", args.max_concurrent_streams),
    )
    if args.load_model and args.model_control != "explicit":
        # As Triton: poll mode serves every model in the repository, and a name
        # given here would be silently ignored.
        raise ServeError(
            f"--load-model {' '.join(args.load_model)}: only with --model-control explicit "
            f"(--model-control {args.model_control} serves every model in the repository)"
        )


def _check_ranges(
    out_of_range: Callable[[str, Any], str | None], *flags: tuple[str, str, Any]
) -> None:
    """``(flag, setting, value)`` checked against a ranges table (engine/limits.py's or
    drift's ``out_of_range``); the first value outside is one error naming its flag."""
    for flag, setting, value in flags:
        rule = out_of_range(setting, value)
        if rule is not None:
            raise ServeError(f"{flag} must be {rule}, got {value}")


def _drift_settings(args: argparse.Namespace) -> Any:
    from conveyor.engine.drift import DriftSettings, out_of_range

    # Checked with --drift off too: a bad value is a mistake to report, not to keep
    # until drift is turned on.
    _check_ranges(
        out_of_range,
        ("--drift-window-rows", "window_rows", args.drift_window_rows),
        ("--drift-threshold", "threshold", args.drift_threshold),
        ("--drift-window-seconds", "window_seconds", args.drift_window_seconds),
    )
    if args.drift == "off":
        return None
    return DriftSettings(
        window_rows=args.drift_window_rows,
        window_seconds=args.drift_window_seconds,
        threshold=args.drift_threshold,
    )


class _Signals:
    """Catches SIGTERM, SIGINT and SIGHUP from installation on (also while models load).

    SIGHUP (a closed terminal; what many service managers send) is a stop like SIGTERM:
    its default action would end the process without a drain. The first one asks for
    the stop; from then on all three are ignored until the process
    exits. A worker of ``--workers N`` commonly gets the stop twice: a Ctrl-C or
    systemd's KillMode=control-group signals the whole process group, and the parent
    forwards the stop to each worker as well (it must, for a signal sent to the parent
    alone). Were the default handlers back once the drain is done, that second signal
    would kill the worker on its way out (-SIGTERM, an unclean stop, exit status 1).
    SIG_IGN, unlike a Python handler, also outlives interpreter shutdown, which resets
    Python handlers to the default before the process ends.
    """

    def __init__(self) -> None:
        # No lock is taken in the handler (no threading.Event): it runs in the main thread,
        # which may hold the very lock an Event takes (a signal landing while Event.wait
        # re-acquired its lock deadlocked the stop). A list append is atomic.
        self.received: list[int] = []
        # Called (in the handler) on the first signal: the server's request_stop, so that
        # a stop during the models' load ends the start instead of waiting it out.
        self.on_stop: Callable[[], object] | None = None
        self._previous = {
            s: signal.signal(s, self._handler)
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        # A worker of --workers N starts with SIGINT blocked (see
        # conveyor.engine.workers): a group Ctrl-C that came meanwhile is delivered
        # here, to the handler just installed.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    def _handler(self, signum: int, frame: Any) -> None:
        for s in self._previous:
            signal.signal(s, signal.SIG_IGN)
        self.received.append(signum)
        if self.on_stop is not None:
            self.on_stop()

    def wait(self) -> int:
        """Block until a signal came; returns its number."""
        while not self.received:
            time.sleep(0.1)  # a signal cuts it short: the handler runs, then this loop
        return self.received[0]

    @property
    def got(self) -> bool:
        """Whether a stop signal came."""
        return bool(self.received)

    def restore(self) -> None:
        """Put the previous handlers back, unless a stop was asked (see the class doc)."""
        if self.got:
            return
        for s, h in self._previous.items():
            signal.signal(s, h)


def serve_one(
    kwargs: dict[str, Any],
    started: Callable[[], object] | None = None,
    cpus: Sequence[int] | None = None,
) -> int:
    """Run one server process until SIGTERM/SIGINT/SIGHUP; 0 after a graceful stop.

    ``started`` is called once the server serves (a worker tells its parent).
    ``cpus`` (``--cpu-affinity``): the CPUs of its Python threads
    (``conveyor.engine.cpu_affinity``).
    """
    # Before the heavy imports: a signal while they run is a stop, not a traceback.
    signals = _Signals()
    try:
        from conveyor.engine.server import Server

        if cpus is not None:
            from conveyor.engine.cpu_affinity import (
                format_cpu_list,
                limit_torch_threads,
                pin_server_threads,
            )

            torch_threads = limit_torch_threads(cpus)  # before models load and warm up
        server = Server(**kwargs)
        signals.on_stop = server.request_stop
        if signals.got:  # a stop while the imports ran: nothing to load
            return 0
        server.start()
        if cpus is not None:
            # After the start: gRPC's threads exist by now, and keep every CPU.
            count = pin_server_threads(cpus)
            log.info(
                "%d server threads on CPU %s (torch threads: %d)",
                count, format_cpu_list(cpus), torch_threads,
            )  # fmt: skip
        if started is not None:
            started()
        signum = signals.wait()
        log.info("received %s; shutting down", signal.Signals(signum).name)
        server.request_stop()  # (the handler did too): a load under way is not waited for
        server.stop()
        if server.load_abandoned():
            # A model load is still in torch code on its thread: the interpreter's
            # teardown under it ends the process with std::terminate (SIGABRT). The
            # server has stopped; nothing is left to flush but the logs.
            log.info("exiting without waiting for a model load under way")
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    finally:
        signals.restore()
    return 0


def _child(
    kwargs: dict[str, Any],
    level: str,
    fmt: str,
    errors: str,
    cpus: Sequence[int] | None,
    ready: Any,
) -> None:
    """A worker of ``serve_workers``. A start-up error (a repository that is not there, a
    port it cannot bind) is left in the folder ``errors`` for the parent to print once,
    as the one line of single mode, instead of a traceback from every worker."""
    from conveyor.log import setup_logging

    setup_logging(level, fmt)
    try:
        code = serve_one(kwargs, started=ready.set, cpus=cpus)
    except ConveyorError as exc:
        _leave_error(Path(errors), str(exc))
        code = exc.exit_code
    raise SystemExit(code)


def _leave_error(folder: Path, message: str) -> None:
    # Written aside and renamed: the parent may stop this worker at any moment
    # (another one failed too), and must never read half a message.
    partial = folder / f".{os.getpid()}"
    try:
        partial.write_text(message)
        partial.replace(folder / str(os.getpid()))
    except OSError:  # the parent will not see it: say it here rather than not at all
        print(f"conveyor: error: {message}", file=sys.stderr)


def _worker_error(folder: Path) -> str | None:
    """The start-up error the first failing worker left (see ``_child``), if any."""
    left = sorted(
        (f for f in folder.iterdir() if not f.name.startswith(".")),
        key=lambda f: f.stat().st_mtime,
    )
    return left[0].read_text() if left else None


def _check_port_free(host: str, port: int) -> None:
    # Several workers bind with SO_REUSEPORT, which would also silently share a
    # port with an unrelated server: check that nobody holds it first.
    problem = bind_problem(host, port, reuse_port=False)
    if problem is not None:
        raise ServeError(f"cannot bind {host_port(host, port)}: {problem}")


def serve_workers(
    kwargs: dict[str, Any],
    workers: int,
    level: str,
    fmt: str,
    restart: bool = True,
    cpus: tuple[int, ...] | None = None,
) -> int:
    """``workers`` server processes sharing one port (SO_REUSEPORT); the kernel spreads
    connections across them. Signals are forwarded, dead workers replaced (see
    ``conveyor.engine.workers``); exits 0 when all stopped gracefully. With ``cpus``
    (``--cpu-affinity``) each worker's Python threads run on its share of them
    (``conveyor.engine.cpu_affinity.worker_shares``)."""

    if kwargs["port"] == 0:
        raise ServeError("--workers > 1 needs a fixed --port (port 0 would differ per worker)")
    if kwargs["model_control"] == "explicit":
        raise ServeError(
            "--workers > 1 needs --model-control poll: a load/unload RPC would reach "
            "only one of the worker processes"
        )
    _check_port_free(kwargs["host"], kwargs["port"])
    from conveyor.engine.metrics import MultiProcessMetrics

    # The workers write their metric values to a shared directory; this process
    # serves /metrics merged over them (see conveyor.engine.metrics).
    try:
        shared = MultiProcessMetrics()
    except ValueError as exc:  # a PROMETHEUS_MULTIPROC_DIR it cannot use
        raise ServeError(str(exc)) from None
    try:
        if kwargs["metrics_port"] is not None:
            try:
                port = shared.serve(kwargs["host"], kwargs["metrics_port"])
            except OSError as exc:
                raise ServeError(str(exc)) from None
            log.info(
                "metrics of %d workers on %s/metrics", workers, host_port(kwargs["host"], port)
            )
        from conveyor.engine.temp_dirs import process_temp_dir
        from conveyor.engine.workers import WorkerPolicy, run_workers

        errors = process_temp_dir("worker-errors")
        try:
            shares: list[Any] = [None] * workers
            if cpus is not None:
                from conveyor.engine.cpu_affinity import worker_shares

                shares = worker_shares(cpus, workers)
            code = run_workers(
                _child,
                ({**kwargs, "metrics_port": None}, level, fmt, str(errors)),
                workers,
                WorkerPolicy(restart=restart),
                worker_args=[(share,) for share in shares],
                on_exit=shared.process_exited,
                # This process exits next: a second Ctrl-C or a group SIGTERM after
                # the workers stopped must not turn a clean exit 0 into a kill.
                restore_signals=False,
            )
            message = _worker_error(errors) if code else None
        finally:
            shutil.rmtree(errors, ignore_errors=True)
        if message is not None:
            raise ServeError(message)
        return code
    finally:
        shared.close()


def run(args: argparse.Namespace) -> int:
    if not args.model_repository:
        raise ServeError(
            "--model-repository is required (or CONVEYOR_MODEL_REPOSITORY, or "
            "model-repository in the config file)"
        )
    _check_limits(args)
    kwargs = _server_kwargs(args)
    if args.workers < 1:
        raise ServeError("--workers must be >= 1")
    _check_batching(args)
    cpus = _cpu_affinity(args)
    if args.workers == 1:
        return serve_one(kwargs, cpus=cpus)
    return serve_workers(
        kwargs,
        args.workers,
        args.log_level,
        args.log_format,
        args.worker_restart == "on",
        cpus=cpus,
    )


def _cpu_affinity(args: argparse.Namespace) -> tuple[int, ...] | None:
    if args.cpu_affinity is None:
        return None
    from conveyor.engine.cpu_affinity import parse_cpu_list

    try:
        return parse_cpu_list(str(args.cpu_affinity))
    except ValueError as exc:
        raise ServeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from conveyor.cli import add_command

    register_drift(subparsers, common)
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
        help="Prometheus /metrics port on --host; 0 = any free, -1 = none (default: 8002)",
    )
    drift = p.add_argument_group("online drift (models with stats.json)")
    drift.add_argument(
        "--drift", default="on", choices=("on", "off"), help="track drift (default: on)"
    )
    drift.add_argument(
        "--drift-threshold",
        type=float,
        default=0.2,
        help="PSI above which conveyor_drift_alert is 1, > 0; config.json parameters."
        "drift_threshold wins (default: 0.2)",
    )
    drift.add_argument(
        "--drift-window-rows",
        type=int,
        default=10_000,
        help="sliding window rows, >= 10 (default: 10000)",
    )
    drift.add_argument(
        "--drift-window-seconds",
        type=float,
        default=600.0,
        help="oldest row kept in the window, seconds > 0 (default: 600)",
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
        help="repository rescan period in poll mode, > 0 (default: 5)",
    )
    p.add_argument(
        "--load-model",
        nargs="+",
        action="extend",  # repeatable, as Triton's: each occurrence adds to the list
        metavar="NAME",
        help="with --model-control explicit: models to load at start ('*' = all; "
        "default: none; repeatable); refused in poll mode, which serves every model",
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
        "--max-queue-size",
        type=int,
        default=None,
        help="queued requests before RESOURCE_EXHAUSTED (default, or 0: each model's own, "
        "config.json's dynamic_batching.max_queue_size, 1024 when unset)",
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
        "--cpu-affinity",
        default=None,
        metavar="CPUS",
        help="run the server's Python threads (event loop, model workers) and torch's on "
        "these CPUs, a list like 0,2-3 (Linux; gRPC's network threads keep every CPU); with "
        "--workers N each worker gets its own share (default: no pinning; see "
        "engine/README.md for when it pays)",
    )
    p.add_argument(
        "--worker-restart",
        choices=("on", "off"),
        default="on",
        help="with --workers > 1: replace a worker that dies while serving; three deaths in a "
        "row within 10 s of starting stop the server (default: on)",
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
        help="calls in progress at once, >= 1 (an open stream counts until it ends; health, "
        "reflection, ServerLive, ServerReady and ModelReady are never refused); beyond: "
        "RESOURCE_EXHAUSTED (default: 4096)",
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


def run_drift(args: argparse.Namespace) -> int:
    """``conveyor drift``: a served model's drift window, worst feature first."""
    import json

    from conveyor.client import Client, InferenceServerError
    from conveyor.engine.auth import split_tokens

    if args.top < 1:
        raise ServeError(f"--top must be >= 1, got {args.top}")
    if not args.timeout > 0 or args.timeout == float("inf"):
        raise ServeError(f"--timeout must be a number of seconds > 0, got {args.timeout}")
    # CONVEYOR_AUTH_TOKEN (read for --auth-token) is the server's comma-separated list
    # while tokens rotate: any one of them is accepted, so the first one is sent.
    tokens = split_tokens(args.auth_token)
    tls = {
        "tls": args.tls or args.tls_ca is not None or args.tls_cert is not None,
        "root_certificates": args.tls_ca,
        "certificate_chain": args.tls_cert,
        "private_key": args.tls_key,
    }
    try:
        client = Client(
            args.target, timeout=args.timeout, token=tokens[0] if tokens else None, **tls
        )
    except (ValueError, OSError) as exc:  # a token no client can send, an unreadable PEM
        raise ServeError(str(exc)) from None
    try:
        with client:
            stats = client.model_statistics(args.model, args.model_version or "")
    except InferenceServerError as exc:
        raise ServeError(f"{args.target}: {exc}") from None
    rows = []
    for s in stats:
        if not s.HasField("drift"):
            continue
        d = s.drift
        rows.append((s, d))
    if not rows:
        raise ServeError(
            f"model {args.model!r}: no drift tracked (no stats.json beside the model, "
            "or the server runs with --drift off)"
        )
    if args.json:
        out = [
            {
                "model": s.name,
                "version": s.version,
                "window_rows": d.window_rows,
                "threshold": d.threshold,
                "alert": d.alert,
                "scored": d.scored,
                "features": [
                    {"feature": f.feature, "kind": f.kind, "psi": f.psi, "js": f.js, "chi2": f.chi2}
                    for f in d.features[: args.top]
                ],
            }
            for s, d in rows
        ]
        print(json.dumps(out, indent=2))
        return 0
    for s, d in rows:
        state = "ALERT" if d.alert else "ok"
        if not d.scored:
            state = "warming up"
        print(
            f"{s.name} version {s.version}: {state} (window {d.window_rows} rows, "
            f"PSI threshold {d.threshold:g})"
        )
        print(f"  {'feature':<32} {'kind':<12} {'psi':>8} {'js':>8} {'chi2':>10}")
        for f in d.features[: args.top]:
            mark = " *" if f.psi > d.threshold else ""
            chi2 = f"{f.chi2:10.1f}" if f.kind == "categorical" else f"{'-':>10}"
            print(f"  {f.feature:<32} {f.kind:<12} {f.psi:8.4f} {f.js:8.4f} {chi2}{mark}")
    return 0


def register_drift(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from conveyor.cli import add_command

    p = add_command(
        subparsers,
        "drift",
        help="show a served model's top drifting features (read over gRPC)",
        parents=[common],
        run=run_drift,
    )
    p.add_argument(
        "--target", default="127.0.0.1:8001", help="server host:port (default: 127.0.0.1:8001)"
    )
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--model-version", default=None, help="version (default: every loaded one)")
    p.add_argument("--top", type=int, default=10, help="features to list (default: 10)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default: 10)")
    p.add_argument(
        "--auth-token",
        default=None,
        help="bearer token, if the server needs one (a comma-separated list, as "
        "CONVEYOR_AUTH_TOKEN holds while tokens rotate: the first is sent)",
    )
    p.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")
    p.add_argument(
        "--tls-ca", default=None, metavar="PEM", help="TLS, trusting this CA (implies --tls)"
    )
    p.add_argument(
        "--tls-cert", default=None, metavar="PEM", help="client certificate (mutual TLS)"
    )
    p.add_argument("--tls-key", default=None, metavar="PEM", help="private key for --tls-cert")
    p.add_argument("--json", action="store_true", help="print JSON")
