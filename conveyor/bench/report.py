"""Bench results as files and text: JSON (everything), CSV (one row per point), PNG, a table.

Every ``conveyor bench`` command writes into its ``--out`` folder: ``NAME.json`` (the run's
settings and every point), ``NAME.csv`` (the points, nested fields flattened with dots) and,
for ``serve``, ``NAME.png``: latency percentiles against throughput.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from conveyor.bench.stats import PERCENTILES, percentile_key
from conveyor.errors import ConveyorError


class OutputError(ConveyorError):
    """The output folder cannot be written."""


def check_out_folder(out: str | Path, flag: str = "--out") -> None:
    """Raise :class:`OutputError` naming ``flag`` unless ``out`` is, or can be made, a
    writable folder. Creates nothing: run before a benchmark, so it does not end in a
    traceback after the measuring is done."""
    path = Path(out)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is under {existing}, a file"
        raise OutputError(f"{flag} {out}: {where}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {out}: cannot write in {existing}")


def flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys (``error_codes.UNAVAILABLE``); lists as JSON text."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None, recursively.

    A point with no answered request has NaN percentiles; Python's json would write them as
    bare ``NaN`` tokens, which strict parsers (jq, JSON.parse) reject: null is what JSON has.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, document: Mapping[str, Any]) -> Path:
    """``document`` as strict JSON (non-finite numbers as null) at ``path``."""
    text = json.dumps(json_safe(document), indent=2, default=str, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return path


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """One line per row; the header is the union of every row's (flattened) fields.

    A value that was not measured (None, NaN or infinite) is an empty cell, as spreadsheets
    and pandas read a missing value.
    """
    flat = [flatten(json_safe(r)) for r in rows]
    header: list[str] = []
    for r in flat:
        header.extend(k for k in r if k not in header)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(flat)
    return path


def plot_latency(path: Path, points: Sequence[Mapping[str, Any]], title: str) -> Path:
    """Latency percentiles (log scale) against answered requests/s, closed and open loop."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    colours = dict(
        zip(PERCENTILES, ("tab:green", "tab:blue", "tab:orange", "tab:red"), strict=True)
    )
    for mode, marker, style in (("closed", "o", "-"), ("open", "s", "--")):
        chosen = sorted((p for p in points if p.get("mode") == mode), key=lambda p: p["requests_s"])
        if not chosen:
            continue
        x = [p["requests_s"] for p in chosen]
        for pct in PERCENTILES:
            y = [p[percentile_key(pct)] for p in chosen]
            if all(math.isnan(v) for v in y):
                continue
            ax.plot(
                x, y, marker=marker, linestyle=style, color=colours[pct],
                label=f"p{pct:g} ({mode} loop)",
            )  # fmt: skip
    ax.set_xlabel("throughput (answered requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def point_line(p: Mapping[str, Any]) -> str:
    """One line per load point, for the terminal."""
    load = f"c={p['concurrency']}" if p["mode"] == "closed" else f"rate={p['target_rate']:g}/s"
    errors = p["errors"]
    codes = ", ".join(f"{k} {v}" for k, v in p["error_codes"].items())
    server = ""
    if p.get("server_queue_ms") is not None or p.get("server_batch_size") is not None:
        server = (
            f"  server: queue {_ms(p.get('server_queue_ms'))}/request, compute "
            f"{_ms(p.get('server_compute_ms'))}/batch, mean batch "
            f"{_num(p.get('server_batch_size'))}"
        )
    shortfall = ""
    if p["mode"] == "open" and p.get("sent_s", p["offered_s"]) < p["offered_s"]:
        shortfall = (
            f"  client sent {p['sent_s']:,.0f} of {p['offered_s']:,.0f} offered/s "
            "(the client is the limit)"
        )
    warning = ""
    if p["requests"] == 0 and errors == 0:
        late = p.get("warmup_requests_past_window") or 0
        warning = "  WARNING: no request sent in the measured window finished" + (
            f"; {late} sent in warm-up were still in flight when it ended (the server is "
            "slower than warm-up + duration)"
            if late
            else ""
        )
    return (
        f"{load:<14} {p['requests_s']:>9,.0f} req/s {p['rows_s']:>10,.0f} rows/s  "
        f"p50 {p['p50_ms']:.2f}  p90 {p['p90_ms']:.2f}  p99 {p['p99_ms']:.2f}  "
        f"p99.9 {p['p999_ms']:.2f} ms  errors {errors}{f' ({codes})' if errors else ''}  "
        f"client CPU {p['client_cpu_cores']:.2f} cores{shortfall}{server}{warning}"
    )


def markdown_table(points: Sequence[Mapping[str, Any]]) -> str:
    """The points as a Markdown table (what benchmarks/README.md quotes)."""
    lines = [
        "| load | requests/s | rows/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors "
        "| client CPU (cores) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        load = (
            f"closed c={p['concurrency']}"
            if p["mode"] == "closed"
            else f"open {p['target_rate']:g}/s"
        )
        lines.append(
            f"| {load} | {p['requests_s']:,.0f} | {p['rows_s']:,.0f} | {p['p50_ms']:.2f} "
            f"| {p['p90_ms']:.2f} | {p['p99_ms']:.2f} | {p['p999_ms']:.2f} | {p['errors']} "
            f"| {p['client_cpu_cores']:.2f} |"
        )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
