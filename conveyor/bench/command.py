"""``conveyor bench``: ``serve`` drives any OIP v2 gRPC server; ``ingest``, ``train`` and
``kernels`` run the matching script under ``benchmarks/``. All write JSON and CSV into ``--out``.
"""

from __future__ import annotations

import argparse
import math

from conveyor.errors import ConveyorError

# An example of the arguments each script takes after ``--``, for its --help (the scripts'
# own options: tests/conveyor/bench checks them against each script's --help).
EXAMPLES: dict[str, str] = {
    "ingest": "--rows 100000",
    "train": "--rows 50000 --rounds 1",
    "kernels": "--ops histogram --no-compile",
}
HELP_FLAGS = ("-h", "--help")


def _numbers(kind: type, name: str):
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected comma-separated numbers") from None
        # nan and inf parse as floats; an infinite rate would send without ever yielding.
        if not values or any(not (math.isfinite(v) and v > 0) for v in values):
            raise argparse.ArgumentTypeError(
                f"{name}: expected finite positive numbers, got {text!r}"
            )
        return values

    return parse


def _serve(args: argparse.Namespace) -> int:
    from conveyor.bench.serve import ServeBenchConfig, run

    if ":" not in args.target:
        raise ConveyorError(f"--target: expected HOST:PORT, got {args.target!r}")
    cfg = ServeBenchConfig(
        target=args.target,
        model=args.model,
        version=args.model_version,
        concurrency=args.concurrency or [],
        rates=args.rate or [],
        rows=args.rows,
        duration=args.duration,
        warmup=args.warmup,
        procs=args.procs,
        connections=args.connections,
        data=args.data,
        metrics_url=args.metrics_url,
        out=args.out,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        token=args.token,
        seed=args.seed,
        progress={"auto": None, "on": True, "off": False}[args.progress],
    )
    if not cfg.concurrency and not cfg.rates:
        cfg.concurrency = [1, 8, 64, 256]
    run(cfg)
    return 0


def _script(name: str):
    def run(args: argparse.Namespace) -> int:
        from conveyor.bench.scripts import run_script, show_help

        extra = list(args.script_args or [])
        if extra and extra[0] == "--":
            extra = extra[1:]
        if any(a in HELP_FLAGS for a in extra):  # the script's help, not a benchmark run
            return show_help(name, extra, args.benchmarks_dir)
        run_script(name, args.out, extra, args.benchmarks_dir)
        return 0

    return run


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from conveyor.cli import add_command

    group = add_command(
        subparsers, "bench", help="benchmarks: serving load, ingest, train, kernels"
    )
    sub = group.add_subparsers(title="bench commands", metavar="COMMAND", required=True)

    p = add_command(
        sub,
        "serve",
        help="load-test a model on any OIP v2 gRPC server (closed and open loop)",
        parents=[common],
        run=_serve,
        path=("bench",),
    )
    p.add_argument("--target", required=True, help="HOST:PORT of the gRPC server")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--model-version", default="", help="default: the server's default version")
    p.add_argument(
        "--concurrency",
        type=_numbers(int, "--concurrency"),
        help="closed-loop points, requests in flight, e.g. 1,8,64,256 "
        "(the default when --rate is not given either)",
    )
    p.add_argument(
        "--rate",
        type=_numbers(float, "--rate"),
        help="open-loop points, requests/s with Poisson arrivals, e.g. 500,1000,2000",
    )
    p.add_argument("--rows", type=int, default=1, help="rows per request (default 1)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per point (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before each (default 2)")
    p.add_argument("--procs", type=int, default=1, help="client processes (default 1)")
    p.add_argument(
        "--connections",
        type=int,
        default=1,
        help="gRPC connections per client process (default 1); a server of N processes on one "
        "port (conveyor serve --workers N) needs at least N in all to use them all",
    )
    p.add_argument(
        "--data",
        default=None,
        help="Parquet file or folder of inputs (default: random inputs); rows that fail the "
        "model's input checks (a null category, a value its datatype cannot hold) are left "
        "out, and their count and the first one's file and row printed",
    )
    p.add_argument(
        "--metrics-url",
        default=None,
        help="the server's Prometheus page (URL or HOST:PORT): report server-side queue and "
        "compute time and batch size per point",
    )
    p.add_argument("--out", default="bench-results", help="output folder (default bench-results)")
    p.add_argument(
        "--timeout", type=float, default=10.0, help="per-request deadline, s (default 10)"
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds each point waits for the server to accept a connection (default 10); "
        "a server that went down ends the sweep after this long, the points before written",
    )
    p.add_argument("--token", default=None, help="bearer token, for servers that require one")
    p.add_argument("--seed", type=int, default=0, help="random inputs and arrivals (default 0)")
    p.add_argument(
        "--progress", choices=("auto", "on", "off"), default="auto", help="default: on a terminal"
    )

    for name, what in (
        ("ingest", "benchmarks/ingest_bench.py: Parquet to torch batches vs pyarrow and pandas"),
        ("train", "benchmarks/train_bench.py: trainer samples/s vs a hand-written loop and DDP"),
        ("kernels", "benchmarks/kernels/bench_ops.py: conveyor's ops vs torch"),
    ):
        s = add_command(sub, name, help=f"run {what}", parents=[common], run=_script(name),
                        path=("bench",))  # fmt: skip
        s.add_argument(
            "--out", default="bench-results", help="output folder (default bench-results)"
        )
        s.add_argument(
            "--benchmarks-dir", default=None, help="default: benchmarks/ of the source tree"
        )
        s.add_argument(
            "script_args",
            nargs=argparse.REMAINDER,
            help=f"arguments after -- go to the script (e.g. -- {EXAMPLES[name]}; "
            "-- --help shows its options)",
        )
