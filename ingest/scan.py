"""One validation (and optionally profiling) pass over a source: what both CLI commands run."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.ingest.profile import ProfileConfig, Profiler
from conveyor.ingest.quarantine import QuarantineWriter
from conveyor.ingest.source import Source
from conveyor.ingest.spec import FeatureSpec
from conveyor.ingest.validate import Accounting, Validator


@dataclass
class ScanResult:
    """Where the rows went, the statistics (None without profiling) and the quarantine file
    (None when no row was quarantined)."""

    accounting: Accounting
    stats: dict[str, Any] | None
    quarantine: Path | None


def run_scan(
    source: Source,
    spec: FeatureSpec,
    *,
    quarantine_path: str | Path,
    ranges: dict[str, tuple[float, float]] | None = None,
    profile: ProfileConfig | None = None,
    progress: bool | None = None,
) -> ScanResult:
    """Validate every row of ``source`` against ``spec`` (quarantining to ``quarantine_path``),
    profiling the valid rows when ``profile`` is given. ``progress``: show a bar (default: when
    stderr is a terminal). Raises :class:`~conveyor.ingest.errors.ValidationError` on reject."""
    from tqdm import tqdm

    if progress is None:
        progress = sys.stderr.isatty()
    pieces = source.pieces()
    known = all(p.num_rows is not None for p in pieces)
    total = sum(p.num_rows for p in pieces) if known else None
    profiler = Profiler(spec, profile) if profile is not None else None
    # Read every column, not just the spec's: a quarantined row is kept whole.
    with (
        QuarantineWriter(quarantine_path) as writer,
        tqdm(total=total, unit="rows", disable=not progress, unit_scale=True) as bar,
    ):
        validator = Validator(
            spec,
            source.schema,
            file=source.uri,
            schema_file=source.files[0],
            where_column=source.where_column,
            ranges=ranges,
            quarantine=writer,
        )
        for piece in pieces:
            for chunk in source.read(piece):
                checked = validator.check(chunk)
                if profiler is not None:
                    nulls = {
                        c: chunk.batch.column(c).null_count - int(chunk.parse_errors[c].sum())
                        if c in chunk.parse_errors
                        else chunk.batch.column(c).null_count
                        for c in spec.columns()
                        if c in chunk.batch.schema.names
                    }
                    profiler.update(checked, nulls)
                bar.update(len(chunk.rows) + len(chunk.bad_lines))
        written = writer.rows
    return ScanResult(
        validator.accounting,
        profiler.result() if profiler is not None else None,
        Path(quarantine_path) if written else None,
    )
