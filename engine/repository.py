"""The live model repository: which versions of which models are served, and swapping them safely.

Layout (the trainer writes it; see ``engine/README.md``)::

    REPO/NAME/<version>/{config.json, model.pt | model.pt2[, spec.json, stats.json]}

Versions are positive integers, spelt in ASCII digits without leading zeros. Which
are served is the model's version policy (``version_policy`` in the newest
version's config.json that parses, else the server's default, ``latest:1``).
Model control:

* ``poll``: every ``poll_interval`` seconds the directory is rescanned; new or
  changed versions are loaded, versions no longer wanted and removed models are
  unloaded. RepositoryModelLoad/Unload are refused (as Triton does).
* ``explicit``: models are loaded (``load_models`` at start) and unloaded only by
  RepositoryModelLoad / RepositoryModelUnload.

Swaps are safe: a new version is loaded in a background thread while the old
one serves; the routing table is switched on the event loop; the old version's
batcher then stops accepting, executes what it has queued, and is dropped (in a
retire thread, outside the lock: no other load or unload waits for that drain). A
version that fails to load keeps its reason (ModelReady false, logs,
RepositoryIndex, ModelStatistics) and the versions already loaded keep serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.engine.batcher import DEFAULT_EXECUTION_TIMEOUT, MAX_ABANDONED_THREADS, Batcher
from conveyor.engine.drift import DriftMonitor, DriftSettings, load_monitor
from conveyor.engine.errors import (
    FailedPrecondition,
    InvalidArgument,
    ModelLoadError,
    NotFound,
    Unavailable,
)
from conveyor.engine.load_thread import LoadThread
from conveyor.engine.model import PROGRAM_FILES, SIDE_FILES, Model
from conveyor.engine.model_config import (
    MAX_INSTANCE_COUNT,
    ModelConfig,
    VersionPolicy,
    load_config,
)
from conveyor.engine.validation import RequestDecoder
from conveyor.versions import version_directory, version_number

if TYPE_CHECKING:
    from conveyor.engine.metrics import ServerMetrics

log = logging.getLogger("conveyor.engine.repository")

MODEL_CONTROL = ("poll", "explicit")
# Seconds a retired version gets to finish its queued requests.
RETIRE_TIMEOUT = 60.0
# Retired versions draining at once (more wait for a thread).
RETIRE_THREADS = 16
# Seconds between rescorings of idle drift windows (see ModelRepository._refresh_drift).
DRIFT_REFRESH_SECONDS = 1.0
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
# A model name is one directory name: longer ones cannot exist (ENAMETOOLONG).
_NAME_MAX_BYTES = 255


@dataclass(frozen=True)
class BatchingOverrides:
    """Server-wide settings that win over every model's config.json (None = keep the file's)."""

    max_batch_size: int | None = None
    max_queue_delay_microseconds: int | None = None
    max_queue_size: int | None = None
    instance_count: int | None = None
    # Fault handling (see engine/batcher.py): seconds a batch may run (the default for
    # models whose config.json has no parameters.execution_timeout_seconds; 0 or None =
    # never), hung workers tolerated.
    execution_timeout: float | None = DEFAULT_EXECUTION_TIMEOUT
    max_abandoned_threads: int = MAX_ABANDONED_THREADS

    def __post_init__(self) -> None:
        for name, low in (
            ("max_batch_size", 1),
            ("max_queue_delay_microseconds", 0),
            ("max_queue_size", 0),
            ("instance_count", 1),
            ("max_abandoned_threads", 0),
        ):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if self.instance_count is not None and self.instance_count > MAX_INSTANCE_COUNT:
            raise ValueError(
                f"instance_count must be at most {MAX_INSTANCE_COUNT}, got {self.instance_count}"
            )
        if self.max_queue_size == 0:
            # As in config.json: 0 is "the default bound", never a queue that holds nothing.
            object.__setattr__(self, "max_queue_size", None)
        timeout = self.execution_timeout
        if timeout is not None:
            # A negative timeout abandoned every batch at once (each request answered
            # DEADLINE_EXCEEDED, a worker thread left behind per batch).
            if not (timeout >= 0 and math.isfinite(timeout)):
                raise ValueError(
                    f"execution_timeout must be a number of seconds >= 0 (0 = never), got {timeout}"
                )
            if timeout == 0:  # as config.json's execution_timeout_seconds: 0 = never
                object.__setattr__(self, "execution_timeout", None)


class ServedVersion:
    """A loaded model version with its batcher and request decoder (and, when the server
    has metrics, its Prometheus children and drift monitor)."""

    def __init__(
        self,
        model: Model,
        overrides: BatchingOverrides,
        fingerprint: tuple,
        metrics: ServerMetrics | None = None,
        drift: DriftSettings | None = None,
    ) -> None:
        config = model.config.with_batching(
            max_queue_delay_microseconds=overrides.max_queue_delay_microseconds,
            max_queue_size=overrides.max_queue_size,
        )
        if overrides.max_batch_size is not None:
            config = config.with_max_batch_size(overrides.max_batch_size)
        self.model = model
        self.config = config
        self.name = model.name
        self.version = model.version
        self.version_str = str(model.version)
        self.fingerprint = fingerprint
        self.decoder = RequestDecoder(model.name, config)
        self.batcher = Batcher(
            f"{model.name}:{model.version}",
            model.run,
            config.max_batch_size,
            config.dynamic_batching,
            overrides.instance_count or config.instance_count,
            execution_timeout=config.execution_timeout(overrides.execution_timeout),
            max_abandoned_threads=overrides.max_abandoned_threads,
        )
        # Per-request outcomes (counted on the event loop): [count, ns].
        self.success = [0, 0]
        self.fail = [0, 0]
        self.drift: DriftMonitor | None = None
        try:
            self.metrics = None if metrics is None else metrics.version(model.name, model.version)
            self.batcher.metrics = self.metrics
            if drift is not None and drift.enabled:
                self.drift = load_monitor(
                    model.name,
                    model.version,
                    config,
                    model.files.stats,
                    model.files.spec,
                    drift,
                    None if metrics is None else metrics.drift,
                )
            self.batcher.drift = self.drift
        except BaseException:
            # The batcher's threads run already: a version that is never served must
            # not leave them behind (nothing is queued, so this returns at once).
            self.batcher.close(RETIRE_TIMEOUT)
            raise

    def discard(self) -> None:
        """Drop a version that never served (a load abandoned by stop or a cancelled
        RPC): its drift series and batcher threads go. Blocking; any thread."""
        if self.drift is not None and self.drift.metrics is not None:
            self.drift.metrics.retire(None)
        self.batcher.close(RETIRE_TIMEOUT)


@dataclass
class ModelEntry:
    """Everything known about one model name."""

    name: str
    versions: dict[int, ServedVersion] = field(default_factory=dict)
    # version -> (fingerprint, reason) of its last failed load
    failed: dict[int, tuple[tuple, str]] = field(default_factory=dict)
    on_disk: list[int] = field(default_factory=list)
    # Why the last scan or load found no version to serve (the policy selects none on
    # disk), else None: a failed load of the model as a whole.
    policy_error: str | None = None
    # The version policy the last scan or load applied (ModelConfig reports it); None
    # before the first and after an unload.
    policy: VersionPolicy | None = None
    loaded_by_request: bool = False

    @property
    def wanted(self) -> list[int]:
        """The versions on disk that the policy selects (at the last scan or load)."""
        return [] if self.policy is None else self.policy.select(self.on_disk)

    def problem(self, version: int) -> str:
        """Why ``version`` is not served as its files say ('' when it is): its failed
        load (an older copy may still serve), else the model's policy error."""
        if version in self.failed:
            return self.failed[version][1]
        return self.policy_error or ""

    def load_problem(self) -> str | None:
        """Why the last load did not serve what the policy wants, or None when it does:
        the answer of RepositoryModelLoad (Triton fails the load and keeps the copies
        that served before)."""
        problems = []
        if self.policy_error is not None:
            problems.append(self.policy_error)
        problems += [
            f"model {self.name!r} version {v} failed to load: {self.failed[v][1]}"
            for v in self.wanted
            if v in self.failed
        ]
        if not problems:
            return None if self.versions else f"model {self.name!r} is not loaded"
        if self.versions:
            plural = "s" if len(self.versions) > 1 else ""
            problems.append(f"serving version{plural} {', '.join(map(str, sorted(self.versions)))}")
        return "; ".join(problems)

    @property
    def default(self) -> ServedVersion | None:
        """The version answering requests that name none: the highest loaded."""
        return self.versions[max(self.versions)] if self.versions else None


def _fingerprint(directory: Path) -> tuple:
    """(relative path, mtime ns, size) of every file under a version directory, sorted.

    Every file counts, not only config.json and the program: a load refused for a
    stray pickle must be retried once it is removed, and a new or changed stats.json
    or spec.json changes drift tracking. Only stat() is read (no hashing), so a poll
    stays cheap however large the weights; symlinked files are stat()ed through.
    """
    stamps = []
    for parent, dirs, files in os.walk(directory):
        dirs.sort()
        for name in files:
            path = Path(parent, name)
            try:
                st = path.stat()
            except OSError:  # removed meanwhile, or a dangling symlink
                continue
            # The inode and change time too: a file replaced by one of the same size and
            # modification time (rsync -a, cp -p, a reproducible archive) has a new inode,
            # and no utime() can set ctime.
            stamps.append(
                (
                    path.relative_to(directory).as_posix(),
                    st.st_mtime_ns,
                    st.st_size,
                    st.st_ino,
                    st.st_ctime_ns,
                )
            )
    return tuple(sorted(stamps))


class ModelRepository:
    """Owns every served model version; all mutations happen on the event loop.

    Args:
        root: the repository directory.
        model_control: ``poll`` or ``explicit``.
        poll_interval: seconds between rescans in ``poll`` mode (default 5).
        load_models: in ``explicit`` mode, models loaded at start (``*`` = all).
        version_policy: the default when a config.json sets none (default ``latest:1``).
        overrides: server-wide batching settings.
        metrics: the server's Prometheus metrics (None: none recorded).
        drift: drift settings (None: no drift tracking).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        model_control: str = "poll",
        poll_interval: float = 5.0,
        load_models: Iterable[str] = (),
        version_policy: VersionPolicy | None = None,
        overrides: BatchingOverrides | None = None,
        metrics: ServerMetrics | None = None,
        drift: DriftSettings | None = None,
    ) -> None:
        self.metrics = metrics
        self.drift = drift
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ModelLoadError(f"model repository {root}: not a directory")
        if model_control not in MODEL_CONTROL:
            raise ValueError(f"model_control: expected poll or explicit, got {model_control!r}")
        self.model_control = model_control
        self.poll_interval = poll_interval
        self.load_models = tuple(load_models)
        self.default_policy = version_policy or VersionPolicy()
        self.overrides = overrides or BatchingOverrides()
        self.models: dict[str, ModelEntry] = {}
        # Loading runs torch code: one background thread, so loads never overlap
        # and never touch the event loop; a daemon, so a stop need not wait for a load.
        self._executor = LoadThread("conveyor-repository")
        # Retired versions drain here, outside the lock and the loading thread: one
        # version's drain (a batch hung until the execution timeout) holds up no other
        # load or unload. Threads start only as drains overlap.
        self._retirer = ThreadPoolExecutor(
            RETIRE_THREADS, thread_name_prefix="conveyor-repository-retire"
        )
        self._draining: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._drift_refresher: asyncio.Task[None] | None = None
        # Directories already logged as skipped (misspelt versions, unservable model names)
        self._skipped: set[Path] = set()

    # -- routing (hot path, event loop) ------------------------------------------------------

    def get(self, name: str, version: str = "") -> ServedVersion:
        """The version that serves a request; NotFound for unknown names or versions,
        Unavailable for ones that exist but are not loaded."""
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"unknown model {name!r}")
        if not version:
            served = entry.default
            if served is None:
                raise Unavailable(self._why_not_ready(entry, None))
            return served
        number = version_number(version)
        if number is None:
            raise NotFound(f"model {name!r}: unknown version {version!r}")
        served = entry.versions.get(number)
        if served is None:
            if number in entry.on_disk or number in entry.failed:
                raise Unavailable(self._why_not_ready(entry, number))
            raise NotFound(f"model {name!r}: unknown version {version!r}")
        return served

    def _why_not_ready(self, entry: ModelEntry, version: int | None) -> str:
        label = f"model {entry.name!r}" + (f" version {version}" if version is not None else "")
        if version is not None and version in entry.failed:
            return f"{label} is not ready: load failed: {entry.failed[version][1]}"
        if version is None and entry.failed:
            newest = max(entry.failed)
            reason = entry.failed[newest][1]
            return f"{label} is not ready: version {newest} failed to load: {reason}"
        if entry.policy_error is not None:
            return f"{label} is not ready: {entry.policy_error}"
        return f"{label} is not loaded"

    def labels_for(self, name: str, version: str) -> tuple[str, str]:
        """Metric labels (model, version) of a request that no version served: the name
        only when the repository knows the model (a directory seen, loaded or failed),
        the version only when it is one of that model's on disk or failed, else "".
        Names a client sends are unbounded; these come from the repository."""
        entry = self.models.get(name)
        if entry is None:
            return "", ""
        number = version_number(version)
        if number is not None and (number in entry.on_disk or number in entry.failed):
            return name, str(number)
        return name, ""

    def ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except (NotFound, Unavailable):
            return False
        return True

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Initial load (poll: everything; explicit: ``load_models``), then the poll task."""
        self._drift_refresher = asyncio.get_running_loop().create_task(self._refresh_drift())
        if self.model_control == "poll":
            await self.sync()
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        else:
            names = self.load_models
            if "*" in names:
                names = tuple(await self._run(self._model_names))
            for name in names:
                try:
                    await self.load(name)
                except FailedPrecondition as exc:
                    # Broken files: reported (logs, ModelReady, RepositoryIndex), and
                    # the other models are served. A name with no directory is a
                    # typo and stops the start (NotFound propagates).
                    log.error("load failed: %s", exc.message, extra={"model": name})

    async def close(self, wait_for_load: bool = True) -> None:
        """Stop polling; drain and drop every version (their queued requests finish first).
        ``wait_for_load`` False: a load under way is abandoned, not waited for (it is
        discarded when it ends, or ends with the process)."""
        for task in (self._poller, self._drift_refresher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        async with self._lock:
            retired = [v for e in self.models.values() for v in e.versions.values()]
            for entry in self.models.values():
                entry.versions.clear()
            self._retire(retired)
        # Every drain, those of earlier unloads and swaps included, before the threads go.
        while self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)
        self._retirer.shutdown(wait=True)
        # A load under way (a stop came during it) is discarded when it ends
        # (_discard_result); with wait_for_load False it is not waited for.
        self._executor.shutdown(wait=wait_for_load, cancel_futures=True)

    def load_under_way(self) -> bool:
        """After :meth:`close`: whether an abandoned load is still running in its thread
        (torch code the interpreter's teardown must not run under)."""
        return self._executor.busy()

    async def _poll(self) -> None:
        root_missing = False
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.sync()
            except OSError as exc:
                if self.root.is_dir():  # the root is there: some other file failed
                    log.exception("repository poll failed")
                elif not root_missing:  # renamed away, an unmounted volume: once, not a
                    root_missing = True  # traceback every poll
                    log.error(
                        "model repository %s cannot be read (%s); serving what is loaded "
                        "until it is back",
                        self.root,
                        _reason(exc),
                    )
                continue
            except Exception:  # a bad scan must not end polling
                log.exception("repository poll failed")
                continue
            if root_missing:
                root_missing = False
                log.info("model repository %s is back", self.root)

    async def _refresh_drift(self) -> None:
        """Rescore the drift windows that traffic does not: a batch rescores only when it
        completes a chunk (and at most once per ``score_interval``), so once requests stop
        the gauges would keep their last values -- an alert on for good, rows that aged
        out of ``window_seconds`` still counted, the last chunk never scored
        (:meth:`DriftMonitor.refresh`). A window with nothing new and nothing aged costs
        a lock and a clock read."""
        while True:
            await asyncio.sleep(DRIFT_REFRESH_SECONDS)
            monitors = [
                v.drift
                for e in self.models.values()
                for v in e.versions.values()
                if v.drift is not None
            ]
            if not monitors:
                continue
            try:  # the repository thread: scoring is numpy work, kept off the event loop
                await self._run(_refresh_monitors, monitors)
            except Exception:  # drift must never stop serving, nor this task
                log.exception("drift refresh failed")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.wrap_future(self._submit(fn, *args))

    def _submit(
        self, fn: Any, *args: Any, executor: concurrent.futures.Executor | None = None
    ) -> concurrent.futures.Future[Any]:
        """``fn(*args)`` in the repository thread (or ``executor``'s); in a thread of its
        own once the executor refuses work: it does when the interpreter exits (its worker
        then marks it shut down), and an embedded server stopped then must still close its
        versions ("cannot schedule new futures after shutdown" ended the stop midway)."""
        try:
            return (executor or self._executor).submit(fn, *args)
        except RuntimeError:
            pass
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def call() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

        try:
            threading.Thread(target=call, name="conveyor-repository-exit", daemon=True).start()
        except RuntimeError:  # no new threads this late in the exit: run it here
            call()
        return future

    async def _load(self, *args: Any) -> ServedVersion:
        """``_load_version(*args)`` in the repository thread. Cancelled meanwhile (stop,
        or a load RPC whose caller went away), the thread cannot be interrupted: the
        version it builds is discarded when done, so no batcher threads outlive it."""
        future = self._submit(self._load_version, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.add_done_callback(_discard_result)
            raise

    # -- control ------------------------------------------------------------------------------

    def model_dir(self, name: str) -> Path:
        """The directory of model ``name``; refuses names that leave the repository root
        or cannot be a directory name (messages name the model, never the server's paths)."""
        if not _NAME.match(name) or name in (".", ".."):
            raise InvalidArgument(
                f"model name {_shown(name)}: use letters, digits, '_', '-', '.', starting "
                "with a letter, digit or '_' (no paths)"
            )
        if len(name.encode()) > _NAME_MAX_BYTES:
            raise InvalidArgument(
                f"model name {_shown(name)}: {len(name)} characters, longer than a "
                f"directory name can be ({_NAME_MAX_BYTES})"
            )
        try:
            path = (self.root / name).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise InvalidArgument(
                f"model {name!r}: its directory cannot be resolved ({_reason(exc)})"
            ) from None
        if not path.is_relative_to(self.root) or path == self.root:
            raise InvalidArgument(f"model {name!r}: resolves outside the model repository")
        return path

    def _has_dir(self, name: str) -> bool:
        """Whether model ``name`` has a directory (NotFound-worthy when not)."""
        path = self.model_dir(name)
        try:
            return path.is_dir()
        except OSError as exc:
            raise InvalidArgument(
                f"model {name!r}: its directory cannot be read ({_reason(exc)})"
            ) from None

    def _model_names(self) -> list[str]:
        names = []
        for child in sorted(self.root.iterdir()):
            if not child.is_dir() or child.name.startswith(".") or child.name == "__pycache__":
                continue  # hidden (.git, .ipynb_checkpoints) or Python's: not models
            try:
                self.model_dir(child.name)
            except InvalidArgument as exc:
                if child not in self._skipped:  # once per directory, not every poll
                    self._skipped.add(child)
                    log.warning("skipping %s: %s", child, exc.message)
                continue
            names.append(child.name)
        return names

    def _versions_on_disk(self, name: str) -> dict[int, Path]:
        base = self.model_dir(name)
        found = {}
        if not base.is_dir():
            return found
        for child in base.iterdir():
            number = version_directory(child.name)
            if number is None:
                # "01", "0", non-ASCII digits: int() would make "01" (or an Arabic-Indic
                # one) version 1 beside, or instead of, "1/"; beyond 2**63 - 1 no request
                # can name it. Skipped and logged once per path, not every poll; other
                # names ("tmp") are not versions.
                if child.name.isdigit() and child not in self._skipped:
                    self._skipped.add(child)
                    log.warning(
                        "skipping %s: a version directory is a positive integer up to "
                        "2**63 - 1 in ASCII digits without leading zeros",
                        child,
                    )
                continue
            if child.is_dir():
                resolved = child.resolve()
                if not resolved.is_relative_to(self.root):
                    log.warning("skipping %s: resolves outside the model repository", child)
                    continue
                found[number] = resolved
        return found

    def _policy(self, versions: dict[int, Path], current: VersionPolicy | None) -> VersionPolicy:
        """The version policy of the newest version's config.json (its
        ``version_policy``, else the server's default).

        A newer version with a missing or broken config.json (a push still being
        copied, a typo) does not decide: the policy in effect (``current``, from the
        last scan or load) stays until it parses, and before there is one the newest
        config.json that parses decides. Falling back to the server's default, or to
        an older version's policy, would let a bad push or a half-saved edit unload
        versions the model's own policy keeps serving.
        """
        broken_newer = False
        for version in sorted(versions, reverse=True):
            try:
                self._check_files_inside(versions[version])
                config = load_config(versions[version] / "config.json")
            except Exception:  # any config that does not parse: one bad model
                broken_newer = True  # must not stop the repository (its load reports it)
                continue
            if broken_newer and current is not None:
                return current
            return config.version_policy or self.default_policy
        return current or self.default_policy

    def _plan(
        self, name: str, config: ModelConfig | None
    ) -> tuple[dict[int, Path], VersionPolicy, list[int], dict[int, tuple]]:
        """Versions on disk, the policy, the versions it selects, and their fingerprints.

        ``config`` (RepositoryModelLoad's ``config`` parameter) replaces every version's
        config.json, its policy included; it is part of the fingerprints, so a later
        load without it reloads from the files.
        """
        versions = self._versions_on_disk(name)
        if config is None:
            entry = self.models.get(name)
            policy = self._policy(versions, None if entry is None else entry.policy)
        else:
            policy = config.version_policy or self.default_policy
        wanted = policy.select(list(versions))
        prints = {v: _fingerprint(versions[v]) for v in versions}
        if config is not None:
            prints = {v: (*p, ("parameter 'config'", repr(config))) for v, p in prints.items()}
        return versions, policy, wanted, prints

    def _check_files_inside(self, directory: Path) -> None:
        """Refuse a version whose files (symlinks) resolve outside the repository root:
        the root is what the operator vetted, and a link could point a model at any
        file the server can read."""
        for name in ("config.json", *PROGRAM_FILES.values(), *SIDE_FILES):
            path = directory / name
            if not (path.is_symlink() or path.exists()):
                continue
            resolved = path.resolve()
            if not resolved.is_relative_to(self.root):
                raise ModelLoadError(
                    f"{path}: a symlink that resolves outside the model repository "
                    f"({resolved}); model files must be inside it"
                )

    def _load_version(
        self, name: str, version: int, directory: Path, fp: tuple, config: ModelConfig | None
    ) -> ServedVersion:
        self._check_files_inside(directory)
        if config is None:
            config = load_config(directory / "config.json")
        if self.overrides.max_batch_size is not None:
            # Before the model loads, so its warm-up runs the batch size it will serve.
            config = config.with_max_batch_size(self.overrides.max_batch_size)
        model = Model(name, version, directory, config)
        return ServedVersion(model, self.overrides, fp, self.metrics, self.drift)

    async def sync(self, names: Iterable[str] | None = None) -> None:
        """Bring the served versions in line with the disk (all models, or ``names``)."""
        async with self._lock:
            if names is None:
                names = await self._run(self._model_names)
                for gone in set(self.models) - set(names):
                    entry = self.models.pop(gone)
                    log.info("model removed from the repository; unloading", extra={"model": gone})
                    self._retire(list(entry.versions.values()))
            for name in names:
                await self._sync_model(name)

    async def _sync_model(
        self, name: str, *, config: ModelConfig | None = None, retry: bool = False
    ) -> list[asyncio.Task[None]]:
        """Load what the policy wants of ``name`` and retire the rest. ``config``:
        RepositoryModelLoad's override of every config.json; ``retry``: load versions
        that failed even when their files are unchanged (an explicit load request).
        Returns the drains of the versions it retired (under way in the background)."""
        drains: list[asyncio.Task[None]] = []
        versions, policy, wanted, prints = await self._run(self._plan, name, config)
        entry = self.models.setdefault(name, ModelEntry(name))
        entry.on_disk = sorted(versions)
        entry.policy = policy
        self._check_policy(entry, policy, versions)
        for v in wanted:
            served = entry.versions.get(v)
            if served is not None and served.fingerprint == prints[v]:
                entry.failed.pop(v, None)  # the files are back to what serves
                continue
            failed = entry.failed.get(v)
            if failed is not None and failed[0] == prints[v] and not retry:
                continue  # unchanged since it failed; do not retry every poll
            t0 = time.perf_counter()
            try:
                new = await self._load(name, v, versions[v], prints[v], config)
            except ModelLoadError as exc:
                entry.failed[v] = (prints[v], str(exc))
                log.error("load failed: %s", exc, extra={"model": name, "version": v})
                self._mark_ready(name, v, v in entry.versions)
                continue
            except Exception as exc:  # a torch bug or similar: report, keep serving
                entry.failed[v] = (prints[v], f"{type(exc).__name__}: {exc}")
                log.exception("load failed", extra={"model": name, "version": v})
                self._mark_ready(name, v, v in entry.versions)
                continue
            entry.failed.pop(v, None)
            # torch, the program and its weights are long-lived objects: move them
            # out of the collector's view so full collections stay short (p99).
            gc.freeze()
            old = entry.versions.get(v)
            entry.versions[v] = new
            self._mark_ready(name, v, True)
            fields = {"model": name, "version": v, "platform": new.config.platform}
            if new.model.accelerator is not None:
                fields["accelerator"] = new.model.accelerator
            log.info("loaded in %.2fs", time.perf_counter() - t0, extra=fields)
            if old is not None:
                drains += self._retire([old])
        # Retire versions no longer wanted, but keep enough of the loaded ones
        # to replace wanted versions that failed, so a bad push never takes a
        # model down.
        ready_wanted = [v for v in wanted if v in entry.versions]
        missing = len(wanted) - len(ready_wanted)
        fallbacks = sorted(
            (v for v in entry.versions if v not in wanted and v in versions), reverse=True
        )
        if wanted:  # a policy that selects nothing is a failed load: everything stays
            fallbacks = fallbacks[: max(missing, 0)]
        keep = set(ready_wanted) | set(fallbacks)
        retire = [entry.versions.pop(v) for v in list(entry.versions) if v not in keep]
        for v in list(entry.failed):
            if v not in versions or v not in wanted:
                # Gone, or no longer selected: its failure is no longer this model's
                # problem (the index would otherwise show a stale reason).
                entry.failed.pop(v)
        if retire:
            log.info("unloading versions %s", [s.version for s in retire], extra={"model": name})
            drains += self._retire(retire)
        return drains

    def _check_policy(
        self, entry: ModelEntry, policy: VersionPolicy, versions: dict[int, Path]
    ) -> None:
        """A policy that selects no version on disk is a failed load of the model
        (Triton's wording); reported once, when it starts, and kept for the index,
        statistics and load answers until a scan or load selects a version again."""
        problem = None
        if not policy.select(list(versions)):
            on_disk = ", ".join(map(str, sorted(versions))) or "none"
            problem = (
                "at least one version must be available under the version policy of model "
                f"{entry.name!r} (policy {policy.spelling()}; versions on disk: {on_disk})"
            )
        if problem is not None and problem != entry.policy_error:
            log.error("load failed: %s", problem, extra={"model": entry.name})
        entry.policy_error = problem

    def _retire(self, served: list[ServedVersion]) -> list[asyncio.Task[None]]:
        """Routing no longer sees them; let their queued requests finish, then drop them.

        Their metrics change at once; the drains run in the background (tracked, so
        :meth:`close` waits for them) and are returned for a caller that answers only
        once they are done, which it awaits after releasing the lock.
        """
        drains = []
        for s in served:
            entry = self.models.get(s.name)
            replaced = entry is not None and s.version in entry.versions
            if not replaced:  # a reload's new copy is already ready under the same labels
                self._mark_ready(s.name, s.version, False)
            if s.drift is not None and s.drift.metrics is not None:
                # Its drift gauges would otherwise keep their last values (an alert
                # firing for a version that serves nothing, or whose new copy does not
                # monitor drift); model_ready and the queue bound stay, at 0, as the
                # README documents for an unloaded version.
                new = entry.versions[s.version] if replaced else None
                s.drift.metrics.retire(
                    new.drift.metrics if new is not None and new.drift is not None else None
                )
            drain = asyncio.get_running_loop().create_task(self._drain(s))
            self._draining.add(drain)
            drain.add_done_callback(self._draining.discard)
            drains.append(drain)
        return drains

    async def _drain(self, s: ServedVersion) -> None:
        """Close a retired version's batcher (it executes its queue) in a retire thread."""
        closing = self._submit(s.batcher.close, RETIRE_TIMEOUT, executor=self._retirer)
        if not await asyncio.wrap_future(closing):
            # A model stuck in forward with no execution timeout to abandon it: its
            # (daemon) threads are left behind rather than kept waited for.
            log.error(
                "version still executing after %.0fs; abandoning its workers",
                RETIRE_TIMEOUT,
                extra={"model": s.name, "version": s.version},
            )

    def _mark_ready(self, name: str, version: int, ready: bool) -> None:
        if self.metrics is not None:
            self.metrics.model_ready.labels(name, str(version)).set(1 if ready else 0)
            entry = self.models.get(name)
            served = entry.versions.get(version) if ready and entry is not None else None
            # The bound of one priority level's queue. Queue depth counts all levels, so
            # depth / bound (the saturation alert) reaches 1 when the traffic of one level
            # fills its queue, the usual case (one level in use), and sooner otherwise.
            bound = served.batcher.batching.max_queue_size if served is not None else 0
            self.metrics.max_queue_size.labels(name, str(version)).set(bound)

    async def load(self, name: str, config: ModelConfig | None = None) -> None:
        """RepositoryModelLoad: (re)load ``name``, with ``config`` in place of every
        version's config.json when given; NotFound when it has no directory.

        Like Triton, the load fails (FailedPrecondition naming each version and why)
        when a version the policy wants did not load, or the policy selects none; the
        copies that served before keep serving.
        """
        if not self._has_dir(name):
            raise NotFound(f"model {name!r}: no directory {name}/ in the model repository")
        if config is not None and config.name != name:
            raise InvalidArgument(
                f"parameter 'config': name {config.name!r} does not match the model {name!r}"
            )
        async with self._lock:
            drains = await self._sync_model(name, config=config, retry=True)
        await _drained(drains)
        entry = self.models[name]
        entry.loaded_by_request = True
        problem = entry.load_problem()
        if problem is not None:
            # The repository's contents, not the request, prevent the load.
            raise FailedPrecondition(problem)

    async def unload(self, name: str) -> None:
        """RepositoryModelUnload: drop every version of ``name`` (in-flight requests finish)."""
        self.model_dir(name)
        async with self._lock:
            entry = self.models.get(name)
            if entry is None:
                raise NotFound(f"unknown model {name!r}")
            retired = list(entry.versions.values())
            entry.versions.clear()
            entry.failed.clear()
            entry.policy = None
            entry.policy_error = None
            entry.loaded_by_request = False
            drains = self._retire(retired)
        await _drained(drains)

    # -- reporting ---------------------------------------------------------------------------

    def index(self) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) for every model directory and known version."""
        rows = []
        names = sorted(set(self.models) | set(self._safe_names()))
        for name in names:
            entry = self.models.get(name)
            if entry is None or (not entry.versions and not entry.failed):
                reason = entry.policy_error if entry is not None else None
                rows.append((name, "", "UNAVAILABLE", reason or "unloaded"))
                continue
            for v in sorted(set(entry.versions) | set(entry.failed)):
                if v in entry.versions:
                    # READY with a reason: the files failed to load (or the policy
                    # selects nothing) and the copy loaded before still serves.
                    problem = entry.problem(v)
                    reason = f"the copy loaded before serves; {problem}" if problem else ""
                    rows.append((name, str(v), "READY", reason))
                else:
                    rows.append((name, str(v), "UNAVAILABLE", entry.failed[v][1]))
        return rows

    def _safe_names(self) -> list[str]:
        try:
            return self._model_names()
        except OSError:
            return []


async def _drained(drains: list[asyncio.Task[None]]) -> None:
    """Wait for ``drains`` (outside the repository lock); a cancelled caller (its RPC
    ended) stops waiting, and the drains go on."""
    if drains:
        await asyncio.shield(asyncio.gather(*drains))


def _discard_result(future: concurrent.futures.Future[ServedVersion]) -> None:
    """Done callback of a load nobody awaits any more: drop the version it built."""
    if future.cancelled() or future.exception() is not None:
        return
    future.result().discard()


def _shown(name: str) -> str:
    """A client-sent name for a message: quoted, and cut short when long."""
    return repr(name) if len(name) <= 64 else repr(name[:64]) + "..."


def _reason(exc: BaseException) -> str:
    """An OS error without its path (the server's filesystem layout stays private)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _refresh_monitors(monitors: list[DriftMonitor]) -> None:
    for monitor in monitors:
        monitor.refresh()
