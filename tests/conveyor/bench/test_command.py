"""``conveyor bench``: serve writes JSON, CSV and PNG; the script runners' files and errors."""

from __future__ import annotations

import contextlib
import csv
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conveyor.bench.command import EXAMPLES
from conveyor.bench.loadgen import LoadError, LoadSpecError
from conveyor.bench.scripts import SCRIPTS, benchmarks_dir
from conveyor.bench.serve import ServeBenchConfig, run
from conveyor.cli import main
from conveyor.engine.server import Server
from tests.conveyor.bench.conftest import write_double

PAGE = b"""\
# TYPE conveyor_batch_size histogram
conveyor_batch_size_bucket{model="double",version="1",le="+Inf"} 4.0
conveyor_batch_size_sum{model="double",version="1"} 8.0
conveyor_batch_size_count{model="double",version="1"} 4.0
"""


class _QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _http(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on 127.0.0.1 in a thread; yields its ``host:port``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def metrics_page() -> Iterator[str]:
    """A static Prometheus page on 127.0.0.1 (the engine's own /metrics is another branch's)."""

    class Page(_QuietHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(PAGE)

    with _http(Page) as address:
        yield address


def test_serve_writes_json_csv_png(
    server: Server, tmp_path: Path, metrics_page: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = [
        "bench", "serve", "--target", server.address, "--model", "double",
        "--concurrency", "1,4", "--rate", "150", "--rows", "3", "--duration", "0.5",
        "--warmup", "0.1", "--procs", "2", "--out", str(out), "--metrics-url", metrics_page,
    ]  # fmt: skip
    assert main(argv) == 0
    document = json.loads((out / "serve.json").read_text())
    points = document["points"]
    assert [(p["mode"], p["concurrency"], p["target_rate"]) for p in points] == [
        ("closed", 1, None),
        ("closed", 4, None),
        ("open", None, 150.0),
    ]
    assert [p["procs"] for p in points] == [1, 2, 2]  # never more processes than in flight
    assert all(p["requests"] > 0 and p["errors"] == 0 and p["rows"] == 3 for p in points)
    # The static page does not move: the server-side deltas are zero, so no means.
    assert points[0]["server_batch_size"] is None and points[0]["server_requests"] is None
    assert document["settings"]["target"] == server.address and "token" not in document["settings"]
    with (out / "serve.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and {"p50_ms", "p999_ms", "requests_s", "client_cpu_cores"} <= set(
        rows[0]
    )
    assert (out / "serve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "c=4" in printed and "rate=150/s" in printed and "serve.png" in printed


def test_failed_scrape_keeps_the_sweep_going(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    served = [0]

    class Flaky(_QuietHandler):
        def do_GET(self) -> None:
            served[0] += 1
            ok = served[0] <= 2  # the check before the sweep, point 1's "before"; then 500s
            self.send_response(200 if ok else 500)
            self.end_headers()
            self.wfile.write(PAGE if ok else b"down")

    out = tmp_path / "out"
    with _http(Flaky) as metrics:
        argv = [
            "bench", "serve", "--target", server.address, "--model", "double",
            "--concurrency", "1,2", "--duration", "0.3", "--warmup", "0", "--out", str(out),
            "--metrics-url", metrics, "--progress", "off",
        ]  # fmt: skip
        assert main(argv) == 0
    points = json.loads((out / "serve.json").read_text())["points"]
    assert [p["concurrency"] for p in points] == [1, 2]  # the second point still ran
    assert all(p["requests"] > 0 for p in points)
    for p in points:
        assert p["server_queue_ms"] is None and p["server_batch_size"] is None
    err = capsys.readouterr().err
    assert err.count("no server-side figures") >= 2 and "HTTP Error 500" in err


def test_serve_inputs_from_parquet(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "inputs.parquet"
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    pq.write_table(pa.table({"x": pa.array(list(x), type=pa.list_(pa.float32(), 3))}), data)
    argv = [
        "bench", "serve", "--target", server.address, "--model", "double", "--concurrency", "2",
        "--rows", "5", "--duration", "0.3", "--warmup", "0.1", "--data", str(data),
        "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert main(argv) == 0
    point = json.loads((tmp_path / "out" / "serve.json").read_text())["points"][0]
    assert point["requests"] > 0 and point["errors"] == 0


def test_serve_leaves_out_rows_the_model_refuses_and_says_where_the_first_was(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    vectors = pa.list_(pa.float64(), 3)
    good = [[float(i), 0.0, 1.0] for i in range(4)]
    pq.write_table(pa.table({"x": pa.array(good, type=vectors)}), folder / "a.parquet")
    bad = [[1.0, 2.0, 3.0], [1e300, 0.0, 0.0], [4.0, 5.0, 6.0]]  # 1e300: no FP32 holds it
    pq.write_table(pa.table({"x": pa.array(bad, type=vectors)}), folder / "b.parquet")
    out = tmp_path / "out"
    argv = [
        "bench", "serve", "--target", server.address, "--model", "double", "--concurrency", "1",
        "--rows", "2", "--duration", "0.2", "--warmup", "0", "--data", str(folder),
        "--out", str(out), "--progress", "off",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert (
        f"left out 1 row(s) of {folder} that fail the model's input checks; the first: "
        f"{folder / 'b.parquet'}, row 1: input 'x': 1e+300 at element 0 cannot be sent as FP32"
    ) in printed
    document = json.loads((out / "serve.json").read_text())
    assert document["data_rows_left_out"] == 1 and document["points"][0]["errors"] == 0


def test_serve_bad_input_names_the_problem(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"y": [1.0, 2.0]}), data)
    base = ["bench", "serve", "--target", server.address, "--out", str(tmp_path / "o")]
    assert main([*base, "--model", "double", "--data", str(data)]) == 1
    assert "no column(s) ['x']" in capsys.readouterr().err
    assert main([*base, "--model", "nope"]) == 1
    assert "model metadata for 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rows", "-1"], "--rows must be >= 1, got -1"),
        (["--rows", "0"], "--rows must be >= 1, got 0"),
        (["--duration", "0"], "--duration must be > 0 seconds, got 0.0"),
        (["--duration", "inf"], "--duration must be > 0 seconds, got inf"),
        (["--warmup", "-1"], "--warmup must be >= 0 seconds, got -1.0"),
        (["--procs", "0"], "--procs must be >= 1, got 0"),
        (["--timeout", "0"], "--timeout must be > 0 seconds, got 0.0"),
        (["--timeout", "nan"], "--timeout must be > 0 seconds, got nan"),
    ],
)
def test_bad_flags_are_one_line_before_any_connection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    # Port 1 on loopback: had the command tried to connect, the error would be another one.
    argv = ["bench", "serve", "--target", "127.0.0.1:1", "--model", "double",
            "--out", str(tmp_path / "o"), *flags]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"conveyor: error: {message}"]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("rate", ["inf", "nan", "100,inf", "-5"])
def test_rate_must_be_finite_and_positive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rate: str
) -> None:
    argv = ["bench", "serve", "--target", "127.0.0.1:1", "--model", "double",
            "--out", str(tmp_path / "o"), "--rate", rate]  # fmt: skip
    with pytest.raises(SystemExit) as exited:  # argparse's usage error, as for --concurrency
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--rate: expected finite positive numbers" in err and "Traceback" not in err
    # The same rule holds for the library's configuration, which the TOML/env path also makes.
    with pytest.raises(LoadSpecError, match="--rate must be finite"):
        ServeBenchConfig(target="127.0.0.1:1", model="double", rates=[float(rate.split(",")[-1])])


def test_missing_script_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "kernels", "--benchmarks-dir", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "kernels/bench_ops.py not found" in err


def test_script_runner_writes_json_csv_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scripts = tmp_path / "benchmarks"
    scripts.mkdir()
    (scripts / "train_bench.py").write_text(
        "import argparse, json\n"
        "p = argparse.ArgumentParser(); p.add_argument('--json'); p.add_argument('--rows')\n"
        "a = p.parse_args()\n"
        "print('measuring', a.rows)\n"
        "json.dump({'rows': int(a.rows), 'trainer_samples_per_s': 5.0}, open(a.json, 'w'))\n"
    )
    out = tmp_path / "out"
    argv = ["bench", "train", "--benchmarks-dir", str(scripts), "--out", str(out), "--",
            "--rows", "7"]  # fmt: skip
    assert main(argv) == 0
    document = json.loads((out / "train.json").read_text())
    assert document["figures"] == {"rows": 7, "trainer_samples_per_s": 5.0}
    assert document["machine"] and document["date"]
    assert (out / "train.csv").read_text().splitlines() == ["rows,trainer_samples_per_s", "7,5.0"]
    assert "measuring 7" in (out / "train.log").read_text()
    assert "measuring 7" in capsys.readouterr().out


def test_each_scripts_help_example_uses_its_own_options() -> None:
    # The example in `conveyor bench kernels --help` was "-- --rows 100000", which
    # bench_ops.py refuses. Each script's --help, run side by side (they import torch).
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(benchmarks_dir() / SCRIPTS[name]), "--help"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in SCRIPTS
    }
    for name, proc in procs.items():
        usage, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, name
        flags = [word for word in EXAMPLES[name].split() if word.startswith("--")]
        assert flags and all(f"{flag} " in usage or f"{flag}]" in usage for flag in flags), name


def test_script_help_is_shown_and_nothing_run(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    scripts = tmp_path / "benchmarks"
    scripts.mkdir()
    (scripts / "ingest_bench.py").write_text(
        "import argparse\n"
        "p = argparse.ArgumentParser(); p.add_argument('--json'); p.add_argument('--rows')\n"
        "p.parse_args()\n"
    )
    out = tmp_path / "out"
    argv = ["bench", "ingest", "--benchmarks-dir", str(scripts), "--out", str(out), "--",
            "--help"]  # fmt: skip
    assert main(argv) == 0  # it printed the help, then "error: ... wrote no JSON"
    printed = capfd.readouterr()
    assert "usage: ingest_bench.py" in printed.out and "--rows ROWS" in printed.out
    assert printed.err == "" and not out.exists()


def test_server_down_mid_sweep_writes_the_points_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The server stops after the first point: the second cannot connect. That waited a fixed
    # 30 s, then ended with a one-line error and no files, losing the first point.
    srv = Server(write_double(tmp_path / "repo"), port=0, poll_interval=3600).start()
    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        if line.startswith("c=1 "):
            srv.stop(0)  # after the first point's line, before the second point starts

    out = tmp_path / "out"
    cfg = ServeBenchConfig(
        target=srv.address, model="double", concurrency=[1, 2], duration=0.3, warmup=0,
        out=str(out), connect_timeout=0.5, progress=False,
    )  # fmt: skip
    try:
        with pytest.raises(LoadError, match=r"point c=2: .*cannot connect .* within 0.5 s") as e:
            run(cfg, echo=echo)
    finally:
        srv.stop(0)
    assert "1 point(s) before it are written" in str(e.value)
    document = json.loads((out / "serve.json").read_text())
    assert [p["concurrency"] for p in document["points"]] == [1]
    assert document["points"][0]["requests"] > 0
    assert "cannot connect" in document["stopped_early"]
    assert (out / "serve.csv").is_file() and (out / "serve.png").is_file()
    # The flag reaches the configuration, with a stated default, and is checked.
    argv = ["bench", "serve", "--target", "127.0.0.1:1", "--model", "double",
            "--out", str(tmp_path / "o"), "--connect-timeout", "0"]  # fmt: skip
    assert main(argv) == 1
    assert "--connect-timeout must be > 0 seconds, got 0.0" in capsys.readouterr().err
    assert ServeBenchConfig(target="x:1", model="m").connect_timeout == 10.0


def test_server_side_figures_cover_the_measured_window_only(server: Server, tmp_path: Path) -> None:
    # The page's request counter is the milliseconds since it started, so server_requests is
    # the time between a point's two scrapes. They were taken before the client processes
    # started and after they ended, adding start-up, the 2 s warm-up and the drain to the
    # server's figures; now they are taken when the 0.3 s window starts and ends.
    import time

    t0 = time.perf_counter()

    class Clock(_QuietHandler):
        def do_GET(self) -> None:
            ms = 1e3 * (time.perf_counter() - t0)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(
                b"# TYPE conveyor_requests counter\n"
                b'conveyor_requests_total{model="double",version="1",code="OK"} %.3f\n' % ms
            )

    out = tmp_path / "out"
    with _http(Clock) as metrics:
        argv = [
            "bench", "serve", "--target", server.address, "--model", "double",
            "--concurrency", "1", "--duration", "0.3", "--warmup", "2", "--out", str(out),
            "--metrics-url", metrics, "--progress", "off",
        ]  # fmt: skip
        assert main(argv) == 0
    point = json.loads((out / "serve.json").read_text())["points"][0]
    assert 0 < point["server_requests"] < 1500  # about 300 ms; the warm-up alone is 2000


@pytest.mark.parametrize("under", [False, True])
def test_out_that_is_a_file_is_refused_before_the_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], under: bool
) -> None:
    # The whole sweep ran, then FileExistsError / NotADirectoryError lost every point.
    afile = tmp_path / "afile"
    afile.write_text("mine")
    out = afile / "sub" if under else afile
    # Port 1 on loopback: had the command contacted a server, the error would be another one.
    argv = ["bench", "serve", "--target", "127.0.0.1:1", "--model", "double", "--out", str(out)]
    assert main(argv) == 1
    where = f"is under {afile}, a file" if under else "is a file"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"conveyor: error: --out {out}: {where}, not a folder"
    ]
    assert afile.read_text() == "mine"
    argv = ["bench", "train", "--benchmarks-dir", str(tmp_path), "--out", str(out)]
    (tmp_path / "train_bench.py").write_text("raise SystemExit('must not run')\n")
    assert main(argv) == 1
    assert f"--out {out}: {where}, not a folder" in capsys.readouterr().err


def test_ingest_bench_refuses_rows_below_one(tmp_path: Path) -> None:
    # --rows 0 exited 0 with ratios of empty timings. The script's check runs before any
    # data is made; the runner reports the script's failure in one line.
    script = benchmarks_dir() / SCRIPTS["ingest"]
    done = subprocess.run(
        [sys.executable, str(script), "--rows", "0"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == ["ingest_bench.py: --rows must be >= 1, got 0"]
