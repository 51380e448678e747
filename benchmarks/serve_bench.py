# ruff: noqa: E501  (table rows and report lines read better unwrapped)
"""Serving benchmark: conveyor against a bare grpc.aio ceiling, the raw forward rate and MLServer.

Everything is measured in one run, on this machine, with one load generator
(conveyor.bench.loadgen, as ``conveyor bench serve`` uses: separate client
processes speaking OIP ModelInfer over gRPC, pre-serialised requests, grpc.aio
on uvloop) against servers in their own processes:

* ``bare``: a grpc.aio server answering every ModelInfer with a constant
  (no parsing, no batching, no model): the ceiling for this client and payload;
* ``conveyor``: ``conveyor serve`` (1 process, and 2 processes on SO_REUSEPORT),
  with ``--max-queue-delay-microseconds 2000`` (``--conveyor-delay``): the
  setting for a saturated server; the default, 250, favours latency;
  ``conveyor-mlp``: one process, the model's config asking for the
  ``conveyor_mlp`` execution accelerator (the same weights through
  ``conveyor.kernels.PackedMLP`` instead of the TorchScript interpreter);
  ``conveyor-pin``: conveyor-mlp with ``--cpu-affinity`` on this machine's last
  CPU (the server's Python threads on one core, gRPC's network threads and the
  load generator free);
* ``mlserver``: Seldon MLServer with a small custom runtime for the same
  TorchScript model and adaptive batching (its own venv, see --mlserver-venv),
  inference in-process (``parallel_workers: 0``, its fastest here), and
  ``mlserver-default`` with its default one inference worker process;
* ``forward``: the model's batched forward in one process (batch 64 and 512),
  as TorchScript and through ``PackedMLP`` (``forward-mlp``).

The model is the trainer's default shape: 64 numeric features, MLP 256-256,
one sigmoid output. Usage::

    .venv/bin/python benchmarks/serve_bench.py [--duration 5] [--skip-mlserver]

Prints a table (rows/s, requests/s, p50/p90/p99/p99.9 latency, errors, and the
server's CPU time per request over the same window, a steadier figure than
requests/s on a shared machine) and the ratios the targets are stated in;
``--json FILE`` saves the raw numbers. ``--points 64x1,8x64`` runs only those
concurrency x rows points; ``--servers`` picks the servers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FEATURES = 64
METHOD = "/inference.GRPCInferenceService/ModelInfer"

# (concurrency, rows per request) points each server is measured at.
POINTS = [(1, 1), (8, 1), (64, 1), (256, 1), (8, 64)]  # bare and every conveyor-* server
MLSERVER_POINTS = {"mlserver": [(1, 1), (64, 1), (8, 64)], "mlserver-default": [(64, 1)]}
CONVEYOR_SERVERS = ("conveyor-w1", "conveyor-w2", "conveyor-mlp", "conveyor-pin")
# --servers names; "mlserver" runs both MLServer set-ups.
SERVERS = ("bare", *CONVEYOR_SERVERS, "mlserver")


# -- the model ---------------------------------------------------------------------------------


def write_model(repo: Path, max_batch: int = 512, accelerated: bool = False) -> Path:
    """The trainer's default model (64 -> 256 -> 256 -> 1, sigmoid) as TorchScript;
    ``accelerated``: its config asks for the ``conveyor_mlp`` execution accelerator."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(FEATURES, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 1),
        nn.Sigmoid(),
    ).eval()
    directory = repo / "mlp" / "1"
    directory.mkdir(parents=True)
    torch.jit.script(mlp).save(str(directory / "model.pt"))
    config = {
        "name": "mlp",
        "platform": "torchscript",
        "max_batch_size": max_batch,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [FEATURES]}],
        "outputs": [{"name": "probability", "datatype": "FP32", "shape": [1]}],
        "dynamic_batching": {"max_queue_size": 8192},
    }
    if accelerated:
        config["optimization"] = {
            "execution_accelerators": {"cpu_execution_accelerator": [{"name": "conveyor_mlp"}]}
        }
    (directory / "config.json").write_text(json.dumps(config))
    return directory / "model.pt"


def forward_rate(
    model_path: Path, batch: int, seconds: float, packed: bool = False
) -> dict[str, float]:
    """Rows/s of the scripted model's forward at ``batch`` in this process, with one
    torch thread like each server process; the best of three windows (shared machine).
    ``packed``: the same weights through the engine's ``conveyor_mlp`` accelerator.
    ``server_cpu_us``: this thread's CPU microseconds per call over that best window
    (the forward runs in the calling thread), the figure the servers' rows report."""
    import torch

    torch.set_num_threads(1)
    model = torch.jit.load(str(model_path))
    x = torch.randn(batch, FEATURES)
    if packed:
        from conveyor.engine.accelerators import mlp_layers
        from conveyor.kernels import PackedMLP

        run = PackedMLP(mlp_layers(model)).run
        xn = x.numpy()
        model = lambda _: run(xn)  # noqa: E731  (same loop below for both)
    best, best_cpu_us = 0.0, 0.0
    with torch.inference_mode():
        for _ in range(20):
            model(x)
        for _ in range(3):
            n, t0, cpu0 = 0, time.perf_counter(), time.thread_time()
            while time.perf_counter() - t0 < seconds / 3:
                model(x)
                n += 1
            rate = n / (time.perf_counter() - t0)
            if rate > best:
                best, best_cpu_us = rate, (time.thread_time() - cpu0) / n * 1e6
    return {"rows_s": best * batch, "requests_s": best, "server_cpu_us": best_cpu_us}


def request_bytes(rows: int) -> bytes:
    from conveyor.engine.protos import grpc_service_pb2 as pb

    x = np.random.default_rng(0).standard_normal((rows, FEATURES)).astype(np.float32)
    return pb.ModelInferRequest(
        model_name="mlp",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=x.shape)],
        raw_input_contents=[x.tobytes()],
    ).SerializeToString()


# -- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare_server(port: int) -> None:
    """A grpc.aio server that answers ModelInfer with a constant and ServerReady with true."""
    import grpc
    import uvloop

    from conveyor.engine.protos import grpc_service_pb2 as pb

    answer = pb.ModelInferResponse(
        model_name="mlp",
        model_version="1",
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(
                name="probability", datatype="FP32", shape=[1, 1]
            )
        ],
        raw_output_contents=[np.zeros(1, np.float32).tobytes()],
    ).SerializeToString()
    ready = pb.ServerReadyResponse(ready=True).SerializeToString()

    async def infer(request: bytes, context: Any) -> bytes:
        return answer

    async def is_ready(request: bytes, context: Any) -> bytes:
        return ready

    class Handler(grpc.GenericRpcHandler):
        def service(self, details: Any) -> Any:
            if details.method == METHOD:
                return grpc.unary_unary_rpc_method_handler(infer)
            if details.method.endswith("/ServerReady"):
                return grpc.unary_unary_rpc_method_handler(is_ready)
            return None

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((Handler(),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


def wait_ready(port: int, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    """Until the server on ``port`` is ready; RuntimeError after ``timeout`` seconds, or at
    once when ``proc`` (the server) has exited: a server refusing its flags is not waited
    out for two minutes."""
    import grpc

    from conveyor.engine.protos import grpc_service_pb2 as pb
    from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server on port {port} exited with code {proc.returncode}")
            try:
                if stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"server on port {port} did not become ready")


def mlserver_dir(work: Path, model_path: Path, port: int, parallel_workers: int) -> Path:
    d = work / f"mlserver-pw{parallel_workers}"
    d.mkdir()
    (d / "settings.json").write_text(
        json.dumps(
            {
                "grpc_port": port,
                "http_port": free_port(),
                "metrics_port": free_port(),
                "host": "127.0.0.1",
                "debug": False,
                # 0: inference in the server process (fastest here); 1: MLServer's
                # default, one inference worker process.
                "parallel_workers": parallel_workers,
            }
        )
    )
    (d / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "mlp",
                "implementation": "mlserver_runtime.TorchScriptRuntime",
                "parameters": {"uri": str(model_path)},
                "max_batch_size": 64,
                "max_batch_time": 0.001,
            }
        )
    )
    return d


# -- server CPU -----------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (Linux /proc; 0 elsewhere)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK)
    tree, total, grew = {pid}, 0.0, True
    while grew:
        more = {p for p, (ppid, _) in stats.items() if ppid in tree} - tree
        grew = bool(more)
        tree |= more
    for p in tree:
        total += stats.get(p, (0, 0.0))[1]
    return total


class CpuSampler:
    """Samples a server's CPU seconds every ``period`` s, to read them over a load window."""

    def __init__(self, pid: int, period: float = 0.1) -> None:
        self.samples: list[tuple[float, float]] = []
        self._pid, self._period = pid, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.samples.append((time.perf_counter(), tree_cpu_seconds(self._pid)))
            if self._stop.wait(self._period):
                # One more sample after the load ended, so the window's end is covered.
                self.samples.append((time.perf_counter(), tree_cpu_seconds(self._pid)))
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, start: float, end: float) -> float | None:
        """CPU seconds used from ``start`` to ``end`` (perf_counter times), interpolated."""

        def at(t: float) -> float | None:
            for (t0, c0), (t1, c1) in zip(self.samples, self.samples[1:], strict=False):
                if t0 <= t <= t1:
                    return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1e-9)
            return None

        a, b = at(start), at(end)
        return None if a is None or b is None else b - a


# -- load ---------------------------------------------------------------------------------------


def run_load(
    port: int,
    rows: int,
    concurrency: int,
    duration: float,
    warmup: float = 1.0,
    server_pid: int | None = None,
    procs: int = 1,
    connections: int = 1,
    metrics: str | None = None,
) -> dict[str, Any]:
    """``concurrency`` requests in flight from conveyor's load generator
    (:mod:`conveyor.bench.loadgen`) over ``procs`` client processes (default 1: on these
    2 shared cores one process drives every point here with less CPU per request than two,
    so it leaves more of the machine to the server; see benchmarks/README.md), each with
    ``connections`` gRPC connections. With ``server_pid``, also the server's CPU microseconds per answered request over the
    measurement window (``server_cpu_us``); with ``metrics`` (a conveyor /metrics URL), the
    mean rows per executed batch over that window (``batch_rows``)."""
    from conveyor.bench import prom
    from conveyor.bench.loadgen import LoadSpec
    from conveyor.bench.loadgen import run_load as drive

    spec = LoadSpec(
        target=f"127.0.0.1:{port}",
        payloads=(request_bytes(rows),),
        rows=rows,
        concurrency=concurrency,
        duration=duration,
        warmup=warmup,
        procs=min(procs, concurrency),
        connections=min(connections, concurrency),
        timeout=30,
    )
    sampler = None if server_pid is None else CpuSampler(server_pid)
    # Read at the window's edges, so the batch sizes leave out the warm-up's.
    scrapes = None if metrics is None else prom.WindowScrapes(metrics, duration)
    try:
        result = drive(spec, progress=False, on_window=scrapes)
    finally:
        if sampler is not None:
            sampler.stop()
    s = result.summary()
    keep = ("requests_s", "rows_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "errors")
    server_cpu = None
    if sampler is not None and s["requests"]:
        start = result.started + warmup
        used = sampler.between(start, start + duration)
        server_cpu = None if used is None else 1e6 * used / s["requests"]
    return {
        "rows": rows,
        "concurrency": concurrency,
        **{k: s[k] for k in keep},
        "error_codes": s["error_codes"],
        "client_cpu_cores": s["client_cpu_cores"],
        "client_cpu_us": s["client_cpu_us_per_request"],
        "server_cpu_us": server_cpu,
        "batch_rows": (scrapes.server_side("mlp") or {}).get("server_batch_size")
        if scrapes
        else None,
    }


# -- orchestration -------------------------------------------------------------------------------


def start(cmd: list[str], port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a server and wait until it is ready. It fails with SystemExit naming the
    command and its last stderr lines; on any exit from here (SIGTERM's SystemExit
    included, see exit_on_sigterm) the server is killed, not left orphaned."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(port, proc=proc)
    except RuntimeError as exc:
        proc.kill()
        err = proc.communicate()[1].decode(errors="replace") if proc.stderr else ""
        raise SystemExit(
            f"{' '.join(cmd[:3])} ... failed to start ({exc}):\n{err[-3000:]}"
        ) from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def exit_on_sigterm() -> None:
    """SIGTERM (``timeout``, a CI runner's cancel) as an exit, so a script's ``finally``
    blocks stop the servers it started instead of leaving them orphaned."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point (default 5)")
    parser.add_argument("--skip-mlserver", action="store_true")
    parser.add_argument(
        "--mlserver-venv",
        default=str(HERE / ".mlserver-venv"),
        help="venv with mlserver installed (default benchmarks/.mlserver-venv)",
    )
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated subset of {','.join(SERVERS)} to run (default: all)",
    )
    parser.add_argument(
        "--points",
        default=None,
        help="comma-separated CONCURRENCYxROWS points to run, e.g. 64x1,8x64, out of "
        f"{_points_text(POINTS)} (default: all)",
    )
    parser.add_argument(
        "--conveyor-delay",
        type=int,
        default=2000,
        help="conveyor's --max-queue-delay-microseconds (default 2000, its throughput "
        "setting; the server's own default, 250, favours latency below saturation)",
    )
    parser.add_argument(
        "--client-procs",
        type=int,
        default=1,
        help="load generator processes per point (default 1: the lightest client on 2 "
        "shared cores; earlier runs used 2 at concurrency > 1, see benchmarks/README.md)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=2,
        help="gRPC connections per load generator process (default 2: conveyor-w2's two "
        "processes share the port by connection, so one connection measured one process)",
    )
    parser.add_argument("--bare-server", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client_procs < 1:
        parser.error("--client-procs must be >= 1")
    if args.connections < 1:
        parser.error("--connections must be >= 1")
    if not (math.isfinite(args.duration) and args.duration > 0):
        parser.error(f"--duration must be a finite number of seconds > 0, got {args.duration:g}")
    if args.conveyor_delay < 0:
        parser.error(f"--conveyor-delay must be >= 0 microseconds, got {args.conveyor_delay}")
    chosen = set(filter(None, args.servers.split(",")))
    unknown = sorted(chosen - set(SERVERS))
    if unknown or not chosen:
        parser.error(
            f"--servers: unknown server(s) {','.join(unknown) or repr(args.servers)}; "
            f"choose from {','.join(SERVERS)}"
        )
    if args.skip_mlserver and chosen == {"mlserver"}:
        parser.error("--servers mlserver with --skip-mlserver: nothing left to measure")
    wanted = None
    if args.points:
        # A point none of the chosen servers runs would measure nothing.
        runnable = list(POINTS) if chosen - {"mlserver"} else []
        if "mlserver" in chosen:
            runnable += [p for points in MLSERVER_POINTS.values() for p in points]
        runnable = list(dict.fromkeys(runnable))
        wanted = set()
        for text in args.points.split(","):
            try:
                concurrency, rows = (int(v) for v in text.split("x"))
            except ValueError:
                concurrency = rows = None
            if (concurrency, rows) not in runnable:
                parser.error(
                    f"--points: {text!r} is not a point the chosen servers run; "
                    f"choose from {_points_text(runnable)}"
                )
            wanted.add((concurrency, rows))
    # Checked now: the file is written after the whole run.
    if args.json and not Path(args.json).resolve().parent.is_dir():
        parser.error(
            f"--json {args.json}: folder {Path(args.json).resolve().parent} does not exist"
        )
    if args.json and Path(args.json).is_dir():
        parser.error(f"--json {args.json}: is a folder, not a file")
    if args.bare_server is not None:
        bare_server(args.bare_server)
        return 0

    d = args.duration
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_path = write_model(work / "repo")
        write_model(work / "repo-mlp", accelerated=True)
        for name, packed in (("forward", False), ("forward-mlp", True)):
            for batch in (64, 512):
                rate = forward_rate(model_path, batch, seconds=min(d, 3.0), packed=packed)
                results.append({"server": name, "rows": batch, "concurrency": 0, **rate})
                print(
                    f"{name} batch {batch}: {rate['rows_s']:,.0f} rows/s, "
                    f"CPU {rate['server_cpu_us']:.0f} us/call",
                    flush=True,
                )

        def measure(
            name: str,
            points: list[tuple[int, int]],
            port: int,
            pid: int,
            metrics: str | None = None,
        ) -> None:
            for concurrency, rows in points:
                if wanted is not None and (concurrency, rows) not in wanted:
                    continue
                r = run_load(
                    port, rows, concurrency, d, server_pid=pid, procs=args.client_procs,
                    connections=args.connections, metrics=metrics,
                )  # fmt: skip
                results.append({"server": name, **r})
                print(
                    f"{name:<12} c={concurrency:<4} rows={rows:<3} {r['requests_s']:>8,.0f} req/s "
                    f"{r['rows_s']:>9,.0f} rows/s p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms "
                    f"errors {r['errors']} server CPU {_us(r['server_cpu_us'])} us/req"
                    + (f" batch {r['batch_rows']:.0f} rows" if r.get("batch_rows") else ""),
                    flush=True,
                )

        if "bare" in chosen:
            port = free_port()
            proc = start([sys.executable, __file__, "--bare-server", str(port)], port)
            try:
                measure("bare", POINTS, port, proc.pid)
            finally:
                stop(proc)

        # conveyor-pin: the server's Python threads on one core (engine/cpu_affinity.py).
        last_cpu = str(max(os.sched_getaffinity(0)))
        for name, workers, repo, extra in (
            ("conveyor-w1", 1, work / "repo", []),
            ("conveyor-w2", 2, work / "repo", []),
            ("conveyor-mlp", 1, work / "repo-mlp", []),
            ("conveyor-pin", 1, work / "repo-mlp", ["--cpu-affinity", last_cpu]),
        ):
            if name not in chosen:
                continue
            port, metrics_port = free_port(), free_port()
            # One torch thread per process: on 2 shared cores, OpenMP threads
            # spinning against the event loop and the clients cost more than they give.
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            proc = start(
                [
                    sys.executable, "-m", "conveyor", "serve",
                    "--model-repository", str(repo),
                    "--port", str(port), "--workers", str(workers), "--log-level", "warning",
                    "--metrics-port", str(metrics_port),
                    "--max-queue-delay-microseconds", str(args.conveyor_delay),
                    *extra,
                ],
                port,
                env,
            )  # fmt: skip
            try:
                metrics = f"http://127.0.0.1:{metrics_port}/metrics"
                measure(name, POINTS, port, proc.pid, metrics)
            finally:
                stop(proc)

        venv = Path(args.mlserver_venv)
        if "mlserver" not in chosen or args.skip_mlserver:
            pass
        elif (venv / "bin" / "mlserver").exists():
            # torch comes from conveyor's venv, through a .pth file: its entries go
            # after MLServer's own site-packages, so MLServer keeps its own pins
            # (PYTHONPATH would put conveyor's grpcio/protobuf/uvloop first).
            ours = next((ROOT / ".venv" / "lib").glob("python*/site-packages"))
            theirs = next((venv / "lib").glob("python*/site-packages"))
            (theirs / "zz_conveyor_torch.pth").write_text(f"{ours}\n")
            env = {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}
            for workers, name in ((0, "mlserver"), (1, "mlserver-default")):
                points = MLSERVER_POINTS[name]
                port = free_port()
                folder = mlserver_dir(work, model_path, port, workers)
                proc = start([str(venv / "bin" / "mlserver"), "start", str(folder)], port, env)
                try:
                    measure(name, points, port, proc.pid)
                finally:
                    stop(proc)
        else:
            print(f"MLServer skipped: no {venv}/bin/mlserver", flush=True)

    print()
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _points_text(points: list[tuple[int, int]]) -> str:
    return ",".join(f"{c}x{rows}" for c, rows in points)


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| server | concurrency | rows/req | requests/s | rows/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | server CPU us/req | client CPU us/req |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if r["server"] in ("forward", "forward-mlp"):
            label = "forward (in-process)" if r["server"] == "forward" else "forward (conveyor_mlp)"
            lines.append(
                f"| {label} | - | {r['rows']} | {r['requests_s']:,.0f} | {r['rows_s']:,.0f} | - | - | - | - | - | {_us(r.get('server_cpu_us'))} | - |"
            )
            continue
        lines.append(
            f"| {r['server']} | {r['concurrency']} | {r['rows']} | {r['requests_s']:,.0f} | {r['rows_s']:,.0f} "
            f"| {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['p999_ms']:.2f} | {r['errors']} "
            f"| {_us(r.get('server_cpu_us'))} | {_us(r.get('client_cpu_us'))} |"
        )

    def find(server: str, c: int, rows: int) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in results
                if r["server"] == server and r["concurrency"] == c and r["rows"] == rows
            ),
            None,
        )

    lines.append("")
    bare = find("bare", 64, 1)
    fwd64 = next((r for r in results if r["server"] == "forward" and r["rows"] == 64), None)
    mls = find("mlserver", 64, 1)
    mls_default = find("mlserver-default", 64, 1)
    mlp64 = next((r for r in results if r["server"] == "forward-mlp" and r["rows"] == 64), None)
    for w in ("conveyor-w1", "conveyor-w2", "conveyor-mlp", "conveyor-pin"):
        c64 = find(w, 64, 1)
        c1 = find(w, 1, 1)
        big = find(w, 8, 64)
        if c64 and bare:
            lines.append(
                f"- {w}: c=64 requests/s = {c64['requests_s'] / bare['requests_s']:.2f} x bare (target >= 0.8)"
            )
        if c64 and mls:
            lines.append(
                f"- {w}: c=64 rows/s = {c64['rows_s'] / max(mls['rows_s'], 1e-9):.1f} x MLServer (target >= 3); "
                f"p99 {c64['p99_ms']:.2f} vs {mls['p99_ms']:.2f} ms"
            )
        if c64 and mls_default:
            lines.append(
                f"- {w}: c=64 rows/s = {c64['rows_s'] / max(mls_default['rows_s'], 1e-9):.1f} x MLServer with default parallel_workers; "
                f"p99 {c64['p99_ms']:.2f} vs {mls_default['p99_ms']:.2f} ms"
            )
        if big and fwd64:
            lines.append(
                f"- {w}: c=8 x 64 rows rows/s = {big['rows_s'] / fwd64['rows_s']:.2f} x forward@64 (target >= 0.5)"
            )
        if big and mlp64 and w in ("conveyor-mlp", "conveyor-pin"):
            lines.append(
                f"- {w}: c=8 x 64 rows rows/s = {big['rows_s'] / mlp64['rows_s']:.2f} x its own forward@64 (conveyor_mlp)"
            )
        if c1:
            lines.append(f"- {w}: c=1 p50 = {c1['p50_ms']:.2f} ms (target < 1 ms)")
        for point, base in ((c64, bare), (big, find("bare", 8, 64))):
            if point and base and point.get("server_cpu_us") and base.get("server_cpu_us"):
                lines.append(
                    f"- {w}: c={point['concurrency']} x {point['rows']} rows: server CPU "
                    f"{point['server_cpu_us']:.0f} us/request vs bare {base['server_cpu_us']:.0f}"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    exit_on_sigterm()
    raise SystemExit(main())
