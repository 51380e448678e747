"""Metrics: histogram AUC against scikit-learn, weights, multiclass, regression, schedule."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from conveyor.trainer.metrics import MetricSums, row_losses
from conveyor.trainer.schedule import warmup_cosine


def _binary(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.3).long()
    logits = (torch.randn(n, 1, generator=g) * 2 + y[:, None] * 1.5).float()
    w = torch.rand(n, generator=g) + 0.5
    return logits, y, w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_match_sklearn(seed: int) -> None:
    logits, y, w = _binary(5000, seed)
    sums = MetricSums("binary", torch.device("cpu"))
    for part in range(5):  # several batches, one of them empty
        sl = slice(part * 1000, (part + 1) * 1000)
        sums.update(logits[sl], y[sl], w[sl], row_losses("binary", logits[sl], y[sl], (0, 1)))
        sums.update(logits[:0], y[:0], w[:0], row_losses("binary", logits[:0], y[:0], (0, 1)))
    m = sums.result()
    p = torch.sigmoid(logits[:, 0]).numpy()
    assert m["auc"] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=2e-4)
    assert m["logloss"] == pytest.approx(log_loss(y, p, sample_weight=w), rel=1e-5)
    acc = float(((p > 0.5) == y.numpy()).astype(float) @ w.numpy() / w.sum())
    assert m["accuracy"] == pytest.approx(acc)
    assert m["rows"] == 5000


def test_multiclass_and_regression() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 0, 0])
    w = torch.ones(4)
    sums = MetricSums("multiclass", torch.device("cpu"))
    sums.update(logits, y, w, row_losses("multiclass", logits, y, (0, 1)))
    m = sums.result()
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["logloss"] == pytest.approx(
        log_loss(y, torch.softmax(logits.double(), 1), labels=[0, 1, 2])
    )

    pred_std = torch.tensor([[0.0], [1.0], [-1.0]])
    target = torch.tensor([10.0, 14.0, 9.0])  # label mean 10, std 2: predictions 10, 12, 8
    sums = MetricSums("regression", torch.device("cpu"), (10.0, 2.0))
    sums.update(
        pred_std, target, torch.ones(3), row_losses("regression", pred_std, target, (10, 2))
    )
    assert sums.result()["rmse"] == pytest.approx(math.sqrt((0 + 4 + 1) / 3))


def test_no_rows_gives_no_metrics_and_no_nan() -> None:
    sums = MetricSums("binary", torch.device("cpu"))
    assert sums.result() == {"rows": 0.0}


def test_state_round_trip() -> None:
    logits, y, w = _binary(100, 0)
    a = MetricSums("binary", torch.device("cpu"))
    a.update(logits, y, w, row_losses("binary", logits, y, (0, 1)))
    b = MetricSums("binary", torch.device("cpu"))
    b.load_state_dict(a.state_dict())
    assert a.result() == b.result()


def test_warmup_then_cosine() -> None:
    f = [warmup_cosine(s, warmup=4, total=14, min_ratio=0.1) for s in range(20)]
    assert f[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert f[4] == pytest.approx(1.0)
    assert f[9] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert f[14:] == pytest.approx([0.1] * 6)
    assert all(a >= b for a, b in itertools.pairwise(f[4:]))
    assert np.isfinite(warmup_cosine(0, warmup=0, total=0))


def test_no_weight_column_equals_unit_weights() -> None:
    logits, y, _ = _binary(500, 4)
    losses = row_losses("binary", logits, y, (0, 1))
    a, b = MetricSums("binary", torch.device("cpu")), MetricSums("binary", torch.device("cpu"))
    a.update(logits, y, None, losses)
    b.update(logits, y, torch.ones(500), losses)
    assert torch.equal(a.sums, b.sums)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_queued_updates_equal_per_batch_updates(task: str) -> None:
    """Batches are queued and folded in bulk; every reader of the sums sees them all."""
    g = torch.Generator().manual_seed(7)
    out = 3 if task == "multiclass" else 1
    logits = torch.randn(1000, out, generator=g)
    y = torch.randint(0, out if task == "multiclass" else 2, (1000,), generator=g)
    if task == "regression":
        y = torch.randn(1000, generator=g) * 2 + 10
    w = torch.rand(1000, generator=g) + 0.5
    norm = (10.0, 2.0) if task == "regression" else (0.0, 1.0)
    losses = row_losses(task, logits, y, norm)
    eager = MetricSums(task, torch.device("cpu"), norm, flush_rows=1)
    queued = MetricSums(task, torch.device("cpu"), norm, flush_rows=400)
    for lo in range(0, 1000, 100):
        sl = slice(lo, lo + 100)
        for sums in (eager, queued):
            sums.update(logits[sl], y[sl], w[sl], losses[sl])
    assert queued.queued_rows == 200  # folded in at 400 and 800 rows; two batches queued
    state = queued.state_dict()  # folds the queue in
    assert queued.queued_rows == 0
    torch.testing.assert_close(state["sums"], eager.sums, rtol=1e-12, atol=1e-9)
    assert queued.result() == pytest.approx(eager.result(), rel=1e-12)
    queued.update(logits[:10], y[:10], w[:10], losses[:10])
    queued.reset()
    assert queued.result() == {"rows": 0.0} and not queued.sums.any()


def test_queue_mixes_unweighted_and_weighted_batches() -> None:
    logits, y, w = _binary(300, 5)
    losses = row_losses("binary", logits, y, (0, 1))
    a, b = MetricSums("binary", torch.device("cpu")), MetricSums("binary", torch.device("cpu"))
    a.update(logits[:100], y[:100], None, losses[:100])
    a.update(logits[100:], y[100:], w[100:], losses[100:])
    b.update(logits, y, torch.cat([torch.ones(100), w[100:]]), losses)
    torch.testing.assert_close(a.sums, b.sums)
