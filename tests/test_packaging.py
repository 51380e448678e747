"""`pip install .` gives one `conveyor` package with the extension and every stage under it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("engine", "kernels", "trainer", "ingest")


@pytest.mark.slow
def test_wheel_layout_and_import_from_outside(tmp_path: Path) -> None:
    env = dict(os.environ, CONVEYOR_CUDA="OFF")  # layout only; CUDA builds are tested elsewhere
    subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
            "-q", "-w", str(tmp_path / "dist"), f"-Cbuild-dir={tmp_path / 'build'}",
        ],
        check=True,
        env=env,
        timeout=600,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("conveyor-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"conveyor"}, f"only `conveyor` may land in site-packages, got {top}"
    assert any(n.startswith("conveyor/_C") and n.endswith(".so") for n in names)
    for stage in STAGES:
        assert f"conveyor/{stage}/__init__.py" in names

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
        check=True,
        timeout=300,
    )
    code = "import conveyor._C, " + ", ".join(f"conveyor.{stage}" for stage in STAGES)
    # -S skips .pth files, so the development install's editable finder cannot
    # answer the imports; the dependencies still come from this environment.
    deps = os.pathsep.join(p for p in sys.path if p.endswith("site-packages"))
    result = subprocess.run(
        [sys.executable, "-S", "-c", f"{code}; print(conveyor._C.__file__)"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=f"{target}{os.pathsep}{deps}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(target))
