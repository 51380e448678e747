"""Engine test fixtures: a small model repository and an in-process server on 127.0.0.1."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from models import AFFINE_IO, VOCAB_IO, Affine, Vocab, write_model

from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc
from conveyor.engine.server import Server


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    write_model(root, "affine", 1, Affine(), AFFINE_IO, max_batch_size=8)
    write_model(root, "vocab", 1, Vocab(), VOCAB_IO)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Server]:
    with Server(repo, port=0, poll_interval=3600, max_message_bytes=1 << 20) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server: Server) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)
