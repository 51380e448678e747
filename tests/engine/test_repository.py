"""The live model repository: polling, version policies, failed loads, explicit control, safety."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from models import (
    AFFINE_IO,
    LABELER_IO,
    VERSION_IO,
    Affine,
    Exportable,
    Labeler,
    Version,
    write_model,
)
from served_repository import POLL
from served_repository import infer as _infer
from served_repository import serve as _serve
from served_repository import wait_until as _wait

from conveyor.engine.errors import NotFound
from conveyor.engine.protos import grpc_service_pb2 as pb
from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc
from conveyor.engine.server import Server


def _ready(stub: pb_grpc.GRPCInferenceServiceStub, model: str, version: str = "") -> bool:
    return stub.ModelReady(pb.ModelReadyRequest(name=model, version=version), timeout=10).ready


def test_poll_serves_the_latest_version_and_drops_removed_models(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    server, channel, stub = _serve(tmp_path)
    try:
        assert _infer(stub, "m") == 1.0
        write_model(tmp_path, "m", 2, Version(2), VERSION_IO)
        _wait(lambda: _ready(stub, "m", "2"))
        assert _infer(stub, "m") == 2.0
        _wait(lambda: not _ready(stub, "m", "1"))  # latest:1 by default
        with pytest.raises(grpc.RpcError) as info:
            _infer(stub, "m", "1")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        write_model(tmp_path, "other", 1, Version(5), VERSION_IO)
        _wait(lambda: _ready(stub, "other"))
        for child in sorted((tmp_path / "other").rglob("*"), reverse=True):
            child.unlink() if child.is_file() else child.rmdir()
        (tmp_path / "other").rmdir()
        _wait(lambda: not _ready(stub, "other"))
        with pytest.raises(grpc.RpcError) as info:
            _infer(stub, "other")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        channel.close()
        server.stop()


def test_version_policies_all_and_specific(tmp_path: Path) -> None:
    for v in (1, 2, 3):
        write_model(tmp_path, "every", v, Version(v), VERSION_IO, version_policy={"all": {}})
        write_model(
            tmp_path,
            "some",
            v,
            Version(v),
            VERSION_IO,
            version_policy={"specific": {"versions": [1, 3]}},
        )
        write_model(tmp_path, "two", v, Version(v), VERSION_IO, version_policy="latest:2")
    server, channel, stub = _serve(tmp_path)
    try:
        versions = {
            m: list(stub.ModelMetadata(pb.ModelMetadataRequest(name=m), timeout=10).versions)
            for m in ("every", "some", "two")
        }
        assert versions == {"every": ["1", "2", "3"], "some": ["1", "3"], "two": ["2", "3"]}
        assert [_infer(stub, "every", v) for v in ("1", "2", "3")] == [1.0, 2.0, 3.0]
        assert _infer(stub, "some") == 3.0  # no version named: the highest served
        assert not _ready(stub, "some", "2")
    finally:
        channel.close()
        server.stop()


def test_failed_load_is_reported_and_the_previous_version_keeps_serving(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    server, channel, stub = _serve(tmp_path)
    try:
        bad = tmp_path / "m" / "2"
        bad.mkdir()
        (bad / "config.json").write_text((tmp_path / "m" / "1" / "config.json").read_text())
        (bad / "model.pt").write_bytes(b"this is not a TorchScript archive")
        _wait(lambda: 2 in server.repository.models["m"].failed)  # type: ignore[union-attr]
        assert not _ready(stub, "m", "2")
        assert _ready(stub, "m") and _infer(stub, "m") == 1.0
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="m", version="2"), timeout=10)
        assert "not a torchscript archive" in stats.model_stats[0].load_error
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
        reasons = {(m.name, m.version): (m.state, m.reason) for m in index.models}
        assert reasons[("m", "1")] == ("READY", "")
        assert reasons[("m", "2")][0] == "UNAVAILABLE" and "archive" in reasons[("m", "2")][1]
        with pytest.raises(grpc.RpcError) as info:
            _infer(stub, "m", "2")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "load failed" in info.value.details()
        # Fixed on disk: picked up at the next poll.
        write_model(tmp_path, "m", 2, Version(2), VERSION_IO)
        _wait(lambda: _ready(stub, "m", "2"))
        assert _infer(stub, "m") == 2.0
    finally:
        channel.close()
        server.stop()


def test_pickles_and_mismatched_configs_are_refused(tmp_path: Path) -> None:
    d = write_model(tmp_path, "pickled", 1, Version(1), VERSION_IO)
    (d / "model.pkl").write_bytes(pickle.dumps({"weights": [1, 2]}))
    d = write_model(tmp_path, "shouting", 1, Version(1), VERSION_IO)
    (d / "weights.PKL").write_bytes(pickle.dumps({"weights": [1, 2]}))  # was served
    d = write_model(tmp_path, "saved", 1, Version(1), VERSION_IO)
    torch.save(Version(1), d / "model.pt")  # a pickled nn.Module, not TorchScript
    d = write_model(tmp_path, "wrongio", 1, Affine(), VERSION_IO)  # expects [batch, 4]
    d = write_model(tmp_path, "badjson", 1, Version(1), VERSION_IO)
    (d / "config.json").write_text(json.dumps({"name": "badjson", "platform": "onnx"}))
    # Version returns [batch, 1]; a config saying [batch, 2] would be served a lie.
    wide = {**VERSION_IO, "outputs": [{**VERSION_IO["outputs"][0], "shape": [2]}]}
    write_model(tmp_path, "wrongshape", 1, Version(1), wide)
    # Version returns float32: declared INT64 or BOOL it was served cast (0.88 -> 0, True).
    for datatype in ("INT64", "BOOL"):
        typed = {**VERSION_IO, "outputs": [{**VERSION_IO["outputs"][0], "datatype": datatype}]}
        write_model(tmp_path, f"as{datatype.lower()}", 1, Version(1), typed)
    as_fp64 = {**VERSION_IO, "outputs": [{**VERSION_IO["outputs"][0], "datatype": "FP64"}]}
    write_model(tmp_path, "asfp64", 1, Version(1), as_fp64)  # a faithful cast: served
    server, channel, stub = _serve(tmp_path)
    try:
        entries = server.repository.models  # type: ignore[union-attr]
        _wait(lambda: _ready(stub, "asfp64"))
        reasons = {name: entries[name].failed[1][1] for name in entries if name != "asfp64"}
        for datatype in ("INT64", "BOOL"):
            assert (
                f"the model returns float32, which the config's datatype {datatype} cannot "
                "hold without changing its values" in reasons[f"as{datatype.lower()}"]
            )
        assert "never pickles" in reasons["pickled"]
        assert "refusing weights.PKL" in reasons["shouting"]
        assert "not a TorchScript archive: it is a torch.save checkpoint" in reasons["saved"]
        assert "warm-up" in reasons["wrongio"]
        assert "'platform' must be one of" in reasons["badjson"]
        assert "does not match the config's [batch, 2]" in reasons["wrongshape"]
        assert not any(_ready(stub, name) for name in reasons)
    finally:
        channel.close()
        server.stop()


def test_torch_export_programs_are_served(tmp_path: Path) -> None:
    d = tmp_path / "exported" / "1"
    d.mkdir(parents=True)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        Exportable(), (torch.zeros(2, 4),), dynamic_shapes=({0: batch},), strict=False
    )
    torch.export.save(program, str(d / "model.pt2"))
    config = {"name": "exported", "platform": "torch_export", "max_batch_size": 8, **AFFINE_IO}
    (d / "config.json").write_text(json.dumps(config))
    server, channel, stub = _serve(tmp_path)
    try:
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        request = pb.ModelInferRequest(
            model_name="exported",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[2, 4])],
            raw_input_contents=[x.tobytes()],
        )
        resp = stub.ModelInfer(request, timeout=10)
        y = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(2, 4)
        np.testing.assert_array_equal(y, x * 2 + 1)
    finally:
        channel.close()
        server.stop()


def test_explicit_control_loads_and_unloads_only_on_request(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    server, channel, stub = _serve(tmp_path, model_control="explicit")
    try:
        assert not _ready(stub, "m")
        with pytest.raises(grpc.RpcError) as info:
            _infer(stub, "m")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="m"), timeout=30)
        assert _ready(stub, "m") and _infer(stub, "m") == 1.0
        write_model(tmp_path, "m", 2, Version(2), VERSION_IO)
        time.sleep(3 * POLL)
        assert _infer(stub, "m") == 1.0  # no polling in explicit mode
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="m"), timeout=30)
        assert _infer(stub, "m") == 2.0
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="m"), timeout=30)
        assert not _ready(stub, "m")
        with pytest.raises(grpc.RpcError) as info:
            _infer(stub, "m")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        for name, code in (
            ("missing", grpc.StatusCode.NOT_FOUND),
            ("../outside", grpc.StatusCode.INVALID_ARGUMENT),
            ("/etc", grpc.StatusCode.INVALID_ARGUMENT),
            ("..", grpc.StatusCode.INVALID_ARGUMENT),
        ):
            with pytest.raises(grpc.RpcError) as info:
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name), timeout=30)
            assert info.value.code() == code, name
    finally:
        channel.close()
        server.stop()


def test_a_load_whose_caller_goes_away_runs_to_its_end(tmp_path: Path, monkeypatch) -> None:
    # As Triton: a client deadline shorter than the load (tritonclient's client_timeout)
    # threw the load away halfway without a word; the model stayed unloaded.
    from conveyor.engine.repository import ModelRepository

    load_version = ModelRepository._load_version

    def slow(self, *args):
        time.sleep(1.0)
        return load_version(self, *args)

    monkeypatch.setattr(ModelRepository, "_load_version", slow)
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    server, channel, stub = _serve(tmp_path, model_control="explicit")
    try:
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="m"), timeout=0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        _wait(lambda: _ready(stub, "m"))
        assert _infer(stub, "m") == 1.0
    finally:
        channel.close()
        server.stop()


def _slow_loads(monkeypatch, seconds: float) -> threading.Event:
    """Every version's load takes ``seconds`` more; the event is set once one has begun."""
    from conveyor.engine.repository import ModelRepository

    load_version, begun = ModelRepository._load_version, threading.Event()

    def slow(self, *args):
        begun.set()
        time.sleep(seconds)
        return load_version(self, *args)

    monkeypatch.setattr(ModelRepository, "_load_version", slow)
    return begun


def test_a_stop_during_the_first_loads_ends_the_start(tmp_path: Path, monkeypatch) -> None:
    # A SIGTERM while the models loaded waited for the loads, then the server turned
    # ready (health SERVING), then it stopped: 16-29 s past the signal in the review.
    begun = _slow_loads(monkeypatch, 5.0)
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    server = Server(tmp_path, port=0, poll_interval=POLL)
    threading.Thread(target=lambda: (begun.wait(10), server.request_stop()), daemon=True).start()
    t0 = time.monotonic()
    server.start()  # returns once the stop has ended the start
    server.stop()
    assert time.monotonic() - t0 < 4.0
    assert server.servicer is not None and not server.servicer.ready
    _wait(_no_repository_thread)  # the abandoned load ends (no thread left to later tests)


def test_a_stop_does_not_wait_for_a_load_under_way(tmp_path: Path, monkeypatch) -> None:
    # --grace-period 2 and a model appearing live with a 20-30 s load: the stop took 29 s
    # (the repository's close joined the loading thread).
    write_model(tmp_path, "a", 1, Version(1), VERSION_IO)
    server, channel, _ = _serve(tmp_path)
    try:
        begun = _slow_loads(monkeypatch, 5.0)
        write_model(tmp_path, "b", 1, Version(2), VERSION_IO)
        assert begun.wait(10)
    finally:
        channel.close()
        t0 = time.monotonic()
        server.request_stop()  # what the CLI's SIGTERM does; a bare stop() waits for it
        server.stop(grace=0.5)
    assert time.monotonic() - t0 < 3.0
    _wait(_no_repository_thread)  # the abandoned load ends (no thread left to later tests)


def _no_repository_thread() -> bool:
    return not [t for t in threading.enumerate() if t.name.startswith("conveyor-repository")]


def test_paths_leaving_the_repository_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_model(outside, "evil", 1, Version(1), VERSION_IO)
    repo = tmp_path / "repo"
    repo.mkdir()
    os.symlink(outside / "evil", repo / "evil")
    write_model(repo, "linked", 1, Version(1), VERSION_IO)
    os.symlink(outside / "evil" / "1", repo / "linked" / "2")
    # Files of a version linked outside: they were loaded and served.
    for name in ("model.pt", "config.json"):
        d = write_model(repo, f"file_{name.split('.')[1]}", 1, Version(1), VERSION_IO)
        (d / name).unlink()
        os.symlink(outside / "evil" / "1" / name, d / name)
    # ... and inside the root a link is fine (a shared copy of the same program).
    d = write_model(repo, "shared", 1, Version(1), VERSION_IO)
    (d / "model.pt").unlink()
    os.symlink(repo / "linked" / "1" / "model.pt", d / "model.pt")
    server, channel, stub = _serve(repo, model_control="explicit", load_models=["*"])
    try:
        assert not _ready(stub, "evil")
        assert _ready(stub, "linked", "1") and not _ready(stub, "linked", "2")
        assert _ready(stub, "shared", "1")
        entries = server.repository.models  # type: ignore[union-attr]
        for model in ("file_pt", "file_json"):
            assert not _ready(stub, model)
            assert "resolves outside the model repository" in entries[model].failed[1][1]
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="evil"), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "outside the model repository" in info.value.details()
    finally:
        channel.close()
        server.stop()


def test_load_rpc_refused_in_poll_mode(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    server, channel, stub = _serve(tmp_path)
    try:
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="m"), timeout=30)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        channel.close()
        server.stop()


def test_replaced_version_finishes_its_in_flight_requests(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    server, channel, stub = _serve(tmp_path)
    try:
        served = server.repository.models["m"].versions[1]  # type: ignore[union-attr]
        entered, release = threading.Event(), threading.Event()
        original = served.batcher._run

        def slow(inputs: list[np.ndarray]) -> list[np.ndarray]:
            entered.set()
            assert release.wait(10)
            return original(inputs)

        served.batcher._run = slow
        results: list[float] = []
        caller = threading.Thread(target=lambda: results.append(_infer(stub, "m")))
        caller.start()
        assert entered.wait(10)
        write_model(tmp_path, "m", 2, Version(2), VERSION_IO)
        _wait(lambda: _ready(stub, "m", "2"))
        assert _infer(stub, "m") == 2.0  # new requests already go to version 2
        assert 1 in server.repository.models["m"].versions or not results  # type: ignore[union-attr]
        release.set()
        caller.join(10)
        assert results == [1.0]  # the in-flight request finished on version 1
        _wait(lambda: not _ready(stub, "m", "1"))
    finally:
        channel.close()
        server.stop()


def test_unloading_a_version_with_a_hung_batch_executes_its_queue_and_blocks_nothing(
    tmp_path: Path,
) -> None:
    # A batch hangs past the execution timeout; two requests wait behind it. Unloading
    # the model executes them on a replacement worker and returns, and an unrelated load
    # is not held behind the drain: all while the hung call is still in the model.
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO, max_batch_size=1)
    write_model(tmp_path, "other", 1, Version(5), VERSION_IO)
    server, channel, stub = _serve(
        tmp_path, model_control="explicit", load_models=["m"], execution_timeout=0.5
    )
    batcher = server.repository.models["m"].versions[1].batcher  # type: ignore[union-attr]
    entered, release = threading.Event(), threading.Event()
    original = batcher._run
    calls: list[int] = []

    def first_hangs(inputs: list[np.ndarray]) -> list[np.ndarray]:
        calls.append(1)
        if len(calls) == 1:
            entered.set()
            release.wait(30)
        return original(inputs)

    batcher._run = first_hangs
    request = pb.ModelInferRequest(
        model_name="m",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 1])],
        raw_input_contents=[np.zeros(1, np.float32).tobytes()],
    )
    try:
        hung = stub.ModelInfer.future(request, timeout=30)
        assert entered.wait(10)
        queued = [stub.ModelInfer.future(request, timeout=30) for _ in range(2)]
        _wait(lambda: batcher.queued == 2)
        unload = stub.RepositoryModelUnload.future(
            pb.RepositoryModelUnloadRequest(model_name="m"), timeout=30
        )
        load = stub.RepositoryModelLoad.future(
            pb.RepositoryModelLoadRequest(model_name="other"), timeout=30
        )
        for answer in queued:  # executed, not refused as if no worker were left
            assert np.frombuffer(answer.result().raw_output_contents[0], np.float32)[0] == 1.0
        unload.result()
        load.result()
        assert not release.is_set() and batcher.abandoned == 1  # still hung in the model
        with pytest.raises(grpc.RpcError) as info:
            hung.result()
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert _infer(stub, "other") == 5.0 and not _ready(stub, "m")
    finally:
        release.set()
        channel.close()
        server.stop()
    # The abandoned thread exits once the model returns; every other one stopped with
    # the server.
    _wait(lambda: not [t for t in threading.enumerate() if t.name.startswith("conveyor-m:")])
    assert not [t for t in threading.enumerate() if t.name.startswith("conveyor-repository")]


def test_a_draining_version_holds_up_no_other_load(tmp_path: Path) -> None:
    # An unloaded version finishes its in-flight batch (no execution timeout to cut it
    # short); meanwhile another model loads, and the unload answers once the batch is done.
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    write_model(tmp_path, "other", 1, Version(5), VERSION_IO)
    server, channel, stub = _serve(
        tmp_path, model_control="explicit", load_models=["m"], execution_timeout=0
    )
    batcher = server.repository.models["m"].versions[1].batcher  # type: ignore[union-attr]
    entered, release = threading.Event(), threading.Event()
    original = batcher._run

    def slow(inputs: list[np.ndarray]) -> list[np.ndarray]:
        entered.set()
        release.wait(30)
        return original(inputs)

    batcher._run = slow
    try:
        results: list[float] = []
        caller = threading.Thread(target=lambda: results.append(_infer(stub, "m")))
        caller.start()
        assert entered.wait(10)
        unload = stub.RepositoryModelUnload.future(
            pb.RepositoryModelUnloadRequest(model_name="m"), timeout=60
        )
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="other"), timeout=20)
        assert _infer(stub, "other") == 5.0
        assert not release.is_set() and not unload.done()  # m is still draining
        release.set()
        unload.result()
        caller.join(10)
        assert results == [1.0]  # the in-flight request finished
    finally:
        release.set()
        channel.close()
        server.stop()


def test_explicit_start_serves_the_good_models_when_one_is_broken(tmp_path: Path) -> None:
    write_model(tmp_path, "good", 1, Version(1), VERSION_IO)
    d = write_model(tmp_path, "bad", 1, Version(1), VERSION_IO)
    (d / "model.pt").write_bytes(b"garbage")
    server, channel, stub = _serve(tmp_path, model_control="explicit", load_models=["good", "bad"])
    try:
        assert _ready(stub, "good") and not _ready(stub, "bad")
    finally:
        channel.close()
        server.stop()
    with pytest.raises(NotFound, match="no directory"):
        Server(tmp_path, port=0, model_control="explicit", load_models=["typo"]).start()


def test_load_rpc_for_a_broken_model_reports_why(tmp_path: Path) -> None:
    d = write_model(tmp_path, "broken", 1, Version(1), VERSION_IO)
    (d / "model.pt").write_bytes(b"garbage")
    server, channel, stub = _serve(tmp_path, model_control="explicit")
    try:
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="broken"), timeout=30)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "archive" in info.value.details()
    finally:
        channel.close()
        server.stop()


def test_poll_reloads_a_version_whose_files_changed(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    server, channel, stub = _serve(tmp_path)
    try:
        assert _infer(stub, "m") == 1.0
        time.sleep(0.05)  # a distinct mtime
        write_model(tmp_path, "m", 1, Version(7), VERSION_IO)  # same version, new program
        _wait(lambda: _infer(stub, "m") == 7.0)
    finally:
        channel.close()
        server.stop()


def test_a_broken_newer_version_keeps_the_model_policy(tmp_path: Path) -> None:
    # latest:2 serves v1 and v2. A v3 whose config.json is broken and a v4 still being
    # copied (no config.json yet) must not make the server's default latest:1 apply,
    # which would unload v1: the policy comes from the newest config.json that parses.
    for v in (1, 2):
        write_model(tmp_path, "m", v, Version(v), VERSION_IO, version_policy="latest:2")
    server, channel, stub = _serve(tmp_path)
    try:
        assert _ready(stub, "m", "1") and _ready(stub, "m", "2")
        (tmp_path / "m" / "3").mkdir()
        config = json.loads((tmp_path / "m" / "2" / "config.json").read_text())
        (tmp_path / "m" / "3" / "config.json").write_text(json.dumps({**config, "bogus": 1}))
        (tmp_path / "m" / "4").mkdir()
        entry = server.repository.models["m"]  # type: ignore[union-attr]
        _wait(lambda: {3, 4} <= set(entry.failed))
        time.sleep(3 * POLL)  # a few more polls: nothing may be unloaded meanwhile
        assert _ready(stub, "m", "1") and _ready(stub, "m", "2")
        assert [_infer(stub, "m", v) for v in ("1", "2")] == [1.0, 2.0]
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
        states = {m.version: (m.state, m.reason) for m in index.models if m.name == "m"}
        assert states["3"][0] == "UNAVAILABLE" and "bogus" in states["3"][1]
        assert states["4"][0] == "UNAVAILABLE" and "missing" in states["4"][1]
    finally:
        channel.close()
        server.stop()


def test_a_serving_version_whose_config_breaks_keeps_the_policy_in_effect(
    tmp_path: Path,
) -> None:
    # v1 has no version_policy, v2 says "all": both serve. v2's config.json half-saved
    # (truncated by an editor or a copy) made v1's config decide: the default latest:1,
    # which unloaded v1 while v2's served copy stayed. The policy in effect stays
    # until the newest config.json parses again (Triton keeps what serves, too).
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    write_model(tmp_path, "m", 2, Version(2), VERSION_IO, version_policy={"all": {}})
    server, channel, stub = _serve(tmp_path)
    try:
        assert _ready(stub, "m", "1") and _ready(stub, "m", "2")
        path = tmp_path / "m" / "2" / "config.json"
        text = path.read_text()
        path.write_text(text[: len(text) // 2])
        entry = server.repository.models["m"]  # type: ignore[union-attr]
        _wait(lambda: 2 in entry.failed)
        time.sleep(3 * POLL)  # a few more polls: nothing may be unloaded meanwhile
        assert [_infer(stub, "m", v) for v in ("1", "2")] == [1.0, 2.0]
        path.write_text(text)
        _wait(lambda: 2 not in entry.failed)
        assert [_infer(stub, "m", v) for v in ("1", "2")] == [1.0, 2.0]
    finally:
        channel.close()
        server.stop()


def test_poll_retries_and_reloads_on_any_file_of_the_version(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    server, channel, stub = _serve(tmp_path)
    try:
        d = tmp_path / "m" / "2"
        d.mkdir()
        (d / "weights.pkl").write_bytes(b"junk")  # first, so no poll sees v2 without it
        write_model(tmp_path, "m", 2, Version(2), VERSION_IO)
        entry = server.repository.models["m"]  # type: ignore[union-attr]
        _wait(lambda: 2 in entry.failed)
        assert "weights.pkl" in entry.failed[2][1]
        (d / "weights.pkl").unlink()  # config.json and model.pt untouched
        _wait(lambda: _ready(stub, "m", "2"))
        assert _infer(stub, "m") == 2.0
        # A stats.json added to a loaded version reloads it (drift reads it at load).
        loaded = entry.versions[2]
        stats = {"numeric": {"x": {"edges": np.linspace(0, 1, 21).tolist()}}}
        (d / "stats.json").write_text(json.dumps(stats))
        _wait(lambda: entry.versions.get(2) is not loaded)
        assert _infer(stub, "m") == 2.0
    finally:
        channel.close()
        server.stop()


class _Records(logging.Handler):
    """Keeps the records of the logger it is added to (whatever propagation is set)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _repository_log(level: int = logging.WARNING) -> Iterator[list[str]]:
    """The messages the repository logs at ``level`` and above while the block runs."""
    records = _Records()
    records.setLevel(level)
    logger = logging.getLogger("conveyor.engine.repository")
    before = logger.level  # an earlier CLI test may have set up the "conveyor" tree
    logger.setLevel(level)
    logger.addHandler(records)
    try:
        yield records.messages
    finally:
        logger.removeHandler(records)
        logger.setLevel(before)


def test_version_directories_have_one_spelling(tmp_path: Path) -> None:
    # "01" and non-ASCII digits would be int()ed to versions 1 and 2, colliding with
    # (or silently standing in for) "1/" and "2/": they are skipped, logged once each.
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    for name, answer in (("01", 5), ("\u0662", 9), ("0", 7)):
        source = write_model(tmp_path, "scratch", 1, Version(answer), VERSION_IO)
        source.rename(tmp_path / "m" / name)
        (tmp_path / "scratch").rmdir()
    with _repository_log() as messages:
        server, channel, stub = _serve(tmp_path)
        try:
            time.sleep(3 * POLL)  # a few polls: each skipped path is logged once
            assert server.repository.models["m"].on_disk == [1]  # type: ignore[union-attr]
            assert _infer(stub, "m") == 1.0 and _infer(stub, "m", "1") == 1.0
            assert not _ready(stub, "m", "2")
        finally:
            channel.close()
            server.stop()
    skipped = [m for m in messages if "skipping" in m]
    assert len(skipped) == 3 and all("without leading zeros" in m for m in skipped)


def test_model_directory_names(tmp_path: Path) -> None:
    # "_under" was skipped in poll mode without a word, and refused in explicit mode with
    # "use letters, digits, '_', '-', '.'". Names that cannot be served are logged once;
    # hidden directories (.git) are not models and pass silently.
    for name in ("_under", "-dash", "my model", ".hidden"):
        write_model(tmp_path, name, 1, Version(1), VERSION_IO)
    (tmp_path / "__pycache__").mkdir()  # not a model, not a warning
    with _repository_log() as messages:
        server, channel, stub = _serve(tmp_path)
        try:
            _wait(lambda: _ready(stub, "_under"))
            time.sleep(3 * POLL)  # a few polls: each skipped directory is logged once
            assert set(server.repository.models) == {"_under"}  # type: ignore[union-attr]
        finally:
            channel.close()
            server.stop()
    skipped = sorted(m for m in messages if "skipping" in m)
    assert len(skipped) == 2, skipped
    assert "'-dash'" in skipped[0] and "'my model'" in skipped[1]
    assert "starting with a letter, digit or '_'" in skipped[0]


def test_a_repository_root_that_goes_away_is_logged_once(tmp_path: Path) -> None:
    # Renamed away (an unmounted volume): serving goes on with what is loaded, and the
    # poll said so with a FileNotFoundError traceback every poll_interval.
    repo = tmp_path / "repo"
    write_model(repo, "m", 1, Version(1), VERSION_IO)
    with _repository_log(logging.INFO) as messages:
        server, channel, stub = _serve(repo)
        try:
            repo.rename(tmp_path / "away")
            time.sleep(4 * POLL)
            assert _infer(stub, "m") == 1.0
            (tmp_path / "away").rename(repo)
            _wait(lambda: any("is back" in m for m in messages))
        finally:
            channel.close()
            server.stop()
    missing = [m for m in messages if "cannot be read" in m]
    assert len(missing) == 1 and "serving what is loaded" in missing[0]
    assert not [m for m in messages if "poll failed" in m]


def test_a_bytes_output_of_zero_rows_is_empty(tmp_path: Path) -> None:
    from conveyor.engine.model import Model

    model = Model("labeler", 1, write_model(tmp_path, "labeler", 1, Labeler(), LABELER_IO))
    score, label = model.run([np.zeros((0, 2), np.float32)])  # was a ZeroDivisionError
    assert score.shape == (0, 1) and label.shape == (0, 1)


def test_a_file_replaced_with_the_same_size_and_times_is_a_change(tmp_path: Path) -> None:
    # rsync -a, cp -p or a reproducible archive leave a new model.pt of the same size and
    # mtime (two exports of one architecture are the same size): stat()'s mtime and size
    # alone saw no change, and the old model kept serving.
    import os

    from conveyor.engine.repository import _fingerprint

    model = tmp_path / "model.pt"
    model.write_bytes(b"first model")
    stat = model.stat()
    before = _fingerprint(tmp_path)
    replacement = tmp_path / "incoming"
    replacement.write_bytes(b"other model")  # same size
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, model)
    assert model.stat().st_size == stat.st_size and model.stat().st_mtime_ns == stat.st_mtime_ns
    assert _fingerprint(tmp_path) != before
    assert _fingerprint(tmp_path) == _fingerprint(tmp_path)  # and steady when nothing moves
