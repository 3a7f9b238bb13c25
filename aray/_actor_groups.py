"""Where an actor's calls run, and how their answers get back to the runtime's loop.

* An async actor has one :class:`GroupLoop` per concurrency group, the default group
  included: an event loop on a thread of its own, running at most the group's limit of calls
  at once. The runtime's own loop (links, results, fetches) only hands calls over, so a
  method that blocks its loop (``time.sleep`` in ``async def``, a blocking ``aray.get``)
  stops the calls of its own group, not those of the other groups, nor the runtime.
* A sync or threaded actor has one :class:`Lane` per group: at most the group's limit of
  threads, started as calls come, fed from one queue in arrival order (a lane of one thread
  runs its calls one at a time, in order).
* Calls answer through one :class:`ReplyQueue`: posted from any thread, sent from the
  runtime's loop in the order posted, so a stream's items always go out before the end of
  that stream.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any

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


class ReplyQueue:
    """Messages to callers, posted from any thread, sent by ``send(link, msg)`` on the
    runtime's loop in the order they were posted (one wake-up per batch).

    Examples:
        >>> import asyncio
        >>> sent = []
        >>> async def main():
        ...     replies = ReplyQueue(asyncio.get_running_loop(), lambda l, m: sent.append(m))
        ...     replies.post(None, "a")
        ...     replies.post(None, "b")
        ...     await asyncio.sleep(0)
        >>> asyncio.run(main())
        >>> sent
        ['a', 'b']
    """

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 send: Callable[[Any, Any], None]) -> None:
        self._loop = loop
        self._send = send
        self._items: list[tuple[Any, Any]] = []
        self._lock = threading.Lock()

    def post(self, link: Any, msg: Any) -> None:
        """Any thread: send ``msg`` on ``link`` after everything posted before."""
        with self._lock:
            self._items.append((link, msg))
            wake = len(self._items) == 1  # otherwise the loop is due to send them already
        if wake:
            self._loop.call_soon_threadsafe(self.flush)

    def flush(self) -> None:
        """Loop only: send what was posted, in order."""
        with self._lock:
            items, self._items = self._items, []
        for link, msg in items:
            self._send(link, msg)


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
        # starts and cancels handed over from other threads, taken in order, one wake-up
        # per batch (a burst of calls wakes the loop once)
        self._inbox: list[tuple] = []
        self._lock = threading.Lock()
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
        self._hand_over((task_id, make, never_ran))

    def cancel(self, task_id: bytes) -> None:
        """Any thread: cancel the call's asyncio task (at its current ``await``)."""
        self._hand_over((task_id,))

    def _hand_over(self, item: tuple) -> None:
        with self._lock:
            self._inbox.append(item)
            wake = len(self._inbox) == 1
        if wake:
            self.loop.call_soon_threadsafe(self._take)

    def _take(self) -> None:
        with self._lock:
            items, self._inbox = self._inbox, []
        for item in items:
            if len(item) == 1:
                task = self.tasks.get(item[0])
                if task is not None:
                    task.cancel()
            else:
                self._start(*item)

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
