"""Fixtures of the trainer tests (helpers live in trainer_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from trainer_fixtures import tabular


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "data.parquet"
    pq.write_table(tabular(600), path, row_group_size=200)
    return path
