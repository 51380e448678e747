"""``conveyor train``: train on a source and export a servable version to a model repository.

Runs in this process (``--nproc 1``), starts ``--nproc N`` local workers through torch's elastic
launcher, or, started by ``torchrun``, runs as the worker torchrun made. Every option also reads
from ``CONVEYOR_<OPTION>`` and the ``[train]`` table of a ``--config`` file.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def _config(args: argparse.Namespace) -> Any:
    from conveyor.trainer.config import TrainConfig

    out = args.out or f"runs/{args.model_name or 'model'}"
    return TrainConfig(
        source=args.source,
        format=args.format,
        out=out,
        spec=args.spec,
        label=args.label,
        key=args.key,
        weight=args.weight,
        timestamp=args.timestamp,
        include_partitions=args.include_partition_columns,
        val_fraction=args.val_fraction,
        split_column=args.split_column,
        hidden=tuple(args.hidden),
        activation=args.activation,
        dropout=args.dropout,
        layer_norm=args.layer_norm,
        embedding_dim=args.embedding_dim,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr_ratio=args.min_lr_ratio,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        clip_norm=args.clip_norm,
        accumulation=args.accumulation,
        autocast=args.autocast,
        metric=args.metric,
        patience=args.patience,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        seed=args.seed,
        resume=args.resume,
        shuffle_buffer=args.shuffle_buffer,
        prefetch=args.prefetch,
        progress=None if args.progress == "auto" else args.progress == "on",
        model_repository=args.model_repository,
        model_name=args.model_name,
        max_batch_size=args.max_batch_size,
    )


def _print_summary(summary: dict[str, Any]) -> None:
    best, last = summary.get("best"), summary.get("last")
    print(f"epochs           {summary['epochs']} ({summary['steps']} optimizer steps)")
    if summary["stopped_early"]:
        print("stopped early    yes")
    for title, rec in (("best epoch", best), ("last epoch", last)):
        if rec is None:
            continue
        for split in ("train", "val"):
            m = rec.get(split) or {}
            shown = "  ".join(f"{k} {v:.4f}" for k, v in m.items() if k != "rows")
            if shown:
                print(f"{title:<11}{rec['epoch']:>3} {split:<5} {shown}")
    if "exported" in summary:
        print(f"exported         {summary['exported']}")


def run(args: argparse.Namespace) -> int:
    from conveyor.ingest.errors import FormatError
    from conveyor.ingest.formats import FORMAT_FLAG_HINT

    try:
        return _run(args)
    except FormatError as exc:  # its hint is the Python API's format=
        raise exc.with_hint(FORMAT_FLAG_HINT) from None


def _run(args: argparse.Namespace) -> int:
    from conveyor.trainer import launch
    from conveyor.trainer.data import prepare
    from conveyor.trainer.errors import TrainerError
    from conveyor.trainer.loop import check_fresh_run, check_resume, run_worker

    if args.nproc < 1:  # checked first: a bad flag must not wait for the data to be read
        raise TrainerError(f"--nproc must be >= 1, got {args.nproc}")
    cfg = _config(args)
    if launch.under_torchrun():
        summary = run_worker(cfg)  # torchrun started this process as one of its workers
    else:
        check_fresh_run(cfg)  # errors that need no worker show as one clear line
        prepare(cfg)  # profile once, here, before the workers start
        if args.nproc > 1:
            check_resume(cfg, args.nproc)  # a changed option is one line, not N workers' errors
            summary = launch.launch(cfg.to_dict(), args.nproc, args.log_level)
        else:
            with launch.stopped_by_signals():
                summary = run_worker(cfg, prepared=True)
    if summary is not None:
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            _print_summary(summary)
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from conveyor.cli import add_command
    from conveyor.ingest.formats import add_format_flag

    p = add_command(
        subparsers,
        "train",
        help="train a tabular model (DDP) and export it to a model repository",
        parents=[common],
        run=run,
    )
    p.add_argument("source", help="file, directory, glob or URI read through conveyor.ingest")
    add_format_flag(p)
    p.add_argument("--spec", default=None, metavar="FILE", help="DIR/spec.json (stats.json beside)")
    p.add_argument("--label", default=None, help="label column: infer and profile the spec")
    p.add_argument("--model-repository", default=None, metavar="DIR", help="export here")
    p.add_argument("--model-name", default=None, help="model name in the repository")
    p.add_argument("--out", default=None, metavar="RUN_DIR", help="default: runs/MODEL_NAME")
    p.add_argument("--nproc", type=int, default=1, help="local worker processes (default: 1)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--progress",
        choices=("auto", "on", "off"),
        default="auto",
        help="progress bar (default auto: when stderr is a terminal)",
    )
    g = p.add_argument_group("data")
    g.add_argument("--val-fraction", type=float, default=0.2, help="held-out share (default 0.2)")
    g.add_argument("--key", default=None, help="key column (spec inference only)")
    g.add_argument("--weight", default=None, help="row weight column (spec inference only)")
    g.add_argument("--timestamp", default=None, help="timestamp column (spec inference only)")
    g.add_argument(
        "--include-partition-columns",
        action="store_true",
        help="hive partition columns become features (spec inference only; default: ignored)",
    )
    g.add_argument("--split-column", default=None, help="int/timestamp column to hash for it")
    g.add_argument(
        "--batch-size", type=int, default=1024, help="rows per rank per step (default 1024)"
    )
    g.add_argument("--shuffle-buffer", type=int, default=65_536, help="rows (default 65536)")
    g.add_argument("--prefetch", type=int, default=4, help="batches read ahead (default 4)")
    g = p.add_argument_group("model")
    g.add_argument(
        "--hidden", type=int, nargs="+", default=[256, 128], help="MLP widths (default 256 128)"
    )
    g.add_argument(
        "--activation",
        choices=("relu", "gelu", "silu", "tanh"),
        default="relu",
        help="hidden layers' activation (default relu)",
    )
    g.add_argument("--dropout", type=float, default=0.1, help="default 0.1")
    g.add_argument("--layer-norm", action="store_true", help="LayerNorm after hidden layers")
    g.add_argument("--embedding-dim", type=int, default=8, help="per categorical (default 8)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10, help="default 10")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    g.add_argument(
        "--min-lr-ratio", type=float, default=0.0, help="cosine floor / peak (default 0)"
    )
    g.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW (default 1e-4)")
    g.add_argument("--warmup-steps", type=int, default=100, help="linear warmup (default 100)")
    g.add_argument("--clip-norm", type=float, default=1.0, help="0 = off (default 1.0)")
    g.add_argument("--accumulation", type=int, default=1, help="micro-batches per step (default 1)")
    g.add_argument(
        "--autocast",
        choices=("off", "bf16", "fp16"),
        default="bf16",
        help="mixed precision on GPU (default bf16; off = fp32); CPU always runs fp32",
    )
    g = p.add_argument_group("control")
    g.add_argument("--metric", default=None, help="auc|logloss|accuracy|rmse (default per task)")
    g.add_argument("--patience", type=int, default=3, help="epochs (default 3); 0 = no early stop")
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=500,
        help="optimizer steps (default 500; 0 = only at epoch end)",
    )
    g.add_argument("--keep-checkpoints", type=int, default=3, help="default 3")
    g.add_argument("--seed", type=int, default=0, help="default 0")
    g.add_argument(
        "--max-batch-size",
        type=int,
        default=1024,
        help="the exported config.json's max_batch_size, the server's batch limit (default 1024)",
    )
