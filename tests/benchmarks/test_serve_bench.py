"""benchmarks/serve_bench.py: the forward rows' "server CPU us/req" is CPU time, measured."""

from __future__ import annotations

import json

from tests.benchmarks.scripts import load


def test_forward_rate_measures_cpu_per_call(tmp_path) -> None:
    serve_bench = load("serve_bench.py")
    model = serve_bench.write_model(tmp_path / "repo", max_batch=8)
    rate = serve_bench.forward_rate(model, batch=4, seconds=0.06)
    # One forward of a 64-256-256-1 MLP on 4 rows costs some CPU, and less than a second.
    assert 0 < rate["server_cpu_us"] < 1e6
    assert json.loads(json.dumps(rate))["server_cpu_us"] == rate["server_cpu_us"]


def test_table_prints_the_forward_rows_cpu_not_wall_time() -> None:
    serve_bench = load("serve_bench.py")
    row = {"server": "forward", "rows": 64, "concurrency": 0, "requests_s": 2000.0}
    row |= {"rows_s": 128000.0, "server_cpu_us": 42.0}
    forward_line = serve_bench.table([row]).splitlines()[2]
    # 1e6 / requests_s would be 500 us: wall time per call, not CPU.
    assert forward_line.endswith("| 42 | - |"), forward_line


def test_a_server_that_exits_fails_at_once_and_an_interrupted_start_kills_it(
    monkeypatch,
) -> None:
    import subprocess
    import sys
    import time

    import pytest

    serve_bench = load("serve_bench.py")
    port = serve_bench.free_port()
    # A server refusing its flags: waited for 120 s, then a RuntimeError traceback.
    started = time.monotonic()
    with pytest.raises(
        SystemExit, match=r"failed to start \(server on port \d+ exited with code 3"
    ):
        serve_bench.start([sys.executable, "-c", "import sys; sys.exit(3)"], port)
    assert time.monotonic() - started < 30
    # SIGTERM (exit_on_sigterm's SystemExit) while waiting left the server running.
    launched: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        launched.append(real_popen(*args, **kwargs))
        return launched[-1]

    def interrupted(*args, **kwargs):
        raise SystemExit(143)

    monkeypatch.setattr(serve_bench.subprocess, "Popen", popen)
    monkeypatch.setattr(serve_bench, "wait_ready", interrupted)
    with pytest.raises(SystemExit):
        serve_bench.start([sys.executable, "-c", "import time; time.sleep(60)"], port)
    assert launched[0].poll() is not None  # killed, not orphaned
