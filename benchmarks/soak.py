"""Soak: a `conveyor serve` process on loopback, driven at twice its measured capacity.

    .venv/bin/python benchmarks/soak.py [--duration 180] [--factor 2] [--max-queue-size 64]

Phases (one server process, RSS read from /proc/<pid>/status every second):

1. idle latency: one request at a time for a few seconds (p50 / p99);
2. capacity: closed loop with 32 concurrent callers (requests/s);
3. overload: open loop at ``factor`` x capacity for ``duration`` s; every outcome
   counted by status code; the client caps its own outstanding calls (bounded);
4. recovery: idle latency again once the load has stopped.

Pass criteria (printed): every RSS sample after warm-up (the first 20% of the overload)
within 10% of the value at the end of warm-up; no status other than OK and
RESOURCE_EXHAUSTED; recovery p50 within 2x of the idle p50. Exit status 1 when one fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


async def latency(stub: pb_grpc.GRPCInferenceServiceStub, seconds: float) -> list[float]:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        await stub.ModelInfer(REQUEST, timeout=10)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def capacity(stub: pb_grpc.GRPCInferenceServiceStub, seconds: float, callers: int) -> float:
    done = 0
    end = time.monotonic() + seconds

    async def caller() -> None:
        nonlocal done
        while time.monotonic() < end:
            await stub.ModelInfer(REQUEST, timeout=10)
            done += 1

    await asyncio.gather(*(caller() for _ in range(callers)))
    return done / seconds


async def overload(
    stub: pb_grpc.GRPCInferenceServiceStub,
    rate: float,
    seconds: float,
    pid: int,
    max_outstanding: int,
) -> tuple[Counter, list[tuple[float, float]], int]:
    codes: Counter = Counter()
    details: dict[str, str] = {}
    rss: list[tuple[float, float]] = []
    outstanding = 0
    skipped = 0
    start = time.monotonic()

    async def one() -> None:
        nonlocal outstanding
        try:
            await stub.ModelInfer(REQUEST, timeout=5)
            codes["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            codes[exc.code().name] += 1
            details.setdefault(exc.code().name, exc.details())
        finally:
            outstanding -= 1

    async def sampler() -> None:
        while time.monotonic() - start < seconds:
            rss.append((time.monotonic() - start, rss_mib(pid)))
            await asyncio.sleep(1.0)

    sampling = asyncio.ensure_future(sampler())
    tasks: set[asyncio.Task] = set()
    sent = 0
    while (now := time.monotonic() - start) < seconds:
        due = int(now * rate) - sent
        for _ in range(max(due, 0)):
            sent += 1
            if outstanding >= max_outstanding:
                skipped += 1  # the client's own bound: never counted against the server
                continue
            outstanding += 1
            task = asyncio.ensure_future(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(0.002)
    await asyncio.gather(*tasks, return_exceptions=True)
    await sampling
    for code, text in details.items():
        print(f"  first {code}: {text}")
    return codes, rss, skipped


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def main_async(args: argparse.Namespace, address: str, pid: int) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await latency(stub, 1.0)  # warm-up
        idle = await latency(stub, 3.0)
        cap = await capacity(stub, 5.0, 32)
        rate = cap * args.factor
        print(f"idle latency p50 {pct(idle, 50):.2f} ms p99 {pct(idle, 99):.2f} ms")
        print(f"capacity (32 closed-loop callers): {cap:.0f} req/s; overload at {rate:.0f} req/s")
        codes, rss, skipped = await overload(stub, rate, args.duration, pid, args.max_outstanding)
        await asyncio.sleep(1.0)
        after = await latency(stub, 3.0)
    warm = [m for t, m in rss if t >= 0.2 * args.duration]
    base = warm[0] if warm else float("nan")
    # Stable = every sample after warm-up within 10% of the value at the end of warm-up.
    drift = max(abs(m - base) for m in warm) / base if warm else float("nan")
    total = sum(codes.values())
    print(f"overload {args.duration:.0f} s: {total} answered, {dict(codes)}")
    print(f"  calls the client skipped (its own {args.max_outstanding} in-flight cap): {skipped}")
    print(f"RSS MiB: start {rss[0][1]:.1f}, after warm-up {base:.1f}, "
          f"min {min(warm):.1f}, max {max(warm):.1f}, end {rss[-1][1]:.1f} "
          f"(largest deviation from the warm-up value {drift:.1%})")  # fmt: skip
    print(f"recovery latency p50 {pct(after, 50):.2f} ms p99 {pct(after, 99):.2f} ms "
          f"({pct(after, 50) / pct(idle, 50):.2f}x idle p50)")  # fmt: skip
    bad = {c: n for c, n in codes.items() if c not in ("OK", "RESOURCE_EXHAUSTED")}
    checks = {
        "rss within 10% after warm-up": drift <= 0.10,
        "only OK / RESOURCE_EXHAUSTED": not bad,
        "overload answered some RESOURCE_EXHAUSTED": codes["RESOURCE_EXHAUSTED"] > 0,
        "recovery p50 within 2x idle": pct(after, 50) <= 2 * pct(idle, 50),
    }
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print(f"load average: {os.getloadavg()}")
    return 0 if all(checks.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="overload seconds")
    parser.add_argument("--factor", type=float, default=2.0, help="x measured capacity")
    parser.add_argument("--max-queue-size", type=int, default=64)
    parser.add_argument("--max-outstanding", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        write_repo(repo)
        port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        server = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "serve", "--model-repository", str(repo),
             "--port", str(port), "--max-queue-size", str(args.max_queue_size),
             "--log-level", "error"],
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
            code = asyncio.run(main_async(args, address, server.pid))
            assert server.poll() is None, "server died"
            return code
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    raise SystemExit(main())
