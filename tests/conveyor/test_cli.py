"""The `conveyor` entry point, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor import __version__
from conveyor.cli import main


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_help_lists_commands() -> None:
    result = _run("--help")
    assert result.returncode == 0
    assert "info" in result.stdout


def test_version() -> None:
    result = _run("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_unknown_command_is_a_usage_error() -> None:
    result = _run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr


def test_missing_required_option_shows_the_subcommands_usage(tmp_path: Path) -> None:
    result = _run("ingest", "profile", str(tmp_path), "--label", "y")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: conveyor ingest profile ")
    assert "conveyor ingest profile: error: the following arguments are required: --out" in (
        result.stderr
    )


@pytest.mark.parametrize("flags", [(), ("--json",)])
def test_closed_stdout_pipe_exits_quietly(flags: tuple[str, ...]) -> None:
    # `conveyor info | head -1`, with the reader gone before the first write so the
    # BrokenPipeError is certain, not a race with head.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "conveyor", "info", *flags],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 141  # 128 + SIGPIPE, as a shell reports it
    assert result.stderr == ""


def test_other_broken_pipes_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only a closed stdout ends quietly; a broken pipe elsewhere (a socket, a child's
    # stdin) is a real failure and must still surface.
    import conveyor.info

    def broken(info: object) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(conveyor.info, "_print_text", broken)
    with pytest.raises(BrokenPipeError):
        main(["info"])


def test_info_json_describes_the_build(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["conveyor"] == __version__
    assert info["extension"]["omp_max_threads"] >= 1
    assert info["libraries"]["numpy"]


def test_info_json_from_env_and_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[info]\njson = true\nlog-level = 'warning'\n")
    assert main(["info", "--config", str(cfg)]) == 0
    json.loads(capsys.readouterr().out)


def test_bad_log_level_from_env_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_LOG_LEVEL", "loud")
    with pytest.raises(SystemExit) as exc:
        main(["info"])
    assert exc.value.code == 2


def test_runs_from_outside_the_repository(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import conveyor.engine, conveyor._C; print(conveyor._C.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
