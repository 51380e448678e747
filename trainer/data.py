"""The run's data: spec and stats (given, or profiled on the fly) and the two readers.

With ``--spec DIR/spec.json`` the spec is used as is and ``DIR/stats.json`` supplies the
normalisation statistics (profiled here when it is missing). With ``--label`` the spec is
inferred and the source profiled through ``conveyor.ingest`` (one validation pass). Either way
the spec and stats used are copied into the run directory, so a resumed run trains on exactly
the same ones, and the rows quarantined during profiling go to ``RUN_DIR/quarantine.parquet``.
CSV and JSON are read as the spec's declared types (``FeatureSpec.declared_types``), as
``conveyor ingest`` reads them: inferred from a file's first MiB, a column of whole numbers in
one file would make every fraction in the others a ``type`` error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from conveyor.ingest.counts import CountCache
from conveyor.ingest.loader import LoaderConfig, StreamLoader
from conveyor.ingest.profile import ProfileConfig, load_stats, profiled_ranges, write_stats
from conveyor.ingest.source import Source
from conveyor.ingest.spec import FeatureSpec
from conveyor.trainer.config import TrainConfig
from conveyor.trainer.errors import TrainerError
from conveyor.trainer.resume import check_spec_options, spec_options
from conveyor.trainer.split import holdout

log = logging.getLogger("conveyor.trainer")


def prepare(cfg: TrainConfig) -> tuple[Path, Path]:
    """Write ``spec.json`` and ``stats.json`` into the run directory (profiling if needed) and
    return their paths. Run once per job, before the workers start (or on rank 0)."""
    from conveyor.ingest.infer import infer_spec
    from conveyor.ingest.scan import run_scan

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    spec_out, stats_out = out / "spec.json", out / "stats.json"
    options_out = out / "spec_options.json"
    if cfg.resume and spec_out.exists() and stats_out.exists():
        # The resumed run keeps the spec and stats it started with, if made with its options
        # (a run directory older than spec_options.json is checked by its checkpoint only).
        if options_out.exists():
            check_spec_options(json.loads(options_out.read_text()), cfg, spec_out)
        return spec_out, stats_out
    # Recorded before the spec and stats are written: they never exist without it.
    tmp = options_out.with_name(f".{options_out.name}.tmp")
    tmp.write_text(json.dumps(spec_options(cfg)))
    os.replace(tmp, options_out)
    given = FeatureSpec.load(cfg.spec) if cfg.spec is not None else None
    source = Source(
        cfg.source,
        format=cfg.format,
        types=given.declared_types() if given is not None else None,
    )
    if given is not None:
        spec = given
        stats_in = Path(cfg.spec).with_name("stats.json")
        if stats_in.exists():
            if Path(cfg.spec).resolve() != spec_out.resolve():
                spec.save(spec_out)
                shutil.copyfile(stats_in, stats_out)
            return spec_out, stats_out
        log.info("no stats.json beside %s: profiling %s", cfg.spec, cfg.source)
    else:
        assert cfg.label is not None
        log.info("inferring the spec and profiling %s (label %r)", cfg.source, cfg.label)
        spec = infer_spec(
            source,
            cfg.label,
            weight=cfg.weight,
            timestamp=cfg.timestamp,
            key=cfg.key,
            include_partitions=cfg.include_partitions,
        )
        if source.format in ("csv", "json"):  # profile text as the inferred spec's types
            source = Source(cfg.source, format=cfg.format, types=spec.declared_types())
    result = run_scan(
        source,
        spec,
        quarantine_path=out / "quarantine.parquet",
        profile=ProfileConfig(),
        progress=cfg.progress,
    )
    if result.accounting.rows_out == 0:
        raise TrainerError(
            f"{cfg.source}: no valid rows to train on: all {result.accounting.rows_in} rows read "
            f"failed validation (reasons per row in {out / 'quarantine.parquet'})"
        )
    spec.save(spec_out)
    assert result.stats is not None
    write_stats(result.stats, stats_out)
    log.info("profiled: %s", json.dumps(result.accounting.to_dict()))
    return spec_out, stats_out


def load_prepared(cfg: TrainConfig) -> tuple[FeatureSpec, dict[str, Any]]:
    """The spec and stats :func:`prepare` wrote into the run directory."""
    out = Path(cfg.out)
    return FeatureSpec.load(out / "spec.json"), load_stats(out / "stats.json")


def make_loaders(
    cfg: TrainConfig,
    spec: FeatureSpec,
    stats: dict[str, Any],
    *,
    world_size: int,
    rank: int,
) -> tuple[StreamLoader, StreamLoader | None]:
    """``(train, validation)`` readers of this rank's shard (validation None without hold-out).

    Both read the same source; the hold-out (:func:`conveyor.trainer.split.holdout`) is either
    key filters pushed into the scan or the reader's position split. Training shuffles (seeded
    by ``cfg.seed`` and the epoch), validation does not. Row counts are cached in
    ``RUN_DIR/row_counts.json`` so that other ranks and a resumed run do not count again.
    """
    # CSV/JSON as the spec's types (as `conveyor ingest` reads them), not inferred per file.
    source = Source(cfg.source, format=cfg.format, types=spec.declared_types())
    hold = holdout(spec, source.schema, cfg.val_fraction, seed=cfg.seed, column=cfg.split_column)
    ranges = profiled_ranges(stats)
    common = LoaderConfig(
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        world_size=world_size,
        rank=rank,
        prefetch=cfg.prefetch,
        shuffle_buffer=cfg.shuffle_buffer,
    )
    cache = CountCache(Path(cfg.out) / "row_counts.json")
    train = StreamLoader(
        source,
        spec,
        common,
        filter=hold.train_filter,
        split=hold.train_split,
        ranges=ranges,
        count_cache=cache,
        shuffle=True,
    )
    val = None
    if hold.method != "none":
        val = StreamLoader(
            source,
            spec,
            common,
            filter=hold.val_filter,
            split=hold.val_split,
            ranges=ranges,
            count_cache=cache,
            shuffle=False,
        )
    return train, val
