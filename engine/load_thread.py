"""The model repository's loading thread: one daemon thread running calls in order.

What ``ThreadPoolExecutor(1)`` gave, except that neither a stop nor the interpreter's
exit waits for the call under way. A model's load (``torch.jit.load`` and its warm-up)
can take a minute and cannot be interrupted; a SIGTERM waited it out whatever
``--grace-period`` said. The repository discards a load it abandoned once that load
ends (``repository._discard_result``), and a process that exits meanwhile ends it.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["LoadThread"]


class LoadThread(concurrent.futures.Executor):
    """Runs submitted calls one at a time, in submission order, on one daemon thread
    (started with the first call). ``shutdown(wait=False)`` leaves the call under way
    to finish on its own; ``cancel_futures`` cancels the ones still queued."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._shut = False
        self._lock = threading.Lock()

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            self._queue.put((future, fn, args, kwargs))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
            return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def busy(self) -> bool:
        """Whether a call is still under way after :meth:`shutdown` (the worker ends
        after it), or the thread is alive at all before."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._shut:
                return
            self._shut = True
            thread = self._thread
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        self._queue.put(None)  # the worker ends after the call under way
        if wait and thread is not None:
            thread.join()
