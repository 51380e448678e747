"""``conveyor serve --cpu-affinity``: the CPU list, each worker's share, and the pinned
server (its Python threads, not gRPC's; torch's thread count; a replaced worker's share)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import worker_targets
from cli_server import read_stderr_until, start_cli_server, stop_cli_server
from hypothesis import given
from hypothesis import strategies as st
from models import VERSION_IO, Version, write_model
from test_server import _request
from test_workers import FAST, _in_thread, _wait

from conveyor.cli import main
from conveyor.engine.cpu_affinity import format_cpu_list, parse_cpu_list, worker_shares
from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc
from conveyor.engine.workers import WorkerPolicy, run_workers

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only"
)
CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="needs 2 CPUs")


@pytest.fixture
def many_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(256)))


@pytest.mark.usefixtures("many_cpus")
@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0", (0,)),
        ("3,1", (1, 3)),
        ("0-3", (0, 1, 2, 3)),
        (" 0 - 1 , 4 ", (0, 1, 4)),
        ("2,0-2", (0, 1, 2)),  # overlaps are one set, as taskset's
        ("5-5", (5,)),
    ],
)
def test_cpu_lists_parse_as_taskset_reads_them(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpu_list(text) == cpus


@pytest.mark.usefixtures("many_cpus")
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "'' is not a CPU number or range; expected a list like 0,2-3"),
        ("1,", "'' is not a CPU number or range"),
        ("a", "'a' is not a CPU number or range"),
        ("-1", "'-1' is not a CPU number or range"),
        ("1-", "'1-' is not a CPU number or range"),
        ("3-1", "range 3-1 runs backwards"),
        ("300", "CPU 300 not available to this process (available: 0-255)"),
        ("254-257", "CPU 256-257 not available"),
    ],
)
def test_bad_cpu_lists_name_the_flag_and_the_item(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^--cpu-affinity ") as info:
        parse_cpu_list(text)
    assert message in str(info.value)


@pytest.mark.usefixtures("many_cpus")
@given(st.sets(st.integers(0, 255), min_size=1))
def test_a_formatted_list_parses_back_to_its_cpus(cpus: set[int]) -> None:
    text = format_cpu_list(sorted(cpus))
    assert parse_cpu_list(text) == tuple(sorted(cpus))
    assert len(text.split(",")) <= len(cpus)  # runs are ranges, not every CPU


@pytest.mark.parametrize(
    ("cpus", "workers", "shares"),
    [
        ((0, 1, 2, 3), 1, [(0, 1, 2, 3)]),
        ((0, 1, 2, 3), 2, [(0, 1), (2, 3)]),
        ((0, 1, 2, 3, 4), 2, [(0, 1, 2), (3, 4)]),
        ((4, 6, 8), 3, [(4,), (6,), (8,)]),
        ((0, 1), 3, [(0,), (1,), (0,)]),  # more workers than CPUs: one each, round-robin
        ((1,), 2, [(1,), (1,)]),
    ],
)
def test_each_worker_gets_a_contiguous_share(
    cpus: tuple[int, ...], workers: int, shares: list[tuple[int, ...]]
) -> None:
    assert worker_shares(cpus, workers) == shares


def test_serve_refuses_a_bad_cpu_list_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(max(CPUS) + 1)
    for value, message in (("x", "'x' is not a CPU number"), (missing, f"CPU {missing} not")):
        code = main(["serve", "--model-repository", str(tmp_path), "--cpu-affinity", value])
        err = capsys.readouterr().err
        assert code == 1
        assert err.startswith(f"conveyor: error: --cpu-affinity {value!r}: ") and message in err
        assert len(err.strip().splitlines()) == 1
    assert sorted(os.sched_getaffinity(0)) == CPUS  # refused before anything was pinned


def _threads(pid: int) -> list[tuple[str, frozenset[int]]]:
    """(name, CPUs) of each thread of ``pid``."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            out.append((name, frozenset(os.sched_getaffinity(int(tid)))))
        except OSError:  # ended since the listing (a model load's short-lived threads)
            continue
    return out


def _own_and_named_cpus(pid: int) -> tuple[set[frozenset[int]], set[frozenset[int]]]:
    """The CPU sets of ``pid``'s own threads (named as the process: Python's, and native
    ones that do not name themselves) and of the threads that name themselves (gRPC's)."""
    main_name = Path(f"/proc/{pid}/comm").read_text().strip()
    threads = _threads(pid)
    own = {cpus for name, cpus in threads if name == main_name}
    named = {cpus for name, cpus in threads if name != main_name}
    return own, named


def test_a_pinned_server_runs_its_own_threads_on_its_cpus(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    last = CPUS[-1]
    # Two torch threads: torch's OpenMP pool, native threads that do not name
    # themselves, must be pinned too.
    proc, port = start_cli_server(
        tmp_path, "--cpu-affinity", str(last), "--metrics-port", "-1", "--log-level", "info",
        env={"OMP_NUM_THREADS": "2"},
    )  # fmt: skip
    try:
        err = read_stderr_until(proc, lambda text: "server threads on CPU" in text, 60)
        assert re.search(rf"\d+ server threads on CPU {last} \(torch threads: 2\)", err), err
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(3):
                stub.ModelInfer(_request(1.0), timeout=30)
        own, named = _own_and_named_cpus(proc.pid)
        # The event loop's, the model worker's, the repository's, the main thread, torch's.
        assert own == {frozenset({last})}
        # gRPC's network threads keep every CPU the process has.
        assert named == {frozenset(CPUS)}
    finally:
        stop_cli_server(proc, 30)
    assert proc.returncode == 0


def test_a_version_loaded_later_runs_on_the_pinned_cpus_too(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    last = CPUS[-1]
    proc, _ = start_cli_server(
        tmp_path, "--cpu-affinity", str(last), "--metrics-port", "-1", "--log-level", "info",
        "--poll-interval", "0.2",
    )  # fmt: skip
    try:
        read_stderr_until(proc, lambda text: "server threads on CPU" in text, 60)
        before = len(os.listdir(f"/proc/{proc.pid}/task"))
        write_model(tmp_path, "m", 2, Version(2), VERSION_IO)
        # Its worker thread is started by the repository's thread, pinned, and inherits.
        read_stderr_until(proc, lambda text: "model=m version=2" in text, 60)
        own, _ = _own_and_named_cpus(proc.pid)
        assert own == {frozenset({last})}
        assert len(os.listdir(f"/proc/{proc.pid}/task")) >= before
    finally:
        stop_cli_server(proc, 30)
    assert proc.returncode == 0


@two_cpus
def test_each_cli_worker_runs_on_its_own_share(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    cpus = f"{CPUS[0]},{CPUS[-1]}"
    proc, _ = start_cli_server(
        tmp_path, "--workers", "2", "--cpu-affinity", cpus, "--metrics-port", "-1",
        "--log-level", "info",
    )  # fmt: skip
    try:
        read_stderr_until(proc, lambda text: "all 2 workers serving" in text, 120)
        kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        shares = []
        for kid in map(int, kids):
            own, named = _own_and_named_cpus(kid)
            if named:  # a server worker, not multiprocessing's resource tracker
                assert len(own) == 1 and named == {frozenset(CPUS)}
                shares.append(next(iter(own)))
        assert sorted(shares, key=min) == [{CPUS[0]}, {CPUS[-1]}]
    finally:
        stop_cli_server(proc, 60)
    assert proc.returncode == 0


def test_each_worker_and_its_replacement_get_their_own_arguments(tmp_path: Path) -> None:
    def tags() -> dict[int, str]:
        return {
            int(f.name.split(".")[0]): f.read_text()
            for f in tmp_path.glob("*.tag")
            if f.stat().st_size
        }

    def chaos() -> None:
        _wait(lambda: len(tags()) == 2)
        first = tags()
        victim = next(pid for pid, tag in first.items() if tag == "a")
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: len(tags()) == 3)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = _in_thread(chaos)
    code = run_workers(
        worker_targets.serve_until_term_tagged,
        (str(tmp_path),),
        2,
        WorkerPolicy(**FAST),
        worker_args=[("a",), ("b",)],
    )
    thread.join(5)
    assert not thread.errors  # type: ignore[attr-defined]
    assert code == 0
    assert sorted(tags().values()) == ["a", "a", "b"]  # the replacement of "a" got "a"


_LIMIT = """
import os, sys, torch
from conveyor.engine.cpu_affinity import limit_torch_threads
before = torch.get_num_threads()
print(before, limit_torch_threads([int(sys.argv[1])]))
"""


@two_cpus
@pytest.mark.parametrize("omp", [None, "2"])
def test_torch_threads_follow_the_pin_unless_omp_num_threads_says(omp: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    out = subprocess.run(
        [sys.executable, "-c", _LIMIT, str(CPUS[-1])],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    ).stdout.split()  # fmt: skip
    before, after = int(out[0]), int(out[1])
    assert before >= 2  # torch started on every CPU
    assert after == (1 if omp is None else 2)
