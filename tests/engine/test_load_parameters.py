"""RepositoryModelLoad's parameters through tritonclient: Triton's ``config`` override is
applied to that load; every other parameter and a foreign repository_name are refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from models import VERSION_IO, Version, write_model
from tritonclient.utils import InferenceServerException

from conveyor.engine.protos import grpc_service_pb2 as pb
from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc
from conveyor.engine.server import Server


@pytest.fixture
def served(
    tmp_path: Path,
) -> Iterator[tuple[tc.InferenceServerClient, pb_grpc.GRPCInferenceServiceStub]]:
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO, max_batch_size=64)
    server = Server(tmp_path, port=0, model_control="explicit").start()
    client = tc.InferenceServerClient(server.address)
    channel = grpc.insecure_channel(server.address)
    yield client, pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()
    client.close()
    server.stop()


def _config(**changes: object) -> str:
    body = {"name": "m", "platform": "torchscript", "max_batch_size": 64, **VERSION_IO}
    return json.dumps({**body, **changes})


def _rows_accepted(client: tc.InferenceServerClient, rows: int) -> bool:
    x = tc.InferInput("x", [rows, 1], "FP32")
    x.set_data_from_numpy(np.zeros((rows, 1), np.float32))
    try:
        client.infer("m", [x])
    except InferenceServerException as exc:
        assert exc.status() == "StatusCode.INVALID_ARGUMENT", exc.message()
        return False
    return True


def _refused(call: object, *args: object, **kw: object) -> str:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kw)  # type: ignore[operator]
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value.message()
    return info.value.message() or ""


def test_the_config_parameter_is_applied_to_that_load(served: tuple) -> None:
    client, _ = served
    client.load_model("m", config=_config(max_batch_size=2))
    assert _rows_accepted(client, 2) and not _rows_accepted(client, 8)
    # A load without it serves the files' config.json again.
    client.load_model("m")
    assert _rows_accepted(client, 8)


def test_a_bad_config_parameter_is_invalid_argument_naming_it(served: tuple) -> None:
    client, _ = served
    client.load_model("m")
    assert "parameter 'config': 'name'" in _refused(
        client.load_model, "m", config='{"max_batch_size": 2}'
    )
    assert "parameter 'config': not valid JSON" in _refused(client.load_model, "m", config="{")
    # Python's json raises ValueError (an integer of 5001 digits) and RecursionError (deep
    # nesting) besides JSONDecodeError: they were INTERNAL with a traceback in the log.
    for text in ('{"max_batch_size": ' + "9" * 5001 + "}", "[" * 100_000 + "]" * 100_000):
        assert "parameter 'config': not valid JSON" in _refused(client.load_model, "m", config=text)
    message = _refused(client.load_model, "m", config=_config(name="other"))
    assert "parameter 'config'" in message and "'other'" in message
    assert "parameter 'config': unknown keys ['colour']" in _refused(
        client.load_model, "m", config=_config(colour="red")
    )
    assert _rows_accepted(client, 8)  # the refused loads changed nothing


def test_other_load_parameters_and_repositories_are_refused(served: tuple) -> None:
    client, stub = served
    message = _refused(client.load_model, "m", config=_config(), files={"file:1/model.pt": b"x"})
    assert "parameter 'file:1/model.pt'" in message
    request = pb.RepositoryModelLoadRequest(model_name="m")
    request.parameters["priority"].int64_param = 1
    with pytest.raises(grpc.RpcError) as info:
        stub.RepositoryModelLoad(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameter 'priority'" in info.value.details()
    for call, request_type in (
        (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest),
        (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(request_type(repository_name="no-such-repo", model_name="m"), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "repository_name 'no-such-repo'" in info.value.details()
    assert not client.is_model_ready("m")  # nothing was loaded by the refused requests


def test_the_sdk_loads_with_a_config_and_reads_the_served_config(tmp_path: Path) -> None:
    from conveyor.client import AsyncClient, Client, NotFoundError

    write_model(tmp_path, "m", 1, Version(1), VERSION_IO, max_batch_size=64)
    with Server(tmp_path, port=0, model_control="explicit") as server:
        with Client(server.address, timeout=10) as sdk:
            sdk.load_model("m", config=json.loads(_config(max_batch_size=2)))
            assert sdk.model_config("m").max_batch_size == 2
            sdk.load_model("m", config=_config(max_batch_size=4))  # its JSON text as well
            assert sdk.model_config("m", "1").max_batch_size == 4
            sdk.load_model("m")
            config = sdk.model_config("m")
            assert config.max_batch_size == 64 and [i.name for i in config.input] == ["x"]
            with pytest.raises(NotFoundError):
                sdk.model_config("nope")
            with pytest.raises(TypeError, match="config: expected a dict or its JSON text"):
                sdk.load_model("m", config=42)  # type: ignore[arg-type]

        async def load_and_read() -> int:
            async with AsyncClient(server.address, timeout=10) as aio:
                await aio.load_model("m", config=json.loads(_config(max_batch_size=3)))
                return (await aio.model_config("m")).max_batch_size

        assert asyncio.run(load_and_read()) == 3


def test_unload_takes_unload_dependents_and_refuses_other_parameters(served: tuple) -> None:
    client, stub = served
    client.load_model("m")
    request = pb.RepositoryModelUnloadRequest(model_name="m")
    request.parameters["force"].bool_param = True
    with pytest.raises(grpc.RpcError) as info:
        stub.RepositoryModelUnload(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameter 'force'" in info.value.details()
    request = pb.RepositoryModelUnloadRequest(model_name="m")
    request.parameters["unload_dependents"].string_param = "yes"
    with pytest.raises(grpc.RpcError) as info:
        stub.RepositoryModelUnload(request, timeout=10)
    assert "expected a bool_param" in info.value.details()
    assert client.is_model_ready("m")  # the refused requests unloaded nothing
    client.unload_model("m", unload_dependents=True)  # tritonclient sends it always
    assert not client.is_model_ready("m")
