"""ActorPool: spread work over a fixed set of actors, one call per idle actor at a time.

It behaves as Ray's ``ray.util.ActorPool``: the same methods, arguments, errors and
messages. ``fn(actor, value)`` returns the ref of the call (or the list of refs of a method
with ``num_returns > 1``); an actor stays busy until its result is collected with
``get_next``/``get_next_unordered`` (or by iterating over ``map``/``map_unordered``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, NoReturn

from .. import aio
from .._api import get, wait
from .._refs import ObjectRef
from .._streams import ObjectRefGenerator
from ..exceptions import ActorDiedError

Submit = Callable[[Any, Any], Any]

_TIMED_OUT = "Timed out waiting for result"  # Ray's words, which code written for Ray matches


class ActorPool:
    """Run ``fn(actor, value)`` for many values over a pool of actors.

    Each actor gets one call at a time; values wait until an actor is free. Results come back
    in submission order (``map``, ``get_next``) or as they finish (``map_unordered``,
    ``get_next_unordered``); ``amap``/``amap_unordered`` do the same with ``async for``.
    An actor whose call fails with :class:`~aray.exceptions.ActorDiedError` leaves the pool.

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
        # Ray's attribute names: code and tests written for Ray's pool read some of them
        self._idle_actors: list[Any] = list(actors)
        self._future_to_actor: dict[Any, tuple[int, Any]] = {}  # key -> (index, actor)
        self._index_to_future: dict[int, Any] = {}  # in flight: a ref, or a list of refs
        self._next_task_index = 0
        self._next_return_index = 0  # every result before this index is collected
        self._pending_submits: list[tuple[Submit, Any]] = []  # waiting for a free actor

    # --- submitting ---------------------------------------------------------------------
    def submit(self, fn: Submit, value: Any) -> None:
        """Schedule ``fn(actor, value)`` on a free actor, or as soon as one is free.

        Examples:
            >>> import aray
            >>> from aray.util import ActorPool
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> @aray.remote
            ... class Doubler:
            ...     def double(self, x):
            ...         return 2 * x
            >>> pool = ActorPool([Doubler.remote()])
            >>> pool.submit(lambda a, v: a.double.remote(v), 1)
            >>> pool.submit(lambda a, v: a.double.remote(v), 2)
            >>> pool.get_next(), pool.get_next()
            (2, 4)
        """
        if not self._idle_actors:
            self._pending_submits.append((fn, value))
            return
        actor = self._idle_actors.pop()
        try:
            future = _checked(fn(actor, value))
        except BaseException:
            self._idle_actors.append(actor)  # no call started: the actor is still free
            raise
        self._future_to_actor[_key(future)] = (self._next_task_index, actor)
        self._index_to_future[self._next_task_index] = future
        self._next_task_index += 1

    def _return_actor(self, actor: Any, alive: bool = True) -> None:
        if alive:  # a dead actor stays out: every call given to it would fail
            self._idle_actors.append(actor)
        if self._pending_submits and self._idle_actors:
            self.submit(*self._pending_submits.pop(0))

    def has_next(self) -> bool:
        """Whether results of submitted calls are still to be collected.

        Examples:
            >>> from aray.util import ActorPool
            >>> ActorPool([]).has_next()
            False
        """
        return bool(self._future_to_actor)

    def has_free(self) -> bool:
        """Whether an actor is idle (and no value waits for one).

        Examples:
            >>> from aray.util import ActorPool
            >>> ActorPool([]).has_free()
            False
        """
        return bool(self._idle_actors) and not self._pending_submits

    def pop_idle(self) -> Any | None:
        """Take an idle actor out of the pool; None if none is free.

        Examples:
            >>> from aray.util import ActorPool
            >>> ActorPool([]).pop_idle() is None
            True
        """
        return self._idle_actors.pop() if self.has_free() else None

    def push(self, actor: Any) -> None:
        """Add an actor to the pool; it takes a waiting value at once if there is one.

        Raises:
            ValueError: the actor is in the pool already (idle or busy).

        Examples:
            >>> import aray
            >>> from aray.util import ActorPool
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> @aray.remote
            ... class Doubler:
            ...     def double(self, x):
            ...         return 2 * x
            >>> pool = ActorPool([])
            >>> pool.push(Doubler.remote())
            >>> pool.has_free()
            True
        """
        busy = [a for _, a in self._future_to_actor.values()]
        if actor in self._idle_actors or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)

    # --- collecting ---------------------------------------------------------------------
    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order (of those not collected yet).

        Args:
            timeout: seconds to wait for it; None waits as long as it takes.
            ignore_if_timedout: on a timeout, drop that call (its actor takes new work, which
                queues behind the dropped call) and raise; otherwise it stays the next.

        Raises:
            TimeoutError: ``timeout`` passed first ("Timed out waiting for result").
            StopIteration: nothing is left to collect.

        Examples:
            >>> import aray
            >>> from aray.util import ActorPool
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> @aray.remote
            ... class Doubler:
            ...     def double(self, x):
            ...         return 2 * x
            >>> pool = ActorPool([Doubler.remote()])
            >>> pool.submit(lambda a, v: a.double.remote(v), 21)
            >>> pool.get_next(timeout=30)
            42
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        index = self._oldest_index()
        if timeout is not None and not _ready(self._index_to_future[index], timeout):
            self._timed_out(index, ignore_if_timedout)
        with self._collecting(index) as future:
            return get(future)

    def get_next_unordered(self, timeout: float | None = None,
                           ignore_if_timedout: bool = False) -> Any:
        """Whichever result is ready first (the oldest of those ready).

        Args:
            timeout: seconds to wait for one; None waits as long as it takes.
            ignore_if_timedout: on a timeout, drop the oldest call still running (its actor
                takes new work, which queues behind the dropped call) and raise.

        Raises:
            TimeoutError: ``timeout`` passed first ("Timed out waiting for result").
            StopIteration: nothing is left to collect.

        Examples:
            >>> import aray
            >>> from aray.util import ActorPool
            >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
            >>> @aray.remote
            ... class Doubler:
            ...     def double(self, x):
            ...         return 2 * x
            >>> pool = ActorPool([Doubler.remote(), Doubler.remote()])
            >>> pool.submit(lambda a, v: a.double.remote(v), 1)
            >>> pool.submit(lambda a, v: a.double.remote(v), 2)
            >>> sorted([pool.get_next_unordered(), pool.get_next_unordered()])
            [2, 4]
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        index = self._first_ready(timeout)
        if index is None:
            self._timed_out(next(iter(self._future_to_actor.values()))[0], ignore_if_timedout)
        with self._collecting(index) as future:
            return get(future)

    def _oldest_index(self) -> int:
        """The oldest call not collected yet (``get_next_unordered`` may have taken later
        ones: ``get_next`` still returns the earlier ones, in order)."""
        while self._next_return_index not in self._index_to_future:
            self._next_return_index += 1
        return self._next_return_index

    def _first_ready(self, timeout: float | None) -> int | None:
        """The index of the oldest call whose refs are all ready, waiting up to ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            refs = self._in_flight_refs()
            ready, not_ready = wait(refs, num_returns=len(refs), timeout=0)
            index = self._oldest_done(set(ready))
            if index is not None:
                return index
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            wait(not_ready, num_returns=1, timeout=left)  # then look again

    def _in_flight_refs(self) -> list[ObjectRef]:
        return [r for key in self._future_to_actor for r in _refs(key)]

    def _oldest_done(self, done: set[ObjectRef]) -> int | None:
        for key, (index, _) in self._future_to_actor.items():  # in submission order
            if all(r in done for r in _refs(key)):
                return index
        return None

    def _timed_out(self, index: int, ignore: bool) -> NoReturn:
        if not ignore:
            raise TimeoutError(_TIMED_OUT)
        future = self._drop(index)
        raise TimeoutError(f"{_TIMED_OUT}. The task {future} has been ignored.")

    def _take(self, index: int) -> tuple[Any, Any]:
        """Take call ``index`` out of the pool: its refs and its actor."""
        future = self._index_to_future.pop(index)
        _, actor = self._future_to_actor.pop(_key(future))
        return future, actor

    def _drop(self, index: int) -> Any:
        """Forget call ``index`` (its result is never read); as in Ray, its actor takes new
        work at once, which queues behind the dropped call."""
        future, actor = self._take(index)
        self._return_actor(actor)
        return future

    @contextlib.contextmanager
    def _collecting(self, index: int):
        """Take call ``index`` out of the pool while its result is read; its actor comes back
        afterwards, unless the result says that the actor died."""
        future, actor = self._take(index)
        alive = True
        try:
            yield future
        except ActorDiedError:
            alive = False
            raise
        finally:
            self._return_actor(actor, alive)

    # --- mapping ------------------------------------------------------------------------
    def map(self, fn: Submit, values: Iterable[Any]) -> Iterator[Any]:
        """Results of ``fn(actor, v)`` for every value, in the order of ``values``.

        Every value is submitted before this returns (as many calls start as there are
        free actors; the others start as results are collected); the iterator then yields
        the results. As in Ray, results of earlier ``submit`` calls are dropped: those not
        ready yet unread, the others read (so that an error among them is raised here).

        Examples:
            >>> import aray
            >>> from aray.util import ActorPool
            >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
            >>> @aray.remote
            ... class Doubler:
            ...     def double(self, x):
            ...         return 2 * x
            >>> pool = ActorPool([Doubler.remote(), Doubler.remote()])
            >>> list(pool.map(lambda a, v: a.double.remote(v), range(5)))
            [0, 2, 4, 6, 8]
        """
        self._start_map(fn, values)
        return self._results(self.get_next)

    def map_unordered(self, fn: Submit, values: Iterable[Any]) -> Iterator[Any]:
        """Results of ``fn(actor, v)`` for every value, as they are ready.

        Submits like :meth:`map`: eagerly, dropping earlier results not collected.

        Examples:
            >>> import aray
            >>> from aray.util import ActorPool
            >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
            >>> @aray.remote
            ... class Doubler:
            ...     def double(self, x):
            ...         return 2 * x
            >>> pool = ActorPool([Doubler.remote(), Doubler.remote()])
            >>> sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(5)))
            [0, 2, 4, 6, 8]
        """
        self._start_map(fn, values)
        return self._results(self.get_next_unordered)

    def _start_map(self, fn: Submit, values: Iterable[Any], read_earlier: bool = True) -> None:
        # as in Ray, a map returns only its own results: an earlier call that is done is
        # collected (its error raised here), one still running is dropped. ``amap`` (which
        # may run on aray's own loop, where nothing may block) drops them all unread.
        while self.has_next():
            index = self._oldest_index()
            if read_earlier and _ready(self._index_to_future[index], 0):
                with self._collecting(index) as future:
                    get(future)
            else:
                self._drop(index)
        for value in values:
            self.submit(fn, value)

    def _results(self, get_one: Callable[[], Any]) -> Iterator[Any]:
        while self.has_next():
            yield get_one()

    # --- mapping with async for ---------------------------------------------------------
    def amap(self, fn: Submit, values: Iterable[Any]) -> AsyncIterator[Any]:
        """:meth:`map` for ``async for``: results in the order of ``values``.

        Examples:
            >>> import asyncio, aray
            >>> from aray.util import ActorPool
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> @aray.remote
            ... class Doubler:
            ...     def double(self, x):
            ...         return 2 * x
            >>> pool = ActorPool([Doubler.remote()])
            >>> async def main():
            ...     return [x async for x in pool.amap(lambda a, v: a.double.remote(v), [1, 2])]
            >>> asyncio.run(main())
            [2, 4]
        """
        self._start_map(fn, values, read_earlier=False)
        return self._aresults(ordered=True)

    def amap_unordered(self, fn: Submit, values: Iterable[Any]) -> AsyncIterator[Any]:
        """:meth:`map_unordered` for ``async for``: results as they are ready.

        Examples:
            >>> import asyncio, aray
            >>> from aray.util import ActorPool
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> @aray.remote
            ... class Doubler:
            ...     def double(self, x):
            ...         return 2 * x
            >>> pool = ActorPool([Doubler.remote()])
            >>> async def main():
            ...     f = lambda a, v: a.double.remote(v)
            ...     return sorted([x async for x in pool.amap_unordered(f, [1, 2])])
            >>> asyncio.run(main())
            [2, 4]
        """
        self._start_map(fn, values, read_earlier=False)
        return self._aresults(ordered=False)

    async def _aresults(self, ordered: bool) -> AsyncIterator[Any]:
        while self.has_next():
            if ordered:
                index = self._oldest_index()
                await _all_done(_refs(self._index_to_future[index]))
            else:
                index = await self._afirst_ready()
            with self._collecting(index) as future:
                value = await _values(future)
            yield value

    async def _afirst_ready(self) -> int:
        while True:
            refs = self._in_flight_refs()
            ready, not_ready = await aio.wait(refs, num_returns=len(refs), timeout=0)
            index = self._oldest_done(set(ready))
            if index is not None:
                return index
            await aio.wait(not_ready, num_returns=1)


def _checked(future: Any) -> ObjectRef | list[ObjectRef]:
    """What ``fn(actor, value)`` returned, if it is a ref or a non-empty list of refs."""
    if isinstance(future, ObjectRef):
        return future
    if isinstance(future, (list, tuple)) and future and all(
            isinstance(r, ObjectRef) for r in future):
        return list(future)
    if isinstance(future, ObjectRefGenerator):
        raise TypeError("the function given to ActorPool returned an ObjectRefGenerator (a "
                        "streaming method): ActorPool collects plain results; call a method "
                        "that returns its value, or iterate over the generator yourself")
    raise TypeError("the function given to ActorPool must return the ObjectRef of an actor "
                    "call (or the list of refs of a method with num_returns > 1), e.g. "
                    f"lambda actor, v: actor.method.remote(v); it returned {future!r}")


def _key(future: ObjectRef | list[ObjectRef]) -> Any:
    return tuple(future) if isinstance(future, list) else future


def _refs(future: Any) -> list[ObjectRef]:
    return list(future) if isinstance(future, (list, tuple)) else [future]


def _ready(future: ObjectRef | list[ObjectRef], timeout: float) -> bool:
    refs = _refs(future)
    ready, _ = wait(refs, num_returns=len(refs), timeout=timeout)
    return len(ready) == len(refs)


async def _all_done(refs: list[ObjectRef]) -> None:
    await aio.wait(refs, num_returns=len(refs))


async def _values(future: ObjectRef | list[ObjectRef]) -> Any:
    if isinstance(future, list):
        return [await ref for ref in future]
    return await future

