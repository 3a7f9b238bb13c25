"""ActorPool: spread work over a fixed set of actors, one call per idle actor at a time.

It behaves as Ray's ``ray.util.ActorPool``: the same methods, arguments, errors and
messages. ``fn(actor, value)`` returns the ref of the call (or the list of refs of a method
with ``num_returns > 1``); an actor stays busy until its result is collected with
``get_next``/``get_next_unordered`` (or by iterating over ``map``/``map_unordered``).

The pool is cut in two. :class:`ActorPool` keeps the actors (the idle ones, and the values
waiting for one) and the public API; the bookkeeping of the calls in flight (their order,
which is the oldest, which are done, taking and dropping them) is an
:class:`~aray.util._in_flight.InFlight`, plain data with no I/O. Waiting for refs is done by
the functions at the end of this module, which ask an ``InFlight`` what to wait for. The
bookkeeping is the part with the subtle rules (results in order after unordered ones,
dropped calls, a key per call), and on its own it is tested without a cluster.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, NoReturn

from .. import aio
from .._api import get, wait
from .._refs import ObjectRef
from .._streams import ObjectRefGenerator
from ._in_flight import InFlight, refs_of

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
        self._pending_submits: list[tuple[Submit, Any]] = []  # waiting for a free actor
        # the calls in flight are plain bookkeeping of their own, with no I/O, so that the
        # rules of their order are kept (and tested) in one place; an actor whose call
        # leaves comes back through _return_actor
        self._calls = InFlight(self._return_actor)

    # the rest of Ray's attribute names, read from the bookkeeping of the calls in flight
    _future_to_actor = property(lambda self: self._calls.future_to_actor)
    _index_to_future = property(lambda self: self._calls.index_to_future)
    _next_task_index = property(lambda self: self._calls.next_task_index)
    _next_return_index = property(lambda self: self._calls.next_return_index)

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
        self._calls.add(future, actor)

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
        return bool(self._calls)

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
        if actor in self._idle_actors or self._calls.runs_on(actor):
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
        index = self._calls.oldest()
        if timeout is not None and not _ready(self._calls.future(index), timeout):
            _timed_out(self._calls, index, ignore_if_timedout)
        with self._calls.collecting(index) as future:
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
        index = _first_ready(self._calls, timeout)
        if index is None:
            _timed_out(self._calls, self._calls.first(), ignore_if_timedout)
        with self._calls.collecting(index) as future:
            return get(future)

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
        return _results(self._calls, self.get_next)

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
        return _results(self._calls, self.get_next_unordered)

    def _start_map(self, fn: Submit, values: Iterable[Any], read_earlier: bool = True) -> None:
        _clear(self._calls, read_earlier)
        for value in values:
            self.submit(fn, value)

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
        return _aresults(self._calls, ordered=True)

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
        return _aresults(self._calls, ordered=False)


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


# --- waiting for the calls in flight (the I/O that InFlight leaves to the pool) ------------
def _ready(future: ObjectRef | list[ObjectRef], timeout: float) -> bool:
    refs = refs_of(future)
    ready, _ = wait(refs, num_returns=len(refs), timeout=timeout)
    return len(ready) == len(refs)


async def _all_done(refs: list[ObjectRef]) -> None:
    await aio.wait(refs, num_returns=len(refs))


async def _values(future: ObjectRef | list[ObjectRef]) -> Any:
    if isinstance(future, list):
        return [await ref for ref in future]
    return await future


def _first_ready(calls: InFlight, timeout: float | None) -> int | None:
    """The index of the oldest call whose refs are all ready, waiting up to ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        refs = calls.refs()
        ready, not_ready = wait(refs, num_returns=len(refs), timeout=0)
        index = calls.oldest_done(set(ready))
        if index is not None:
            return index
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        wait(not_ready, num_returns=1, timeout=left)  # then look again


async def _afirst_ready(calls: InFlight) -> int:
    while True:
        refs = calls.refs()
        ready, not_ready = await aio.wait(refs, num_returns=len(refs), timeout=0)
        index = calls.oldest_done(set(ready))
        if index is not None:
            return index
        await aio.wait(not_ready, num_returns=1)


def _timed_out(calls: InFlight, index: int, ignore: bool) -> NoReturn:
    if not ignore:
        raise TimeoutError(_TIMED_OUT)
    future = calls.drop(index)
    raise TimeoutError(f"{_TIMED_OUT}. The task {future} has been ignored.")


def _clear(calls: InFlight, read_earlier: bool) -> None:
    # as in Ray, a map returns only its own results: an earlier call that is done is
    # collected (its error raised here), one still running is dropped. ``amap`` (which
    # may run on aray's own loop, where nothing may block) drops them all unread.
    while calls:
        index = calls.oldest()
        if read_earlier and _ready(calls.future(index), 0):
            with calls.collecting(index) as future:
                get(future)
        else:
            calls.drop(index)


def _results(calls: InFlight, get_one: Callable[[], Any]) -> Iterator[Any]:
    while calls:
        yield get_one()


async def _aresults(calls: InFlight, ordered: bool) -> AsyncIterator[Any]:
    while calls:
        if ordered:
            index = calls.oldest()
            await _all_done(refs_of(calls.future(index)))
        else:
            index = await _afirst_ready(calls)
        with calls.collecting(index) as future:
            value = await _values(future)
        yield value
