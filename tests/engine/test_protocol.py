"""OIP v2 round trips and every error status, through the generated stub."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conveyor.engine.protos import grpc_service_pb2 as pb
from conveyor.engine.server import Server
from conveyor.engine.tensors import encode_bytes

Tensor = pb.ModelInferRequest.InferInputTensor


def _request(model: str, x: np.ndarray, **kw: object) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[Tensor(name="x", datatype="FP32", shape=x.shape)],
        raw_input_contents=[x.astype(np.float32).tobytes()],
        **kw,
    )


def _outputs(resp: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"FP32": np.float32, "INT64": np.int64, "FP64": np.float64}
    return {
        o.name: np.frombuffer(raw, dtypes[o.datatype]).reshape(tuple(o.shape))
        for o, raw in zip(resp.outputs, resp.raw_output_contents, strict=True)
    }


def _code(stub_call: object, request: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        stub_call(request, timeout=10)  # type: ignore[operator]
    return info.value.code(), info.value.details()


# -- the proto matches the public protocol ------------------------------------------------------


def test_messages_match_tritons_wire_format() -> None:
    """Every message and field we define has the name, number, type and label that
    tritonclient's copy of the protocol has (only documented extensions are extra), and
    every enum value its number; ModelConfig's messages are in Triton's model_config.proto."""
    from tritonclient.grpc import model_config_pb2
    from tritonclient.grpc import service_pb2 as triton

    def tritons(name: str) -> object:
        messages = triton.DESCRIPTOR.message_types_by_name
        return (
            messages[name]
            if name in messages
            else model_config_pb2.DESCRIPTOR.message_types_by_name[name]
        )

    def same_enum(ours: object, theirs: object) -> None:
        for value in ours.values:  # type: ignore[attr-defined]
            assert theirs.values_by_name[value.name].number == value.number, value.full_name  # type: ignore[attr-defined]

    extensions = {
        ("ModelStatistics", "load_error"),
        ("ModelStatistics", "drift"),
        ("TensorMetadata", "parameters"),
    }
    # conveyor's own messages (carried by the extension fields above).
    own = {"FeatureDrift", "DriftStatistics"}

    def compare(ours: object, theirs: object) -> int:
        checked = 0
        for field in ours.fields:  # type: ignore[attr-defined]
            if (ours.name, field.name) in extensions:  # type: ignore[attr-defined]
                assert field.name not in theirs.fields_by_name  # type: ignore[attr-defined]
                continue
            other = theirs.fields_by_name[field.name]  # type: ignore[attr-defined]
            assert (field.number, field.type, field.is_repeated) == (
                other.number,
                other.type,
                other.is_repeated,
            ), f"{ours.full_name}.{field.name}"  # type: ignore[attr-defined]
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                assert field.message_type.full_name == other.message_type.full_name
            if field.type == FieldDescriptor.TYPE_ENUM:
                assert field.enum_type.full_name == other.enum_type.full_name
                same_enum(field.enum_type, other.enum_type)
            checked += 1
        for nested in ours.nested_types:  # type: ignore[attr-defined]
            if (ours.name, "parameters") in extensions and nested.name == "ParametersEntry":  # type: ignore[attr-defined]
                continue  # the map entry of our extension field
            checked += compare(nested, theirs.nested_types_by_name[nested.name])  # type: ignore[attr-defined]
        return checked

    fields = 0
    for name, message in pb.DESCRIPTOR.message_types_by_name.items():
        if name in own:
            assert name not in triton.DESCRIPTOR.message_types_by_name
            continue
        fields += compare(message, tritons(name))
    assert fields > 140
    for name, enum in pb.DESCRIPTOR.enum_types_by_name.items():
        same_enum(enum, model_config_pb2.DESCRIPTOR.enum_types_by_name[name])
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
        assert method.client_streaming == other.client_streaming


# -- health and metadata -----------------------------------------------------------------------


def test_health_and_server_metadata(stub: object) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live  # type: ignore[attr-defined]
    assert stub.ServerReady(pb.ServerReadyRequest()).ready  # type: ignore[attr-defined]
    assert stub.ModelReady(pb.ModelReadyRequest(name="affine")).ready  # type: ignore[attr-defined]
    assert stub.ModelReady(pb.ModelReadyRequest(name="affine", version="1")).ready  # type: ignore[attr-defined]
    assert not stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready  # type: ignore[attr-defined]
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())  # type: ignore[attr-defined]
    assert meta.name == "conveyor" and "model_repository" in meta.extensions


def test_model_metadata(stub: object) -> None:
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="vocab"))  # type: ignore[attr-defined]
    assert meta.platform == "torchscript" and list(meta.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("colour", "BYTES", [-1, 2]),
        ("x", "FP32", [-1, 3]),
    ]
    assert [(t.name, list(t.shape)) for t in meta.outputs] == [("out", [-1, 3])]


def test_grpc_health_service_and_reflection(server: Server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # Watch answers through context.write (it failed UNKNOWN every call)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(
            refl.ServerReflectionInfo(
                iter(
                    [
                        reflection_pb2.ServerReflectionRequest(list_services=""),
                        reflection_pb2.ServerReflectionRequest(
                            file_containing_symbol="inference.GRPCInferenceService"
                        ),
                        reflection_pb2.ServerReflectionRequest(
                            file_containing_symbol="inference.ModelConfig"
                        ),
                    ]
                ),
                timeout=10,
            )
        )
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
        assert replies[1].file_descriptor_response.file_descriptor_proto
        [raw] = replies[2].file_descriptor_response.file_descriptor_proto
        described = descriptor_pb2.FileDescriptorProto.FromString(raw)
        assert "ModelConfig" in {m.name for m in described.message_type}
        [service] = described.service
        assert "ModelConfig" in {m.name for m in service.method}


# -- inference round trips ---------------------------------------------------------------------


def test_infer_raw_multi_row_and_id_echo(stub: object) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    resp = stub.ModelInfer(_request("affine", x, id="req-7"), timeout=10)  # type: ignore[attr-defined]
    assert (resp.model_name, resp.model_version, resp.id) == ("affine", "1", "req-7")
    out = _outputs(resp)
    np.testing.assert_array_equal(out["y"], x * 2 + 1)
    np.testing.assert_array_equal(out["total"], x.sum(1, keepdims=True).astype(np.int64))


def test_infer_typed_contents_and_requested_outputs(stub: object) -> None:
    x = np.array([[1.5, -2, 3, 4]], dtype=np.float32)
    request = pb.ModelInferRequest(
        model_name="affine",
        model_version="1",
        inputs=[
            Tensor(
                name="x",
                datatype="FP32",
                shape=[1, 4],
                contents=pb.InferTensorContents(fp32_contents=x.ravel().tolist()),
            )
        ],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="total")],
    )
    resp = stub.ModelInfer(request, timeout=10)  # type: ignore[attr-defined]
    assert [o.name for o in resp.outputs] == ["total"]
    np.testing.assert_array_equal(_outputs(resp)["total"], [[6]])


def test_infer_bytes_raw_and_typed(stub: object) -> None:
    colours = [b"red", b"blue", b"green", b"mauve"]
    x = np.ones((2, 3), np.float32)
    raw = pb.ModelInferRequest(
        model_name="vocab",
        inputs=[
            Tensor(name="colour", datatype="BYTES", shape=[2, 2]),
            Tensor(name="x", datatype="FP32", shape=[2, 3]),
        ],
        raw_input_contents=[encode_bytes(colours), x.tobytes()],
    )
    typed = pb.ModelInferRequest(
        model_name="vocab",
        inputs=[
            Tensor(
                name="colour",
                datatype="BYTES",
                shape=[2, 2],
                contents=pb.InferTensorContents(bytes_contents=colours),
            ),
            Tensor(
                name="x",
                datatype="FP32",
                shape=[2, 3],
                contents=pb.InferTensorContents(fp32_contents=x.ravel().tolist()),
            ),
        ],
    )
    want = [[1, 3, 3], [2, 0, 3]]
    for request in (raw, typed):
        resp = stub.ModelInfer(request, timeout=10)  # type: ignore[attr-defined]
        np.testing.assert_array_equal(_outputs(resp)["out"], want)


def test_large_bytes_requests_are_decoded_off_the_event_loop(stub: object, monkeypatch) -> None:
    # Decoding BYTES is a Python loop: one valid request of 10 million elements held the
    # event loop, health probes included, for 5.6 s. Above DECODE_IN_THREAD_ELEMENTS the
    # decoder runs in a worker thread (no running loop there); small requests stay inline.
    import asyncio

    from conveyor.engine import service, validation

    seen: list[bool] = []
    decode = validation.RequestDecoder.decode

    def recording(self, request):
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:
            seen.append(False)
        return decode(self, request)

    monkeypatch.setattr(validation.RequestDecoder, "decode", recording)
    request = pb.ModelInferRequest(
        model_name="vocab",
        inputs=[
            Tensor(name="colour", datatype="BYTES", shape=[1, 2]),
            Tensor(name="x", datatype="FP32", shape=[1, 3]),
        ],
        raw_input_contents=[encode_bytes([b"red", b"blue"]), np.ones((1, 3), np.float32).tobytes()],
    )
    want = [[1, 3, 3]]
    np.testing.assert_array_equal(_outputs(stub.ModelInfer(request, timeout=10))["out"], want)
    monkeypatch.setattr(service, "DECODE_IN_THREAD_ELEMENTS", 1)  # 2 elements: a large one
    np.testing.assert_array_equal(_outputs(stub.ModelInfer(request, timeout=10))["out"], want)
    bad = pb.ModelInferRequest()
    bad.CopyFrom(request)
    bad.raw_input_contents[0] = encode_bytes([b"red"])  # refused from the thread too
    assert _code(stub.ModelInfer, bad)[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert seen == [True, False, False]


def test_stream_responses_carry_the_final_flag(stub: object) -> None:
    # Triton marks every response of a (not decoupled) model's stream final, errors
    # included; PyTriton's client waits for the flag.
    requests = [
        _request("affine", np.ones((1, 4), np.float32), id="ok"),
        _request("affine", np.ones((1, 3), np.float32), id="bad-shape"),
        _request("affine", np.ones((2, 4), np.float32), id="two-rows"),
    ]
    replies = list(stub.ModelStreamInfer(iter(requests), timeout=10))  # type: ignore[attr-defined]
    assert [r.infer_response.id for r in replies] == ["ok", "bad-shape", "two-rows"]
    assert [bool(r.error_message) for r in replies] == [False, True, False]
    for reply in replies:
        flag = reply.infer_response.parameters["triton_final_response"]
        assert flag.WhichOneof("parameter_choice") == "bool_param" and flag.bool_param


def test_a_request_without_id_is_answered_without_one(stub: object) -> None:
    # Triton echoes the request's id, empty when none was sent; the server's own id
    # (pid-counter) is for its logs only.
    x = np.ones((1, 4), np.float32)
    assert stub.ModelInfer(_request("affine", x), timeout=10).id == ""  # type: ignore[attr-defined]
    requests = [_request("affine", x), _request("affine", x, id="kept")]
    replies = list(stub.ModelStreamInfer(iter(requests), timeout=10))  # type: ignore[attr-defined]
    assert [r.infer_response.id for r in replies] == ["", "kept"]
    assert not any(r.error_message for r in replies)


def test_every_numeric_datatype_round_trips(tmp_path: object) -> None:
    import torch
    from models import write_model
    from torch import nn

    class Echo(nn.Module):
        def forward(
            self,
            a: torch.Tensor,
            b: torch.Tensor,
            c: torch.Tensor,
            d: torch.Tensor,
            e: torch.Tensor,
            f: torch.Tensor,
        ) -> tuple[
            torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
        ]:
            return a, b + 1, c + 1, d * 2, e * 2, f * 2

    kinds = [
        ("BOOL", np.bool_),
        ("INT32", np.int32),
        ("INT64", np.int64),
        ("FP16", np.float16),
        ("FP32", np.float32),
        ("FP64", np.float64),
    ]
    names = "abcdef"
    io = {
        "inputs": [
            {"name": n, "datatype": d, "shape": [2]} for n, (d, _) in zip(names, kinds, strict=True)
        ],
        "outputs": [
            {"name": f"o{n}", "datatype": d, "shape": [2]}
            for n, (d, _) in zip(names, kinds, strict=True)
        ],
    }
    write_model(tmp_path, "echo", 1, Echo(), io)  # type: ignore[arg-type]
    arrays = [np.array([[True, False]]), *[np.array([[1, 2]], dtype=t) for _, t in kinds[1:]]]
    request = pb.ModelInferRequest(
        model_name="echo",
        inputs=[
            Tensor(name=n, datatype=d, shape=[1, 2]) for n, (d, _) in zip(names, kinds, strict=True)
        ],
        raw_input_contents=[a.tobytes() for a in arrays],
    )
    with Server(tmp_path, port=0) as srv, grpc.insecure_channel(srv.address) as ch:  # type: ignore[arg-type]
        from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc

        resp = pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(request, timeout=10)
    got = {
        o.name: np.frombuffer(raw, t).reshape(tuple(o.shape))
        for o, raw, (_, t) in zip(resp.outputs, resp.raw_output_contents, kinds, strict=True)
    }
    assert [o.datatype for o in resp.outputs] == [d for d, _ in kinds]
    np.testing.assert_array_equal(got["oa"], [[True, False]])
    np.testing.assert_array_equal(got["ob"], [[2, 3]])
    np.testing.assert_array_equal(got["oc"], [[2, 3]])
    np.testing.assert_array_equal(got["od"], [[2, 4]])
    np.testing.assert_array_equal(got["of"], [[2, 4]])


# -- errors ------------------------------------------------------------------------------------


def test_unknown_model_and_version_are_not_found(stub: object) -> None:
    x = np.zeros((1, 4), np.float32)
    code, msg = _code(stub.ModelInfer, _request("nope", x))  # type: ignore[attr-defined]
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in msg
    code, msg = _code(stub.ModelInfer, _request("affine", x, model_version="9"))  # type: ignore[attr-defined]
    assert code == grpc.StatusCode.NOT_FOUND and "version '9'" in msg
    for spelled in (" 1", "+1", "1_0", "¹"):  # int() would take the first three
        code, msg = _code(stub.ModelInfer, _request("affine", x, model_version=spelled))  # type: ignore[attr-defined]
        assert code == grpc.StatusCode.NOT_FOUND and repr(spelled) in msg
    code, _ = _code(stub.ModelMetadata, pb.ModelMetadataRequest(name="nope"))  # type: ignore[attr-defined]
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = _code(stub.ModelStatistics, pb.ModelStatisticsRequest(name="nope"))  # type: ignore[attr-defined]
    assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r.inputs.__getitem__(0).__setattr__("datatype", "FP64"), "'x': datatype FP64"),
        (lambda r: r.inputs.__getitem__(0).__setattr__("name", "z"), "unexpected input 'z'"),
        (lambda r: r.inputs[0].shape.__setitem__(1, 5), "'x': shape [2, 5]"),
        (lambda r: r.inputs[0].shape.append(1), "'x': shape [2, 4, 1] should be [batch, 4]"),
        (lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 31), "31 bytes"),
        (lambda r: r.raw_input_contents.append(b""), "raw_input_contents has 2 entries"),
        (
            # Triton's words; the typed values were silently dropped.
            lambda r: r.inputs[0].contents.fp32_contents.extend([9.0] * 8),
            "input 'x': contents field must not be specified when using raw_input_contents "
            "for 'x' for model 'affine'",
        ),
        (
            lambda r: r.inputs[0].contents.SetInParent(),  # present though empty, as Triton
            "contents field must not be specified",
        ),
        (lambda r: r.inputs.add(name="x", datatype="FP32"), "expects 1 input"),
        (lambda r: r.inputs[0].shape.__setitem__(0, 9), "batch dim 9 is outside 1..8"),
        (lambda r: r.outputs.add(name="nope"), "requested output 'nope'"),
        (  # answered twice before
            lambda r: [r.outputs.add(name=n) for n in ("y", "total", "y")],
            "output 'y' already requested",
        ),
        (lambda r: r.parameters["priority"].__setattr__("uint64_param", 7), "priority"),
        (lambda r: r.parameters["timeout"].__setattr__("string_param", "x"), "'timeout'"),
    ],
)
def test_invalid_requests_name_the_field(stub: object, mutate: object, expected: str) -> None:
    request = _request("affine", np.zeros((2, 4), np.float32))
    mutate(request)  # type: ignore[operator]
    code, msg = _code(stub.ModelInfer, request)  # type: ignore[attr-defined]
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in msg


def test_bad_bytes_and_typed_contents(stub: object) -> None:
    request = pb.ModelInferRequest(
        model_name="vocab",
        inputs=[
            Tensor(name="colour", datatype="BYTES", shape=[1, 2]),
            Tensor(name="x", datatype="FP32", shape=[1, 3]),
        ],
        raw_input_contents=[b"\x05\0\0\0ab", np.zeros(3, np.float32).tobytes()],
    )
    code, msg = _code(stub.ModelInfer, request)  # type: ignore[attr-defined]
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'colour'" in msg and "claims 5" in msg
    typed = pb.ModelInferRequest(
        model_name="affine",
        inputs=[
            Tensor(
                name="x",
                datatype="FP32",
                shape=[1, 4],
                contents=pb.InferTensorContents(fp32_contents=[1, 2, 3]),
            )
        ],
    )
    code, msg = _code(stub.ModelInfer, typed)  # type: ignore[attr-defined]
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "holds 3 values" in msg


def test_bytes_that_are_not_utf8_are_invalid_argument(stub: object) -> None:
    # The model's vocabulary lookup got U+FFFD for them (the out-of-vocabulary id 0).
    request = pb.ModelInferRequest(
        model_name="vocab",
        inputs=[
            Tensor(name="colour", datatype="BYTES", shape=[1, 2]),
            Tensor(name="x", datatype="FP32", shape=[1, 3]),
        ],
        raw_input_contents=[encode_bytes([b"red", b"r\xe9d"]), np.zeros(3, np.float32).tobytes()],
    )
    code, msg = _code(stub.ModelInfer, request)  # type: ignore[attr-defined]
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'colour': BYTES element 1 (row-major) is not valid UTF-8" in msg
    request.raw_input_contents[0] = encode_bytes([b"red", "grün".encode()])
    resp = stub.ModelInfer(request, timeout=10)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(_outputs(resp)["out"], [[1, 0, 0]])


def test_model_error_is_internal_and_server_keeps_serving(stub: object) -> None:
    bad = _request("affine", np.full((1, 4), -5000, np.float32))
    code, msg = _code(stub.ModelInfer, bad)  # type: ignore[attr-defined]
    assert code == grpc.StatusCode.INTERNAL
    assert "input below -1000 is not allowed" in msg
    ok = stub.ModelInfer(_request("affine", np.zeros((1, 4), np.float32)), timeout=10)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(_outputs(ok)["y"], np.ones((1, 4)))


def test_oversized_message_refused_by_limit(stub: object) -> None:
    huge = pb.ModelInferRequest(
        model_name="affine",
        inputs=[Tensor(name="x", datatype="FP32", shape=[1, 4])],
        raw_input_contents=[b"\0" * (2 << 20)],  # the test server allows 1 MiB
    )
    code, _ = _code(stub.ModelInfer, huge)  # type: ignore[attr-defined]
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.ServerLive(pb.ServerLiveRequest()).live  # type: ignore[attr-defined]


def test_statistics_and_index(stub: object) -> None:
    stub.ModelInfer(_request("affine", np.zeros((2, 4), np.float32)), timeout=10)  # type: ignore[attr-defined]
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="affine"), timeout=10)  # type: ignore[attr-defined]
    (s,) = stats.model_stats
    assert s.name == "affine" and s.version == "1"
    assert s.inference_count >= 2 and s.execution_count >= 1
    assert s.inference_stats.success.count >= 1 and s.batch_stats
    assert s.inference_stats.fail.count >= 1  # the invalid requests of the tests above
    for spelled in ("9", "²"):  # int() refuses "²", which str.isdigit() accepts
        request = pb.ModelStatisticsRequest(name="affine", version=spelled)
        assert _code(stub.ModelStatistics, request)[0] == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)  # type: ignore[attr-defined]
    assert {(m.name, m.version, m.state) for m in index.models} >= {
        ("affine", "1", "READY"),
        ("vocab", "1", "READY"),
    }


def test_statistics_without_a_model_name_ignore_the_version(stub: object) -> None:
    # As Triton: no name means every model, whatever the version; it was looked up in
    # the first model ('affine' has no version 2) and answered NOT_FOUND.
    def names(version: str) -> list[tuple[str, str]]:
        request = pb.ModelStatisticsRequest(version=version)
        reply = stub.ModelStatistics(request, timeout=10)  # type: ignore[attr-defined]
        return [(s.name, s.version) for s in reply.model_stats]

    assert names("2") == names("1") == names("") == [("affine", "1"), ("vocab", "1")]
    code, msg = _code(stub.ModelStatistics, pb.ModelStatisticsRequest(version="v2"))  # type: ignore[attr-defined]
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "version 'v2'" in msg


def test_generated_code_matches_the_proto(tmp_path: object) -> None:
    """The checked-in *_pb2*.py are what `make protos` makes from grpc_service.proto."""
    from pathlib import Path

    from conveyor.engine.protos import generate

    written = generate.generate(tmp_path)  # type: ignore[arg-type]
    assert {p.name for p in written} >= {"grpc_service_pb2.py", "grpc_service_pb2_grpc.py"}
    for path in written:
        assert path.read_text() == (Path(generate.HERE) / path.name).read_text(), path.name


def test_stream_window_bounds_requests_and_bytes() -> None:
    # A client that sends without reading is stopped being read once the unanswered
    # requests reach the count or the bytes (1024 x 64 MiB would be 64 GiB pinned).
    import asyncio

    from conveyor.engine.service import StreamWindow

    async def main() -> None:
        window = StreamWindow(count=3, budget=100)
        await window.acquire(60)
        await window.acquire(30)
        blocked = asyncio.ensure_future(window.acquire(20))  # 110 bytes > 100
        await asyncio.sleep(0.01)
        assert not blocked.done()
        window.release(60)
        await asyncio.wait_for(blocked, 1)
        await window.acquire(10)  # 60 bytes, 3 requests: the count is reached
        fourth = asyncio.ensure_future(window.acquire(1))
        await asyncio.sleep(0.01)
        assert not fourth.done()
        for size in (30, 20, 10):
            window.release(size)
        await asyncio.wait_for(fourth, 1)
        window.release(1)
        await asyncio.wait_for(window.acquire(500), 1)  # larger than the budget: alone
        assert (window.requests, window.bytes) == (1, 500)

    asyncio.run(main())
