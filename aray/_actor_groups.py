"""Where an actor's calls run, and how their answers get back to the runtime's loop.

* An async actor has one :class:`GroupLoop` per concurrency group, the default group
  included: an event loop on a thread of its own, running at most the group's limit of calls
  at once. The runtime's own loop (links, results, fetches) only hands calls over, so a
  method that blocks its loop (``time.sleep`` in ``async def``, a blocking ``aray.get``)
  stops the calls of its own group, not those of the other groups, nor the runtime.
* A sync or threaded actor has one :class:`Lane` per group: at most the group's limit of
  threads, started as calls come, fed from one queue in arrival order (a lane of one thread
  runs its calls one at a time, in order).
* Calls answer through the runtime loop's :class:`~aray._inbox.Inbox`: posted from any
  thread, sent from the runtime's loop in the order posted, so a stream's items always go out
  before the end of that stream.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from ._inbox import Inbox

log = logging.getLogger("aray")

#: set in a worker that hosts an async actor (see :func:`warn_blocking_get`)
_async_actor = False
_warned = False


def hosting_async_actor() -> None:
    """This process hosts an async actor from now on (its worker calls this once)."""
    global _async_actor
    _async_actor = True


def warn_blocking_get() -> None:
    """Warn once per process when a blocking ``aray.get`` runs in an async actor, as Ray
    does: it works, but it stops the calls of its concurrency group while it waits.

    Examples:
        >>> warn_blocking_get()  # not in an async actor: nothing to say
    """
    global _warned
    if _async_actor and not _warned:
        _warned = True
        log.warning("Using a blocking aray.get inside an async actor: it blocks the event "
                    "loop of its concurrency group until the value is there. Use `await ref`"
                    " (or `await asyncio.gather(*refs)`) to let the loop run other calls "
                    "meanwhile.")


class GroupLoop:
    """One concurrency group of an async actor: an event loop on a thread of its own, which
    runs at most ``limit`` calls at once.

    Examples:
        >>> import asyncio, concurrent.futures
        >>> group = GroupLoop("example", 2)
        >>> done = concurrent.futures.Future()
        >>> async def call():
        ...     done.set_result(asyncio.get_running_loop() is group.loop)
        >>> group.start(b"t1", call, lambda: None)
        >>> done.result(timeout=10)
        True
        >>> group.stop()
    """

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self.semaphore = asyncio.Semaphore(limit)  # (bound to the loop that first waits)
        self.tasks: dict[bytes, asyncio.Task] = {}  # this loop's calls, by task id
        # starts and cancels handed over from other threads, in order, one wake-up per
        # batch (a burst of calls wakes the loop once)
        self._inbox = Inbox(self.loop)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self, task_id: bytes, make: Callable[[], Coroutine[Any, Any, None]],
              never_ran: Callable[[], None]) -> None:
        """Any thread: run ``make()`` on this loop as the call ``task_id``. ``never_ran`` is
        called (on this loop) if the call is cancelled before its coroutine starts, when
        the coroutine cannot answer for itself."""
        self._inbox.post(self._start, task_id, make, never_ran)

    def cancel(self, task_id: bytes) -> None:
        """Any thread: cancel the call's asyncio task (at its current ``await``)."""
        self._inbox.post(self._cancel, task_id)

    def _cancel(self, task_id: bytes) -> None:
        task = self.tasks.get(task_id)
        if task is not None:
            task.cancel()

    def _start(self, task_id: bytes, make: Callable[[], Coroutine[Any, Any, None]],
               never_ran: Callable[[], None]) -> None:
        task = self.loop.create_task(make(), name=self.name)
        self.tasks[task_id] = task

        def done(t: asyncio.Task) -> None:
            self.tasks.pop(task_id, None)
            if t.cancelled():
                never_ran()

        task.add_done_callback(done)

    def stop(self) -> None:
        """Stop the loop and its thread (the calls still on it are dropped)."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


class Lane:
    """The threads of one concurrency group of a sync or threaded actor: at most ``limit``,
    started as calls come, each running the functions put, in the order put.

    Examples:
        >>> import concurrent.futures, functools
        >>> seen = []
        >>> done = concurrent.futures.Future()
        >>> lane = Lane(1, "example")
        >>> for i in range(3):
        ...     lane.put(functools.partial(seen.append, i))
        >>> lane.put(lambda: done.set_result(seen))
        >>> done.result(timeout=10)
        [0, 1, 2]
    """

    def __init__(self, limit: int, name: str) -> None:
        self._limit = limit
        self._name = name
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads waiting for an item that no put has promised away yet

    def put(self, fn: Callable[[], None]) -> None:
        """Any thread: queue ``fn`` (which must not raise); start a thread for it if every
        thread is busy and the limit allows one more."""
        self._queue.put(fn)
        with self._lock:
            if self._idle:
                self._idle -= 1  # an idle thread takes it
                return
            if self._threads >= self._limit:
                return  # it waits for a busy thread
            self._threads += 1
            number = self._threads
        threading.Thread(target=self._serve, name=f"{self._name}_{number - 1}",
                         daemon=True).start()

    def _serve(self) -> None:
        while True:
            self._queue.get()()
            with self._lock:
                self._idle += 1
