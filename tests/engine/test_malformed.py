"""Messages that do not parse are INVALID_ARGUMENT (unary and streaming), checked by the
handlers themselves, so a server without tokens runs no interceptor; with tokens, an
unauthenticated message is refused before it is parsed."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from conveyor.engine.auth import UNAUTHENTICATED_MESSAGE
from conveyor.engine.malformed import LenientHandlers
from conveyor.engine.protos import grpc_service_pb2 as pb
from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc
from conveyor.engine.server import Server

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
# Field 1 (model_name, a string) holding bytes that are not UTF-8.
NOT_UTF8 = b"\x0a\x02\xff\xfe"


def _good() -> bytes:
    return pb.ModelInferRequest(
        model_name="affine",
        id="first",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])],
        raw_input_contents=[b"\0" * 16],
    ).SerializeToString()


def test_every_service_method_is_collected_once() -> None:
    handlers = LenientHandlers()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        pb_grpc.GRPCInferenceServiceServicer(), handlers
    )
    assert len(handlers.methods) == len(set(handlers.methods)) == 12
    assert INFER in handlers.methods and STREAM in handlers.methods


@pytest.mark.parametrize("data", [NOT_UTF8, b"\xff\xff\xff", b"\x0a\x10short"])
def test_unary_malformed_is_invalid_argument(server: Server, data: bytes) -> None:
    with grpc.insecure_channel(server.address) as channel:
        infer = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            infer(data, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request message does not parse" in info.value.details()


def test_malformed_inference_requests_are_counted(server: Server) -> None:
    # They named no model, so they were in no conveyor_requests_total series at all.
    labels = {"model": "", "version": "", "code": "INVALID_ARGUMENT"}

    def counted() -> float:
        value = server.metrics.registry.get_sample_value("conveyor_requests_total", labels)
        return value or 0.0

    before = counted()
    with grpc.insecure_channel(server.address) as channel:
        infer = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError):
            infer(NOT_UTF8, timeout=10)
        stream = channel.stream_stream(STREAM, request_serializer=None)
        with pytest.raises(grpc.RpcError):
            list(stream(iter([NOT_UTF8]), timeout=10))
    assert counted() == before + 2


def test_stream_answers_what_came_before_then_ends_invalid_argument(server: Server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stream = channel.stream_stream(
            STREAM,
            request_serializer=None,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        replies = []
        with pytest.raises(grpc.RpcError) as info:
            for reply in stream(iter([_good(), NOT_UTF8, _good()]), timeout=10):
                replies.append(reply)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not parse" in info.value.details()
    assert [r.infer_response.id for r in replies] == ["first"]
    assert not replies[0].error_message


def test_with_tokens_unauthenticated_comes_first(repo: Path) -> None:
    with (
        Server(repo, port=0, poll_interval=3600, auth_token="secret") as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        infer = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            infer(NOT_UTF8, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert info.value.details() == UNAUTHENTICATED_MESSAGE
        with pytest.raises(grpc.RpcError) as info:
            infer(NOT_UTF8, timeout=10, metadata=[("authorization", "Bearer secret")])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reply = pb.ModelInferResponse.FromString(
            infer(_good(), timeout=10, metadata=[("authorization", "Bearer secret")])
        )
        assert reply.id == "first" and reply.raw_output_contents
