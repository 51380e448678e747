"""The dynamic batcher: one bounded, prioritised queue per model version, drained by worker threads.

Requests arrive on the asyncio event loop (:meth:`Batcher.submit` never blocks
and never runs model code); ``instance_count`` worker threads each take a batch
from the queue, execute it on the model, split the outputs back per request and
hand all the batch's results to the event loop in one call.

When a worker forms a batch:

* it dispatches at once when the queued rows reach the largest preferred batch
  size (or ``max_batch_size`` when none is configured), or when whole requests
  in priority order add up to another preferred size exactly (Triton's rule: a
  preferred size that can be formed runs immediately; the largest one formed is
  taken, and with none formed as much as fits in ``max_batch_size``);
* otherwise it waits until the oldest queued request has waited its
  *patience* (at most ``max_queue_delay_microseconds``), then takes what is
  there -- but only while requests are arriving fast enough for another one
  to be expected within the time left (a moving average of the gaps between
  arrivals). The patience halves each time a batch leaves with a single
  request or after a wait that no new request joined, and doubles (up to
  the delay) otherwise: a closed-loop client at concurrency 1 arrives as
  regularly as a stream but sends nothing while its request is held, so
  after a few requests it is no longer held at all (likewise a few clients
  that are all queued already), while under load (requests queue up behind
  a busy worker) the full delay is spent building large batches, which is
  what amortises each batch's fixed cost (thread hand-offs, the model call).
  A lone or slow stream of requests is dispatched at once.

While a worker executes, new requests accumulate, so under load batches grow
by themselves and throughput approaches the model's batched-forward rate; a
lone request waits at most the queue delay.

Requests are taken highest priority first (level 1), FIFO within a level, whole
(a request's rows are never split across batches), up to ``max_batch_size``
rows; the batch closes when the next request in that order does not fit (a
smaller one behind it, of any level, waits rather than overtake it). A request
whose deadline has passed, or that was cancelled, is removed and never computed.

Hung models: a watchdog thread abandons a worker whose batch has run longer
than ``execution_timeout`` seconds. Its requests are answered DEADLINE_EXCEEDED
at once and a new worker thread takes its place, so later requests are served.
Python cannot kill a thread, so the abandoned one keeps running until the model
returns; its result is dropped and it then rejoins as a worker if one is
missing, else exits. At most ``max_abandoned_threads`` replacements are made
per model version; beyond that, with no worker left, the version answers
UNAVAILABLE at once (queued and new requests) until an abandoned thread returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conveyor.engine.errors import (
    DeadlineExceeded,
    EngineError,
    Internal,
    ResourceExhausted,
    Unavailable,
)
from conveyor.engine.model_config import DynamicBatching

log = logging.getLogger("conveyor.engine.batcher")

QUEUED, TAKEN, DONE = 0, 1, 2
# Seconds one batch may run in the model before its worker is abandoned (None: never).
DEFAULT_EXECUTION_TIMEOUT = 60.0
# Replacement threads per model version for workers stuck in the model.
MAX_ABANDONED_THREADS = 4
# Seconds: the smallest non-zero patience (see Batcher._patience); below it, none.
_MIN_PATIENCE = 50e-6


class _Abandoned(BaseException):
    """Raised in a worker whose model call returned after the watchdog gave up on it
    (a BaseException, so the batch error handling does not answer its requests again)."""

    def __init__(self, rejoin: bool) -> None:
        super().__init__()
        self.rejoin = rejoin


@dataclass(eq=False, slots=True)
class _Execution:
    batch: list[Pending]
    started: float
    abandoned: bool = False
    # Requests of a failed batch still waiting to be re-run alone after this one:
    # if this run is abandoned, they go back to the queue instead of waiting on it.
    rest: list[Pending] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class Pending:
    """One request in the queue.

    Attributes:
        inputs: arrays in model-input order, each ``[rows, ...]``.
        rows: the request's batch dimension.
        level: priority queue index (0 = highest).
        deadline: ``time.monotonic()`` after which it must not be computed, or None.
        future: resolved on the event loop with ``finish(outputs)`` or an EngineError.
        finish: called in the worker thread with the request's output slices;
            its return value resolves the future (the service builds the response there).
        request_id: for logs.
    """

    inputs: list[np.ndarray]
    rows: int
    level: int
    deadline: float | None
    future: asyncio.Future[Any]
    finish: Callable[[list[np.ndarray]], Any]
    request_id: str = ""
    arrival: float = field(default_factory=time.monotonic)
    state: int = QUEUED
    loop: asyncio.AbstractEventLoop | None = None


class BatchStats:
    """Counters for ModelStatistics, updated by the workers under one lock (durations in ns).

    As Triton's: ``queue`` and ``compute_*`` are per request, [requests, ns], and every
    request of a batch is charged the batch's whole compute time (it waited for all
    of it), so ``ns / count`` is the mean compute time a request experienced;
    ``batches`` counts executions per batch size (rows) with each one's time once.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.execution_count = 0
        self.inference_count = 0
        self.last_inference_ms = 0
        self.queue = [0, 0]
        self.compute_input = [0, 0]
        self.compute_infer = [0, 0]
        self.compute_output = [0, 0]
        # batch size -> [count, input ns, infer ns, output ns]
        self.batches: dict[int, list[int]] = {}

    def record(self, rows: int, requests: int, queue_ns: int, t: tuple[int, int, int, int]) -> None:
        t0, t1, t2, t3 = t
        with self.lock:
            self.execution_count += 1
            self.inference_count += rows
            self.last_inference_ms = time.time_ns() // 1_000_000
            self.queue[0] += requests
            self.queue[1] += queue_ns
            for acc, ns in (
                (self.compute_input, t1 - t0),
                (self.compute_infer, t2 - t1),
                (self.compute_output, t3 - t2),
            ):
                acc[0] += requests
                acc[1] += ns * requests
            b = self.batches.setdefault(rows, [0, 0, 0, 0])
            b[0] += 1
            b[1] += t1 - t0
            b[2] += t2 - t1
            b[3] += t3 - t2


def _deliver(results: list[tuple[Pending, Any, bool]]) -> None:
    """On the event loop: resolve each request's future (unless it was cancelled meanwhile)."""
    for pending, value, failed in results:
        fut = pending.future
        if fut.done():
            continue
        if failed:
            fut.set_exception(value)
        else:
            fut.set_result(value)


class Batcher:
    """Queue and workers for one model version.

    Args:
        name: for thread names and logs (``model:version``).
        run: executes one batch: arrays in input order -> arrays in output order.
        max_batch_size: most rows in one execution.
        batching: queue delay, preferred sizes, queue bound, priority levels.
        instance_count: worker threads, each executing one batch at a time.
        execution_timeout: seconds one batch may run before its worker is abandoned
            and replaced (default 60; None disables the watchdog).
        max_abandoned_threads: replacements made for hung workers (default 4).

    ``metrics`` (a :class:`conveyor.engine.metrics.VersionMetrics`) and ``drift`` (a
    :class:`conveyor.engine.drift.DriftMonitor`) may be set after construction; the
    workers report each executed batch to them (drift after the responses are posted).
    """

    def __init__(
        self,
        name: str,
        run: Callable[[list[np.ndarray]], list[np.ndarray]],
        max_batch_size: int,
        batching: DynamicBatching,
        instance_count: int = 1,
        *,
        execution_timeout: float | None = DEFAULT_EXECUTION_TIMEOUT,
        max_abandoned_threads: int = MAX_ABANDONED_THREADS,
    ) -> None:
        self.name = name
        self._run = run
        self.max_batch_size = max_batch_size
        self.batching = batching
        self.stats = BatchStats()
        self.metrics: Any = None
        self.drift: Any = None
        self._delay = batching.max_queue_delay_microseconds / 1e6
        # How long a partial batch is currently held for company (seconds, <= the delay):
        # halved when a batch leaves with one request, doubled when it leaves with several.
        self._patience = self._delay
        self._arrivals = 0  # requests submitted since load (tells whether a wait gathered any)
        # Moving average of the gap between arrivals (seconds); inf until two arrived.
        self._gap = float("inf")
        self._last_arrival: float | None = None
        self._preferred = frozenset(p for p in batching.preferred_batch_size if p <= max_batch_size)
        # Rows at which a batch is dispatched without waiting for the delay.
        self._threshold = max(self._preferred) if self._preferred else max_batch_size
        self._levels: list[deque[Pending]] = [deque() for _ in range(batching.priority_levels)]
        self._queued = 0
        self._rows = 0
        self._closing = False
        self._kick_pending = False
        self._taken = 0  # batches taken since load (tells a timed kick whether it is stale)
        self._hold_mark: int | None = None  # arrivals when the event loop began holding a batch
        self._idle = 0  # workers waiting for an empty queue to get a request
        lock = threading.Lock()
        self._cond = threading.Condition(lock)
        # The watchdog waits on its own condition (same lock), so a notify() meant for
        # a worker never wakes it instead.
        self._watch_cond = threading.Condition(lock)
        # close() waits on it for the last live worker to exit.
        self._exit_cond = threading.Condition(lock)
        self._instance_count = instance_count
        self._execution_timeout = execution_timeout
        self._max_abandoned = max_abandoned_threads
        self._running: dict[threading.Thread, _Execution] = {}
        self._live: set[threading.Thread] = set()
        self._exited: list[threading.Thread] = []  # workers that left while closing: joined
        self._spawned = 0
        self.abandoned = 0  # abandoned threads still inside the model
        self.abandoned_total = 0  # workers abandoned since load
        with self._cond:
            for _ in range(instance_count):
                self._spawn()
        self._watchdog: threading.Thread | None = None
        if execution_timeout is not None:
            self._watchdog = threading.Thread(
                target=self._watch, name=f"conveyor-{name}-watchdog", daemon=True
            )
            self._watchdog.start()

    def _spawn(self) -> None:
        """Start one worker thread (lock held)."""
        thread = threading.Thread(
            target=self._work, name=f"conveyor-{self.name}-{self._spawned}", daemon=True
        )
        self._spawned += 1
        self._live.add(thread)
        thread.start()

    @property
    def instance_count(self) -> int:
        """Worker threads this version keeps running (hung ones replaced, up to a bound)."""
        return self._instance_count

    @property
    def queued(self) -> int:
        """Requests waiting (not yet taken by a worker)."""
        return self._queued

    def level_for(self, priority: int) -> int:
        """Queue index for a request's ``priority`` parameter (1 = highest, 0 = default)."""
        levels = self.batching.priority_levels
        if priority == 0:
            default = self.batching.default_priority_level
            return (default or levels) - 1
        if not 1 <= priority <= levels:
            raise ValueError(f"priority {priority} is outside 1..{levels} (0 = default)")
        return priority - 1

    def submit(self, pending: Pending) -> None:
        """Queue a request.

        Raises ResourceExhausted when the queue is full, Unavailable when closing.
        """
        cond = self._cond
        with cond:
            if self._closing:
                raise Unavailable(f"model {self.name} is being unloaded")
            if not self._live:
                raise Unavailable(self._stalled_message())
            bound = self.batching.max_queue_size
            if len(self._levels[pending.level]) >= bound:
                # Per priority level, as Triton's queue policy: a full low-priority queue
                # must not refuse high-priority requests.
                raise ResourceExhausted(
                    f"model {self.name}: queue full ({bound} requests waiting at priority "
                    f"{pending.level + 1}); retry later"
                )
            self._levels[pending.level].append(pending)
            self._queued += 1
            self._arrivals += 1
            if self.metrics is not None:
                self.metrics.queue_depth.inc()
            self._rows += pending.rows
            if self._last_arrival is not None:
                gap = pending.arrival - self._last_arrival
                self._gap = (
                    gap if self._gap == float("inf") else self._gap + 0.125 * (gap - self._gap)
                )
            self._last_arrival = pending.arrival
            if self._rows >= self._threshold or self._completes_preferred(pending.level):
                cond.notify()  # a full or preferred batch: no reason to wait
                return
            if not self._idle or self._kick_pending:
                # Busy workers look at the queue when they finish, and a partial batch
                # that is being held (by a worker or by the event loop) only needs a
                # wake-up once it is full.
                return
            self._kick_pending = True
        # Wake an idle worker once per event-loop iteration, after every request
        # that arrived in this iteration has been queued: a burst of arrivals
        # becomes one batch instead of waking the worker (and contending for
        # the GIL) on the first of them. A lone request is kicked right after
        # its handler yields, so it does not wait.
        loop = pending.loop
        if loop is None:
            self._kick()
        else:
            loop.call_soon(self._kick_or_hold, loop)

    def _kick(self) -> None:
        with self._cond:
            self._kick_pending = False
            self._cond.notify()

    def _kick_or_hold(self, loop: asyncio.AbstractEventLoop) -> None:
        """Runs once this loop iteration's arrivals are queued. A due batch wakes the
        idle worker now; a partial one is held here and the worker woken when it is due
        (a timer) or full (``submit``): one wake-up per batch, not one to start timing
        it and another to take it (3-5% more rows/s at 8 x 64 rows in the benchmark)."""
        with self._cond:
            due = not self._queued or self._rows >= self._threshold or self._formed_preferred()
            wait = 0.0 if due else self._hold_for()
            if wait:
                self._hold_mark = self._arrivals  # company counts from here
                loop.call_later(wait, self._kick_when_due, self._taken)
                return
            self._kick_pending = False
            self._cond.notify()

    def _kick_when_due(self, taken: int) -> None:
        with self._cond:
            if taken != self._taken:
                return  # that batch filled and left; later arrivals kicked their own
            self._kick_pending = False
            self._cond.notify()

    def cancel(self, pending: Pending) -> bool:
        """Remove a queued request (client cancelled, or its deadline passed).

        Returns False when a worker already took it (it then completes normally).
        """
        with self._cond:
            if pending.state != QUEUED:
                return False
            self._levels[pending.level].remove(pending)
            self._queued -= 1
            self._rows -= pending.rows
            pending.state = DONE
            if self.metrics is not None:
                self.metrics.queue_depth.dec()
            return True

    def close(self, timeout: float | None = None) -> bool:
        """Stop accepting, execute everything already queued, and join the workers (blocking).

        A worker the watchdog abandons (hung in the model) is not waited for: a
        replacement executes the queue meanwhile (within ``max_abandoned_threads``), and
        this returns once the queue is done, not when the hung call returns (its thread
        then exits). Returns False when a live worker is still running after ``timeout``
        seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            self._watch_cond.notify_all()
            while self._live:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._exit_cond.wait(left)
            finished = not self._live
            exited, self._exited = self._exited, []
        for thread in exited:  # out of the loop already: a join is only their last step
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if finished and self._watchdog is not None:
            # The last worker woke the watchdog, which returns now that none is live:
            # joined, so a closed batcher leaves no thread behind.
            self._watchdog.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return finished

    # -- watchdog -----------------------------------------------------------------------------

    def _stalled_message(self) -> str:
        return (
            f"model {self.name}: {self.abandoned} execution(s) hung past the "
            f"{self._execution_timeout:g}s execution timeout and no worker is left; "
            "retry later"
        )

    def _watch(self) -> None:
        """Abandon workers whose batch overran the execution timeout (see the module doc)."""
        timeout = self._execution_timeout
        assert timeout is not None
        period = min(1.0, timeout / 4)
        cond = self._cond
        while True:
            answered: list[tuple[Pending, Any, bool]] = []
            with cond:
                if self._closing and not self._live:
                    return
                now = time.monotonic()
                for thread, ex in list(self._running.items()):
                    if now - ex.started < timeout:
                        continue
                    ex.abandoned = True
                    del self._running[thread]
                    self._live.discard(thread)
                    self.abandoned += 1
                    self.abandoned_total += 1
                    if self.metrics is not None:
                        self.metrics.execution_timeouts.inc()
                        self.metrics.abandoned.inc()
                        # In the latency histograms as a failed batch: the time was spent
                        # (a hung batch was missing from compute p99, the case it is for).
                        queued = [ex.started - p.arrival for p in ex.batch]
                        self.metrics.failed_batch(now - ex.started, queued)
                    err = DeadlineExceeded(
                        f"model {self.name}: execution exceeded the {timeout:g}s execution "
                        "timeout; the request was abandoned"
                    )
                    answered += [(p, err, True) for p in ex.batch]
                    # Flushed below with the queue if no worker is left to run them.
                    self._requeue(ex.rest)
                    threads = len(self._live) + self.abandoned
                    if threads >= self._instance_count + self._max_abandoned:
                        replaced = ", not replaced (limit reached)"
                    elif self._closing and not self._queued:
                        replaced = ", not replaced (unloading, nothing queued)"
                    else:
                        # While closing too: the queue is still to be executed.
                        self._spawn()
                        replaced = ", replaced"
                    if self._closing and not self._live:
                        self._exit_cond.notify_all()
                    log.error(
                        "worker hung for %.1fs (execution timeout %gs); abandoned%s; "
                        "%d abandoned thread(s) still running",
                        now - ex.started,
                        timeout,
                        replaced,
                        self.abandoned,
                        extra={
                            "model": self.name,
                            "request_id": ",".join(p.request_id for p in ex.batch),
                        },
                    )
                if not self._live:
                    # Nobody left to execute the queue: answer it now, not after a timeout.
                    stalled = Unavailable(self._stalled_message())
                    flushed = 0
                    for queue in self._levels:
                        while queue:
                            p = queue.popleft()
                            p.state = DONE
                            answered.append((p, stalled, True))
                            flushed += 1
                    self._queued = self._rows = 0
                    if self.metrics is not None and flushed:
                        self.metrics.queue_depth.dec(flushed)
                done = self._closing and not self._live
                if not done:
                    self._watch_cond.wait(period)
            if answered:
                self._post(answered)
            if done:
                return

    def _call_model(
        self, batch: list[Pending], inputs: list[np.ndarray], rest: list[Pending] | None = None
    ) -> list[np.ndarray]:
        """Run the model, registered with the watchdog; raises _Abandoned if it gave up."""
        me = threading.current_thread()
        ex = _Execution(batch, time.monotonic(), rest=rest or [])
        with self._cond:
            self._running[me] = ex
        try:
            return self._run(inputs)
        finally:
            with self._cond:
                if ex.abandoned:
                    self.abandoned -= 1
                    if self.metrics is not None:
                        self.metrics.abandoned.dec()
                    rejoin = not self._closing and len(self._live) < self._instance_count
                    if rejoin:
                        self._live.add(me)
                else:
                    self._running.pop(me, None)
            if ex.abandoned:
                log.warning(
                    "an abandoned worker returned from the model; %s",
                    "it serves again" if rejoin else "it exits",
                    extra={"model": self.name},
                )
                raise _Abandoned(rejoin)  # the late result is dropped: already answered

    # -- worker side ------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self._work_loop()
        finally:
            with self._cond:
                me = threading.current_thread()
                self._live.discard(me)
                if self._closing:
                    self._exited.append(me)
                    if not self._live:
                        # Their exit conditions, without a period's wait for the watchdog.
                        self._watch_cond.notify_all()
                        self._exit_cond.notify_all()

    def _work_loop(self) -> None:
        while True:
            batch, dropped = self._next_batch()
            if dropped:
                self._post([(p, DeadlineExceeded(_expired_message(p)), True) for p in dropped])
            if batch is None:
                return
            if batch:
                try:
                    self._execute(batch)
                except _Abandoned as abandoned:
                    if not abandoned.rejoin:
                        return

    def _next_batch(self) -> tuple[list[Pending] | None, list[Pending]]:
        """Block until a batch is due; returns (batch or None when closed, expired requests)."""
        cond = self._cond
        with cond:
            mark = None  # arrivals count when this batch started waiting for company
            while True:
                if self._queued == 0:
                    if self._closing:
                        return None, []
                    self._idle += 1
                    try:
                        cond.wait()
                    finally:
                        self._idle -= 1
                    continue
                if self._closing or self._rows >= self._threshold or self._formed_preferred():
                    break
                wait = self._hold_for()
                if not wait:
                    break
                if mark is None:
                    mark = self._arrivals
                cond.wait(wait)
            if mark is None:
                mark = self._hold_mark  # the event loop held it (a timed kick), or None
            return self._take(None if mark is None else self._arrivals - mark)

    def _completes_preferred(self, level: int) -> bool:
        """Whether the request just queued at ``level`` lets whole requests form a preferred
        size (lock held). Queued behind every other request (no lower level holds any),
        it changes no earlier prefix of the priority order, so only the total can be a
        new preferred size: no scan of the queue on every arrival, which with 1-row
        requests and preferred sizes up to 1024 was a thousand steps each. Queued ahead
        of others, it shifts their prefixes: the queue is scanned."""
        if not self._preferred:
            return False
        if not any(self._levels[level + 1 :]):
            return self._rows in self._preferred
        return bool(self._formed_preferred())

    def _formed_preferred(self) -> int:
        """The largest preferred batch size that whole queued requests, taken in priority
        order as ``_take`` takes them, add up to exactly; 0 for none (lock held). Scans
        only as far as the largest preferred size, and only when sizes are configured."""
        if not self._preferred:
            return 0
        limit = self._threshold
        best = rows = 0
        for queue in self._levels:
            for p in queue:
                rows += p.rows
                if rows > limit:
                    return best
                if rows in self._preferred:
                    best = rows
        return best

    def _hold_for(self) -> float:
        """Seconds a queued partial batch still waits for company (lock held); 0 when it
        is due: the patience is spent, or no other request is expected in time."""
        oldest = min(q[0].arrival for q in self._levels if q)
        wait = oldest + self._patience - time.monotonic()
        return wait if wait > 0 and self._gap <= wait else 0.0

    def _take(self, gathered: int | None = None) -> tuple[list[Pending], list[Pending]]:
        """Pop whole requests, highest priority first, up to the target rows (lock held).

        ``gathered``: requests that arrived while this batch waited for company
        (None: it did not wait); it and the batch size adjust the patience.
        """
        # A preferred size that whole requests form exactly, else as much as fits: a
        # preferred size no set of requests adds up to split the queue into needless
        # small batches (two 3-row requests ran as [3] then [3] under preferred [4, 8]).
        target = self._formed_preferred() or self.max_batch_size
        now = time.monotonic()
        batch: list[Pending] = []
        dropped: list[Pending] = []
        rows = 0
        closed = False  # the next request in priority order does not fit
        for queue in self._levels:
            while queue:
                head = queue[0]
                if head.deadline is not None and head.deadline <= now:
                    queue.popleft()
                    dropped.append(head)
                elif rows + head.rows <= target or not batch:
                    queue.popleft()
                    batch.append(head)
                    rows += head.rows
                    if rows > target:  # a lone request larger than a preferred size
                        break
                    continue
                else:
                    # As Triton: the batch closes here. Letting a lower level's smaller
                    # request fill the rows left would run it ahead of this one.
                    closed = True
                    break
                self._queued -= 1
                self._rows -= head.rows
                head.state = DONE
            if closed or rows >= target:
                break
        for p in batch:
            self._queued -= 1
            self._rows -= p.rows
            p.state = TAKEN
        self._taken += 1
        self._kick_pending = False
        self._hold_mark = None
        if self._queued:
            # Requests left behind (they did not fit): an idle worker takes them, at once
            # when they make a full batch, else once held for company as usual. The event
            # loop's hold timer, if any, is stale now (it wakes nobody) and submit only
            # notifies on the arrival that fills a batch, so nobody else would.
            self._cond.notify()
        if gathered == 0 or len(batch) == 1:
            # Holding requests gathered no company: closed-loop clients that are all
            # waiting on queued requests (concurrency 1, or a few clients per server
            # process) send nothing more until they are answered.
            self._patience = 0.0 if self._patience < 2 * _MIN_PATIENCE else self._patience / 2
        elif batch:
            self._patience = min(self._delay, max(2 * self._patience, _MIN_PATIENCE))
        if self.metrics is not None and (batch or dropped):
            self.metrics.queue_depth.dec(len(batch) + len(dropped))
        return batch, dropped

    def _execute(self, batch: list[Pending]) -> None:
        """Run a batch; if it fails and holds several requests, run each alone, so
        one bad request fails only itself and not the requests batched with it."""
        taken = time.monotonic()
        if self._execute_batch(batch, isolate=len(batch) > 1, taken=taken):
            return
        for i, pending in enumerate(batch):
            # If this run hangs and is abandoned, the watchdog requeues batch[i + 1:]
            # and _Abandoned ends this loop when the model returns. Queued until the
            # batch was taken: the failed run and earlier re-runs are compute.
            self._execute_batch([pending], isolate=False, rest=batch[i + 1 :], taken=taken)

    def _requeue(self, requests: list[Pending]) -> None:
        """Put taken, unrun requests back at the head of their queues, in order (lock held).
        Those whose future is already done (cancelled) are dropped."""
        for p in requests:
            if p.future.done():
                p.state = DONE
        requests = [p for p in requests if p.state != DONE]
        for p in reversed(requests):
            self._levels[p.level].appendleft(p)
            p.state = QUEUED
        self._queued += len(requests)
        self._rows += sum(p.rows for p in requests)
        if self.metrics is not None and requests:
            self.metrics.queue_depth.inc(len(requests))
        self._cond.notify()

    def _execute_batch(
        self,
        batch: list[Pending],
        isolate: bool,
        rest: list[Pending] | None = None,
        taken: float | None = None,
    ) -> bool:
        """Returns False (posting nothing) when the batch failed and ``isolate`` is set.
        ``rest``: requests still to run after this one (see ``_Execution.rest``);
        ``taken``: when the requests left the queue (``time.monotonic()``; default now),
        the end of their queue time."""
        t0 = time.perf_counter_ns()
        rows = sum(p.rows for p in batch)
        now = time.monotonic() if taken is None else taken
        queue_ns = int((now * len(batch) - sum(p.arrival for p in batch)) * 1e9)
        inputs: list[np.ndarray] = []
        outputs: list[np.ndarray] = []
        results: list[tuple[Pending, Any, bool]] = []
        try:
            # np.concatenate copies even a single array: the model gets writable,
            # contiguous memory that no request's buffer aliases. A single request's
            # BYTES (object) array is already that, built by the decoder, and copying
            # one of millions of elements holds the GIL for a quarter of a second.
            n_inputs = len(batch[0].inputs)
            inputs = [
                batch[0].inputs[i]
                if len(batch) == 1 and batch[0].inputs[i].dtype == object
                else np.concatenate([p.inputs[i] for p in batch])
                for i in range(n_inputs)
            ]
            t1 = time.perf_counter_ns()
            outputs = self._call_model(batch, inputs, rest)
            t2 = time.perf_counter_ns()
            offset = 0
            for p in batch:
                end = offset + p.rows
                try:
                    results.append((p, p.finish([o[offset:end] for o in outputs]), False))
                except EngineError as exc:
                    results.append((p, exc, True))
                except Exception as exc:
                    results.append((p, Internal(f"building the response failed: {exc}"), True))
                offset = end
            t3 = time.perf_counter_ns()
            self.stats.record(rows, len(batch), queue_ns, (t0, t1, t2, t3))
            if self.metrics is not None:
                self.metrics.batch(rows, (t3 - t0) / 1e9, [now - p.arrival for p in batch])
        except EngineError as exc:
            self._observe_failed(batch, t0, now, isolate)
            if isolate:
                return False
            log.warning(
                "batch of %d rows failed: %s",
                rows,
                exc.message,
                extra={"model": self.name, "request_id": ",".join(p.request_id for p in batch)},
            )
            results = [(p, exc, True) for p in batch]
            outputs = []
            self._observe_failed_inputs(inputs)
        except Exception as exc:  # never let a worker thread die
            self._observe_failed(batch, t0, now, isolate)
            if isolate:
                return False
            log.exception("batch of %d rows failed", rows, extra={"model": self.name})
            err = Internal(f"model {self.name} failed: {type(exc).__name__}: {exc}")
            results = [(p, err, True) for p in batch]
            outputs = []
            self._observe_failed_inputs(inputs)
        self._post(results)
        if self.drift is not None and outputs:
            try:
                self.drift.observe(inputs, outputs)
            except Exception:  # drift must never fail serving
                log.exception("drift tracking failed", extra={"model": self.name})
        return True

    def _observe_failed_inputs(self, inputs: list[np.ndarray]) -> None:
        """A batch's final failure (not one about to be isolated): its invalid input
        values still count (see DriftMonitor.observe_failed)."""
        if self.drift is not None and inputs:
            try:
                self.drift.observe_failed(inputs)
            except Exception:  # drift must never fail serving
                log.exception("drift tracking failed", extra={"model": self.name})

    def _observe_failed(self, batch: list[Pending], t0: int, taken: float, isolate: bool) -> None:
        """A failed batch's time in the latency histograms: its compute time (spent,
        even if wasted), and its requests' queue times unless ``isolate`` (they are
        re-run one by one, and that run observes them, so each request counts once).
        Batch size and rows stay success-only: no rows were inferred."""
        if self.metrics is not None:
            compute = (time.perf_counter_ns() - t0) / 1e9
            queue = [] if isolate else [taken - p.arrival for p in batch]
            self.metrics.failed_batch(compute, queue)

    def _post(self, results: list[tuple[Pending, Any, bool]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Pending, Any, bool]]] = {}
        for item in results:
            loop = item[0].loop or item[0].future.get_loop()
            by_loop.setdefault(loop, []).append(item)
        for loop, items in by_loop.items():
            # RuntimeError: the loop closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver, items)


def _expired_message(p: Pending) -> str:
    return f"request {p.request_id or '(no id)'}: deadline exceeded while queued; not computed"
