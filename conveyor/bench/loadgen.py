"""The load generator: OIP ModelInfer over gRPC from client processes, closed or open loop.

This is conveyor's only load generator: ``conveyor bench serve``, ``conveyor demo`` and
``benchmarks/serve_bench.py`` all drive servers through :func:`run_load`.

It is kept light so the client is not what is measured: requests are serialised once
(:mod:`conveyor.bench.payloads`), sent as bytes through a raw ``unary_unary`` call (no
protobuf work per request on the client), responses are not parsed, and each client
process runs grpc.aio on uvloop. ``procs`` processes split the load; they start together
after each has connected, so their measurement windows coincide.

Two disciplines:

* closed loop (``concurrency``): that many requests in flight at all times; each worker sends
  its next request when the previous one is answered. Latency: send to answer.
* open loop (``rate``): requests are scheduled at Poisson arrival times (exponential gaps,
  mean ``1 / rate``) whatever the server does, as independent users would send them.
  Latency is measured from the *scheduled* send time, so time a request spent waiting
  because the client or server fell behind is counted (no coordinated omission).
  A process holding ``max_outstanding`` unanswered requests records further arrivals as
  the error ``CLIENT_BACKLOG`` instead of growing without bound.

Only requests scheduled (open) or sent (closed) inside the measurement window, after
``warmup`` seconds and for ``duration`` seconds, are counted; errors are counted by gRPC
status code name. Requests sent during warm-up that finish only after the window has ended
are in no figure; they are counted as ``warmup_requests_past_window``, so that a server
slower than warm-up plus duration (no request sent in the window finished) is not read as
an idle one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import queue
import time
import traceback
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conveyor.bench.stats import latency_summary
from conveyor.errors import ConveyorError

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
BACKLOG = "CLIENT_BACKLOG"
# Open loop behind its schedule: the longest it runs arrivals without yielding to the event
# loop, seconds. Bounds how late answers, sends and the CPU window's readings can be.
BEHIND_YIELD_S = 0.001


class LoadError(ConveyorError):
    """The load generator could not run (no server, a client process failed)."""


class LoadSpecError(ConveyorError, ValueError):
    """A load point's settings are out of range.

    A ConveyorError so the CLI prints one line; a ValueError too, as it was before.
    """


def check_settings(
    *,
    rows: int,
    duration: float,
    warmup: float,
    procs: int,
    timeout: float,
    connections: int = 1,
    connect_timeout: float = 30.0,
    prefix: str = "--",
) -> None:
    """Raise :class:`LoadSpecError` naming the first out-of-range setting.

    Shared by :class:`LoadSpec` and ``conveyor bench serve`` (``prefix="--"`` names the flags),
    so the CLI refuses what a load point would refuse before it contacts any server.
    Non-finite values are refused too: an infinite duration or deadline never ends.
    """
    if rows < 1:
        raise LoadSpecError(f"{prefix}rows must be >= 1, got {rows}")
    if not (math.isfinite(duration) and duration > 0):
        raise LoadSpecError(f"{prefix}duration must be > 0 seconds, got {duration}")
    if not (math.isfinite(warmup) and warmup >= 0):
        raise LoadSpecError(f"{prefix}warmup must be >= 0 seconds, got {warmup}")
    if procs < 1:
        raise LoadSpecError(f"{prefix}procs must be >= 1, got {procs}")
    if connections < 1:
        raise LoadSpecError(f"{prefix}connections must be >= 1, got {connections}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise LoadSpecError(f"{prefix}timeout must be > 0 seconds, got {timeout}")
    if not (math.isfinite(connect_timeout) and connect_timeout > 0):
        name = "connect-timeout" if prefix else "connect_timeout"
        raise LoadSpecError(f"{prefix}{name} must be > 0 seconds, got {connect_timeout}")


@dataclass(frozen=True)
class LoadSpec:
    """One load point.

    Attributes:
        target: ``host:port`` of the gRPC server.
        payloads: serialised ModelInferRequest messages, sent in turn (at least one).
        rows: rows per request (for rows/s only).
        concurrency: closed loop with this many requests in flight (over all processes).
        rate: open loop at this many requests/s over all processes (Poisson arrivals).
            Exactly one of ``concurrency`` and ``rate`` is set.
        duration: seconds measured (default 10).
        warmup: seconds run before measuring (default 2).
        procs: client processes (default 1); never more than the concurrency.
        timeout: per-request deadline in seconds (default 10): DEADLINE_EXCEEDED past it.
        token: sent as ``authorization: Bearer <token>`` when set.
        max_outstanding: open loop, unanswered requests per process before arrivals are
            counted as ``CLIENT_BACKLOG`` errors (default 20,000).
        seed: seeds the arrival times (default 0).
        connect_timeout: seconds each process waits to connect (default 30).
        connections: gRPC connections per process (default 1); requests take them in
            turn (closed loop: worker ``w`` uses connection ``w % connections``). A
            server of several processes on one port (SO_REUSEPORT, ``conveyor serve
            --workers N``) spreads connections, not requests, over its processes: give
            it at least N connections in all, or one process serves everything.
    """

    target: str
    payloads: tuple[bytes, ...]
    rows: int = 1
    concurrency: int | None = None
    rate: float | None = None
    duration: float = 10.0
    warmup: float = 2.0
    procs: int = 1
    timeout: float = 10.0
    token: str | None = None
    max_outstanding: int = 20_000
    seed: int = 0
    connect_timeout: float = 30.0
    connections: int = 1

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise LoadSpecError("set exactly one of concurrency (closed loop) and rate (open loop)")
        if self.concurrency is not None and self.concurrency < 1:
            raise LoadSpecError(f"concurrency must be >= 1, got {self.concurrency}")
        # An infinite rate makes every arrival gap 0: the open loop never awaits anything, so
        # the client spins a core and never reports; NaN compares false everywhere.
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise LoadSpecError(f"rate must be finite and > 0 requests/s, got {self.rate}")
        if not self.payloads:
            raise LoadSpecError("no request payloads")
        check_settings(
            rows=self.rows, duration=self.duration, warmup=self.warmup, procs=self.procs,
            timeout=self.timeout, connections=self.connections,
            connect_timeout=self.connect_timeout, prefix="",
        )  # fmt: skip

    @property
    def mode(self) -> str:
        return "closed" if self.concurrency is not None else "open"

    def shares(self) -> list[tuple[int, float]]:
        """(concurrency, rate) of each client process."""
        if self.concurrency is not None:
            n = min(self.procs, self.concurrency)
            per = [self.concurrency // n + (i < self.concurrency % n) for i in range(n)]
            return [(c, 0.0) for c in per]
        assert self.rate is not None
        return [(0, self.rate / self.procs)] * self.procs


@dataclass
class LoadResult:
    """What one load point measured; :meth:`summary` gives the report's fields."""

    spec: LoadSpec
    latencies_ms: np.ndarray
    errors: dict[str, int]
    scheduled: int
    client_cpu_s: float
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    # time.perf_counter() (system-wide on Linux) when the clients were released: each
    # measures from started + warmup for duration seconds, so a caller can read the
    # server's own counters over the same window.
    started: float = 0.0
    # Requests sent during warm-up that finished only after the window ended (in no figure).
    warmup_past_window: int = 0
    # Requests answered OK inside the window, whenever sent: the server's throughput. (An
    # open loop past saturation sends more than is answered; its measured requests are
    # answered late, after the window, so counting them over the window gave the offered
    # rate.) -1: not recorded (a result made by hand): requests_s counts the measured ones.
    answered_in_window: int = -1

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    def summary(self) -> dict[str, Any]:
        s = self.spec
        d = s.duration
        answered = self.ok if self.answered_in_window < 0 else self.answered_in_window
        return {
            "mode": s.mode,
            "concurrency": s.concurrency,
            "target_rate": s.rate,
            "rows": s.rows,
            "procs": len(s.shares()),
            "connections": s.connections,
            "duration_s": d,
            "requests": self.ok,
            "requests_s": answered / d,
            "rows_s": answered * s.rows / d,
            # Requests due in the window per second: open loop, the Poisson schedule (about
            # target_rate); closed loop, the requests sent.
            "offered_s": self.scheduled / d,
            # Of those, the requests that left the client: below offered_s, the client could
            # not keep up (the rest are CLIENT_BACKLOG errors).
            "sent_s": (self.scheduled - self.errors.get(BACKLOG, 0)) / d,
            **latency_summary(self.latencies_ms),
            "errors": sum(self.errors.values()),
            "error_codes": dict(sorted(self.errors.items())),
            "client_cpu_s": self.client_cpu_s,
            # Cores the client processes used while measuring: near the machine's core count,
            # the client, not the server, may be the limit.
            "client_cpu_cores": self.client_cpu_s / d,
            "client_cpu_us_per_request": 1e6 * self.client_cpu_s / max(self.ok, 1),
            # Non-zero with no request and no error: the server answers more slowly than
            # warm-up + duration, and this point measured nothing.
            "warmup_requests_past_window": self.warmup_past_window,
            **self.extra,
        }


# -- one client process -----------------------------------------------------------------------


class _Backlog(Exception):
    """An open-loop arrival the process could not send: too many unanswered requests."""


def _code_name(exc: BaseException) -> str:
    import grpc

    if isinstance(exc, _Backlog):
        return BACKLOG

    if isinstance(exc, grpc.RpcError):
        code = exc.code()
        return code.name if code is not None else "UNKNOWN"
    if isinstance(exc, TimeoutError):
        return "DEADLINE_EXCEEDED"
    return f"CLIENT_{type(exc).__name__}"


async def _client(
    spec: LoadSpec, index: int, concurrency: int, rate: float, ready: Any, go: Any, progress: Any
) -> dict[str, Any]:
    import grpc

    channels = [
        grpc.aio.insecure_channel(
            spec.target,
            options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
                # Channels to one target share a connection unless each has its own pool.
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        for _ in range(spec.connections)
    ]
    # Bytes in, bytes out: no protobuf work per request on the client.
    calls = [channel.unary_unary(INFER_METHOD) for channel in channels]
    metadata = (("authorization", f"Bearer {spec.token}"),) if spec.token else None
    try:
        await asyncio.wait_for(
            asyncio.gather(*(channel.channel_ready() for channel in channels)),
            timeout=spec.connect_timeout,
        )
    except TimeoutError:
        for channel in channels:
            await channel.close()
        raise LoadError(
            f"cannot connect to {spec.target} within {spec.connect_timeout:g} s"
        ) from None
    ready.put(index)
    while not go.wait(0.01):  # a multiprocessing.Event: poll without blocking the loop long
        await asyncio.sleep(0)
    payloads = spec.payloads
    n_payloads = len(payloads)
    now = time.perf_counter
    start = now() + spec.warmup
    stop = start + spec.duration
    latencies = array("d")
    errors: dict[str, int] = {}
    done = 0
    scheduled = 0
    answered = 0  # answered OK inside the window (the throughput)
    warmup_past_window = 0
    cpu: dict[str, float] = {}
    lag = array("d")  # open loop: how late each measured request left against its schedule

    async def cpu_window() -> None:
        await asyncio.sleep(max(0.0, start - now()))
        cpu["start"] = time.process_time()
        await asyncio.sleep(max(0.0, stop - now()))
        cpu["stop"] = time.process_time()

    def record(t_sent: float, exc: BaseException | None) -> None:
        nonlocal done, warmup_past_window, answered
        done += 1
        progress[index] = done
        if exc is None and start <= now() < stop:
            answered += 1
        if not start <= t_sent < stop:
            # Only warm-up requests get here (nothing is sent after the window), so the
            # measured requests' path is unchanged. An arrival never sent is not counted.
            if now() >= stop and not isinstance(exc, _Backlog):
                warmup_past_window += 1
            return
        if exc is None:
            latencies.append((now() - t_sent) * 1e3)
        else:
            name = _code_name(exc)
            errors[name] = errors.get(name, 0) + 1

    async def send(payload: bytes, t_sent: float, call: Any) -> None:
        try:
            await call(payload, timeout=spec.timeout, metadata=metadata)
        except Exception as exc:  # every failure is a counted outcome, never a crash
            record(t_sent, exc)
        else:
            record(t_sent, None)

    async def closed_worker(worker: int) -> None:
        nonlocal scheduled
        i = worker
        call = calls[worker % len(calls)]
        while True:
            t0 = now()
            if t0 >= stop:
                return
            if t0 >= start:
                scheduled += 1
            await send(payloads[i % n_payloads], t0, call)
            i += concurrency

    async def open_loop() -> None:
        nonlocal scheduled
        rng = np.random.default_rng(spec.seed * 1000 + index)
        gaps = iter(())
        pending: set[asyncio.Task[None]] = set()
        t_next = yielded = now()
        i = 0
        while t_next < stop:
            t = now()
            if t_next > t:
                await asyncio.sleep(t_next - t)
                yielded = t_next
            elif t - yielded > BEHIND_YIELD_S:
                # Behind schedule, arrivals are due at once; still let answers, sends and the
                # CPU meter run, or the window's CPU is read late and nothing is sent.
                await asyncio.sleep(0)
                yielded = t
            if t_next >= start:
                scheduled += 1
                if t_next < stop:
                    lag.append(now() - t_next)
            if len(pending) >= spec.max_outstanding:
                record(t_next, _Backlog())
            else:
                call = calls[i % len(calls)]
                task = asyncio.ensure_future(send(payloads[i % n_payloads], t_next, call))
                pending.add(task)
                task.add_done_callback(pending.discard)
            i += 1
            gap = next(gaps, None)
            if gap is None:  # draw arrival gaps in blocks: one numpy call per 4096 requests
                gaps = iter(rng.exponential(1.0 / rate, 4096).tolist())
                gap = next(gaps)
            t_next += gap
        if pending:
            await asyncio.wait(pending, timeout=spec.timeout + 1.0)
            for task in pending:
                task.cancel()

    meter = asyncio.ensure_future(cpu_window())
    t_begin = now()
    try:
        if spec.concurrency is not None:
            await asyncio.gather(*(closed_worker(w) for w in range(concurrency)))
        else:
            await open_loop()
        await meter
    finally:
        meter.cancel()
        for channel in channels:
            await channel.close()
    return {
        "latencies": latencies.tobytes(),
        "errors": errors,
        "scheduled": scheduled,
        "answered": answered,
        "warmup_past_window": warmup_past_window,
        "cpu_s": cpu.get("stop", time.process_time()) - cpu.get("start", 0.0),
        "wall_s": now() - t_begin,
        "lag": lag.tobytes(),
    }


def _process(
    spec: LoadSpec, index: int, concurrency: int, rate: float, ready: Any, go: Any, progress: Any,
    out: Any,
) -> None:  # fmt: skip
    try:
        try:
            import uvloop

            runner: Callable[..., Any] = uvloop.run
        except ImportError:
            runner = asyncio.run
        result = runner(_client(spec, index, concurrency, rate, ready, go, progress))
        out.put((index, result))
    except BaseException as exc:
        message = str(exc) if isinstance(exc, LoadError) else traceback.format_exc()
        out.put((index, {"failed": message}))
        ready.put(index)  # do not leave the parent waiting for this process to connect


# -- the parent -------------------------------------------------------------------------------


def run_load(
    spec: LoadSpec,
    *,
    progress: bool | None = None,
    label: str = "",
    on_window: Callable[[str], None] | None = None,
) -> LoadResult:
    """Run one load point in ``spec.procs`` client processes and gather what they measured.

    ``progress``: show a progress bar (None: only when stderr is a terminal).
    ``on_window``: called in this (the parent) process with ``"start"`` when the measured
    window starts and ``"end"`` when it ends, e.g. to read the server's own counters over
    exactly that window; keep it short (the ``"end"`` call waits for the ``"start"`` one).
    """
    ctx = multiprocessing.get_context("spawn")  # no inherited event loops or gRPC state
    shares = spec.shares()
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    counters = ctx.Array("q", len(shares), lock=False)
    procs = [
        ctx.Process(
            target=_process,
            args=(spec, i, c, r, ready, go, counters, out),
            name=f"conveyor-bench-{i}",
            daemon=True,
        )
        for i, (c, r) in enumerate(shares)
    ]
    for p in procs:
        p.start()
    results: dict[int, dict[str, Any]] = {}
    try:
        for _ in procs:
            ready.get(timeout=120 + spec.connect_timeout)
        t0 = time.perf_counter()
        go.set()
        total = spec.warmup + spec.duration
        edges = [] if on_window is None else [(spec.warmup, "start"), (total, "end")]
        _watch(procs, counters, total, t0, progress, label, edges, on_window)
        deadline = t0 + total + spec.timeout + 60
        while len(results) < len(procs):
            try:
                index, part = out.get(timeout=max(0.1, min(1.0, deadline - time.perf_counter())))
            except queue.Empty:
                if time.perf_counter() > deadline:
                    raise LoadError("client processes did not finish in time") from None
                if not any(p.is_alive() for p in procs) and out.empty():
                    raise LoadError("a client process died without reporting") from None
                continue
            if "failed" in part:
                raise LoadError(f"client process {index} failed: {part['failed']}")
            results[index] = part
        wall = time.perf_counter() - t0
    except queue.Empty:
        raise LoadError("client processes did not start within 120 s") from None
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    latencies = np.concatenate(
        [np.frombuffer(part["latencies"], dtype=np.float64) for part in results.values()]
    )
    errors: dict[str, int] = {}
    for part in results.values():
        for code, n in part["errors"].items():
            errors[code] = errors.get(code, 0) + n
    lag = np.concatenate(
        [np.frombuffer(part["lag"], dtype=np.float64) for part in results.values()]
    )
    extra = {}
    if spec.rate is not None:
        # The client's own scheduling delay (timer resolution, a busy client): included in
        # the latencies, so a large one means the client, not the server, is slow.
        extra = {
            "client_lag_mean_ms": float(lag.mean() * 1e3) if len(lag) else 0.0,
            "client_lag_max_ms": float(lag.max() * 1e3) if len(lag) else 0.0,
        }
    return LoadResult(
        spec=spec,
        extra=extra,
        latencies_ms=latencies,
        errors=errors,
        scheduled=sum(part["scheduled"] for part in results.values()),
        client_cpu_s=sum(part["cpu_s"] for part in results.values()),
        wall_s=wall,
        started=t0,
        warmup_past_window=sum(part["warmup_past_window"] for part in results.values()),
        answered_in_window=sum(part["answered"] for part in results.values()),
    )


def _watch(
    procs: Sequence[Any], counters: Any, total: float, t0: float, progress: bool | None, label: str,
    edges: Sequence[tuple[float, str]] = (), on_edge: Callable[[str], None] | None = None,
) -> None:  # fmt: skip
    """A progress bar over the run's seconds with the current answer rate, until it ends;
    ``on_edge(name)`` is called once ``offset`` seconds have passed for each of ``edges``
    (sorted ``(offset, name)`` pairs)."""
    due = list(edges) if on_edge is not None else []
    from tqdm import tqdm

    bar = tqdm(
        total=round(total, 1),
        desc=label or "load",
        unit="s",
        disable=None if progress is None else not progress,
        leave=False,
        bar_format="{desc}: {bar} {n:.0f}/{total:.0f} s {postfix}",
    )
    with contextlib.closing(bar):
        last_n, last_t = 0, t0
        while True:
            elapsed = time.perf_counter() - t0
            while due and on_edge is not None and elapsed >= due[0][0]:
                on_edge(due.pop(0)[1])
                elapsed = time.perf_counter() - t0
            if elapsed >= total or not any(p.is_alive() for p in procs):
                break
            next_edge = due[0][0] if due else total
            time.sleep(max(0.0, min(0.25, total - elapsed, next_edge - elapsed)))
            n, t = sum(counters), time.perf_counter()
            if not bar.disable:
                bar.set_postfix_str(f"{(n - last_n) / max(t - last_t, 1e-9):,.0f} answers/s")
                bar.update(round(min(t - t0, total), 1) - bar.n)
            last_n, last_t = n, t
