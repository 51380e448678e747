"""Processes: one per rank, started by torch's elastic launcher or by ``torchrun``.

``conveyor train --nproc N`` calls :func:`launch`, which runs N local workers through
``torch.distributed.launcher.api.elastic_launch`` (the engine behind ``torchrun``: c10d
rendezvous on a free local port, workers watched, all stopped when one fails). Under
``torchrun --nnodes ... --nproc-per-node ...`` the same command line runs in every worker
process that torchrun starts: :func:`under_torchrun` sees the environment torchrun sets and the
CLI calls the worker directly. Either way each worker reads ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` from its environment, joins the process group (NCCL
when it has a GPU, gloo otherwise) and reads its own shard.

Threads: workers that share a machine split its cores, ``cores // LOCAL_WORLD_SIZE`` torch
threads each (at least 1), unless ``OMP_NUM_THREADS`` is set; on 2 cores with 2 workers that is
1 each, which avoids oversubscription that slows everything down many times.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from conveyor.errors import ConveyorError
from conveyor.trainer.errors import Interrupted, TrainerError

log = logging.getLogger("conveyor.trainer")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job; ``device`` is ``cuda:LOCAL_RANK`` or ``cpu``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: str = "cpu"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    """True in a worker started by torchrun or the elastic launcher."""
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "RANK" in os.environ and "WORLD_SIZE" in os.environ
    )


def env_from_environ(device: str | None = None) -> DistEnv:
    """The DistEnv of this process from torchrun's variables (single process when unset)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    return DistEnv(rank, world, local_rank, local_world, device)


def set_threads(env: DistEnv) -> None:
    """One share of the cores per local worker unless OMP_NUM_THREADS says otherwise."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    from conveyor.kernels.dispatch import set_cpu_threads

    share = max(1, (os.cpu_count() or 1) // env.local_world_size)
    torch.set_num_threads(share)
    set_cpu_threads(share)  # the fused ops' C++ paths, in every thread


def init_process_group(env: DistEnv) -> None:
    """Join the job's process group (no-op for a single process)."""
    if not env.distributed or dist.is_initialized():
        return
    if env.device.startswith("cuda"):
        torch.cuda.set_device(env.device)
        dist.init_process_group("nccl", timeout=timedelta(minutes=10))
    else:
        dist.init_process_group("gloo", timeout=timedelta(minutes=10))


# Loggers through which torch's launcher reports a failed worker: the exception of its own
# join, with a traceback, and the SIGTERM of each other worker.
_LAUNCHER_LOGGERS = ("torch.distributed.elastic.multiprocessing.api", "torch.multiprocessing.spawn")


def _record_user_error(errors_dir: str, exc: ConveyorError) -> None:
    """Leave a worker's :class:`ConveyorError` for :func:`launch` (written whole, then renamed,
    so it is never read half-written)."""
    path = Path(errors_dir) / f"rank-{os.environ.get('RANK', '0')}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"message": str(exc)}))
    os.replace(tmp, path)


def _user_error(errors_dir: str) -> tuple[int, str] | None:
    """The rank and message of the first :class:`ConveyorError` a worker recorded, if any."""
    found = sorted(Path(errors_dir).glob("rank-*.json"), key=lambda p: p.stat().st_mtime_ns)
    if not found:
        return None
    first = found[0]
    return int(first.stem.removeprefix("rank-")), json.loads(first.read_text())["message"]


class _QuietAfterUserError(logging.Filter):
    """Drops the launcher's report of failed workers once one recorded a ConveyorError: that
    is one line for the user (:func:`launch` raises it), not torch's traceback of its join."""

    def __init__(self, errors_dir: str) -> None:
        super().__init__()
        self.errors_dir = errors_dir

    def filter(self, record: logging.LogRecord) -> bool:
        return _user_error(self.errors_dir) is None


# The launcher's agent logs the signal that stops it; the multiprocessing logger then each
# worker it closes.
_AGENT_LOGGER = "torch.distributed.elastic.agent.server.api"


class _QuietOnSignal(logging.Filter):
    """Drops the launcher's warnings of a stop by signal (Ctrl-C, SIGTERM) and of the workers
    it closes for it: :func:`launch` says it in one line (``interrupted ...``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stopping = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "death signal" in record.getMessage():
            self.stopping = True
        return not self.stopping


@contextlib.contextmanager
def _quiet_launcher(errors_dir: str) -> Iterator[None]:
    quiet, on_signal = _QuietAfterUserError(errors_dir), _QuietOnSignal()
    loggers = [logging.getLogger(name) for name in _LAUNCHER_LOGGERS]
    agent = logging.getLogger(_AGENT_LOGGER)
    for logger in loggers:
        logger.addFilter(quiet)
        logger.addFilter(on_signal)
    agent.addFilter(on_signal)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
            logger.removeFilter(on_signal)
        agent.removeFilter(on_signal)


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[None]:
    """SIGINT and SIGTERM stop a run (``--nproc 1``, or a worker the launcher stops) with an
    ``Interrupted`` error raised where the run is (one line, exit 128 + the signal), so
    that an export under way removes its temporary folder. By default SIGTERM ended the
    process on the spot (no message, the folder left in the model repository) and Ctrl-C
    exited 130 without a word. A second signal during that cleanup is ignored."""
    stops = (signal.SIGINT, signal.SIGTERM)

    def stop(signum: int, frame: Any) -> None:
        for s in stops:
            signal.signal(s, signal.SIG_IGN)
        name = signal.Signals(signum).name
        raise Interrupted(f"interrupted by {name}; continue with --resume", signum)

    previous = {s: signal.signal(s, stop) for s in stops}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _worker(config: dict[str, Any], log_level: str, errors_dir: str) -> dict[str, Any] | None:
    """Entry point of each worker process the elastic launcher starts.

    A :class:`ConveyorError` (bad data, an option that does not fit) is recorded in
    ``errors_dir`` and ends the process with status 1, rather than raised: raised, it would
    go through torch's error handling, which logs its traceback in the launching process. Any
    other exception is a bug and is raised, traceback and all.
    """
    from conveyor.log import setup_logging
    from conveyor.trainer.config import TrainConfig
    from conveyor.trainer.loop import run_worker

    setup_logging(log_level)
    try:
        with stopped_by_signals():  # the launcher stops its workers with SIGTERM
            return run_worker(TrainConfig.from_dict(config), prepared=True)
    except Interrupted as exc:
        # Cleaned up (an export's temporary folder); now end by the signal itself, as
        # before: recorded as this worker's error, it hid the cause the launcher reports
        # (a sibling that died, the user's Ctrl-C) behind "interrupted by SIGTERM".
        signum = exc.exit_code - 128
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        raise SystemExit(exc.exit_code) from None  # not reached: the signal ends the process
    except ConveyorError as exc:
        _record_user_error(errors_dir, exc)
        raise SystemExit(1) from None


def launch(config: dict[str, Any], nproc: int, log_level: str = "info") -> dict[str, Any] | None:
    """Run ``nproc`` local workers with torch's elastic launcher; rank 0's summary is returned.

    A failing worker stops them all (no restarts: ``--resume`` is how a run continues) and
    raises :class:`TrainerError` naming the rank and its error (a worker's ConveyorError as
    its one line, without torch's report of the failure).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    lc = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"conveyor-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",  # a free port, like torchrun --standalone
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    with (
        tempfile.TemporaryDirectory(prefix="conveyor-workers-") as errors_dir,
        _quiet_launcher(errors_dir),
    ):
        try:
            results = elastic_launch(lc, _worker)(config, log_level, errors_dir)
        except ChildFailedError as exc:
            user_error = _user_error(errors_dir)
            if user_error is None:
                _raise_failure(exc)
            rank, message = user_error
            raise TrainerError(f"worker rank {rank}: {message}") from None
        except SignalException as exc:
            # The launcher turns SIGINT/SIGTERM into this exception after stopping the
            # workers: a stop asked for, like Ctrl-C of one process (exit 130), not a crash
            # to report with torch's traceback.
            name = signal.Signals(exc.sigval).name
            raise Interrupted(
                f"interrupted by {name}; continue with --resume", int(exc.sigval)
            ) from None
    return results.get(0)


def _raise_failure(exc: Any) -> NoReturn:
    """A worker that failed otherwise (an exception, a signal): its rank, status and error."""
    rank, failure = exc.get_first_failure()
    message = failure.message
    if isinstance(message, dict):  # the worker's error file: {"message": ..., "extraInfo"}
        message = message.get("message", message)
    raise TrainerError(
        f"worker rank {rank} failed (exit code {failure.exitcode}): {message}"
    ) from None
