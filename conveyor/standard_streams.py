"""Standard input, output and error that exist, whatever the process was started with.

A supervisor may start a program with fd 0, 1 or 2 closed (``<&-``, ``>&-``). Python
then sets the matching ``sys`` stream to None, and the next descriptor anything opens
takes that number: uvloop's own descriptors then sit below 3, and it asserts
``fd > STDERR_FILENO`` when it closes them (SIGABRT at the end of a clean stop).
"""

from __future__ import annotations

import os
import sys


def open_standard_streams() -> None:
    """Point each closed descriptor of 0, 1, 2 at /dev/null and give ``sys.stdin``,
    ``sys.stdout`` and ``sys.stderr`` a stream where Python left None (writes to them
    are then discarded, as they would have gone nowhere)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # the lowest free number: fd, unless a lower one was free too
                os.dup2(null, fd)
                os.close(null)
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 (process-long)
