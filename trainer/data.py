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
import math
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
        spec = FeatureSpec.load(spec_out)
        check_features(spec, spec_out)
        check_stats(spec, _read_stats(stats_out), stats_out)
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
        check_features(spec, cfg.spec)  # before profiling: nothing to train on
        stats_in = Path(cfg.spec).with_name("stats.json")
        if stats_in.exists():
            check_stats(spec, _read_stats(stats_in), stats_in)
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
        check_features(spec, f"the spec inferred from {cfg.source} (--label {cfg.label})")
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
            _no_valid_rows(cfg.source, result.accounting, out / "quarantine.parquet")
        )
    assert result.stats is not None
    # The profile of the data itself: a negative weight column shows here (its min).
    check_stats(spec, result.stats, f"the profile of {cfg.source}")
    spec.save(spec_out)
    write_stats(result.stats, stats_out)
    log.info("profiled: %s", json.dumps(result.accounting.to_dict()))
    return spec_out, stats_out


def check_features(spec: FeatureSpec, where: Any) -> None:
    """Refuse a spec without a numeric or categorical feature before any training: the model
    would be a bias alone (a whole run for nothing, and one the export refuses)."""
    if not spec.numeric and not spec.categorical:
        ignored = f" (ignored: {', '.join(spec.ignore)})" if spec.ignore else ""
        raise TrainerError(
            f"{where}: the spec has no features, only the label {spec.label.name!r}{ignored}: "
            "give the data feature columns, or add numeric/categorical features to the spec"
        )


def _read_stats(path: Path) -> dict[str, Any]:
    try:
        stats = load_stats(path)
    except (OSError, ValueError) as exc:
        raise TrainerError(
            f"{path}: cannot read the stats ({exc}); fix or delete it (without it, the "
            "source is profiled)"
        ) from None
    if not isinstance(stats, dict):
        raise TrainerError(f"{path}: not a stats.json object; fix or delete it")
    return stats


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_stats(spec: FeatureSpec, stats: dict[str, Any], where: Any) -> None:
    """Raise :class:`TrainerError` unless ``stats`` gives what the model and the loss need:
    a finite mean and std of every numeric feature (and of a regression label), and a weight
    column that is never negative.

    Checked once, before any worker starts: a stats.json beside ``--spec`` written for
    another spec failed in every worker with a bare ``KeyError`` on the feature's name.
    """
    hint = (
        "the stats must come from profiling this spec's data: delete it to profile the source "
        "here, or make it with `conveyor ingest profile`"
    )
    numeric = stats.get("numeric")
    if not isinstance(numeric, dict):
        numeric = {}
    for name in spec.numeric_names:
        entry = numeric.get(name)
        if not isinstance(entry, dict):
            raise TrainerError(f"{where}: no statistics of numeric feature {name!r}; {hint}")
        for key in ("mean", "std"):
            if not _finite(entry.get(key)):
                raise TrainerError(
                    f"{where}: numeric feature {name!r} has {key} {entry.get(key)!r}, not a "
                    f"finite number; {hint}"
                )
    if spec.label.task == "regression":
        label = stats.get("label")
        for key in ("mean", "std"):
            value = label.get(key) if isinstance(label, dict) else None
            if not _finite(value):
                raise TrainerError(
                    f"{where}: regression label {spec.label.name!r} has {key} {value!r}, not a "
                    f"finite number; {hint}"
                )
    weight = stats.get("weight")
    if spec.weight is not None and isinstance(weight, dict) and _finite(weight.get("min")):
        if weight["min"] < 0:
            # A negative weight turns that row's loss into a gain: the optimizer pushes the
            # model away from its label, and the weighted metrics stop meaning anything.
            raise TrainerError(
                f"{where}: weight column {spec.weight!r} has negative values (min "
                f"{weight['min']}); weights must be >= 0: fix the column, or train without it"
            )
        if _finite(weight.get("max")) and weight["max"] <= 0 and weight.get("count", 0) > 0:
            raise TrainerError(
                f"{where}: weight column {spec.weight!r} is 0 in every row: no row would count "
                "in the loss or the metrics; fix the column, or train without it"
            )


def _no_valid_rows(source: str, accounting: Any, quarantine: Path) -> str:
    """The error of a source whose every row was quarantined: the rules that did it and the
    first row's reason (which names the column), so it says what to change."""
    rules = ", ".join(f"{rule}: {n}" for rule, n in sorted(accounting.quarantined_by_rule.items()))
    first = ""
    try:
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(quarantine).iter_batches(batch_size=1, columns=["_reason"]))
        if batch.num_rows:
            first = f"; the first: {batch.column(0)[0].as_py()}"
    except Exception:  # the reasons are a help, not the error: say what we know without them
        pass
    return (
        f"{source}: no valid rows to train on: all {accounting.rows_in} rows read failed "
        f"validation (rows per rule: {rules or 'none recorded'}{first}). Fix the data, or "
        "change the spec (ignore the column, or an impute policy for the rule); reasons per "
        f"row in {quarantine}"
    )


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
