"""What a run tells its user: a progress bar, per-epoch JSON lines and a final summary.

``RUN_DIR/metrics.jsonl`` has one object per finished epoch::

    {"epoch": 0, "step": 120, "lr": 0.00098, "seconds": 3.2, "samples_per_s": 41000.0,
     "train": {"rows": ..., "loss": ..., "logloss": ..., "accuracy": ..., "auc": ...},
     "val": {...same keys...}, "best": true}

``train`` metrics are accumulated over the epoch's own training batches as they were trained on
(dropout on, weights moving: a running figure, as Keras reports it, at no extra pass); ``val``
metrics come from a separate pass over the held-out split with the epoch's final weights.

It is rewritten from the checkpointed history at every epoch end (atomically), so after a kill
and ``--resume`` it never holds an epoch twice. ``RUN_DIR/summary.json`` is the final summary
(also the exported ``metrics.json``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

_SHOWN = ("loss", "auc", "accuracy", "rmse")


def write_history(path: str | Path, history: list[dict[str, Any]]) -> None:
    """Rewrite the JSON lines file from ``history`` (tmp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(rec) + "\n" for rec in history))
    os.replace(tmp, path)


def epoch_line(rec: dict[str, Any]) -> str:
    """``epoch 3  train loss 0.1234 auc 0.9512 | val loss 0.1301 auc 0.9467  *`` (* = best)."""

    def fmt(m: dict[str, Any] | None) -> str:
        if not m:
            return "-"
        return " ".join(f"{k} {m[k]:.4f}" for k in _SHOWN if k in m)

    mark = "  *" if rec.get("best") else ""
    return (
        f"epoch {rec['epoch']:>3}  train {fmt(rec['train'])} | val {fmt(rec.get('val'))}"
        f"  ({rec['samples_per_s']:,.0f} samples/s){mark}"
    )


class Progress:
    """A tqdm bar over an epoch's steps showing samples/s and the loss (refreshed every
    ``every`` steps so reading the loss, a device sync, stays rare)."""

    def __init__(self, enabled: bool | None, every: int = 25) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.every = every
        self.bar: Any = None

    def start(self, epoch: int, total: int, done: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done, desc=f"epoch {epoch}", unit="step")
        self.t0, self.samples = time.perf_counter(), 0

    def step(self, n_steps: int, samples: int, loss: Any) -> None:
        if self.bar is None:
            return
        self.samples += samples
        if self.bar.n % self.every == 0:
            rate = self.samples / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix(loss=f"{float(loss):.4f}", samples_s=f"{rate:,.0f}", refresh=False)
        self.bar.update(n_steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
