"""``conveyor bench ingest|train|kernels``: run a benchmark script from ``benchmarks/``.

Each script measures its own baselines in the same run and accepts ``--json FILE``; this runner
gives them the output convention of ``conveyor bench serve``: ``OUT/NAME.json`` (the script's
figures with the date, machine and command), ``OUT/NAME.csv`` and ``OUT/NAME.log`` (what the
script printed, also shown on the terminal). Arguments after ``--`` go to the script;
``-- --help`` shows the script's help and writes nothing.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conveyor.bench import report
from conveyor.errors import ConveyorError

# Script per command, relative to the benchmarks folder.
SCRIPTS: dict[str, str] = {
    "ingest": "ingest_bench.py",
    "train": "train_bench.py",
    "kernels": "kernels/bench_ops.py",
}


class ScriptError(ConveyorError):
    """A benchmark script is missing or failed."""


def benchmarks_dir(explicit: str | None = None) -> Path:
    """``explicit``, else ``$CONVEYOR_BENCHMARKS``, else ``benchmarks/`` of this source tree."""
    if explicit:
        return Path(explicit)
    if os.environ.get("CONVEYOR_BENCHMARKS"):
        return Path(os.environ["CONVEYOR_BENCHMARKS"])
    import conveyor

    return Path(conveyor.__file__).resolve().parent.parent / "benchmarks"


def rows_of(figures: Any) -> list[dict[str, Any]]:
    """The CSV rows of a script's JSON: its list of points, or the one dict of figures."""
    if isinstance(figures, list):
        return [r if isinstance(r, dict) else {"value": r} for r in figures]
    if isinstance(figures, dict):
        for value in figures.values():
            if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
                return value
        return [figures]
    return [{"value": figures}]


def script_path(name: str, where: str | None = None) -> Path:
    """The script of ``name``; :class:`ScriptError` when it is not there."""
    script = benchmarks_dir(where) / SCRIPTS[name]
    if not script.is_file():
        raise ScriptError(
            f"conveyor bench {name}: benchmark script {script} not found "
            f"(it ships in the source tree's benchmarks/{SCRIPTS[name]}; "
            "set --benchmarks-dir or CONVEYOR_BENCHMARKS to its folder)"
        )
    return script


def show_help(name: str, extra: list[str], where: str | None = None) -> int:
    """Run the script of ``name`` with ``extra`` (which asks for its help) as it is: its
    help on the terminal, no JSON expected, nothing written; returns its exit status."""
    return subprocess.run([sys.executable, str(script_path(name, where)), *extra]).returncode


def run_script(name: str, out: str | Path, extra: list[str], where: str | None = None) -> Path:
    """Run the script of ``name`` and write OUT/NAME.{json,csv,log}; returns the JSON path."""
    from conveyor.bench.serve import machine

    script = script_path(name, where)
    report.check_out_folder(out)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / f"{name}.raw.json"
    raw.unlink(missing_ok=True)
    command = [sys.executable, str(script), "--json", str(raw), *extra]
    log = folder / f"{name}.log"
    print("$ " + " ".join(command), flush=True)
    with log.open("w") as fh:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert proc.stdout is not None
        for line in proc.stdout:  # shown live and kept
            sys.stdout.write(line)
            fh.write(line)
        code = proc.wait()
    if code != 0:
        raise ScriptError(f"{script} exited with code {code} (output in {log})")
    if not raw.is_file():
        raise ScriptError(f"{script} wrote no JSON to {raw} (output in {log})")
    figures = json.loads(raw.read_text())
    raw.unlink()
    document = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": command[1:],
        "figures": figures,
    }
    path = report.write_json(folder / f"{name}.json", document)
    report.write_csv(folder / f"{name}.csv", rows_of(figures))
    print(f"wrote {path}, {folder / f'{name}.csv'}, {log}")
    return path
