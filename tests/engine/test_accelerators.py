"""The conveyor_mlp execution accelerator: a Sequential MLP served through PackedMLP."""

from __future__ import annotations

import json
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
    assert model.accelerated is not None  # the whole program: one PackedMLP call
    assert model.accelerator == "conveyor_mlp 10-40-33-1"
    for batch in (1, 5, 64, 97):
        x = np.random.default_rng(batch).standard_normal((batch, 10), np.float32)
        (got,) = model.run([x])
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        assert got.shape == (batch, 1) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_without_the_option_the_program_runs(tmp_path: Path) -> None:
    directory = write_model(tmp_path, "m", 1, mlp(nn.Linear(33, 1)), IO)
    model = Model("m", 1, directory)
    assert model.accelerated is None and model.accelerator is None


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
            r"cpu_execution_accelerator\[0\]: expected \{name\} with name one of",
        ),
        (
            {
                "execution_accelerators": {
                    "cpu_execution_accelerator": [
                        {"name": "conveyor_mlp", "parameters": {"threads": "4"}}
                    ]
                }
            },
            r"\(no parameters\), got",
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


def write_exported(repo: Path, module: nn.Module, features: int = 10) -> Path:
    directory = repo / "m" / "1"
    directory.mkdir(parents=True)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(module, (torch.randn(2, features),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(directory / "model.pt2"))
    config = {"name": "m", "platform": "torch_export", "max_batch_size": 64, **IO}
    (directory / "config.json").write_text(json.dumps({**config, "optimization": ACCEL}))
    return directory


def test_torch_export_chain_runs_through_packed_weights(tmp_path: Path) -> None:
    module = mlp(nn.Linear(33, 1), nn.Sigmoid())
    model = Model("m", 1, write_exported(tmp_path, module))
    assert model.accelerated is not None  # the whole program: one PackedMLP call
    assert model.accelerator == "conveyor_mlp 10-40-33-1"
    x = np.random.default_rng(1).standard_normal((9, 10), np.float32)
    (got,) = model.run([x])
    with torch.no_grad():
        np.testing.assert_allclose(got, module(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(10, 10), nn.Linear(10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)) + x)


@pytest.mark.parametrize(
    ("module", "chains"),
    [
        (Residual(), "10-10, 10-1"),
        (nn.Sequential(nn.ReLU(), nn.Linear(10, 1)), "10-1"),
        (mlp(nn.LayerNorm(33), nn.Linear(33, 1)), "10-40-33, 33-1"),
    ],
)
def test_torch_export_chains_inside_a_graph_are_rewritten(
    tmp_path: Path, module: nn.Module, chains: str
) -> None:
    module = module.eval()
    model = Model("m", 1, write_exported(tmp_path, module))
    assert model.accelerated is None  # not one chain: the program runs, with its chains replaced
    assert model.accelerator == "conveyor_mlp " + chains
    targets = {str(n.target) for n in model.program.graph.nodes}
    assert "aten.linear.default" not in targets
    x = np.random.default_rng(2).standard_normal((6, 10), np.float32)
    (got,) = model.run([x])
    with torch.no_grad():
        np.testing.assert_allclose(got, module(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)


def test_torch_export_graph_without_a_linear_fails_the_load(tmp_path: Path) -> None:
    class Scale(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1] * 2

    with pytest.raises(ModelLoadError, match=r"conveyor_mlp: the graph has no aten\.linear"):
        Model("m", 1, write_exported(tmp_path, Scale()))


def test_checked_in_batches_the_model_accepts_and_a_mismatch_fails(tmp_path, monkeypatch) -> None:
    import conveyor.kernels

    module = mlp(nn.Linear(33, 1))
    assert load(tmp_path / "a", module, max_batch_size=1).accelerated is not None

    class Off(conveyor.kernels.PackedMLP):
        def run(self, x, out=None):
            return super().run(x, out) + np.float32(1e-3)

    monkeypatch.setattr(conveyor.kernels, "PackedMLP", Off)
    with pytest.raises(ModelLoadError, match=r"outputs differ from the program's .*max 0\.001"):
        load(tmp_path / "b", module)


class Classifier(nn.Module):
    """The trainer's output pattern: standardise, MLP, head; probability and logits."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.linspace(-1, 1, 10))
        self.body = mlp(nn.Linear(33, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.body(x - self.mean)
        return torch.sigmoid(logits), logits


def test_torch_export_two_outputs_and_a_mismatch(tmp_path: Path, monkeypatch) -> None:
    import conveyor.kernels

    two = {**IO, "outputs": [*IO["outputs"], {"name": "logits", "datatype": "FP32", "shape": [1]}]}
    module = Classifier().eval()

    def write(directory: Path) -> Path:
        path = write_exported(directory, module)
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, **two}))
        return path

    model = Model("m", 1, write(tmp_path / "a"))
    assert model.accelerator == "conveyor_mlp 10-40-33-1"  # the head's logits feed two outputs
    x = np.random.default_rng(3).standard_normal((5, 10), np.float32)
    got = model.run([x])
    with torch.no_grad():
        want = module(torch.from_numpy(x))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-6)

    class Off(conveyor.kernels.PackedMLP):
        def __call__(self, x):
            return super().__call__(x) + 1e-3

    monkeypatch.setattr(conveyor.kernels, "PackedMLP", Off)
    with pytest.raises(ModelLoadError, match="rewritten graph's outputs differ"):
        Model("m", 1, write(tmp_path / "b"))


class TwoHeads(nn.Module):
    """A shared trunk feeding two heads: each head's chain reads the trunk chain's output."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(10, 16), nn.ReLU())
        self.a, self.b = nn.Linear(16, 1), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.trunk(x)
        return self.a(t), self.b(t)


def test_torch_export_shared_trunk_with_two_heads(tmp_path: Path) -> None:
    heads = {**IO, "outputs": [
        {"name": "a", "datatype": "FP32", "shape": [1]},
        {"name": "b", "datatype": "FP32", "shape": [3]},
    ]}  # fmt: skip
    module = TwoHeads().eval()
    path = write_exported(tmp_path, module)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **heads}))
    model = Model("m", 1, path)
    assert model.accelerator == "conveyor_mlp 10-16, 16-1, 16-3"
    x = np.random.default_rng(4).standard_normal((7, 10), np.float32)
    got = model.run([x])
    with torch.no_grad():
        want = module(torch.from_numpy(x))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-6)
