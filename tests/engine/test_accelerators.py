"""The conveyor_mlp execution accelerator: a Sequential MLP served through PackedMLP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from models import write_model
from torch import nn

from conveyor.engine.errors import ModelLoadError
from conveyor.engine.model import Model
from conveyor.engine.model_config import parse_config

ACCEL = {"execution_accelerators": {"cpu_execution_accelerator": [{"name": "conveyor_mlp"}]}}
IO: dict[str, Any] = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [10]}],
    "outputs": [{"name": "p", "datatype": "FP32", "shape": [1]}],
}


def mlp(*tail: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(10, 40),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Sequential(nn.Linear(40, 33, bias=False), nn.GELU(approximate="tanh")),
        nn.Identity(),
        *tail,
    ).eval()


def load(repo: Path, module: nn.Module, io: dict[str, Any] = IO, **config: Any) -> Model:
    directory = write_model(repo, "m", 1, module, io, optimization=ACCEL, **config)
    return Model("m", 1, directory)


def test_sequential_mlp_runs_through_packed_weights(tmp_path: Path) -> None:
    module = mlp(nn.Linear(33, 1), nn.Sigmoid())
    model = load(tmp_path, module)
    assert model.accelerated is not None
    assert model.accelerated.describe == "conveyor_mlp 10-40-33-1"
    for batch in (1, 5, 64, 97):
        x = np.random.default_rng(batch).standard_normal((batch, 10), np.float32)
        (got,) = model.run([x])
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        assert got.shape == (batch, 1) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_without_the_option_the_program_runs(tmp_path: Path) -> None:
    directory = write_model(tmp_path, "m", 1, mlp(nn.Linear(33, 1)), IO)
    assert Model("m", 1, directory).accelerated is None


class Custom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


@pytest.mark.parametrize(
    ("module", "io", "reason"),
    [
        (Custom(), IO, "the program is a Custom, not a TorchScript nn.Sequential"),
        (mlp(nn.LayerNorm(33), nn.Linear(33, 1)), IO, r"module 5 \(LayerNorm\) is not a Linear"),
        (
            mlp(nn.Linear(33, 1), nn.ReLU(), nn.Sigmoid()),
            IO,
            r"module 7 \(Sigmoid\): an activation must directly follow a Linear",
        ),
        (
            mlp(nn.Linear(33, 2)),
            IO,
            r"the layers map 10 -> 2 features, the config x \[10\] -> p \[1\]",
        ),
        (
            mlp(nn.Linear(33, 1)),
            {**IO, "outputs": [*IO["outputs"], {"name": "q", "datatype": "FP32", "shape": [1]}]},
            "needs exactly one input and one output",
        ),
    ],
)
def test_not_applicable_fails_the_load_with_the_reason(
    tmp_path: Path, module: nn.Module, io: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ModelLoadError, match="execution accelerator conveyor_mlp: " + reason):
        load(tmp_path, module, io)


def test_float64_weights_are_refused(tmp_path: Path) -> None:
    module = mlp(nn.Linear(33, 1)).double()
    io = {
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [10]}],
        "outputs": [{"name": "p", "datatype": "FP64", "shape": [1]}],
    }
    with pytest.raises(ModelLoadError, match="FP32 input"):
        load(tmp_path, module, io)


@pytest.mark.parametrize(
    ("optimization", "message"),
    [
        ({"graph": {}}, "expected an object with 'execution_accelerators'"),
        (
            {"execution_accelerators": {"gpu_execution_accelerator": []}},
            "no GPU accelerators",
        ),
        (
            {"execution_accelerators": {"cpu_execution_accelerator": [{"name": "openvino"}]}},
            r"cpu_execution_accelerator\[0\]: expected \{name\[, parameters\]\} with name one of",
        ),
    ],
)
def test_config_errors_name_the_key(optimization: dict[str, Any], message: str) -> None:
    data = {"name": "m", "platform": "torchscript", "max_batch_size": 8, **IO}
    assert parse_config({**data, "optimization": ACCEL}, "c").cpu_accelerators == ("conveyor_mlp",)
    with pytest.raises(ModelLoadError, match=f"c: optimization.*{message}"):
        parse_config({**data, "optimization": optimization}, "c")


def test_served_end_to_end(tmp_path: Path) -> None:
    from conveyor.client import Client
    from conveyor.engine.server import Server

    module = mlp(nn.Linear(33, 1), nn.Sigmoid())
    write_model(tmp_path, "m", 1, module, IO, optimization=ACCEL)
    x = np.random.default_rng(0).standard_normal((7, 10), np.float32)
    with Server(tmp_path, port=0, poll_interval=3600) as server, Client(server.address) as client:
        got = client.infer("m", {"x": x})["p"]
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
