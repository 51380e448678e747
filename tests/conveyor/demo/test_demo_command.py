"""`conveyor demo`, scaled down: every step runs and the summary accounts for every row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor.cli import main


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "demo"
    argv = ["demo", "--workdir", str(work), "--rows", "20000", "--nproc", "2", "--epochs", "1"]
    assert main(argv) == 0
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
    # A second run keeps the repository and adds a version, as a retraining job would.
    assert main(argv) == 0
    assert (work / "models" / "fraud" / "2" / "model.pt").exists()
