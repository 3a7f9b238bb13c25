"""Waiting for objects: what ``get``, ``wait`` and ``await ref`` stand on.

:class:`Waits` answers from any thread whether refs are ready (and their values, when they
are), gives the futures through which a loop or a thread awaits one, and waits on the
runtime's loop for some of many. A worker whose task waits for another task's result lends
its CPU back to the node meanwhile (:class:`CpuLending`), so nested tasks cannot deadlock a
small node.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, Protocol

from . import _protocol as P
from ._objects import ObjectEntry, ObjectState, ObjectTable
from ._portal import BLOCKED_WAIT_SLICE
from ._refs import ObjectRef
from ._runtime_context import current_task


class CpuLending:
    """A worker blocked in a wait lends its CPU back to its node (see ARCHITECTURE): the
    first of nested waits tells the agent, the last one to end takes the CPU back."""

    def __init__(self, role: str, worker_id: str, tell_agent: Callable[[Any], None]) -> None:
        self._worker = role == "worker"
        self._worker_id = worker_id
        self._tell_agent = tell_agent
        self._depth = 0

    def enter(self) -> bool:
        """Loop only: a wait starts; False (nothing to give back later) outside a worker."""
        if not self._worker:
            return False
        self._depth += 1
        if self._depth == 1:
            self._tell_agent(P.WorkerBlocked(self._worker_id))
        return True

    def exit(self) -> None:
        """Loop only: a wait for which :meth:`enter` returned True has ended."""
        self._depth -= 1
        if self._depth == 0:
            self._tell_agent(P.WorkerUnblocked(self._worker_id))


class ValueReader(Protocol):
    """How waits read values (the process's :class:`~aray._fetch.Fetcher`)."""

    def needs_fetch(self, entry: ObjectEntry) -> bool: ...

    def materialize(self, entry: ObjectEntry) -> Any: ...


class Waits:
    """Readiness, futures and waits for the refs of one process.

    ``entry_for(ref)`` (loop only) gives a ref's entry, starting its fetch if it is borrowed.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, objects: ObjectTable,
                 reader: ValueReader, entry_for: Callable[[ObjectRef], ObjectEntry],
                 lending: CpuLending) -> None:
        self.loop = loop
        self.objects = objects
        self._reader = reader
        self._entry_for = entry_for
        self.lending = lending

    def ready_values(self, refs: list[ObjectRef]) -> list | None:
        """Any thread: the values of ``refs`` if every one is resolved here already (else
        None), without a hop to the loop. Resolved entries never change, so reading them
        from another thread is safe."""
        entries = self.objects.entries
        found = []
        for ref in refs:
            entry = entries.get(ref._id)
            if entry is None or not entry.ready or self._reader.needs_fetch(entry):
                return None
            found.append(entry)
        return [self._reader.materialize(e) for e in found]

    def block_until_ready(self, ref: ObjectRef) -> None:
        """A thread other than the loop's, outside a worker: block until ``ref`` is
        resolved here (a value or an error), then read it with :meth:`ready_values`.

        What a driver's sync ``get`` of one ref waits with: the loop only adds a callback to
        the ref's entry, posted through the inbox, so that it rides the same wake-up as the
        ``.remote()`` posted just before. (A blocked ``get`` in a worker lends its CPU,
        which this does not: workers take :meth:`wait_entries`.) Raises
        ``NotInitializedError`` if the runtime's loop stops meanwhile.

        Example:
            >>> import aray
            >>> from aray import _global
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> ref = aray.remote(lambda: 7).remote()
            >>> waits = _global.core().waits
            >>> waits.block_until_ready(ref)
            >>> waits.ready_values([ref])
            [7]
        """
        ready = threading.Event()
        attached: list[ObjectEntry] = []

        def on_ready(_entry: ObjectEntry) -> None:
            ready.set()

        def attach() -> None:
            attached.append(self._entry_for(ref))
            self.objects.when_ready(attached[0], on_ready)

        def detach() -> None:  # (after attach: the inbox keeps their order)
            if attached:
                self.objects.forget_callback(attached[0], on_ready)

        self.objects.inbox.post(attach)
        try:
            # in slices: a stopped loop would never set it, and Ctrl-C lands between them
            while not ready.wait(BLOCKED_WAIT_SLICE):
                if self.loop.is_closed() or not self.loop.is_running():
                    from .exceptions import NotInitializedError

                    raise NotInitializedError(
                        "aray's event loop stopped while aray.get() waited: call "
                        "aray.init() again")
        except BaseException:
            if not self.loop.is_closed():
                self.objects.inbox.post(detach)
            raise

    def is_ready(self, ref: ObjectRef) -> bool:
        """Any thread: is the value of ``ref`` resolved here (a value or an error)?"""
        entry = self.objects.entries.get(ref._id)
        return entry is not None and entry.ready

    def future_for(self, ref: ObjectRef, loop: asyncio.AbstractEventLoop,
                   fresh: bool = False) -> asyncio.Future:
        """Any thread: the asyncio future through which ``loop`` awaits ``ref``."""
        fut = self.objects.future_for(ref._id, loop, lambda: self._entry_for(ref), fresh)
        if (fresh and loop is self.loop and not fut.done() and current_task.get() is not None
                and self.lending.enter()):
            # an async task awaiting another task's result lends its CPU meanwhile, as a
            # blocking get does
            fut.add_done_callback(lambda _f: self.lending.exit())
        return fut

    def concurrent_future(self, ref: ObjectRef) -> concurrent.futures.Future:
        """Any thread: a concurrent.futures.Future for the value of ``ref``."""
        return self.objects.concurrent_future(lambda: self._entry_for(ref))

    async def wait_entries(self, refs: list[ObjectRef], num: int, timeout: float | None,
                           blocking: bool = False, fail_fast: bool = False) -> None:
        """Wait until ``num`` of ``refs`` are resolved (or the timeout passes). Loop only.

        ``blocking`` says a thread is blocked on this wait (a sync ``get``/``wait``); in a
        worker that lends the task's CPU back to the node until the wait ends.
        ``fail_fast`` ends the wait as soon as one of them has failed (what ``get`` of a
        list does: its error is raised without waiting for the others).
        """
        entries = [self._entry_for(r) for r in refs]
        pending = [e for e in entries if not e.ready]
        if len(entries) - len(pending) >= num or fail_fast and any(
                e.state is ObjectState.FAILED for e in entries):
            return
        need = num - (len(entries) - len(pending))
        done: asyncio.Future[None] = self.loop.create_future()
        count = [0]

        def one_ready(e: ObjectEntry) -> None:
            count[0] += 1
            if (count[0] >= need or fail_fast and e.state is ObjectState.FAILED) and (
                    not done.done()):
                done.set_result(None)

        for e in pending:
            self.objects.when_ready(e, one_ready)
        blocked = blocking and self.lending.enter()
        try:
            if timeout is None:
                await done
            else:
                await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            pass
        finally:
            if blocked:
                self.lending.exit()
            for e in pending:
                self.objects.forget_callback(e, one_ready)
