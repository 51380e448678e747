"""How the live repository reports what does not load, and what it leaves behind: failed
reloads, policies that select nothing, odd names and versions, programs that cannot take
the config's batch sizes, wrong kinds of files, bad stats.json, and stops during a load."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import grpc
import pytest
import torch
from models import AFFINE_IO, VERSION_IO, Affine, Exportable, Version, write_model
from served_repository import Stub
from served_repository import infer as _infer
from served_repository import serve as _serve
from served_repository import wait_until as _wait

from conveyor.engine import repository as repository_module
from conveyor.engine.batcher import Batcher
from conveyor.engine.drift import DriftSettings
from conveyor.engine.model import Model
from conveyor.engine.model_config import version_number
from conveyor.engine.protos import grpc_service_pb2 as pb
from conveyor.engine.repository import BatchingOverrides, ServedVersion


def _index(stub: Stub) -> dict[tuple[str, str], tuple[str, str]]:
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
    return {(m.name, m.version): (m.state, m.reason) for m in index.models}


def _load_errors(stub: Stub, name: str) -> dict[str, str]:
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=name), timeout=10)
    return {s.version: s.load_error for s in stats.model_stats}


def _load(stub: Stub, name: str) -> tuple[grpc.StatusCode, str]:
    try:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name), timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def _engine_threads(model: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(f"conveyor-{model}:")]


# -- stats.json and half-built versions (report item 1) ---------------------------------------

COLUMNS_IO = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "columns": ["a"]}],
    "outputs": VERSION_IO["outputs"],
}


@pytest.mark.parametrize(
    "stats", ["[1, 2, 3]", '{"numeric": [1]}', '{"numeric": {"a": 5}}', '"text"']
)
def test_a_stats_json_of_the_wrong_shape_leaves_drift_off_and_the_model_serves(
    tmp_path: Path, stats: str
) -> None:
    d = write_model(tmp_path, "m", 1, Version(1), COLUMNS_IO)
    (d / "stats.json").write_text(stats)
    server, channel, stub = _serve(tmp_path, poll_interval=3600)
    try:
        assert _infer(stub, "m") == 1.0
        assert server.repository.models["m"].versions[1].drift is None  # type: ignore[union-attr]
    finally:
        channel.close()
        server.stop()
    assert _engine_threads("m") == []


def test_a_version_that_fails_after_its_batcher_started_leaves_no_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    model = Model("m", 1, d)
    started: list[Batcher] = []
    real = repository_module.Batcher

    def recording(*args: object, **kw: object) -> Batcher:
        started.append(real(*args, **kw))  # type: ignore[arg-type]
        return started[-1]

    def broken_monitor(*args: object, **kw: object) -> None:
        raise RuntimeError("drift monitor broke")

    monkeypatch.setattr(repository_module, "Batcher", recording)
    monkeypatch.setattr(repository_module, "load_monitor", broken_monitor)
    with pytest.raises(RuntimeError, match="drift monitor broke"):
        ServedVersion(model, BatchingOverrides(), (), None, DriftSettings())
    assert len(started) == 1  # the batcher had started its threads
    assert _engine_threads("m") == []


# -- failed reloads are reported (item 2) ------------------------------------------------------


def test_explicit_load_fails_when_the_files_do_not_load_and_the_old_copy_serves(
    tmp_path: Path,
) -> None:
    d1 = write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    server, channel, stub = _serve(tmp_path, model_control="explicit", load_models=["m"])
    try:
        # The served version's program is replaced by garbage: the load RPC fails naming
        # the version, the copy loaded before serves and carries the reason.
        (d1 / "model.pt").write_bytes(b"garbage")
        code, details = _load(stub, "m")
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "version 1 failed to load" in details and "archive" in details
        assert "serving version 1" in details
        assert _infer(stub, "m") == 1.0
        state, reason = _index(stub)[("m", "1")]
        assert state == "READY" and "archive" in reason
        assert "archive" in _load_errors(stub, "m")["1"]
        # Restored: a good reload answers OK and the reason goes.
        write_model(tmp_path, "m", 1, Version(5), VERSION_IO)
        assert _load(stub, "m") == (grpc.StatusCode.OK, "")
        assert _infer(stub, "m") == 5.0
        assert _index(stub)[("m", "1")] == ("READY", "")
        assert _load_errors(stub, "m")["1"] == ""
        # A broken new version under latest:1: the load fails, version 1 keeps serving.
        d2 = tmp_path / "m" / "2"
        d2.mkdir()
        (d2 / "config.json").write_text((d1 / "config.json").read_text())
        (d2 / "model.pt").write_bytes(b"garbage")
        code, details = _load(stub, "m")
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "version 2 failed to load" in details
        assert _infer(stub, "m") == 5.0
        assert _index(stub)[("m", "2")][0] == "UNAVAILABLE"
    finally:
        channel.close()
        server.stop()


def test_poll_reports_a_failed_reload_of_a_served_version(tmp_path: Path) -> None:
    d = write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    server, channel, stub = _serve(tmp_path)
    try:
        (d / "config.json").write_text("{not json")
        _wait(lambda: "not valid JSON" in _index(stub)[("m", "1")][1])
        assert _index(stub)[("m", "1")][0] == "READY"
        assert "not valid JSON" in _load_errors(stub, "m")["1"]
        assert _infer(stub, "m") == 1.0
    finally:
        channel.close()
        server.stop()


# -- a policy that selects nothing (item 5) ----------------------------------------------------


def test_a_policy_that_selects_no_version_is_a_failed_load(tmp_path: Path) -> None:
    for v in (1, 2):
        write_model(
            tmp_path, "m", v, Version(v), VERSION_IO, version_policy={"specific": {"versions": [9]}}
        )
    expected = "at least one version must be available under the version policy of model 'm'"
    server, channel, stub = _serve(tmp_path)
    try:
        state, reason = _index(stub)[("m", "")]
        assert state == "UNAVAILABLE" and expected in reason and "specific:9" in reason
        assert expected in _load_errors(stub, "m")[""]
        with pytest.raises(grpc.RpcError) as info:
            _infer(stub, "m")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert expected in info.value.details()
    finally:
        channel.close()
        server.stop()
    server, channel, stub = _serve(tmp_path, model_control="explicit")
    try:
        code, details = _load(stub, "m")
        assert code == grpc.StatusCode.FAILED_PRECONDITION and expected in details
    finally:
        channel.close()
        server.stop()


# -- versions and names that cannot exist (items 3 and 4) ---------------------------------------


def test_a_version_too_long_to_be_a_number_is_not_found(tmp_path: Path) -> None:
    assert version_number("9" * 5000) is None
    assert version_number(str(2**63 - 1)) == 2**63 - 1
    assert version_number(str(2**63)) is None
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    server, channel, stub = _serve(tmp_path, poll_interval=3600)
    version = "9" * 5000
    try:
        assert not stub.ModelReady(
            pb.ModelReadyRequest(name="m", version=version), timeout=10
        ).ready
        for call in (
            lambda: _infer(stub, "m", version),
            lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="m", version=version)),
            lambda: stub.ModelStatistics(pb.ModelStatisticsRequest(name="m", version=version)),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert _infer(stub, "m") == 1.0
    finally:
        channel.close()
        server.stop()


def test_load_and_unload_of_an_overlong_name_name_it_not_the_repository_path(
    tmp_path: Path,
) -> None:
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    server, channel, stub = _serve(tmp_path, model_control="explicit", load_models=["m"])
    name = "a" * 300
    try:
        for call in (stub.RepositoryModelLoad, stub.RepositoryModelUnload):
            request_type = (
                pb.RepositoryModelLoadRequest
                if call is stub.RepositoryModelLoad
                else pb.RepositoryModelUnloadRequest
            )
            with pytest.raises(grpc.RpcError) as info:
                call(request_type(model_name=name), timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "model name 'aaaa" in info.value.details()
            assert str(tmp_path) not in info.value.details()
        assert _infer(stub, "m") == 1.0
    finally:
        channel.close()
        server.stop()


def test_an_unexpected_error_in_load_is_internal_not_unknown(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    server, channel, stub = _serve(tmp_path, model_control="explicit")
    try:

        async def broken(name: str, config: object = None) -> None:
            raise RuntimeError("disk on fire")

        server.repository.load = broken  # type: ignore[union-attr,method-assign]
        code, details = _load(stub, "m")
        assert code == grpc.StatusCode.INTERNAL and details == "RuntimeError: disk on fire"
    finally:
        channel.close()
        server.stop()


# -- programs that cannot take the config's batch sizes (item 6) --------------------------------


def _export(directory: Path, program: torch.export.ExportedProgram, max_batch_size: int) -> None:
    directory.mkdir(parents=True)
    torch.export.save(program, str(directory / "model.pt2"))
    name = directory.parent.name
    config = {"name": name, "platform": "torch_export", "max_batch_size": max_batch_size}
    (directory / "config.json").write_text(json.dumps({**config, **AFFINE_IO}))


def test_a_program_that_cannot_take_the_batch_sizes_fails_its_load(tmp_path: Path) -> None:
    fixed = torch.export.export(Exportable(), (torch.zeros(1, 4),))
    _export(tmp_path / "fixed" / "1", fixed, 8)  # traced at batch 1 only
    _export(tmp_path / "single" / "1", fixed, 1)  # ... which is all this config asks
    up_to_4 = torch.export.export(
        Exportable(),
        (torch.zeros(2, 4),),
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4)},),
    )
    _export(tmp_path / "small" / "1", up_to_4, 8)
    server, channel, stub = _serve(tmp_path, poll_interval=3600)
    try:
        index = _index(stub)
        assert index[("fixed", "1")][0] == "UNAVAILABLE"
        assert "does not accept batch size 2" in index[("fixed", "1")][1]
        assert index[("small", "1")][0] == "UNAVAILABLE"
        assert "does not accept batch size 8" in index[("small", "1")][1]
        assert index[("single", "1")] == ("READY", "")
    finally:
        channel.close()
        server.stop()


# -- files of the wrong kind (item 7) ----------------------------------------------------------


def test_files_of_the_wrong_kind_are_named(tmp_path: Path) -> None:
    def version_dir(name: str, platform: str) -> Path:
        d = tmp_path / name / "1"
        d.mkdir(parents=True)
        body = {"name": name, "platform": platform, "max_batch_size": 4, **AFFINE_IO}
        (d / "config.json").write_text(json.dumps(body))
        return d

    torch.save({"w": torch.zeros(2)}, version_dir("saved_pt", "torchscript") / "model.pt")
    torch.save({"w": torch.zeros(2)}, version_dir("saved_pt2", "torch_export") / "model.pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Affine()).save(
            str(version_dir("script_pt2", "torch_export") / "model.pt2")
        )
    program = torch.export.export(Exportable(), (torch.zeros(1, 4),))
    with warnings.catch_warnings():  # torch warns about the suffix: the point of the test
        warnings.simplefilter("ignore")
        torch.export.save(program, str(version_dir("export_pt", "torchscript") / "model.pt"))
    server, channel, stub = _serve(tmp_path, poll_interval=3600)
    try:
        reasons = {name: reason for (name, _), (_, reason) in _index(stub).items()}
        assert "not a TorchScript archive: it is a torch.save checkpoint" in reasons["saved_pt"]
        assert "not a torch.export program: it is a torch.save checkpoint" in reasons["saved_pt2"]
        assert "not a torch.export program: it is a TorchScript archive" in reasons["script_pt2"]
        assert "name it model.pt and set platform 'torchscript'" in reasons["script_pt2"]
        assert "not a TorchScript archive: it is a torch.export program" in reasons["export_pt"]
    finally:
        channel.close()
        server.stop()


# -- stopping (item 9 and the exit-time stop) --------------------------------------------------


def test_stop_during_a_load_leaves_no_engine_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loading = threading.Event()
    warm_up = Model.warm_up

    def slow_warm_up(self: Model) -> None:
        if self.version == 2:
            loading.set()
            time.sleep(1.0)
        warm_up(self)

    monkeypatch.setattr(Model, "warm_up", slow_warm_up)
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    server, channel, _ = _serve(tmp_path)
    write_model(tmp_path, "m", 2, Version(2), VERSION_IO)
    assert loading.wait(10)
    channel.close()
    server.stop()
    assert _engine_threads("m") == []
    assert not [t for t in threading.enumerate() if t.name.startswith("conveyor-repository")]


_STOP_AT_EXIT = """
import sys, threading, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from models import VERSION_IO, Version, write_model
from conveyor.engine import Server
write_model(Path({repo!r}), "m", 1, Version(1), VERSION_IO)
server = Server({repo!r}, port=0).start()
def stop():
    time.sleep(0.5)  # the main thread has returned: the interpreter is exiting
    server.stop()
    print("stopped", flush=True)
threading.Thread(target=stop).start()
"""


def test_a_server_stopped_while_the_interpreter_exits_stops_cleanly(tmp_path: Path) -> None:
    script = _STOP_AT_EXIT.format(tests=str(Path(__file__).parent), repo=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "stopped" in done.stdout
    assert "cannot schedule new futures" not in done.stderr
    assert "server loop failed" not in done.stderr


_EXIT_WITHOUT_STOP = """
import logging, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from models import VERSION_IO, Version, write_model
from conveyor.engine import Server
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
write_model(Path({repo!r}), "m", 1, Version(1), VERSION_IO)
Server({repo!r}, port=0).start()
"""


def test_a_server_never_stopped_is_stopped_at_exit(tmp_path: Path) -> None:
    # The program returns with the server running: an exit hook stops it (the serving
    # thread is a daemon, which the interpreter would otherwise tear down mid-serve).
    script = _EXIT_WITHOUT_STOP.format(tests=str(Path(__file__).parent), repo=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "conveyor.engine.server stopped" in done.stdout, done.stdout + done.stderr


def test_a_large_max_batch_size_warms_up_on_a_capped_batch(tmp_path: Path) -> None:
    # 2**34 rows of 4 floats would be 256 GiB: the largest warm-up batch is capped by bytes.
    write_model(tmp_path, "m", 1, Affine(), AFFINE_IO, max_batch_size=1 << 34)
    server, channel, stub = _serve(tmp_path, poll_interval=3600)
    try:
        assert _index(stub)[("m", "1")] == ("READY", "")
    finally:
        channel.close()
        server.stop()


def test_model_config_reports_the_policy_the_repository_applies(tmp_path: Path) -> None:
    # The newest version's config.json parses and says "all", but its program is broken:
    # the repository applies "all" (versions 1 and 2 serve), and ModelConfig says so.
    for v in (1, 2):
        write_model(tmp_path, "m", v, Version(v), VERSION_IO)
    write_model(tmp_path, "m", 3, Version(3), VERSION_IO, version_policy={"all": {}})
    (tmp_path / "m" / "3" / "model.pt").write_bytes(b"not a program")
    server, channel, stub = _serve(tmp_path, poll_interval=3600)
    try:
        index = _index(stub)
        assert index[("m", "1")][0] == index[("m", "2")][0] == "READY"
        config = stub.ModelConfig(pb.ModelConfigRequest(name="m"), timeout=10).config
        assert config.version_policy.WhichOneof("policy_choice") == "all"
    finally:
        channel.close()
        server.stop()


def test_a_version_no_longer_selected_drops_its_old_failure(tmp_path: Path) -> None:
    for v in (1, 2):
        write_model(tmp_path, "m", v, Version(v), VERSION_IO, max_batch_size=8)
    server, channel, stub = _serve(tmp_path, model_control="explicit", load_models=["m"])
    try:
        (tmp_path / "m" / "2" / "model.pt").write_bytes(b"broken")
        code, details = _load(stub, "m")
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "version 2" in details
        assert "not a torchscript archive" in _index(stub)[("m", "2")][1]  # 2's copy serves
        # A load whose policy selects nothing: a failed load, and everything stays.
        config = json.loads((tmp_path / "m" / "1" / "config.json").read_text())
        request = pb.RepositoryModelLoadRequest(model_name="m")
        request.parameters["config"].string_param = json.dumps(
            {**config, "version_policy": {"specific": {"versions": [9]}}}
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelLoad(request, timeout=30)
        assert "at least one version must be available" in info.value.details()
        state, reason = _index(stub)[("m", "2")]
        # Version 2 is no longer selected: the reason is this load's, not its old failure.
        assert state == "READY" and "at least one version must be available" in reason
        assert "not a torchscript archive" not in reason
    finally:
        channel.close()
        server.stop()
