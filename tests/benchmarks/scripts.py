"""Load a benchmark script from benchmarks/ as a module, to call its ``main(argv)`` in-process."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@functools.cache
def load(relative: str) -> ModuleType:
    """The script ``benchmarks/<relative>``, imported once as ``bench_<its stem>``; the
    ``sys.path`` entries a script adds for its neighbours (drift_bench imports serve_bench)
    are undone afterwards."""
    path = BENCHMARKS / relative
    name = f"bench_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = list(sys.path)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path[:] = saved
    return module
