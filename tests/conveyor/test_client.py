"""conveyor.client against a real in-process server (and tiny fakes for retries and tokens)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "engine"))
from models import AFFINE_IO, VOCAB_IO, Affine, Vocab, write_model

from conveyor.client import (
    AsyncClient,
    Client,
    ClientClosedError,
    DeadlineExceededError,
    InferenceServerError,
    InferResult,
    InternalError,
    InvalidArgumentError,
    ModelInfo,
    NotFoundError,
    TensorInfo,
    UnavailableError,
    build_inputs,
    make_request,
)
from conveyor.engine.protos import grpc_service_pb2 as pb
from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc
from conveyor.engine.server import Server, TLSConfig

COLUMNS_IO = {
    "inputs": [
        {**VOCAB_IO["inputs"][0], "columns": ["first_colour", "second_colour"]},
        {**VOCAB_IO["inputs"][1], "columns": ["a", "b", "c"]},
    ],
    "outputs": VOCAB_IO["outputs"],
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("client-repo")
    write_model(root, "affine", 1, Affine(), AFFINE_IO)
    write_model(root, "vocab", 1, Vocab(), COLUMNS_IO)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Server]:
    with Server(repo, port=0) as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(server.address, timeout=10) as c:
        yield c


ROWS = {
    "first_colour": ["red", "blue"],
    "second_colour": ["green", "nope"],
    "a": [1.0, 2.0],
    "b": [1, 2],
    "c": [0.5, 0.5],
}
EXPECTED = [[1, 2, 2.5], [3, 0, 4.5]]


def test_numpy_in_numpy_out(client: Client) -> None:
    x = np.arange(8, dtype=np.float64).reshape(2, 4)  # cast to the model's FP32
    out = client.infer("affine", x)
    assert out["y"].dtype == np.float32
    np.testing.assert_array_equal(out["y"], x * 2 + 1)
    np.testing.assert_array_equal(
        client.infer("affine", {"x": x}, outputs=["total"])["total"], [[6], [22]]
    )
    assert set(client.infer("affine", [x])) == {"y", "total"}
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("affine")


@pytest.mark.parametrize("kind", ["dict", "pandas", "arrow"])
def test_tables_become_tensors_from_model_metadata(client: Client, kind: str) -> None:
    table = {"dict": ROWS, "pandas": pd.DataFrame(ROWS), "arrow": pa.table(ROWS)}[kind]
    np.testing.assert_array_equal(client.infer("vocab", table)["out"], EXPECTED)


def test_metadata_lists_feature_columns(client: Client) -> None:
    info = client.model_metadata("vocab")
    assert info.inputs[0].columns == ("first_colour", "second_colour")
    assert info.inputs[1].shape == (-1, 3)


def test_missing_column_is_a_clear_error(client: Client) -> None:
    with pytest.raises(ValueError, match=r"'x': missing columns \['c'\]"):
        client.infer("vocab", {k: v for k, v in ROWS.items() if k != "c"})


def test_typed_exceptions_carry_the_status(client: Client) -> None:
    with pytest.raises(NotFoundError) as info:
        client.infer("nope", np.zeros((1, 4)))
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(InvalidArgumentError, match="'x'"):
        client.infer("affine", np.zeros((1, 5)))
    with pytest.raises(InternalError, match="below -1000"):
        client.infer("affine", np.full((1, 4), -5000.0))


def test_streaming(client: Client) -> None:
    batches = [np.full((1, 4), float(i)) for i in range(4)]
    batches[1] = np.full((1, 4), -5000.0)
    results = list(client.stream_infer("affine", batches))
    assert len(results) == 4
    assert sum(r.error is not None for r in results) == 1
    ok = sorted(float(r.outputs["y"][0, 0]) for r in results if r.outputs is not None)
    assert ok == [1.0, 5.0, 7.0]


def test_async_client(server: Server) -> None:
    async def main() -> None:
        async with AsyncClient(server.address, timeout=10) as client:
            assert await client.is_server_ready()
            outs = await asyncio.gather(
                *(client.infer("affine", np.full((1, 4), float(i))) for i in range(8))
            )
            assert [float(o["y"][0, 0]) for o in outs] == [2 * i + 1 for i in range(8)]
            np.testing.assert_array_equal(
                (await client.infer("vocab", pd.DataFrame(ROWS)))["out"], EXPECTED
            )
            got = [r async for r in client.stream_infer("affine", [np.ones((1, 4))] * 3)]
            assert all(r.outputs is not None for r in got)
            with pytest.raises(NotFoundError):
                await client.infer("nope", np.zeros((1, 4)))

    asyncio.run(main())


def test_a_bad_batch_in_a_stream_raises_its_own_error(server: Server) -> None:
    """The caller gets the conversion error (it got UNKNOWN / a bare CancelledError)."""
    bad = {k: v for k, v in ROWS.items() if k != "c"}
    got: list[InferResult] = []
    missing = pytest.raises(ValueError, match=r"'x': missing columns \['c'\]")
    with Client(server.address, timeout=10) as client, missing:
        for result in client.stream_infer("vocab", [ROWS, bad, ROWS]):
            got.append(result)
    assert [r.error for r in got] == [None]  # the batch before it was still answered

    async def main() -> None:
        async with AsyncClient(server.address, timeout=10) as client:
            got.clear()
            with pytest.raises(ValueError, match=r"'x': missing columns \['c'\]"):
                async for result in client.stream_infer("vocab", [ROWS, bad, ROWS]):
                    got.append(result)
            assert [r.error for r in got] == [None]

    asyncio.run(main())


def test_stopping_a_stream_early_cancels_it(server: Server) -> None:
    """After break + close, no more batches are read (the stream used to go on to the end)."""
    produced = {"sync": 0, "async": 0}

    def batches() -> Iterator[np.ndarray]:
        for _ in range(400):  # bounded: 400 * 2 ms if the stream were never cancelled
            produced["sync"] += 1
            time.sleep(0.002)
            yield np.ones((1, 4))

    async def async_batches() -> AsyncIterator[np.ndarray]:
        for _ in range(400):
            produced["async"] += 1
            await asyncio.sleep(0.002)
            yield np.ones((1, 4))

    with Client(server.address) as client:
        results = client.stream_infer("affine", batches())
        assert next(results).error is None
        results.close()
        stopped_at = produced["sync"]
        time.sleep(0.3)
        assert produced["sync"] <= stopped_at + 1

    async def main() -> None:
        async with AsyncClient(server.address) as client:
            results = client.stream_infer("affine", async_batches())
            async for result in results:
                assert result.error is None
                break
            await results.aclose()
            stopped_at = produced["async"]
            await asyncio.sleep(0.3)
            assert produced["async"] <= stopped_at + 1

    asyncio.run(main())


# -- retries, deadlines, tokens: a fake server that misbehaves on purpose -------------------


class Flaky(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, failures: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.failures = failures
        self.code = code
        self.calls = 0
        self.metadata: list[dict[str, str]] = []

    def ServerLive(self, request: object, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        self.calls += 1
        self.metadata.append(dict(context.invocation_metadata()))
        if self.calls <= self.failures:
            context.abort(self.code, "not yet")
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: object, context: grpc.ServicerContext) -> pb.ServerReadyResponse:
        import time

        time.sleep(1.0)
        return pb.ServerReadyResponse(ready=True)


@contextlib.contextmanager
def _serving(servicer: pb_grpc.GRPCInferenceServiceServicer, threads: int = 2) -> Iterator[str]:
    """A plain grpc server of ``servicer`` on a free loopback port: its address."""
    server = grpc.server(futures.ThreadPoolExecutor(threads), options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


@pytest.fixture
def flaky() -> Iterator[tuple[Flaky, str]]:
    servicer = Flaky(failures=2)
    with _serving(servicer) as address:
        yield servicer, address


def test_unavailable_is_retried_with_backoff_and_token_is_sent(flaky: tuple[Flaky, str]) -> None:
    servicer, address = flaky
    with Client(address, retries=3, backoff=0.01, token="s3cret") as client:
        assert client.is_server_live()
    assert servicer.calls == 3
    assert all(m["authorization"] == "Bearer s3cret" for m in servicer.metadata)


def test_retries_give_up(flaky: tuple[Flaky, str]) -> None:
    servicer, address = flaky
    with Client(address, retries=1, backoff=0.01) as client, pytest.raises(UnavailableError):
        client.is_server_live()
    assert servicer.calls == 2


def test_other_errors_are_not_retried(flaky: tuple[Flaky, str]) -> None:
    servicer, address = flaky
    servicer.code = grpc.StatusCode.INVALID_ARGUMENT
    with Client(address, retries=5, backoff=0.01) as client, pytest.raises(InvalidArgumentError):
        client.is_server_live()
    assert servicer.calls == 1


def test_deadline(flaky: tuple[Flaky, str]) -> None:
    _, address = flaky
    with Client(address, timeout=0.2) as client, pytest.raises(DeadlineExceededError):
        client.is_server_ready()


class SlowMetadata(pb_grpc.GRPCInferenceServiceServicer):
    """Metadata takes ``delay`` seconds; ModelInfer fails UNAVAILABLE once, then echoes."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.remaining: list[float] = []  # the deadline each ModelInfer attempt arrived with

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        time.sleep(self.delay)
        tensor = pb.ModelMetadataResponse.TensorMetadata(name="x", datatype="FP32", shape=[-1, 1])
        return pb.ModelMetadataResponse(name=request.name, inputs=[tensor], outputs=[tensor])

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.remaining.append(context.time_remaining())
        if len(self.remaining) % 2:
            context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")
        out = pb.ModelInferResponse.InferOutputTensor(name="x", datatype="FP32", shape=[1, 1])
        return pb.ModelInferResponse(outputs=[out], raw_output_contents=request.raw_input_contents)


def test_a_call_in_flight_when_the_client_closes_says_the_client_closed() -> None:
    # Closing cancels the calls in flight on the channel: they raised
    # RequestCancelledError, as if the server or the caller had cancelled them.
    with _serving(SlowMetadata(delay=1.0), threads=4) as address:
        client = Client(address, timeout=10)
        closer = threading.Timer(0.3, client.close)
        closer.start()
        with pytest.raises(ClientClosedError):
            client.model_metadata("m", refresh=True)
        closer.join()

        async def main() -> None:
            client = AsyncClient(address, timeout=10)
            call = asyncio.ensure_future(client.model_metadata("m", refresh=True))
            await asyncio.sleep(0.3)
            await client.close()
            with pytest.raises(ClientClosedError):
                await call

        asyncio.run(main())


class SlowStream(pb_grpc.GRPCInferenceServiceServicer):
    """Each stream response (an echo) comes 0.2 s after its request."""

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        tensor = pb.ModelMetadataResponse.TensorMetadata(name="x", datatype="FP32", shape=[-1, 1])
        return pb.ModelMetadataResponse(name=request.name, inputs=[tensor], outputs=[tensor])

    def ModelStreamInfer(self, requests: Any, context: grpc.ServicerContext) -> Any:
        for request in requests:
            time.sleep(0.2)
            out = pb.ModelInferResponse.InferOutputTensor(name="x", datatype="FP32", shape=[1, 1])
            response = pb.ModelInferResponse(
                id=request.id, outputs=[out], raw_output_contents=request.raw_input_contents
            )
            yield pb.ModelStreamInferResponse(infer_response=response)


def test_a_stream_in_flight_when_the_async_client_closes_says_the_client_closed() -> None:
    # Every request already sent (a plain list): grpc.aio's channel close did not find
    # the call, and the closed client went on yielding all 50 answers.
    batches = [np.ones((1, 1), np.float32)] * 50
    with _serving(SlowStream(), threads=4) as address:

        async def main() -> None:
            client = AsyncClient(address, timeout=30)
            answers = []

            async def consume() -> None:
                async for result in client.stream_infer("m", batches):
                    answers.append(result)

            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0.5)
            await client.close()
            with pytest.raises(ClientClosedError):
                await asyncio.wait_for(task, 5)
            assert len(answers) < 10

        asyncio.run(main())


def test_one_deadline_covers_metadata_infer_and_retries() -> None:
    """infer(timeout=T) gave the metadata lookup T and then ModelInfer a fresh T each."""
    servicer = SlowMetadata(delay=0.3)
    with _serving(servicer) as address:
        with Client(address, retries=1, backoff=0.01) as client:
            assert client.infer("m", np.ones((1, 1)), timeout=2.0)["x"].tolist() == [[1.0]]

        async def main() -> None:
            async with AsyncClient(address, timeout=2.0, retries=1, backoff=0.01) as client:
                assert (await client.infer("m", np.ones((1, 1))))["x"].tolist() == [[1.0]]

        asyncio.run(main())
    # Every attempt, the retry included, had at most what the metadata lookup left.
    assert len(servicer.remaining) == 4
    assert all(r <= 2.0 - 0.25 for r in servicer.remaining), servicer.remaining


def test_bearer_token_is_required_when_the_server_sets_one(repo: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from conveyor.client import UnauthenticatedError

    with Server(repo, port=0, auth_token="s3cret") as server:
        with Client(server.address, timeout=10, token="s3cret") as client:
            assert client.infer("affine", np.zeros((1, 4)))["y"].shape == (1, 4)
            assert [r.error for r in client.stream_infer("affine", [np.zeros((1, 4))])] == [None]
        for token in (None, "wrong"):
            with Client(server.address, timeout=10, token=token) as client:
                with pytest.raises(UnauthenticatedError):
                    client.is_server_live()
                with pytest.raises(UnauthenticatedError):
                    list(client.stream_infer("affine", [np.zeros((1, 4))]))
        with grpc.insecure_channel(server.address) as channel:
            stream = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
                iter([pb.ModelInferRequest(model_name="affine")]), timeout=10
            )
            with pytest.raises(grpc.RpcError) as info:
                list(stream)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # Health needs the token too unless exempted (tests/reliability/test_auth.py).
            with pytest.raises(grpc.RpcError) as info:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tls(repo: Path, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip("openssl cannot make a test certificate here")
    with Server(repo, port=0, tls=TLSConfig(cert, key)) as server:
        with Client(f"localhost:{server.port}", root_certificates=cert, timeout=10) as client:
            np.testing.assert_array_equal(client.infer("affine", np.zeros((1, 4)))["y"], [[1] * 4])
        plain = Client(f"localhost:{server.port}", timeout=2, retries=0)
        with plain, pytest.raises(UnavailableError):
            plain.is_server_live()


@pytest.mark.parametrize(
    ("given", "missing"),
    [("private_key", "certificate_chain"), ("certificate_chain", "private_key")],
)
def test_half_a_client_key_pair_is_a_value_error(given: str, missing: str) -> None:
    # gRPC core would abort the process at connect time; the client refuses it up front
    with pytest.raises(ValueError, match=f"{given} given without {missing}"):
        Client("127.0.0.1:1", root_certificates=b"ca", **{given: b"pem"})
    with pytest.raises(ValueError, match=f"{given} given without {missing}"):
        AsyncClient("127.0.0.1:1", **{given: b"pem"})


@pytest.mark.parametrize(
    "settings",
    [
        {"root_certificates": b""},  # os.environ.get("CA_PEM", "").encode()
        {"root_certificates": "EMPTY_FILE"},
        {"root_certificates": ""},
        {"private_key": b"", "certificate_chain": b""},
        {"token": ""},
    ],
)
def test_empty_tls_settings_or_token_are_refused_not_plaintext(
    tmp_path: Path, settings: dict
) -> None:
    # Empty values counted as "not given": the channel went plaintext, with the bearer
    # token sent in the clear, and an empty token was dropped without a word.
    empty = tmp_path / "ca.pem"
    empty.write_bytes(b"")
    given = {k: str(empty) if v == "EMPTY_FILE" else v for k, v in settings.items()}
    name = next(iter(given))
    with pytest.raises(ValueError, match=f"^{name}: "):
        Client("127.0.0.1:1", **({"token": "s3cret"} | given))
    with pytest.raises(ValueError, match=f"^{name}: "):
        AsyncClient("127.0.0.1:1", **given)


@pytest.mark.parametrize(
    ("setting", "error", "message"),
    [
        ({"retries": "3"}, TypeError, "retries: expected an int, got str '3'"),
        ({"retries": -1}, ValueError, r"retries: expected an int >= 0, got -1"),
        ({"backoff": -1}, ValueError, "backoff: expected a finite number of seconds >= 0"),
        ({"max_backoff": float("nan")}, ValueError, "max_backoff: expected a finite"),
        ({"max_message_bytes": 0}, ValueError, r"max_message_bytes: expected an int in 1\.\."),
    ],
)
def test_retry_and_size_settings_are_checked_up_front(
    setting: dict, error: type, message: str
) -> None:
    # They were first used at a call's first UNAVAILABLE: a TypeError or "sleep length
    # must be non-negative" from a call, and only once the server was down.
    with pytest.raises(error, match=f"^{message}"):
        Client("127.0.0.1:1", **setting)


def test_bytes_outputs(tmp_path: Path) -> None:
    from models import LABELER_IO, Labeler

    write_model(tmp_path, "labeler", 1, Labeler(), LABELER_IO)
    with Server(tmp_path, port=0) as server, Client(server.address, timeout=10) as client:
        out = client.infer("labeler", np.array([[1.0, 2.0], [-3.0, 1.0], [0.5, 0.5]]))
    assert out["label"].tolist() == [[b"pos"], [b"neg"], [b"pos"]]
    np.testing.assert_array_equal(out["score"], [[3.0], [-2.0], [1.0]])


def test_request_ids_differ_across_client_processes() -> None:
    # Server logs are searched by request id: two processes must not both send "c1".
    code = (
        "from conveyor.client import ModelInfo, TensorInfo, make_request\n"
        "import numpy as np\n"
        "info = ModelInfo('m', ('1',), 'torchscript', (TensorInfo('x', 'FP32', (-1, 2)),), ())\n"
        "print(make_request(info, np.zeros((1, 2), np.float32)).id)\n"
    )
    ids = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(ids) == 2, ids


def test_async_client_belongs_to_the_loop_it_was_made_in(server: Server) -> None:
    with pytest.raises(RuntimeError, match="inside a running event loop"):
        AsyncClient(server.address)

    async def make() -> AsyncClient:
        client = AsyncClient(server.address, timeout=10)
        assert await client.is_server_live()
        return client

    client = asyncio.run(make())

    async def reuse() -> None:
        with pytest.raises(RuntimeError, match="another event loop"):
            await client.is_server_live()

    asyncio.run(reuse())


# -- tables whose columns do not line up, or repeat a name -----------------------------------

VOCAB_INFO = ModelInfo(
    "vocab",
    ("1",),
    "torchscript",
    (
        TensorInfo("colour", "BYTES", (-1, 2), ("first_colour", "second_colour")),
        TensorInfo("x", "FP32", (-1, 3), ("a", "b", "c")),
    ),
    (),
)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"c": [0.5, 0.5, 0.5]}, r"'x', column 'c': 3 values, but column 'a' has 2"),
        ({"a": np.ones((2, 1))}, r"'x', column 'a': expected a 1-D column .* shape \(2, 1\)"),
        ({"first_colour": "red"}, r"'colour', column 'first_colour': expected a 1-D column"),
        ({"b": [[1], [2]]}, r"'x', column 'b': expected a 1-D column .* shape \(2, 1\)"),
    ],
    ids=["ragged", "2-D", "a-scalar-among-vectors", "nested-lists"],
)
def test_feature_columns_that_do_not_line_up_are_named(change: dict, message: str) -> None:
    # np.stack said "all input arrays must have the same shape", naming nothing
    with pytest.raises(ValueError, match=f"^input {message}"):
        build_inputs(VOCAB_INFO, {**ROWS, **change})


def test_a_row_of_scalars_is_named() -> None:
    # np.stack raised numpy's AxisError "axis 1 is out of bounds"
    with pytest.raises(ValueError, match=r"^input 'colour', column 'first_colour': .*single value"):
        build_inputs(VOCAB_INFO, {k: v[0] for k, v in ROWS.items()})


def _with_column(table: pa.Table, name: str, values: Any) -> pa.Table:
    return pa.Table.from_arrays([*table.columns, values], names=[*table.column_names, name])


@pytest.mark.parametrize("kind", ["pandas", "arrow", "record-batch"])
def test_a_repeated_needed_column_name_is_named(kind: str) -> None:
    frame = pd.DataFrame(ROWS)
    table = {
        "pandas": pd.concat([frame, frame[["a"]]], axis=1),
        "arrow": _with_column(pa.table(ROWS), "a", pa.array([1.0, 2.0])),
        "record-batch": _with_column(pa.table(ROWS), "a", pa.array([1.0, 2.0])).to_batches()[0],
    }[kind]
    with pytest.raises(ValueError, match=r"^input 'x', column 'a': the table has 2 columns named"):
        build_inputs(VOCAB_INFO, table)


@pytest.mark.parametrize("kind", ["pandas", "arrow", "record-batch"])
def test_unused_columns_are_never_read(kind: str) -> None:
    # pyarrow converted every column: an unused union column raised ArrowNotImplementedError
    # and an unused repeated name a KeyError, naming no input
    expected = [(spec.name, array.tolist()) for spec, array in build_inputs(VOCAB_INFO, ROWS)]
    if kind == "pandas":
        extra = pd.DataFrame({"unused": [{"p": 1}, None], "unused2": [1, 2]})
        table = pd.concat([pd.DataFrame(ROWS), extra.rename(columns={"unused2": "unused"})], axis=1)
    else:
        union = pa.UnionArray.from_sparse(
            pa.array([0, 1], pa.int8()), [pa.array([1, 2]), pa.array(["a", "b"])]
        )
        table = _with_column(pa.table(ROWS), "union", union)
        table = _with_column(_with_column(table, "unused", pa.array([1, 2])), "unused", union)
        if kind == "record-batch":
            table = table.to_batches()[0]
    got = [(spec.name, array.tolist()) for spec, array in build_inputs(VOCAB_INFO, table)]
    assert got == expected


# -- feature columns named like an input tensor ---------------------------------------------

# The trainer names its inputs "numeric" and "categorical": a data column may carry either name.
NAMED_LIKE_INPUTS = ModelInfo(
    "m",
    ("1",),
    "torchscript",
    (
        TensorInfo("numeric", "FP32", (-1, 2), ("numeric", "x")),
        TensorInfo("categorical", "BYTES", (-1, 2), ("categorical", "city")),
    ),
    (),
)
NAMED_ROWS = {
    "numeric": [0.5, -1.0],
    "x": [3.0, 9.0],
    "categorical": ["a", "b"],
    "city": ["ber", "ams"],
}


@pytest.mark.parametrize("kind", ["dict", "pandas", "arrow"])
def test_a_feature_column_named_like_its_input_is_read_as_a_column(kind: str) -> None:
    # The column named "numeric" was taken for the whole tensor: one row [0.5, -1.0], sent
    # without a word (and "categorical" likewise)
    table = {"dict": NAMED_ROWS, "pandas": pd.DataFrame(NAMED_ROWS), "arrow": pa.table(NAMED_ROWS)}
    (_, numeric), (_, categorical) = build_inputs(NAMED_LIKE_INPUTS, table[kind])
    np.testing.assert_array_equal(numeric, [[0.5, 3.0], [-1.0, 9.0]])
    assert categorical.tolist() == [["a", "ber"], ["b", "ams"]]


def test_a_column_named_like_an_input_but_not_among_its_columns_yields_to_them() -> None:
    # Input "numeric" is made of "a" and "b": a column "numeric" beside them is not read
    info = ModelInfo(
        "m", ("1",), "torchscript", (TensorInfo("numeric", "FP32", (-1, 2), ("a", "b")),), ()
    )
    ((_, array),) = build_inputs(info, {"numeric": [7.0, 8.0], "a": [1.0, 2.0], "b": [3.0, 4.0]})
    np.testing.assert_array_equal(array, [[1.0, 3.0], [2.0, 4.0]])
    # without them, "numeric" is the tensor itself, as before
    ((_, array),) = build_inputs(info, {"numeric": np.ones((2, 2))})
    np.testing.assert_array_equal(array, np.ones((2, 2)))


def test_a_feature_column_is_never_taken_for_a_tensor() -> None:
    # The tensor "numeric" cannot be passed by name when "numeric" is also a feature column
    tensors = {"numeric": np.ones((2, 2)), "categorical": np.array([["a", "ber"]] * 2, object)}
    with pytest.raises(
        ValueError,
        match=r"^input 'numeric': missing columns \['x'\]; the table's 'numeric' is read as a",
    ):
        build_inputs(NAMED_LIKE_INPUTS, tensors)
    # ... nor a column that another input lists, whatever its name
    info = ModelInfo(
        "m",
        ("1",),
        "torchscript",
        (
            TensorInfo("numeric", "FP32", (-1, 1), ("categorical",)),
            TensorInfo("categorical", "BYTES", (-1, 1), ("city",)),
        ),
        (),
    )
    with pytest.raises(
        ValueError, match=r"^input 'categorical': missing columns \['city'\]; .* of input 'numeric'"
    ):
        build_inputs(info, {"categorical": [1.0, 2.0]})
    # the list form takes the tensors in input order
    (_, numeric), _ = build_inputs(NAMED_LIKE_INPUTS, list(tensors.values()))
    np.testing.assert_array_equal(numeric, np.ones((2, 2)))
    # An input whose only feature column has its name: that column is the tensor, either way
    info = ModelInfo("m", ("1",), "torchscript", (TensorInfo("x", "FP32", (-1, 1), ("x",)),), ())
    for value in ([1.0, 2.0], np.array([[1.0], [2.0]])):
        ((_, array),) = build_inputs(info, {"x": value})
        np.testing.assert_array_equal(array, [[1.0], [2.0]])


# -- a newer version with another column layout ---------------------------------------------


def _two_column_affine(repo: Path, version: int, columns: list[str], **config: Any) -> None:
    """Affine (y = 2x + 1) on an input made of ``columns``: y shows the order they were sent in."""
    io = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "columns": columns}],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [2]},
            {"name": "total", "datatype": "INT64", "shape": [1]},
        ],
    }
    write_model(repo, "m", version, Affine(), io, **config)


LAYOUT_ROWS = {"a": [1.0], "b": [10.0]}


def _wait_for_versions(address: str, versions: tuple[str, ...]) -> None:
    with Client(address, timeout=10) as probe:
        deadline = time.monotonic() + 20
        while probe.model_metadata("m", refresh=True).versions != versions:
            assert time.monotonic() < deadline, "the new version did not load in time"
            time.sleep(0.05)


def test_a_long_lived_client_follows_a_new_version_with_another_column_layout(
    tmp_path: Path,
) -> None:
    # The client cached v1's metadata for its lifetime and sent v1's layout [a, b] to v2,
    # trained on [b, a]: the features were swapped without a word
    _two_column_affine(tmp_path, 1, ["a", "b"])
    with Server(tmp_path, port=0, poll_interval=0.1) as server:

        async def async_infer() -> Any:
            async with AsyncClient(server.address, timeout=10) as client:
                first = (await client.infer("m", LAYOUT_ROWS))["y"].tolist()
                await asyncio.to_thread(rollout.wait)
                return first, (await client.infer("m", LAYOUT_ROWS))["y"].tolist()

        rollout = threading.Event()
        with Client(server.address, timeout=10) as client, futures.ThreadPoolExecutor(1) as pool:
            async_result = pool.submit(asyncio.run, async_infer())
            assert client.infer("m", LAYOUT_ROWS)["y"].tolist() == [[3.0, 21.0]]
            _two_column_affine(tmp_path, 2, ["b", "a"])
            _wait_for_versions(server.address, ("2",))  # v1 unloaded
            rollout.set()
            assert client.infer("m", LAYOUT_ROWS)["y"].tolist() == [[21.0, 3.0]]
            assert async_result.result(timeout=30) == ([[3.0, 21.0]], [[21.0, 3.0]])


def test_a_client_stays_on_its_version_while_served_and_moves_after_metadata_max_age(
    tmp_path: Path,
) -> None:
    # Both versions served (policy all): a request names the version its metadata described
    _two_column_affine(tmp_path, 1, ["a", "b"], version_policy={"all": {}})
    with (
        Server(tmp_path, port=0, poll_interval=0.1) as server,
        Client(server.address, timeout=10) as pinned,
        Client(server.address, timeout=10, metadata_max_age=0) as fresh,
    ):
        assert pinned.infer("m", LAYOUT_ROWS)["y"].tolist() == [[3.0, 21.0]]
        assert fresh.infer("m", LAYOUT_ROWS)["y"].tolist() == [[3.0, 21.0]]
        _two_column_affine(tmp_path, 2, ["b", "a"], version_policy={"all": {}})
        _wait_for_versions(server.address, ("1", "2"))
        assert pinned.infer("m", LAYOUT_ROWS)["y"].tolist() == [[3.0, 21.0]]  # v1
        assert fresh.infer("m", LAYOUT_ROWS)["y"].tolist() == [[21.0, 3.0]]  # v2
        counts = {s.version: s.inference_count for s in pinned.model_statistics("m")}
        assert counts == {"1": 3, "2": 1}
    with pytest.raises(ValueError, match="metadata_max_age: expected a finite"):
        Client("127.0.0.1:1", metadata_max_age=-1)


# -- arguments checked before anything is sent -----------------------------------------------


def test_a_queue_timeout_under_a_microsecond_is_one_not_none() -> None:
    from conveyor.client import _request_template

    for seconds, sent in ((1e-7, 1), (1e-3, 1000), (2.5e-6, 3)):
        got = _request_template(queue_timeout=seconds).parameters["timeout"].int64_param
        assert got == sent, seconds


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"version": 1}, TypeError, r"version: expected a str such as '1'"),
        ({"request_id": 5}, TypeError, "request_id: expected a str, got int 5"),
        ({"priority": -1}, ValueError, r"priority: expected an int >= 0 \(1 = highest"),
        ({"priority": 1.5}, TypeError, "priority: expected an int, got float 1.5"),
        ({"timeout": "5"}, TypeError, "timeout: expected seconds"),
        ({"timeout": -1}, ValueError, "timeout: expected a finite number of seconds >= 0"),
        ({"queue_timeout": float("nan")}, ValueError, "queue_timeout: expected a finite"),
        # 0 on the wire is no limit: the opposite of what 0 asks for.
        ({"queue_timeout": 0}, ValueError, r"queue_timeout: expected seconds > 0 \(None"),
        ({"outputs": ["y", 3]}, TypeError, r"outputs\[1\]: expected a str \(an output name\)"),
        ({"outputs": 3}, TypeError, "outputs: expected output names"),
        ({"parameters": {"k": None}}, TypeError, r"parameters\['k'\]: expected a bool, int"),
        ({"parameters": {"k": 2**63}}, ValueError, r"parameters\['k'\]: .* out of int64's"),
        ({"parameters": [("k", 1)]}, TypeError, "parameters: expected a dict"),
        ({"model": None}, TypeError, "model: expected a str, got NoneType"),
    ],
)
def test_bad_infer_arguments_are_named(kwargs: dict, error: type, message: str) -> None:
    # protobuf raised "bad argument type for built-in operation" or "Value out of range: -1".
    # Nothing listens at port 1: an argument checked after a call would be UnavailableError.
    call = {"model": "affine", "inputs": np.zeros((1, 4), np.float32), **kwargs}
    client = Client("127.0.0.1:1", timeout=5, retries=0)
    with client, pytest.raises(error, match=f"^{message}"):
        client.infer(**call)

    async def main() -> None:
        async with AsyncClient("127.0.0.1:1", timeout=5, retries=0) as client:
            with pytest.raises(error, match=f"^{message}"):
                await client.infer(**call)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "error", "message"),
    [
        ("is_model_ready", ("affine", 2), {}, TypeError, "version: expected a str such as '1'"),
        ("is_model_ready", (None,), {}, TypeError, "model: expected a str, got NoneType"),
        ("model_statistics", ("affine", 2), {}, TypeError, "version: expected a str"),
        ("model_statistics", (3,), {}, TypeError, r"model: expected a str \('' for every"),
        ("unload_model", (5,), {}, TypeError, "model: expected a str, got int 5"),
        ("repository_index", (), {"ready": "yes"}, TypeError, "ready: expected a bool"),
        ("stream_infer", ("affine", None), {}, TypeError, "batches: expected an iterable"),
        ("stream_infer", ("affine", "abc"), {}, TypeError, "batches: expected an iterable"),
    ],
)
def test_bad_arguments_of_the_other_calls_are_named(method, args, kwargs, error, message) -> None:
    # protobuf's "bad argument type for built-in operation", a bare "'NoneType' object is
    # not iterable" from gRPC's request thread, or (model None) a question about model "".
    # Nothing listens at port 1: an argument checked after a call would be UnavailableError.
    with Client("127.0.0.1:1", timeout=5, retries=0) as client, pytest.raises(error, match=message):
        result = getattr(client, method)(*args, **kwargs)
        if method == "stream_infer":
            next(result)

    async def main() -> None:
        async with AsyncClient("127.0.0.1:1", timeout=5, retries=0) as client:
            with pytest.raises(error, match=message):
                if method == "stream_infer":
                    await anext(client.stream_infer(*args, **kwargs))
                else:
                    await getattr(client, method)(*args, **kwargs)

    asyncio.run(main())


def test_unusable_tls_files_are_named_by_the_constructor(tmp_path) -> None:
    # Accepted, then every call failed "UNAVAILABLE: ... Failed to create security
    # handshaker" and was retried as if the server were down; PEM text as a str was
    # "OSError: File name too long", a missing file a bare FileNotFoundError.
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def pair(name: str) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        pem_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )  # fmt: skip
        return pem_key, cert.public_bytes(serialization.Encoding.PEM)

    key, cert = pair("client")
    other_key, _ = pair("other")
    for kwargs, message in (
        ({"private_key": b"not a key\n", "certificate_chain": cert}, "not a PEM key and cert"),
        ({"private_key": other_key, "certificate_chain": cert}, "private_key does not match"),
        ({"root_certificates": b"not pem\n"}, "root_certificates: no PEM certificate"),
        ({"root_certificates": str(tmp_path / "missing.pem")}, "root_certificates: cannot read"),
    ):
        with pytest.raises(ValueError, match=message):
            Client("127.0.0.1:1", **kwargs)
    # PEM text as a str is PEM, not a file name; a good pair is accepted.
    good = {"root_certificates": cert.decode(), "private_key": key, "certificate_chain": cert}
    Client("127.0.0.1:1", **good).close()


def test_an_address_that_is_not_a_str_is_named() -> None:
    # it was AttributeError: 'int' object has no attribute 'encode'
    with pytest.raises(TypeError, match="address: expected a str such as 'localhost:8001'"):
        Client(8001)


def test_one_output_name_as_a_str(client: Client) -> None:
    # it was split into characters: "requested output 't'"
    assert set(client.infer("affine", np.zeros((1, 4)), outputs="total")) == {"total"}


AFFINE_INFO = ModelInfo("affine", ("1",), "torchscript", (TensorInfo("x", "FP32", (-1, 4)),), ())


def test_numpy_scalars_in_parameters_keep_their_type(client: Client) -> None:
    # they were sent as strings ('3', 'True', '0.5'): the server refused a np.int64 priority
    values = {"flag": np.bool_(True), "n": np.int64(3), "u": np.uint8(7), "f": np.float32(0.5)}
    request = make_request(AFFINE_INFO, np.zeros((1, 4), np.float32), parameters=values)
    sent = {}
    for key, param in request.parameters.items():
        kind = param.WhichOneof("parameter_choice")
        sent[key] = (kind, getattr(param, kind))
    assert sent == {
        "flag": ("bool_param", True),
        "n": ("int64_param", 3),
        "u": ("int64_param", 7),
        "f": ("double_param", 0.5),
    }
    out = client.infer("affine", np.ones((1, 4)), parameters={"priority": np.int64(1)})
    assert out["y"].tolist() == [[3.0] * 4]


# -- tokens gRPC cannot send, client-side gRPC failures, closed clients -----------------------


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("s3cret\n", r"a newline \('\\n'\) at position 6 \(its end: a token read from a file"),
        ("sé", r"U\+00E9, not ASCII \('é'\) at position 1: an HTTP/2 header value holds"),
        ("a\x00b", r"control character U\+0000 \('\\x00'\) at position 1"),
        ("s3cret ", "a trailing space"),
    ],
)
def test_a_token_grpc_cannot_send_is_refused_when_the_client_is_built(
    token: str, message: str
) -> None:
    # every call failed instead: sync "INTERNAL: Invalid metadata", async a cygrpc error
    with pytest.raises(ValueError, match=f"^token: {message}"):
        Client("127.0.0.1:1", token=token)

    async def main() -> None:
        with pytest.raises(ValueError, match=f"^token: {message}"):
            AsyncClient("127.0.0.1:1", token=token)

    asyncio.run(main())
    with pytest.raises(TypeError, match=r"^token: expected a str, got bytes"):
        Client("127.0.0.1:1", token=b"s3cret")


def test_async_client_side_grpc_failures_are_sdk_errors(server: Server) -> None:
    """grpc.aio's own exceptions (cygrpc's, not RpcErrors) leaked to the caller."""

    async def main() -> None:
        async with AsyncClient(server.address, timeout=10) as client:
            await client.model_metadata("affine")
            # A header gRPC core refuses to send (the token check keeps such tokens out):
            # a raw grpc._cython.cygrpc.ExecuteBatchError came out of both calls.
            client._settings.metadata = (("authorization", "Bearer s3cret\n"),)
            failed = pytest.raises(InferenceServerError, match="gRPC failed in the client")
            with failed as info:
                await client.infer("affine", np.zeros((1, 4)))
            assert info.value.code == grpc.StatusCode.UNKNOWN
            # the stream's failure may come as a cygrpc error or as an RpcError (INTERNAL)
            with pytest.raises(InferenceServerError):
                async for _ in client.stream_infer("affine", [np.zeros((1, 4))]):
                    pass

    asyncio.run(main())


def test_a_closed_client_says_so(server: Server) -> None:
    # sync raised "ValueError: Cannot invoke RPC on closed channel!", async cygrpc.UsageError
    x = np.zeros((1, 4))
    closed = pytest.raises(ClientClosedError, match="the client is closed")
    client = Client(server.address, timeout=10)
    client.infer("affine", x)  # metadata cached: infer goes straight to ModelInfer
    client.close()
    client.close()  # a second close is fine
    for call in (
        lambda: client.infer("affine", x),
        client.is_server_live,
        lambda: client.model_metadata("affine", refresh=True),
        lambda: list(client.stream_infer("affine", [x])),
    ):
        with closed as info:
            call()
        assert isinstance(info.value, InferenceServerError)
        assert info.value.code == grpc.StatusCode.CANCELLED

    async def main() -> None:
        client = AsyncClient(server.address, timeout=10)
        await client.infer("affine", x)
        await client.close()
        await client.close()
        with closed:
            await client.infer("affine", x)
        with closed:
            await client.is_server_live()
        with closed:
            async for _ in client.stream_infer("affine", [x]):
                pass

    asyncio.run(main())


def test_datatypes_the_client_cannot_read_or_send_are_named() -> None:
    # A BF16 model or an FP16 output in typed contents (which the protocol does not
    # define) was a bare KeyError('BF16') / KeyError('FP16').
    from conveyor.casting import CastError, cast
    from conveyor.client import parse_response

    out = pb.ModelInferResponse.InferOutputTensor
    bf16 = pb.ModelInferResponse(outputs=[out(name="y", datatype="BF16", shape=[1])])
    bf16.raw_output_contents.append(b"\0\0")
    with pytest.raises(ValueError, match=r"^output 'y': datatype BF16 is not supported"):
        parse_response(bf16)
    fp16 = pb.ModelInferResponse(outputs=[out(name="h", datatype="FP16", shape=[1])])
    fp16.outputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(ValueError, match=r"^output 'h': FP16 has no typed contents field"):
        parse_response(fp16)
    with pytest.raises(CastError, match=r"^input 'x': datatype BF16 is not supported"):
        cast([1.0], "BF16", "input 'x'")
