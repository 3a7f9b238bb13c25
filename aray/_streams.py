"""Streaming results: ``num_returns="streaming"`` tasks and methods that ``yield``.

The worker sends each yielded value as soon as it exists (a ``StreamItem``); the caller's
core turns it into an owned ObjectRef and hands it to the :class:`ObjectRefGenerator`, which
yields refs to ``for`` and ``async for`` loops in order. The task's ``TaskFinished`` ends
the stream (or carries the error raised by the generator).

Back-pressure: the producer runs at most :data:`STREAM_WINDOW` items ahead of what the
consumer has taken; the caller reports what it has taken (``StreamConsumed``) every quarter
window, and once more, without limit, when the generator is dropped. The caller holds only
the refs not yet taken, so a long stream costs memory for its window, not its length.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import TYPE_CHECKING

from ._portal import call, on_runtime
from ._refs import ObjectRef

if TYPE_CHECKING:
    from ._core import Core

#: how many items a stream's producer may run ahead of its consumer
STREAM_WINDOW = 1024


class StreamState:
    """The caller's side of one stream (lives on the runtime loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.items: deque[ObjectRef] = deque()  # received, not taken yet
        self.taken = 0  # items the consumer has taken (the index of items[0])
        self.reported = 0  # what the producer was last told of ``taken``
        self.done = False
        self.error: BaseException | None = None
        self._changed = asyncio.Event()

    def add(self, ref: ObjectRef) -> None:
        self.items.append(ref)
        self._changed.set()

    def finish(self, error: BaseException | None = None) -> None:
        self.done = True
        self.error = error
        self._changed.set()

    async def next(self, index: int) -> ObjectRef:
        """The ``index``-th ref (taken in order), waiting for it; StopAsyncIteration past
        the end."""
        while self.taken + len(self.items) <= index and not self.done:
            self._changed.clear()
            await self._changed.wait()
        while self.items and self.taken < index:  # (a consumer never skips; be safe)
            self.items.popleft()
            self.taken += 1
        if self.items and self.taken == index:
            self.taken += 1
            return self.items.popleft()
        if self.error is not None:
            raise self.error
        raise StopAsyncIteration

    def report_due(self) -> bool:
        """Should the producer hear of what was taken? (every quarter window)"""
        if self.taken - self.reported >= STREAM_WINDOW // 4 and not self.done:
            self.reported = self.taken
            return True
        return False


class StreamWindow:
    """The producer's side of back-pressure: how far it may run ahead of the consumer.
    Updated on the worker's loop; waited on by the task's thread or on the loop."""

    def __init__(self, link) -> None:
        self.link = link  # to the consumer: if it closes, nobody is left to wait for
        self.consumed = 0
        self._cond = threading.Condition()
        self._event: asyncio.Event | None = None

    def consumed_up_to(self, count: int) -> None:
        with self._cond:
            self.consumed = max(self.consumed, count)
            self._cond.notify_all()
        if self._event is not None:
            self._event.set()

    def wait_sync(self, produced: int) -> None:
        """On the task's thread: block while ``produced`` is a window ahead."""
        with self._cond:
            while produced - self.consumed >= STREAM_WINDOW:
                # in slices: a cancel is raised in this thread at its next bytecode
                self._cond.wait(0.2)

    async def wait_async(self, produced: int) -> None:
        """On the loop: wait while ``produced`` is a window ahead."""
        while produced - self.consumed >= STREAM_WINDOW:
            if self._event is None:
                self._event = asyncio.Event()
            self._event.clear()
            await self._event.wait()


class ObjectRefGenerator:
    """The refs a streaming task or method yields, each as soon as it is produced.

    Use it with ``for ref in gen`` (blocking) or ``async for ref in gen``; get the values
    with ``aray.get(ref)`` / ``await ref``. An error raised by the generator is raised by
    the loop after the refs yielded before it.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote(num_returns="streaming")
        ... def count(n):
        ...     for i in range(n):
        ...         yield i
        >>> [aray.get(ref) for ref in count.remote(3)]
        [0, 1, 2]
    """

    def __init__(self, core: Core, task_id: bytes) -> None:
        self._core = core
        self._task_id = task_id
        self._index = 0

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> ObjectRef:
        try:
            ref = call(self._core.loop, self._core.stream_next, self._task_id, self._index,
                       what="get")
        except StopAsyncIteration:
            raise StopIteration from None
        self._index += 1
        return ref

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        ref = await on_runtime(self._core.loop,
                               self._core.stream_next(self._task_id, self._index))
        self._index += 1
        return ref

    def __del__(self) -> None:
        try:  # the producer need not wait for a consumer that is gone
            self._core.call_soon(self._core.close_stream, self._task_id)
        except Exception:  # interpreter or loop shut down
            pass

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()})"
