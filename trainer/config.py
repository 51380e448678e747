"""TrainConfig: every knob of a training run, with its default and unit."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from conveyor.ingest.formats import FORMATS
from conveyor.trainer.errors import TrainerError
from conveyor.trainer.names import check_model_name

ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
AUTOCAST = ("off", "bf16", "fp16")
# Early-stopping metrics per task; the first is the default. True = higher is better.
METRICS: dict[str, dict[str, bool]] = {
    "binary": {"auc": True, "logloss": False},
    "multiclass": {"accuracy": True, "logloss": False},
    "regression": {"rmse": False},
}
# float32's largest value / 10, see TrainConfig.check.
_MAX_LR = 3.4e37


@dataclass
class TrainConfig:
    """A training run.

    Data:
        source: file, directory, glob or URI read through ``conveyor.ingest``.
        format: ``parquet``, ``csv``, ``json`` or ``ipc``; None (default) = from the file
            extensions (as ``conveyor ingest --format``).
        spec: path of a ``spec.json`` (``stats.json`` is read beside it); None = infer and
            profile on the fly from ``label``.
        label: label column, used only when ``spec`` is None.
        key, weight, timestamp: columns given these roles when the spec is inferred (a key or
            timestamp is not a feature; the weight weighs each row's loss and metrics).
        include_partitions: an inferred spec makes hive partition columns (``day=...``
            directories) features (default False: they go to the spec's ``ignore``).
        out: run directory: checkpoints, ``metrics.jsonl``, ``summary.json``, and the spec and
            stats when profiled here.
        val_fraction: share of rows held out for validation (default 0.2; 0 = none, and then
            no early stopping).
        split_column: integer or timestamp column whose hash picks the held-out rows (default:
            the spec's key when it is one; without, the reader's split by file path and row
            index, see :mod:`conveyor.trainer.split`).
    Model:
        hidden: MLP widths (default 256, 128); activation one of :data:`ACTIVATIONS`;
        dropout probability; layer_norm after each hidden layer; embedding_dim per categorical.
    Optimisation:
        epochs; batch_size rows per rank per step (default 1024); lr peak learning rate
        (default 1e-3); weight_decay (AdamW, default 1e-4, not applied to biases, norms and
        embeddings); warmup_steps optimizer steps of linear warmup, then cosine decay to
        ``min_lr_ratio * lr``; clip_norm max global gradient norm (0 = off); accumulation
        micro-batches per optimizer step; autocast ``bf16``/``fp16``/``off`` (GPU only; CPU
        always runs fp32).
    Control:
        metric early-stopping metric (default per task, see :data:`METRICS`); patience epochs
        without improvement before stopping (0 = never stop early); checkpoint_every optimizer
        steps between checkpoints (0 = only at epoch end); keep_checkpoints how many to keep;
        seed; resume from the newest good checkpoint in ``out``; shuffle_buffer rows;
        prefetch batches the reader prepares ahead; progress bar (None = when on a terminal).
    Export:
        model_repository and model_name: where the servable version is written (None = no
        export); max_batch_size the server may batch up to.
    """

    source: str
    out: str
    format: str | None = None
    spec: str | None = None
    label: str | None = None
    key: str | None = None
    weight: str | None = None
    timestamp: str | None = None
    include_partitions: bool = False
    val_fraction: float = 0.2
    split_column: str | None = None
    hidden: tuple[int, ...] = (256, 128)
    activation: str = "relu"
    dropout: float = 0.1
    layer_norm: bool = False
    embedding_dim: int = 8
    epochs: int = 10
    batch_size: int = 1024
    lr: float = 1e-3
    min_lr_ratio: float = 0.0
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    clip_norm: float = 1.0
    accumulation: int = 1
    autocast: str = "bf16"
    metric: str | None = None
    patience: int = 3
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    seed: int = 0
    resume: bool = False
    shuffle_buffer: int = 65_536
    prefetch: int = 4
    progress: bool | None = None
    model_repository: str | None = None
    model_name: str | None = None
    max_batch_size: int = 1024

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.check()

    def check(self) -> None:
        """Raise :class:`TrainerError` naming the first bad option."""
        if self.format is not None and self.format not in FORMATS:
            raise TrainerError(f"--format must be one of {FORMATS}, got {self.format!r}")
        if (self.spec is None) == (self.label is None):
            raise TrainerError("give exactly one of --spec (a spec.json) or --label (a column)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise TrainerError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if any(h < 1 for h in self.hidden):
            raise TrainerError(f"--hidden widths must be >= 1, got {list(self.hidden)}")
        if self.activation not in ACTIVATIONS:
            raise TrainerError(f"--activation must be one of {ACTIVATIONS}")
        if not 0.0 <= self.dropout < 1.0:
            raise TrainerError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.autocast not in AUTOCAST:
            raise TrainerError(f"--autocast must be one of {AUTOCAST}")
        for name in ("epochs", "batch_size", "accumulation", "embedding_dim", "max_batch_size"):
            if getattr(self, name) < 1:
                raise TrainerError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("warmup_steps", "patience", "checkpoint_every", "prefetch"):
            if getattr(self, name) < 0:
                raise TrainerError(f"--{name.replace('_', '-')} must be >= 0")
        if not 0 <= self.seed < 2**63:
            raise TrainerError(f"--seed must be in [0, 2**63), got {self.seed}")
        if self.keep_checkpoints < 1:
            raise TrainerError("--keep-checkpoints must be >= 1")
        # math.isfinite first: every comparison with NaN is False, so `nan <= 0` let a NaN
        # --lr through to torch (a traceback) and an infinite one trained NaN for a whole run.
        for name in ("lr", "weight_decay", "clip_norm", "min_lr_ratio"):
            if not math.isfinite(getattr(self, name)):
                raise TrainerError(
                    f"--{name.replace('_', '-')} must be a finite number, got {getattr(self, name)}"
                )
        if self.lr <= 0 or self.weight_decay < 0 or self.clip_norm < 0:
            raise TrainerError("--lr must be > 0; --weight-decay and --clip-norm >= 0")
        if self.lr >= _MAX_LR:
            # AdamW's first step is lr / (1 - 0.9), passed to torch as a float32: past this
            # it overflows inside the optimizer (a traceback) instead of merely diverging.
            raise TrainerError(f"--lr must be < {_MAX_LR:.3g}, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            # The cosine floor as a share of --lr: below 0 the rate turns negative (the
            # optimizer climbs the loss), above 1 the "decay" raises it past the peak.
            raise TrainerError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.shuffle_buffer < 1:
            # The reader's window is max(shuffle_buffer, batch_size) rows, so 0 or a negative
            # size silently meant one batch: refused, as a typo rather than a setting.
            raise TrainerError(
                f"--shuffle-buffer must be >= 1 rows, got {self.shuffle_buffer} (values up to "
                "--batch-size shuffle within one batch's window)"
            )
        if (self.model_repository is None) != (self.model_name is None):
            raise TrainerError("--model-repository and --model-name go together")
        if self.model_name is not None:
            # The export's own rule, checked now: a bad name must not cost a whole training run.
            check_model_name(self.model_name, "--model-name")

    def metric_for(self, task: str) -> tuple[str, bool]:
        """The early-stopping metric for ``task`` and whether higher is better."""
        choices = METRICS[task]
        name = self.metric or next(iter(choices))
        if name not in choices:
            raise TrainerError(f"--metric {name!r} does not apply to {task} (use {list(choices)})")
        return name, choices[name]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**data)
