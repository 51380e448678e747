"""``conveyor demo``: the main job, end to end, on an embedded default with no external service.

Each step runs the same ``conveyor`` subcommand a user would type (printed before it runs), on
a generated card-fraud dataset:

1. generate about 1,000,000 transactions as hive-partitioned zstd Parquet, with a few
   deliberately bad rows (NaN/inf amounts, missing categories);
2. ``conveyor ingest profile``: infer the spec, validate every row (the bad ones are
   quarantined and counted, not lost) and write reference statistics;
3. ``conveyor train --nproc N``: DDP on N local processes with train and validation metrics
   side by side, exporting a new version to a local model repository;
4. a summary: rows accounted for, model quality, where every file is.

Serving, traffic and drift join as those stages land (see the benchmarks/demo issue).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from conveyor.errors import ConveyorError

MODEL_NAME = "fraud"


class DemoError(ConveyorError):
    """A demo step failed; the message names the step."""


def _step(title: str, argv: list[str]) -> None:
    from conveyor.cli import main

    print(f"\n== {title}\n$ conveyor {' '.join(argv)}", flush=True)
    code = main(argv)
    if code != 0:
        raise DemoError(f"step {title!r} failed with exit code {code}")


def run(args: argparse.Namespace) -> int:
    from conveyor.demo.fraud_data import FraudDataConfig, write_dataset

    work = Path(args.workdir).resolve()
    data, profile, run_dir, models = (work / d for d in ("data", "profile", "run", "models"))
    # Each demo is a fresh job over fresh data; the model repository is kept, so every run
    # adds a version beside the earlier ones, as a retraining job would.
    for stale in (data, profile, run_dir):
        shutil.rmtree(stale, ignore_errors=True)
    started = time.perf_counter()

    print(f"== generate {args.rows:,} card transactions -> {data}", flush=True)
    rows = write_dataset(str(data), FraudDataConfig(rows=args.rows, seed=args.seed))
    print(f"wrote {rows:,} rows in {time.perf_counter() - started:.1f} s")

    _step(
        "profile and validate",
        ["ingest", "profile", str(data), "--label", "is_fraud", "--key", "transaction_id",
         "--timestamp", "ts", "--out", str(profile)],
    )  # fmt: skip
    _step(
        f"train with DDP on {args.nproc} processes",
        ["train", str(data), "--spec", str(profile / "spec.json"), "--model-repository",
         str(models), "--model-name", MODEL_NAME, "--nproc", str(args.nproc), "--epochs",
         str(args.epochs), "--seed", str(args.seed), "--out", str(run_dir),
         "--progress", "off"],
    )  # fmt: skip

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
    print(f"total time       {time.perf_counter() - started:.0f} s")
    return 0


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
