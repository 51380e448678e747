"""Loaded by every Python process of a training run whose environment puts this folder on
PYTHONPATH (see trainer_fixtures.hold_after_checkpoint): once the checkpoint of step
CONVEYOR_TEST_HOLD_STEP or later is on disk, the saving rank waits there (60 s at most),
and so does every other rank at its next collective. A test that kills the run once it
sees that checkpoint then always kills it mid-epoch, however late it gets the CPU (it
raced the rest of the epoch, ~0.5 s, and lost when descheduled that long)."""

import os
import time

_HOLD_STEP = int(os.environ["CONVEYOR_TEST_HOLD_STEP"])

import conveyor.trainer.checkpoint as _checkpoint  # noqa: E402

_save = _checkpoint.save_checkpoint


def _save_then_hold(directory, step, state, keep=3):  # type: ignore[no-untyped-def]
    path = _save(directory, step, state, keep)
    if step >= _HOLD_STEP:
        time.sleep(60)  # the test kills the run meanwhile; bounded if it does not
    return path


_checkpoint.save_checkpoint = _save_then_hold
