"""Tiny TorchScript models and a repository writer for the engine tests."""

# No `from __future__ import annotations`: TorchScript reads these annotations.

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn


class Affine(nn.Module):
    """y = 2x + 1 on FP32 [4]; also returns the row sum as INT64 [1]."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if bool((x < -1000.0).any()):
            raise RuntimeError("input below -1000 is not allowed")
        return x * 2.0 + 1.0, x.sum(dim=1, keepdim=True).to(torch.int64)


class Exportable(nn.Module):
    """Affine without the data-dependent check, so torch.export can trace it."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2.0 + 1.0, x.sum(dim=1, keepdim=True).to(torch.int64)


class Widen(nn.Module):
    """INT8 in, FP64 out: responses eight times the size of their requests."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64)


class Vocab(nn.Module):
    """A BYTES column [batch, 2] looked up in a vocabulary, plus FP32 [3] numeric features."""

    vocab: dict[str, int]

    def __init__(self) -> None:
        super().__init__()
        self.vocab = {"red": 1, "green": 2, "blue": 3}

    def forward(self, colour: list[str], x: torch.Tensor) -> torch.Tensor:
        ids = [self.vocab.get(c, 0) for c in colour]
        t = torch.tensor(ids, dtype=torch.float32).reshape(x.shape[0], 2)
        return torch.cat([t, x.sum(dim=1, keepdim=True)], dim=1)


class Version(nn.Module):
    """Answers its version number for each row (to tell versions apart)."""

    def __init__(self, version: int) -> None:
        super().__init__()
        self.version = version

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1), float(self.version))


AFFINE_IO: dict[str, Any] = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
    "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [4]},
        {"name": "total", "datatype": "INT64", "shape": [1]},
    ],
}
VOCAB_IO: dict[str, Any] = {
    "inputs": [
        {"name": "colour", "datatype": "BYTES", "shape": [2]},
        {"name": "x", "datatype": "FP32", "shape": [3]},
    ],
    "outputs": [{"name": "out", "datatype": "FP32", "shape": [3]}],
}
VERSION_IO: dict[str, Any] = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
    "outputs": [{"name": "v", "datatype": "FP32", "shape": [1]}],
}


def write_model(
    repo: Path,
    name: str,
    version: int,
    module: nn.Module,
    io: dict[str, Any],
    **config: Any,
) -> Path:
    """Script ``module`` into ``repo/name/version/model.pt`` with its config.json."""
    directory = repo / name / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # deprecated in torch 2.13, still what the trainer writes
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(directory / "model.pt"))
    body = {"name": name, "platform": "torchscript", "max_batch_size": 64, **io, **config}
    (directory / "config.json").write_text(json.dumps(body))
    return directory


class Labeler(nn.Module):
    """A BYTES output: one label per row, next to a numeric score."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        score = x.sum(dim=1, keepdim=True)
        values: list[float] = score.reshape(-1).tolist()
        labels = ["pos" if v > 0 else "neg" for v in values]
        return score, labels


LABELER_IO: dict[str, Any] = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}],
    "outputs": [
        {"name": "score", "datatype": "FP32", "shape": [1]},
        {"name": "label", "datatype": "BYTES", "shape": [1]},
    ],
}


class Slow(nn.Module):
    """y = x on FP32 [1], after ``x[0, 0]`` rounds of 64 x 64 matrix products (zeros, as in
    the load's warm-up: none), so a test can make one request take longer than another."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.eye(64)
        for _ in range(int(x[0, 0].item())):
            m = m @ torch.eye(64)
        return x + m[0, 1]


SLOW_IO: dict[str, Any] = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
}
