"""Small datasets written per test in every format."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest


def sample_table(n: int = 50) -> pa.Table:
    i = np.arange(n)
    return pa.table(
        {
            "x": (i * 0.5).astype(np.float64),
            "k": i.astype(np.int64),
            "c": pa.array([["a", "b", "c"][v % 3] for v in i]),
            "y": (i % 2).astype(np.int64),
        }
    )


def write(table: pa.Table, path, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=16, compression="zstd")
    elif fmt == "csv":
        pacsv.write_csv(table, path)
    elif fmt == "json":
        with open(path, "w") as fh:
            for row in table.to_pylist():
                fh.write(json.dumps(row) + "\n")
    else:
        feather.write_feather(table, path)


EXT = {"parquet": "parquet", "csv": "csv", "json": "jsonl", "ipc": "arrow"}


@pytest.fixture(params=["parquet", "csv", "json", "ipc"])
def fmt(request) -> str:
    return request.param
