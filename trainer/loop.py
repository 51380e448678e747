"""The training loop of one rank: AdamW, warmup + cosine, clipping, accumulation, autocast,
validation with early stopping, checkpoints and exact resume.

Loss normalisation: each micro-batch's loss is the weighted sum of row losses divided by the
batch's total weight over all ranks (one scalar all-reduce), times the world size (DDP averages
gradients over ranks), divided by the micro-batches in the accumulation group. So every
optimizer step follows the mean gradient over the rows it saw, whatever their split across
ranks, and a rank whose batch is empty (the reader's remainder rule, or all rows quarantined)
contributes a zero loss and still runs backward and every collective with the others.

Exact resume: checkpoints are taken only at optimizer-step boundaries (no half-accumulated
gradients) and hold the model, optimizer, scheduler, grad scaler, every rank's RNG states and
reader position, the running train metrics of the epoch, the early-stopping state and the
history. Restoring all of them makes the remaining steps compute what the uninterrupted run
computed; on CPU with the same seed the final weights agree to float tolerance.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from conveyor.ingest.errors import LoaderStateError
from conveyor.ingest.loader import Batch
from conveyor.trainer import checkpoint, resume
from conveyor.trainer.config import TrainConfig
from conveyor.trainer.data import load_prepared, make_loaders, prepare
from conveyor.trainer.errors import CheckpointError, TrainerError
from conveyor.trainer.launch import DistEnv, env_from_environ, init_process_group, set_threads
from conveyor.trainer.metrics import MetricSums, row_losses
from conveyor.trainer.model import MLP_LAYOUT, build_model, upgrade_mlp_keys
from conveyor.trainer.report import Progress, epoch_line, write_history
from conveyor.trainer.schedule import make_scheduler

log = logging.getLogger("conveyor.trainer")
CKPT_VERSION = 1


@dataclass
class RunState:
    """Progress of a run. ``epoch``: the epoch in progress (or next); ``micro``: its batches
    consumed; ``step``: optimizer steps done; early stopping: ``best`` value of the metric at
    ``best_epoch`` and ``bad_epochs`` since; ``done`` once training has ended;
    ``stopped_early`` once the patience has run out (also on the last epoch, so that a run
    resumed with more ``--epochs`` stays stopped, as the uninterrupted run would have; the
    summary calls it stopping early only when epochs were left, see :meth:`Trainer.summary`)."""

    epoch: int = 0
    micro: int = 0
    step: int = 0
    samples: int = 0
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    done: bool = False
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: not on biases, norms or embedding tables."""
    decay, other = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and not name.startswith("embeddings") else other).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One rank's training run; :meth:`fit` trains and returns the summary (rank 0)."""

    def __init__(self, cfg: TrainConfig, env: DistEnv) -> None:
        self.cfg, self.env = cfg, env
        self.device = torch.device(env.device)
        self.spec, self.stats = load_prepared(cfg)
        self.task = self.spec.label.task
        self.metric, self.higher_better = cfg.metric_for(self.task)
        # Rank 0 counts rows first and caches them in the run directory; the other ranks
        # wait, then read the counts instead of each scanning the source again.
        if env.distributed and not env.is_main:
            dist.barrier()
        self.train_loader, self.val_loader = make_loaders(
            cfg, self.spec, self.stats, world_size=env.world_size, rank=env.rank
        )
        if env.distributed and env.is_main:
            dist.barrier()
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise TrainerError(f"{cfg.source}: no training rows")
        _seed(cfg.seed)  # the same initial weights on every rank
        self.model = build_model(
            self.spec,
            self.stats,
            hidden=cfg.hidden,
            activation=cfg.activation,
            dropout=cfg.dropout,
            layer_norm=cfg.layer_norm,
            embedding_dim=cfg.embedding_dim,
        ).to(self.device)
        self.net: torch.nn.Module = self.model
        if env.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, cfg.weight_decay), lr=cfg.lr)
        opt_steps = math.ceil(self.steps_per_epoch / cfg.accumulation)
        self.scheduler = make_scheduler(
            self.optimizer,
            warmup=cfg.warmup_steps,
            total=cfg.epochs * opt_steps,
            min_ratio=cfg.min_lr_ratio,
        )
        cuda = self.device.type == "cuda"
        self.amp_dtype = (
            {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.autocast) if cuda else None
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and cfg.autocast == "fp16")
        label_norm = (self.model.label_mean, self.model.label_std)
        self.label_norm = label_norm
        self.train_sums = MetricSums(self.task, self.device, label_norm)
        self.state = RunState()
        self.best_model: dict[str, torch.Tensor] | None = None
        self._warned_undefined_metric = False
        self.run_dir = Path(cfg.out)
        self.progress = Progress(cfg.progress if env.is_main else False)
        _seed(cfg.seed + 1 + env.rank)  # dropout: a different stream per rank
        self._resume_or_start()
        # --resume of a run that had already finished: nothing to train; export only if the
        # kill came between the last checkpoint and the export.
        self.resumed_finished = self.state.done

    # -- checkpoints ---------------------------------------------------------------------------
    def _resume_or_start(self) -> None:
        if not self.cfg.resume:
            check_fresh_run(self.cfg)
            return
        latest = checkpoint.load_latest(self.run_dir)
        if latest is None:
            if self.env.is_main:
                log.info("--resume: no checkpoint in %s, starting from scratch", self.run_dir)
            return
        path, ckpt = latest
        # Before any load_state_dict: a changed option is named, not a size mismatch.
        _check_checkpoint(path, ckpt, self.cfg, self.env.world_size, self.task)
        saved = ckpt.get("config", {})
        if ckpt.get("mlp_layout", 1) < MLP_LAYOUT and saved.get("dropout", 0.1) == 0:
            # Written when dropout 0 meant no Dropout layers: renumber, so that checkpoints of
            # runs started before the change still resume (with any --dropout).
            for name in ("model", "best_model"):
                if ckpt.get(name) is not None:
                    ckpt[name] = upgrade_mlp_keys(
                        ckpt[name], len(saved["hidden"]), bool(saved.get("layer_norm"))
                    )
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            # The options that shape the model are compared first (resume.check_options);
            # this is a checkpoint made by other code, not a flag to change. torch's first
            # line only says "Error(s) in loading state_dict": show the one after it.
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise CheckpointError(
                f"--resume: checkpoint {path} holds another model than this run builds "
                f"({lines[min(1, len(lines) - 1)] if lines else exc}); start a new run in "
                "another --out"
            ) from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.best_model = ckpt["best_model"]
        self.state = RunState(**ckpt["state"])
        was_done = self.state.done
        more = resume.apply_epochs(self.state, self.cfg.epochs, path)
        if saved.get("epochs", self.cfg.epochs) != self.cfg.epochs:
            # The scheduler restored only its step count; the optimizer still holds the old
            # schedule's rate until the next step, so put it on the new schedule now.
            step = self.scheduler.last_epoch
            for group, base, factor in zip(
                self.optimizer.param_groups,
                self.scheduler.base_lrs,
                self.scheduler.lr_lambdas,
                strict=True,
            ):
                group["lr"] = base * factor(step)
            if self.env.is_main:
                log.info(
                    "--resume: --epochs %d (checkpoint: %s)%s",
                    self.cfg.epochs,
                    saved["epochs"],
                    ", continuing the finished run" if was_done and more else "",
                )
        mine = ckpt["ranks"][self.env.rank]
        try:
            self.train_loader.load_state_dict(mine["loader"])
        except LoaderStateError as exc:
            # The checkpoint's reader position is only meaningful over the rows it was taken
            # over: files added, removed or rewritten since cannot continue exactly.
            raise CheckpointError(
                f"--resume: {self.cfg.source} is not the data checkpoint {path} was taken over "
                f"({exc}); resume with the original data, or start a new run in another --out"
            ) from None
        self.train_sums.load_state_dict(mine["train_sums"])
        _set_rng_state(mine["rng"])
        if self.env.is_main:
            log.info(
                "resumed from %s (epoch %d, step %d)", path.name, self.state.epoch, self.state.step
            )

    def _checkpoint(self) -> None:
        """Gather every rank's RNG and reader state; rank 0 writes one atomic file."""
        mine = {
            "rng": _rng_state(),
            "loader": self.train_loader.state_dict(),
            "train_sums": self.train_sums.state_dict(),  # this rank's rows only until all-reduced
        }
        ranks: list[Any] = [mine]
        if self.env.distributed:
            ranks = [None] * self.env.world_size if self.env.is_main else []
            dist.gather_object(mine, ranks if self.env.is_main else None, dst=0)
        if not self.env.is_main:
            return
        state = {
            "version": CKPT_VERSION,
            "mlp_layout": MLP_LAYOUT,
            "world_size": self.env.world_size,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_model": self.best_model,
            "state": asdict(self.state),
            "ranks": ranks,
        }
        checkpoint.save_checkpoint(
            self.run_dir, self.state.step, state, keep=self.cfg.keep_checkpoints
        )

    # -- steps ---------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _tensors(
        self, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The batch on the device; the weight is None without a weight column (all rows 1)."""
        nb = self.device.type == "cuda"
        x = batch.features.to(self.device, non_blocking=nb)
        c = batch.categorical.to(self.device, non_blocking=nb)
        y = batch.label.to(self.device, non_blocking=nb)
        w = batch.weight.to(self.device, non_blocking=nb) if batch.weight is not None else None
        return x, c, y, w

    def _micro_step(self, batch: Batch, group_len: int, sync: bool) -> torch.Tensor:
        x, c, y, w = self._tensors(batch)
        ctx = contextlib.nullcontext() if sync or not self.env.distributed else self.net.no_sync()
        with ctx:
            with self._autocast():
                logits = self.net(x, c)
            losses = row_losses(self.task, logits, y, self.label_norm)
            loss_sum = losses.sum() if w is None else (losses * w).sum()
            if self.env.distributed:
                total_w = (
                    torch.tensor(float(len(y)), device=self.device)
                    if w is None
                    else w.sum().detach().clone()
                )
                dist.all_reduce(total_w)
                scale = self.env.world_size / total_w.clamp_min(1e-12)
            elif w is None:
                scale = 1.0 / max(len(y), 1)
            else:
                scale = 1.0 / w.sum().clamp_min(1e-12)
            loss = loss_sum * scale / group_len
            self.scaler.scale(loss).backward()
        self.train_sums.update(logits, y, w, losses)
        return loss * group_len

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def _train_epoch(self) -> float:
        """Run the rest of the current epoch; returns its wall time in seconds."""
        st, cfg, steps = self.state, self.cfg, self.steps_per_epoch
        if st.micro == 0:
            self.train_loader.set_epoch(st.epoch)
        if st.epoch + 1 < cfg.epochs:  # early stopping may waste this read
            self.train_loader.read_ahead(st.epoch + 1)
        self.net.train()
        self.progress.start(st.epoch, steps, st.micro)
        t0 = time.perf_counter()
        for batch in self.train_loader:
            first = (st.micro // cfg.accumulation) * cfg.accumulation
            group_len = min(cfg.accumulation, steps - first)
            last_of_group = st.micro + 1 == first + group_len
            loss = self._micro_step(batch, group_len, sync=last_of_group)
            st.micro += 1
            st.samples += len(batch)
            if last_of_group:
                self._optimizer_step()
                st.step += 1
                if (
                    cfg.checkpoint_every
                    and st.step % cfg.checkpoint_every == 0
                    and st.micro < steps
                ):
                    self._checkpoint()
            self.progress.step(1, len(batch) * self.env.world_size, loss)
        self.progress.close()
        return time.perf_counter() - t0

    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Metrics on the validation split, over all ranks (None without a split)."""
        if self.val_loader is None:
            return None
        sums = MetricSums(self.task, self.device, self.label_norm)
        self.model.eval()
        self.val_loader.set_epoch(0)
        for batch in self.val_loader:
            x, c, y, w = self._tensors(batch)
            with self._autocast():
                logits = self.model(x, c)
            sums.update(logits, y, w, row_losses(self.task, logits, y, self.label_norm))
        sums.all_reduce()
        return sums.result()

    def _end_epoch(self, seconds: float) -> None:
        st, cfg = self.state, self.cfg
        self.train_sums.all_reduce()
        train = self.train_sums.result()
        if not train.get("rows"):
            # Every rank sees the same reduced count, so every rank stops here, before any
            # export: a model fitted to no rows must not be published.
            raise TrainerError(
                f"{cfg.source}: epoch {st.epoch} had no valid training rows: every row read was "
                "quarantined or invalid (see the run directory's quarantine.parquet and "
                "`conveyor ingest validate`)"
            )
        if "loss" not in train:
            # MetricSums leaves the loss out when the weights summed to <= 0: every row's
            # loss was multiplied by 0, so nothing was learned and no metric is defined.
            raise TrainerError(
                f"{cfg.source}: epoch {st.epoch}: the weight column {self.spec.weight!r} sums "
                f"to <= 0 over its {int(train['rows'])} training rows: no row counted in the "
                "loss; fix the weights (they must be >= 0, some > 0), or train without --weight"
            )
        if not math.isfinite(train["loss"]):
            # As Lightning's check_finite: a diverged run stops here, on every rank (the sums
            # are all-reduced), before its checkpoint and before any export, so a NaN model
            # is never published as a new version.
            raise TrainerError(
                f"{cfg.source}: epoch {st.epoch}: the training loss is {train['loss']} (the "
                "weights diverged); nothing was exported. Start again in a new --out with a "
                "lower --lr, a longer --warmup-steps or --clip-norm, and check the data for "
                "extreme values"
            )
        val = self.evaluate()
        rec: dict[str, Any] = {
            "epoch": st.epoch,
            "step": st.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 3),
            "samples_per_s": train.get("rows", 0.0) / max(seconds, 1e-9),
            "train": train,
            "val": val,
            "best": False,
        }
        watched = (val or {}).get(self.metric)
        if val and watched is None and not self._warned_undefined_metric:
            # AUC of a validation split with one class, say: nothing to compare, so no epoch
            # counts as better or worse and the last epoch's weights are exported.
            self._warned_undefined_metric = True
            log.warning(
                "validation %s is undefined in epoch %d (e.g. one class in the validation "
                "split): early stopping and best-model selection skip the epochs without it",
                self.metric,
                st.epoch,
            )
        if watched is not None:
            better = st.best is None or (
                watched > st.best if self.higher_better else watched < st.best
            )
            if better:
                st.best, st.best_epoch, st.bad_epochs = watched, st.epoch, 0
                self.best_model = copy.deepcopy(
                    {k: v.cpu() for k, v in self.model.state_dict().items()}
                )
                rec["best"] = True
            else:
                st.bad_epochs += 1
        st.history.append(rec)
        st.epoch += 1
        st.micro = 0
        self.train_sums.reset()
        if cfg.patience and st.bad_epochs >= cfg.patience:
            st.done = st.stopped_early = True
        if st.epoch >= cfg.epochs:
            st.done = True
        self._checkpoint()
        if self.env.is_main:
            write_history(self.run_dir / "metrics.jsonl", st.history)
            log.info(epoch_line(rec))

    def fit(self) -> dict[str, Any] | None:
        """Train to the end (or early stop); rank 0 returns the summary, others None."""
        st = self.state
        if self.env.is_main and st.history:
            write_history(self.run_dir / "metrics.jsonl", st.history)
        t0 = time.perf_counter()
        try:
            while not st.done:
                seconds = self._train_epoch()
                self._end_epoch(seconds)
                if self.stopped_early and self.env.is_main:
                    log.info(
                        "early stop: no %s improvement for %d epochs", self.metric, st.bad_epochs
                    )
        finally:
            self.train_loader.close()  # an epoch read ahead that will not run
        if not self.env.is_main:
            return None
        return self.summary(time.perf_counter() - t0)

    @property
    def stopped_early(self) -> bool:
        """The patience ran out before ``--epochs`` were trained: a run whose patience runs
        out on its last epoch trained them all, and did not stop early."""
        return self.state.stopped_early and self.state.epoch < self.cfg.epochs

    def final_model(self) -> torch.nn.Module:
        """The model to export: the best epoch's weights when validating, else the last."""
        if self.best_model is None:
            return self.model
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.best_model)
        return model

    def summary(self, seconds: float) -> dict[str, Any]:
        st = self.state
        best = next((r for r in st.history if r["epoch"] == st.best_epoch), None)
        return {
            "task": self.task,
            "metric": self.metric,
            "best_epoch": st.best_epoch if best else None,
            "best": best,
            "last": st.history[-1] if st.history else None,
            "epochs": len(st.history),
            "steps": st.step,
            "stopped_early": self.stopped_early,
            "world_size": self.env.world_size,
            "seconds_this_process": round(seconds, 3),
            "history": st.history,
            "config": self.cfg.to_dict(),
        }


def _previous_export(cfg: TrainConfig) -> str | None:
    """The version a finished run already exported (from its summary.json), if any, and only
    if it is in the export target asked for now (``--model-repository`` / ``--model-name``):
    a resume with another target exports there, as the target applies from the resume on."""
    import json

    path = Path(cfg.out) / "summary.json"
    if not path.exists():
        return None
    exported = json.loads(path.read_text()).get("exported")
    if not exported or not Path(exported).is_dir():
        return None
    if cfg.model_repository is not None:
        assert cfg.model_name is not None  # TrainConfig.check: both or neither
        target = Path(cfg.model_repository).resolve() / cfg.model_name
        if Path(exported).resolve().parent != target:
            return None
    return exported


def check_fresh_run(cfg: TrainConfig) -> None:
    """A run without ``--resume`` must not write over the checkpoints of another."""
    if not cfg.resume and checkpoint.list_checkpoints(cfg.out):
        raise TrainerError(
            f"{cfg.out} holds checkpoints of an earlier run: pass --resume to continue it, "
            "or choose another --out"
        )


def _check_checkpoint(
    path: Path, ckpt: dict[str, Any], cfg: TrainConfig, world_size: int, task: str
) -> None:
    """Raise :class:`CheckpointError` when ``--resume`` cannot continue from ``ckpt``: another
    format, world size, an option that must match (:mod:`~conveyor.trainer.resume`), or fewer
    ``--epochs`` than it has begun."""
    if ckpt.get("version") != CKPT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {ckpt.get('version')}, this trainer reads {CKPT_VERSION}"
        )
    resume.check_world_size(ckpt.get("world_size"), world_size, path)
    resume.check_options(ckpt.get("config", {}), cfg, path, task)
    resume.check_epochs(ckpt["state"], cfg.epochs, path)


def check_resume(cfg: TrainConfig, world_size: int) -> None:
    """``--resume`` checked against the newest checkpoint by the process that starts the
    workers, before it starts them (after :func:`~conveyor.trainer.data.prepare`): a changed
    option is then one line from that process. Each worker checks again as it restores."""
    if not cfg.resume:
        return
    latest = checkpoint.load_latest(cfg.out)
    if latest is None:
        return
    spec, _ = load_prepared(cfg)
    _check_checkpoint(*latest, cfg, world_size, spec.label.task)


# Seconds the main thread lets go of the GIL before a distributed worker shuts down.
_GLOO_RELEASE_WAIT = 0.05


def _let_gloo_release_work() -> None:
    """Give gloo's worker threads the GIL before this process winds down.

    A gloo worker thread drops each finished collective after the caller's wait has
    returned. When the work holds tensors that Python has seen (gather_object's, the
    metric sums), dropping it takes the GIL. If the interpreter is already
    finalising by then, CPython ends that thread inside C++ code, and the process
    aborts ("terminate called without an active exception", SIGABRT; seen in about
    1 run in 20 of a 2-rank job, with a gdb backtrace through
    ProcessGroupGloo::runLoop -> ~AsyncBarrierWork -> decref_pyobject -> take_gil).
    Sleeping releases the GIL, so the waiting threads take it and finish now.
    """
    time.sleep(_GLOO_RELEASE_WAIT)


def run_worker(
    cfg: TrainConfig, env: DistEnv | None = None, *, prepared: bool = False
) -> dict[str, Any] | None:
    """Everything one rank does: join the group, train, and (rank 0) export and summarise.

    ``prepared``: :func:`~conveyor.trainer.data.prepare` already ran (the CLI runs it before
    starting workers); under torchrun nobody did, so rank 0 does while the others wait.
    """
    import json

    env = env or env_from_environ()
    set_threads(env)
    init_process_group(env)
    try:
        if env.is_main and not prepared:
            prepare(cfg)
        if env.distributed:
            dist.barrier()
        trainer = Trainer(cfg, env)
        summary = trainer.fit()
        if summary is not None:
            previous = _previous_export(cfg) if trainer.resumed_finished else None
            if previous is not None:
                summary["exported"] = previous
                log.info("this run had finished and was exported as %s already", previous)
            elif cfg.model_repository is not None:
                from conveyor.trainer.export import export_version

                assert cfg.model_name is not None  # TrainConfig.check: both or neither
                version = export_version(
                    cfg.model_repository,
                    cfg.model_name,
                    trainer.final_model(),
                    trainer.spec,
                    trainer.stats,
                    summary,
                    max_batch_size=cfg.max_batch_size,
                    source_types={f.name: str(f.type) for f in trainer.train_loader.source.schema},
                )
                summary["exported"] = str(version)
                log.info("exported %s", version)
            (Path(cfg.out) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if env.distributed:
            dist.barrier()
        return summary
    finally:
        if env.distributed and dist.is_initialized():
            _let_gloo_release_work()
            dist.destroy_process_group()
