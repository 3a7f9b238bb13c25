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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _protocol as P
from ._link import Link
from ._objects import ObjectTable
from ._portal import call, on_loop, on_runtime
from ._refs import ObjectRef, return_id

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
    Updated on the worker's loop; waited on by the task's thread, or on an event loop: the
    worker's, or the loop of an async actor's concurrency group (another thread)."""

    def __init__(self, link) -> None:
        self.link = link  # to the consumer: if it closes, nobody is left to wait for
        self.consumed = 0
        self._cond = threading.Condition()
        self._event: asyncio.Event | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None  # the loop that waits

    def consumed_up_to(self, count: int) -> None:
        with self._cond:
            self.consumed = max(self.consumed, count)
            self._cond.notify_all()
        event, loop = self._event, self._event_loop
        if event is None or loop is None:
            return
        if on_loop(loop):
            event.set()
        else:  # an asyncio event is set on its own loop's thread
            loop.call_soon_threadsafe(event.set)

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
                self._event_loop = asyncio.get_running_loop()
                self._event = asyncio.Event()
            self._event.clear()
            await self._event.wait()


class Streams:
    """The streams of one process: those it consumes (as the owner of their items) and
    the windows of those it produces. Loop only, unless noted.

    Handed the object table, ``accept(oid, value)`` (a received item's value, as a task's
    result), this process's address (the owner of the items) and ``link_running(task_id)``
    (the link to the worker producing a stream, if it runs now).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, objects: ObjectTable,
                 accept: Callable[[bytes, list], None], address: str,
                 link_running: Callable[[bytes], Link | None]) -> None:
        self._loop = loop
        self._objects = objects
        self._accept = accept
        self._address = address
        self._link_running = link_running
        self.consumed: dict[bytes, StreamState] = {}  # streams this process consumes
        self.windows: dict[bytes, StreamWindow] = {}  # streams this worker produces

    def open(self, task_id: bytes) -> None:
        """A streaming task or call was submitted: its items are awaited here."""
        self.consumed[task_id] = StreamState(self._loop)

    def _on_StreamItem(self, link: Link, msg: P.StreamItem) -> None:
        oid = return_id(msg.task_id, msg.index)
        ref: ObjectRef[Any] = ObjectRef(oid, self._address)
        self._objects.add(oid, owned=True)
        self._accept(oid, msg.value)
        stream = self.consumed.get(msg.task_id)
        if stream is not None:
            stream.add(ref)
        # else the generator was dropped: this process still owns the item, whose value may
        # sit in a store already, so it is taken in and freed as its only ref dies here

    def end(self, task_id: bytes, error: BaseException | None) -> None:
        """The task behind a stream ended (``error``: how it failed)."""
        stream = self.consumed.get(task_id)
        if stream is not None:
            stream.finish(error)

    async def next(self, task_id: bytes, index: int) -> ObjectRef:
        """The ``index``-th item's ref; StopAsyncIteration past the end."""
        stream = self.consumed.get(task_id)
        if stream is None:
            raise StopAsyncIteration
        ref = await stream.next(index)
        if stream.report_due():
            self._tell_producer(task_id, stream.taken)
        return ref

    def close(self, task_id: bytes) -> None:
        """The consumer dropped its generator: the producer need not wait for it."""
        stream = self.consumed.pop(task_id, None)
        if stream is not None and not stream.done:
            self._tell_producer(task_id, P.STREAM_DONE)

    def _tell_producer(self, task_id: bytes, count: int) -> None:
        link = self._link_running(task_id)
        if link is not None:
            link.send_if_open(P.StreamConsumed(task_id, count))

    def _on_StreamConsumed(self, link: Link, msg: P.StreamConsumed) -> None:
        window = self.windows.get(msg.task_id)
        if window is not None:
            window.consumed_up_to(msg.count)

    def on_link_closed(self, link: Link) -> None:
        """A consumer is gone: let the producers of its streams finish."""
        for window in list(self.windows.values()):
            if window.link is link:
                window.consumed_up_to(P.STREAM_DONE)


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
            ref = call(self._core.loop, self._core.streams.next, self._task_id, self._index,
                       what="get")
        except StopAsyncIteration:
            raise StopIteration from None
        self._index += 1
        return ref

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        ref = await on_runtime(self._core.loop,
                               self._core.streams.next(self._task_id, self._index))
        self._index += 1
        return ref

    def __del__(self) -> None:
        try:  # the producer need not wait for a consumer that is gone
            self._core.call_soon(self._core.streams.close, self._task_id)
        except Exception:  # interpreter or loop shut down
            pass

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()})"
