"""The ``inference.GRPCInferenceService`` servicer: OIP v2 RPCs plus Triton's extensions.

Every RPC maps engine errors to their gRPC status in one place (``_abort``);
anything unexpected becomes INTERNAL with its message, logged with the request
id, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from conveyor import __version__
from conveyor.engine.batcher import Pending
from conveyor.engine.errors import (
    DeadlineExceeded,
    EngineError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from conveyor.engine.load_parameters import (
    check_repository_name,
    check_unload_parameters,
    config_override,
)
from conveyor.engine.protos import grpc_service_pb2 as pb
from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc
from conveyor.engine.repository import ModelRepository, ServedVersion
from conveyor.engine.tensors import encode_bytes
from conveyor.engine.triton_config import triton_model_config
from conveyor.versions import version_number

if TYPE_CHECKING:
    from conveyor.engine.metrics import ServerMetrics

log = logging.getLogger("conveyor.engine.service")

EXTENSIONS = (
    "model_repository",
    "model_repository(unload_dependents)",
    "statistics",
    "binary_tensor_data",
    "parameters",
    "schedule_policy",
    "model_configuration",
)
# Most requests of one ModelStreamInfer stream in flight at once, and most bytes of them
# (a single request larger than that is admitted alone).
STREAM_WINDOW = 1024
STREAM_WINDOW_BYTES = 64 * 1024 * 1024
# A call cancelled this close to its deadline (seconds) is taken for the deadline. The
# client's deadline usually fires first and reaches the server as a plain cancel; the
# server's copy of the deadline runs late by the time the request's headers took to
# arrive, which on a loaded machine is milliseconds (1 ms counted a passed deadline as
# CANCELLED in a CI run). A real cancel this close to the deadline is counted as it.
_DEADLINE_SLACK = 0.05
_Output = pb.ModelInferResponse.InferOutputTensor
_ENVELOPE_BYTES = 256
_ids = itertools.count(1)
_pid = os.getpid()


def _request_id(request: pb.ModelInferRequest) -> str:
    """The request's id for logs: its own, or one made here when it has none (the
    response echoes the request's, empty then, as Triton's does)."""
    return request.id or f"{_pid}-{next(_ids)}"


def _respond(served: ServedVersion, response_id: str, outputs: tuple[int, ...]) -> Any:
    """The ``finish`` callback for one request: runs in the worker thread on its output
    slices. ``response_id`` is the request's ``id`` as sent."""
    specs = served.config.outputs
    name, version = served.name, served.version_str

    def finish(slices: list[np.ndarray]) -> pb.ModelInferResponse:
        chosen = [slices[i] for i in outputs]
        return pb.ModelInferResponse(
            model_name=name,
            model_version=version,
            id=response_id,
            outputs=[
                _Output(name=specs[i].name, datatype=specs[i].datatype, shape=a.shape)
                for i, a in zip(outputs, chosen, strict=True)
            ],
            raw_output_contents=[
                encode_bytes(a.reshape(-1).tolist())
                if specs[i].datatype == "BYTES"
                else a.tobytes()
                for i, a in zip(outputs, chosen, strict=True)
            ],
        )

    return finish


class StreamWindow:
    """The requests of one stream read but not yet answered: at most ``count`` of them
    and ``budget`` bytes (a request larger than the budget is admitted alone), so a
    client that sends without reading stops being read before it pins memory: 1024
    requests of 64 MiB would be 64 GiB. One reader waits on it (the stream's)."""

    def __init__(self, count: int, budget: int) -> None:
        self._count, self._budget = count, budget
        self.requests = self.bytes = 0
        self._changed = asyncio.Event()

    async def acquire(self, size: int) -> None:
        while self.requests and (self.requests >= self._count or self.bytes + size > self._budget):
            self._changed.clear()
            await self._changed.wait()
        self.requests += 1
        self.bytes += size

    def release(self, size: int) -> None:
        self.requests -= 1
        self.bytes -= size
        self._changed.set()


class _StreamReader:
    """Where one stream's reader is, so that a drain can end the stream without
    losing a request: cancelled only while it waits for the client's next request,
    told to stop after the one in hand otherwise."""

    __slots__ = ("client_done", "stop", "task", "waiting")

    def __init__(self, stop: bool) -> None:
        self.stop = stop
        self.waiting = False
        self.client_done = False  # the client half-closed: every request was read
        self.task: asyncio.Task[None] | None = None

    def drain(self) -> None:
        self.stop = True
        if self.waiting and self.task is not None:
            self.task.cancel()


# A request whose BYTES inputs hold more elements than this is decoded in a worker
# thread: splitting and checking BYTES elements is a Python loop (~0.5 us each), and on
# the event loop one valid request of 10 million elements held every other call, health
# probes included, for 5.6 s. In a thread the loop gets the GIL back every few ms.
DECODE_IN_THREAD_ELEMENTS = 1 << 16


def _bytes_elements(request: pb.ModelInferRequest) -> int:
    """Elements the BYTES inputs' shapes claim (what decoding them will walk, at most)."""
    total = 0
    for tensor in request.inputs:
        if tensor.datatype == "BYTES":
            total += math.prod(tensor.shape)
    return total


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Serves the models of one :class:`ModelRepository`."""

    def __init__(
        self,
        repository: ModelRepository,
        *,
        server_name: str = "conveyor",
        metrics: ServerMetrics | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        self.repository = repository
        self.metrics = metrics
        self.server_name = server_name
        self.max_message_bytes = max_message_bytes
        self.ready = False
        self._draining = False
        self._readers: set[_StreamReader] = set()
        # Loads and unloads whose caller went away: they run to their end (see _control).
        self._control_tasks: set[asyncio.Task[None]] = set()

    # -- infer ----------------------------------------------------------------------------

    async def infer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext, request_id: str
    ) -> pb.ModelInferResponse:
        """Validate, queue and await one request of the call ``context`` (its deadline);
        raises EngineError subclasses, or CancelledError when the call ends first."""
        try:
            if not self.ready:
                raise Unavailable("server is not ready (starting or shutting down)")
            served = self.repository.get(request.model_name, request.model_version)
        except EngineError as exc:
            # Refused before any version took it: counted here, or a start or a drain
            # would refuse traffic that conveyor_requests_total never shows.
            if self.metrics is not None:
                model, version = self.repository.labels_for(
                    request.model_name, request.model_version
                )
                self.metrics.unserved(model, version, exc.code.name)
            raise
        start = time.perf_counter_ns()
        metrics = served.metrics
        if metrics is not None:
            metrics.inflight.inc()
        try:
            response, rows = await self._infer_on(
                served, request, context.time_remaining(), request_id
            )
            self._check_response_size(response)
        except BaseException as exc:
            elapsed = time.perf_counter_ns() - start
            # Every request a version took and did not answer OK is a failure, as in
            # Triton's statistics, so ModelStatistics' success + fail add up to the
            # requests conveyor_requests_total counts for the version while it serves.
            served.fail[0] += 1
            served.fail[1] += elapsed
            if metrics is not None:
                metrics.inflight.dec()
                metrics.request_duration.observe(elapsed / 1e9)
                metrics.failed(
                    exc.code.name
                    if isinstance(exc, EngineError)
                    else _interrupted(context)
                    if isinstance(exc, asyncio.CancelledError)
                    else "INTERNAL"  # what ModelInfer answers it with (_internal)
                )
            raise
        elapsed = time.perf_counter_ns() - start
        served.success[0] += 1
        served.success[1] += elapsed
        if metrics is not None:
            metrics.inflight.dec()
            metrics.request_duration.observe(elapsed / 1e9)
            metrics.ok.inc()
        if log.isEnabledFor(logging.DEBUG):  # a cached check: free when debug is off
            log.debug(
                "infer ok in %.3f ms",
                elapsed / 1e6,
                extra={"request_id": request_id, "model": served.name, "rows": rows},
            )
        return response

    def _check_response_size(self, response: pb.ModelInferResponse) -> None:
        """A response over the server's message limit fails its own request, named: gRPC
        would refuse to send it after the call was counted a success, and on a stream that
        refusal ends the stream, losing the requests behind it."""
        limit = self.max_message_bytes
        # The stream's envelope and the triton_final_response flag add a few dozen bytes.
        if limit is not None and response.ByteSize() + _ENVELOPE_BYTES > limit:
            raise ResourceExhausted(
                f"response of {response.ByteSize()} bytes exceeds the server's message limit "
                f"of {limit} bytes (--max-message-bytes); ask for fewer rows or outputs"
            )

    async def _infer_on(
        self,
        served: ServedVersion,
        request: pb.ModelInferRequest,
        time_remaining: float | None,
        request_id: str,
    ) -> tuple[pb.ModelInferResponse, int]:
        if _bytes_elements(request) > DECODE_IN_THREAD_ELEMENTS:
            decoded = await asyncio.to_thread(served.decoder.decode, request)
        else:
            decoded = served.decoder.decode(request)
        batcher = served.batcher
        try:
            level = batcher.level_for(decoded.priority)
        except ValueError as exc:
            raise InvalidArgument(f"parameter 'priority': {exc}") from None
        timeout = time_remaining
        if decoded.timeout_us is not None:
            per_request = decoded.timeout_us / 1e6
            timeout = per_request if timeout is None else min(timeout, per_request)
        loop = asyncio.get_running_loop()
        pending = Pending(
            inputs=decoded.inputs,
            rows=decoded.rows,
            level=level,
            deadline=None if timeout is None else time.monotonic() + timeout,
            future=loop.create_future(),
            finish=_respond(served, request.id, decoded.outputs),
            request_id=request_id,
            loop=loop,
        )
        batcher.submit(pending)
        timer = None if timeout is None else loop.call_later(timeout, _expire, batcher, pending)
        try:
            return await pending.future, decoded.rows
        except asyncio.CancelledError:
            # The client cancelled or the gRPC deadline passed: never compute it.
            batcher.cancel(pending)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        request_id = _request_id(request)
        try:
            return await self.infer(request, context, request_id)
        except EngineError as exc:
            await _abort(context, exc, request_id, request.model_name)
        except Exception as exc:
            await _abort(context, _internal(exc), request_id, request.model_name)
        raise AssertionError("unreachable")  # context.abort raises

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests are processed concurrently (so they batch together); responses, and
        errors, are sent in request order, as Triton does for a model that is not
        decoupled: a client's stream callback gets an error without an id, so order is
        how it tells which request failed. Each response carries its request's id and
        ``triton_final_response`` true, as Triton's do (every response is its request's
        only one; clients such as PyTriton wait for the flag).

        A response that is ready while an earlier one is not waits in the stream's
        queue; the window bounds those with the requests in flight (a slow head stops
        the stream being read, not memory growing)."""
        # Each request's task and size, in request order; None ends the stream.
        order: asyncio.Queue[tuple[asyncio.Task[pb.ModelStreamInferResponse], int] | None]
        order = asyncio.Queue()
        # Requests read but not yet answered: a client that sends without reading its
        # answers, or a slow head, stops the stream being read (gRPC flow control).
        window = StreamWindow(STREAM_WINDOW, STREAM_WINDOW_BYTES)

        async def one(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            request_id = _request_id(request)
            error = ""
            try:
                response = await self.infer(request, context, request_id)
            except Exception as exc:
                err = exc if isinstance(exc, EngineError) else _internal(exc)
                _log_failure(err, request_id, request.model_name)
                error = f"{err.code.name}: {err.message}"
                response = pb.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=request.model_version,
                    id=request.id,
                )
            response.parameters["triton_final_response"].bool_param = True
            return pb.ModelStreamInferResponse(error_message=error, infer_response=response)

        state = _StreamReader(stop=self._draining)

        async def read() -> None:
            requests = aiter(request_iterator)
            try:
                while not state.stop:
                    state.waiting = True
                    try:
                        request = await anext(requests)
                    except StopAsyncIteration:
                        state.client_done = True
                        break
                    finally:
                        state.waiting = False
                    size = request.ByteSize()
                    await window.acquire(size)
                    order.put_nowait((asyncio.ensure_future(one(request)), size))
            except asyncio.CancelledError:
                if not state.stop:  # not a drain: the stream's own end (see finally below)
                    raise
            finally:
                order.put_nowait(None)

        reader = state.task = asyncio.ensure_future(read())
        self._readers.add(state)
        task: asyncio.Task[pb.ModelStreamInferResponse] | None = None
        try:
            while (entry := await order.get()) is not None:
                task, size = entry
                item = await task
                yield item
                window.release(size)
            if state.stop and not state.client_done:
                # Drained: every request read is answered, but the client may have sent
                # more, which were not read. Ending OK would pass them off as none; an
                # error tells the client (tritonclient's callback, a raw stream's
                # iterator) to send what went unanswered elsewhere.
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "server is stopping: this stream was not read further; a request "
                    "without an answer was not processed",
                )
        finally:
            self._readers.discard(state)
            reader.cancel()
            if task is not None:
                task.cancel()
            while not order.empty():
                if (entry := order.get_nowait()) is not None:
                    entry[0].cancel()

    def drain(self) -> None:
        """The server is stopping: every ModelStreamInfer stream stops reading, answers
        the requests it has read, and ends UNAVAILABLE (OK when the client had already
        closed its side, every request read), instead of holding the stop for its whole
        grace period (an idle stream kept open between requests, as tritonclient's
        start_stream does, never ends by itself). A request sent after this is not read
        and gets no answer: the stream's error tells the client to send it elsewhere."""
        self._draining = True
        for state in list(self._readers):
            state.drain()

    # -- health and metadata -------------------------------------------------------------

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready)

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(
            ready=self.ready and self.repository.ready(request.name, request.version)
        )

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=self.server_name, version=__version__, extensions=EXTENSIONS
        )

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        try:
            served = self.repository.get(request.name, request.version)
        except EngineError as exc:
            await _abort(context, exc, "", request.name)
        entry = self.repository.models[request.name]
        config = served.config

        def tensors(specs: Any) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            out = []
            for s in specs:
                meta = pb.ModelMetadataResponse.TensorMetadata(
                    name=s.name, datatype=s.datatype, shape=[-1, *s.shape]
                )
                if s.columns:
                    meta.parameters["columns"].string_param = json.dumps(list(s.columns))
                out.append(meta)
            return out

        return pb.ModelMetadataResponse(
            name=served.name,
            versions=[str(v) for v in sorted(entry.versions)],
            platform=config.platform,
            inputs=tensors(config.inputs),
            outputs=tensors(config.outputs),
        )

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        """Triton's model configuration extension: the version's effective configuration."""
        try:
            served = self.repository.get(request.name, request.version)
        except EngineError as exc:
            await _abort(context, exc, "", request.name)
        try:
            # The policy the repository applied at its last scan or load of the model.
            entry = self.repository.models[request.name]
            policy = entry.policy or self.repository.default_policy
            config = triton_model_config(
                served.config,
                instance_count=served.batcher.instance_count,
                version_policy=policy,
            )
        except Exception as exc:
            await _abort(context, _internal(exc), "", request.name)
        return pb.ModelConfigResponse(config=config)

    # -- statistics and repository -------------------------------------------------------

    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        repo = self.repository
        if request.name and request.name not in repo.models:
            await _abort(context, _not_found(request.name), "", request.name)
        version = request.version
        if version and not request.name:
            # Every model's statistics, the version ignored, as Triton's
            # TRITONSERVER_ServerModelStatistics does: it was looked up in each model and
            # the first one lacking it answered NOT_FOUND. Triton's front end refuses a
            # version that is no number, so this does too.
            if version_number(version) is None:
                await _abort(
                    context,
                    InvalidArgument(
                        f"version {version!r} is not a version number (a positive integer); "
                        "with no model name ModelStatistics answers for every model and "
                        "version"
                    ),
                    "",
                    "",
                )
            version = ""
        names = [request.name] if request.name else sorted(repo.models)
        stats = []
        for name in names:
            entry = repo.models[name]
            versions = sorted(set(entry.versions) | set(entry.failed))
            if version:
                number = version_number(version)
                if number not in versions:
                    await _abort(context, _not_found(name, version), "", name)
                versions = [number]
            elif not versions and entry.policy_error:
                # The model as a whole failed to load (its policy selects no version).
                stats.append(pb.ModelStatistics(name=name, load_error=entry.policy_error))
            for v in versions:
                served = entry.versions.get(v)
                if served is None:
                    stats.append(
                        pb.ModelStatistics(name=name, version=str(v), load_error=entry.failed[v][1])
                    )
                    continue
                # A served copy whose files failed to reload carries the reason too.
                stats.append(_statistics(served, entry.problem(v)))
        return pb.ModelStatisticsResponse(model_stats=stats)

    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        models = [
            pb.RepositoryIndexResponse.ModelIndex(name=n, version=v, state=s, reason=r)
            for n, v, s, r in self.repository.index()
            if not request.ready or s == "READY"
        ]
        return pb.RepositoryIndexResponse(models=models)

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        await self._control(context, request, load=True)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self._control(context, request, load=False)
        return pb.RepositoryModelUnloadResponse()

    async def _control(self, context: Any, request: Any, *, load: bool) -> None:
        name = request.model_name
        error: EngineError | None = None
        try:
            if self.repository.model_control != "explicit":
                raise FailedPrecondition(
                    "explicit model load / unload is not allowed with --model-control poll"
                )
            check_repository_name(request.repository_name)
            if load:
                work = self.repository.load(name, config_override(request.parameters))
            else:
                check_unload_parameters(request.parameters)
                work = self.repository.unload(name)
            await self._to_the_end(work, name, "load" if load else "unload")
        except EngineError as exc:
            error = exc
        except Exception as exc:  # never UNKNOWN: INTERNAL with the message, logged
            error = _internal(exc)
        if error is not None:  # aborted outside the try: abort raises
            await _abort(context, error, "", name)
        log.info("%s by request", "loaded" if load else "unloaded", extra={"model": name})

    async def _to_the_end(self, work: Any, name: str, what: str) -> None:
        """Await ``work`` (a load or unload), which goes on to its end when the caller goes
        away, as in Triton: a client deadline shorter than a model's load threw the load
        away halfway, without a word, and left the model unloaded."""
        task = asyncio.ensure_future(work)
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            log.warning("the caller of a %s went away; it goes on", what, extra={"model": name})
            task.add_done_callback(lambda done: _log_orphan(done, name, what))
            raise


def _log_orphan(task: asyncio.Task[None], name: str, what: str) -> None:
    """How a load or unload whose caller went away ended (nobody else will hear it)."""
    fields = {"model": name}
    if task.cancelled():  # the server stopped meanwhile
        log.warning("%s cancelled (the server is stopping)", what, extra=fields)
    elif task.exception() is not None:
        log.error("%s by request failed: %s", what, task.exception(), extra=fields)
    else:
        log.info("%sed by request (its caller had gone)", what, extra=fields)


def _drift(served: ServedVersion) -> pb.DriftStatistics | None:
    """The conveyor extension field: the version's drift window, worst PSI first."""
    if served.drift is None:
        return None
    report = served.drift.report()
    return pb.DriftStatistics(
        window_rows=report.window_rows,
        threshold=report.threshold,
        alert=report.alert,
        scored=report.scored,
        features=[
            pb.FeatureDrift(feature=f.feature, kind=f.kind, psi=f.psi, js=f.js, chi2=f.chi2)
            for f in sorted(report.features, key=lambda f: -f.psi)
        ],
    )


def _statistics(served: ServedVersion, load_error: str = "") -> pb.ModelStatistics:
    s = served.batcher.stats
    drift = _drift(served)
    with s.lock:
        d = pb.StatisticDuration
        return pb.ModelStatistics(
            load_error=load_error,
            drift=drift,
            name=served.name,
            version=served.version_str,
            last_inference=s.last_inference_ms,
            inference_count=s.inference_count,
            execution_count=s.execution_count,
            inference_stats=pb.InferStatistics(
                success=d(count=served.success[0], ns=served.success[1]),
                fail=d(count=served.fail[0], ns=served.fail[1]),
                queue=d(count=s.queue[0], ns=s.queue[1]),
                compute_input=d(count=s.compute_input[0], ns=s.compute_input[1]),
                compute_infer=d(count=s.compute_infer[0], ns=s.compute_infer[1]),
                compute_output=d(count=s.compute_output[0], ns=s.compute_output[1]),
            ),
            batch_stats=[
                pb.InferBatchStatistics(
                    batch_size=size,
                    compute_input=d(count=b[0], ns=b[1]),
                    compute_infer=d(count=b[0], ns=b[2]),
                    compute_output=d(count=b[0], ns=b[3]),
                )
                for size, b in sorted(s.batches.items())
            ],
        )


def _interrupted(context: grpc.aio.ServicerContext) -> str:
    """The status name of a call that ended while a version had its request (the handler
    was cancelled): gRPC cancels it when its deadline passes as well as when the client
    cancels, and the client then sees DEADLINE_EXCEEDED, so that is what is counted."""
    remaining = context.time_remaining()  # None: no deadline; never below 0
    if remaining is not None and remaining <= _DEADLINE_SLACK:
        return "DEADLINE_EXCEEDED"
    return "CANCELLED"


def _expire(batcher: Any, pending: Pending) -> None:
    """Timer on the event loop: a request still queued at its deadline is answered and dropped."""
    if batcher.cancel(pending) and not pending.future.done():
        pending.future.set_exception(
            DeadlineExceeded(
                f"request {pending.request_id}: deadline exceeded while queued; not computed"
            )
        )


def _not_found(name: str, version: str = "") -> EngineError:
    from conveyor.engine.errors import NotFound

    if version:
        return NotFound(f"model {name!r}: unknown version {version!r}")
    return NotFound(f"unknown model {name!r}")


def _internal(exc: Exception) -> Internal:
    log.exception("unexpected error")
    return Internal(f"{type(exc).__name__}: {exc}")


def _log_failure(exc: EngineError, request_id: str, model: str) -> None:
    level = logging.ERROR if isinstance(exc, Internal) else logging.INFO
    log.log(
        level,
        "request failed: %s",
        exc.message,
        extra={"request_id": request_id, "model": model, "code": exc.code.name},
    )


async def _abort(
    context: grpc.aio.ServicerContext, exc: EngineError, request_id: str, model: str
) -> None:
    _log_failure(exc, request_id, model)
    await context.abort(exc.code, exc.message)
