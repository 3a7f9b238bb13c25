"""Streaming results: ``num_returns="streaming"`` tasks and methods that ``yield``.

The worker sends each yielded value as soon as it exists (a ``StreamItem``); the caller's
core turns it into an owned ObjectRef and hands it to the :class:`ObjectRefGenerator`, which
yields refs to ``for`` and ``async for`` loops in order. The task's ``TaskFinished`` ends
the stream (or carries the error raised by the generator).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ._portal import call, on_runtime
from ._refs import ObjectRef

if TYPE_CHECKING:
    from ._core import Core


class StreamState:
    """The caller's side of one stream (lives on the runtime loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.items: list[ObjectRef] = []
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
        """The ``index``-th ref, waiting for it; StopAsyncIteration past the end."""
        while len(self.items) <= index and not self.done:
            self._changed.clear()
            await self._changed.wait()
        if index < len(self.items):
            return self.items[index]
        if self.error is not None:
            raise self.error
        raise StopAsyncIteration


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
        try:
            self._core.call_soon(self._core.close_stream, self._task_id)
        except Exception:  # interpreter or loop shut down
            pass

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()})"
