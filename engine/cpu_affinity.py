"""``conveyor serve --cpu-affinity``: which CPUs the server's Python threads run on.

A server process is a handful of Python threads taking turns on one GIL: the event
loop (the gRPC handlers, receive and send), the model workers, the repository's.
When they wander over cores, every hand-off between them (a request queued for a
worker, a batch's answers posted back to the loop) wakes a thread on another core
and passes the GIL across cores; kept on one core, it is a context switch. gRPC's
own threads (its C core's network polling, which runs without the GIL) are left on
every CPU: they are what a second core is good for. torch's intra-op threads go with
the Python ones. On the 2-core machine of
benchmarks/README.md ("CPU affinity"), with the load generator on the same machine,
this served 8 x 64-row requests 8-15% faster at ~7% less server CPU per request, and
64 x 1-row requests no slower. Pinning the whole process instead (as ``taskset``
would) did as well with 64-row requests but ~10% worse at 64 x 1 row, where gRPC's
threads then queued behind the Python ones on that one core.

What it costs: the Python threads, and the torch threads the model workers start, no
longer spread over cores, so a model whose forward is long (or runs torch intra-op
threads) gets less: hence opt-in, to be measured per deployment and model. With
``--workers N`` each worker process gets its own contiguous share of the list
(``0-3`` with 2 workers: ``0-1`` and ``2-3``), as nginx's ``worker_cpu_affinity``;
with more workers than CPUs they take one CPU each, round-robin. Linux only
(``os.sched_setaffinity``).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

_ITEM = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_cpu_list(text: str, where: str = "--cpu-affinity") -> tuple[int, ...]:
    """``"0,2-3"`` -> ``(0, 2, 3)``: the list syntax of ``taskset -c`` and cpusets.

    Raises ``ValueError`` naming ``where`` for a bad item, a reversed range, an empty
    list, or a CPU this process may not use (``os.sched_getaffinity``).
    """
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError(f"{where}: CPU affinity needs Linux (os.sched_setaffinity)")
    cpus: set[int] = set()
    for item in text.split(","):
        m = _ITEM.match(item)
        if m is None:
            raise ValueError(
                f"{where} {text!r}: {item.strip()!r} is not a CPU number or range; "
                "expected a list like 0,2-3"
            )
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        if last < first:
            raise ValueError(f"{where} {text!r}: range {first}-{last} runs backwards")
        cpus.update(range(first, last + 1))
    available = os.sched_getaffinity(0)
    missing = sorted(cpus - available)
    if missing:
        raise ValueError(
            f"{where} {text!r}: CPU {format_cpu_list(missing)} not available to this "
            f"process (available: {format_cpu_list(sorted(available))})"
        )
    return tuple(sorted(cpus))


def format_cpu_list(cpus: Sequence[int]) -> str:
    """``(0, 2, 3)`` -> ``"0,2-3"``, the inverse of ``parse_cpu_list``."""
    runs: list[list[int]] = []  # [first, last] of each run of consecutive CPUs
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def worker_shares(cpus: Sequence[int], workers: int) -> list[tuple[int, ...]]:
    """The CPUs of each of ``workers`` processes: contiguous shares of ``cpus`` as
    even as possible (the first ones one CPU larger), or one CPU each, round-robin,
    when there are more workers than CPUs."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    cpus = tuple(sorted(cpus))
    if workers >= len(cpus):
        return [(cpus[i % len(cpus)],) for i in range(workers)]
    size, extra = divmod(len(cpus), workers)
    shares, start = [], 0
    for i in range(workers):
        end = start + size + (1 if i < extra else 0)
        shares.append(cpus[start:end])
        start = end
    return shares


def pin_server_threads(cpus: Sequence[int]) -> int:
    """The server's own threads on ``cpus`` only: every Python thread, and every native
    thread that did not name itself (they carry the process's name: torch's OpenMP
    pool, say). Threads that named themselves, gRPC's C core (``event_engine``,
    ``grpc_global_tim``, ...), keep their CPUs. Threads started later inherit their
    starter's CPUs. Returns the number of threads pinned."""
    import threading

    tids = {t.native_id for t in threading.enumerate() if t.native_id is not None}
    try:
        own_name = Path("/proc/self/comm").read_text()
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # ended since the listing
                if Path(f"/proc/self/task/{tid}/comm").read_text() == own_name:
                    tids.add(int(tid))
    except OSError:  # no procfs: the Python threads only
        pass
    mask = set(cpus)
    pinned = 0
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.sched_setaffinity(tid, mask)
            pinned += 1
    return pinned


def limit_torch_threads(cpus: Sequence[int]) -> int:
    """torch intra-op threads, and conveyor's C++ ops' threads, no more than the pinned
    CPUs: more would spin against each other on them (several times slower). Left alone
    when ``OMP_NUM_THREADS`` says how many, or when torch already uses few enough.
    Returns torch's thread count."""
    import torch

    from conveyor.kernels.dispatch import set_cpu_threads

    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > len(cpus):
        torch.set_num_threads(len(cpus))
        set_cpu_threads(len(cpus))
    return torch.get_num_threads()
