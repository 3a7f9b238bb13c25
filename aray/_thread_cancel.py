"""Cancelling sync calls that run on threads, without hitting the wrong code.

A sync task or actor method cannot be interrupted from outside except by raising an
exception inside its thread (``PyThreadState_SetAsyncExc``), which lands at the thread's
next bytecode, wherever that is. Raised a moment too late, it would land in the thread
pool's or the lane's own loop (the thread dies, the worker hangs with its lease held) or in
the next call the thread runs (cancelled by mistake). :class:`ThreadCancels` closes both
windows:

* the thread marks itself as running a call and clears the mark under one lock
  (:meth:`ThreadCancels.run` does both around the call);
* the canceller injects only while holding that lock, only if the mark is that call, and
  at most once per call;
* an injection that arrives after the user code returned is absorbed before
  :meth:`ThreadCancels.run` returns: it never reaches the thread's own loop or a later call.

A cancel that comes before the call starts is remembered when asked (``queued=True``), and
the call then does not run.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any

from .exceptions import TaskCancelledError

#: checks of the interpreter's pending exceptions an absorbing thread waits through at most
#: (the first one raises it; more only if user code swallowed the cancel itself)
_ABSORB_CHECKS = 100


class ThreadCancelled(TaskCancelledError):
    """What a cancel raises inside the thread of a sync call (reported as a
    :class:`~aray.exceptions.TaskCancelledError` of the call)."""


def _raise_in_thread(thread_id: int, exc_type: type) -> bool:
    """Raise ``exc_type`` inside another thread at its next Python bytecode; False if
    there is no such thread."""
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type)) == 1


def _checkpoint() -> None:
    """A call: the interpreter checks for pending exceptions at each one."""


def _absorb() -> None:
    """Let a pending injection be raised here, and swallow it."""
    try:
        for _ in range(_ABSORB_CHECKS):
            _checkpoint()
    except ThreadCancelled:
        pass


class ThreadCancels:
    """Which thread runs which sync call, so a cancel reaches that call and nothing else.

    Examples:
        >>> cancels = ThreadCancels()
        >>> cancels.run(b"t1", lambda: 7)
        7
        >>> cancels.cancel(b"t1")  # finished: nothing to cancel
        False
        >>> cancels.cancel(b"t2", queued=True)  # not started yet: remembered
        False
        >>> cancels.run(b"t2", lambda: 8)
        Traceback (most recent call last):
        ...
        aray._thread_cancel.ThreadCancelled: task was cancelled
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[bytes, int] = {}  # call's task id -> the thread running it
        self._injected: set[bytes] = set()  # running calls a cancel was raised in
        self._early: set[bytes] = set()  # cancelled before they started

    def run(self, task_id: bytes, fn: Callable[..., Any], *args: Any) -> Any:
        """On the call's thread: ``fn(*args)``, cancellable by :meth:`cancel` while it runs.
        Raises ThreadCancelled if it was cancelled (before it started, or while it ran)."""
        consumed = False
        try:
            try:
                if not self._enter(task_id):
                    raise ThreadCancelled()
                return fn(*args)
            except ThreadCancelled:
                consumed = True
                raise
        finally:
            try:
                with self._lock:
                    self._running.pop(task_id, None)
                    pending = task_id in self._injected and not consumed
                    self._injected.discard(task_id)
                if pending:
                    _absorb()
            except ThreadCancelled:
                pass  # it came after the user code was done: too late to matter

    def _enter(self, task_id: bytes) -> bool:
        with self._lock:
            if task_id in self._early:
                self._early.discard(task_id)
                return False
            self._running[task_id] = threading.get_ident()
            return True

    def cancel(self, task_id: bytes, queued: bool = False) -> bool:
        """Any thread: raise :class:`ThreadCancelled` in the thread running ``task_id``,
        if one does now (once); True if so. With ``queued`` (the call is known to be waiting
        for a thread), a call not started yet is remembered and will not run."""
        with self._lock:
            thread = self._running.get(task_id)
            if thread is None:
                if queued:
                    self._early.add(task_id)
                return False
            if task_id in self._injected:
                return True
            if _raise_in_thread(thread, ThreadCancelled):
                self._injected.add(task_id)
                return True
            return False

    def forget(self, task_id: bytes) -> None:
        """The call is over (it ran, or never will): drop a remembered early cancel."""
        with self._lock:
            self._early.discard(task_id)
