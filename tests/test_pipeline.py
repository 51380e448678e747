"""The contract between stages: what the trainer exports, the engine serves, and the SDK calls
with the raw columns of the training data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conveyor.cli import main


@pytest.mark.slow
def test_trained_model_is_served_from_raw_columns(tmp_path: Path) -> None:
    ds = pytest.importorskip("pyarrow.dataset")
    torch = pytest.importorskip("torch")
    from conveyor.client import Client
    from conveyor.engine import Server

    work = tmp_path / "demo"
    argv = ["demo", "--workdir", str(work), "--rows", "6000", "--nproc", "1", "--epochs", "1"]
    assert main(argv) == 0
    rows = ds.dataset(work / "data", format="parquet", partitioning="hive").head(16)
    version = work / "models" / "fraud" / "1"
    with Server(str(work / "models"), port=0) as server:
        client = Client(server.address)
        meta = client.model_metadata("fraud")
        numeric = next(t for t in meta.inputs if t.name == "numeric")
        assert "amount" in numeric.columns
        served = client.infer("fraud", rows)  # a pyarrow Table of raw training columns
    # The same rows through the exported program directly give the same answer.
    program = torch.jit.load(str(version / "model.pt"))
    cat_cols = next(t for t in meta.inputs if t.name == "categorical").columns
    num = np.column_stack([rows.column(c).to_numpy().astype(np.float32) for c in numeric.columns])
    columns = [rows.column(c).to_pylist() for c in cat_cols]
    cat = [str(v) for row in zip(*columns, strict=True) for v in row]
    expected = program(torch.from_numpy(num), cat)[0].numpy()
    np.testing.assert_allclose(served["probability"], expected, rtol=1e-5, atol=1e-6)
    assert served["probability"].shape == (16, 1)
