"""A first-in, first-out queue shared by drivers, tasks and actors: Ray's ``ray.util.queue``.

The items live in an async actor (an ``asyncio.Queue`` inside); :class:`Queue` is a handle
on it that pickles, so a queue passed to a task or an actor is the same queue there. A
blocking ``get``/``put`` with a timeout waits in the actor, which answers :class:`Empty` or
:class:`Full` when the time is up, so the caller is never held longer than that; should
the actor not answer at all (not placed yet, its node gone), the caller gives up a few
seconds later (``_ANSWER_GRACE_S``), cancels its request, and raises the same.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterable
from typing import Any

import aray

__all__ = ["Empty", "Full", "Queue"]


class Empty(queue.Empty):
    """Raised by ``get`` on an empty queue (after its timeout, when it blocks), as Ray's
    ``ray.util.queue.Empty``; also a ``queue.Empty``.

    Example:
        >>> import aray
        >>> from aray.util.queue import Empty, Queue
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> try:
        ...     Queue().get_nowait()
        ... except Empty:
        ...     print("empty")
        empty
    """


class Full(queue.Full):
    """Raised by ``put`` on a full queue (after its timeout, when it blocks), as Ray's
    ``ray.util.queue.Full``; also a ``queue.Full``.

    Example:
        >>> import aray
        >>> from aray.util.queue import Full, Queue
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> q = Queue(maxsize=1)
        >>> q.put(1)
        >>> try:
        ...     q.put_nowait(2)
        ... except Full:
        ...     print("full")
        full
    """


# the actor answers with a flag rather than raising, so that the caller raises a clean
# Empty/Full of its own (not an error wrapped for the trip between processes)
_OK, _EMPTY, _FULL = 0, 1, 2


class _QueueActor:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    async def qsize(self) -> int:
        return self.queue.qsize()

    async def empty(self) -> bool:
        return self.queue.empty()

    async def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None) -> int:
        # what fits now goes in now: wait_for with a timeout of 0 would not even try
        if not self.queue.full():
            self.queue.put_nowait(item)
            return _OK
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except TimeoutError:
            return _FULL
        return _OK

    async def get(self, timeout: float | None) -> tuple[int, Any]:
        if not self.queue.empty():
            return _OK, self.queue.get_nowait()
        try:
            return _OK, await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return _EMPTY, None

    async def put_nowait(self, item: Any) -> int:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return _FULL
        return _OK

    async def put_nowait_batch(self, items: list) -> tuple[int, int]:
        # all or nothing: check the room first (one event loop, so nothing comes in between)
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            return _FULL, self.queue.qsize()
        for item in items:
            self.queue.put_nowait(item)
        return _OK, self.queue.qsize()

    async def get_nowait(self) -> tuple[int, Any]:
        try:
            return _OK, self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return _EMPTY, None

    async def get_nowait_batch(self, num_items: int) -> tuple[int, Any]:
        if num_items > self.queue.qsize():
            return _EMPTY, self.queue.qsize()
        return _OK, [self.queue.get_nowait() for _ in range(num_items)]


_Actor = aray.remote(_QueueActor)


class Queue:
    """A first-in, first-out queue on the cluster, as Ray's ``ray.util.queue.Queue``.

    Blocking and non-blocking ``put``/``get`` with timeouts (as the standard library's
    ``queue.Queue``), batches (``put_nowait_batch``/``get_nowait_batch``, all or nothing)
    and ``put_async``/``get_async`` for async code. The object pickles: pass it to tasks
    and actors, which then share the queue with the driver.

    Args:
        maxsize: the most items it holds; 0 (the default) for no limit.
        actor_options: options of the actor that holds the items, as for
            ``ActorClass.options`` (``num_cpus``, ``resources``, ``name``...). By default
            the actor holds no CPU and is placed without waiting for one (``num_cpus=0``).

    Example:
        >>> import aray
        >>> from aray.util.queue import Queue
        >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
        >>> @aray.remote
        ... def produce(q, n):
        ...     for i in range(n):
        ...         q.put(i)
        >>> q = Queue()
        >>> aray.get(produce.remote(q, 3))
        >>> [q.get(timeout=10) for _ in range(3)]
        [0, 1, 2]
    """

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, got {maxsize!r}")
        self.maxsize = maxsize
        # num_cpus=0: the actor is placed at once even when every CPU is taken (by a Pool
        # whose functions use the queue, say); it waits on its items and needs none
        options = {"num_cpus": 0, **(actor_options or {})}
        self.actor: Any = _Actor.options(**options).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """How many items the queue holds.

        Example:
            >>> import aray
            >>> from aray.util.queue import Queue
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> q = Queue()
            >>> q.put("a")
            >>> q.size(), len(q)
            (1, 1)
        """
        return aray.get(self._actor().qsize.remote())

    def qsize(self) -> int:
        """How many items the queue holds (the standard library's name for :meth:`size`).

        Example:
            >>> import aray
            >>> from aray.util.queue import Queue
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> Queue().qsize()
            0
        """
        return self.size()

    def empty(self) -> bool:
        """Whether the queue holds no item.

        Example:
            >>> import aray
            >>> from aray.util.queue import Queue
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> Queue().empty()
            True
        """
        return aray.get(self._actor().empty.remote())

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` items (never, for ``maxsize=0``).

        Example:
            >>> import aray
            >>> from aray.util.queue import Queue
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> q = Queue(maxsize=1)
            >>> q.put(1)
            >>> q.full()
            True
        """
        return aray.get(self._actor().full.remote())

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item`` at the end; when full, wait for room (at most ``timeout`` seconds).

        Raises:
            Full: the queue is full and ``block`` is False, or ``timeout`` passed.
            ValueError: ``timeout`` is negative.

        Example:
            >>> import aray
            >>> from aray.util.queue import Full, Queue
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> q = Queue(maxsize=1)
            >>> q.put(1)
            >>> try:
            ...     q.put(2, timeout=0.1)
            ... except Full:
            ...     print("still full")
            still full
        """
        _put_done(_answer(self._put_ref(item, block, timeout), block, timeout))

    async def put_async(self, item: Any, block: bool = True,
                        timeout: float | None = None) -> None:
        """:meth:`put` for async code: waits without blocking the event loop.

        Example:
            >>> import asyncio
            >>> import aray
            >>> from aray.util.queue import Queue
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> q = Queue()
            >>> asyncio.run(q.put_async("a"))
            >>> q.get()
            'a'
        """
        _put_done(await _answer_async(self._put_ref(item, block, timeout), block, timeout))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Take the first item; when empty, wait for one (at most ``timeout`` seconds).

        Raises:
            Empty: the queue is empty and ``block`` is False, or ``timeout`` passed.
            ValueError: ``timeout`` is negative.

        Example:
            >>> import aray
            >>> from aray.util.queue import Empty, Queue
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> try:
            ...     Queue().get(timeout=0.1)
            ... except Empty:
            ...     print("nothing came")
            nothing came
        """
        return _got(_answer(self._get_ref(block, timeout), block, timeout))

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """:meth:`get` for async code: waits without blocking the event loop.

        Example:
            >>> import asyncio
            >>> import aray
            >>> from aray.util.queue import Queue
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> q = Queue()
            >>> q.put("a")
            >>> asyncio.run(q.get_async())
            'a'
        """
        return _got(await _answer_async(self._get_ref(block, timeout), block, timeout))

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``: Full at once if there is no room.

        Example:
            >>> import aray
            >>> from aray.util.queue import Queue
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> q = Queue()
            >>> q.put_nowait(1)
            >>> q.get_nowait()
            1
        """
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable) -> None:
        """Add ``items`` in order, all of them or (raising :class:`Full`) none.

        Example:
            >>> import aray
            >>> from aray.util.queue import Full, Queue
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> q = Queue(maxsize=2)
            >>> try:
            ...     q.put_nowait_batch([1, 2, 3])
            ... except Full:
            ...     print("none went in:", q.qsize())
            none went in: 0
        """
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        items = list(items)
        flag, size = aray.get(self._actor().put_nowait_batch.remote(items))
        if flag == _FULL:
            raise Full(f"Cannot add {len(items)} items to queue of size {size} "
                       f"and maxsize {self.maxsize}.")

    def get_nowait(self) -> Any:
        """``get(block=False)``: Empty at once if there is no item.

        Example:
            >>> import aray
            >>> from aray.util.queue import Queue
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> q = Queue()
            >>> q.put("x")
            >>> q.get_nowait()
            'x'
        """
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list:
        """Take the first ``num_items`` items, all of them or (raising :class:`Empty`) none.

        Example:
            >>> import aray
            >>> from aray.util.queue import Queue
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> q = Queue()
            >>> q.put_nowait_batch([1, 2, 3])
            >>> q.get_nowait_batch(2)
            [1, 2]
        """
        if isinstance(num_items, bool) or not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        flag, value = aray.get(self._actor().get_nowait_batch.remote(num_items))
        if flag == _EMPTY:
            raise Empty(f"Cannot get {num_items} items from queue of size {value}.")
        return value

    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """End the queue's actor (and free what it holds); the queue is unusable after.

        Args:
            force: kill the actor at once; else let it end once the calls made before
                are answered, and kill it if that takes more than ``grace_period_s``.
            grace_period_s: how long to wait for that, in seconds.

        Example:
            >>> import aray
            >>> from aray.util.queue import Queue
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> q = Queue()
            >>> q.shutdown()
        """
        actor, self.actor = self.actor, None
        if actor is None:
            return
        if force:
            aray.kill(actor, no_restart=True)
            return
        done = actor.__ray_terminate__.remote()
        ready, _ = aray.wait([done], timeout=grace_period_s)
        if not ready:
            aray.kill(actor, no_restart=True)

    # --- the calls -----------------------------------------------------------------------
    def _actor(self) -> Any:
        if self.actor is None:
            raise RuntimeError("this queue was shut down")
        return self.actor

    def _put_ref(self, item: Any, block: bool, timeout: float | None) -> Any:
        if not block:
            return self._actor().put_nowait.remote(item)
        _check_timeout(timeout)
        return self._actor().put.remote(item, timeout)

    def _get_ref(self, block: bool, timeout: float | None) -> Any:
        if not block:
            return self._actor().get_nowait.remote()
        _check_timeout(timeout)
        return self._actor().get.remote(timeout)


# How much longer than its timeout a put or get waits for the actor's answer. The actor
# answers at the timeout itself; this bounds the wait when it cannot answer (it is not
# placed yet, or its node is gone): the call is then cancelled, and it raises Full or Empty.
_ANSWER_GRACE_S = 5.0
_NO_ANSWER = (_EMPTY, None)  # what get and put read when the actor did not answer


def _limit(block: bool, timeout: float | None) -> float | None:
    if block and timeout is None:
        return None  # waits for as long as it takes, as asked
    return (timeout or 0.0) + _ANSWER_GRACE_S


def _answer(ref: Any, block: bool, timeout: float | None) -> Any:
    try:
        return aray.get(ref, timeout=_limit(block, timeout))
    except aray.exceptions.GetTimeoutError:
        try:
            aray.cancel(ref)  # a call that never started never takes an item
        except Exception:  # it finished meanwhile: its answer is dropped with it
            pass
        return _NO_ANSWER


async def _answer_async(ref: Any, block: bool, timeout: float | None) -> Any:
    ready, _ = await aray.aio.wait([ref], timeout=_limit(block, timeout))
    if not ready:
        try:
            await aray.aio.cancel(ref)
        except Exception:
            pass
        return _NO_ANSWER
    return await ref


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


def _put_done(answer: Any) -> None:
    if answer != _OK:  # _FULL, or no answer in time
        raise Full


def _got(answer: tuple[int, Any]) -> Any:
    flag, item = answer
    if flag == _EMPTY:
        raise Empty
    return item
