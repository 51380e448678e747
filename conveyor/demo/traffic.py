"""The demo's serving half: start the server on the exported model and drive traffic at it.

Two phases with the bench load generator (:mod:`conveyor.bench.loadgen`):

1. ``in-distribution``: valid rows of the training data's last day (days are uniform random,
   so a day is an unbiased sample of the reference the profile describes). Freshly generated
   data would not do: the generator draws a new population of accounts per seed, and a
   smaller one for fewer rows, so account-level features (age, usual spend) really differ;
2. ``drifted``: the same rows with amounts scaled up and merchant categories redrawn from a
   mix moved towards the risky online and luxury categories, the kind of shift that silently
   breaks a fraud model. Everything else stays, so the drift report can be checked against
   what was changed.

While a phase runs, the server's Prometheus page is read twice a second for the drift alert,
so the report can say when (and whether) it turned on. A server without drift metrics is
reported as such, never as "no drift".
"""

from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.bench import loadgen, payloads, prom

# Shares of the 10 merchant categories in the drifted phase (see fraud_data.MERCHANT_CATEGORIES):
# grocery and fuel give way to travel, electronics, jewelry and online gaming.
DRIFTED_CATEGORY_MIX = (0.08, 0.05, 0.12, 0.09, 0.05, 0.06, 0.15, 0.17, 0.08, 0.15)
DRIFTED_AMOUNT_SCALE = 2.5


@dataclass
class TrafficConfig:
    """How the demo serves and what traffic it sends.

    Attributes:
        models: the model repository; model: the model's name.
        port: gRPC port (default 8001; 0 = a free one); metrics_port: Prometheus page
            (default 8002; used when the server has metrics).
        phase_seconds: measured seconds per phase (default 20).
        request_rows: rows per request (default 8).
        concurrency: requests in flight (default 16).
        rows_per_phase: distinct rows sent per phase, at most (default 40,000).
        seed: seed of the drifted phase's category draw.
        data: the training data (hive-partitioned Parquet) the phases take rows from.
    """

    models: Path
    model: str = "fraud"
    port: int = 8001
    metrics_port: int = 8002
    phase_seconds: float = 20.0
    request_rows: int = 8
    concurrency: int = 16
    rows_per_phase: int = 40_000
    seed: int = 0
    data: Path | None = None


@dataclass
class PhaseResult:
    """One phase: the load summary and what the drift metrics said."""

    name: str
    summary: dict[str, Any]
    drift: prom.DriftStatus | None = None
    alert_after_s: float | None = None  # seconds into the phase when the alert was first on
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        drift = None
        if self.drift is not None:
            drift = {
                "alert": self.drift.alert,
                "drifted_features": self.drift.drifted(),
                "scores": self.drift.scores,
                "window_rows": self.drift.window_rows,
            }
        return {
            "phase": self.name,
            "load": self.summary,
            "drift": drift,
            "alert_after_s": self.alert_after_s,
        }


def start_server(cfg: TrafficConfig) -> tuple[Any, str | None]:
    """The in-process server on ``cfg.models``, and its metrics URL (None without metrics)."""
    from conveyor.engine import Server

    kwargs: dict[str, Any] = {"port": cfg.port, "poll_interval": 3600.0}
    accepts = inspect.signature(Server).parameters
    if "metrics_port" in accepts:
        kwargs["metrics_port"] = cfg.metrics_port
    server = Server(cfg.models, **kwargs).start()
    if "metrics_port" not in accepts:
        return server, None
    port = getattr(server, "metrics_port", cfg.metrics_port)
    return server, f"http://{server.host}:{port}/metrics"


def phase_rows(name: str, cfg: TrafficConfig) -> dict[str, Any]:
    """A phase's rows with every column the training files had (the ``day`` partition
    included): valid rows of the last day, shifted for the ``drifted`` phase."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from conveyor.demo.fraud_data import MERCHANT_CATEGORIES

    if cfg.data is None:
        raise ValueError("TrafficConfig.data: the training data directory is needed")
    source = ds.dataset(cfg.data, format="parquet", partitioning="hive")
    last_day = max(pc.unique(source.to_table(columns=["day"]).column("day")).to_pylist())
    table = source.to_table(filter=ds.field("day") == last_day)
    # Served traffic carries no planted bad rows (validation quarantined those).
    valid = pc.and_(
        pc.and_(pc.is_finite(table["amount"]), pc.is_finite(table["distance_from_home_km"])),
        pc.is_valid(table["merchant_category"]),
    )
    table = table.filter(valid).slice(0, cfg.rows_per_phase)
    columns = {n: table.column(n).to_numpy(zero_copy_only=False) for n in table.column_names}
    if name == "drifted":
        rng = np.random.default_rng(cfg.seed + 202)
        mix = np.asarray(DRIFTED_CATEGORY_MIX)
        columns["amount"] = np.round(columns["amount"] * DRIFTED_AMOUNT_SCALE, 2)
        picks = rng.choice(len(MERCHANT_CATEGORIES), size=table.num_rows, p=mix / mix.sum())
        columns["merchant_category"] = np.array(MERCHANT_CATEGORIES, dtype=object)[picks]
    return columns


class _AlertWatch:
    """Reads the drift alert twice a second in a thread while a phase runs."""

    def __init__(self, url: str | None, model: str) -> None:
        self.url, self.model = url, model
        self.first_on: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drift-watch", daemon=True)
        self._t0 = time.perf_counter()

    def __enter__(self) -> _AlertWatch:
        if self.url is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                status = prom.drift(prom.scrape(self.url, timeout=2), self.model)
            except prom.MetricsError:
                continue
            if status is not None and status.alert and self.first_on is None:
                self.first_on = time.perf_counter() - self._t0


def run_phase(
    name: str, cfg: TrafficConfig, target: str, info: Any, metrics_url: str | None
) -> PhaseResult:
    """Send one phase's traffic and read the drift metrics at its end."""
    columns = phase_rows(name, cfg)
    need = payloads.needed_columns(info)
    bodies = payloads.build_payloads(info, {c: columns[c] for c in need}, cfg.request_rows)
    spec = loadgen.LoadSpec(
        target=target,
        payloads=bodies,
        rows=cfg.request_rows,
        concurrency=cfg.concurrency,
        duration=cfg.phase_seconds,
        warmup=min(1.0, cfg.phase_seconds / 4),
        procs=1,
        seed=cfg.seed,
    )
    # The server's figures over the phase's measured window, as the client's are.
    scrapes = prom.WindowScrapes(metrics_url, spec.duration) if metrics_url else None
    with _AlertWatch(metrics_url, cfg.model) as watch:
        summary = loadgen.run_load(spec, label=name, on_window=scrapes).summary()
    after = _scrape(metrics_url)
    result = PhaseResult(name, summary, alert_after_s=watch.first_on)
    server = scrapes.server_side(cfg.model) if scrapes is not None else None
    if server is not None:
        summary.update(server)
    if after is not None:
        result.drift = prom.drift(after, cfg.model)
    return result


def _scrape(url: str | None) -> prom.Samples | None:
    if url is None:
        return None
    try:
        return prom.scrape(url)
    except prom.MetricsError:
        return None


def phase_lines(result: PhaseResult, has_metrics: bool) -> list[str]:
    """What the terminal shows after a phase."""
    s = result.summary
    lines = [
        f"{s['requests_s']:,.0f} requests/s = {s['rows_s']:,.0f} rows/s "
        f"({s['rows']} rows/request, {s['concurrency']} in flight); latency p50 "
        f"{s['p50_ms']:.2f} ms, p90 {s['p90_ms']:.2f}, p99 {s['p99_ms']:.2f}, "
        f"p99.9 {s['p999_ms']:.2f} ms; errors {s['errors']}"
        + (f" {s['error_codes']}" if s["errors"] else "")
    ]
    if s.get("server_queue_ms") is not None:
        lines.append(
            f"server: queue {s['server_queue_ms']:.3f} ms per request, compute "
            f"{s.get('server_compute_ms') or 0:.3f} ms per batch, mean batch "
            f"{s.get('server_batch_size') or 0:.1f} rows"
        )
    if result.drift is None:
        why = "" if has_metrics else " (it has no Prometheus page)"
        lines.append(f"drift: {prom.NO_DRIFT}{why}")
    else:
        top = ", ".join(f"{f} {v:.2f}" for f, v in result.drift.top(n=4))
        state = "ON" if result.drift.alert else "off"
        when = (
            f" (on after {result.alert_after_s:.1f} s)"
            if result.drift.alert and result.alert_after_s is not None
            else ""
        )
        lines.append(f"drift alert {state}{when}; top PSI: {top or '-'}")
    return lines
