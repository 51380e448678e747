"""An unmodified third-party client (tritonclient.grpc from PyPI) against conveyor."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from models import (
    AFFINE_IO,
    LABELER_IO,
    SLOW_IO,
    VOCAB_IO,
    Affine,
    Labeler,
    Slow,
    Vocab,
    write_model,
)
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from conveyor.engine.server import Server

BATCHED_V1: dict = {
    "max_batch_size": 16,
    "dynamic_batching": {
        "preferred_batch_size": [8, 4],
        "max_queue_delay_microseconds": 500,
        "max_queue_size": 32,
        "priority_levels": 3,
    },
    "instance_count": 2,
    "parameters": {"execution_timeout_seconds": "5", "drift": False},
    "version_policy": {"all": {}},
}


@pytest.fixture(scope="module")
def triton(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, tc.InferenceServerClient]]:
    root = tmp_path_factory.mktemp("triton-repo")
    write_model(root, "affine", 1, Affine(), AFFINE_IO)
    write_model(root, "vocab", 1, Vocab(), VOCAB_IO)
    write_model(root, "labeler", 1, Labeler(), LABELER_IO)
    write_model(root, "slow", 1, Slow(), SLOW_IO)
    # Two versions with different batching, served together, for ModelConfig.
    write_model(root, "batched", 1, Labeler(), LABELER_IO, **BATCHED_V1)
    write_model(root, "batched", 2, Labeler(), LABELER_IO, version_policy={"all": {}})
    server = Server(
        root, port=0, model_control="explicit", load_models=["affine", "labeler", "batched", "slow"]
    ).start()
    client = tc.InferenceServerClient(server.address)
    yield server, client
    client.close()
    server.stop()


def test_health_and_metadata(triton: tuple[Server, tc.InferenceServerClient]) -> None:
    _, client = triton
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("affine") and not client.is_model_ready("vocab")
    meta = client.get_model_metadata("affine", as_json=True)
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert client.get_server_metadata().name == "conveyor"


def test_infer_raw(triton: tuple[Server, tc.InferenceServerClient]) -> None:
    _, client = triton
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    inp = tc.InferInput("x", [3, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(
        "affine", [inp], outputs=[tc.InferRequestedOutput("total")], request_id="t1"
    )
    assert result.get_response().id == "t1"
    np.testing.assert_array_equal(result.as_numpy("total"), x.sum(1, keepdims=True))
    assert result.as_numpy("y") is None


def test_bytes_output(triton: tuple[Server, tc.InferenceServerClient]) -> None:
    _, client = triton
    inp = tc.InferInput("x", [2, 2], "FP32")
    inp.set_data_from_numpy(np.array([[1, 1], [-1, -1]], np.float32))
    result = client.infer("labeler", [inp])
    assert result.as_numpy("label").tolist() == [[b"pos"], [b"neg"]]


def test_infer_typed_through_tritons_own_stub(
    triton: tuple[Server, tc.InferenceServerClient],
) -> None:
    server, _ = triton
    request = service_pb2.ModelInferRequest(
        model_name="affine",
        inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(
                name="x",
                datatype="FP32",
                shape=[1, 4],
                contents=service_pb2.InferTensorContents(fp32_contents=[1, 2, 3, 4]),
            )
        ],
    )
    with grpc.insecure_channel(server.address) as channel:
        resp = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    result = tc.InferResult(resp)
    np.testing.assert_array_equal(result.as_numpy("y"), [[3, 5, 7, 9]])


def test_errors_arrive_as_triton_exceptions(
    triton: tuple[Server, tc.InferenceServerClient],
) -> None:
    _, client = triton
    inp = tc.InferInput("x", [1, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("affine", [inp])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'x'" in info.value.message()


def test_streaming_infer(triton: tuple[Server, tc.InferenceServerClient]) -> None:
    _, client = triton
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(5):
            inp = tc.InferInput("x", [1, 4], "FP32")
            value = -5000.0 if i == 2 else float(i)
            inp.set_data_from_numpy(np.full((1, 4), value, np.float32))
            client.async_stream_infer("affine", [inp], request_id=f"s{i}")
        got = [results.get(timeout=10) for _ in range(5)]
    finally:
        client.stop_stream()
    ok = {r.get_response().id: r.as_numpy("y")[0, 0] for r, e in got if e is None}
    errors = [e for r, e in got if e is not None]
    assert ok == {"s0": 1.0, "s1": 3.0, "s3": 7.0, "s4": 9.0}
    assert len(errors) == 1 and "below -1000" in str(errors[0])


def test_stream_answers_in_request_order(
    triton: tuple[Server, tc.InferenceServerClient],
) -> None:
    """A stream's answers come in request order, as Triton's for a model that is not
    decoupled: the error callback gets no id, so a client tells requests apart by order.
    The first request takes longest, the second fails at once, the third is quick; the
    stream's requests still run concurrently: the three behind the head batch together."""
    _, client = triton

    def executions() -> tuple[int, int]:
        (stats,) = client.get_inference_statistics("slow").model_stats
        return stats.inference_count, stats.execution_count

    before = executions()
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))

    def send(model: str, value: float, shape: list[int], request_id: str) -> None:
        inp = tc.InferInput("x", shape, "FP32")
        inp.set_data_from_numpy(np.full(shape, value, np.float32))
        client.async_stream_infer(model, [inp], request_id=request_id)

    try:
        send("slow", 20000.0, [1, 1], "slow-head")  # ~0.2 s of matrix products
        send("affine", 1.0, [1, 3], "invalid")  # the wrong shape: refused before queueing
        send("affine", 1.0, [1, 4], "quick")
        for i in range(3):  # queued while the head runs: one batch after it
            send("slow", 0.0, [1, 1], f"slow-quick-{i}")
        got = [results.get(timeout=30) for _ in range(6)]
    finally:
        client.stop_stream()
    first, invalid, quick, *rest = got
    assert first[1] is None and first[0].get_response().id == "slow-head"
    assert invalid[0] is None and "shape [1, 3]" in str(invalid[1])
    assert quick[1] is None and quick[0].get_response().id == "quick"
    assert [(r.get_response().id, e) for r, e in rest] == [
        (f"slow-quick-{i}", None) for i in range(3)
    ]
    inferences, batches = executions()
    # One by one would be 4 executions; the three batch together (with the head too,
    # when they reach the queue before it leaves).
    assert inferences - before[0] == 4 and batches - before[1] in (1, 2)


def test_load_and_unload(triton: tuple[Server, tc.InferenceServerClient]) -> None:
    _, client = triton
    client.load_model("vocab")
    assert client.is_model_ready("vocab")
    colour = tc.InferInput("colour", [1, 2], "BYTES")
    colour.set_data_from_numpy(np.array([["red", "blue"]], dtype=object))
    x = tc.InferInput("x", [1, 3], "FP32")
    x.set_data_from_numpy(np.ones((1, 3), np.float32))
    np.testing.assert_array_equal(client.infer("vocab", [colour, x]).as_numpy("out"), [[1, 3, 3]])
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "vocab", "version": "1", "state": "READY"} in index
    client.unload_model("vocab")
    assert not client.is_model_ready("vocab")
    stats = client.get_inference_statistics("affine", as_json=True)
    assert int(stats["model_stats"][0]["inference_count"]) > 0
    with pytest.raises(InferenceServerException):
        client.load_model("does-not-exist")


def test_tritonclient_and_conveyor_share_a_process(tmp_path: Path) -> None:
    """Both register `inference.*` messages; ours live in a private pool, so no clash."""
    from conveyor.engine.protos import grpc_service_pb2 as ours

    assert ours.ModelInferRequest.DESCRIPTOR is not service_pb2.ModelInferRequest.DESCRIPTOR
    wire = service_pb2.ModelInferRequest(model_name="m", id="1").SerializeToString()
    assert ours.ModelInferRequest.FromString(wire).model_name == "m"


def test_model_config_as_protobuf(triton: tuple[Server, tc.InferenceServerClient]) -> None:
    """Triton's enums and dims (no batch dim); the defaults conveyor runs with, filled in."""
    _, client = triton
    config = client.get_model_config("affine").config
    assert (config.name, config.platform, config.max_batch_size) == ("affine", "torchscript", 64)
    fp32, int64 = model_config_pb2.TYPE_FP32, model_config_pb2.TYPE_INT64
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("x", fp32, [4])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("y", fp32, [4]),
        ("total", int64, [1]),
    ]
    assert config.version_policy.latest.num_versions == 1
    [group] = config.instance_group
    assert (group.count, group.kind) == (1, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    batching = config.dynamic_batching
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert list(batching.preferred_batch_size) == []
    assert batching.max_queue_delay_microseconds == 250
    # config.json's default level 0 is the lowest; Triton's field names the level.
    assert (batching.priority_levels, batching.default_priority_level) == (2, 2)
    policy = batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (1024, 0)
    assert policy.allow_timeout_override
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    assert not config.HasField("optimization") and not config.parameters


def test_model_config_as_json_for_a_version(
    triton: tuple[Server, tc.InferenceServerClient],
) -> None:
    """What scripts read (get_model_config(as_json=True)): each version its own config."""
    _, client = triton
    assert client.get_model_config("batched", "1", as_json=True) == {
        "config": {
            "name": "batched",
            "platform": "torchscript",
            "version_policy": {"all": {}},
            "max_batch_size": 16,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": ["2"]}],
            "output": [
                {"name": "score", "data_type": "TYPE_FP32", "dims": ["1"]},
                {"name": "label", "data_type": "TYPE_STRING", "dims": ["1"]},
            ],
            "instance_group": [{"name": "batched_0", "count": 2, "kind": "KIND_CPU"}],
            "dynamic_batching": {
                "preferred_batch_size": [4, 8],
                "max_queue_delay_microseconds": "500",
                "priority_levels": "3",
                "default_priority_level": "3",
                "default_queue_policy": {"allow_timeout_override": True, "max_queue_size": 32},
            },
            "parameters": {
                "execution_timeout_seconds": {"string_value": "5"},
                "drift": {"string_value": "false"},
            },
        }
    }
    # No version: the highest loaded one, with its own (default) batching.
    latest = client.get_model_config("batched").config
    assert latest.max_batch_size == 64 and latest.instance_group[0].count == 1
    assert list(latest.dynamic_batching.preferred_batch_size) == []
    assert client.get_model_config("batched", "2") == client.get_model_config("batched")


def test_model_config_errors(triton: tuple[Server, tc.InferenceServerClient]) -> None:
    _, client = triton
    for args, code, text in (
        (("nope",), "NOT_FOUND", "'nope'"),
        (("affine", "9"), "NOT_FOUND", "version '9'"),
        (("affine", "+1"), "NOT_FOUND", "version '+1'"),
    ):
        with pytest.raises(InferenceServerException) as info:
            client.get_model_config(*args)
        assert info.value.status() == f"StatusCode.{code}" and text in info.value.message()
    assert "model_configuration" in client.get_server_metadata().extensions


def test_model_config_of_an_unloaded_model_is_unavailable(tmp_path: Path) -> None:
    write_model(tmp_path, "affine", 1, Affine(), AFFINE_IO)
    with Server(tmp_path, port=0, model_control="explicit", load_models=["affine"]) as server:
        client = tc.InferenceServerClient(server.address)
        try:
            client.unload_model("affine")
            with pytest.raises(InferenceServerException) as info:
                client.get_model_config("affine")
            assert info.value.status() == "StatusCode.UNAVAILABLE"
        finally:
            client.close()


def test_model_config_shows_the_flags_that_override_config_json(tmp_path: Path) -> None:
    """The effective configuration, as Triton returns it: server flags win over the file."""
    write_model(tmp_path, "batched", 1, Labeler(), LABELER_IO, **BATCHED_V1)
    with Server(
        tmp_path,
        port=0,
        max_batch_size=8,
        max_queue_delay_microseconds=1000,
        max_queue_size=7,
        instance_count=3,
        version_policy="latest:2",
    ) as server:
        client = tc.InferenceServerClient(server.address)
        try:
            config = client.get_model_config("batched").config
        finally:
            client.close()
    assert config.max_batch_size == 8 and config.instance_group[0].count == 3
    batching = config.dynamic_batching
    assert batching.max_queue_delay_microseconds == 1000
    assert batching.default_queue_policy.max_queue_size == 7
    assert list(batching.preferred_batch_size) == [4, 8]  # no flag for it: the file's
    # The model's own version policy wins over the server's default.
    assert config.version_policy.WhichOneof("policy_choice") == "all"
