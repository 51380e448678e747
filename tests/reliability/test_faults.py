"""Faults in models: raising, NaN, hanging past the execution timeout. Each fails only
its own requests, with INTERNAL or DEADLINE_EXCEEDED; other models and later requests are
served; a hung worker is replaced, the replacements are bounded, and beyond the bound the
model answers UNAVAILABLE at once until a hung call returns."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Gate
from models import AFFINE_IO, Affine, write_model
from torch import nn

from conveyor.client import (
    Client,
    DeadlineExceededError,
    InternalError,
    UnavailableError,
)
from conveyor.engine.server import Server


class NaNOnNegative(nn.Module):
    """Returns NaN for rows whose first value is negative (a numerically broken model)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.where(x[:, :1] < 0, torch.full_like(x, float("nan")), x)
        return y, x.sum(dim=1, keepdim=True).to(torch.int64)


def _row(value: float) -> np.ndarray:
    return np.full((1, 4), value, np.float32)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    for name in ("affine", "gated"):
        write_model(tmp_path, name, 1, Affine(), AFFINE_IO, max_batch_size=8)
    write_model(
        tmp_path,
        "nan",
        1,
        NaNOnNegative(),
        AFFINE_IO,
        max_batch_size=8,
        dynamic_batching={"max_queue_delay_microseconds": 200000},
    )
    return tmp_path


def test_raising_and_nan_fail_only_their_requests(repo: Path) -> None:
    with Server(repo, port=0) as server, Client(server.address, timeout=10) as client:
        with pytest.raises(InternalError, match="input below -1000"):
            client.infer("affine", _row(-2000))
        assert client.infer("affine", _row(1))["y"].tolist() == [[3.0] * 4]
        with pytest.raises(InternalError, match="NaN"):
            client.infer("nan", _row(-1))
        # Batched together (a long queue delay), the NaN row fails alone.
        results = list(client.stream_infer("nan", [_row(1), _row(-1), _row(2)]))
        failed = [r.error for r in results if r.error is not None]
        ok = [r for r in results if r.error is None]
        assert len(ok) == 2 and len(failed) == 1
        assert isinstance(failed[0], InternalError) and "NaN" in str(failed[0])
        assert sorted(float(r.outputs["y"][0, 0]) for r in ok) == [1.0, 2.0]
        stats = client.model_statistics("nan")[0]
        assert stats.inference_stats.fail.count == 2


def test_a_hang_is_abandoned_replaced_and_bounded(repo: Path, gate: Gate) -> None:
    server = Server(repo, port=0, execution_timeout=0.5, max_abandoned_threads=1)
    with server, Client(server.address, timeout=20, retries=0) as client:
        batcher = server.repository.get("gated").batcher  # type: ignore[union-attr]
        gate.armed, gate.hang_rows_equal = True, 7.0
        with pytest.raises(DeadlineExceededError, match="execution timeout"):
            client.infer("gated", _row(7))
        # The replacement worker serves the same model; other models never noticed.
        assert client.infer("gated", _row(1))["y"].tolist() == [[3.0] * 4]
        assert client.infer("affine", _row(1))["y"].tolist() == [[3.0] * 4]
        assert (batcher.abandoned, batcher.abandoned_total) == (1, 1)
        with pytest.raises(DeadlineExceededError):
            client.infer("gated", _row(7))
        # Two threads stuck, the bound reached: refused at once, not queued behind them.
        with pytest.raises(UnavailableError, match="no worker is left"):
            client.infer("gated", _row(1))
        assert client.infer("affine", _row(1))["y"].tolist() == [[3.0] * 4]
        gate.release.set()  # the hung calls return: one thread rejoins, the other exits
        deadline = time.monotonic() + 20
        while batcher.abandoned and time.monotonic() < deadline:
            time.sleep(0.02)
        assert batcher.abandoned == 0 and batcher.abandoned_total == 2
        assert client.infer("gated", _row(1))["y"].tolist() == [[3.0] * 4]
        assert client.infer("gated", _row(7))["y"].tolist() == [[15.0] * 4]


def test_a_models_own_execution_timeout_wins_and_is_counted(tmp_path: Path, gate: Gate) -> None:
    # The server would wait forever (None); the model's config.json allows 0.3 s.
    params = {"execution_timeout_seconds": "0.3"}
    write_model(tmp_path, "gated", 1, Affine(), AFFINE_IO, max_batch_size=8, parameters=params)
    server = Server(tmp_path, port=0, execution_timeout=None)
    with server, Client(server.address, timeout=20, retries=0) as client:
        gate.armed, gate.hang_rows_equal = True, 7.0
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceededError, match=r"0\.3s execution timeout"):
            client.infer("gated", _row(7))
        assert time.monotonic() - t0 < 10
        registry = server.metrics.registry
        labels = {"model": "gated", "version": "1"}
        assert registry.get_sample_value("conveyor_execution_timeouts_total", labels) == 1
        assert registry.get_sample_value("conveyor_abandoned_executions", labels) == 1
        gate.release.set()  # the hung call returns: the gauge comes back to 0
        deadline = time.monotonic() + 20
        while registry.get_sample_value("conveyor_abandoned_executions", labels) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.02)
        assert registry.get_sample_value("conveyor_abandoned_executions", labels) == 0
        assert client.infer("gated", _row(1))["y"].tolist() == [[3.0] * 4]


@pytest.mark.parametrize("bad", ["soon", -1, "inf"])
def test_a_bad_execution_timeout_fails_the_load_naming_the_key(tmp_path: Path, bad) -> None:
    params = {"execution_timeout_seconds": bad}
    write_model(tmp_path, "m", 1, Affine(), AFFINE_IO, parameters=params)
    with (
        Server(tmp_path, port=0) as server,
        Client(server.address, retries=0) as client,
        pytest.raises(UnavailableError, match=r"parameters\.execution_timeout_seconds"),
    ):
        client.infer("m", _row(1))
