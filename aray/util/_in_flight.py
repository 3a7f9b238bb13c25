"""The calls an :class:`~aray.util.ActorPool` has started and not collected yet.

ActorPool keeps two things: its actors (the idle ones, and the values waiting for one) and
the calls in flight. This module is the second: the index of each call, the actor it runs
on, which is the oldest, which are done (given the refs that are ready), and taking a call
out once its result is read or dropped. It is plain bookkeeping with no I/O: waiting for
refs stays in ``_actor_pool.py``; an actor whose call leaves goes back to the pool through
the ``release`` function the pool passes in. So every rule about order lives here, testable
without a cluster (the examples use strings for refs and actors).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator
from typing import Any

from ..exceptions import ActorDiedError

#: what the pool gives back an actor through: ``release(actor, alive)``
Release = Callable[[Any, bool], None]


def key_of(future: Any) -> Any:
    """The dict key of a call's future: the ref, or the tuple of a method's refs.

    Example:
        >>> key_of("ref"), key_of(["a", "b"])
        ('ref', ('a', 'b'))
    """
    return tuple(future) if isinstance(future, list) else future


def refs_of(future: Any) -> list[Any]:
    """The refs of a call's future (or key): one, or all of a method's ``num_returns``.

    Example:
        >>> refs_of("ref"), refs_of(("a", "b"))
        (['ref'], ['a', 'b'])
    """
    return list(future) if isinstance(future, (list, tuple)) else [future]


class InFlight:
    """The calls in flight, each with its index (its place in submission order) and actor.

    The attributes keep the names (without the underscore) of Ray's ``ActorPool``, which
    shows them under Ray's names: code written for Ray's pool reads some of them.

    Example:
        >>> freed = []
        >>> calls = InFlight(lambda actor, alive: freed.append((actor, alive)))
        >>> calls.add("ref-0", "actor-a"), calls.add("ref-1", "actor-b")
        (0, 1)
        >>> calls.oldest_done({"ref-1"})
        1
        >>> with calls.collecting(1) as future:
        ...     future
        'ref-1'
        >>> freed, calls.oldest(), bool(calls)
        ([('actor-b', True)], 0, True)
    """

    def __init__(self, release: Release) -> None:
        self.future_to_actor: dict[Any, tuple[int, Any]] = {}  # key -> (index, actor)
        self.index_to_future: dict[int, Any] = {}  # a ref, or a list of refs
        self.next_task_index = 0
        self.next_return_index = 0  # every result before this index is collected
        self._release = release

    def __bool__(self) -> bool:
        return bool(self.future_to_actor)

    def add(self, future: Any, actor: Any) -> int:
        """Record a call just started on ``actor``; returns its index.

        Example:
            >>> calls = InFlight(lambda actor, alive: None)
            >>> calls.add("ref", "actor"), calls.future(0)
            (0, 'ref')
        """
        index = self.next_task_index
        self.future_to_actor[key_of(future)] = (index, actor)
        self.index_to_future[index] = future
        self.next_task_index += 1
        return index

    def future(self, index: int) -> Any:
        """The future (a ref, or a list of refs) of call ``index``.

        Example:
            >>> calls = InFlight(lambda actor, alive: None)
            >>> calls.future(calls.add(["a", "b"], "actor"))
            ['a', 'b']
        """
        return self.index_to_future[index]

    def runs_on(self, actor: Any) -> bool:
        """Whether a call in flight runs on ``actor``.

        Example:
            >>> calls = InFlight(lambda actor, alive: None)
            >>> _ = calls.add("ref", "actor")
            >>> calls.runs_on("actor"), calls.runs_on("another")
            (True, False)
        """
        return actor in [a for _, a in self.future_to_actor.values()]

    def oldest(self) -> int:
        """The oldest call not collected yet (later ones may have been collected first:
        the earlier ones still come, in order).

        Example:
            >>> calls = InFlight(lambda actor, alive: None)
            >>> calls.add("ref-0", "a"), calls.add("ref-1", "b")
            (0, 1)
            >>> _ = calls.take(0)
            >>> calls.oldest()
            1
        """
        while self.next_return_index not in self.index_to_future:
            self.next_return_index += 1
        return self.next_return_index

    def first(self) -> int:
        """The index of the first call in submission order of those in flight (the one a
        timeout of ``get_next_unordered`` drops).

        Example:
            >>> calls = InFlight(lambda actor, alive: None)
            >>> calls.add("ref-0", "a"), calls.add("ref-1", "b")
            (0, 1)
            >>> calls.first()
            0
        """
        return next(iter(self.future_to_actor.values()))[0]

    def refs(self) -> list[Any]:
        """Every ref of the calls in flight, oldest call first.

        Example:
            >>> calls = InFlight(lambda actor, alive: None)
            >>> calls.add("r", "a"), calls.add(["s", "t"], "b")
            (0, 1)
            >>> calls.refs()
            ['r', 's', 't']
        """
        return [r for key in self.future_to_actor for r in refs_of(key)]

    def oldest_done(self, done: Collection[Any]) -> int | None:
        """The index of the oldest call whose refs are all in ``done``; None if none is.

        Example:
            >>> calls = InFlight(lambda actor, alive: None)
            >>> calls.add("r", "a"), calls.add(["s", "t"], "b")
            (0, 1)
            >>> calls.oldest_done({"s"}), calls.oldest_done({"s", "t"})
            (None, 1)
        """
        for key, (index, _) in self.future_to_actor.items():  # in submission order
            if all(r in done for r in refs_of(key)):
                return index
        return None

    def take(self, index: int) -> tuple[Any, Any]:
        """Take call ``index`` out: its future and its actor (which the caller gives back).

        Example:
            >>> calls = InFlight(lambda actor, alive: None)
            >>> calls.take(calls.add("ref", "actor")), bool(calls)
            (('ref', 'actor'), False)
        """
        future = self.index_to_future.pop(index)
        _, actor = self.future_to_actor.pop(key_of(future))
        return future, actor

    def drop(self, index: int) -> Any:
        """Forget call ``index`` (its result is never read) and release its actor at once;
        as in Ray, the actor's next call queues behind the dropped one. Returns its future.

        Example:
            >>> freed = []
            >>> calls = InFlight(lambda actor, alive: freed.append(actor))
            >>> calls.drop(calls.add("ref", "actor")), freed
            ('ref', ['actor'])
        """
        future, actor = self.take(index)
        self._release(actor, True)
        return future

    @contextlib.contextmanager
    def collecting(self, index: int) -> Iterator[Any]:
        """Take call ``index`` out while its result is read; its actor is released
        afterwards, as dead if reading raised :class:`~aray.exceptions.ActorDiedError`.

        Example:
            >>> freed = []
            >>> calls = InFlight(lambda actor, alive: freed.append((actor, alive)))
            >>> with calls.collecting(calls.add("ref", "actor")) as future:
            ...     future
            'ref'
            >>> freed
            [('actor', True)]
        """
        future, actor = self.take(index)
        alive = True
        try:
            yield future
        except ActorDiedError:
            alive = False
            raise
        finally:
            self._release(actor, alive)
