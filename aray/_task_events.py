"""The feed of the head's task table: what became of the tasks of this process.

Cheap on the hot path: a task's start is a dict entry, its end one event; what is still
waiting or running is reported by a batch every :data:`TASK_EVENTS_INTERVAL` seconds, while
anything is waiting or running here, by a loop that stops when the process is idle and is
woken again by the next task.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine

#: how often task events are sent to the head, at most
TASK_EVENTS_INTERVAL = 0.1


class TaskEventReporter:
    """Collects task events from any thread and sends them to the head in batches.

    ``spawn`` runs the reporting loop in a task of the process, ``send(events)`` delivers a
    batch, ``waiting`` counts the tasks this process submitted that wait still,
    ``pending_events(now)`` lists their events, and ``closing()`` says the process stops.

    Examples:
        >>> import asyncio
        >>> sent = []
        >>> async def main():
        ...     loop = asyncio.get_running_loop()
        ...     async def send(events):
        ...         sent.extend(e[1] for e in events)
        ...     reporter = TaskEventReporter(loop, lambda c, n: loop.create_task(c), send,
        ...                                  lambda: 0, lambda now: [], lambda: False)
        ...     reporter.started(b"t", "f", "job", "NORMAL_TASK")
        ...     reporter.ended(b"t")
        ...     await asyncio.sleep(3 * TASK_EVENTS_INTERVAL)
        >>> asyncio.run(main())
        >>> sent
        ['FINISHED']
    """

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 spawn: Callable[[Coroutine, str], asyncio.Task],
                 send: Callable[[list], Awaitable[None]], waiting: Callable[[], int],
                 pending_events: Callable[[float], list], closing: Callable[[], bool]) -> None:
        self._loop = loop
        self._spawn = spawn
        self._send = send
        self._waiting = waiting
        self._pending_events = pending_events
        self._closing = closing
        self._events: list = []  # to send
        self._running: dict[bytes, tuple] = {}  # tasks running here: id -> (since, ...)
        self._on = False  # the reporting loop runs
        self._lock = threading.Lock()

    def started(self, task_id: bytes, name: str, job_id: str, kind: str) -> None:
        """Any thread (worker): a task or actor call starts running here."""
        with self._lock:
            self._running[task_id] = (time.time(), name, job_id, kind)
        self.wake()

    def ended(self, task_id: bytes, error: str = "") -> None:
        """Any thread (worker): a task or actor call ended (``error``: why it failed)."""
        now = time.time()
        with self._lock:
            started = self._running.pop(task_id, None)
            fields = {"error": error} if error else {}
            if started is not None:
                fields.update(started_at=started[0], name=started[1], job_id=started[2],
                              type=started[3])
            self._events.append([task_id, "FAILED" if error else "FINISHED", now, fields])
        self.wake()

    def wake(self) -> None:
        """Any thread: something changed; start the reporting loop if it is idle."""
        with self._lock:
            if self._on:
                return
            self._on = True
        try:
            self._loop.call_soon_threadsafe(self._spawn, self._report(), "task events")
        except RuntimeError:  # the loop is closed: nobody will read them
            pass

    async def _report(self) -> None:
        """Loop: every interval, send the head what became of tasks, while anything is
        waiting or running here; then stop until woken again."""
        running_sent: set[bytes] = set()  # running tasks already reported
        while not self._closing():
            await asyncio.sleep(TASK_EVENTS_INTERVAL)
            now = time.time()
            with self._lock:
                events, self._events = self._events, []
                running = dict(self._running)
                idle = not running and not self._waiting()
                if idle:
                    self._on = False
            for task_id, (since, name, job_id, kind) in running.items():
                if task_id not in running_sent:
                    running_sent.add(task_id)
                    events.append([task_id, "RUNNING", since,
                                   {"name": name, "job_id": job_id, "type": kind}])
            events += self._pending_events(now)
            running_sent.intersection_update(running)
            if events:
                await self._send(events)
            if idle:
                return
