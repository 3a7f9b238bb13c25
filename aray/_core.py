"""The per-process runtime: owner of objects, submitter of tasks, peer of other cores.

Every driver and every worker runs one :class:`Core` on one event loop. It

* owns the refs its process creates (task returns, ``put``) in an :class:`ObjectTable`;
* submits tasks (:mod:`aray._tasks`) and actor calls (:mod:`aray._actor_calls`) straight to
  the workers that run them (no hop through the head), and collects their results and
  streams (:mod:`aray._streams`);
* serves other cores on its own socket: workers receive ``PushTask``/``CallActor`` here,
  owners answer ``GetObject`` for refs they lent out.

The work is done by components the core makes and hands what they use: ownership
(:class:`~aray._ownership.Ownership`), waits (:class:`~aray._waits.Waits`), borrowing
(:class:`~aray._borrowing.Borrowers`), fetching and reading values
(:class:`~aray._fetch.Fetcher`), streams (:class:`~aray._streams.Streams`), cancels
(:class:`~aray._cancels.Cancels`), the task-event feed
(:class:`~aray._task_events.TaskEventReporter`), the links to other processes
(:class:`~aray._peer_links.PeerLinks`); their ``_on_<Message>`` handlers are dispatched by
the core's :class:`~aray._dispatch.Dispatcher`. The core itself keeps the process's
identity, its links to the node agent and the head, and the order of start and stop.

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

from . import _protocol as P
from ._actor_calls import ActorCall, ActorCaller
from ._borrowing import Borrowers
from ._cancels import Cancels
from ._dispatch import Dispatcher
from ._fetch import Fetcher
from ._head_link import HeadLink
from ._link import CONTROL_TIMEOUT, Link, bind_tcp
from ._objects import ObjectEntry, ObjectTable
from ._ownership import Ownership
from ._peer_links import PeerLinks
from ._portal import off_loop
from ._refs import ObjectRef
from ._runtime_context import current_task
from ._runtime_env_client import RuntimeEnvs
from ._streams import ObjectRefGenerator, Streams
from ._task_events import TaskEventReporter
from ._tasks import TaskSpec, TaskSubmitter
from ._waits import CpuLending, Waits
from .store.shm import ShmDirectory

log = logging.getLogger("aray")



class Core:
    """The runtime of one process (driver or worker), bound to one event loop."""

    # (made in _make_components; named here because the table's callbacks refer to them)
    fetcher: Fetcher
    ownership: Ownership

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
        self.held_for_job: list = []  # refs pickled into actor constructor args
        # this core's server; known before it listens, so refs made early name their owner.
        # In a cluster of several nodes (tcp_host) other machines must reach it: TCP.
        self._tcp_socket = None
        if tcp_host:
            self._tcp_socket, self.address = bind_tcp(tcp_host)
        else:
            self.address = "unix:" + os.path.join(
                session_dir, "sockets", f"{role[0]}{os.getpid()}-{os.urandom(3).hex()}.sock")
        self.cluster: Any = None  # the LocalCluster a driver started, if any
        self.dashboard_url = ""  # the cluster's dashboard, if it has one (drivers only)
        self.cluster_address = ""  # what init(address=...) takes to reach it (drivers only)
        self.loop_thread: Any = None  # the private LoopThread of a sync init, if any
        self.ready = asyncio.Event()
        self.start_error: BaseException | None = None
        self.agent: Link | None = None
        self._tasks: set[asyncio.Task] = set()
        self.executor: Any = None  # the worker's task executor (see serve)
        self.on_log_lines: Callable[[P.LogLines], None] | None = None
        self._closing = False
        self._make_components()

    def _make_components(self) -> None:
        """The components that do the work, each handed what it uses (see the module)."""
        loop = self.loop
        self.links = PeerLinks(loop, self.token, self.role, self.spawn, self._on_peer_closed,
                               self._dial_info)
        self.head_links = HeadLink(self.links, self.head_address, self.role, self.worker_id,
                                   lambda: self.job_id, self.spawn, lambda: self._closing)
        self.peer = self.links.peer
        self.objects = ObjectTable(loop, lambda e: self.fetcher.materialize(e),
                                   lambda e: self.ownership.on_unused(e),
                                   lambda e: self.fetcher.prepare(e))
        self.objects.bind_thread()  # a core is always made on its loop's thread
        self.refs = self.objects.refs
        self.borrowers = Borrowers(self.objects, self.address, self.peer, self.spawn,
                                   lambda oid, node: self.ownership.delete_stored(oid, node))
        self.tasks = TaskSubmitter(self)
        self.fetcher = Fetcher(self, self.objects, self.store, loop, self.tasks.reconstruct)
        self.ownership = Ownership(self, self.objects, self.borrowers, self.store,
                                   self._forget)
        self.waits = Waits(loop, self.objects, self.fetcher, self.ownership.entry_for,
                           CpuLending(self.role, self.worker_id, self.tell_agent))
        self.task_events = TaskEventReporter(
            loop, self.spawn, self._send_task_events, self.tasks.waiting_count,
            self.tasks.pending_events, lambda: self._closing)
        self.actors = ActorCaller(self)
        self.cancels = Cancels(self.address, self.peer, self.spawn, self.tasks.cancel,
                               self.actors.cancel)
        self.runtime_envs = RuntimeEnvs(loop, self.head_link,
                                        os.path.join(self.session_dir, "runtime_resources"))
        self.streams = Streams(
            loop, self.objects, self.borrowers.accept_value, self.address,
            lambda t: self.tasks.link_running(t) or self.actors.link_running(t))
        self._dispatch = self.links.dispatch = Dispatcher(
            "core", self, self.ownership, self.borrowers, self.fetcher, self.streams,
            self.tasks, self.tasks.leases, self.cancels)

    def _forget(self, entry: ObjectEntry) -> None:
        """An entry nobody uses any more: what the fetcher and the lineage know of it goes."""
        self.fetcher.forget(entry.oid)
        self.tasks.lineage.pop(entry.oid, None)
        self.actors.lifetime_ended(entry.oid)

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
            await self.links.listen(self.address, self._tcp_socket)
            info = {"address": self.address, "log_to_driver": self.log_to_driver,
                    "namespace": self.namespace, "code_paths": driver_code_paths(),
                    # a job's entrypoint (aray job submit) names its submission
                    "submission_id": os.environ.get("ARAY_SUBMISSION_ID", ""),
                    "node_id": self.node_id}
            if self.role == "driver" and self.head_address:
                head = await self.head_links.start_driver(info)
                self.job_id = head.peer.info.get("job_id", "")
                info["job_id"] = self.job_id
            if self.client:  # the agent of the head's node serves it
                self.node_address = await self._head_node_agent()
            self.agent = await self.links.dial(self.node_address, self.role, self.worker_id,
                                               info)
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
        await self.links.aclose(self.agent, self.head)
        if self.client:  # its private scratch directory (off the loop: it may be big)
            await off_loop(shutil.rmtree, self.session_dir, True)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)

    # --- links to other cores -----------------------------------------------------------
    def _dial_info(self) -> dict:
        # job and code paths: a node agent reached by spillback starts workers for this
        # job, which import its modules
        return {"address": self.address, "job_id": self.job_id, "node_id": self.node_id,
                "code_paths": driver_code_paths() if self.role == "driver" else []}

    def _on_NodeDied(self, link: Link, msg: P.NodeDied) -> None:
        """The head declared a node dead: drop every link to its processes, so tasks retry
        elsewhere and actor calls wait for a restart."""
        if msg.node_id != self.node_id:  # (our own agent's link tells us, if it is so)
            self.links.abort_node(msg.node_id, msg.reason)

    def _on_peer_closed(self, link: Link) -> None:
        self.tasks.on_link_closed(link)
        self.actors.on_link_closed(link)
        self.streams.on_link_closed(link)
        if self.executor is not None:
            self.executor.caller_gone(link)

    # --- the node agent ------------------------------------------------------------------
    def tell_agent(self, msg) -> None:
        """Loop only: send a message to the node agent if the link is up."""
        if self.agent is not None and not self.agent.closed:
            self.agent.send(msg)

    def call_soon(self, fn, *args) -> None:
        """Any thread: run ``fn(*args)`` on the loop, in order with other such calls."""
        if self.objects.on_loop_thread():
            fn(*args)
        else:
            self.objects.inbox.post(fn, *args)

    async def store_stats(self) -> tuple[dict, list]:
        """The node store's figures and its objects (from the node agent)."""
        await self.wait_ready()
        assert self.agent is not None
        reply = await self.agent.request(lambda r: P.GetStoreStats(r), timeout=CONTROL_TIMEOUT)
        return reply.stats, reply.objects

    # --- tasks, actor calls and their results ---------------------------------------------
    def submit(self, spec: TaskSpec) -> list[ObjectRef] | ObjectRefGenerator:
        """Any thread: accept a task and return its refs (or its stream) at once."""
        if spec.streaming:
            self.call_soon(self.streams.open, spec.task_id)
            self.call_soon(self.tasks.accept, spec)
            return ObjectRefGenerator(self, spec.task_id)
        refs: list[ObjectRef] = [ObjectRef(oid, self.address) for oid in spec.return_ids]
        self.call_soon(self.tasks.accept, spec)
        return refs

    def submit_actor_call(self, actor_id: str,
                          call: ActorCall) -> list[ObjectRef] | ObjectRefGenerator:
        """Any thread: queue a method call for an actor; returns its refs (or stream)."""
        if call.num_returns < 0:
            self.call_soon(self.streams.open, call.task_id)
            self.call_soon(self.actors.submit, actor_id, call)
            return ObjectRefGenerator(self, call.task_id)
        refs: list[ObjectRef] = [ObjectRef(oid, self.address) for oid in call.return_ids]
        self.call_soon(self.actors.submit, actor_id, call)
        return refs

    def _on_TaskFinished(self, link: Link, msg: P.TaskFinished) -> None:
        if not self.tasks.on_task_finished(msg):
            self.actors.on_task_finished(msg)

    def current_job_id(self) -> str:
        """Any thread: the job of the running task, or this driver's job."""
        task = current_task.get()
        return task.job_id if task is not None and task.job_id else self.job_id

    def _on_Warn(self, link: Link, msg: P.Warn) -> None:
        log.warning(msg.message)

    async def head_link(self) -> Link:
        """The link to the head (see :class:`~aray._head_link.HeadLink`)."""
        await self.wait_ready()
        return await self.head_links.get()

    @property
    def head(self) -> Link | None:
        """The link to the head, if one was dialled (it may have closed since)."""
        return self.head_links.link

    # --- a worker's tasks ------------------------------------------------------------------
    def serve(self, executor: Any) -> None:
        """In a worker: run the tasks and actor calls pushed here on ``executor``, whose
        ``_on_<Message>`` methods handle ``PushTask``, ``CreateActor``, ``CallActor``..."""
        self.executor = executor
        self._dispatch.add(executor)

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


#: bytes of the driver's path entries passed on to its workers (see driver_code_paths)
CODE_PATHS_MAX = 2048


def driver_code_paths() -> list[str]:
    """Where the driver's modules are, for its workers' ``sys.path``: its script's
    directory (or the working one), then its own ``sys.path`` as Ray passes it, so that a
    module next to a test file that pytest put on the path imports in tasks too.

    Example:
        >>> import os, sys
        >>> paths = driver_code_paths()
        >>> all(os.path.isabs(p) for p in paths) and len(paths) == len(set(paths))
        True
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    first = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    # the interpreter's own folders (standard library, site-packages and what their .pth
    # files add) are on every worker's path already
    own = tuple(os.path.join(p, "") for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    found = [first, *(os.path.abspath(p or os.curdir) for p in sys.path)]  # "": the cwd
    paths, size = [], 0
    for p in dict.fromkeys(found):
        if os.path.join(p, "").startswith(own) or not os.path.exists(p):
            continue
        size += len(p.encode()) + 1
        if size > CODE_PATHS_MAX:  # they travel in the Hello of a link, which is bounded
            log.warning("the driver's sys.path is too long to pass on: its workers do not "
                        "get %s and later entries", p)
            break
        paths.append(p)
    return paths

