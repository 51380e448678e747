"""Ingest: a file that disappears or is truncated between listing and reading (during a scan)
gives a SourceError naming it (the same case per format: tests/ingest/test_source.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conveyor.ingest.errors import SourceError
from conveyor.ingest.scan import run_scan
from conveyor.ingest.source import Source
from conveyor.ingest.spec import FeatureSpec, Label, NumericFeature


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_file_changing_under_a_scan_is_named(tmp_path: Path, damage: str) -> None:
    rng = np.random.default_rng(0)
    for i in range(3):
        table = pa.table({"x": rng.normal(size=500), "y": rng.integers(0, 2, 500)})
        pq.write_table(table, tmp_path / f"part-{i}.parquet", row_group_size=100)
    source = Source(str(tmp_path))  # lists the files and reads their schemas
    victim = tmp_path / "part-2.parquet"
    if damage == "delete":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes()[:300])
    spec = FeatureSpec(label=Label("y", "binary", [0, 1]), numeric=[NumericFeature("x")])
    with pytest.raises(SourceError, match=re.escape(str(victim))):
        run_scan(source, spec, quarantine_path=tmp_path / "q.parquet")
