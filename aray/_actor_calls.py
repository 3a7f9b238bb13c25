"""The caller's side of actors: creating them and sending them calls, in order.

Each actor this process calls has an :class:`_ActorQueue`. Calls wait in it until the
actor's address is known (the head answers ``WaitActor`` once the actor is alive) and
their arguments are ready; then they go straight to the actor's worker, in submission order.
When the link to the actor drops, calls in flight are re-sent after a restart (up to the
actor's ``max_task_retries``) or fail with :class:`~aray.exceptions.ActorDiedError`; calls
made meanwhile wait for the restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import cloudpickle

from . import _protocol as P
from ._link import CONTROL_TIMEOUT, Link
from ._objects import ObjectState
from ._refs import ObjectRef
from .exceptions import (
    ActorDiedError,
    AraySystemError,
    RemoteErrorInfo,
    RequestTimeoutError,
    error_from_blob,
)

if TYPE_CHECKING:
    from ._objects import ObjectTable
    from ._ownership import Ownership
    from ._runtime_env_client import RuntimeEnvs
    from ._streams import Streams
    from ._waits import Waits

log = logging.getLogger("aray")

RESOLVE_RETRY_DELAY = 0.05
#: queues of dead actors kept (their error answers later calls at once); older ones go,
#: and a call to such an actor asks the head again
MAX_DEAD_QUEUES = 10_000
#: an actor whose last handle is gone is ended this long after, once its calls are done
RETIRE_GRACE = 1.0
#: aray.kill() waits this long for the actor to be down
KILL_TIMEOUT = 60.0


@dataclasses.dataclass(eq=False)
class ActorCall:
    task_id: bytes
    method: str
    args: bytes
    dep_refs: list[ObjectRef]
    return_ids: list[bytes]
    num_returns: int  # -1: streaming
    retries_left: int
    deps: list = dataclasses.field(default_factory=list)
    held_entries: list = dataclasses.field(default_factory=list)  # deps held until done
    held_refs: list = dataclasses.field(default_factory=list)  # refs pickled inside the args
    waiting: bool = False
    interrupted: bool = False  # it was running when the link to the actor dropped
    group: str = ""  # a concurrency group chosen for this call
    name: str = ""  # .options(name=...): the call's name ("" = Class.method)


class _ActorQueue:
    __slots__ = ("actor_id", "target", "link", "resolving", "dead", "pending", "in_flight",
                 "retiring")

    def __init__(self, actor_id: str) -> None:
        self.actor_id = actor_id
        self.target = actor_id  # the id to resolve (another actor's when get_if_exists hit)
        self.link: Link | None = None
        self.resolving = False
        self.dead: BaseException | None = None
        self.pending: deque[ActorCall] = deque()
        self.in_flight: dict[bytes, ActorCall] = {}
        self.retiring = False  # every handle is gone: end the actor once its calls are done


def actor_died_error(info: dict, actor_id: str) -> ActorDiedError:
    """The error calls to a dead actor raise, with the constructor's traceback if it failed."""
    name = info.get("class_name") or "actor"
    cause = info.get("death_cause") or "it is not known to the cluster"
    message = f"The actor {name} ({actor_id}) is dead: {cause}."
    blob = info.get("death_error")
    if blob:
        try:
            err: RemoteErrorInfo = cloudpickle.loads(blob)
            message += f"\n\nThe constructor raised:\n{err.traceback.rstrip()}"
        except Exception:
            pass
    return ActorDiedError(message)


class CallHost(Protocol):
    """What the actor caller needs of its process (:class:`~aray._core.Core`)."""

    loop: asyncio.AbstractEventLoop
    address: str  # the owner named in the results' refs
    job_id: str
    objects: ObjectTable
    ownership: Ownership
    waits: Waits
    streams: Streams
    runtime_envs: RuntimeEnvs

    def spawn(self, coro: Coroutine, name: str = "") -> asyncio.Task: ...

    async def peer(self, address: str) -> Link: ...

    async def head_link(self) -> Link: ...


class ActorCaller:
    """Per-process state for calling actors (runs on the core's loop unless noted)."""

    def __init__(self, core: CallHost) -> None:
        self.core = core
        self.queues: dict[str, _ActorQueue] = {}
        self._by_task: dict[bytes, _ActorQueue] = {}
        self._dead: dict[str, None] = {}  # ids of dead actors' queues, oldest first
        # the lifetime objects of the actors this process made: object id -> actor id
        self._lifetimes: dict[bytes, str] = {}

    def _queue(self, actor_id: str) -> _ActorQueue:
        q = self.queues.get(actor_id)
        if q is None:
            q = self.queues[actor_id] = _ActorQueue(actor_id)
        return q

    # --- creating -----------------------------------------------------------------------
    async def register(self, actor_id: str, name: str, namespace: str, get_if_exists: bool,
                       meta: dict, job_id: str) -> str:
        """Reserve the actor (and its name) at the head; returns the id to talk to."""
        head = await self.core.head_link()
        reply = await head.request(lambda r: P.RegisterActor(
            r, actor_id, name, namespace, get_if_exists, job_id, meta), timeout=CONTROL_TIMEOUT)
        if reply.error:
            raise ValueError(reply.error)
        if reply.actor_id != actor_id:
            self._queue(actor_id).target = reply.actor_id
        return reply.actor_id

    async def create(self, actor_id: str, register: Awaitable[str] | None,
                     spec: dict, dep_refs: list[ObjectRef]) -> None:
        """Register the actor (``register`` does it for a named one; None: an unnamed one),
        wait for the constructor's arguments, then have the head place the actor."""
        try:
            if register is not None:
                target = await register
            else:
                target = await self.register(actor_id, "", "", False, spec["meta"],
                                             spec["job_id"])
        except Exception as exc:
            self._queue(actor_id).dead = exc
            self._pump(self._queue(actor_id))
            return
        if target != actor_id:
            return  # get_if_exists found a live actor: nothing to create
        entries = [self.core.ownership.entry_for(r) for r in dep_refs]
        if any(not e.ready for e in entries):
            await self.core.waits.wait_entries(dep_refs, len(dep_refs), None)
        for entry in entries:
            if entry.state is ObjectState.FAILED:
                self._queue(actor_id).dead = ActorDiedError(
                    f"the actor {spec['class_name']} could not be created: an argument of its "
                    f"constructor failed: {entry.error}")
                self._pump(self._queue(actor_id))
                return
        spec = dict(spec, deps=[[e.oid, e.resolved_value()] for e in entries])
        spec.pop("meta", None)
        try:
            spec["runtime_env"] = await self.core.runtime_envs.wire(spec["runtime_env"])
        except (ValueError, OSError, AraySystemError, RequestTimeoutError) as exc:
            self._queue(actor_id).dead = ActorDiedError(
                f"the actor {spec['class_name']} could not be created: its runtime env "
                f"could not be uploaded: {exc}")
            self._pump(self._queue(actor_id))
            return
        head = await self.core.head_link()
        head.send(P.CreateActor(actor_id, spec))

    # --- calling ------------------------------------------------------------------------
    def submit(self, actor_id: str, call: ActorCall) -> None:
        """Loop only (scheduled by ``Core.submit_actor_call``)."""
        for oid in call.return_ids:
            self.core.objects.add(oid, owned=True)
        q = self._queue(actor_id)
        q.pending.append(call)
        self._pump(q)

    def _pump_after(self, q: _ActorQueue, _entry: Any) -> None:
        self._pump(q)  # an argument the queue's next call waits for is ready

    def _pump(self, q: _ActorQueue) -> None:
        if q.dead is not None:
            while q.pending:
                self._fail(q.pending.popleft(), q.dead)
            self._dead[q.actor_id] = None
            while len(self._dead) > MAX_DEAD_QUEUES:
                old = next(iter(self._dead))
                del self._dead[old]
                stale = self.queues.get(old)
                if stale is not None and not stale.in_flight:
                    del self.queues[old]
            return
        if q.link is None or q.link.closed:
            if q.pending and not q.resolving:
                q.resolving = True
                self.core.spawn(self._resolve(q), name=f"resolve actor {q.actor_id}")
            return
        while q.pending:
            call = q.pending[0]
            entries = [self.core.ownership.entry_for(r) for r in call.dep_refs]
            unready = [e for e in entries if not e.ready]
            if unready:  # later calls wait too: calls run in submission order
                if not call.waiting:
                    call.waiting = True
                    for e in unready:
                        self.core.objects.when_ready(e, functools.partial(self._pump_after, q))
                return
            q.pending.popleft()
            failed = next((e for e in entries if e.state is ObjectState.FAILED), None)
            if failed is not None:
                self._fail(call, failed.error)
                continue
            call.deps = [[e.oid, e.resolved_value()] for e in entries]
            for e in entries:
                self.core.objects.hold(e)
            # dep_refs stay until the call ends: a call re-run after a restart resolves
            # its arguments again from them
            call.held_entries, call.waiting = entries, False
            q.in_flight[call.task_id] = call
            self._by_task[call.task_id] = q
            q.link.send(P.CallActor(call.task_id, q.target, call.method, call.args, call.deps,
                                    call.return_ids, call.num_returns, self.core.job_id,
                                    self.core.address, call.group, call.name))

    async def _resolve(self, q: _ActorQueue) -> None:
        try:
            while True:
                head = await self.core.head_link()
                # answered once the actor is alive or dead, which takes as long as the
                # cluster needs to find room for it; a head that dies closes the link
                reply = await head.request(lambda r: P.WaitActor(r, q.target), timeout=None)
                info = reply.info
                if not info or info["state"] == "DEAD":
                    q.dead = actor_died_error(info, q.target)
                    break
                try:
                    q.link = await self.core.peer(info["address"])
                    self._after_restart(q)
                    break
                except (ConnectionError, OSError):
                    # the head has not yet heard that this address died: ask again
                    await asyncio.sleep(RESOLVE_RETRY_DELAY)
        except (ConnectionError, OSError) as exc:
            q.dead = ActorDiedError(f"cannot reach the actor {q.target}: {exc}")
        finally:
            q.resolving = False
        self._pump(q)

    # --- lifetimes -------------------------------------------------------------------------
    def watch_lifetime(self, lifetime: bytes, actor_id: str) -> None:
        """``lifetime`` is an object this process owns that every handle of the actor holds
        (the handles in other processes as borrowers): once nothing holds it, the actor has
        no handle left, and ends (as in Ray) after the calls made to it here."""
        self._lifetimes[lifetime] = actor_id

    def lifetime_ended(self, lifetime: bytes) -> None:
        """The object table found ``lifetime`` unused (see :meth:`watch_lifetime`)."""
        actor_id = self._lifetimes.pop(lifetime, None)
        if actor_id is not None:
            q = self._queue(actor_id)
            q.retiring = True
            # Calls made here through the last handle arrived before this news (one
            # ordered inbox carries both to the loop). Not at once all the same: a handle
            # borrowed by another process sends its calls straight to the actor and its
            # release to us, so its last calls may still be on their way to the actor.
            self.core.loop.call_later(RETIRE_GRACE, self._retire_if_idle, q)

    def _retire_if_idle(self, q: _ActorQueue) -> None:
        if q.retiring and not q.pending and not q.in_flight and q.dead is None:
            q.retiring = False
            self.core.spawn(self._retire(q.actor_id), name=f"retire actor {q.actor_id}")

    async def _retire(self, actor_id: str) -> None:
        try:
            await self.kill(actor_id, no_restart=True)
        except (ConnectionError, OSError) as exc:  # the cluster is stopping: so is the actor
            log.debug("could not end actor %s, whose handles are gone: %s", actor_id, exc)

    def link_running(self, task_id: bytes) -> Link | None:
        """The link to the actor running the call ``task_id``, if it was sent."""
        q = self._by_task.get(task_id)
        return q.link if q is not None else None

    def on_task_finished(self, msg: P.TaskFinished) -> bool:
        """A reply to one of our actor calls? Then resolve its refs and return True."""
        q = self._by_task.pop(msg.task_id, None)
        if q is None:
            return False
        call = q.in_flight.pop(msg.task_id)
        self._release(call)
        if msg.error is not None:
            error = error_from_blob(msg.error)
            self._fail(call, error)
        else:
            self.core.ownership.finish_returns(call.return_ids, msg.results)
            self.core.streams.end(call.task_id, None)
        self._retire_if_idle(q)
        return True

    def on_link_closed(self, link: Link) -> None:
        """The actor's worker is gone. Its calls wait for the head's word: if the actor is
        dead they fail with the cause, if it restarted they re-run (``max_task_retries``)."""
        for q in self.queues.values():
            if q.link is not link:
                continue
            q.link = None
            lost = list(q.in_flight.values())
            q.in_flight.clear()
            for call in reversed(lost):  # re-queue in submission order, ahead of newer calls
                self._by_task.pop(call.task_id, None)
                self._release_entries(call)  # its refs stay, for a re-run
                call.interrupted = True
                q.pending.appendleft(call)
            self._pump(q)

    def _after_restart(self, q: _ActorQueue) -> None:
        """The actor is alive again: interrupted calls re-run only if retries allow."""
        for call in [c for c in q.pending if c.interrupted]:
            call.interrupted = False
            if call.retries_left != 0 and call.num_returns >= 0:
                call.retries_left -= 1
            else:
                q.pending.remove(call)
                self._fail(call, ActorDiedError(
                    f"the actor {q.target} died while running {call.method}() and was "
                    "restarted; pass max_task_retries to @aray.remote to re-run interrupted "
                    "calls after a restart"))

    def _release_entries(self, call: ActorCall) -> None:
        held, call.held_entries = call.held_entries, []
        for entry in held:
            self.core.objects.release(entry)

    def _release(self, call: ActorCall) -> None:
        """The call has ended: nothing of its arguments is needed any more."""
        self._release_entries(call)
        call.dep_refs = []
        call.held_refs = []

    def _fail(self, call: ActorCall, error: BaseException | None) -> None:
        self._release(call)
        self.core.ownership.fail_returns(call.return_ids, error)
        self.core.streams.end(call.task_id, error)

    def cancel(self, task_id: bytes) -> bool:
        q = self._by_task.get(task_id)
        if q is not None and q.link is not None:
            q.link.send(P.CancelTask(task_id, True))
            return True
        for q in self.queues.values():
            for call in q.pending:
                if call.task_id == task_id:
                    q.pending.remove(call)
                    from .exceptions import TaskCancelledError

                    self._fail(call, TaskCancelledError(call.method))
                    return True
        return False

    async def kill(self, actor_id: str, no_restart: bool) -> None:
        head = await self.core.head_link()
        # answered once the actor is down; a node that does not answer is declared dead
        # within the head's node timeout, which ends its actors too
        await head.request(lambda r: P.KillActor(r, self._queue(actor_id).target, no_restart),
                           timeout=KILL_TIMEOUT)

    async def lookup(self, name: str, namespace: str, job_id: str) -> dict[str, Any]:
        head = await self.core.head_link()
        reply = await head.request(lambda r: P.LookupActor(r, name, namespace, job_id),
                                   timeout=CONTROL_TIMEOUT)
        return reply.info
