"""``conveyor bench serve``: a sweep of load points against one model of any OIP v2 gRPC server.

Closed-loop concurrencies first, then open-loop rates, each point measured by
:func:`conveyor.bench.loadgen.run_load` on the same pre-built requests; with a metrics URL,
the server's own queue and compute times and batch sizes are read over each point's window.
Results go to ``OUT/serve.json``, ``OUT/serve.csv`` and ``OUT/serve.png``.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conveyor.bench import loadgen, payloads, prom, report

log = logging.getLogger("conveyor.bench")


@dataclass
class ServeBenchConfig:
    """What ``conveyor bench serve`` runs.

    Attributes:
        target: ``host:port`` of the gRPC server.
        model: model name; ``version`` empty = the server's default version.
        concurrency: closed-loop points (requests in flight).
        rates: open-loop points (requests/s, Poisson arrivals).
        rows: rows per request (default 1).
        duration: seconds measured per point (default 10); warmup: seconds before (default 2).
        procs: client processes (default 1).
        connections: gRPC connections per client process (default 1; see
            :class:`~conveyor.bench.loadgen.LoadSpec`).
        data: a Parquet file or folder to take inputs from; None = random inputs. Rows that
            fail the model's input checks (a null category, a value its datatype cannot hold
            unchanged) are left out, counted and the first named by file and row.
        metrics_url: the server's Prometheus page, read when each point's measured window
            starts and when it ends.
        out: folder for serve.json, serve.csv and serve.png (default ``bench-results``).
        timeout: per-request deadline, seconds (default 10).
        connect_timeout: seconds each point waits for the server to accept its connections
            (default 10): a server that went down ends the sweep after this long, and the
            points measured so far are still written.
        token: bearer token for servers that require one.
        seed: random inputs and arrival times (default 0).
    """

    target: str
    model: str
    version: str = ""
    concurrency: list[int] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    rows: int = 1
    duration: float = 10.0
    warmup: float = 2.0
    procs: int = 1
    connections: int = 1
    data: str | None = None
    metrics_url: str | None = None
    out: str = "bench-results"
    timeout: float = 10.0
    connect_timeout: float = 10.0
    token: str | None = None
    seed: int = 0
    progress: bool | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise :class:`~conveyor.bench.loadgen.LoadSpecError` naming the first bad flag.

        Runs when the configuration is made, before any server is contacted.
        """
        bad = [c for c in self.concurrency if c < 1]
        if bad:
            raise loadgen.LoadSpecError(f"--concurrency must be >= 1, got {bad[0]}")
        bad_rates = [r for r in self.rates if not (math.isfinite(r) and r > 0)]
        if bad_rates:
            raise loadgen.LoadSpecError(
                f"--rate must be finite and > 0 requests/s, got {bad_rates[0]}"
            )
        loadgen.check_settings(
            rows=self.rows, duration=self.duration, warmup=self.warmup, procs=self.procs,
            timeout=self.timeout, connections=self.connections,
            connect_timeout=self.connect_timeout,
        )  # fmt: skip


def machine() -> str:
    """A short description of this machine for result tables."""
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{platform.machine()}, {os.cpu_count()} cores{load}"


def measure_point(
    spec: loadgen.LoadSpec,
    *,
    model: str,
    metrics_url: str | None = None,
    progress: bool | None = None,
    label: str = "",
) -> dict[str, Any]:
    """One load point's summary, with the server's view of it when ``metrics_url`` is set.

    The server's page is read when the measured window starts and when it ends, so its
    figures cover the same seconds as the client's. A failed scrape leaves that point's
    server-side fields None (with a warning) rather than ending the sweep: the client-side
    figures measured so far are still worth writing.
    """
    if metrics_url is None:
        return loadgen.run_load(spec, progress=progress, label=label).summary()

    def warn(exc: prom.MetricsError) -> None:
        log.warning("point %s: no server-side figures: %s", label or "?", exc)

    scrapes = prom.WindowScrapes(metrics_url, spec.duration, on_error=warn)
    summary = loadgen.run_load(spec, progress=progress, label=label, on_window=scrapes).summary()
    summary.update(scrapes.server_side(model) or dict.fromkeys(prom.SERVER_FIELDS))
    return summary


def run(cfg: ServeBenchConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every point, print a line for each, write the files; returns the JSON document.

    A point that cannot run (the server went down: :class:`~conveyor.bench.loadgen.LoadError`)
    ends the sweep: the points measured before it are written, the document saying where the
    sweep stopped (``stopped_early``), and the error is raised again.
    """
    if not cfg.concurrency and not cfg.rates:
        raise payloads.PayloadError("nothing to run: give --concurrency and/or --rate")
    report.check_out_folder(cfg.out)
    info = payloads.model_info(cfg.target, cfg.model, cfg.version, cfg.token)
    skipped = payloads.SkippedRows()
    if cfg.data:
        need = payloads.needed_columns(info)
        data = payloads.read_columns(cfg.data, need, limit=cfg.rows * payloads.MAX_PAYLOADS)
        # Rows the client would refuse to send are left out, counted and the first named.
        bodies = payloads.build_payloads(
            info, data.columns, cfg.rows, version=cfg.version, skipped=skipped, where=data.where,
            invalid=data.invalid,
        )  # fmt: skip
        source = f"file {cfg.data}"
        if skipped.count:
            echo(
                f"bench serve: left out {skipped.count} row(s) of {cfg.data} that fail the "
                f"model's input checks; the first: {skipped.first}"
            )
    else:
        columns = payloads.random_inputs(info, cfg.rows * 64, seed=cfg.seed)
        bodies = payloads.build_payloads(info, columns, cfg.rows, version=cfg.version)
        source = "random (from model metadata)"
    metrics_url = prom.metrics_url(cfg.metrics_url) if cfg.metrics_url else None
    if metrics_url:
        prom.scrape(metrics_url)  # fail before the sweep, not after the first point
    echo(
        f"bench serve: {cfg.model} at {cfg.target}, {cfg.rows} row(s)/request, inputs {source}, "
        f"{len(bodies)} distinct requests, {cfg.procs} client process(es) of "
        f"{cfg.connections} connection(s), "
        f"{cfg.warmup:g} s warm-up + {cfg.duration:g} s per point"
    )
    points: list[dict[str, Any]] = []
    loads: list[dict[str, Any]] = [{"concurrency": c} for c in cfg.concurrency]
    loads += [{"rate": r} for r in cfg.rates]
    document = {
        "benchmark": "serve",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {k: v for k, v in asdict(cfg).items() if k not in ("token", "progress")},
        "data_rows_left_out": skipped.count,
        "model": {"name": info.name, "platform": info.platform, "versions": list(info.versions)},
        "points": points,
    }
    for load in loads:
        spec = loadgen.LoadSpec(
            target=cfg.target,
            payloads=bodies,
            rows=cfg.rows,
            duration=cfg.duration,
            warmup=cfg.warmup,
            procs=cfg.procs,
            connections=cfg.connections,
            timeout=cfg.timeout,
            connect_timeout=cfg.connect_timeout,
            token=cfg.token,
            seed=cfg.seed,
            **load,
        )
        label = f"c={load['concurrency']}" if "concurrency" in load else f"{load['rate']:g}/s"
        try:
            point = measure_point(
                spec, model=cfg.model, metrics_url=metrics_url, progress=cfg.progress, label=label
            )
        except loadgen.LoadError as exc:
            if not points:
                raise
            document["stopped_early"] = f"point {label}: {exc}"
            _write(cfg, document, echo)
            raise loadgen.LoadError(
                f"point {label}: {exc} (the {len(points)} point(s) before it are written "
                f"to {cfg.out})"
            ) from None
        points.append(point)
        echo(report.point_line(point))
    _write(cfg, document, echo)
    return document


def _write(cfg: ServeBenchConfig, document: dict[str, Any], echo: Callable[[str], None]) -> None:
    """``serve.json``, ``serve.csv`` and ``serve.png`` of ``document`` in ``cfg.out``."""
    points = document["points"]
    out = Path(cfg.out)
    files = [
        report.write_json(out / "serve.json", document),
        report.write_csv(out / "serve.csv", points),
        report.plot_latency(
            out / "serve.png",
            points,
            f"{cfg.model} at {cfg.target}: {cfg.rows} row(s)/request, {machine()}",
        ),
    ]
    echo("wrote " + ", ".join(str(f) for f in files))
