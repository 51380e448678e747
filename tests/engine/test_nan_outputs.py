"""A model's NaN output: the client's error (INVALID_ARGUMENT naming the input) when its
input held NaN or inf, the model's (INTERNAL) otherwise; judged request by request."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from models import write_model
from torch import nn

from conveyor.client import Client, InvalidArgumentError
from conveyor.engine.batcher import Batcher, Pending
from conveyor.engine.errors import Internal, InvalidArgument
from conveyor.engine.model import Model
from conveyor.engine.model_config import DynamicBatching
from conveyor.engine.server import Server

IO = {
    "inputs": [
        {"name": "label", "datatype": "BYTES", "shape": [1]},  # skipped by the input check
        {"name": "x", "datatype": "FP32", "shape": [2]},
    ],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [2]}],
}


class Centre(nn.Module):
    """Each row minus its mean (NaN in: NaN out; inf in: inf - inf = NaN out); a row
    starting below -1000 comes out NaN although its input is finite (a broken model)."""

    def forward(self, label: list[str], x: torch.Tensor) -> torch.Tensor:
        y = x - x.mean(dim=1, keepdim=True)
        return torch.where(x[:, :1] < -1000.0, torch.full_like(y, float("nan")), y)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    write_model(root, "centre", 1, Centre(), IO, max_batch_size=8)
    return root


def _inputs(*rows: tuple[float, float]) -> list[np.ndarray]:
    return [np.full((len(rows), 1), b"a", object), np.array(rows, np.float32)]


def test_nan_from_a_non_finite_input_names_the_input(repo: Path) -> None:
    model = Model("centre", 1, repo / "centre" / "1")
    np.testing.assert_array_equal(model.run(_inputs((1, 3)))[0], [[-1, 1]])
    with pytest.raises(InvalidArgument) as exc:
        model.run(_inputs((1, 3), (np.nan, 1), (np.inf, 2)))
    assert exc.value.message == (
        "input 'x' contains NaN and inf (first at row 1); model 'centre' returned NaN for "
        "output 'y'"
    )
    with pytest.raises(InvalidArgument, match=r"^input 'x' contains inf \(first at row 0\);"):
        model.run(_inputs((np.inf, 2)))
    # Finite inputs and a NaN output: the model is broken, a server error as before.
    with pytest.raises(Internal, match="output 'y': the model returned NaN"):
        model.run(_inputs((-2000, 1)))


def test_a_non_finite_input_names_its_column_and_row(tmp_path: Path) -> None:
    # "input 'numeric' contains NaN" left a client to search its whole table for the cell.
    columns = {**IO["inputs"][1], "columns": ["left", "right"]}
    io = {**IO, "inputs": [IO["inputs"][0], columns]}
    model = Model("centre", 1, write_model(tmp_path, "centre", 1, Centre(), io, max_batch_size=8))
    with pytest.raises(InvalidArgument, match=r"^input 'x' contains NaN \(first at row 1, "):
        model.run(_inputs((1, 3), (2, np.nan)))
    with pytest.raises(InvalidArgument, match=r"row 1, column 'right'\);"):
        model.run(_inputs((1, 3), (2, np.nan)))


def test_a_batch_answers_each_request_by_its_own_inputs(repo: Path) -> None:
    model = Model("centre", 1, repo / "centre" / "1")
    entered, release = threading.Event(), threading.Event()
    sizes: list[int] = []

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        # The first batch (one blocker request) holds the worker while the requests
        # under test queue up, so they are taken as one batch.
        entered.set()
        assert release.wait(10)
        sizes.append(len(inputs[1]))
        return model.run(inputs)

    batcher = Batcher("centre:1", run, 8, DynamicBatching(max_queue_delay_microseconds=0))
    rows = [(1, 3), (np.nan, 1), (np.inf, 5), (-2000, 1), (2, 6)]

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()

        def pending(row: tuple[float, float]) -> Pending:
            return Pending(
                inputs=_inputs(row),
                rows=1,
                level=1,
                deadline=None,
                future=loop.create_future(),
                finish=lambda outs: outs[0],
                loop=loop,
            )

        blocker = pending((0, 0))
        batcher.submit(blocker)
        assert await loop.run_in_executor(None, entered.wait, 10)
        pendings = [pending(row) for row in rows]
        for p in pendings:
            batcher.submit(p)
        release.set()
        futures = [blocker.future, *(p.future for p in pendings)]
        results = asyncio.gather(*futures, return_exceptions=True)
        return (await asyncio.wait_for(results, 20))[1:]

    try:
        ok1, nan, inf, broken, ok2 = asyncio.run(main())
    finally:
        release.set()
        batcher.close()
    # The blocker, the five together, then each of them alone (the batch failed).
    assert sizes == [1, len(rows), 1, 1, 1, 1, 1], sizes
    np.testing.assert_array_equal(ok1, [[-1, 1]])
    np.testing.assert_array_equal(ok2, [[-2, 2]])
    assert (
        isinstance(nan, InvalidArgument)
        and "input 'x' contains NaN (first at row 0);" in nan.message
    )
    assert (
        isinstance(inf, InvalidArgument)
        and "input 'x' contains inf (first at row 0);" in inf.message
    )
    assert isinstance(broken, Internal) and "the model returned NaN" in broken.message


def test_a_nan_input_is_a_client_error_in_the_status_and_metrics(repo: Path) -> None:
    # Not INTERNAL: the alerts count INTERNAL as a server error (engine/README.md).
    with Server(repo, port=0) as server, Client(server.address, timeout=10) as client:
        inputs = dict(zip(("label", "x"), _inputs((np.nan, 1.0)), strict=True))
        with pytest.raises(InvalidArgumentError, match="input 'x' contains NaN"):
            client.infer("centre", inputs)
        labels = {"model": "centre", "version": "1"}
        count = server.metrics.registry.get_sample_value
        assert count("conveyor_requests_total", {**labels, "code": "INVALID_ARGUMENT"}) == 1
        assert count("conveyor_requests_total", {**labels, "code": "INTERNAL"}) is None
