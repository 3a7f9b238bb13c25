"""ObjectRef: a handle to a value that a task will produce (or that ``put`` stored).

An ObjectRef is hashable, picklable (it may travel inside other objects) and awaitable from
any event loop. It also speaks asyncio's future protocol (``done``, ``result``,
``add_done_callback``, ``get_loop`` ...), so ``asyncio.wait``, ``gather``, ``shield`` and
``wait_for`` accept refs directly. Each event loop that looks at a ref gets its own
asyncio future for it, resolved by the runtime when the value is ready; cancelling that view
(for example when ``asyncio.wait_for`` times out) stops the wait but not the task: use
:func:`aray.cancel` to cancel the task itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import itertools
import os
import threading
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

from . import _global

T = TypeVar("T")

ID_SIZE = 16


def _fresh_prefix() -> None:
    global _prefix
    _prefix = os.urandom(6)


_prefix = b""
_fresh_prefix()
os.register_at_fork(after_in_child=_fresh_prefix)  # a forked worker must not reuse ids
_counter = itertools.count()


def new_task_id() -> bytes:
    """A 12-byte task id, unique across processes (random prefix + counter); its return
    objects are ``task_id + index``."""
    return _prefix + (next(_counter) & 0xFFFFFFFFFFFF).to_bytes(6, "big")


def return_id(task_id: bytes, index: int) -> bytes:
    return task_id + index.to_bytes(4, "big")


class ObjectRef(Generic[T]):
    """A reference to a (possibly not yet computed) remote value.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> ref = aray.put([1, 2, 3])
        >>> aray.get(ref)
        [1, 2, 3]
        >>> len(ref.hex())
        32
    """

    __slots__ = ("_id", "_owner", "_counter", "__weakref__")

    # asyncio.isfuture() looks for this class attribute; the ref yields its per-loop
    # future when awaited, never itself, so asyncio never toggles it.
    _asyncio_future_blocking = False

    def __init__(self, object_id: bytes, owner: str = "") -> None:
        self._id = object_id
        self._owner = owner
        core = _global.core_or_none()
        self._counter = core.refs if core is not None else None
        if self._counter is not None:
            self._counter.incr(object_id)

    def __del__(self) -> None:
        counter = self._counter
        if counter is not None:
            try:
                counter.decr(self._id)
            except Exception:  # interpreter shutdown
                pass

    # identity -----------------------------------------------------------------------
    def binary(self) -> bytes:
        """The object id as 16 bytes."""
        return self._id

    def hex(self) -> str:
        """The object id in hex (what ``repr`` shows)."""
        return self._id.hex()

    @property
    def owner_address(self) -> str:
        """The address of the process that owns the object (it created the ref)."""
        return self._owner

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __reduce__(self):
        collected = getattr(_collecting, "refs", None)
        if collected is not None:
            collected.append(self)  # the runtime holds it while the pickle lives
            return _rebuild_ref, (self._id, self._owner)  # (it stays in this cluster)
        # pickled by user code: the runtime cannot tell when that pickle is gone, nor where
        # it goes: it names the cluster, so that another cluster knows it for a stranger
        core = _global.core_or_none()
        if core is not None:
            core.refs.hold_for_good(self._id)
        return _rebuild_ref, (self._id, self._owner, core.cluster_id if core else "")

    def __bool__(self) -> bool:
        return True

    # awaiting -----------------------------------------------------------------------
    def _loop_future(self, fresh: bool = False) -> asyncio.Future[T]:
        """This loop's future for the ref. A cancelled one is kept (asyncio reads its result
        after cancelling) until a new wait starts (``fresh``)."""
        return _global.core().waits.future_for(self, asyncio.get_running_loop(), fresh)

    def __await__(self) -> Generator[Any, None, T]:
        return self._loop_future(fresh=True).__await__()

    def future(self) -> concurrent.futures.Future[T]:
        """A ``concurrent.futures.Future`` resolved with the value (or its error).

        Examples:
            >>> import aray
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> aray.put(7).future().result(timeout=10)
            7
        """
        return _global.core().waits.concurrent_future(self)

    def as_future(self) -> asyncio.Future[T]:
        """An asyncio future of the running loop, resolved with the value (or its error):
        Ray's (deprecated) spelling of ``asyncio.wrap_future(ref.future())``. In aray the ref
        itself is awaitable: ``await ref``. Cancelling the future leaves the task alone.

        Examples:
            >>> import asyncio, aray
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> ref = aray.put(7)
            >>> async def main():
            ...     return await ref.as_future()
            >>> asyncio.run(main())
            7
        """
        return asyncio.wrap_future(self.future())

    # asyncio's future protocol, on the running loop's view of this ref ---------------
    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop: every loop has its own view of a ref (asyncio protocol)."""
        return asyncio.get_running_loop()

    def done(self) -> bool:
        """Whether the value (or its error) is ready.

        Examples:
            >>> import aray
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> ref = aray.put(1)
            >>> aray.get(ref), ref.done()
            (1, True)
        """
        try:
            fut = self._loop_future()
        except RuntimeError:  # no running loop: ask the runtime directly
            return _global.core().waits.is_ready(self)
        if fut.cancelled():  # only this loop's wait was cancelled, not the value
            return _global.core().waits.is_ready(self)
        return fut.done()

    def result(self) -> T:
        """The value, on a loop whose wait has finished (asyncio protocol); prefer ``await``."""
        return self._loop_future().result()

    def exception(self) -> BaseException | None:
        """The error, if the task failed (asyncio protocol, on the running loop)."""
        return self._loop_future().exception()

    def cancelled(self) -> bool:
        """Whether this loop's wait was cancelled (the task itself is not affected)."""
        return self._loop_future().cancelled()

    def cancel(self, msg: Any = None) -> bool:
        """Stop this loop's wait for the ref (asyncio protocol); the task keeps running."""
        return self._loop_future().cancel(msg)

    def _make_cancelled_error(self) -> asyncio.CancelledError:
        return self._loop_future()._make_cancelled_error()  # type: ignore[attr-defined]  # asyncio calls it

    def add_done_callback(self, fn: Callable[[ObjectRef[T]], object], *,
                          context: contextvars.Context | None = None) -> None:
        """Call ``fn(ref)`` on the running loop once the value is ready (asyncio protocol)."""
        fut = self._loop_future(fresh=True)
        # asyncio passes the awaited object to callbacks: hand them the ref, not our future
        fut.add_done_callback(_CallWithRef(fn, self), context=context)

    def remove_done_callback(self, fn: Callable[[ObjectRef[T]], object]) -> int:
        """Undo :meth:`add_done_callback` (asyncio protocol)."""
        return self._loop_future().remove_done_callback(_CallWithRef(fn, self))


class _CallWithRef:
    """A done-callback wrapper that passes the ObjectRef instead of the inner future."""

    __slots__ = ("fn", "ref")

    def __init__(self, fn: Callable[[Any], object], ref: ObjectRef[Any]) -> None:
        self.fn = fn
        self.ref = ref

    def __call__(self, _fut) -> None:
        self.fn(self.ref)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, _CallWithRef) and other.fn == self.fn) or other == self.fn

    def __hash__(self) -> int:
        return hash(self.fn)


def _rebuild_ref(object_id: bytes, owner: str, cluster: str = "") -> ObjectRef[Any]:
    ref: ObjectRef[Any] = ObjectRef(object_id, owner)
    core = _global.core_or_none()
    if core is not None and cluster and core.cluster_id and cluster != core.cluster_id:
        core.call_soon(core.ownership.foreign_ref, ref, cluster)  # its value cannot be had here
    elif (core is not None and owner and owner != core.address
            and object_id not in core.objects.entries):  # (known here: registered already)
        core.call_soon(core.borrowers.borrowed, ref)  # tell the owner this process holds it too
    return ref


_collecting = threading.local()


def collect_refs(fn: Callable[..., Any], *args: Any) -> tuple[Any, list[ObjectRef[Any]]]:
    """Call ``fn(*args)`` (a pickling function) and return ``(result, refs)``: the
    ObjectRefs it pickled, which the caller keeps alive for as long as the pickle lives."""
    outer = getattr(_collecting, "refs", None)
    refs: list[ObjectRef[Any]] = []
    _collecting.refs = refs
    try:
        return fn(*args), refs
    finally:
        _collecting.refs = outer


class ArgSlot:
    """Stands in for a top-level ObjectRef argument inside a task's pickled arguments."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self):
        return ArgSlot, (self.index,)
