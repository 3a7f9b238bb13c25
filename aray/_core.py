"""The per-process runtime: owner of objects, submitter of tasks, peer of other cores.

Every driver and every worker runs one :class:`Core` on one event loop. It

* owns the refs its process creates (task returns, ``put``) in an :class:`ObjectTable`;
* submits tasks: waits for their dependencies, leases workers from its node agent per
  resource shape, pushes tasks straight to leased workers and reuses a lease while tasks of
  that shape are queued (no hop through the head);
* serves other cores on its own socket: workers receive ``PushTask`` here, owners answer
  ``GetObject`` for refs they lent out.

Methods that are safe from any thread say so; everything else runs on :attr:`Core.loop`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import cloudpickle

from . import _protocol as P
from ._link import Link, Server, connect
from ._objects import ObjectEntry, ObjectState, ObjectTable, dump_error
from ._refs import ArgSlot, ObjectRef, new_task_id, return_id
from .exceptions import (
    ObjectLostError,
    OwnerDiedError,
    RemoteErrorInfo,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
    task_error,
)
from .store._serialize import deserialize, serialize
from .store.shm import ShmDirectory

log = logging.getLogger("aray")

#: serialized values above this size go through the object store instead of inline
INLINE_THRESHOLD = 100 * 1024
#: tasks pushed to one leased worker before waiting for its results
MAX_IN_FLIGHT_PER_WORKER = 1
#: outstanding lease requests per resource shape (the agent queues the rest of the demand)
MAX_PENDING_LEASES = 10
#: an idle lease is kept this long before it goes back to the node agent, so a loop of
#: ``get(f.remote())`` reuses one worker instead of asking for a lease per task
LEASE_LINGER = 0.005


@dataclasses.dataclass(eq=False)
class TaskSpec:
    """A task as its caller tracks it until every return value is resolved."""

    task_id: bytes
    function: FunctionDescriptor
    name: str
    args: bytes
    dep_refs: list[ObjectRef]
    return_ids: list[bytes]
    shape: dict
    max_retries: int
    retry_exceptions: bool | tuple
    job_id: str = ""
    deps: list = dataclasses.field(default_factory=list)  # resolved values, filled at dispatch
    pinned: list = dataclasses.field(default_factory=list)
    cancelled: bool = False
    force_cancelled: bool = False

    @property
    def shape_key(self) -> tuple:
        return tuple(sorted(self.shape.items()))


class FunctionDescriptor:
    """A remote function pickled once per process and shipped once per worker link."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self._lock = threading.Lock()
        self._blob: bytes | None = None
        self._id: bytes | None = None

    def blob_and_id(self) -> tuple[bytes, bytes]:
        if self._blob is None:
            with self._lock:
                if self._blob is None:
                    try:
                        # the source file travels along: cloudpickle blanks it in code it
                        # pickles by value, and tracebacks should point at the user's code
                        source = getattr(getattr(self.fn, "__code__", None), "co_filename", "")
                        blob = cloudpickle.dumps((self.fn, source), protocol=5)
                    except Exception as exc:
                        name = getattr(self.fn, "__qualname__", repr(self.fn))
                        raise TypeError(
                            f"remote function {name} cannot be pickled: {exc}. A remote function "
                            "must not capture locks, sockets, open files or similar objects; "
                            "create those inside the function instead."
                        ) from exc
                    self._id = hashlib.blake2b(blob, digest_size=16).digest()
                    self._blob = blob
        assert self._id is not None
        return self._blob, self._id

    def __getstate__(self):
        return {"fn": self.fn}

    def __setstate__(self, state) -> None:
        self.__init__(state["fn"])


class _Lease:
    __slots__ = ("worker_id", "address", "node_id", "gpu_ids", "link", "in_flight", "queue",
                 "linger")

    def __init__(self, grant: P.LeaseGranted, link: Link, queue: _ShapeQueue) -> None:
        self.worker_id = grant.worker_id
        self.address = grant.address
        self.node_id = grant.node_id
        self.gpu_ids = grant.gpu_ids
        self.link = link
        self.in_flight: dict[bytes, TaskSpec] = {}
        self.queue = queue
        self.linger: asyncio.TimerHandle | None = None


class _ShapeQueue:
    """Tasks waiting for a worker of one resource shape, and the leases serving them."""

    __slots__ = ("shape", "tasks", "leases", "requesting", "description")

    def __init__(self, shape: dict) -> None:
        self.shape = shape
        self.tasks: deque[TaskSpec] = deque()
        self.leases: list[_Lease] = []
        self.requesting = 0
        self.description = ""


def load_function(blob: bytes) -> Callable:
    """Unpickle a FunctionDescriptor blob, pointing blanked code back at its source file."""
    fn, source = cloudpickle.loads(blob)
    code = getattr(fn, "__code__", None)
    if source and code is not None and code.co_filename == "<dynamic-code>":
        try:
            fn.__code__ = _with_filename(code, source)
        except (TypeError, ValueError):
            pass
    return fn


def _with_filename(code, filename: str):
    consts = tuple(_with_filename(c, filename) if isinstance(c, type(code)) else c
                   for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def serialize_args(args: tuple, kwargs: dict, describe: Callable[[], str]):
    """Pickle task arguments with top-level refs replaced by :class:`ArgSlot`.

    Returns ``(blob, dep_refs)``. Large plain arguments are put into the store by the
    caller and passed as dependencies, so the task message itself stays small.
    Raises TypeError naming the argument that cannot be pickled.
    """
    deps: list[ObjectRef] = []

    def slot(value):
        if isinstance(value, ObjectRef):
            deps.append(value)
            return ArgSlot(len(deps) - 1)
        return value

    sargs = tuple(slot(a) for a in args)
    skwargs = {k: slot(v) for k, v in kwargs.items()}
    try:
        ser = serialize((sargs, skwargs))
    except Exception as exc:
        raise _unpicklable_argument(args, kwargs, describe(), exc) from exc
    if ser.total_size > INLINE_THRESHOLD:
        from . import _global

        core = _global.core()

        def put_large(value):
            if isinstance(value, ArgSlot):
                return value
            one = serialize(value)
            if one.total_size > INLINE_THRESHOLD // 4:
                deps.append(core.put_serialized(one))
                return ArgSlot(len(deps) - 1)
            return value

        sargs = tuple(put_large(a) for a in sargs)
        skwargs = {k: put_large(v) for k, v in skwargs.items()}
        ser = serialize((sargs, skwargs))
    return ser.to_bytes(), deps


def _unpicklable_argument(args, kwargs, where: str, exc: Exception) -> TypeError:
    named = [(f"argument {i}", a) for i, a in enumerate(args)]
    named += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in named:
        if isinstance(value, ObjectRef):
            continue
        try:
            cloudpickle.dumps(value, protocol=5)
        except Exception as inner:
            return TypeError(
                f"{label} of {where} ({type(value).__name__}) cannot be pickled: {inner}. "
                "Arguments travel to another process; pass something picklable, or create "
                "the object inside the task."
            )
    return TypeError(f"the arguments of {where} cannot be pickled: {exc}")


class Core:
    """The runtime of one process (driver or worker), bound to one event loop."""

    def __init__(self, *, loop: asyncio.AbstractEventLoop, role: str, token: str,
                 session_dir: str, node_address: str, head_address: str = "",
                 store_dir: str, node_id: str = "", worker_id: str = "",
                 log_to_driver: bool = True) -> None:
        self.loop = loop
        self.role = role
        self.token = token
        self.session_dir = session_dir
        self.node_address = node_address
        self.head_address = head_address
        self.node_id = node_id
        self.worker_id = worker_id
        self.job_id = ""
        self.log_to_driver = log_to_driver
        self.store = ShmDirectory(store_dir)
        self.objects = ObjectTable(loop, self.materialize, self._on_unused)
        self.objects.bind_thread()  # a core is always made on its loop's thread
        self.refs = self.objects.refs
        # this core's server; known before it listens, so refs made early name their owner
        self.address = "unix:" + os.path.join(
            session_dir, "sockets", f"{role[0]}{os.getpid()}-{os.urandom(3).hex()}.sock")
        self.cluster: Any = None  # the LocalCluster a driver started, if any
        self.loop_thread: Any = None  # the private LoopThread of a sync init, if any
        self.ready = asyncio.Event()
        self.start_error: BaseException | None = None
        self.agent: Link | None = None
        self.head: Link | None = None
        self._server = Server(token, self._on_peer_hello, name=f"core[{role}]")
        self._peers: dict[str, Link] = {}
        self._connecting: dict[str, asyncio.Future] = {}
        self._queues: dict[tuple, _ShapeQueue] = {}
        self._running: dict[bytes, _Lease] = {}  # task id -> lease running it
        self._waiting: dict[bytes, TaskSpec] = {}  # task id -> spec waiting for deps/lease
        self._tasks: set[asyncio.Task] = set()
        self.executor: Any = None  # the worker's task executor (set in worker processes)
        self.on_log_lines: Callable[[P.LogLines], None] | None = None
        self._blocked_depth = 0
        self._closing = False
        self._handlers = {
            cls: getattr(self, "_on_" + _snake(cls.__name__))
            for cls in P.message_types().values()
            if hasattr(self, "_on_" + _snake(cls.__name__))
        }

    # --- lifecycle -----------------------------------------------------------------------
    def spawn(self, coro, name: str = "") -> asyncio.Task:
        """Run ``coro`` in a task owned by this core (cancelled at stop)."""
        task = self.loop.create_task(coro, name=name or None)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, ConnectionError) or not self._closing:
                log.error("internal task %s failed", task.get_name(), exc_info=exc)

    async def start(self) -> None:
        """Open this core's server and the links to the node agent (and head for drivers)."""
        try:
            await self._server.start(self.address)
            info = {"address": self.address, "log_to_driver": self.log_to_driver}
            if self.role == "driver" and self.head_address:
                self.head = await self._dial(self.head_address, "driver", "", info)
                self.job_id = self.head.peer.info.get("job_id", "")
                info["job_id"] = self.job_id
            self.agent = await self._dial(self.node_address, self.role, self.worker_id, info)
            self.node_id = self.agent.peer.info.get("node_id", self.node_id)
            self.agent.on_close.append(self._on_agent_lost)
        except BaseException as exc:
            self.start_error = exc
            raise
        finally:
            self.ready.set()

    def fail_start(self, exc: BaseException) -> None:
        """Starting failed before :meth:`start` could run: operations raise ``exc``."""
        self.start_error = exc
        self.ready.set()

    async def wait_ready(self) -> None:
        await self.ready.wait()
        if self.start_error is not None:
            raise self.start_error

    async def _dial(self, address: str, role: str, ident: str, info: dict) -> Link:
        hello = P.Hello(P.PROTOCOL_VERSION, self.token, role, ident, os.getpid(), info)
        link = await connect(address, hello, name=f"{self.role}->{address}")
        link.on_message = self._dispatch
        self.spawn(link.run(), name=f"link {address}")
        return link

    def _on_agent_lost(self, _link: Link) -> None:
        if self._closing:
            return
        log.error("lost the link to the aray node agent; the cluster is gone")
        err = ConnectionError("the aray node agent is gone; the cluster has stopped")
        for q in self._queues.values():
            while q.tasks:
                self._fail_task(q.tasks.popleft(), err)
        if self.role == "worker":
            os._exit(1)  # a worker without its node agent has nothing left to do

    async def stop(self) -> None:
        self._closing = True
        for link in list(self._peers.values()):
            await link.aclose()
        for link in (self.agent, self.head):
            if link is not None:
                await link.aclose()
        await self._server.aclose()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)

    # --- links to other cores -----------------------------------------------------------
    def _on_peer_hello(self, link: Link, hello: P.Hello) -> dict:
        link.on_message = self._dispatch
        link.on_close.append(self._on_peer_closed)
        return {"node_id": self.node_id}

    async def peer(self, address: str) -> Link:
        """The link to another core, dialled once and reused."""
        link = self._peers.get(address)
        if link is not None and not link.closed:
            return link
        pending = self._connecting.get(address)
        if pending is None:
            pending = self._connecting[address] = self.loop.create_future()
            try:
                link = await self._dial(address, "core", "", {"address": self.address})
                link.on_close.append(self._on_peer_closed)
                self._peers[address] = link
                pending.set_result(link)
            except BaseException as exc:
                pending.set_exception(exc)
                pending.exception()  # mark retrieved
                raise
            finally:
                del self._connecting[address]
            return link
        return await asyncio.shield(pending)

    def _dispatch(self, link: Link, msg) -> None:
        handler = self._handlers.get(type(msg))
        if handler is None:
            log.warning("unexpected %s on link %s", type(msg).__name__, link.name)
        else:
            handler(link, msg)

    def _on_peer_closed(self, link: Link) -> None:
        for address, peer in list(self._peers.items()):
            if peer is link:
                del self._peers[address]
        # tasks running on a worker behind this link: retry or fail them
        for q in self._queues.values():
            for lease in [le for le in q.leases if le.link is link]:
                q.leases.remove(lease)
                for spec in lease.in_flight.values():
                    self._running.pop(spec.task_id, None)
                    self._worker_lost(spec, q)
                lease.in_flight.clear()
                if self.agent is not None and not self.agent.closed:
                    self.agent.send(P.ReturnLease(lease.worker_id))
        for q in list(self._queues.values()):
            self._pump(q)
        if self.executor is not None:
            self.executor.caller_gone(link)

    def _worker_lost(self, spec: TaskSpec, q: _ShapeQueue) -> None:
        if spec.cancelled:
            self._fail_task(spec, TaskCancelledError(spec.name, "its worker was stopped"))
        elif spec.max_retries != 0:
            spec.max_retries -= 1
            log.info("worker running %s died; retrying (%s retries left)", spec.name,
                     "unlimited" if spec.max_retries < 0 else spec.max_retries)
            q.tasks.appendleft(spec)
            self._waiting[spec.task_id] = spec
        else:
            self._fail_task(spec, WorkerCrashedError(
                f"the worker running {spec.name} died unexpectedly and max_retries is used up; "
                "raise max_retries if the crash is transient, and see the worker logs in "
                f"{os.path.join(self.session_dir, 'logs')}"))

    # --- objects -------------------------------------------------------------------------
    def entry_for(self, ref: ObjectRef) -> ObjectEntry:
        """The entry for ``ref``; a borrowed ref gets one that asks its owner. Loop only."""
        entry = self.objects.entries.get(ref._id)
        if entry is not None:
            return entry
        if ref._owner == self.address or not ref._owner:
            entry = self.objects.add(ref._id, owned=True)
            self.objects.fail(entry, ObjectLostError(
                f"object {ref.hex()} is gone: its owner released it, or it belongs to an "
                "earlier aray session"))
            return entry
        entry = self.objects.add(ref._id, owned=False, owner=ref._owner)
        entry.fetching = True
        self.spawn(self._fetch_from_owner(entry), name="fetch")
        return entry

    async def _fetch_from_owner(self, entry: ObjectEntry) -> None:
        try:
            link = await self.peer(entry.owner)
            reply = await link.request(lambda r: P.GetObject(r, entry.oid))
        except (ConnectionError, OSError):
            self.objects.fail(entry, OwnerDiedError(
                f"the owner of object {entry.oid.hex()} ({entry.owner}) has exited, so the "
                "object is lost. Keep the process that created a ref alive while others use it."))
            return
        self.objects.resolve(entry, reply.value)

    def _on_get_object(self, link: Link, msg: P.GetObject) -> None:
        entry = self.objects.entries.get(msg.object_id)
        if entry is None:
            err = ObjectLostError(f"object {msg.object_id.hex()} was already freed by its owner")
            link.send(P.ObjectReply(msg.req_id, ["e", dump_error(err)]))
            return

        def reply(e: ObjectEntry) -> None:
            if not link.closed:
                link.send(P.ObjectReply(msg.req_id, e.resolved_value()))

        self.objects.when_ready(entry, reply)

    def materialize(self, entry: ObjectEntry) -> Any:
        """The value of a resolved entry (deserialized anew), or raise its error."""
        if entry.state is ObjectState.FAILED:
            raise entry.error  # type: ignore[misc]
        if entry.data is not None:
            return deserialize(entry.data)
        return self.read_stored(entry.oid, entry.location)

    def read_stored(self, oid: bytes, location) -> Any:
        node_id, _size = location
        if node_id != self.node_id:
            raise ObjectLostError(
                f"object {oid.hex()} lives on node {node_id[:12]}, which this process cannot reach")
        try:
            return deserialize(self.store.read(oid))
        except FileNotFoundError:
            raise ObjectLostError(f"object {oid.hex()} is no longer in the object store") from None

    def value_of_resolved(self, oid: bytes, value: list) -> Any:
        """Deserialize a resolved value received from another process (worker side)."""
        if value[0] == "v":
            return deserialize(value[1])
        if value[0] == "s":
            return self.read_stored(oid, (value[1], value[2]))
        raise ValueError("an error value has no payload")

    def _on_unused(self, entry: ObjectEntry) -> None:
        if entry.owned and entry.location is not None and entry.location[0] == self.node_id:
            self.store.delete(entry.oid)

    def ready_values(self, refs: list[ObjectRef]) -> list | None:
        """Any thread: the values of ``refs`` if every one is resolved here already (else
        None), without a hop to the loop. Resolved entries never change, so reading them
        from another thread is safe."""
        entries = self.objects.entries
        found = []
        for ref in refs:
            entry = entries.get(ref._id)
            if entry is None or not entry.ready:
                return None
            found.append(entry)
        return [self.materialize(e) for e in found]

    def is_ready(self, ref: ObjectRef) -> bool:
        """Any thread."""
        entry = self.objects.entries.get(ref._id)
        return entry is not None and entry.ready

    def future_for(self, ref: ObjectRef, loop, fresh: bool = False) -> asyncio.Future:
        """Any thread: the asyncio future through which ``loop`` awaits ``ref``."""
        return self.objects.future_for(ref._id, loop, lambda: self.entry_for(ref), fresh)

    def concurrent_future(self, ref: ObjectRef):
        """Any thread: a concurrent.futures.Future for the value of ``ref``."""
        return self.objects.concurrent_future(lambda: self.entry_for(ref))

    def put_serialized(self, ser) -> ObjectRef:
        """Any thread: store an already serialized value; returns the owned ref."""
        oid = return_id(new_task_id(), 0)
        if ser.total_size > INLINE_THRESHOLD:
            self.store.write(oid, ser)
            value = ["s", self.node_id, ser.total_size]
        else:
            value = ["v", ser.to_bytes()]
        ref = ObjectRef(oid, self.address)
        self.call_soon(self._register_put, oid, value)
        return ref

    def put(self, value: Any) -> ObjectRef:
        """Any thread: serialize ``value`` here and own it."""
        if isinstance(value, ObjectRef):
            raise TypeError("aray.put() of an ObjectRef is not allowed; pass the ref itself")
        try:
            ser = serialize(value)
        except Exception as exc:
            raise TypeError(
                f"aray.put(): a {type(value).__name__} cannot be pickled: {exc}") from exc
        return self.put_serialized(ser)

    def _register_put(self, oid: bytes, value: list) -> None:
        self.objects.resolve(self.objects.add(oid, owned=True), value)

    def call_soon(self, fn, *args) -> None:
        """Any thread: run ``fn(*args)`` on the loop, in order with other such calls."""
        if self.objects.on_loop_thread():
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    async def wait_entries(self, refs: list[ObjectRef], num: int, timeout: float | None,
                           blocking: bool = False) -> None:
        """Wait until ``num`` of ``refs`` are resolved (or the timeout passes). Loop only.

        ``blocking`` says a thread is blocked on this wait (a sync ``get``/``wait``); in a
        worker that lends the task's CPU back to the node until the wait ends.
        """
        entries = [self.entry_for(r) for r in refs]
        pending = [e for e in entries if not e.ready]
        if len(entries) - len(pending) >= num:
            return
        need = num - (len(entries) - len(pending))
        done = self.loop.create_future()
        count = [0]

        def one_ready(_e) -> None:
            count[0] += 1
            if count[0] >= need and not done.done():
                done.set_result(None)

        for e in pending:
            self.objects.when_ready(e, one_ready)
        blocked = blocking and self._block_enter()
        try:
            if timeout is None:
                await done
            else:
                await asyncio.wait_for(asyncio.shield(done), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            if blocked:
                self._block_exit()
            for e in pending:
                if one_ready in e.callbacks:
                    e.callbacks.remove(one_ready)
                    self.objects._maybe_unused(e)

    def _block_enter(self) -> bool:
        """A worker waiting in a sync get lends its CPU back to the node (see ARCHITECTURE)."""
        if self.role != "worker":
            return False
        self._blocked_depth += 1
        if self._blocked_depth == 1 and self.agent is not None and not self.agent.closed:
            self.agent.send(P.WorkerBlocked(self.worker_id))
        return True

    def _block_exit(self) -> None:
        self._blocked_depth -= 1
        if self._blocked_depth == 0 and self.agent is not None and not self.agent.closed:
            self.agent.send(P.WorkerUnblocked(self.worker_id))

    # --- submitting tasks ----------------------------------------------------------------
    def submit(self, spec: TaskSpec) -> list[ObjectRef]:
        """Any thread: register ``spec`` and return its refs at once."""
        refs = [ObjectRef(oid, self.address) for oid in spec.return_ids]
        self.call_soon(self._accept, spec)
        return refs

    def _accept(self, spec: TaskSpec) -> None:
        for oid in spec.return_ids:
            self.objects.add(oid, owned=True)
        spec.job_id = self.job_id
        self._waiting[spec.task_id] = spec
        if not spec.dep_refs:
            self._enqueue(spec)
            return
        remaining = [len(spec.dep_refs)]

        def dep_ready(_entry) -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                self._deps_ready(spec)

        for ref in spec.dep_refs:
            self.objects.when_ready(self.entry_for(ref), dep_ready)

    def _deps_ready(self, spec: TaskSpec) -> None:
        if spec.task_id not in self._waiting:  # cancelled meanwhile
            return
        entries = [self.objects.entries.get(r._id) or self.entry_for(r) for r in spec.dep_refs]
        for entry in entries:
            if entry.state is ObjectState.FAILED:
                self._fail_task(spec, entry.error)
                return
        spec.deps = [[e.oid, e.resolved_value()] for e in entries]
        for e in entries:
            e.pins += 1
        spec.pinned = entries
        self._enqueue(spec)

    def _enqueue(self, spec: TaskSpec) -> None:
        key = spec.shape_key
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = _ShapeQueue(spec.shape)
        q.description = spec.name
        q.tasks.append(spec)
        self._pump(q)

    def _pump(self, q: _ShapeQueue) -> None:
        """Push queued tasks to leased workers; ask for more leases; return idle ones."""
        while q.tasks:
            lease = None
            for candidate in q.leases:
                if len(candidate.in_flight) < MAX_IN_FLIGHT_PER_WORKER and (
                        lease is None or len(candidate.in_flight) < len(lease.in_flight)):
                    lease = candidate
            if lease is None:
                break
            self._push(lease, q.tasks.popleft())
        want = min(len(q.tasks), MAX_PENDING_LEASES) - q.requesting
        for _ in range(max(0, want)):
            q.requesting += 1
            self.spawn(self._request_lease(q), name="lease")
        if not q.tasks:
            for lease in q.leases:
                if not lease.in_flight and lease.linger is None:
                    lease.linger = self.loop.call_later(LEASE_LINGER, self._return_lease, lease)

    def _return_lease(self, lease: _Lease) -> None:
        lease.linger = None
        q = lease.queue
        if lease.in_flight or q.tasks or lease not in q.leases:
            return
        q.leases.remove(lease)
        if self.agent is not None and not self.agent.closed:
            self.agent.send(P.ReturnLease(lease.worker_id))

    async def _request_lease(self, q: _ShapeQueue) -> None:
        try:
            await self.wait_ready()
            assert self.agent is not None
            grant = await self.agent.request(lambda r: P.RequestLease(r, q.shape, q.description))
        except (ConnectionError, OSError):
            return
        finally:
            q.requesting -= 1
        try:
            link = await self.peer(grant.address)
        except (ConnectionError, OSError):  # the worker died before we reached it
            self.agent.send(P.ReturnLease(grant.worker_id))
            self._pump(q)
            return
        q.leases.append(_Lease(grant, link, q))
        self._pump(q)

    def _on_lease_infeasible(self, link: Link, msg: P.LeaseInfeasible) -> None:
        log.warning(msg.message)

    def _push(self, lease: _Lease, spec: TaskSpec) -> None:
        self._waiting.pop(spec.task_id, None)
        sent = lease.link.state.setdefault("functions", set())
        blob, fn_id = spec.function.blob_and_id()
        if fn_id in sent:
            blob = None
        else:
            sent.add(fn_id)
        if lease.linger is not None:
            lease.linger.cancel()
            lease.linger = None
        lease.in_flight[spec.task_id] = spec
        self._running[spec.task_id] = lease
        lease.link.send(P.PushTask(
            spec.task_id, fn_id, blob, spec.name, spec.args, spec.deps, spec.return_ids,
            len(spec.return_ids), spec.job_id, lease.gpu_ids, self.address))

    def _on_task_finished(self, link: Link, msg: P.TaskFinished) -> None:
        lease = self._running.pop(msg.task_id, None)
        if lease is None:
            return
        spec = lease.in_flight.pop(msg.task_id)
        q = lease.queue
        if msg.error is not None:
            error = self._task_error(msg.error)
            if spec.force_cancelled or spec.cancelled and isinstance(error, TaskCancelledError):
                self._fail_task(spec, TaskCancelledError(spec.name))
            elif self._retry_on(spec, error):
                spec.max_retries -= 1
                q.tasks.appendleft(spec)
                self._waiting[spec.task_id] = spec
            else:
                self._fail_task(spec, error)
        else:
            self._finish_task(spec, msg.results)
        self._pump(q)

    def _task_error(self, blob: bytes) -> BaseException:
        try:
            info = cloudpickle.loads(blob)
        except Exception as exc:
            return TaskError(RemoteErrorInfo(None, "Exception", f"(unreadable error: {exc})",
                                             "", "?", "", 0))
        if isinstance(info, RemoteErrorInfo):
            if isinstance(info.cause, TaskCancelledError):
                return info.cause
            return task_error(info)
        return info if isinstance(info, BaseException) else TaskError(info)

    def _retry_on(self, spec: TaskSpec, error: BaseException) -> bool:
        if spec.max_retries == 0 or spec.cancelled or not spec.retry_exceptions:
            return False
        if spec.retry_exceptions is True:
            return True
        cause = getattr(error, "cause", error)
        return isinstance(cause, spec.retry_exceptions)

    def _finish_task(self, spec: TaskSpec, results: list) -> None:
        self._release_deps(spec)
        for oid, value in zip(spec.return_ids, results):
            entry = self.objects.entries.get(oid)
            if entry is not None:
                self.objects.resolve(entry, value)
            elif value[0] == "s" and value[1] == self.node_id:
                self.store.delete(oid)  # nobody holds a ref to this result any more

    def _fail_task(self, spec: TaskSpec, error: BaseException | None) -> None:
        self._waiting.pop(spec.task_id, None)
        self._release_deps(spec)
        for oid in spec.return_ids:
            entry = self.objects.entries.get(oid)
            if entry is not None:
                self.objects.fail(entry, error or ObjectLostError("task failed"))

    def _release_deps(self, spec: TaskSpec) -> None:
        pinned, spec.pinned = spec.pinned, []
        for entry in pinned:
            self.objects.unpin(entry)
        spec.dep_refs = []

    def cancel(self, ref: ObjectRef, force: bool) -> None:
        """Loop only: cancel the task that produces ``ref`` (if this process submitted it)."""
        task_id = ref._id[:12]
        spec = self._waiting.get(task_id)
        if spec is not None:
            spec.cancelled = True
            for q in self._queues.values():
                if spec in q.tasks:
                    q.tasks.remove(spec)
            self._fail_task(spec, TaskCancelledError(spec.name))
            return
        lease = self._running.get(task_id)
        if lease is None:
            return  # finished already, or not ours
        spec = lease.in_flight[task_id]
        spec.cancelled = True
        if force:
            spec.force_cancelled = True
            if self.agent is not None:
                self.agent.send(P.KillWorker(lease.worker_id))
        else:
            lease.link.send(P.CancelTask(task_id))

    # --- messages a worker's core handles (delegated to its executor) -------------------
    def _on_push_task(self, link: Link, msg: P.PushTask) -> None:
        self.executor.push(link, msg)

    def _on_cancel_task(self, link: Link, msg: P.CancelTask) -> None:
        self.executor.cancel(msg.task_id)

    def _on_log_lines(self, link: Link, msg: P.LogLines) -> None:
        if self.on_log_lines is not None:
            self.on_log_lines(msg)

    # --- cluster information ------------------------------------------------------------
    async def cluster_state(self) -> list[dict]:
        await self.wait_ready()
        if self.head is None:
            raise RuntimeError("cluster state is only available to drivers")
        reply = await self.head.request(lambda r: P.GetClusterState(r))
        return reply.nodes


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
