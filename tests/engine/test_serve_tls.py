"""``conveyor serve`` TLS options: a misconfiguration is one clear line and exit status 1,
never plaintext serving, a traceback or a wrong guess at the cause."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_server import FAULTHANDLER_ENV
from models import VERSION_IO, Version, write_model


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    write_model(root, "m", 1, Version(1), VERSION_IO)
    return root


def _serve(repo: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """``conveyor serve`` expected to fail at start (bounded: it would otherwise serve)."""
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "serve", "--model-repository", str(repo),
         "--port", "0", "--metrics-port", "-1", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        env=FAULTHANDLER_ENV,
    )  # fmt: skip


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("conveyor: error:")]


def test_a_client_ca_without_a_server_certificate_is_refused(repo: Path, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("refused before it is read\n")
    result = _serve(repo, "--tls-client-ca", str(ca))
    assert result.returncode == 1, result.stderr
    assert _error_lines(result) == [
        "conveyor: error: --tls-client-ca (mutual TLS) needs --tls-cert and --tls-key"
    ]
