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
a different loop); each figure is the best of ``--repeat`` epochs after one warm-up epoch.

Usage: python benchmarks/train_bench.py [--rows 300000] [--batch 1024] [--hidden 256 128]
"""

from __future__ import annotations

import argparse
import json
import os
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


def trainer_rate(cfg: TrainConfig) -> float:
    """Best per-epoch samples/s of a single-process trainer run (first epoch is warm-up)."""
    prepare(cfg)
    summary = run_worker(cfg, DistEnv(), prepared=True)
    return max(rec["samples_per_s"] for rec in summary["history"][1:])


def reader_rate(cfg: TrainConfig, repeat: int) -> float:
    """Rows/s of the training reader alone (one thread reads ahead, as in the trainer)."""
    spec, stats = load_prepared(cfg)
    loader, _ = make_loaders(cfg, spec, stats, world_size=1, rank=0)
    best = 0.0
    for epoch in range(repeat + 1):
        loader.set_epoch(epoch)
        t0, rows = time.perf_counter(), 0
        for batch in loader:
            rows += len(batch)
        if epoch:
            best = max(best, rows / (time.perf_counter() - t0))
    return best


def handwritten_rate(cfg: TrainConfig, repeat: int) -> float:
    """The minimal loop: in-memory tensors, randperm batches, forward/backward/AdamW step."""
    spec, stats = load_prepared(cfg)
    loader, _ = make_loaders(cfg, spec, stats, world_size=1, rank=0)
    batches = list(loader)
    x = torch.cat([b.features for b in batches])
    c = torch.cat([b.categorical for b in batches])
    y = torch.cat([b.label for b in batches]).float()
    torch.manual_seed(0)
    model = build_model(spec, stats, hidden=cfg.hidden, dropout=cfg.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    best = 0.0
    for epoch in range(repeat + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(len(y))
        for i in range(0, len(y), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = F.binary_cross_entropy_with_logits(model(x[idx], c[idx])[:, 0], y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if epoch:
            best = max(best, len(y) / (time.perf_counter() - t0))
    return best


def ddp_rate(cfg: TrainConfig) -> float:
    prepare(cfg)
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the workers: 2 workers, 2 cores
    summary = launch(cfg.to_dict(), 2, "warning")
    return max(rec["samples_per_s"] for rec in summary["history"][1:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 128])
    ap.add_argument("--repeat", type=int, default=2, help="measured epochs after a warm-up")
    ap.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads of the single-process runs, (a) and (b) (default 2 = the cores)",
    )
    args = ap.parse_args()
    # The trainer only picks its own thread count when OMP_NUM_THREADS is unset.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "fraud"
        write_dataset(str(data), FraudDataConfig(rows=args.rows, days=8))
        cfg = _config(data, Path(tmp) / "single", args, args.repeat + 1)
        prepare(cfg)
        hand = handwritten_rate(cfg, args.repeat)
        ours = trainer_rate(cfg)
        reader = reader_rate(cfg, args.repeat)
        ddp = ddp_rate(_config(data, Path(tmp) / "ddp", args, args.repeat + 1))
    figures = {
        "rows": args.rows,
        "batch": args.batch,
        "hidden": args.hidden,
        "torch_threads": torch.get_num_threads(),
        "handwritten_samples_per_s": round(hand),
        "trainer_samples_per_s": round(ours),
        "reader_rows_per_s": round(reader),
        "ddp2_samples_per_s": round(ddp),
        "a_trainer_over_handwritten": round(ours / hand, 3),
        "b_reader_over_trainer": round(reader / ours, 2),
        "c_ddp2_over_trainer": round(ddp / ours, 3),
    }
    print(f"(a) trainer {ours:,.0f} samples/s vs hand-written loop {hand:,.0f}: "
          f"{ours / hand:.2f}x (target >= 0.9x)")  # fmt: skip
    print(f"(b) reader {reader:,.0f} rows/s vs trainer: {reader / ours:.1f}x (target >= 3x)")
    print(f"(c) 2-process DDP (gloo, 1 thread each) {ddp:,.0f} samples/s: {ddp / ours:.2f}x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
