"""ActorPool: spread work over a fixed set of actors, one call per idle actor at a time."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from .._api import get, wait
from .._refs import ObjectRef
from ..exceptions import GetTimeoutError

Submit = Callable[[Any, Any], ObjectRef]


class ActorPool:
    """Run ``fn(actor, value)`` for many values over a pool of actors.

    Each actor gets one call at a time; values wait until an actor is free. Results come back
    in submission order (``map``, ``get_next``) or as they finish (``map_unordered``,
    ``get_next_unordered``); ``amap``/``amap_unordered`` do the same with ``async for``.

    Examples:
        >>> import aray
        >>> from aray.util import ActorPool
        >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
        >>> @aray.remote
        ... class Doubler:
        ...     def double(self, x):
        ...         return 2 * x
        >>> pool = ActorPool([Doubler.remote(), Doubler.remote()])
        >>> list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4]))
        [2, 4, 6, 8]
    """

    def __init__(self, actors: Iterable[Any]) -> None:
        self._idle: deque[Any] = deque(actors)
        self._pending: deque[tuple[Submit, Any]] = deque()  # waiting for a free actor
        self._running: dict[ObjectRef, tuple[int, Any]] = {}  # ref -> (index, actor)
        self._by_index: dict[int, ObjectRef] = {}
        self._next_submit = 0
        self._next_return = 0

    # --- submitting ---------------------------------------------------------------------
    def submit(self, fn: Submit, value: Any) -> None:
        """Schedule ``fn(actor, value)`` on the next free actor."""
        if self._idle:
            self._start(fn, value, self._idle.popleft())
        else:
            self._pending.append((fn, value))

    def _start(self, fn: Submit, value: Any, actor: Any) -> None:
        ref = fn(actor, value)
        if not isinstance(ref, ObjectRef):
            raise TypeError("the function given to ActorPool must return the ObjectRef of an "
                            "actor call, e.g. lambda actor, v: actor.method.remote(v)")
        self._running[ref] = (self._next_submit, actor)
        self._by_index[self._next_submit] = ref
        self._next_submit += 1

    def _release(self, ref: ObjectRef) -> None:
        _, actor = self._running.pop(ref)
        if self._pending:
            fn, value = self._pending.popleft()
            self._start(fn, value, actor)
        else:
            self._idle.append(actor)

    def has_next(self) -> bool:
        """Whether results are still to be collected."""
        return bool(self._running or self._pending)

    def has_free(self) -> bool:
        """Whether an actor is idle."""
        return bool(self._idle) and not self._pending

    def push(self, actor: Any) -> None:
        """Add an actor to the pool."""
        self._idle.append(actor)
        if self._pending:
            fn, value = self._pending.popleft()
            self._start(fn, value, self._idle.popleft())

    def pop_idle(self) -> Any | None:
        """Take an idle actor out of the pool (None if all are busy)."""
        return self._idle.popleft() if self.has_free() else None

    def _oldest(self) -> ObjectRef:
        """The oldest result not collected yet (unordered gets may have taken some)."""
        while self._next_return not in self._by_index:
            self._next_return += 1
        return self._by_index[self._next_return]

    # --- collecting (sync) --------------------------------------------------------------
    def get_next(self, timeout: float | None = None) -> Any:
        """The next result in submission order."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        ref = self._oldest()
        ready, _ = wait([ref], timeout=timeout)
        if not ready:
            raise GetTimeoutError(f"no result within {timeout} s")
        del self._by_index[self._next_return]
        self._next_return += 1
        self._release(ref)  # before the result: a failed call must not keep its actor
        return get(ref)

    def get_next_unordered(self, timeout: float | None = None) -> Any:
        """Whichever result finishes first."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        ready, _ = wait(list(self._running), num_returns=1, timeout=timeout)
        if not ready:
            raise GetTimeoutError(f"no result within {timeout} s")
        ref = ready[0]
        index, _ = self._running[ref]
        del self._by_index[index]
        self._release(ref)
        return get(ref)

    def map(self, fn: Submit, values: Iterable[Any]) -> Iterator[Any]:
        """Results of ``fn(actor, v)`` for every value, in the order of ``values``."""
        for value in values:
            self.submit(fn, value)
        while self.has_next():
            yield self.get_next()

    def map_unordered(self, fn: Submit, values: Iterable[Any]) -> Iterator[Any]:
        """Results of ``fn(actor, v)`` for every value, as they finish."""
        for value in values:
            self.submit(fn, value)
        while self.has_next():
            yield self.get_next_unordered()

    # --- collecting (async) -------------------------------------------------------------
    async def amap(self, fn: Submit, values: Iterable[Any]) -> AsyncIterator[Any]:
        """``map`` for ``async for``: results in the order of ``values``."""
        for value in values:
            self.submit(fn, value)
        while self.has_next():
            ref = self._oldest()
            del self._by_index[self._next_return]
            self._next_return += 1
            await asyncio.wait([ref])  # type: ignore[type-var]  # refs are asyncio futures
            self._release(ref)  # before the result: a failed call must not keep its actor
            yield await ref

    async def amap_unordered(self, fn: Submit, values: Iterable[Any]) -> AsyncIterator[Any]:
        """``map_unordered`` for ``async for``: results as they finish."""
        for value in values:
            self.submit(fn, value)
        while self.has_next():
            done, _ = await asyncio.wait(list(self._running),  # type: ignore[type-var]
                                         return_when=asyncio.FIRST_COMPLETED)
            for ref in done:
                index, _ = self._running[ref]
                del self._by_index[index]
                self._release(ref)
                yield await ref
