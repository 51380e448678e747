"""``conveyor serve --workers N``: the parent replaces workers that die while serving."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import worker_targets
from cli_server import read_stderr_until, start_cli_server, stop_cli_server
from models import VERSION_IO, Version, write_model
from test_server import _request

from conveyor.engine.protos import grpc_service_pb2 as pb
from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc
from conveyor.engine.workers import WorkerPolicy, run_workers

FAST = dict(backoff_s=0.05, poll_s=0.05)


def _pids(folder: Path) -> set[int]:
    return {int(p.name) for p in folder.iterdir() if p.name.isdigit()}


def _wait(predicate, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _in_thread(fn) -> threading.Thread:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)
            os.kill(os.getpid(), signal.SIGTERM)  # unblock run_workers

    thread = threading.Thread(target=run, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def test_a_worker_killed_while_serving_is_replaced(tmp_path: Path) -> None:
    exited: list[int] = []

    def chaos() -> None:
        _wait(lambda: len(_pids(tmp_path)) == 2)
        victim = min(_pids(tmp_path))
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: len(_pids(tmp_path)) == 3)  # the replacement announced itself
        os.kill(os.getpid(), signal.SIGTERM)  # now stop the whole group gracefully

    thread = _in_thread(chaos)
    code = run_workers(
        worker_targets.serve_until_term, (str(tmp_path),), 2, WorkerPolicy(**FAST), exited.append
    )
    thread.join(5)
    assert not thread.errors  # type: ignore[attr-defined]
    assert code == 0  # the survivors and the replacement all stopped gracefully
    assert sorted(exited) == sorted(_pids(tmp_path))  # every process seen to its end


def test_a_worker_failing_before_ready_stops_everything(tmp_path: Path) -> None:
    t0 = time.monotonic()
    code = run_workers(worker_targets.fail_before_ready, (str(tmp_path),), 2, WorkerPolicy(**FAST))
    assert code == 1
    assert time.monotonic() - t0 < 30  # no restarts of a configuration error


def test_a_crash_loop_gives_up(tmp_path: Path) -> None:
    policy = WorkerPolicy(max_fast_crashes=3, **FAST)
    code = run_workers(worker_targets.crash_after_ready, (str(tmp_path),), 1, policy)
    assert code == 1
    assert len(_pids(tmp_path)) == 3  # the first worker and two replacements


def test_a_worker_ready_and_dead_between_two_looks_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parent read a worker's ready event (not set yet), lost the CPU, then read its
    # exit status (dead): a worker that became ready and crashed meanwhile was taken
    # for one that failed before ready, and everything stopped without a replacement.
    import multiprocessing.synchronize

    is_set = multiprocessing.synchronize.Event.is_set

    def descheduled_after_a_miss(self) -> bool:
        seen = is_set(self)
        if not seen:
            time.sleep(0.3)
        return seen

    monkeypatch.setattr(multiprocessing.synchronize.Event, "is_set", descheduled_after_a_miss)
    policy = WorkerPolicy(max_fast_crashes=3, **FAST)
    code = run_workers(worker_targets.crash_after_ready, (str(tmp_path),), 1, policy)
    assert code == 1  # the crash loop, not a start-up failure
    assert len(_pids(tmp_path)) == 3  # the first worker and two replacements


def test_without_restarts_a_death_stops_everything(tmp_path: Path) -> None:
    def chaos() -> None:
        _wait(lambda: len(_pids(tmp_path)) == 2)
        os.kill(min(_pids(tmp_path)), signal.SIGKILL)

    thread = _in_thread(chaos)
    code = run_workers(
        worker_targets.serve_until_term,
        (str(tmp_path),),
        2,
        WorkerPolicy(restart=False, **FAST),
    )
    thread.join(5)
    assert code == 1
    assert len(_pids(tmp_path)) == 2  # nobody replaced


def test_a_ctrl_c_while_the_workers_spawn_stops_them_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stop handlers were installed only after every worker had started: a Ctrl-C
    # in between was a KeyboardInterrupt out of run_workers that left the workers
    # running (CI saw the parent then killed by a second Ctrl-C in its exit-time join).
    import multiprocessing.context

    started = multiprocessing.context.SpawnProcess.start

    def start_then_ctrl_c(self) -> None:
        started(self)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", start_then_ctrl_c)
    exited: list[int] = []
    code = run_workers(
        worker_targets.serve_until_term, (str(tmp_path),), 2, WorkerPolicy(**FAST), exited.append
    )
    assert code == 0
    assert len(exited) == 1  # the stop came after the first: the second never started
    with pytest.raises(ProcessLookupError):
        os.kill(exited[0], 0)  # and the first one was stopped and reaped


def test_sighup_stops_the_workers_gracefully(tmp_path: Path) -> None:
    # Its default action killed the parent and left the workers serving as orphans.
    def hang_up() -> None:
        _wait(lambda: len(_pids(tmp_path)) == 2)
        os.kill(os.getpid(), signal.SIGHUP)

    thread = _in_thread(hang_up)
    code = run_workers(worker_targets.serve_until_term, (str(tmp_path),), 2, WorkerPolicy(**FAST))
    thread.join(5)
    assert not thread.errors  # type: ignore[attr-defined]
    assert code == 0
    assert all(Path(tmp_path, f"{pid}.stopped").exists() for pid in _pids(tmp_path))


def _gone(pid: int) -> bool:
    """True once ``pid`` exited (a zombie its new parent has not reaped counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_workers_drain_and_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    # A parent killed by SIGKILL (the OOM killer) left its workers serving as orphans.
    program = (
        "import sys; sys.path.insert(0, sys.argv[1]); import worker_targets;"
        "from conveyor.engine.workers import WorkerPolicy, run_workers;"
        "run_workers(worker_targets.serve_until_term, (sys.argv[2],), 2, WorkerPolicy(poll_s=0.05))"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", program, str(Path(worker_targets.__file__).parent), str(tmp_path)]
    )
    try:
        _wait(lambda: len(_pids(tmp_path)) == 2)
        parent.kill()
        parent.wait(10)
        workers = _pids(tmp_path)
        _wait(lambda: all(_gone(pid) for pid in workers), 30)
        assert all(Path(tmp_path, f"{pid}.stopped").exists() for pid in workers)
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in _pids(tmp_path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("watch", ["_watch_parent", "_poll_parent"])
def test_a_worker_whose_parent_is_already_gone_stops(watch: str) -> None:
    # The parent may die between the fork and the worker's prctl: the kernel then sends
    # nothing, and only the comparison with the pid that started it sees it (the
    # polling fallback of other platforms checks the same).
    program = (
        "import signal, sys, time; from conveyor.engine import workers;"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7));"
        f"workers.{watch}(1, 0.05); time.sleep(20)"  # pid 1: not this process's parent
    )
    result = subprocess.run([sys.executable, "-c", program], timeout=60)
    assert result.returncode == 7


def test_a_worker_starts_with_ctrl_c_held_until_its_handlers_are_in(tmp_path: Path) -> None:
    # A group Ctrl-C while a worker imports was a KeyboardInterrupt traceback; now the
    # worker inherits SIGINT blocked, and the signal waits for its handler.
    def ctrl_c_the_worker() -> None:
        _wait(lambda: len(_pids(tmp_path)) == 1)
        os.kill(min(_pids(tmp_path)), signal.SIGINT)
        _wait(lambda: Path(tmp_path, "handled").exists(), 30)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = _in_thread(ctrl_c_the_worker)
    code = run_workers(
        worker_targets.report_sigint_after_unblock, (str(tmp_path),), 1, WorkerPolicy(**FAST)
    )
    thread.join(5)
    assert not thread.errors  # type: ignore[attr-defined]
    assert code == 0
    assert Path(tmp_path, "handled").read_text() == "SIGINT"


def _workers_of(pid: int) -> set[int]:
    """Worker processes of a ``conveyor serve`` parent (not multiprocessing's resource
    tracker, the parent's other child)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    found = set()
    for child in path.read_text().split() if path.exists() else ():
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(int(child))
        except OSError:  # exited meanwhile
            pass
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_cli_replaces_a_killed_worker_and_keeps_serving(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "m", 1, Version(1), VERSION_IO)
    proc, port = start_cli_server(
        repo, "--workers", "2", "--log-level", "info", "--metrics-port", "-1"
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)

            def ready() -> bool:
                try:
                    return stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready
                except grpc.RpcError:
                    return False

            # Both workers ready, as the supervisor counts it: a worker killed before it
            # reported ready is given up on, not replaced (a loaded machine took the
            # victim before then, and the test waited 90 s for a replacement).
            read_stderr_until(proc, lambda text: "all 2 workers serving" in text, 90)
            _wait(lambda: ready() and len(_workers_of(proc.pid)) == 2, 90)
            victim = max(_workers_of(proc.pid))
            os.kill(victim, signal.SIGKILL)
            _wait(lambda: len(_workers_of(proc.pid) - {victim}) == 2, 90)
            _wait(ready, 90)
            for _ in range(20):  # either worker may take the connection: all succeed
                assert stub.ModelInfer(_request(1.0), timeout=10)
        assert proc.poll() is None
        err = stop_cli_server(proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "killed by SIGKILL; starting a replacement" in err
    assert "replaced" in err


def _start_two_workers(tmp_path: Path) -> subprocess.Popen[str]:
    """``conveyor serve --workers 2`` in its own session (so a test can signal the group)."""
    repo = tmp_path / "repo"
    write_model(repo, "m", 1, Version(1), VERSION_IO)
    proc, _ = start_cli_server(
        repo, "--workers", "2", "--log-level", "info", "--metrics-port", "-1", new_session=True
    )
    return proc


# SIGHUP: a closed terminal signals the group; it killed the parent and every worker.
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_cli_drains_and_exits_0_when_the_whole_process_group_is_signalled(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # Ctrl-C (SIGINT) and systemd's KillMode=control-group (SIGTERM) reach every
    # worker directly, and the parent forwards the stop as well: that second signal
    # must not kill a worker that is draining or exiting (it was exit status 1,
    # both workers killed by SIGTERM). A signal to the parent alone:
    # test_server.test_cli_workers_share_the_port_and_stop_together.
    proc = _start_two_workers(tmp_path)
    try:
        # The parent's line: it has seen both ready, so a worker it saw die would count.
        started = read_stderr_until(proc, lambda text: "all 2 workers serving" in text, 90)
        err = started + stop_cli_server(proc, 60, sig, group=True)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "while stopping" not in err
    assert err.count(f"received {sig.name}; shutting down") == 2, err
    assert err.count("conveyor.engine.server: stopped") == 2, err  # both drained to the end


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_cli_workers_drain_and_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    # The parent SIGKILLed (or ended by SIGQUIT's default action): its workers served on
    # as orphans, holding the port. Now each drains as on SIGTERM.
    proc = _start_two_workers(tmp_path)
    workers: set[int] = set()
    try:
        started = read_stderr_until(proc, lambda text: "all 2 workers serving" in text, 90)
        workers = _workers_of(proc.pid)
        assert len(workers) == 2
        proc.kill()
        # The workers hold the stderr pipe: it ends when both have exited.
        err = started + proc.communicate(timeout=60)[1]
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
    assert err.count("received SIGTERM; shutting down") == 2, err
    assert err.count("conveyor.engine.server: stopped") == 2, err


def test_cli_ctrl_c_while_the_workers_start_and_a_repeated_stop_exit_0(tmp_path: Path) -> None:
    # A group Ctrl-C while the workers still import (it was a KeyboardInterrupt
    # traceback per worker and exit status 1), then the same signal again while the
    # parent shuts down (the restored default handler killed it: -SIGINT).
    proc = _start_two_workers(tmp_path)
    try:
        started = read_stderr_until(proc, lambda text: "started 2 worker processes" in text, 90)
        os.killpg(proc.pid, signal.SIGINT)
        for _ in range(20):  # repeated stops while everything shuts down
            time.sleep(0.05)
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
        err = started + stop_cli_server(proc, 60, signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_cli_a_start_up_error_of_the_workers_is_one_line_not_tracebacks(tmp_path: Path) -> None:
    # As single mode: "conveyor: error: ..." once, exit status 1; every other line of
    # --log-format json stays a JSON record (a traceback per worker broke both).
    missing = tmp_path / "no-such-repo"
    proc, _ = start_cli_server(
        missing, "--workers", "2", "--metrics-port", "-1", "--log-format", "json"
    )
    try:
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    plain = [line for line in err.splitlines() if not line.startswith("{")]
    assert plain == [f"conveyor: error: model repository {missing}: not a directory"]
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any("before it was ready" in r["msg"] for r in records)
