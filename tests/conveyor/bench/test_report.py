"""Bench report files: strict JSON and readable CSV even for points nothing answered."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from conveyor.bench.loadgen import LoadResult, LoadSpec
from conveyor.bench.report import write_csv, write_json


def _strict(constant: str) -> None:
    raise ValueError(f"non-standard JSON constant {constant}")


def test_point_with_no_answer_writes_null_not_nan(tmp_path: Path) -> None:
    # Every measured request failed (the server went away): no latency sample at all.
    spec = LoadSpec(target="x:1", payloads=(b"",), concurrency=2, duration=1.0)
    point = LoadResult(
        spec=spec, latencies_ms=np.empty(0), errors={"UNAVAILABLE": 7}, scheduled=7,
        client_cpu_s=0.1, wall_s=1.0,
    ).summary()  # fmt: skip
    assert np.isnan(point["p50_ms"])  # in memory a NaN; the files must not say NaN
    document = {"points": [point], "extra": [float("inf"), -float("inf"), 1.5]}
    text = write_json(tmp_path / "serve.json", document).read_text()
    parsed = json.loads(text, parse_constant=_strict)
    p = parsed["points"][0]
    assert p["p50_ms"] is None and p["p999_ms"] is None and p["max_ms"] is None
    assert p["errors"] == 7 and p["error_codes"] == {"UNAVAILABLE": 7}
    assert parsed["extra"] == [None, None, 1.5]

    with write_csv(tmp_path / "serve.csv", [point]).open() as fh:
        row = next(csv.DictReader(fh))
    assert row["p50_ms"] == "" and row["mean_ms"] == "" and row["errors"] == "7"
    assert "nan" not in (tmp_path / "serve.csv").read_text().lower()
