"""Several server processes on one port (``conveyor serve --workers N``), supervised.

The parent starts N worker processes (``spawn``), forwards SIGTERM/SIGINT/SIGHUP to
them (as SIGTERM, also when they got the signal themselves from their process group: a
worker must ignore the repeat while it drains) and waits for their graceful stop.
A worker that dies while serving (killed by the OOM killer, a crash in native code,
an unexpected exit) is replaced, so the server keeps its capacity instead of running
on silently with fewer processes:

- a worker that exits before it reported ready (bad flags, a model repository
  that does not load) stops everything at once with exit status 1: the same
  error would repeat in every replacement;
- a worker that dies after it was ready is replaced after a back-off (1 s,
  doubling up to 30 s while deaths come fast); ``max_fast_crashes`` deaths in a
  row, each within ``min_uptime_s`` of its worker becoming ready, stop
  everything with exit status 1 (a crash loop is for the orchestrator to see);
- with ``restart=False`` the first death stops everything (exit status 1).

A worker whose parent goes away without stopping it (SIGKILL by the OOM killer,
SIGQUIT) gets SIGTERM and drains as if the parent had forwarded a stop, instead of
serving on as an orphan that holds the port (see ``_watch_parent``).

Exit status 0 only when every worker stopped gracefully after a signal.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("conveyor.engine")

# What stops the workers gracefully: SIGHUP is what a closed terminal and many service
# managers send, and its default action would kill the parent and orphan the workers.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _watch_parent(parent: int, poll_s: float = 1.0) -> None:
    """In a worker: SIGTERM to itself once ``parent`` (the pid that started it) is gone.

    Linux: the kernel sends it (``PR_SET_PDEATHSIG``) when the parent dies; a parent
    that died before the call is caught by comparing ``getppid()`` afterwards (the
    worker was re-parented by then). Elsewhere, or when prctl is unavailable, a
    daemon thread compares ``getppid()`` every ``poll_s`` seconds (default 1).
    """
    if sys.platform.startswith("linux"):
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            prctl = None
        if prctl is not None and prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0:
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
            return
    threading.Thread(
        target=_poll_parent, args=(parent, poll_s), name="conveyor-parent-watch", daemon=True
    ).start()


def _poll_parent(parent: int, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    os.kill(os.getpid(), signal.SIGTERM)


def _worker(target: Callable[..., None], parent: int, *args: Any) -> None:
    """A worker process: stops with its parent (``_watch_parent``), then runs ``target``."""
    _watch_parent(parent)
    target(*args)


@dataclass
class WorkerPolicy:
    """How the parent treats a worker that dies while serving.

    Attributes:
        restart: replace dead workers (default True); False stops everything.
        min_uptime_s: a death sooner than this after the worker became ready
            counts as a fast crash (seconds, default 10).
        max_fast_crashes: fast crashes in a row (over all workers) after which
            the parent gives up and stops everything (default 3).
        backoff_s: wait before a replacement after a fast crash, doubled per
            further fast crash up to ``max_backoff_s`` (seconds, default 1 and 30).
        poll_s: how often the parent looks at its workers (seconds, default 0.2).
    """

    restart: bool = True
    min_uptime_s: float = 10.0
    max_fast_crashes: int = 3
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    poll_s: float = 0.2


@dataclass
class _Slot:
    process: Any
    ready: Any  # multiprocessing.Event set by the worker once it serves
    ready_at: float | None = None
    reaped: bool = False  # its exit has been handled
    respawn_at: float | None = None  # when its replacement is due (monotonic seconds)


def _describe(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


def run_workers(
    target: Callable[..., None],
    args: tuple,
    workers: int,
    policy: WorkerPolicy | None = None,
    on_exit: Callable[[int], None] | None = None,
    restore_signals: bool = True,
    worker_args: Sequence[tuple] | None = None,
) -> int:
    """Run ``workers`` processes of ``target(*args, ready_event)``; see the module doc.

    With ``worker_args``, worker ``i`` and its replacements run
    ``target(*args, *worker_args[i], ready_event)`` (its CPUs, say).

    ``target`` starts with SIGINT blocked and must unblock it once its handlers are
    in (``signal.pthread_sigmask``), and set ``ready_event`` once it serves. ``on_exit(pid)`` is
    called for every worker process that ended (the metrics directory marks it
    dead). SIGTERM, SIGINT and SIGHUP stop the workers while this runs; with
    ``restore_signals`` False they are ignored from the first one on and stay so, so
    a process about to exit is not killed by a repeated signal (``conveyor serve``).
    A worker stops (SIGTERM) when the thread that calls this dies without stopping
    it (see ``_watch_parent``).
    Returns the exit status for the parent (0 or 1).
    """
    import multiprocessing

    policy = policy or WorkerPolicy()
    ctx = multiprocessing.get_context("spawn")
    # The signal handler only sets this: the loop below does the forwarding, so
    # the handler never contends with the loop for the slots.
    stopping = threading.Event()
    terminated: set[int] = set()  # pids already sent SIGTERM

    def spawn(i: int) -> _Slot:
        ready = ctx.Event()
        own = worker_args[i] if worker_args is not None else ()
        process = ctx.Process(
            target=_worker, args=(target, os.getpid(), *args, *own, ready), daemon=False
        )
        # A worker starts with SIGINT blocked (the mask outlives fork and exec) and
        # unblocks it once its own handlers are in: a group Ctrl-C while it imports
        # stays pending instead of ending it with a KeyboardInterrupt traceback. Only
        # this thread blocks it, so the parent's own handler still gets the signal (an
        # ignored SIGINT here would be lost for the parent). The parent's forwarded
        # SIGTERM stops a worker meanwhile.
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        return _Slot(process, ready)

    def terminate_live() -> None:
        # Forwarded even when the signal went to the whole process group (Ctrl-C,
        # systemd's KillMode=control-group) and the workers have it already: the
        # parent cannot tell the two apart, so ``target`` must treat a second stop
        # signal as a no-op while it drains (conveyor serve ignores it; see
        # conveyor.engine.cli._Signals).
        for slot in slots:
            pid = slot.process.pid
            if pid is not None and pid not in terminated and slot.process.exitcode is None:
                terminated.add(pid)
                with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                    os.kill(pid, signal.SIGTERM)

    def on_signal(*_: Any) -> None:
        if not restore_signals:
            # From the first stop on, ignore them: SIG_IGN, unlike a Python handler,
            # also outlives interpreter shutdown (see conveyor.engine.cli._Signals).
            for s in STOP_SIGNALS:
                signal.signal(s, signal.SIG_IGN)
        stopping.set()

    # In before the first worker exists: a stop that came between the spawns and the
    # handlers was a KeyboardInterrupt that left the workers running, and a second
    # Ctrl-C then killed the parent in its exit-time join (-SIGINT).
    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    slots: list[_Slot] = []
    failed = False
    fast_crashes = 0

    def give_up(message: str, *log_args: Any) -> None:
        nonlocal failed
        log.error(message + "; stopping all workers", *log_args)
        failed = True
        stopping.set()

    try:
        for _ in range(workers):
            if stopping.is_set():  # a stop while they start: no more of them
                break
            slots.append(spawn(len(slots)))
        log.info("started %d worker processes", len(slots))
        while True:
            if stopping.is_set():
                terminate_live()
            now = time.monotonic()
            for i, slot in enumerate(slots):
                # The exit status before the ready event: a worker seen dead here set
                # its event (if ever) before it died, so the read below cannot miss it.
                # Read the other way round, a worker that became ready and died between
                # the two reads was taken for one that failed before ready (no restart).
                code = slot.process.exitcode
                if slot.ready_at is None and slot.ready.is_set():
                    slot.ready_at = now
                    serving = all(s.ready_at is not None and not s.reaped for s in slots)
                    if serving and not stopping.is_set():
                        log.info("all %d workers serving", workers)
                if slot.respawn_at is not None:
                    if not stopping.is_set() and now >= slot.respawn_at:
                        slots[i] = spawn(i)
                        log.info("worker %d replaced (pid %s)", i, slots[i].process.pid)
                    continue
                if slot.reaped or code is None:
                    continue
                slot.reaped = True
                if on_exit is not None and slot.process.pid is not None:
                    on_exit(slot.process.pid)
                if stopping.is_set():
                    # A worker still starting when the stop came may have no handler
                    # yet: SIGTERM (or a group SIGINT / SIGHUP) ends it at once, a clean
                    # stop too.
                    clean = code == 0 or (
                        slot.ready_at is None and code in tuple(-s for s in STOP_SIGNALS)
                    )
                    if not clean:  # say why the exit status will be 1
                        log.error(
                            "worker %d (pid %s) %s while stopping",
                            i, slot.process.pid, _describe(code),
                        )  # fmt: skip
                    failed |= not clean
                    continue
                what = f"worker {i} (pid {slot.process.pid}) {_describe(code)}"
                if slot.ready_at is None:
                    give_up("%s before it was ready", what)
                    continue
                if not policy.restart:
                    give_up("%s (restarts are off)", what)
                    continue
                fast = now - slot.ready_at < policy.min_uptime_s
                fast_crashes = fast_crashes + 1 if fast else 0
                if fast_crashes >= policy.max_fast_crashes:
                    give_up(
                        "%s; %d workers died within %gs of becoming ready in a row",
                        what, fast_crashes, policy.min_uptime_s,
                    )  # fmt: skip
                    continue
                delay = 0.0
                if fast:
                    delay = min(policy.max_backoff_s, policy.backoff_s * 2 ** (fast_crashes - 1))
                log.error("%s; starting a replacement in %.1fs", what, delay)
                slot.respawn_at = now + delay  # the loop keeps watching the others meanwhile
            if stopping.is_set() and all(s.reaped for s in slots):
                break
            time.sleep(policy.poll_s)
    finally:
        if restore_signals:
            for s, h in previous.items():
                signal.signal(s, h)
        stopping.set()  # after an exception in the loop too: leave no orphans
        terminate_live()
        for slot in slots:
            slot.process.join(timeout=60)
    return 1 if failed else 0
