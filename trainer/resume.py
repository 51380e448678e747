"""What ``--resume`` may change, and what it must not.

A checkpoint holds the model, optimizer, scheduler and reader state of one run. Options that
shape that state, or pick and order the rows it was taken over, must be the checkpoint's:
changed, the resumed run would silently train another model on other batches, or fail deep
in a ``load_state_dict``. They are compared up front and a mismatch is one line naming the
option, the checkpoint's value and the new one (as PyTorch Lightning and the Hugging Face
Trainer users expect: change them by starting a new run in another ``--out``).

``--epochs`` may change: more epochs continue a run, finished or not, to the new total (the
cosine schedule is laid over the new total from the step reached, so the weights are no
longer those of an uninterrupted run of either length); fewer than the run has already
begun is an error. A run that stopped early stays stopped. Everything else (patience,
checkpointing, prefetch, dropout, clipping, autocast, the export target) applies from the
resume point on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conveyor.trainer.config import METRICS, TrainConfig
from conveyor.trainer.errors import CheckpointError

# TrainConfig field -> the flag a user types. The spec and stats are kept from the run's
# first start (data.prepare), so label/key/weight/timestamp changes would be ignored; the
# optimizer and scheduler state restore lr, weight decay and the warmup shape.
MUST_MATCH: dict[str, str] = {
    "label": "--label",
    "key": "--key",
    "weight": "--weight",
    "timestamp": "--timestamp",
    "include_partitions": "--include-partition-columns",
    "val_fraction": "--val-fraction",
    "split_column": "--split-column",
    "batch_size": "--batch-size",
    "shuffle_buffer": "--shuffle-buffer",
    "seed": "--seed",
    "accumulation": "--accumulation",
    "hidden": "--hidden",
    "activation": "--activation",
    "layer_norm": "--layer-norm",
    "embedding_dim": "--embedding-dim",
    "lr": "--lr",
    "weight_decay": "--weight-decay",
    "warmup_steps": "--warmup-steps",
    "min_lr_ratio": "--min-lr-ratio",
    "metric": "--metric",
}


def _show(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def check_options(saved: Mapping[str, Any], cfg: TrainConfig, where: str | Path, task: str) -> None:
    """Raise :class:`CheckpointError` for the first :data:`MUST_MATCH` option that differs.

    ``saved``: the checkpoint's config; ``task``: resolves an unset ``--metric`` to the task's
    default, so giving the default explicitly is no change.
    """
    new = cfg.to_dict()
    default_metric = next(iter(METRICS[task]))
    for name, flag in MUST_MATCH.items():
        if name not in saved:  # written before the option existed
            continue
        old_value, new_value = saved[name], new[name]
        if name == "metric":
            old_value, new_value = old_value or default_metric, new_value or default_metric
        if isinstance(old_value, (list, tuple)):
            old_value, new_value = list(old_value), list(new_value)
        if old_value != new_value:
            raise CheckpointError(
                f"--resume: {flag} is {_show(new_value)} but checkpoint {where} was written "
                f"with {_show(old_value)}; they must match (or start a new run in another --out)"
            )


# TrainConfig field -> flag, for the options that make the run's spec.json and stats.json
# (data.prepare records them beside those files as spec_options.json). A resumed run reuses
# the files only when these agree: with no checkpoint yet, check_options never ran, and a
# changed --label trained and exported a model of the old label without a word.
SPEC_OPTIONS: dict[str, str] = {
    "spec": "--spec",
    "label": "--label",
    "key": "--key",
    "weight": "--weight",
    "timestamp": "--timestamp",
    "include_partitions": "--include-partition-columns",
}


def spec_options(cfg: TrainConfig) -> dict[str, Any]:
    """The :data:`SPEC_OPTIONS` of ``cfg`` as recorded (``spec`` as an absolute path)."""
    values = {name: getattr(cfg, name) for name in SPEC_OPTIONS}
    if values["spec"] is not None:
        values["spec"] = str(Path(values["spec"]).resolve())
    return values


def check_spec_options(saved: Mapping[str, Any], cfg: TrainConfig, where: str | Path) -> None:
    """Raise :class:`CheckpointError` for the first :data:`SPEC_OPTIONS` option that differs
    from ``saved``, the options recorded with the run's spec ``where``."""
    new = spec_options(cfg)
    for name, flag in SPEC_OPTIONS.items():
        if name in saved and saved[name] != new[name]:
            raise CheckpointError(
                f"--resume: {flag} is {_show(new[name])} but the run's spec {where} was made "
                f"with {_show(saved[name])}; they must match (or start a new run in another "
                "--out)"
            )


def check_world_size(saved: int | None, world_size: int, where: str | Path) -> None:
    if saved != world_size:
        raise CheckpointError(
            f"--resume: --nproc (world size) is {world_size} but checkpoint {where} was "
            f"written by {saved} ranks; they must match"
        )


def check_epochs(state: Mapping[str, Any], epochs: int, where: str | Path) -> None:
    """Raise :class:`CheckpointError` when the checkpoint's run state (``epoch``, ``micro``)
    has already begun more epochs than ``epochs``."""
    begun = state["epoch"] + (1 if state["micro"] else 0)
    if epochs < begun:
        raise CheckpointError(
            f"--resume: --epochs is {epochs} but checkpoint {where} has already begun "
            f"{begun} epochs; give --epochs {begun} or more"
        )


def apply_epochs(state: Any, epochs: int, where: str | Path) -> bool:
    """Fit a restored run state (:class:`~conveyor.trainer.loop.RunState`) to ``--epochs``.

    Returns True when the run has epochs left to train. Raises :class:`CheckpointError` when
    the run has already begun more epochs than ``epochs``.
    """
    check_epochs({"epoch": state.epoch, "micro": state.micro}, epochs, where)
    if state.stopped_early:
        return False
    state.done = state.epoch >= epochs
    return not state.done
