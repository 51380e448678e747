# ruff: noqa: E501  (report lines read better unwrapped)
"""Drift overhead: ``conveyor serve`` rows/s with online drift on against off, in one run.

The model and the load generator are serve_bench.py's (64 numeric features, MLP
256-256, one sigmoid output; pre-serialised OIP ModelInfer requests from 2 client
processes). The model directory gets named input columns and the reference
statistics ``conveyor ingest profile`` writes for N(0, 1) training data, so with drift
on every batch is binned (64 features x 20 quantile bins, and the prediction).
Two servers, ``--drift off`` and ``--drift on``, run side by side and take the load
in turn, ``--pairs`` times (off-on, then on-off); the ratio quoted is the median over
the pairs of on / off rows/s. Usage::

    .venv/bin/python benchmarks/drift_bench.py [--duration 3] [--pairs 5]

Target: drift costs at most 5% of rows/s at concurrency 64 (ratio >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_bench import (
    FEATURES,
    exit_on_sigterm,
    free_port,
    run_load,
    start,
    stop,
    write_model,
)

# (concurrency, rows per request): the target's point, and larger batches where the
# per-row share of the drift work is largest.
POINTS = ((64, 1), (64, 16))
# Load generator processes per point: the setup of the published figures
# (benchmarks/README.md), passed explicitly since serve_bench.run_load defaults to 1.
CLIENT_PROCS = 2


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


def observe_us_per_row(model_dir: Path, batch: int, seconds: float = 1.0) -> float:
    """In-process cost of DriftMonitor.observe (binning, window, scoring, gauges) on
    ``batch``-row batches of this model, microseconds per row."""
    import time

    from conveyor.engine.drift import DriftMonitor, DriftSettings
    from conveyor.engine.metrics import ServerMetrics
    from conveyor.engine.model_config import load_config

    config = load_config(model_dir / "config.json")
    metrics = ServerMetrics().drift("mlp", 1)
    monitor = DriftMonitor(
        "mlp",
        1,
        config,
        model_dir / "stats.json",
        model_dir / "spec.json",
        DriftSettings(),
        metrics,
    )
    rng = np.random.default_rng(3)
    x = rng.standard_normal((batch, FEATURES)).astype(np.float32)
    y = rng.random((batch, 1)).astype(np.float32)
    for _ in range(20_000 // batch + 1):  # past the prediction's reference window
        monitor.observe([x], [y])
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        monitor.observe([x], [y])
        calls += 1
    return (time.perf_counter() - start) / (calls * batch) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per point (default 3)")
    parser.add_argument("--pairs", type=int, default=5, help="off/on measurement pairs (default 5)")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error(f"--pairs must be >= 1, got {args.pairs}")
    if not (math.isfinite(args.duration) and args.duration > 0):
        parser.error(f"--duration must be a finite number > 0, got {args.duration:g}")

    rates: dict[tuple[str, int, int], list[float]] = {}
    cpu: dict[tuple[str, int, int], list[float]] = {}  # server CPU us per row
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = write_model(work / "repo").parent
        add_reference(model_dir, work)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as serve_bench: one torch thread
        # Both servers run side by side and take the load in turn (the idle one costs
        # nothing), in off-on-on-off order, so the load other jobs put on the machine
        # falls on both alike.
        servers: dict[str, tuple[int, Any]] = {}
        try:
            for drift in ("off", "on"):
                port = free_port()
                servers[drift] = port, start(
                    [
                        sys.executable, "-m", "conveyor", "serve",
                        "--model-repository", str(work / "repo"), "--port", str(port),
                        "--metrics-port", "0", "--log-level", "warning", "--drift", drift,
                    ],
                    port,
                    env,
                )  # fmt: skip
            for pair in range(args.pairs):
                for concurrency, rows in POINTS:
                    order = ("off", "on") if pair % 2 == 0 else ("on", "off")
                    for drift in order:
                        pid = servers[drift][1].pid
                        # The server's CPU over the clients' measurement window only (not
                        # their start-up and warm-up), per row answered in that window.
                        r = run_load(
                            servers[drift][0],
                            rows,
                            concurrency,
                            args.duration,
                            server_pid=pid,
                            procs=CLIENT_PROCS,
                        )
                        rates.setdefault((drift, concurrency, rows), []).append(r["rows_s"])
                        if r["server_cpu_us"] is not None:
                            per_row = r["server_cpu_us"] / rows
                            cpu.setdefault((drift, concurrency, rows), []).append(per_row)
                        print(
                            f"pair {pair + 1} drift {drift:<3} c={concurrency} rows={rows:<3} "
                            f"{r['rows_s']:>9,.0f} rows/s p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms "
                            f"errors {r['errors']}",
                            flush=True,
                        )
        finally:
            for _, proc in servers.values():
                stop(proc)
        # The drift work itself, measured alone: it runs in the server's worker thread
        # holding the GIL, so its share of the server's CPU per row bounds what it can
        # take from rows/s, whatever the machine's other load does to the wall clock.
        per_row = {b: observe_us_per_row(model_dir, b) for b in (16, 64, 512)}

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
    print(
        "DriftMonitor.observe alone: "
        + ", ".join(f"batch {b}: {us:.2f} us/row" for b, us in per_row.items())
    )
    for concurrency, rows in POINTS:
        if ("off", concurrency, rows) not in cpu or ("on", concurrency, rows) not in cpu:
            continue  # no /proc here: no server CPU figures
        off_cpu = statistics.median(cpu[("off", concurrency, rows)])
        on_cpu = statistics.median(cpu[("on", concurrency, rows)])
        print(
            f"c={concurrency} rows={rows}: server CPU per row, drift off {off_cpu:.1f} us, "
            f"on {on_cpu:.1f} us (median over pairs); observe at batch 64 is "
            f"{per_row[64] / off_cpu:.1%} of the off server's CPU per row"
        )
    return 0


if __name__ == "__main__":
    exit_on_sigterm()
    raise SystemExit(main())
