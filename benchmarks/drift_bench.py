# ruff: noqa: E501  (report lines read better unwrapped)
"""Drift overhead: ``conveyor serve`` rows/s with online drift on against off, in one run.

The model and the load generator are serve_bench.py's (64 numeric features, MLP
256-256, one sigmoid output; pre-serialised OIP ModelInfer requests from 2 client
processes). The model directory gets named input columns and the reference
statistics ``conveyor ingest profile`` writes for N(0, 1) training data, so with drift
on every batch is binned (64 features x 20 quantile bins, and the prediction).
Servers with ``--drift off`` and ``--drift on`` alternate ``--pairs`` times; the
ratio quoted is the median over the pairs of on / off rows/s. Usage::

    .venv/bin/python benchmarks/drift_bench.py [--duration 5] [--pairs 2]

Target: drift costs at most 5% of rows/s at concurrency 64 (ratio >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_bench import FEATURES, free_port, run_load, start, stop, write_model

# (concurrency, rows per request): the target's point, and larger batches where the
# per-row share of the drift work is largest.
POINTS = ((64, 1), (64, 16))


def add_reference(directory: Path, work: Path) -> None:
    """Input columns in config.json and the profiler's stats.json / spec.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from conveyor.cli import main

    columns = [f"f{i}" for i in range(FEATURES)]
    config = json.loads((directory / "config.json").read_text())
    config["inputs"][0]["columns"] = columns
    (directory / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(1)
    table = pa.table(
        {**{c: rng.standard_normal(50_000) for c in columns}, "y": rng.integers(0, 2, 50_000)}
    )
    pq.write_table(table, work / "train.parquet")
    rc = main(
        [
            "ingest",
            "profile",
            str(work / "train.parquet"),
            "--label",
            "y",
            "--out",
            str(work / "profile"),
        ]
    )
    if rc not in (0, None):
        raise RuntimeError("conveyor ingest profile failed")
    for name in ("stats.json", "spec.json"):
        (directory / name).write_bytes((work / "profile" / name).read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point (default 5)")
    parser.add_argument("--pairs", type=int, default=2, help="off/on server pairs (default 2)")
    args = parser.parse_args(argv)

    rates: dict[tuple[str, int, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = write_model(work / "repo").parent
        add_reference(model_dir, work)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as serve_bench: one torch thread
        for pair in range(args.pairs):
            for drift in ("off", "on"):
                port = free_port()
                proc = start(
                    [
                        sys.executable, "-m", "conveyor", "serve",
                        "--model-repository", str(work / "repo"), "--port", str(port),
                        "--log-level", "warning", "--drift", drift,
                    ],
                    port,
                    env,
                )  # fmt: skip
                try:
                    for concurrency, rows in POINTS:
                        r = run_load(port, rows, concurrency, args.duration)
                        rates.setdefault((drift, concurrency, rows), []).append(r["rows_s"])
                        print(
                            f"pair {pair + 1} drift {drift:<3} c={concurrency} rows={rows:<3} "
                            f"{r['rows_s']:>9,.0f} rows/s p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms "
                            f"errors {r['errors']}",
                            flush=True,
                        )
                finally:
                    stop(proc)

    print()
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for concurrency, rows in POINTS:
        off, on = rates[("off", concurrency, rows)], rates[("on", concurrency, rows)]
        ratios = [b / a for a, b in zip(off, on, strict=True)]
        print(
            f"c={concurrency} rows={rows}: drift off {statistics.median(off):,.0f} rows/s, "
            f"on {statistics.median(on):,.0f} rows/s; on/off per pair "
            f"{', '.join(f'{x:.3f}' for x in ratios)}; median {statistics.median(ratios):.3f} "
            f"(target >= 0.95)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
