"""Dynamic batcher semantics, driven directly with a Python ``run`` function (no gRPC, no torch)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from conveyor.engine.batcher import Batcher, BatchStats, Pending
from conveyor.engine.errors import DeadlineExceeded, Internal, ResourceExhausted
from conveyor.engine.model_config import DynamicBatching


class Recorder:
    """A model that doubles its input and records every batch it executed."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        (x,) = inputs
        if (x < 0).any():
            raise Internal("negative input")
        self.batches.append(x.copy())
        return [x * 2]

    def seen(self) -> set[float]:
        return {float(v) for b in self.batches for v in b[:, 0]}


def _pending(loop: asyncio.AbstractEventLoop, x: np.ndarray, **kw: object) -> Pending:
    return Pending(
        inputs=[x],
        rows=len(x),
        level=kw.pop("level", 1),  # type: ignore[arg-type]
        deadline=kw.pop("deadline", None),  # type: ignore[arg-type]
        future=loop.create_future(),
        finish=lambda outs: outs[0],
        loop=loop,
        **kw,  # type: ignore[arg-type]
    )


def _batcher(run: Callable, max_batch: int = 16, **kw: object) -> Batcher:
    instances = kw.pop("instance_count", 1)
    return Batcher("m:1", run, max_batch, DynamicBatching(**kw), instances)  # type: ignore[arg-type]


def test_multi_row_requests_are_packed_and_split_back_exactly() -> None:
    run = Recorder()
    batcher = _batcher(run, max_batch=16, max_queue_delay_microseconds=200_000)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        xs = [np.full((n, 3), float(i), np.float32) for i, n in enumerate([1, 3, 2, 4, 1])]
        pendings = [_pending(loop, x) for x in xs]
        for p in pendings:
            batcher.submit(p)
        results = await asyncio.gather(*(p.future for p in pendings))
        for x, r in zip(xs, results, strict=True):
            np.testing.assert_array_equal(r, x * 2)

    asyncio.run(main())
    batcher.close()
    assert [len(b) for b in run.batches] == [11]  # one batch of all 11 rows, in order
    np.testing.assert_array_equal(run.batches[0][:, 0], [0, 1, 1, 1, 2, 2, 3, 3, 3, 3, 4])


def test_batches_never_exceed_max_batch_size_and_requests_stay_whole() -> None:
    run = Recorder()
    batcher = _batcher(run, max_batch=4, max_queue_delay_microseconds=50_000)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pendings = [_pending(loop, np.full((3, 1), float(i), np.float32)) for i in range(4)]
        for p in pendings:
            batcher.submit(p)
        await asyncio.gather(*(p.future for p in pendings))

    asyncio.run(main())
    batcher.close()
    assert all(len(b) <= 4 for b in run.batches)
    assert sorted(len(b) for b in run.batches) == [3, 3, 3, 3]


def test_full_queue_is_rejected_at_once() -> None:
    gate = threading.Event()
    run = Recorder(gate)
    batcher = _batcher(run, max_batch=1, max_queue_size=2)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        first = _pending(loop, np.zeros((1, 1), np.float32))
        batcher.submit(first)
        assert await asyncio.to_thread(run.entered.wait, 5)  # the worker holds it
        queued = [_pending(loop, np.zeros((1, 1), np.float32)) for _ in range(2)]
        for p in queued:
            batcher.submit(p)
        t0 = time.perf_counter()
        with pytest.raises(ResourceExhausted, match="queue full"):
            batcher.submit(_pending(loop, np.zeros((1, 1), np.float32)))
        assert time.perf_counter() - t0 < 1.0  # at once, not after the blocker (10 s)
        gate.set()
        await asyncio.gather(first.future, *(p.future for p in queued))

    asyncio.run(main())
    batcher.close()


def test_deadline_passed_while_queued_is_never_computed() -> None:
    gate = threading.Event()
    run = Recorder(gate)
    batcher = _batcher(run, max_batch=4)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        blocker = _pending(loop, np.full((1, 1), 1.0, np.float32))
        batcher.submit(blocker)
        assert await asyncio.to_thread(run.entered.wait, 5)
        late = _pending(loop, np.full((1, 1), 7.0, np.float32), deadline=time.monotonic() + 0.05)
        batcher.submit(late)
        await asyncio.sleep(0.1)  # its deadline passes while the worker is busy
        gate.set()
        await blocker.future
        with pytest.raises(DeadlineExceeded, match="not computed"):
            await asyncio.wait_for(late.future, 5)

    asyncio.run(main())
    batcher.close()
    assert 7.0 not in run.seen() and 1.0 in run.seen()


def test_cancelled_request_leaves_the_queue_and_is_never_computed() -> None:
    gate = threading.Event()
    run = Recorder(gate)
    batcher = _batcher(run, max_batch=4)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        blocker = _pending(loop, np.full((1, 1), 1.0, np.float32))
        batcher.submit(blocker)
        assert await asyncio.to_thread(run.entered.wait, 5)
        victim = _pending(loop, np.full((1, 1), 9.0, np.float32))
        batcher.submit(victim)
        assert batcher.queued == 1
        assert batcher.cancel(victim)
        assert batcher.queued == 0
        gate.set()
        await blocker.future
        assert not batcher.cancel(blocker)  # already done: nothing to remove

    asyncio.run(main())
    batcher.close()
    assert 9.0 not in run.seen()


def test_higher_priority_goes_first() -> None:
    gate = threading.Event()
    run = Recorder(gate)
    batcher = _batcher(run, max_batch=1, priority_levels=2)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        blocker = _pending(loop, np.full((1, 1), 0.0, np.float32), level=1)
        batcher.submit(blocker)
        assert await asyncio.to_thread(run.entered.wait, 5)
        low = [_pending(loop, np.full((1, 1), 10.0 + i, np.float32), level=1) for i in range(3)]
        high = [_pending(loop, np.full((1, 1), 20.0 + i, np.float32), level=0) for i in range(3)]
        for p in [*low, *high]:  # low priority queued first
            batcher.submit(p)
        gate.set()
        await asyncio.gather(*(p.future for p in [blocker, *low, *high]))

    asyncio.run(main())
    batcher.close()
    order = [float(b[0, 0]) for b in run.batches]
    assert order == [0.0, 20.0, 21.0, 22.0, 10.0, 11.0, 12.0]
    assert batcher.level_for(0) == 1 and batcher.level_for(1) == 0
    with pytest.raises(ValueError, match=r"outside 1\.\.2"):
        batcher.level_for(3)


def test_a_lower_priority_request_never_fills_a_batch_ahead_of_a_higher_one() -> None:
    # max_batch_size 4: H1 (3 rows) is taken, H2 (3 rows) does not fit; the batch closes
    # there (as Triton's), rather than letting L (1 row, a lower level) overtake H2.
    gate = threading.Event()
    run = Recorder(gate)
    batcher = _batcher(run, max_batch=4, priority_levels=2, max_queue_delay_microseconds=0)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        blocker = _pending(loop, np.full((1, 1), 0.0, np.float32), level=1)
        batcher.submit(blocker)
        assert await asyncio.to_thread(run.entered.wait, 5)
        h1 = _pending(loop, np.full((3, 1), 1.0, np.float32), level=0)
        h2 = _pending(loop, np.full((3, 1), 2.0, np.float32), level=0)
        low = _pending(loop, np.full((1, 1), 9.0, np.float32), level=1)
        for p in (h1, h2, low):
            batcher.submit(p)
        gate.set()
        await asyncio.wait_for(asyncio.gather(*(p.future for p in (blocker, h1, h2, low))), 10)

    asyncio.run(main())
    batcher.close(5)
    batches = [sorted({float(v) for v in b[:, 0]}) for b in run.batches]
    assert batches == [[0.0], [1.0], [2.0, 9.0]]  # not [[0.0], [1.0, 9.0], [2.0]]


def test_lone_request_is_dispatched_without_waiting_for_the_delay() -> None:
    run = Recorder()
    batcher = _batcher(run, max_batch=64, max_queue_delay_microseconds=2_000_000)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        p = _pending(loop, np.ones((1, 1), np.float32))
        t0 = time.perf_counter()
        batcher.submit(p)
        await p.future
        return time.perf_counter() - t0

    assert asyncio.run(main()) < 0.5
    batcher.close()


def test_a_fast_stream_is_batched_and_no_request_waits_past_the_delay() -> None:
    run = Recorder()
    delay = 0.03
    batcher = _batcher(run, max_batch=64, max_queue_delay_microseconds=int(delay * 1e6))

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        waits: list[float] = []

        async def one(i: int) -> None:
            p = _pending(loop, np.full((1, 1), float(i), np.float32))
            t0 = time.perf_counter()
            batcher.submit(p)
            await p.future
            waits.append(time.perf_counter() - t0)

        tasks = []
        for i in range(80):
            tasks.append(asyncio.ensure_future(one(i)))
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
        return waits

    waits = asyncio.run(main())
    batcher.close()
    assert len(run.batches) < 60  # requests 1 ms apart were batched together
    assert max(waits) < delay + 2.0  # generous for a loaded machine; never unbounded


def test_a_closed_loop_client_at_concurrency_1_stops_being_held() -> None:
    # Each request is sent when the previous one is answered: arrivals are regular
    # (a small gap) but nobody can join a held request, so holding one for the
    # delay only adds latency. The patience halves per lone batch; after a few
    # requests none is held.
    run = Recorder()
    delay = 0.2
    batcher = _batcher(run, max_batch=64, max_queue_delay_microseconds=int(delay * 1e6))

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        times = []
        for i in range(16):
            p = _pending(loop, np.full((1, 1), float(i), np.float32))
            t0 = time.perf_counter()
            batcher.submit(p)
            await p.future
            times.append(time.perf_counter() - t0)
        return times

    times = asyncio.run(main())
    batcher.close()
    assert len(run.batches) == 16
    # Held for the whole delay, the last 6 would take 6 x 0.2 s; they take about nothing.
    assert sum(times[-6:]) < delay


def test_a_few_closed_loop_clients_all_queued_stop_being_held() -> None:
    # 4 clients, each sending when answered: their requests batch together, but
    # once all 4 are queued no fifth can come, so waiting for one is wasted.
    run = Recorder()
    delay = 0.2
    batcher = _batcher(run, max_batch=64, max_queue_delay_microseconds=int(delay * 1e6))

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        rounds: list[float] = []

        async def one(i: int) -> None:
            p = _pending(loop, np.full((1, 1), float(i), np.float32))
            batcher.submit(p)
            await p.future

        for r in range(16):
            t0 = time.perf_counter()
            await asyncio.gather(*(one(4 * r + c) for c in range(4)))
            rounds.append(time.perf_counter() - t0)
        return rounds

    rounds = asyncio.run(main())
    batcher.close()
    assert len(run.seen()) == 64
    # Held for the whole delay, the last 6 rounds would take 6 x 0.2 s.
    assert sum(rounds[-6:]) < delay


def test_a_held_batch_leaves_when_full_and_the_next_waits_its_own_patience() -> None:
    # The event loop holds a partial batch with a timer. Filling it sends it at once,
    # and that batch's timer must not cut short the wait of the next one (it is
    # ignored, and a worker woken anyway re-checks the due time).
    run = Recorder()
    delay = 0.3
    batcher = _batcher(run, max_batch=4, max_queue_delay_microseconds=int(delay * 1e6))

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        warm = [_pending(loop, np.zeros((1, 1), np.float32)) for _ in range(4)]
        for p in warm:  # arrivals close together: company is expected from now on
            batcher.submit(p)
        await asyncio.gather(*(p.future for p in warm))
        first = [_pending(loop, np.full((1, 1), float(i), np.float32)) for i in range(4)]
        t0 = time.perf_counter()
        batcher.submit(first[0])
        await asyncio.sleep(0.05)  # held: company is expected within the delay
        for p in first[1:]:
            batcher.submit(p)  # full: it leaves now
        await asyncio.gather(*(p.future for p in first))
        full_after = time.perf_counter() - t0
        await asyncio.sleep(0.1)
        late = _pending(loop, np.full((1, 1), 9.0, np.float32))
        t1 = time.perf_counter()
        batcher.submit(late)
        await late.future
        return full_after, time.perf_counter() - t1

    full_after, waited = asyncio.run(main())
    batcher.close()
    assert [len(b) for b in run.batches] == [4, 4, 1]
    assert full_after < 0.25
    # Held for its own patience (0.3 s); the first batch's timer fired ~0.15 s after
    # this request arrived. (A slow machine only makes both waits longer.)
    assert waited > 0.22


# (4,) and 4 single rows: the largest preferred size. (2, 8) and 2: a smaller one, which
# Triton runs at once too ("if a batch of one of these sizes can be formed it will be
# executed immediately"); it waited out the whole 5 s delay.
@pytest.mark.parametrize(("preferred", "requests"), [((4,), 4), ((2, 8), 2)])
def test_a_preferred_batch_size_formed_runs_without_waiting_for_the_delay(
    preferred: tuple[int, ...], requests: int
) -> None:
    run = Recorder()
    batcher = _batcher(
        run, max_batch=64, max_queue_delay_microseconds=5_000_000, preferred_batch_size=preferred
    )

    async def main() -> float:
        loop = asyncio.get_running_loop()
        ps = [_pending(loop, np.ones((1, 1), np.float32)) for _ in range(requests)]
        t0 = time.perf_counter()
        for p in ps:
            batcher.submit(p)
        await asyncio.gather(*(p.future for p in ps))
        return time.perf_counter() - t0

    assert asyncio.run(main()) < 1.0
    batcher.close()
    assert [len(b) for b in run.batches] == [requests]


def test_a_preferred_size_no_requests_form_does_not_split_the_batch() -> None:
    # Two 3-row requests under preferred (4, 8): no whole requests make 4 or 8, so the
    # batch at the delay is all 6 rows (as Triton); it was cut to 4 rows: [3], then [3].
    gate = threading.Event()
    run = Recorder(gate)
    batcher = _batcher(
        run, max_batch=8, max_queue_delay_microseconds=50_000, preferred_batch_size=(4, 8)
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        blocker = _pending(loop, np.zeros((1, 1), np.float32))
        batcher.submit(blocker)
        assert await asyncio.to_thread(run.entered.wait, 5)  # the worker holds it
        ps = [_pending(loop, np.full((3, 1), float(i + 1), np.float32)) for i in range(2)]
        for p in ps:
            batcher.submit(p)
        gate.set()
        await asyncio.gather(blocker.future, *(p.future for p in ps))

    asyncio.run(main())
    batcher.close()
    assert [len(b) for b in run.batches] == [1, 6]


def test_each_priority_level_has_its_own_queue_bound() -> None:
    # Triton's default_queue_policy.max_queue_size bounds each level's queue: a full
    # low-priority queue refused high-priority requests.
    gate = threading.Event()
    run = Recorder(gate)
    batcher = _batcher(run, max_batch=1, max_queue_size=2, priority_levels=2)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        first = _pending(loop, np.zeros((1, 1), np.float32), level=1)
        batcher.submit(first)
        assert await asyncio.to_thread(run.entered.wait, 5)
        low = [_pending(loop, np.zeros((1, 1), np.float32), level=1) for _ in range(2)]
        for p in low:
            batcher.submit(p)
        with pytest.raises(ResourceExhausted, match=r"queue full .* at priority 2"):
            batcher.submit(_pending(loop, np.zeros((1, 1), np.float32), level=1))
        high = _pending(loop, np.ones((1, 1), np.float32), level=0)
        batcher.submit(high)  # accepted: the high level's queue is empty
        gate.set()
        await asyncio.gather(first.future, high.future, *(p.future for p in low))

    asyncio.run(main())
    batcher.close()
    assert run.seen() == {0.0, 1.0}


def test_one_bad_request_fails_only_itself() -> None:
    run = Recorder()
    batcher = _batcher(run, max_batch=8, max_queue_delay_microseconds=100_000)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        good = _pending(loop, np.ones((1, 1), np.float32))
        bad = _pending(loop, -np.ones((1, 1), np.float32))
        batcher.submit(good)
        batcher.submit(bad)
        np.testing.assert_array_equal(await good.future, [[2.0]])
        with pytest.raises(Internal, match="negative"):
            await bad.future

    asyncio.run(main())
    batcher.close()


def test_instances_execute_concurrently_and_close_drains_the_queue() -> None:
    barrier = threading.Barrier(2, timeout=5)

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        barrier.wait()  # only passes when two workers execute at the same time
        return [inputs[0]]

    batcher = _batcher(run, max_batch=1, instance_count=2)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ps = [_pending(loop, np.ones((1, 1), np.float32)) for _ in range(4)]
        for p in ps:
            batcher.submit(p)
        await asyncio.gather(*(p.future for p in ps))

    asyncio.run(main())
    assert batcher.close(timeout=5)


@pytest.mark.parametrize("rows", [4, 3])
def test_requests_left_behind_by_a_take_go_to_an_idle_worker(rows: int) -> None:
    # Two workers. Two 1-row requests are held for company (by the event loop); a
    # larger one arrives, a worker takes the two and leaves it behind (it does not
    # fit). The other worker is idle: it must take it (a full batch at once, a partial
    # one within the delay) while the first batch still runs, not after it.
    second_started = threading.Event()
    overlapped: list[bool] = []

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        (x,) = inputs
        if x[0, 0] == 1.0:
            overlapped.append(second_started.wait(10))
        else:
            second_started.set()
        return [x * 2]

    batcher = Batcher(
        "m:1", run, 4, DynamicBatching(max_queue_delay_microseconds=1_000_000), 2,
        execution_timeout=None,
    )  # fmt: skip

    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + 10
        while batcher._idle < 2 and time.monotonic() < deadline:  # both workers started
            await asyncio.sleep(0.01)
        assert batcher._idle == 2
        pair = [_pending(loop, np.full((1, 1), 1.0, np.float32)) for _ in range(2)]
        for p in pair:
            batcher.submit(p)
        await asyncio.sleep(0)  # the event loop now holds them for company
        big = _pending(loop, np.full((rows, 1), 9.0, np.float32))
        batcher.submit(big)  # the queue reaches max_batch_size: a worker takes the pair
        await asyncio.wait_for(asyncio.gather(*(p.future for p in [*pair, big])), 30)

    asyncio.run(main())
    assert batcher.close(5)
    assert overlapped == [True]


def test_close_reports_a_worker_stuck_in_the_model() -> None:
    gate = threading.Event()
    run = Recorder(gate)
    batcher = _batcher(run)

    async def main() -> None:
        batcher.submit(_pending(asyncio.get_running_loop(), np.ones((1, 1), np.float32)))
        assert await asyncio.to_thread(run.entered.wait, 5)

    asyncio.run(main())
    assert not batcher.close(timeout=0.1)
    gate.set()
    assert batcher.close(timeout=5)


def test_a_hang_while_isolating_a_failed_batch_still_runs_the_rest() -> None:
    # A batch fails, so each request is re-run alone; one of those runs hangs past the
    # execution timeout. The requests after it must still be executed, not forgotten.
    release = threading.Event()

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        (x,) = inputs
        if (x < 0).any():
            raise Internal("negative input")
        if (x > 100).any():
            release.wait(5)
        return [x * 2]

    batcher = Batcher(
        "m:1", run, 16, DynamicBatching(max_queue_delay_microseconds=200_000), 1,
        execution_timeout=0.3,
    )  # fmt: skip

    async def main() -> None:
        loop = asyncio.get_running_loop()
        bad, hangs, innocent = (
            _pending(loop, np.full((1, 1), v, np.float32)) for v in (-1.0, 1000.0, 1.0)
        )
        for p in (bad, hangs, innocent):
            batcher.submit(p)
        np.testing.assert_array_equal(await asyncio.wait_for(innocent.future, 5), [[2.0]])
        with pytest.raises(Internal, match="negative"):
            await bad.future
        with pytest.raises(DeadlineExceeded, match="execution timeout"):
            await hangs.future

    try:
        asyncio.run(main())
    finally:
        _release_and_close(batcher, release)


def _version_sample(metrics: Any, name: str) -> float | None:
    """A metric's value for version 1 of model "m" (None when it has no sample)."""
    return metrics.registry.get_sample_value(name, {"model": "m", "version": "1"})


def _release_and_close(batcher: Batcher, release: threading.Event) -> None:
    """Let the hung model return, close the batcher and wait for its worker threads."""
    release.set()
    batcher.close(5)
    _join_workers("m:1")


def _join_workers(name: str) -> None:
    """Wait for a batcher's worker threads, abandoned ones included: one that returns
    from a hung model after the test logs that it exits, and pytest has closed that
    test's captured stream by then ("--- Logging error ---" in a later test's output)."""
    for thread in threading.enumerate():
        if thread.name.startswith(f"conveyor-{name}-"):
            thread.join(10)
            assert not thread.is_alive(), thread.name


def test_close_executes_the_queue_on_a_replacement_while_a_batch_hangs() -> None:
    # Closing (an unload) while a batch hangs: the watchdog abandons it, a replacement
    # worker executes the queued requests, and close() returns once they are done,
    # while the hung call is still in the model. The abandoned thread exits later.
    release = threading.Event()
    hung = threading.Event()

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        (x,) = inputs
        if (x > 100).any():
            hung.set()
            release.wait(20)
        return [x * 2]

    batcher = Batcher(
        "m:1", run, 1, DynamicBatching(max_queue_delay_microseconds=0), 1,
        execution_timeout=0.3,
    )  # fmt: skip

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stuck = _pending(loop, np.full((1, 1), 1000.0, np.float32))
        batcher.submit(stuck)
        assert await asyncio.to_thread(hung.wait, 5)
        queued = [_pending(loop, np.full((1, 1), float(i), np.float32)) for i in (1, 2)]
        for p in queued:
            batcher.submit(p)
        assert await asyncio.to_thread(batcher.close, 10)
        assert not release.is_set()  # returned without waiting for the hung call
        with pytest.raises(DeadlineExceeded, match="execution timeout"):
            await stuck.future
        results = await asyncio.wait_for(asyncio.gather(*(p.future for p in queued)), 5)
        assert [r.tolist() for r in results] == [[[2.0]], [[4.0]]]

    try:
        asyncio.run(main())
        assert batcher.abandoned == 1
    finally:
        release.set()
    deadline = time.monotonic() + 10
    while batcher.abandoned and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher.abandoned == 0  # the abandoned thread returned from the model
    _join_workers("m:1")  # ... and logs that it exits, within this test


def _hanging(**kw: object) -> tuple[Batcher, threading.Event, Any]:
    """A batcher (batches of 1, execution timeout 0.3 s, ServerMetrics attached) whose
    model hangs until the returned event is set (at most 5 s); and the metrics."""
    from conveyor.engine.metrics import ServerMetrics

    release = threading.Event()

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        release.wait(5)
        return [inputs[0]]

    metrics = ServerMetrics()
    batcher = Batcher(
        "m:1", run, 1, DynamicBatching(max_queue_delay_microseconds=0), 1,
        execution_timeout=0.3, **kw,
    )  # fmt: skip
    batcher.metrics = metrics.version("m", 1)
    return batcher, release, metrics


def test_flushing_a_stalled_queue_lowers_the_queue_depth_gauge() -> None:
    batcher, release, metrics = _hanging(max_abandoned_threads=0)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ps = [_pending(loop, np.ones((1, 1), np.float32)) for _ in range(4)]
        for p in ps:
            batcher.submit(p)
        await asyncio.wait([p.future for p in ps], timeout=5)
        assert all(p.future.done() for p in ps)

    try:
        asyncio.run(main())
        depth = metrics.registry.get_sample_value("conveyor_queue_depth", {"model": "m"})
        assert batcher.queued == 0 and depth == 0
    finally:
        _release_and_close(batcher, release)


def test_failed_batches_are_observed_in_the_queue_and_compute_histograms() -> None:
    from conveyor.engine.metrics import ServerMetrics

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        time.sleep(0.3)
        raise RuntimeError("model failed")

    metrics = ServerMetrics()
    batcher = _batcher(run, max_batch=16, max_queue_delay_microseconds=50_000)
    batcher.metrics = metrics.version("m", 1)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ps = [_pending(loop, np.ones((1, 1), np.float32)) for _ in range(3)]
        for p in ps:
            batcher.submit(p)
        for p in ps:
            with pytest.raises(Internal, match="model failed"):
                await asyncio.wait_for(p.future, 5)

    try:
        asyncio.run(main())
    finally:
        batcher.close(5)

    # Each request's queue time once (a batch that fails is re-run request by request,
    # and only that last run observes it); every failed execution's compute time.
    assert _version_sample(metrics, "conveyor_queue_duration_seconds_count") == 3
    assert _version_sample(metrics, "conveyor_compute_duration_seconds_count") >= 3
    assert (
        _version_sample(metrics, "conveyor_batch_size_count") == 0
        and _version_sample(metrics, "conveyor_rows_total") == 0
    )
    # Queued until the batch was taken: the failed run (0.3 s) and the re-runs before a
    # request's own are compute, not queue (they read 0.3, 0.6 and 0.9 s more).
    queued = _version_sample(metrics, "conveyor_queue_duration_seconds_sum")
    computed = _version_sample(metrics, "conveyor_compute_duration_seconds_sum")
    assert queued is not None and computed is not None and queued < computed / 2


def test_a_hung_batch_is_observed_in_the_queue_and_compute_histograms() -> None:
    # Answered by the watchdog, it was missing from both: a hang was invisible in the
    # compute p99, the case that panel is for.
    batcher, release, metrics = _hanging()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        p = _pending(loop, np.ones((1, 1), np.float32))
        batcher.submit(p)
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(p.future, 5)

    try:
        asyncio.run(main())
    finally:
        _release_and_close(batcher, release)

    assert _version_sample(metrics, "conveyor_queue_duration_seconds_count") == 1
    assert _version_sample(metrics, "conveyor_compute_duration_seconds_count") == 1
    assert (
        _version_sample(metrics, "conveyor_compute_duration_seconds_sum") >= 0.3
    )  # the time it hung


def test_statistics_charge_each_request_the_whole_batch_compute_time() -> None:
    # Triton's ModelStatistics: compute durations per request, each request of a batch
    # charged the batch's time; batch_stats count executions with their time once.
    stats = BatchStats()
    stats.record(rows=6, requests=3, queue_ns=300, t=(0, 10, 110, 130))
    assert stats.compute_input == [3, 30] and stats.compute_infer == [3, 300]
    assert stats.compute_output == [3, 60] and stats.queue == [3, 300]
    assert stats.batches == {6: [1, 10, 100, 20]}
    assert stats.execution_count == 1 and stats.inference_count == 6
