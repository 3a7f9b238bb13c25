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

An actor's calls are not interrupted (``ThreadCancels(interrupt=False)``), as in Ray: a
method stopped at an arbitrary bytecode would leave the actor's state half changed. A cancel
of a running call only marks it; the method sees the mark with
``aray.get_runtime_context().is_canceled()`` and may return early, and the call is then
reported cancelled whatever it returned. A task is interrupted *and* marked, so code that
catches the cancel can tell it from other errors.
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

    With ``interrupt=False`` (an actor's calls) a cancel of a running call only marks it
    (:meth:`requested`); the call is reported cancelled when it returns.

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
        >>> marks = ThreadCancels(interrupt=False)
        >>> def method():
        ...     marks.cancel(b"t3")  # (from another thread, usually)
        ...     return "returned early" if marks.requested(b"t3") else "ran on"
        >>> marks.run(b"t3", method)
        Traceback (most recent call last):
        ...
        aray._thread_cancel.ThreadCancelled: task was cancelled
    """

    def __init__(self, interrupt: bool = True) -> None:
        self._interrupt = interrupt
        self._lock = threading.Lock()
        self._running: dict[bytes, int] = {}  # call's task id -> the thread running it
        self._injected: set[bytes] = set()  # running calls a cancel was raised in
        self._requested: set[bytes] = set()  # running calls that were cancelled
        self._early: set[bytes] = set()  # cancelled before they started

    def run(self, task_id: bytes, fn: Callable[..., Any], *args: Any) -> Any:
        """On the call's thread: ``fn(*args)``, cancellable by :meth:`cancel` while it runs.
        Raises ThreadCancelled if it was cancelled (before it started, or while it ran; with
        ``interrupt=False``, when it returns or raises an Exception after a cancel)."""
        consumed = False
        try:
            try:
                if not self._enter(task_id):
                    raise ThreadCancelled()
                result = fn(*args)
            except ThreadCancelled:
                consumed = True
                raise
            except Exception as exc:
                if not self._interrupt and self.requested(task_id):
                    raise ThreadCancelled() from exc  # it failed on its way out: cancelled
                raise
            if not self._interrupt and self.requested(task_id):
                raise ThreadCancelled()  # it noticed the cancel and returned early
            return result
        finally:
            try:
                with self._lock:
                    self._running.pop(task_id, None)
                    self._requested.discard(task_id)
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
        """Any thread: mark the call ``task_id`` cancelled if it runs now and, unless
        ``interrupt=False``, raise :class:`ThreadCancelled` in its thread (once); True if it
        runs. With ``queued`` (the call is known to be waiting for a thread), a call not
        started yet is remembered and will not run."""
        with self._lock:
            thread = self._running.get(task_id)
            if thread is None:
                if queued:
                    self._early.add(task_id)
                return False
            self._requested.add(task_id)
            if not self._interrupt or task_id in self._injected:
                return True
            if _raise_in_thread(thread, ThreadCancelled):
                self._injected.add(task_id)
                return True
            return False

    def requested(self, task_id: bytes) -> bool:
        """Any thread: was the running call ``task_id`` cancelled?"""
        with self._lock:
            return task_id in self._requested

    def forget(self, task_id: bytes) -> None:
        """The call is over (it ran, or never will): drop a remembered early cancel."""
        with self._lock:
            self._early.discard(task_id)
