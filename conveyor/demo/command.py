"""``conveyor demo``: the main job, end to end, on an embedded default with no external service.

Each step runs the same ``conveyor`` subcommand a user would type (printed before it runs), on
a generated card-fraud dataset:

1. generate about 1,000,000 transactions as hive-partitioned zstd Parquet, with a few
   deliberately bad rows (NaN/inf amounts, missing categories);
2. ``conveyor ingest profile``: infer the spec, validate every row (the bad ones are
   quarantined and counted, not lost) and write reference statistics;
3. ``conveyor train --nproc N``: DDP on N local processes with train and validation metrics
   side by side, exporting a new version to a local model repository;
4. start the inference server in-process on the exported model (with its Prometheus page
   when the engine has one);
5. drive traffic with the bench load generator: first fresh in-distribution transactions,
   then a drifted phase (larger amounts, a riskier merchant mix), showing throughput and
   latency percentiles per phase and the drift alert (:mod:`conveyor.demo.traffic`);
6. a summary: rows accounted for, model quality, rows/s and p50/p99 per phase, the features
   that drifted, and where every file and the metrics are. The server stays up, metrics
   scrapeable, until the demo exits; ``--keep-serving`` keeps it up until SIGINT/SIGTERM,
   for the client SDK::

       from conveyor.client import Client
       c = Client("127.0.0.1:8001")
       c.infer("fraud", {"amount": [912.5], ...})
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from conveyor.errors import ConveyorError

MODEL_NAME = "fraud"


class DemoError(ConveyorError):
    """A demo step failed; the message names the step."""


def _step(title: str, argv: list[str], args: argparse.Namespace) -> None:
    from conveyor.cli import main

    # Each step is a `conveyor` command of its own, which sets logging up again from its
    # flags: the demo's own --log-level, --log-format and --config go along, or every step
    # after the first would log at the defaults.
    argv = [*argv, "--log-level", args.log_level, "--log-format", args.log_format]
    if getattr(args, "config", None):
        argv += ["--config", str(args.config)]
    print(f"\n== {title}\n$ conveyor {' '.join(argv)}", flush=True)
    code = main(argv)
    if code != 0:
        raise DemoError(f"step {title!r} failed with exit code {code}")


def check_args(args: argparse.Namespace) -> None:
    """Raise :class:`DemoError` naming the first bad flag.

    Runs before anything is generated or deleted: a bad value found only at the traffic step
    would cost the whole generate, profile and train before it.
    """
    for name in ("rows", "nproc", "epochs"):
        value = getattr(args, name)
        if value < 1:
            raise DemoError(f"--{name} must be >= 1, got {value}")
    if not (math.isfinite(args.phase_seconds) and args.phase_seconds > 0):
        raise DemoError(f"--phase-seconds must be > 0 seconds, got {args.phase_seconds:g}")
    for name in ("port", "metrics_port"):
        # The demo reads its drift alert from the metrics page, so it cannot go without
        # one (serve's -1 = none has no meaning here); 0 picks a free port.
        value = getattr(args, name)
        if not 0 <= value <= 65535:
            flag = "--" + name.replace("_", "-")
            raise DemoError(f"{flag} must be a port number 0..65535 (0 = a free one), got {value}")


def run(args: argparse.Namespace) -> int:
    from conveyor.demo.fraud_data import FraudDataConfig, write_dataset

    check_args(args)
    work = Path(args.workdir).resolve()
    data, profile, run_dir, models = (work / d for d in ("data", "profile", "run", "models"))
    # Each demo is a fresh job over fresh data; the model repository is kept, so every run
    # adds a version beside the earlier ones, as a retraining job would.
    for stale in (data, profile, run_dir):
        shutil.rmtree(stale, ignore_errors=True)
    started = time.perf_counter()

    print(f"== generate {args.rows:,} card transactions -> {data}", flush=True)
    rows = write_dataset(str(data), FraudDataConfig(rows=args.rows, seed=args.seed))
    timings = {"generate": time.perf_counter() - started}
    print(f"wrote {rows:,} rows in {timings['generate']:.1f} s")
    t0 = time.perf_counter()

    _step(
        "profile and validate",
        ["ingest", "profile", str(data), "--label", "is_fraud", "--key", "transaction_id",
         "--timestamp", "ts", "--out", str(profile)],
        args,
    )  # fmt: skip
    timings["profile"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _step(
        f"train with DDP on {args.nproc} processes",
        ["train", str(data), "--spec", str(profile / "spec.json"), "--model-repository",
         str(models), "--model-name", MODEL_NAME, "--nproc", str(args.nproc), "--epochs",
         str(args.epochs), "--seed", str(args.seed), "--out", str(run_dir),
         "--progress", "off"],
        args,
    )  # fmt: skip

    timings["train"] = time.perf_counter() - t0
    server, phases = _serve_and_drive(args, models, work, timings)
    try:
        _summary(args, work, timings, phases, server)
        if args.keep_serving:
            _wait_for_signal(server)
    finally:
        server.stop(grace=2)
    return 0


def _serve_and_drive(
    args: argparse.Namespace, models: Path, work: Path, timings: dict[str, float]
) -> tuple[Any, list[Any]]:
    from conveyor.bench import payloads
    from conveyor.demo import traffic

    cfg = traffic.TrafficConfig(
        models=models,
        model=MODEL_NAME,
        port=args.port,
        metrics_port=args.metrics_port,
        phase_seconds=args.phase_seconds,
        seed=args.seed,
        data=work / "data",
    )
    t0 = time.perf_counter()
    server, metrics_url = traffic.start_server(cfg)
    args._metrics_url = metrics_url
    print(f"\n== serve {models} on {server.address}", flush=True)
    print(f"metrics          {metrics_url or 'none (this engine has no Prometheus page yet)'}")
    phases = []
    try:
        info = payloads.model_info(server.address, MODEL_NAME)
        timings["start server"] = time.perf_counter() - t0
        for name in ("in-distribution", "drifted"):
            print(f"\n== traffic: {name} ({cfg.phase_seconds:g} s)", flush=True)
            t0 = time.perf_counter()
            result = traffic.run_phase(name, cfg, server.address, info, metrics_url)
            timings[name] = time.perf_counter() - t0
            for line in traffic.phase_lines(result, metrics_url is not None):
                print(line)
            phases.append(result)
    except BaseException:
        server.stop(grace=0)
        raise
    document = {"timings_s": timings, "phases": [p.to_dict() for p in phases]}
    (work / "traffic.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    return server, phases


def _summary(
    args: argparse.Namespace, work: Path, timings: dict[str, float], phases: list[Any], server: Any
) -> None:
    profile, run_dir = work / "profile", work / "run"
    report = json.loads((profile / "report.json").read_text())["accounting"]
    summary = json.loads((run_dir / "summary.json").read_text())
    best = (summary.get("best") or {}).get("val") or {}
    print("\n== summary")
    print(
        f"rows             {report['rows_in']:,} in = {report['rows_out']:,} out "
        f"+ {report['rows_quarantined']:,} quarantined"
    )
    quality = "  ".join(f"{k} {v:.4f}" for k, v in best.items() if k != "rows")
    print(f"validation       {quality or 'n/a'}")
    print(f"model            {summary.get('exported', 'not exported')}")
    print(f"profile          {profile}  (spec.json, stats.json, report.json, quarantine)")
    print(f"training run     {run_dir}  (metrics.jsonl, summary.json, checkpoints)")
    for phase in phases:
        s = phase.summary
        if phase.drift is None:
            drift = "no drift metrics"
        else:
            drifted = phase.drift.drifted()
            drift = f"alert {'ON' if phase.drift.alert else 'off'}"
            drift += f", drifted: {', '.join(drifted)}" if drifted else ", no feature drifted"
        print(
            f"{phase.name:<17}{s['rows_s']:,.0f} rows/s, p50 {s['p50_ms']:.2f} ms, "
            f"p99 {s['p99_ms']:.2f} ms, errors {s['errors']}; {drift}"
        )
    print(f"traffic          {work / 'traffic.json'}")
    print(f"server           {server.address} (gRPC, OIP v2)")
    print(f"metrics          {getattr(args, '_metrics_url', None) or 'none'}")
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    print(f"timings          {steps}")
    print(f"total time       {sum(timings.values()):.0f} s")


def _wait_for_signal(server: Any) -> None:
    """Serve until SIGINT or SIGTERM (the caller stops the server)."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    print(
        f"\nserving on {server.address} until Ctrl-C / SIGTERM; try:\n"
        "    from conveyor.client import Client\n"
        f'    c = Client("{server.address}")\n'
        f'    c.infer("{MODEL_NAME}", {{"amount": [912.5], "hour": [3], ...}})',
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from conveyor.cli import add_command

    p = add_command(
        subparsers,
        "demo",
        help="run the whole pipeline on a generated card-fraud dataset (no external service)",
        parents=[common],
        run=run,
    )
    p.add_argument("--workdir", default="conveyor-demo", help="default: ./conveyor-demo")
    p.add_argument("--rows", type=int, default=1_000_000, help="transactions (default 1000000)")
    p.add_argument("--nproc", type=int, default=2, help="training processes (default 2)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    p.add_argument("--port", type=int, default=8001, help="gRPC port (default 8001; 0 = free)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus port (default 8002)")
    p.add_argument(
        "--phase-seconds", type=float, default=20.0, help="seconds per traffic phase (default 20)"
    )
    p.add_argument(
        "--keep-serving",
        action="store_true",
        help="leave the server running after the demo, until SIGINT/SIGTERM",
    )
