"""`conveyor demo`, scaled down: every step runs, the summary accounts for every row, and the
served model takes both traffic phases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor.cli import main


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "demo"
    argv = ["demo", "--workdir", str(work), "--rows", "20000", "--nproc", "2", "--epochs", "1",
            "--port", "0", "--metrics-port", "0"]  # fmt: skip
    assert main([*argv, "--phase-seconds", "2"]) == 0
    out = capsys.readouterr().out
    report = json.loads((work / "profile" / "report.json").read_text())["accounting"]
    assert report["rows_in"] == 20000
    assert report["rows_quarantined"] == 40  # the planted bad rows, none lost
    assert report["rows_out"] + report["rows_quarantined"] == report["rows_in"]
    assert "20,000 in = 19,960 out + 40 quarantined" in out
    version = work / "models" / "fraud" / "1"
    assert {"model.pt", "config.json", "spec.json", "stats.json"} <= {
        p.name for p in version.iterdir()
    }

    # Served traffic: both phases answered, every request, from the raw columns.
    traffic = json.loads((work / "traffic.json").read_text())
    phases = {p["phase"]: p for p in traffic["phases"]}
    assert list(phases) == ["in-distribution", "drifted"]
    for phase in phases.values():
        load = phase["load"]
        assert load["requests"] > 0 and load["errors"] == 0 and load["rows"] == 8
        assert 0 < load["p50_ms"] <= load["p99_ms"]
        # The server's count covers the measured window as the client's does (it included
        # the 0.5 s warm-up, a quarter more); they differ by the requests in flight at the
        # window's edges.
        assert abs(load["server_requests"] - load["requests"]) <= 0.1 * load["requests"] + 32
    assert "== traffic: in-distribution" in out and "== traffic: drifted" in out
    assert set(traffic["timings_s"]) >= {"generate", "profile", "train", "drifted"}
    # The drift alert stays off on the training data's own rows and turns on once amounts
    # and the merchant mix move; the drifted features named are the ones that were moved.
    steady, drifted = phases["in-distribution"]["drift"], phases["drifted"]["drift"]
    assert steady is not None and drifted is not None
    assert not steady["alert"] and not steady["drifted_features"]
    assert drifted["alert"]
    assert {"amount", "merchant_category"} <= set(drifted["drifted_features"])
    assert set(drifted["drifted_features"]) <= {"amount", "merchant_category", "prediction"}
    assert "drift alert ON" in out

    # A second run keeps the repository and adds a version, as a retraining job would.
    assert main([*argv, "--phase-seconds", "0.5"]) == 0
    assert (work / "models" / "fraud" / "2" / "model.pt").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--phase-seconds", "0"], "--phase-seconds must be > 0 seconds, got 0"),
        (["--phase-seconds", "-3"], "--phase-seconds must be > 0 seconds, got -3"),
        (["--phase-seconds", "nan"], "--phase-seconds must be > 0 seconds, got nan"),
        (["--nproc", "0"], "--nproc must be >= 1, got 0"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--rows", "0"], "--rows must be >= 1, got 0"),
        # serve's -1 = no metrics page: the demo reads its alert there (it failed late,
        # after generating and training, with the Server's metrics_port message)
        (
            ["--metrics-port", "-1"],
            "--metrics-port must be a port number 0..65535 (0 = a free one), got -1",
        ),
        (["--port", "70000"], "--port must be a port number 0..65535 (0 = a free one), got 70000"),
    ],
)
def test_bad_flags_fail_before_any_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    work = tmp_path / "demo"
    (work / "data").mkdir(parents=True)  # an earlier demo's data: must not be deleted either
    argv = ["demo", "--workdir", str(work), "--rows", "2000", "--nproc", "1", "--epochs", "1",
            "--port", "0", "--metrics-port", "0", *flags]  # fmt: skip
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [f"conveyor: error: {message}"]
    assert "== generate" not in captured.out
    assert sorted(p.name for p in work.iterdir()) == ["data"]


def test_every_step_gets_the_demos_logging_flags_and_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each step is a `conveyor` command that sets logging up again from its own flags:
    # --log-format json, --log-level error and a --config file applied to the first step
    # only, and the rest logged text at info.
    import argparse

    import conveyor.cli
    from conveyor.demo import command

    seen: list[list[str]] = []
    monkeypatch.setattr(conveyor.cli, "main", lambda argv: seen.append(argv) or 0)
    config = tmp_path / "conveyor.toml"
    args = argparse.Namespace(log_level="error", log_format="json", config=str(config))
    command._step("profile", ["ingest", "profile", "data"], args)
    args.config = None
    command._step("train", ["train", "data"], args)
    logging_flags = ["--log-level", "error", "--log-format", "json"]
    assert seen == [
        ["ingest", "profile", "data", *logging_flags, "--config", str(config)],
        ["train", "data", *logging_flags],
    ]
