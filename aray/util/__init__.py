"""Utilities built on the public API, under Ray's names: :class:`ActorPool`,
:func:`as_completed` and :func:`map_unordered` (``ray.util.*``), and the state API in
:mod:`aray.util.state`. The submodules :mod:`aray.util.multiprocessing` (``Pool``),
:mod:`aray.util.queue` (``Queue``) and :mod:`aray.util.joblib` (a joblib backend) are
imported on their own, as Ray's are.

``aray.util.as_completed`` is Ray's: it yields *values* (or refs, with
``yield_obj_refs=True``) a batch of ``chunk_size`` at a time. :func:`aray.as_completed`
yields each *ref* as soon as it is ready, and works with ``async for`` too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .. import aio
from .._api import get, wait
from .._as_completed import as_completed as _refs_as_completed
from .._refs import ObjectRef
from ._actor_pool import ActorPool
from .placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

__all__ = ["ActorPool", "PlacementGroup", "as_completed", "get_current_placement_group",
           "get_placement_group", "map_unordered", "placement_group", "placement_group_table",
           "remove_placement_group"]

# Ray's defaults (ray.util.helpers)
DEFAULT_CHUNK_SIZE = 10
DEFAULT_BACKPRESSURE_SIZE = 100


def as_completed(refs: Sequence[ObjectRef[Any]], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 yield_obj_refs: bool = False, **kwargs: Any) -> Iterator[Any]:
    """Yield the values of ``refs`` as they become ready, ``chunk_size`` at a time.

    As Ray's ``ray.util.as_completed``: each batch is the next ``chunk_size`` refs to be
    ready (fewer at the end), in the order of ``refs``, whose values are then fetched with
    ``get`` (a failed task raises its error here). ``timeout=`` bounds the wait for each
    batch: when it passes, the batch is what is ready by then, and the next one waits again.

    Args:
        refs: the refs, each once.
        chunk_size: how many ready refs make a batch (at least 1).
        yield_obj_refs: yield the refs instead of their values.
        **kwargs: ``timeout`` and ``fetch_local``, as :func:`aray.wait` takes them.

    Examples:
        >>> import aray
        >>> from aray.util import as_completed
        >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
        >>> @aray.remote
        ... def f(x):
        ...     return x
        >>> sorted(as_completed([f.remote(i) for i in range(5)], chunk_size=2))
        [0, 1, 2, 3, 4]
    """
    timeout = _wait_options(kwargs, "as_completed")
    _check_chunk_size(chunk_size)
    pending = _refs_as_completed(list(refs))  # checks that they are refs
    if len(set(pending._refs)) != len(pending._refs):
        raise ValueError("aray.util.as_completed() needs each ref once, as aray.wait() does; "
                         "this list has duplicates")
    return _yield_batches(pending._batches(chunk_size, timeout), yield_obj_refs)


def map_unordered(fn: Any, items: Iterable[Any], *,
                  backpressure_size: int | None = DEFAULT_BACKPRESSURE_SIZE,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, yield_obj_refs: bool = False,
                  **kwargs: Any) -> Iterator[Any]:
    """Run the remote function ``fn`` on every item and yield the results as they are ready.

    As Ray's ``ray.util.map_unordered``: items are submitted as the iteration goes, at most
    ``backpressure_size`` tasks in flight (None: no limit); at the limit it waits for a
    batch of ``chunk_size`` results and yields them. Results come in no set order.

    Args:
        fn: a remote function (``@aray.remote``), called as ``fn.remote(item)``.
        items: the items, each passed as the one argument of a task.
        backpressure_size: the most tasks in flight, or None.
        chunk_size: how many results to wait for at a time.
        yield_obj_refs: yield the refs instead of their values.
        **kwargs: ``timeout`` and ``fetch_local``, as :func:`aray.wait` takes them.

    Examples:
        >>> import aray
        >>> from aray.util import map_unordered
        >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
        >>> @aray.remote
        ... def square(x):
        ...     return x * x
        >>> sorted(map_unordered(square, range(5), backpressure_size=2, chunk_size=1))
        [0, 1, 4, 9, 16]
    """
    timeout = _wait_options(kwargs, "map_unordered")
    _check_chunk_size(chunk_size)
    if backpressure_size is not None and (
            isinstance(backpressure_size, bool)
            or not isinstance(backpressure_size, (int, float)) or backpressure_size <= 0):
        raise ValueError(f"backpressure_size must be positive (or None for no limit), "
                         f"got {backpressure_size!r}")
    if not callable(getattr(fn, "remote", None)):
        raise TypeError(f"map_unordered() runs a remote function: decorate {fn!r} with "
                        "@aray.remote (or pass the result of aray.remote(fn))")
    limit = float("inf") if backpressure_size is None else backpressure_size
    return _map_unordered(fn, items, limit, chunk_size, yield_obj_refs, timeout)


def _map_unordered(fn: Any, items: Iterable[Any], limit: float, chunk_size: int,
                   yield_obj_refs: bool, timeout: float | None) -> Iterator[Any]:
    in_flight: list[ObjectRef] = []
    for item in items:
        in_flight.append(fn.remote(item))
        if len(in_flight) >= limit:
            ready, in_flight = wait(in_flight, num_returns=min(chunk_size, len(in_flight)),
                                    timeout=timeout)
            yield from (ready if yield_obj_refs else get(ready))
    yield from _yield_batches(_refs_as_completed(in_flight)._batches(chunk_size, timeout),
                              yield_obj_refs)


def _yield_batches(batches: Iterator[list[ObjectRef]], yield_obj_refs: bool) -> Iterator[Any]:
    for batch in batches:
        if batch:
            yield from (batch if yield_obj_refs else get(batch))


def _wait_options(kwargs: dict, what: str) -> float | None:
    """The ``timeout`` among the ``wait`` options Ray's helpers pass on (``fetch_local``
    has no effect in aray: a ready object is fetched when it is read)."""
    if "num_returns" in kwargs:
        raise ValueError(f"{what}() takes chunk_size, not num_returns: use "
                         f"chunk_size={kwargs['num_returns']!r}")
    unknown = sorted(set(kwargs) - {"timeout", "fetch_local"})
    if unknown:
        raise TypeError(f"{what}() got unexpected keyword arguments {unknown}; it takes "
                        "chunk_size, yield_obj_refs, timeout and fetch_local")
    timeout = kwargs.get("timeout")
    aio.check_timeout(timeout)
    return timeout


def _check_chunk_size(chunk_size: Any) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
