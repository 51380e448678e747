"""Trainer throughput on the demo fraud data, all measured in one run on the same data and model.

(a) the trainer (conveyor.trainer, one process: reader thread, metrics, checkpoints, epoch-end
    bookkeeping included) against a minimal hand-written torch loop over tensors already in
    memory: same model, optimizer, batch size, threads. Target: >= 0.9x.
(b) the ingest reader alone (same shard, shuffle and batch size, no training) against the
    trainer. Target: >= 3x, so the reader is never the bottleneck.
(c) 2-process DDP (gloo, one thread each, through torch's elastic launcher), for the record:
    on 2 cores it cannot beat one process with two threads.

Threads: ``--threads`` (default 2) for the single-process runs. On a machine shared with other
jobs, two intra-op threads can be several times slower than one (OpenMP threads wait on each
other when a core is taken), which is why the figures are quoted for both settings.

Samples/s are training rows per second of the training epochs (validation is off: it measures
a different loop). The machine is shared, and its load changes over seconds, so the three
single-process measurements are interleaved: ``--rounds`` rounds of (hand-written epoch, trainer
run, reader epoch), each after a warm-up, and each figure is the best over the rounds. Beside
wall-clock rates the script prints rates per CPU-second of this process (all its threads), which
other jobs on the machine disturb far less; the trainer's CPU figure covers its whole run,
start-up, first epoch and checkpoints included, so it is the conservative one.

Usage: python benchmarks/train_bench.py [--rows 200000] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from conveyor.demo.fraud_data import FraudDataConfig, write_dataset
from conveyor.trainer.config import TrainConfig
from conveyor.trainer.data import load_prepared, make_loaders, prepare
from conveyor.trainer.launch import DistEnv, launch
from conveyor.trainer.loop import run_worker
from conveyor.trainer.model import build_model


def _config(data: Path, out: Path, args: argparse.Namespace, epochs: int) -> TrainConfig:
    return TrainConfig(
        source=str(data),
        out=str(out),
        label="is_fraud",
        key="transaction_id",
        timestamp="ts",
        val_fraction=0.0,
        hidden=tuple(args.hidden),
        batch_size=args.batch,
        epochs=epochs,
        checkpoint_every=0,  # epoch-end checkpoints only, as a real run would take
        patience=0,
        progress=False,
        warmup_steps=10,
    )


def trainer_rate(cfg: TrainConfig) -> tuple[float, float]:
    """(wall, cpu) samples/s of a fresh single-process trainer run: wall over its second epoch
    (the first warms up); CPU over the whole run, start-up and checkpoints included."""
    shutil.rmtree(cfg.out, ignore_errors=True)
    prepare(cfg)
    cpu0 = time.process_time()
    summary = run_worker(cfg, DistEnv(), prepared=True)
    cpu = time.process_time() - cpu0
    rows = sum(rec["train"]["rows"] for rec in summary["history"])
    return summary["history"][-1]["samples_per_s"], rows / cpu


class Reader:
    """Rows/s of the training reader alone (one thread reads ahead, as in the trainer)."""

    def __init__(self, cfg: TrainConfig) -> None:
        spec, stats = load_prepared(cfg)
        self.loader, _ = make_loaders(cfg, spec, stats, world_size=1, rank=0)
        self.epoch = 0
        self.rate()  # warm-up

    def rate(self) -> tuple[float, float]:
        """(wall, cpu) rows/s of one epoch."""
        self.loader.set_epoch(self.epoch)
        self.epoch += 1
        t0, cpu0, rows = time.perf_counter(), time.process_time(), 0
        for batch in self.loader:
            rows += len(batch)
        return rows / (time.perf_counter() - t0), rows / (time.process_time() - cpu0)


class HandWritten:
    """The minimal loop: in-memory tensors, randperm batches, forward, backward, the same
    gradient clipping and AdamW step as the trainer."""

    def __init__(self, cfg: TrainConfig) -> None:
        spec, stats = load_prepared(cfg)
        loader, _ = make_loaders(cfg, spec, stats, world_size=1, rank=0)
        batches = list(loader)
        self.x = torch.cat([b.features for b in batches])
        self.c = torch.cat([b.categorical for b in batches])
        self.y = torch.cat([b.label for b in batches]).float()
        torch.manual_seed(0)
        self.model = build_model(spec, stats, hidden=cfg.hidden, dropout=cfg.dropout).train()
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.batch, self.clip = cfg.batch_size, cfg.clip_norm
        self.rate()  # warm-up

    def rate(self) -> tuple[float, float]:
        """(wall, cpu) samples/s of one epoch."""
        t0, cpu0 = time.perf_counter(), time.process_time()
        perm = torch.randperm(len(self.y))
        for i in range(0, len(self.y), self.batch):
            idx = perm[i : i + self.batch]
            logits = self.model(self.x[idx], self.c[idx])[:, 0]
            F.binary_cross_entropy_with_logits(logits, self.y[idx]).backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)  # as the trainer
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        n = len(self.y)
        return n / (time.perf_counter() - t0), n / (time.process_time() - cpu0)


def ddp_rate(cfg: TrainConfig) -> float:
    prepare(cfg)
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the workers: 2 workers, 2 cores
    summary = launch(cfg.to_dict(), 2, "warning")
    return summary["history"][-1]["samples_per_s"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 128])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    ap.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads of the single-process runs, (a) and (b) (default 2 = the cores)",
    )
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    for flag, value in (
        ("--rows", args.rows),
        ("--batch", args.batch),
        ("--rounds", args.rounds),
        ("--threads", args.threads),
    ):
        if value < 1:
            ap.error(f"{flag} must be >= 1, got {value}")
    if min(args.hidden) < 1:
        ap.error(f"--hidden: layer widths must be >= 1, got {' '.join(map(str, args.hidden))}")
    # The trainer only picks its own thread count when OMP_NUM_THREADS is unset.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "fraud"
        write_dataset(str(data), FraudDataConfig(rows=args.rows, days=8))
        cfg = _config(data, Path(tmp) / "single", args, 2)
        prepare(cfg)
        hand_loop, read = HandWritten(cfg), Reader(cfg)
        best: dict[str, list[float]] = {k: [0.0, 0.0] for k in ("hand", "ours", "reader")}
        for _ in range(args.rounds):
            for key, rates in (
                ("hand", hand_loop.rate()),
                ("ours", trainer_rate(cfg)),
                ("reader", read.rate()),
            ):
                best[key] = [max(a, b) for a, b in zip(best[key], rates, strict=True)]
        ddp = ddp_rate(_config(data, Path(tmp) / "ddp", args, 2))
    (hand, hand_cpu), (ours, ours_cpu), (reader, reader_cpu) = (
        best["hand"],
        best["ours"],
        best["reader"],
    )
    figures = {
        "rows": args.rows,
        "batch": args.batch,
        "hidden": args.hidden,
        "torch_threads": args.threads,
        "handwritten_samples_per_s": round(hand),
        "trainer_samples_per_s": round(ours),
        "reader_rows_per_s": round(reader),
        "ddp2_samples_per_s": round(ddp),
        "a_trainer_over_handwritten": round(ours / hand, 3),
        "a_per_cpu_second": round(ours_cpu / hand_cpu, 3),
        "b_reader_over_trainer": round(reader / ours, 2),
        "b_per_cpu_second": round(reader_cpu / ours_cpu, 2),
        "c_ddp2_over_trainer": round(ddp / ours, 3),
    }
    print(
        f"(a) trainer {ours:,.0f} samples/s vs hand-written loop {hand:,.0f}: {ours / hand:.2f}x "
        f"(per CPU-second: {ours_cpu / hand_cpu:.2f}x; target >= 0.9x)"
    )
    print(
        f"(b) reader {reader:,.0f} rows/s vs trainer: {reader / ours:.1f}x "
        f"(per CPU-second: {reader_cpu / ours_cpu:.1f}x; target >= 3x)"
    )
    print(f"(c) 2-process DDP (gloo, 1 thread each) {ddp:,.0f} samples/s: {ddp / ours:.2f}x")
    print(json.dumps(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
