"""Drift test helpers: profile a table with ``conveyor ingest profile`` and feed a monitor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from conveyor.cli import main
from conveyor.engine.drift import DriftMonitor, DriftSettings
from conveyor.engine.model_config import ModelConfig, TensorSpec


def profile(table: pa.Table, label: str, out: Path, bins: int = 20) -> tuple[Path, Path]:
    """Reference statistics of ``table`` as the trainer exports them: (stats.json, spec.json)."""
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "train.parquet")
    args = ["ingest", "profile", str(out / "train.parquet"), "--label", label]
    rc = main([*args, "--out", str(out / "profile"), "--bins", str(bins)])
    assert rc in (0, None)
    return out / "profile" / "stats.json", out / "profile" / "spec.json"


def config_for(spec_path: Path) -> ModelConfig:
    """config.json inputs as the trainer writes them (numeric / categorical with columns)."""
    spec = json.loads(spec_path.read_text())
    numeric = [f["name"] for f in spec.get("numeric", [])]
    categorical = [f["name"] for f in spec.get("categorical", [])]
    inputs = []
    if numeric:
        inputs.append(TensorSpec("numeric", "FP32", (len(numeric),), tuple(numeric)))
    if categorical:
        inputs.append(TensorSpec("categorical", "BYTES", (len(categorical),), tuple(categorical)))
    return ModelConfig(
        name="m",
        platform="torchscript",
        max_batch_size=1024,
        inputs=tuple(inputs),
        outputs=(TensorSpec("probability", "FP32", (1,)),),
    )


def tensors(table: pa.Table, config: ModelConfig) -> list[np.ndarray]:
    """A table's rows as the model inputs (floats; categoricals as UTF-8 bytes, like BYTES)."""
    out = []
    for spec in config.inputs:
        if spec.datatype == "FP32":
            out.append(
                np.column_stack(
                    [table.column(c).to_numpy().astype(np.float32) for c in spec.columns]
                )
            )
        else:
            out.append(
                np.column_stack(
                    [
                        np.array([str(v).encode() for v in table.column(c).to_pylist()], object)
                        for c in spec.columns
                    ]
                )
            )
    return out


def stand_in_model(inputs: list[np.ndarray], center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """A fixed scoring function standing in for the model's probability output."""
    z = np.nan_to_num((inputs[0] - center) / scale).sum(axis=1, keepdims=True)
    return (1 / (1 + np.exp(-z / 3))).astype(np.float32)


def monitor(config: ModelConfig, stats: Path, spec: Path, **settings: Any) -> DriftMonitor:
    return DriftMonitor("m", 1, config, stats, spec, DriftSettings(**settings))


def feed_windows(
    mon: DriftMonitor,
    inputs: list[np.ndarray],
    window: int,
    scaling: tuple[np.ndarray, np.ndarray],
    batch: int = 64,
) -> list[tuple[bool, float, str]]:
    """Feed rows in batches; after every ``window`` rows: (alert, max PSI, worst feature)."""
    rows = len(inputs[0])
    probability = stand_in_model(inputs, *scaling)
    out = []
    for w in range(0, rows - rows % window, window):
        for start in range(w, w + window, batch):
            end = min(start + batch, w + window)
            mon.observe([a[start:end] for a in inputs], [probability[start:end]])
        report = mon.report()
        worst = max(report.features, key=lambda f: f.psi)
        out.append((report.alert, worst.psi, worst.feature))
    return out


def uniform_monitor(
    directory: Path, settings: DriftSettings, metrics: Any = None, prediction: bool = False
) -> DriftMonitor:
    """A monitor of one FP32 column ``x`` profiled as uniform on [0, 1] (20 bins of 5%),
    with no prediction tracked (a BYTES output), or with ``prediction`` an FP32 one."""
    stats = directory / "stats.json"
    shares = [0.05] * 20
    stats.write_text(
        json.dumps(
            {"numeric": {"x": {"edges": np.linspace(0, 1, 21).tolist(), "bin_shares": shares}}}
        )
    )
    config = ModelConfig(
        name="m",
        platform="torchscript",
        max_batch_size=4096,
        inputs=(TensorSpec("x", "FP32", (1,), ("x",)),),
        outputs=(TensorSpec("y", "FP32" if prediction else "BYTES", (1,)),),
    )
    return DriftMonitor("m", 1, config, stats, None, settings, metrics)


class FakeClock:
    """Stands in for ``time`` in conveyor.engine.drift: window ages move only when a test
    calls :meth:`advance`, so a test process that loses the CPU cannot age rows out."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
