"""The per-process runtime: owner of objects, submitter of tasks, peer of other cores.

Every driver and every worker runs one :class:`Core` on one event loop. It

* owns the refs its process creates (task returns, ``put``) in an :class:`ObjectTable`;
* submits tasks (:mod:`aray._tasks`) and actor calls (:mod:`aray._actor_calls`) straight to
  the workers that run them (no hop through the head), and collects their results and
  streams (:mod:`aray._streams`);
* serves other cores on its own socket: workers receive ``PushTask``/``CallActor`` here,
  owners answer ``GetObject`` for refs they lent out.

The work is done by components the core makes and hands what they use: borrowing
(:class:`~aray._borrowing.Borrowers`), fetching and reading values
(:class:`~aray._fetch.Fetcher`), streams (:class:`~aray._streams.Streams`), the task-event
feed (:class:`~aray._task_events.TaskEventReporter`); their ``_on_<Message>`` handlers are
dispatched by the core's :class:`~aray._dispatch.Dispatcher`.

Methods that are safe from any thread say so; everything else runs on :attr:`Core.loop`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

import cloudpickle

from . import _protocol as P
from ._actor_calls import ActorCall, ActorCaller
from ._borrowing import Borrowers
from ._dispatch import Dispatcher
from ._fetch import Fetcher
from ._link import CONTROL_TIMEOUT, Link, Server, bind_tcp, connect
from ._objects import ObjectEntry, ObjectTable, dump_error
from ._refs import ObjectRef, collect_refs, new_task_id, return_id
from ._runtime_context import current_task
from ._streams import ObjectRefGenerator, Streams
from ._task_events import TaskEventReporter
from ._tasks import INLINE_THRESHOLD, TaskSpec, TaskSubmitter
from .exceptions import (
    ActorDiedError,
    ObjectLostError,
    ObjectStoreFullError,
    OwnerDiedError,
    RemoteErrorInfo,
    TaskCancelledError,
    TaskError,
    task_error,
)
from .store._serialize import serialize
from .store.arena import MIN_SIZE as ARENA_MIN_SIZE
from .store.shm import ShmDirectory

log = logging.getLogger("aray")

class Core:
    """The runtime of one process (driver or worker), bound to one event loop."""

    def __init__(self, *, loop: asyncio.AbstractEventLoop, role: str, token: str,
                 session_dir: str, node_address: str, head_address: str = "",
                 store_dir: str, node_id: str = "", worker_id: str = "",
                 log_to_driver: bool = True, tcp_host: str = "",
                 client: bool = False) -> None:
        self.loop = loop
        self.role = role
        # a driver outside the cluster (aray://): no node of its own, so no object store;
        # its objects stay in its memory and others' are downloaded over the links
        self.client = client
        self.token = token
        self.session_dir = session_dir
        self.node_address = node_address
        self.head_address = head_address
        self.node_id = node_id
        self.worker_id = worker_id
        self.job_id = ""
        self.cluster_id = ""  # the cluster's id, as the head names it (set at start)
        self.namespace = ""  # a driver's init(namespace=...); "" lets the head choose
        self.log_to_driver = log_to_driver
        self.store = ShmDirectory(store_dir, os.path.join(session_dir, "spill"))
        self.store_capacity = 0  # told by the node agent; 0 until then (no check)
        # (the fetcher reads values; it is made once the table exists)
        self.objects = ObjectTable(loop, lambda e: self.fetcher.materialize(e),
                                   self._on_unused, lambda e: self.fetcher.prepare(e))
        self.objects.bind_thread()  # a core is always made on its loop's thread
        self.refs = self.objects.refs
        self.held_for_job: list = []  # refs pickled into actor constructor args
        # this core's server; known before it listens, so refs made early name their owner.
        # In a cluster of several nodes (tcp_host) other machines must reach it: TCP.
        self._tcp_socket = None
        if tcp_host:
            self._tcp_socket, self.address = bind_tcp(tcp_host)
        else:
            self.address = "unix:" + os.path.join(
                session_dir, "sockets", f"{role[0]}{os.getpid()}-{os.urandom(3).hex()}.sock")
        self.borrowers = Borrowers(self.objects, self.address, self.peer, self.spawn,
                                   self.delete_stored)
        self.cluster: Any = None  # the LocalCluster a driver started, if any
        self.dashboard_url = ""  # the cluster's dashboard, if it has one (drivers only)
        self.loop_thread: Any = None  # the private LoopThread of a sync init, if any
        self.ready = asyncio.Event()
        self.start_error: BaseException | None = None
        self.agent: Link | None = None
        self.head: Link | None = None
        # quiet: what a worker logs reaches its user's terminal, which strangers knocking
        # on its port must not fill
        self._server = Server(token, self._on_peer_hello, name=f"core[{role}]", quiet=True,
                              role="core")
        self._peers: dict[str, Link] = {}
        self._connecting: dict[str, asyncio.Future] = {}
        self.tasks = TaskSubmitter(self)
        self.fetcher = Fetcher(self, self.objects, self.store, loop, self.tasks.reconstruct)
        # what the public API reads values with (aio.get)
        self.materialize = self.fetcher.materialize
        self.fetch_entries = self.fetcher.fetch_entries
        self.task_events = TaskEventReporter(
            loop, self.spawn, self._send_task_events, self.tasks.waiting_count,
            self.tasks.pending_events, lambda: self._closing)
        self.actors = ActorCaller(self)
        self.streams = Streams(
            loop, self.objects, self.borrowers.accept_value, self.address,
            lambda t: self.tasks.link_running(t) or self.actors.link_running(t))
        self._head_dial: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.executor: Any = None  # the worker's task executor (set in worker processes)
        self.on_log_lines: Callable[[P.LogLines], None] | None = None
        self._blocked_depth = 0
        self._closing = False
        self._dispatch = Dispatcher(
            "core", self, self.borrowers, self.fetcher, self.streams)

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
            await self._server.start(self.address, self._tcp_socket)
            info = {"address": self.address, "log_to_driver": self.log_to_driver,
                    "namespace": self.namespace, "code_path": driver_code_path(),
                    "node_id": self.node_id}
            if self.role == "driver" and self.head_address:
                self.head = await self._dial(self.head_address, "driver", "", info)
                self.job_id = self.head.peer.info.get("job_id", "")
                info["job_id"] = self.job_id
            if self.client:  # the agent of the head's node serves it
                self.node_address = await self._head_node_agent()
            self.agent = await self._dial(self.node_address, self.role, self.worker_id, info)
            if not self.client:
                self.node_id = self.agent.peer.info.get("node_id", self.node_id)
                self.store_capacity = int(self.agent.peer.info.get("store_capacity", 0))
            self.agent.on_close.append(self._on_agent_lost)
            self.cluster_id = self.agent.peer.info.get("cluster_id", "")
        except BaseException as exc:
            self.start_error = exc
            raise
        finally:
            self.ready.set()

    async def _head_node_agent(self) -> str:
        assert self.head is not None
        nodes = (await self.head.request(lambda r: P.GetClusterState(r),
                                         timeout=CONTROL_TIMEOUT)).nodes
        alive = [n for n in nodes if n["Alive"]]
        if not alive:
            raise ConnectionError(f"the aray cluster at {self.head_address} has no node alive")
        return alive[0]["AgentAddress"]

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
        self.tasks.fail_queued(
            ConnectionError("the aray node agent is gone; the cluster has stopped"))
        if self.role == "worker":
            os._exit(1)  # a worker without its node agent has nothing left to do

    async def stop(self) -> None:
        # what this driver owned in the store, the node agent deletes once the link closes
        if self.role == "driver" and self.log_to_driver and self.agent is not None:
            try:  # what tasks printed just before shutdown still reaches the terminal
                async with asyncio.timeout(2):
                    await self.agent.request(lambda r: P.FlushLogs(r), timeout=None)
            except (TimeoutError, ConnectionError):
                pass
        self._closing = True
        for link in list(self._peers.values()):
            await link.aclose()
        for link in (self.agent, self.head):
            if link is not None:
                await link.aclose()
        await self._server.aclose()
        if self.client:  # its private scratch directory (off the loop: it may be big)
            await asyncio.to_thread(shutil.rmtree, self.session_dir, True)
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
                # job and code path: a node agent reached by spillback starts workers for
                # this job, which import its modules
                link = await self._dial(address, "core", "", {
                    "address": self.address, "job_id": self.job_id, "node_id": self.node_id,
                    "code_path": driver_code_path() if self.role == "driver" else ""})
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

    def _on_NodeDied(self, link: Link, msg: P.NodeDied) -> None:
        """The head declared a node dead: drop every link to its processes (a hung machine
        keeps its sockets open), so tasks retry elsewhere and actor calls wait for a restart."""
        if msg.node_id == self.node_id:
            return  # our own agent's link tells us, if it is so
        for peer in [*self._peers.values(), *self._server.links]:
            if peer.peer_node == msg.node_id:
                peer.abort(f"its node {msg.node_id[:12]} died: {msg.reason}")

    def _on_peer_closed(self, link: Link) -> None:
        for address, peer in list(self._peers.items()):
            if peer is link:
                del self._peers[address]
        self.tasks.on_link_closed(link)
        self.actors.on_link_closed(link)
        self.streams.on_link_closed(link)
        if self.executor is not None:
            self.executor.caller_gone(link)

    # --- objects -------------------------------------------------------------------------
    def entry_for(self, ref: ObjectRef) -> ObjectEntry:
        """The entry for ``ref``; a borrowed ref gets one that asks its owner. Loop only."""
        entry = self.objects.entries.get(ref._id)
        if entry is None and (ref._owner == self.address or not ref._owner):
            entry = self.objects.add(ref._id, owned=True)
            self.objects.fail(entry, ObjectLostError(
                f"object {ref.hex()} is gone: its owner released it, or it belongs to an "
                "earlier aray session"))
            return entry
        if entry is None:
            entry = self.borrowers.borrowed_entry(ref._id, ref._owner)
        # (read here first: most entries are owned or ready, and this is the hot path)
        if not (entry.owned or entry.ready) and self.objects.start_fetch(entry):
            self.spawn(self._fetch_from_owner(entry), name="fetch")
        return entry

    def foreign_ref(self, ref: ObjectRef, cluster: str) -> None:
        """Loop only: ``ref`` was unpickled here but made by another cluster (``cluster``):
        an earlier aray session, most often. Its value cannot be had: say so at once."""
        if ref._id in self.objects.entries:
            return
        entry = self.objects.add(ref._id, owned=False, owner=ref._owner)
        self.objects.fail(entry, ObjectLostError(
            f"object {ref.hex()} belongs to another aray cluster ({cluster}), most likely an "
            "earlier session: refs do not outlive the cluster that made them. Put the value "
            "again in this session, or keep that cluster running while its refs are used."))

    async def _fetch_from_owner(self, entry: ObjectEntry) -> None:
        try:
            link = await self.peer(entry.owner)
            # answered once the object is ready, however long its task runs; if the
            # owner's node dies, the link closes (NodeDied) and this raises
            reply = await link.request(lambda r: P.GetObject(r, entry.oid), timeout=None)
        except (ConnectionError, OSError):
            self.objects.fail(entry, OwnerDiedError(
                f"the owner of object {entry.oid.hex()} ({entry.owner}) has exited, so the "
                "object is lost (or the ref belongs to an earlier aray session). Keep the "
                "process that created a ref alive while others use it."))
            return
        self.objects.resolve(entry, reply.value)

    def _on_GetObject(self, link: Link, msg: P.GetObject) -> None:
        entry = self.objects.entries.get(msg.object_id)
        if entry is None:
            err = ObjectLostError(f"object {msg.object_id.hex()} was already freed by its owner")
            link.send(P.ObjectReply(msg.req_id, ["e", dump_error(err)]))
            return

        def reply(e: ObjectEntry) -> None:
            if not link.closed:
                link.send(P.ObjectReply(msg.req_id, e.resolved_value()))

        self.objects.when_ready(entry, reply)

    def _on_unused(self, entry: ObjectEntry) -> None:
        self.fetcher.forget(entry.oid)
        self.tasks.lineage.pop(entry.oid, None)
        if entry.owned and entry.location is not None:
            self.delete_stored(entry.oid, entry.location[0])
        self.borrowers.on_unused(entry)

    def store_value(self, oid: bytes, ser, owner: str = "") -> list:
        """Any thread: write a serialized value into this node's store and tell the node
        agent (which spills older objects if memory is over capacity); returns its resolved
        value. Raises ObjectStoreFullError for an object larger than the whole store."""
        size = ser.total_size
        if self.store_capacity and size > self.store_capacity:
            raise ObjectStoreFullError(
                f"an object of {size / 2**20:.1f} MiB does not fit in this node's object store "
                f"of {self.store_capacity / 2**20:.1f} MiB, even empty. Start aray with a "
                "larger object_store_memory, or split the object into smaller pieces.")
        offset = self._arena_region(oid, size)
        try:
            if offset >= 0:
                self.store.arena.write(offset, oid, ser)
                in_memory = True
            else:
                in_memory = self.store.write(oid, ser)
        except OSError as exc:
            raise ObjectStoreFullError(
                f"an object of {size / 2**20:.1f} MiB could not be stored in shared memory "
                f"nor spilled to disk: {exc}") from None
        self.call_soon(self.tell_agent,
                       P.ObjectSealed(oid, size, not in_memory, owner or self.address, offset))
        return ["s", self.node_id, size, offset]

    def _arena_region(self, oid: bytes, size: int) -> int:
        """Any thread: an arena region for a large object, or -1 for a file of its own.

        Asking the agent is a round trip, so only objects worth it ask, and never from the
        loop thread (which must not block on its own link).
        """
        agent = self.agent
        if (size < ARENA_MIN_SIZE or agent is None or agent.closed or not self.store_capacity
                or self.objects.on_loop_thread()):
            return -1
        reply = asyncio.run_coroutine_threadsafe(
            agent.request(lambda r: P.AllocObject(r, oid, size), timeout=CONTROL_TIMEOUT),
            self.loop)
        try:
            return reply.result().offset
        except Exception:  # the agent went away: a file still works
            return -1

    def delete_stored(self, oid: bytes, node_id: str) -> None:
        """Loop only: have the node agents remove an object this process owns from the store
        of ``node_id`` (its file or arena region, any spilled copy, copies on other nodes)."""
        self.tell_agent(P.ObjectsDeleted([oid], "" if node_id == self.node_id else node_id))

    def tell_agent(self, msg) -> None:
        """Loop only: send a message to the node agent if the link is up."""
        if self.agent is not None and not self.agent.closed:
            self.agent.send(msg)

    async def store_stats(self) -> tuple[dict, list]:
        """The node store's figures and its objects (from the node agent)."""
        await self.wait_ready()
        assert self.agent is not None
        reply = await self.agent.request(lambda r: P.GetStoreStats(r), timeout=CONTROL_TIMEOUT)
        return reply.stats, reply.objects

    def ready_values(self, refs: list[ObjectRef]) -> list | None:
        """Any thread: the values of ``refs`` if every one is resolved here already (else
        None), without a hop to the loop. Resolved entries never change, so reading them
        from another thread is safe."""
        entries = self.objects.entries
        found = []
        for ref in refs:
            entry = entries.get(ref._id)
            if entry is None or not entry.ready or self.fetcher.needs_fetch(entry):
                return None
            found.append(entry)
        return [self.materialize(e) for e in found]

    def is_ready(self, ref: ObjectRef) -> bool:
        """Any thread."""
        entry = self.objects.entries.get(ref._id)
        return entry is not None and entry.ready

    def future_for(self, ref: ObjectRef, loop, fresh: bool = False) -> asyncio.Future:
        """Any thread: the asyncio future through which ``loop`` awaits ``ref``."""
        fut = self.objects.future_for(ref._id, loop, lambda: self.entry_for(ref), fresh)
        if (fresh and self.role == "worker" and loop is self.loop and not fut.done()
                and current_task.get() is not None):
            # an async task awaiting another task's result lends its CPU meanwhile, as a
            # blocking get does: nested async tasks cannot deadlock a small node
            self._block_enter()
            fut.add_done_callback(lambda _f: self._block_exit())
        return fut

    def concurrent_future(self, ref: ObjectRef):
        """Any thread: a concurrent.futures.Future for the value of ``ref``."""
        return self.objects.concurrent_future(lambda: self.entry_for(ref))

    def put_serialized(self, ser, contained: list = ()) -> ObjectRef:
        """Any thread: store an already serialized value (which pickled the refs
        ``contained``); returns the owned ref."""
        oid = return_id(new_task_id(), 0)
        if ser.total_size > INLINE_THRESHOLD and not self.client:
            value = self.store_value(oid, ser)
        else:
            value = ["v", ser.to_bytes()]
        ref = ObjectRef(oid, self.address)
        self.call_soon(self._register_put, oid, value, list(contained))
        return ref

    def put(self, value: Any) -> ObjectRef:
        """Any thread: serialize ``value`` here and own it."""
        if isinstance(value, ObjectRef):
            raise TypeError("aray.put() of an ObjectRef is not allowed; pass the ref itself")
        try:
            ser, contained = collect_refs(serialize, value)
        except Exception as exc:
            raise TypeError(
                f"aray.put(): a {type(value).__name__} cannot be pickled: {exc}") from exc
        return self.put_serialized(ser, contained)

    def _register_put(self, oid: bytes, value: list, contained: list) -> None:
        entry = self.objects.add(oid, owned=True)
        self.objects.resolve(entry, value)
        self.objects.hold_refs(entry, contained)

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
        except TimeoutError:
            pass
        finally:
            if blocked:
                self._block_exit()
            for e in pending:
                self.objects.forget_callback(e, one_ready)

    def _block_enter(self) -> bool:
        """A worker waiting in a sync get lends its CPU back to the node (see ARCHITECTURE)."""
        if self.role != "worker":
            return False
        self._blocked_depth += 1
        if self._blocked_depth == 1:
            self.tell_agent(P.WorkerBlocked(self.worker_id))
        return True

    def _block_exit(self) -> None:
        self._blocked_depth -= 1
        if self._blocked_depth == 0:
            self.tell_agent(P.WorkerUnblocked(self.worker_id))

    # --- tasks, actor calls and their results ---------------------------------------------
    def submit(self, spec: TaskSpec) -> list[ObjectRef] | ObjectRefGenerator:
        """Any thread: accept a task and return its refs (or its stream) at once."""
        if spec.streaming:
            self.call_soon(self.streams.open, spec.task_id)
            self.call_soon(self.tasks.accept, spec)
            return ObjectRefGenerator(self, spec.task_id)
        refs = [ObjectRef(oid, self.address) for oid in spec.return_ids]
        self.call_soon(self.tasks.accept, spec)
        return refs

    def submit_actor_call(self, actor_id: str,
                          call: ActorCall) -> list[ObjectRef] | ObjectRefGenerator:
        """Any thread: queue a method call for an actor; returns its refs (or stream)."""
        if call.num_returns < 0:
            self.call_soon(self.streams.open, call.task_id)
            self.call_soon(self.actors.submit, actor_id, call)
            return ObjectRefGenerator(self, call.task_id)
        refs = [ObjectRef(oid, self.address) for oid in call.return_ids]
        self.call_soon(self.actors.submit, actor_id, call)
        return refs

    def _on_TaskFinished(self, link: Link, msg: P.TaskFinished) -> None:
        if not self.tasks.on_task_finished(msg):
            self.actors.on_task_finished(msg)

    def current_job_id(self) -> str:
        """Any thread: the job of the running task, or this driver's job."""
        task = current_task.get()
        return task.job_id if task is not None and task.job_id else self.job_id

    def task_error(self, blob: bytes) -> BaseException:
        """The exception a task's pickled error stands for (a TaskError in most cases)."""
        try:
            info = cloudpickle.loads(blob)
        except Exception as exc:
            return TaskError(RemoteErrorInfo(None, "Exception", f"(unreadable error: {exc})",
                                             "", "?", "", 0))
        if isinstance(info, RemoteErrorInfo):
            if isinstance(info.cause, (TaskCancelledError, ActorDiedError)):
                return info.cause
            return task_error(info)
        return info if isinstance(info, BaseException) else TaskError(info)

    def finish_returns(self, return_ids: list[bytes], results: list) -> None:
        for oid, value in zip(return_ids, results):
            self.borrowers.accept_value(oid, value)

    def fail_returns(self, return_ids: list[bytes], error: BaseException | None) -> None:
        for oid in return_ids:
            entry = self.objects.entries.get(oid)
            if entry is not None:
                self.objects.fail(entry, error or ObjectLostError("task failed"))

    def cancel(self, ref: ObjectRef, force: bool, recursive: bool = True) -> None:
        """Loop only: cancel the task or actor call that produces ``ref``, if it is ours."""
        task_id = ref._id[:12]
        if not self.tasks.cancel(task_id, force, recursive):
            self.actors.cancel(task_id)

    def _on_LeaseInfeasible(self, link: Link, msg: P.LeaseInfeasible) -> None:
        log.warning(msg.message)

    def _on_Warn(self, link: Link, msg: P.Warn) -> None:
        log.warning(msg.message)

    async def head_link(self) -> Link:
        """The link to the head (drivers have one; workers dial it when first needed)."""
        await self.wait_ready()
        if self.head is None or self.head.closed:
            if self._head_dial is None or self._head_dial.done() and (
                    self._head_dial.exception() is not None):
                self._head_dial = self.loop.create_task(
                    self._dial(self.head_address, "core", self.worker_id, {}))
            self.head = await asyncio.shield(self._head_dial)
        return self.head

    # --- messages a worker's core handles (delegated to its executor) -------------------
    def _on_PushTask(self, link: Link, msg: P.PushTask) -> None:
        self.executor.push(link, msg)

    def _on_CancelTask(self, link: Link, msg: P.CancelTask) -> None:
        actor = getattr(self.executor, "actor", None)
        (actor or self.executor).cancel(msg.task_id)
        if msg.recursive:
            self.tasks.cancel_children(msg.task_id)

    def _on_AssignJob(self, link: Link, msg: P.AssignJob) -> None:
        self.job_id = msg.job_id
        if msg.code_path and msg.code_path not in sys.path:
            sys.path.append(msg.code_path)  # the job's own modules, where its driver has them
        link.send(P.JobAssigned(msg.req_id))

    def _on_CreateActor(self, link: Link, msg: P.CreateActor) -> None:
        self.executor.create_actor(link, msg)

    def _on_CallActor(self, link: Link, msg: P.CallActor) -> None:
        self.executor.call_actor(link, msg)

    def _on_LogLines(self, link: Link, msg: P.LogLines) -> None:
        if self.on_log_lines is not None and self.log_to_driver:
            self.on_log_lines(msg)

    # --- task events (the state API's task table) -----------------------------------------
    async def _send_task_events(self, events: list) -> None:
        source = ({"node_id": self.node_id, "worker_pid": os.getpid()}
                  if self.role == "worker" else {})
        await self._send_to_head(P.TaskEvents(events, source))

    async def _send_to_head(self, msg) -> None:
        try:
            (await self.head_link()).send(msg)
        except (ConnectionError, OSError):
            pass  # the head is gone: so is the table

    # --- cluster information ------------------------------------------------------------
    async def cluster_state(self) -> list[dict]:
        head = await self.head_link()
        reply = await head.request(lambda r: P.GetClusterState(r), timeout=CONTROL_TIMEOUT)
        return reply.nodes


def driver_code_path() -> str:
    """Where the driver's own modules are: its script's directory, or the working one."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return os.path.dirname(os.path.abspath(path)) if path else os.getcwd()

