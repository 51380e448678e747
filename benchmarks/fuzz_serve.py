"""A long fuzz run: hostile ModelInferRequest messages against a `conveyor serve` process.

    .venv/bin/python benchmarks/fuzz_serve.py [--examples 20000] [--seconds 600]

The messages come from tests/reliability/fuzz_requests.py (the CI test runs a few
hundred). Each is sent as raw bytes (unary; every tenth run as a stream of up to 8).
Checked: every call ends with OK or an allowed status and a message, within its
10 s deadline (no hang); the server process stays alive; its resident memory and
thread count at the end are compared with the start. Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [
    str(ROOT / "benchmarks"),
    str(ROOT / "tests" / "reliability"),
    str(ROOT / "tests" / "engine"),
]

from fuzz_requests import ALLOWED, request_bytes  # noqa: E402
from models import AFFINE_IO, VOCAB_IO, Affine, Vocab, write_model  # noqa: E402
from serve_bench import exit_on_sigterm, free_port, stop  # noqa: E402

from conveyor.engine.protos import grpc_service_pb2 as pb  # noqa: E402

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


def proc_status(pid: int) -> tuple[float, int]:
    """(resident MiB, threads) of a process."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--examples", type=int, default=20000, help="hypothesis examples (default 20000)"
    )
    parser.add_argument(
        "--seconds", type=float, default=600.0, help="stop after this long (default 600)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # Checked before the server starts: hypothesis rejects max_examples < 1 only when
    # the test is decorated, which would be after.
    if args.examples < 1:
        parser.error(f"--examples must be >= 1, got {args.examples}")
    if not args.seconds > 0:
        parser.error(f"--seconds must be > 0, got {args.seconds:g}")
    tmp = tempfile.TemporaryDirectory()
    try:
        repo = Path(tmp.name)
        write_model(repo, "affine", 1, Affine(), AFFINE_IO, max_batch_size=8)
        write_model(repo, "vocab", 1, Vocab(), VOCAB_IO, max_batch_size=8)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "serve", "--model-repository", str(repo),
             "--port", str(port), "--max-message-bytes", str(1 << 20), "--log-level", "error"],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        # From here every exit, an exception included, stops the server before its
        # model folder goes (else it outlives us, orphaned, on the caller's stdout).
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                return fuzz(server, channel, args)
        finally:
            stop(server)
    finally:
        tmp.cleanup()


def fuzz(server: subprocess.Popen[bytes], channel: grpc.Channel, args: argparse.Namespace) -> int:
    """The fuzz run against the started ``server``: prints the summary, returns the exit status."""
    grpc.channel_ready_future(channel).result(timeout=120)
    ready = channel.unary_unary(
        "/inference.GRPCInferenceService/ServerReady",
        request_serializer=pb.ServerReadyRequest.SerializeToString,
        response_deserializer=pb.ServerReadyResponse.FromString,
    )
    deadline = time.monotonic() + 120
    while not ready(pb.ServerReadyRequest(), timeout=5).ready and time.monotonic() < deadline:
        time.sleep(0.2)
    infer = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
    stream = channel.stream_stream(
        STREAM,
        request_serializer=None,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    codes: Counter = Counter()
    failures: list[str] = []
    start_status = proc_status(server.pid)
    started = time.monotonic()
    runs = 0

    def record(exc: grpc.RpcError) -> None:
        codes[exc.code().name] += 1
        if exc.code() not in ALLOWED or not exc.details():
            failures.append(f"{exc.code().name}: {exc.details()}")

    class TimeUp(Exception):
        """Ends the run at --seconds (generation only: nothing to shrink)."""

    @settings(
        max_examples=args.examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @seed(args.seed)
    @given(batch=st.lists(request_bytes(), min_size=1, max_size=8))
    def run(batch: list[bytes]) -> None:
        nonlocal runs
        runs += 1
        if time.monotonic() - started > args.seconds:
            raise TimeUp
        if runs % 10:
            try:
                infer(batch[0], timeout=10)
                codes["OK"] += 1
            except grpc.RpcError as exc:
                record(exc)
            return
        try:
            replies = list(stream(iter(batch), timeout=10))
            codes["STREAM_OK"] += 1
            if len(replies) != len(batch):
                failures.append(f"stream: {len(replies)} replies to {len(batch)} requests")
        except grpc.RpcError as exc:
            record(exc)

    with contextlib.suppress(TimeUp):
        run()
    elapsed = time.monotonic() - started
    alive = server.poll() is None
    end_status = proc_status(server.pid) if alive else (float("nan"), 0)
    summary = {
        "runs": runs,
        "seconds": round(elapsed, 1),
        "statuses": dict(codes),
        "failures": failures[:10],
        "failure_count": len(failures),
        "server_alive": alive,
        "rss_mib_start_end": [round(start_status[0], 1), round(end_status[0], 1)],
        "threads_start_end": [start_status[1], end_status[1]],
        "load_average": os.getloadavg(),
    }
    print(json.dumps(summary, indent=2))
    return 0 if alive and not failures else 1


if __name__ == "__main__":
    exit_on_sigterm()
    raise SystemExit(main())
