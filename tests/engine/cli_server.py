"""``conveyor serve`` as a child process on a free loopback port, for the CLI tests."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from conveyor.engine.protos import grpc_service_pb2 as pb
from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc

# Child servers dump every thread's stack on SIGABRT (see stop_cli_server).
FAULTHANDLER_ENV = {**os.environ, "PYTHONFAULTHANDLER": "1"}


def start_cli_server(
    repo: Path, *flags: str, new_session: bool = False, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    """Start ``conveyor serve --model-repository repo --port <free> *flags``; stderr is piped.

    Returns the process and its port. The caller stops it (SIGTERM, then kill).
    ``new_session``: its own process group, which a test may signal as a whole.
    ``env``: variables set for it on top of the test's environment.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "serve", "--model-repository", str(repo),
         "--port", str(port), *flags],
        stderr=subprocess.PIPE,
        text=True,
        env={**FAULTHANDLER_ENV, **(env or {})},
        start_new_session=new_session,
    )  # fmt: skip
    return proc, port


def read_stderr_until(
    proc: subprocess.Popen[str], done: Callable[[str], bool], timeout: float
) -> str:
    """Read the server's stderr until ``done(text so far)``; fails after ``timeout`` s.

    Reads the pipe without blocking past the deadline (a silent server cannot hang
    the test); :func:`stop_cli_server` returns the rest of stderr afterwards.
    """
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while not done(data.decode(errors="replace")):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"not seen within {timeout} s; stderr so far:\n{data.decode()[-8000:]}")
        readable, _, _ = select.select([fd], [], [], min(left, 1.0))
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                pytest.fail(f"conveyor serve exited; stderr:\n{data.decode()[-8000:]}")
            data += chunk
    return data.decode(errors="replace")


def stop_cli_server(
    proc: subprocess.Popen[str], timeout: float, sig: int = signal.SIGTERM, group: bool = False
) -> str:
    """Send ``sig`` and wait up to ``timeout`` s for the server to exit; returns its stderr.

    ``group``: send it to the server's whole process group (started with
    ``new_session``), as a terminal's Ctrl-C or systemd's KillMode=control-group do.
    A server that does not stop in time is sent SIGABRT: started with
    ``FAULTHANDLER_ENV``, it prints where every thread is, and the test fails
    with that dump instead of a bare timeout.
    """
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            err = proc.communicate(timeout=10)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            err = proc.communicate()[1]
        pytest.fail(
            f"conveyor serve did not stop {timeout} s after {sig!r}; stderr:\n{err[-8000:]}"
        )


def wait_serving(
    proc: subprocess.Popen[str], stub: pb_grpc.GRPCInferenceServiceStub, timeout: float
) -> None:
    """Poll ServerReady through ``stub`` until the server answers ready; the test fails
    if ``proc`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready:
                return
        except grpc.RpcError:
            pass
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"conveyor serve did not serve in {timeout} s"
        time.sleep(0.2)
