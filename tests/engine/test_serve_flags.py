"""``conveyor serve`` refuses bad flags with one line naming the flag and its value, before
any server starts; the embedded Server refuses the same arguments with a ValueError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conveyor.cli import main
from conveyor.engine import cli as serve_cli
from conveyor.engine.model_config import VersionPolicy
from conveyor.engine.repository import BatchingOverrides
from conveyor.engine.server import Server, ServerArgumentError


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Records the Server arguments ``conveyor serve`` would start with, instead of
    serving until a signal (the checks run before any server process starts)."""
    started: list[dict[str, Any]] = []

    def serve_one(kwargs: dict[str, Any], *args: Any, **kw: Any) -> int:
        started.append(kwargs)
        return 0

    monkeypatch.setattr(serve_cli, "serve_one", serve_one)
    monkeypatch.setattr(serve_cli, "serve_workers", serve_one)
    return started


def _serve_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    """Run ``conveyor serve`` in-process with ``flags``; return its one error line."""
    code = main(["serve", "--model-repository", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("conveyor: error: "), err
    return lines[0]


@pytest.mark.usefixtures("no_server")
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        # grpc's own ValueError (a traceback) before.
        (["--max-concurrent-rpcs", "0"], "--max-concurrent-rpcs must be 1..2147483647, got 0"),
        # HTTP/2 allows 0, which refuses every stream.
        (
            ["--max-concurrent-streams", "0"],
            "--max-concurrent-streams must be 1..2147483647, got 0",
        ),
        # gRPC takes C ints: these were OverflowError tracebacks.
        (
            ["--max-concurrent-streams", "99999999999"],
            "--max-concurrent-streams must be 1..2147483647, got 99999999999",
        ),
        (
            ["--max-concurrent-rpcs", "2147483648"],
            "--max-concurrent-rpcs must be 1..2147483647, got 2147483648",
        ),
        (
            ["--max-message-bytes", "2147483648"],
            "--max-message-bytes must be 1..2147483647, got 2147483648",
        ),
        (["--max-message-bytes", "0"], "--max-message-bytes must be 1..2147483647, got 0"),
        # Accepted before: every batch was abandoned at once (DEADLINE_EXCEEDED).
        (["--execution-timeout", "-1"], "--execution-timeout must be a number of seconds >= 0"),
        (["--execution-timeout", "nan"], "--execution-timeout must be a number of seconds >= 0"),
        # Accepted before: the poll loop rescanned the repository without pause.
        (["--poll-interval", "0"], "--poll-interval must be a number of seconds > 0, got 0"),
        (["--poll-interval", "inf"], "--poll-interval must be a number of seconds > 0, got inf"),
        (["--grace-period", "-1"], "--grace-period must be a number of seconds >= 0, got -1"),
        # gRPC wrapped these: 70000 served on 4464, -5 on 65531.
        (["--port", "70000"], "--port must be 0..65535 (0 = any free), got 70000"),
        (["--port", "-5"], "--port must be 0..65535 (0 = any free), got -5"),
        # -2 was taken as "no endpoint", 70000 was an OverflowError traceback.
        (["--metrics-port", "-2"], "--metrics-port must be 0..65535 (0 = any free) or -1"),
        (["--metrics-port", "70000"], "got 70000"),
        # With --workers, two workers started and failed "port in use" by the endpoint.
        (
            ["--port", "18211", "--metrics-port", "18211", "--workers", "2"],
            "--metrics-port 18211 is the gRPC port too",
        ),
        # A 22-line traceback before, ending in "ValueError: version_policy: ...".
        (
            ["--version-policy", "bogus"],
            "--version-policy: expected latest[:N], all or specific:V1,V2, got 'bogus'",
        ),
        (["--version-policy", "latest:0"], "--version-policy: expected an integer >= 1, got 0"),
        # a thread each, started at load
        (["--instance-count", "100000"], "--instance-count must be at most 256, got 100000"),
        # "--drift-window-rows must be >= 10; --drift-threshold and
        # --drift-window-seconds > 0" before, whichever flag it was.
        (["--drift-threshold", "-1"], "--drift-threshold must be > 0, got -1.0"),
        (["--drift-threshold", "nan"], "--drift-threshold must be > 0, got nan"),
        (["--drift-window-rows", "9"], "--drift-window-rows must be >= 10, got 9"),
        (["--drift-window-seconds", "0"], "--drift-window-seconds must be > 0, got 0.0"),
        # Accepted without a word before: --drift off returned before the checks.
        (["--drift", "off", "--drift-threshold", "-5"], "--drift-threshold must be > 0, got -5.0"),
        # Silently ignored before: poll mode serves every model.
        (["--load-model", "a", "b"], "--load-model a b: only with --model-control explicit"),
    ],
)
def test_out_of_range_flags_are_one_line_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert message in _serve_error(tmp_path, capsys, *flags)


def test_flags_in_range_reach_the_server(tmp_path: Path, no_server: list[dict[str, Any]]) -> None:
    flags = ["--version-policy", "specific:1,3", "--execution-timeout", "0", "--poll-interval"]
    flags += ["0.5", "--metrics-port", "-1", "--port", "0", "--max-concurrent-streams", "1"]
    flags += ["--max-message-bytes", str(2**31 - 1), "--max-concurrent-rpcs", str(2**31 - 1)]
    assert main(["serve", "--model-repository", str(tmp_path), *flags]) == 0
    (kwargs,) = no_server
    assert kwargs["version_policy"] == VersionPolicy("specific", versions=(1, 3))
    assert kwargs["metrics_port"] is None and kwargs["poll_interval"] == 0.5
    assert kwargs["port"] == 0 and kwargs["max_concurrent_streams"] == 1
    Server(**kwargs)  # the embedded server takes what the checks let through
    flags = ["--model-control", "explicit", "--load-model", "m", "*"]
    assert main(["serve", "--model-repository", str(tmp_path), *flags]) == 0
    assert no_server[1]["load_models"] == ("m", "*")
    # Repeatable, as Triton's: the second occurrence replaced the first.
    flags = ["--model-control", "explicit", "--load-model", "a", "--load-model", "b", "c"]
    assert main(["serve", "--model-repository", str(tmp_path), *flags]) == 0
    assert no_server[2]["load_models"] == ("a", "b", "c")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_concurrent_rpcs": 0}, r"max_concurrent_rpcs must be 1\.\.2147483647, got 0"),
        # OverflowError from gRPC's options before, once started.
        ({"max_concurrent_rpcs": 2**31}, r"max_concurrent_rpcs must be 1\.\.2147483647, got 2147"),
        ({"max_message_bytes": 2**31}, r"max_message_bytes must be 1\.\.2147483647, got 2147"),
        ({"max_concurrent_streams": 2**32}, r"max_concurrent_streams must be 1\.\.2147483647 "),
        ({"max_concurrent_streams": 0}, "max_concurrent_streams must be 1..2147483647"),
        ({"execution_timeout": -1}, "execution_timeout must be a number of seconds >= 0"),
        ({"poll_interval": 0}, "poll_interval must be a number of seconds > 0, got 0"),
        ({"grace": -1}, "grace must be a number of seconds >= 0, got -1"),
        ({"port": 70000}, "port must be 0..65535"),
        # The CLI's -1 is None in the API (the docstring's "no endpoint"); -1 here
        # was "cannot bind metrics port 127.0.0.1:-1: Servname not supported".
        ({"metrics_port": -1}, r"metrics_port must be 0\.\.65535 .* or None for no endpoint"),
        ({"model_control": "push"}, "model_control: expected poll or explicit, got 'push'"),
        ({"version_policy": "bogus"}, "version_policy: expected latest"),
        ({"load_models": ["a"]}, r"load_models \['a'\] needs model_control='explicit'"),
    ],
)
def test_server_refuses_out_of_range_arguments_with_a_value_error(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    # Raised by the constructor: nothing is bound, loaded or started.
    with pytest.raises(ValueError, match=message) as exc:
        Server(tmp_path, **{"port": 0, **kwargs})
    assert isinstance(exc.value, ServerArgumentError)


def test_execution_timeout_zero_means_never() -> None:
    # As config.json's execution_timeout_seconds and --execution-timeout 0: no watchdog
    # (Server(execution_timeout=0) was a timeout that abandoned every batch).
    assert BatchingOverrides(execution_timeout=0).execution_timeout is None
    assert BatchingOverrides(execution_timeout=2.5).execution_timeout == 2.5
