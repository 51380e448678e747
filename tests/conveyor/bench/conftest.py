"""Bench test fixtures: a tiny TorchScript model served in-process on 127.0.0.1."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from conveyor.engine.server import Server


class Double(nn.Module):
    """y = 2x on FP32 [3]: cheap enough that the tests measure the harness, not the model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


def write_double(root: Path) -> Path:
    directory = root / "double" / "1"
    directory.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        torch.jit.script(Double()).save(str(directory / "model.pt"))
    config = {
        "name": "double",
        "platform": "torchscript",
        "max_batch_size": 64,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [3]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [3]}],
    }
    (directory / "config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repo = write_double(tmp_path_factory.mktemp("bench-repo"))
    with Server(repo, port=0, poll_interval=3600) as srv:
        yield srv
