"""Tiny datasets, specs, configs and a CLI runner shared by the trainer tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from conveyor.trainer.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]


def tabular(n: int, seed: int = 0, task: str = "binary") -> pa.Table:
    """``id`` key, 3 numeric features, a string and an integer categorical, and a label that
    depends on all of them (learnable, with noise)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * [1.0, 10.0, 0.1] + [0.0, 50.0, 1.0]
    color = rng.choice(["red", "green", "blue"], size=n)
    shop = rng.choice([7, 11, 13, 42], size=n)
    z = x[:, 0] + (x[:, 1] - 50) / 10 - (color == "red") * 1.5 + (shop == 42) * 1.0
    z = z + rng.normal(scale=0.5, size=n)
    columns: dict[str, Any] = {
        "id": np.arange(n, dtype=np.int64),
        "x0": x[:, 0],
        "x1": x[:, 1],
        "x2": x[:, 2],
        "color": pa.array(color, pa.string()),
        "shop": shop.astype(np.int64),
    }
    if task == "binary":
        columns["y"] = (z > 0).astype(np.int64)
    elif task == "multiclass":
        columns["y"] = pa.array(np.array(["lo", "mid", "hi"])[np.digitize(z, [-1, 1])])
    else:
        columns["y"] = z * 3.0 + 100.0
    return pa.table(columns)


def write_spec(tmp: Path, table: pa.Table, task: str = "binary") -> Path:
    """A spec.json with shop as an integer categorical (inference would call it numeric)."""
    from conveyor.ingest.spec import CategoricalFeature, FeatureSpec, Label, NumericFeature

    classes = {"binary": [0, 1], "multiclass": ["hi", "lo", "mid"], "regression": None}[task]
    spec = FeatureSpec(
        label=Label("y", task, classes),
        numeric=[NumericFeature(n) for n in ("x0", "x1", "x2")],
        categorical=[
            CategoricalFeature("color", vocab=["red", "green"]),  # blue is out of vocabulary
            CategoricalFeature("shop", vocab=[7, 11, 13, 42]),
        ],
        key="id",
    )
    path = tmp / "spec" / "spec.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    spec.save(path)
    return path


def make_config(tmp_path: Path, source: Path, **overrides: Any) -> TrainConfig:
    """A small, fast run: tiny MLP, few epochs, no progress bar."""
    base: dict[str, Any] = {
        "source": str(source),
        "out": str(tmp_path / "run"),
        "label": "y",
        "key": "id",
        "hidden": (16, 8),
        "epochs": 3,
        "batch_size": 32,
        "warmup_steps": 5,
        "checkpoint_every": 10,
        "progress": False,
        "prefetch": 2,
    }
    base.update(overrides)
    return TrainConfig(**base)


def run_cli(*args: str, timeout: float = 120, **popen: Any) -> subprocess.CompletedProcess[str]:
    """``python -m conveyor ...`` with one torch thread per process (2 shared cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **popen,
    )


def hold_after_checkpoint(step: int) -> dict[str, str]:
    """Environment for a training run that stops moving once its checkpoint of ``step``
    (or a later one) is written, until killed (see hold_after_checkpoint/sitecustomize.py)."""
    hook = str(Path(__file__).parent / "hold_after_checkpoint")
    path = os.pathsep.join(p for p in (hook, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path,
            "CONVEYOR_TEST_HOLD_STEP": str(step)}  # fmt: skip


def assert_resumed_like_uninterrupted(ref: Path, out: Path, steps: int) -> None:
    """The resumed run in ``out`` ended where the uninterrupted one in ``ref`` did:
    same step (``steps``), same weights, same per-epoch metrics (two epochs)."""
    import torch

    from conveyor.trainer.checkpoint import load_latest

    a, b = load_latest(ref)[1], load_latest(out)[1]
    assert a["state"]["step"] == b["state"]["step"] == steps
    for name, w in a["model"].items():
        torch.testing.assert_close(b["model"][name], w, atol=1e-6, rtol=1e-6)
    ref_lines = (ref / "metrics.jsonl").read_text().splitlines()
    got_lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(got_lines) == len(ref_lines) == 2
    for x, y in zip(ref_lines, got_lines, strict=True):
        rx, ry = json.loads(x), json.loads(y)
        assert rx["train"] == ry["train"] and rx["val"] == ry["val"]
