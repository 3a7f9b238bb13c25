"""``as_completed``: refs in the order they finish, for ``for`` and ``async for``."""

from __future__ import annotations

import asyncio
import functools
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterator

from . import _global
from ._portal import on_loop
from ._refs import ObjectRef
from .exceptions import GetTimeoutError


class as_completed:
    """Iterate over ``refs`` as they finish (success or failure), fastest first.

    Works with ``for`` (blocking) and ``async for`` (from any event loop). Each ref is
    yielded once; ``timeout`` (seconds, for the whole iteration) raises
    :class:`~aray.exceptions.GetTimeoutError` if refs remain. It costs O(1) per ref, so it
    stays fast with tens of thousands of refs, unlike a loop of ``wait(num_returns=1)``.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
        >>> @aray.remote
        ... def f(x):
        ...     return x
        >>> sorted(aray.get(ref) for ref in aray.as_completed([f.remote(i) for i in range(5)]))
        [0, 1, 2, 3, 4]
    """

    def __init__(self, refs: list[ObjectRef], *, timeout: float | None = None) -> None:
        from .aio import as_ref_list, check_timeout

        self._refs, _ = as_ref_list(list(refs), "as_completed")
        check_timeout(timeout)
        self._timeout = timeout

    def __len__(self) -> int:
        return len(self._refs)

    def _register(self, deliver: Callable[[ObjectRef], None]) -> None:
        core = _global.core()

        def attach() -> None:
            for ref in self._refs:
                core.objects.when_ready(core.ownership.entry_for(ref),
                                        functools.partial(_deliver, deliver, ref))

        core.call_soon(attach)

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    def _timed_out(self, left: int) -> GetTimeoutError:
        return GetTimeoutError(
            f"as_completed timed out after {self._timeout} s with {left} refs not ready")

    def __iter__(self) -> Iterator[ObjectRef]:
        core = _global.core()
        if on_loop(core.loop):
            raise RuntimeError("a plain `for` over as_completed would block aray's event loop; "
                               "use `async for` here")
        ready: queue.SimpleQueue[ObjectRef] = queue.SimpleQueue()
        self._register(ready.put)
        deadline = self._deadline()
        for left in range(len(self._refs), 0, -1):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                yield ready.get(timeout=remaining)
            except queue.Empty:
                raise self._timed_out(left) from None

    def _batches(self, size: int, timeout: float | None) -> Iterator[list[ObjectRef]]:
        """The refs in batches, as a loop of ``wait(num_returns=size, timeout=timeout)``
        gives them (what Ray's ``ray.util.as_completed`` does), at O(1) a ref: a batch is
        ``size`` refs once they are ready (fewer at the end), or those ready when
        ``timeout`` passes (maybe none: the next batch waits again), in the input order."""
        core = _global.core()
        if on_loop(core.loop):
            raise RuntimeError("aray.util.as_completed blocks, and it was called on the event "
                               "loop that runs aray; use `async for ref in "
                               "aray.as_completed(refs)` here")
        ready: queue.SimpleQueue[ObjectRef] = queue.SimpleQueue()
        self._register(ready.put)
        order = {ref: i for i, ref in enumerate(self._refs)}
        left = len(self._refs)
        while left:
            batch = _take_batch(ready, min(size, left), timeout)
            left -= len(batch)
            yield sorted(batch, key=order.__getitem__)

    async def __aiter__(self) -> AsyncIterator[ObjectRef]:
        core = _global.core()
        loop = asyncio.get_running_loop()
        ready: asyncio.Queue[ObjectRef] = asyncio.Queue()
        if loop is core.loop:
            self._register(ready.put_nowait)
        else:
            def deliver(ref: ObjectRef) -> None:
                loop.call_soon_threadsafe(ready.put_nowait, ref)

            self._register(deliver)
        deadline = self._deadline()
        for left in range(len(self._refs), 0, -1):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                if remaining is None:
                    yield await ready.get()
                else:
                    yield await asyncio.wait_for(ready.get(), remaining)
            except TimeoutError:
                raise self._timed_out(left) from None


def _take_batch(ready: queue.SimpleQueue, size: int, timeout: float | None) -> list:
    """Up to ``size`` items of ``ready``: ``size`` of them, or what came within ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    batch: list = []
    while len(batch) < size:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            batch.append(ready.get(timeout=remaining))
        except queue.Empty:
            break  # the batch is what came in time, as wait() with a timeout answers
    return batch


def _deliver(deliver: Callable[[ObjectRef], None], ref: ObjectRef, _entry: object) -> None:
    deliver(ref)  # (the table's callback gets the entry; the iterator wants the ref)
