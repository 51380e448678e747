"""Quality bar: on scikit-learn's breast cancer data the trained model's validation AUC is within
0.01 of HistGradientBoostingClassifier on the same hold-out split, or better."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from conveyor.ingest.spec import FeatureSpec
from conveyor.trainer.config import TrainConfig
from conveyor.trainer.data import prepare
from conveyor.trainer.launch import DistEnv
from conveyor.trainer.loop import run_worker
from conveyor.trainer.split import holdout_filters


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_breast_cancer_auc_matches_gradient_boosting(tmp_path: Path) -> None:
    bunch = load_breast_cancer()
    names = [n.replace(" ", "_") for n in bunch.feature_names]
    columns = {"id": pa.array(np.arange(len(bunch.target), dtype=np.int64))}
    columns |= {n: pa.array(bunch.data[:, j]) for j, n in enumerate(names)}
    columns["target"] = pa.array(bunch.target.astype(np.int64))
    table = pa.table(columns)
    data = tmp_path / "breast_cancer.parquet"
    pq.write_table(table, data)

    cfg = TrainConfig(
        source=str(data),
        out=str(tmp_path / "run"),
        label="target",
        key="id",
        val_fraction=0.3,
        hidden=(64, 32),
        dropout=0.1,
        epochs=40,
        batch_size=32,
        lr=3e-3,
        warmup_steps=20,
        patience=10,
        progress=False,
        model_repository=str(tmp_path / "repo"),
        model_name="bc",
    )
    prepare(cfg)
    summary = run_worker(cfg, DistEnv(), prepared=True)

    # The same split, applied by pyarrow with the trainer's own filter expressions.
    spec = FeatureSpec.load(tmp_path / "run" / "spec.json")
    train_f, val_f = holdout_filters(spec, table.schema, cfg.val_fraction, seed=cfg.seed)
    train, val = table.filter(train_f), table.filter(val_f)
    assert train.num_rows + val.num_rows == table.num_rows and val.num_rows > 120

    def xy(t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        return np.column_stack([t[n].to_numpy() for n in spec.numeric_names]), t[
            "target"
        ].to_numpy()

    hgb = HistGradientBoostingClassifier(random_state=0).fit(*xy(train))
    x_val, y_val = xy(val)
    hgb_auc = roc_auc_score(y_val, hgb.predict_proba(x_val)[:, 1])

    program = torch.jit.load(str(tmp_path / "repo" / "bc" / "1" / "model.pt"))
    probability, _ = program(torch.tensor(x_val, dtype=torch.float32))
    ours = roc_auc_score(y_val, probability[:, 0].numpy())
    print(f"breast cancer validation AUC: trainer {ours:.4f}, HistGradientBoosting {hgb_auc:.4f}")
    assert ours >= hgb_auc - 0.01
    # The reported (histogram) AUC of the exported epoch agrees with the exact one.
    assert abs(summary["best"]["val"]["auc"] - ours) < 2e-3
