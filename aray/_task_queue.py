"""The tasks pushed to one worker: run one at a time, in arrival order, by two runners.

A plain function runs on the worker's task thread, an ``async def`` one on the runtime's
loop. Handing each task from the loop to the thread and its result back costs two wake-ups
per task, more than a small task itself; so the runner that holds the queue keeps it and
runs the tasks of its kind back to back, and hands the queue to the other runner only when
the next task is of the other kind. A pipelined batch of plain tasks then runs on the thread
without the loop stepping in between them (the loop only sends the answers, batched).

:class:`TaskQueue` is the decision alone, under one lock, so that the loop (which pushes,
cancels and drops tasks) and the thread (which takes them) agree on who runs what.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

Runner = Literal["thread", "loop"]
T = TypeVar("T")


class TaskQueue(Generic[T]):
    """Queued tasks, each of a runner's kind, and which runner holds the queue.

    :meth:`push` says which runner to start, if none holds the queue; the holder calls
    :meth:`take` for each next task, which answers the task, or ``None`` when the holder
    must stop: the queue is empty, or its head is for the other runner (then :meth:`take`
    has handed the queue over and :attr:`handed_to` says to whom, to start it).

    Examples:
        >>> q = TaskQueue()
        >>> q.push("a", "thread"), q.push("b", "thread"), q.push("c", "loop")
        ('thread', None, None)
        >>> q.take("thread"), q.take("thread")
        ('a', 'b')
        >>> q.take("thread") is None, q.handed_to  # the head is the loop's: hand over
        (True, 'loop')
        >>> q.take("loop"), q.take("loop"), q.holder
        ('c', None, None)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: deque[tuple[T, Runner]] = deque()
        self.holder: Runner | None = None  # the runner that holds the queue, if any
        self.handed_to: Runner | None = None  # set by the take() that handed the queue over
        self.running: T | None = None  # the task the holder took last and runs now
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: T, runner: Runner) -> Runner | None:
        """Loop: queue ``item`` for ``runner``; returns the runner to start, if the queue
        had none."""
        with self._lock:
            self._items.append((item, runner))
            if self.holder is not None or self._closed:
                return None
            self.holder = runner
            return runner

    def take(self, runner: Runner) -> T | None:
        """The holder ``runner``: its next task (now :attr:`running`), or ``None``: stop."""
        with self._lock:
            assert self.holder == runner, f"{runner} takes from a queue held by {self.holder}"
            self.running = None
            self.handed_to = None
            if not self._items or self._closed:
                self.holder = None
                return None
            item, kind = self._items[0]
            if kind != runner:
                self.holder = self.handed_to = kind
                return None
            self._items.popleft()
            self.running = item
            return item

    def close(self) -> None:
        """No task starts from now on (the worker retires): :meth:`take` answers ``None``
        and :meth:`push` starts no runner; what is queued stays, for :meth:`remove`."""
        with self._lock:
            self._closed = True

    def remove(self, match: Callable[[T], bool]) -> list[T]:
        """Loop: take the queued tasks for which ``match`` is true out; returns them."""
        with self._lock:
            out = [entry for entry in self._items if match(entry[0])]
            for entry in out:
                self._items.remove(entry)
        return [item for item, _ in out]
