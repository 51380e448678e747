"""Test-wide set-up. Runs before any test module is imported."""

import os

import pytest


def _cuda_devices() -> int:
    try:
        from conveyor import _C
    except ImportError:
        return 0
    return _C.cuda_device_count()


CUDA_DEVICES = _cuda_devices()

# Triton reads this when a @triton.jit function is defined, so it must be set
# before any conveyor.kernels module that defines one is imported. Without a
# GPU the kernels then run in Triton's interpreter (keep their grids tiny).
if CUDA_DEVICES == 0:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests run several torch workers on 2 cores; one thread each avoids
# oversubscription that slows them many times over.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# `conveyor serve` started by a test binds its metrics page to a free port, never
# the default 8002 that a real server (or the demo) on this machine may hold.
os.environ.setdefault("CONVEYOR_METRICS_PORT", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CUDA_DEVICES > 0:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_conveyor_logging():
    """Undo what a test's in-process CLI run did to the ``conveyor`` logger tree
    (``conveyor.log.setup_logging``): its handler wrote to that test's captured
    stderr, closed afterwards ("Logging error" in later tests), and ``propagate``
    off hid later tests' records from ``caplog``."""
    import logging

    loggers = [logging.getLogger(name) for name in ("conveyor", "py.warnings")]
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, handlers, level, propagate in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
