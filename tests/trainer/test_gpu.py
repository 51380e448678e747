"""CUDA: training with autocast (bf16, fp16 with a grad scaler) and a CPU export that matches."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from trainer_fixtures import make_config

from conveyor.ingest.loader import StreamLoader
from conveyor.ingest.spec import FeatureSpec
from conveyor.trainer.data import prepare
from conveyor.trainer.launch import DistEnv
from conveyor.trainer.loop import Trainer


@pytest.mark.gpu
@pytest.mark.parametrize("autocast", ["bf16", "fp16"])
def test_autocast_training_on_cuda_exports_a_matching_cpu_program(
    tmp_path: Path, dataset: Path, autocast: str
) -> None:
    cfg = make_config(tmp_path, dataset, autocast=autocast, epochs=2, lr=1e-2)
    prepare(cfg)
    trainer = Trainer(cfg, DistEnv(device="cuda:0"))
    summary = trainer.fit()
    assert summary["best"]["val"]["auc"] > 0.8
    assert next(trainer.model.parameters()).is_cuda

    from conveyor.trainer.export import category_key, serving_module

    program = serving_module(trainer.final_model(), trainer.spec)
    spec = FeatureSpec.load(Path(cfg.out) / "spec.json")
    batch = next(iter(StreamLoader(str(dataset), spec, batch_size=64, prefetch=0)))
    model = trainer.final_model().cpu().eval()
    with torch.no_grad():
        expected = model(batch.features, batch.categorical)
    rows = pq.read_table(dataset).slice(0, 64).to_pylist()
    strings = [category_key(row[n]) for row in rows for n in spec.categorical_names]
    _, logits = program(batch.features, strings)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
