"""Soak: a `conveyor serve` process on loopback, driven at twice its measured capacity.

    .venv/bin/python benchmarks/soak.py [--duration 180] [--factor 2] [--max-queue-size 64]

Phases (one server process, RSS read from /proc/<pid>/status every second):

1. idle latency: one request at a time for a few seconds (p50 / p99);
2. capacity: closed loop with 32 concurrent callers (requests/s);
3. overload: open loop (Poisson arrivals) at ``factor`` x capacity for ``duration`` s;
   every outcome counted by status code; the client caps its own outstanding calls;
4. recovery: idle latency again once the load has stopped.

Every phase runs the project's load generator (conveyor.bench.loadgen), as
`conveyor bench serve` does.

Pass criteria (printed): every RSS sample after warm-up (the first 20% of the overload)
within 10% of the value at the end of warm-up; no status other than OK and
RESOURCE_EXHAUSTED; recovery p50 within 2x of the idle p50. Exit status 1 when one fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from serve_bench import exit_on_sigterm  # noqa: E402

from conveyor.bench.loadgen import LoadResult, LoadSpec, run_load  # noqa: E402
from conveyor.engine.protos import grpc_service_pb2 as pb  # noqa: E402
from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

FEATURES = 64


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 256), nn.ReLU(), nn.Linear(256, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def write_repo(root: Path) -> None:
    d = root / "mlp" / "1"
    d.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Mlp().eval()).save(str(d / "model.pt"))
    config = {
        "name": "mlp",
        "platform": "torchscript",
        "max_batch_size": 256,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [FEATURES]}],
        "outputs": [{"name": "p", "datatype": "FP32", "shape": [1]}],
    }
    (d / "config.json").write_text(json.dumps(config))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


REQUEST = pb.ModelInferRequest(
    model_name="mlp",
    inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, FEATURES])],
    raw_input_contents=[
        np.random.default_rng(0).normal(size=FEATURES).astype(np.float32).tobytes()
    ],
)


PAYLOADS = (REQUEST.SerializeToString(),)


def load(address: str, **point: Any) -> LoadResult:
    """One point of the project's load generator (conveyor.bench.loadgen) at the server."""
    spec = LoadSpec(target=address, payloads=PAYLOADS, **{"warmup": 0.0, **point})
    return run_load(spec, progress=False)


class RssSampler(threading.Thread):
    """Reads the server's resident memory once a second until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples = pid, []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(1.0):
            self.samples.append(rss_mib(self.pid))

    def stop(self) -> list[float]:
        self._stop_event.set()
        self.join()
        return self.samples


def report(args: argparse.Namespace, address: str, pid: int) -> int:
    idle = load(address, concurrency=1, duration=3.0, warmup=1.0).summary()
    cap = load(address, concurrency=32, duration=5.0).summary()["requests_s"]
    rate = cap * args.factor
    print(f"idle latency p50 {idle['p50_ms']:.2f} ms p99 {idle['p99_ms']:.2f} ms")
    print(f"capacity (32 closed-loop callers): {cap:.0f} req/s; overload at {rate:.0f} req/s")
    start_rss = rss_mib(pid)
    sampler = RssSampler(pid)
    sampler.start()
    over = load(
        address, rate=rate, duration=args.duration, timeout=5.0,
        max_outstanding=args.max_outstanding,
    )  # fmt: skip
    rss = sampler.stop()
    time.sleep(1.0)
    after = load(address, concurrency=1, duration=3.0).summary()
    codes = Counter({"OK": over.ok, **over.errors})
    # Arrivals past the client's own in-flight cap: never counted against the server.
    skipped = codes.pop("CLIENT_BACKLOG", 0)
    warm = rss[int(0.2 * len(rss)) :]  # warm-up: the first 20% of the overload
    base = warm[0] if warm else float("nan")
    # Stable = every sample after warm-up within 10% of the value at the end of warm-up.
    drift = max(abs(m - base) for m in warm) / base if warm else float("nan")
    total = sum(codes.values())
    print(f"overload {args.duration:.0f} s: {total} answered, {dict(codes)}")
    print(f"  calls the client skipped (its own {args.max_outstanding} in-flight cap): {skipped}")
    print(f"RSS MiB: start {start_rss:.1f}, after warm-up {base:.1f}, "
          f"min {min(warm):.1f}, max {max(warm):.1f}, end {rss[-1]:.1f} "
          f"(largest deviation from the warm-up value {drift:.1%})")  # fmt: skip
    print(f"recovery latency p50 {after['p50_ms']:.2f} ms p99 {after['p99_ms']:.2f} ms "
          f"({after['p50_ms'] / idle['p50_ms']:.2f}x idle p50)")  # fmt: skip
    bad = {c: n for c, n in codes.items() if c not in ("OK", "RESOURCE_EXHAUSTED")}
    checks = {
        "rss within 10% after warm-up": drift <= 0.10,
        "only OK / RESOURCE_EXHAUSTED": not bad,
        "overload answered some RESOURCE_EXHAUSTED": codes["RESOURCE_EXHAUSTED"] > 0,
        "recovery p50 within 2x idle": after["p50_ms"] <= 2 * idle["p50_ms"],
    }
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print(f"load average: {os.getloadavg()}")
    return 0 if all(checks.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--duration", type=float, default=180.0, help="overload seconds (default 180)"
    )
    parser.add_argument("--factor", type=float, default=2.0, help="x measured capacity (default 2)")
    parser.add_argument("--max-queue-size", type=int, default=64, help="default 64")
    parser.add_argument("--max-outstanding", type=int, default=2000, help="default 2000")
    args = parser.parse_args(argv)
    # Checked before anything starts: a bad value failed after the idle and capacity
    # phases, as a traceback that did not name the flag.
    for flag, value in (("--duration", args.duration), ("--factor", args.factor)):
        if not (math.isfinite(value) and value > 0):
            parser.error(f"{flag} must be a finite number > 0, got {value:g}")
    for flag, value in (
        ("--max-queue-size", args.max_queue_size),
        ("--max-outstanding", args.max_outstanding),
    ):
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        write_repo(repo)
        port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        server = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "serve", "--model-repository", str(repo),
             "--port", str(port), "--max-queue-size", str(args.max_queue_size),
             "--metrics-port", "-1", "--log-level", "error"],
            env=env,
        )  # fmt: skip
        try:
            address = f"127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            with grpc.insecure_channel(address) as ch:
                stub = pb_grpc.GRPCInferenceServiceStub(ch)
                while True:
                    try:
                        if stub.ModelReady(pb.ModelReadyRequest(name="mlp"), timeout=2).ready:
                            break
                    except grpc.RpcError:
                        pass
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("server did not start")
                    time.sleep(0.2)
            code = report(args, address, server.pid)
            assert server.poll() is None, "server died"
            return code
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    exit_on_sigterm()
    raise SystemExit(main())
