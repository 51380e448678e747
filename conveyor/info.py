"""``conveyor info``: what this installation is built with and what it can use.

Paste its output into a bug report: version, Python, the compiled extension's
build (OpenMP threads, CUDA), visible CUDA devices and the versions of the
libraries conveyor runs on.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from conveyor import __version__

_LIBRARIES = ("numpy", "pyarrow", "torch", "triton", "grpcio", "protobuf", "prometheus-client")


def collect() -> dict[str, Any]:
    """Build and runtime facts as a JSON-serialisable dict."""
    info: dict[str, Any] = {
        "conveyor": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    try:
        native = importlib.import_module("conveyor._C")
        info["extension"] = dict(native.build_info())
        info["extension"]["cuda_devices"] = native.cuda_device_count()
    except ImportError as exc:
        info["extension"] = {"error": f"conveyor._C failed to import: {exc}"}
    libs: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            libs[name] = version(name)
        except PackageNotFoundError:
            libs[name] = None
    info["libraries"] = libs
    return info


def _print_text(info: dict[str, Any]) -> None:
    print(f"conveyor   {info['conveyor']}")
    print(f"python     {info['python']} ({info['platform']})")
    ext = info["extension"]
    if "error" in ext:
        print(f"extension  {ext['error']}")
    else:
        threads = ext["omp_max_threads"] if ext["openmp"] else "off"
        cuda = f"built, {ext['cuda_devices']} device(s) visible" if ext["cuda"] else "not built"
        print(f"extension  OpenMP threads {threads}; CUDA {cuda}; {ext['compiler']}")
    for name, ver in info["libraries"].items():
        print(f"{name:<10} {ver or '-'}")


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_text(info)
    return 1 if "error" in info["extension"] else 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from conveyor.cli import add_command

    parser = add_command(
        subparsers,
        "info",
        help="show the version, how the extension was built, and visible devices",
        parents=[common],
        run=run,
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
