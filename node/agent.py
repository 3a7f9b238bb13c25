"""The node agent: one per machine, the shell that wires the node's components to links.

Callers (drivers and workers) ask for a lease per resource shape; the agent grants an idle
worker when the node's resources allow (starting one if needed), sends the request back to
another node (spillback) or keeps it queued, and warns the caller once when no node of the
cluster could ever satisfy it. Tasks then flow from the caller straight to the leased
worker; the agent is not on that path.

The decisions are plain code; the agent turns messages into their events and carries out
what comes back::

    lease messages --> Leasing._on_<Message> --> LeaseScheduler.handle(event)
                                                           |  instructions
    links, WorkerTable (processes) <----- Leasing <--------+

ObjectService, Transfers and LogForwarder handle their own messages.

See docs/design.md ("The node agent") for the components and what flows between them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import deque
from typing import cast

from aray import _protocol as P
from aray._dispatch import Dispatcher
from aray._link import Link, Server, connect
from aray._periodic import every

from . import lease_events as E
from .entrypoints import Entrypoints
from .labels import node_labels
from .lease_scheduler import LeaseScheduler, WorkerState
from .leasing import Leasing
from .log_forwarding import LogForwarder
from .objects import ObjectService
from .transfers import Transfers
from .workers import WorkerHandle, WorkerTable

log = logging.getLogger("aray.node")


class NodeAgent:
    """The node agent service: a server for callers and workers, a link to the head.

    Examples:
        >>> agent = NodeAgent(token="t", session_dir="/tmp/s", store_dir="/dev/shm/x",
        ...                   resources={"CPU": 2}, head_address="unix:///tmp/s/head.sock")
        >>> agent.leases.pool.total
        {'CPU': 2.0}
    """

    def __init__(self, *, token: str, session_dir: str, store_dir: str, resources: dict,
                 head_address: str, ip: str = "127.0.0.1", node_id: str | None = None,
                 worker_target: str = "aray._worker:main",
                 preload: tuple[str, ...] = ("aray._worker",), prestart: int | None = None,
                 shared: bool = False, tcp_host: str = "", labels: dict | None = None,
                 tcp_port: int = 0, head_reconnect_timeout: float = 60.0) -> None:
        self.node_id = node_id or uuid.uuid4().hex
        #: its labels: aray's (ray.io/node-id ...) and its own (``labels``)
        self.labels = node_labels(self.node_id, resources, labels)
        self.token = token
        self.session_dir = session_dir
        self.store_dir = store_dir
        self.ip = ip
        self.head_address = head_address
        #: how long the agent waits for a fault-tolerant head (one with storage) that went
        #: away to come back, before it stops
        self.head_reconnect_timeout = head_reconnect_timeout
        if prestart is None:
            # a cluster that serves many jobs (aray start) keeps a worker per CPU ready; the
            # one aray.init() starts for a program begins with one and adds them on demand
            cpus = int(resources.get("CPU", 1))
            prestart = cpus if shared else min(cpus, 1)
        self.prestart = prestart
        self.shared = shared  # serves many jobs (aray start): keep fresh workers ready
        self.leases = LeaseScheduler(resources, prestart=prestart, shared=shared,
                                     labels=self.labels)
        # in a cluster of several nodes: the host this node's agent and workers listen on
        # (TCP), so that processes of other nodes reach them
        self.tcp_host = tcp_host
        self.tcp_port = tcp_port  # and its port there (0: any free one)
        self.public_address = ""  # the agent's TCP address in such a cluster
        self.stopped = asyncio.Event()
        self.server = Server(token, self._on_hello, name="node", role="node")
        self.drivers: dict[Link, dict] = {}  # driver link -> its Hello info
        self.code_paths: dict[str, list] = {}  # job id -> where its driver's modules are
        self.head: Link | None = None
        self.cluster_id = ""  # the head's name for the cluster (see Head.cluster_id)
        self.address = ""
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        logs_dir = os.path.join(session_dir, "logs")
        self.workers = WorkerTable(worker_target, list(preload), {}, logs_dir, self._spawn,
                                   self._on_worker_exit)
        self.objects = ObjectService(store_dir, session_dir,
                                     int(resources.get("object_store_memory", 0)),
                                     self._spawn, self._describe_owner)
        self.transfers = Transfers(self.objects, self._hello(), self._address_of, self._spawn)
        self.logs = LogForwarder(logs_dir, self.drivers, lambda: self.workers.handles.values(),
                                 self.workers.pids, lambda: self.head,
                                 lambda: bool(self.leases.view.others), self._spawn)
        self.leasing = Leasing(self.leases, self.workers, self.node_id, self.code_paths,
                               lambda: self.head, self._spawn)
        self.entrypoints = Entrypoints(session_dir, lambda: self.head, self.leasing.feed,
                                       self._spawn)
        self._dispatch = Dispatcher("node", self, self.leasing, self.objects, self.transfers,
                                    self.logs, self.entrypoints)
        self.transfers.dispatch = self._dispatch

    # --- lifecycle -----------------------------------------------------------------------
    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _hello(self) -> P.Hello:
        return P.Hello(P.PROTOCOL_VERSION, self.token, "node", self.node_id, os.getpid(), {})

    async def start(self, address: str) -> str:
        """Listen at ``address``, register with the head and start the first workers;
        returns the address callers and workers use."""
        os.makedirs(os.path.join(self.session_dir, "logs"), exist_ok=True)
        self.objects.open()
        self.address = await self.server.start(address)
        if self.tcp_host:
            self.public_address = await self.server.listen(
                f"tcp://{self.tcp_host}:{self.tcp_port}")
        self.workers.config.update(
            token=self.token, session_dir=self.session_dir, node_address=self.address,
            head_address=self.head_address, store_dir=self.store_dir, node_id=self.node_id,
            tcp_host=self.tcp_host)
        # the template process imports the worker module while we connect to the head
        self._spawn(self.workers.warm_up(), "warm up")
        head = await self._connect_head()
        self.leasing.feed(E.NodeStarted(self.prestart))
        self._spawn(self.logs.run(), "log reader")
        self._spawn(every(head.peer.info.get("heartbeat_interval", 1.0),
                          self._send_heartbeat, name="heartbeat", log=log), "heartbeat")
        return self.address

    async def _connect_head(self) -> Link:
        """Dial the head and register: with what this node holds, when it is a restarted
        head that this node comes back to (after what it was told meanwhile)."""
        head = await connect(self.head_address, self._hello(), name="node->head")
        head.on_message = self._dispatch
        head.on_close.append(self._on_head_lost)
        told: list = list(self.head.messages) if isinstance(self.head, HeadOutbox) else []
        self.head = head
        self.cluster_id = head.peer.info.get("cluster_id", "")
        self._spawn(head.run(), "head link")
        for msg in told:  # (an actor that died meanwhile: before the node says what it has)
            head.send(msg)
        actors = [[h.actor_id, h.worker_id, h.address, h.pid]
                  for h in self.workers.handles.values() if h.actor_id and h.address]
        head.send(P.RegisterNode(
            self.node_id, self.public_address or self.address, self.ip, self.leases.pool.total,
            {"machine": machine_id(), "pid": os.getpid(), "session_dir": self.session_dir},
            self.labels, actors, [list(key) for key in self.leases.pools.bundles],
            self.entrypoints.held()))
        head.send(P.NodeResourcesChanged(self.node_id, dict(self.leases.pool.available)))
        return head

    async def _reconnect_head(self) -> None:
        """Dial the head again, backing off, until it is back or the time is up."""
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + self.head_reconnect_timeout, 0.1
        while not self._closing and loop.time() < deadline:
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            try:
                await self._connect_head()
            except (OSError, ConnectionError) as exc:
                delay = min(delay * 2, 2.0)
                log.debug("the head is not back yet: %s", exc)
                continue
            log.warning("back in the cluster: the head at %s is up again", self.head_address)
            return
        if not self._closing:
            log.error("the head did not come back within %g s; this node agent stops",
                      self.head_reconnect_timeout)
            await self.aclose()

    def _send_heartbeat(self) -> None:
        if self.head is not None:
            self.head.send_if_open(P.Heartbeat(self.node_id, self._status()))

    def _status(self) -> dict:
        """What ``aray status`` shows of this node beyond its resources."""
        return {"store": self.objects.accounts.stats(), "pending": self.leases.pending(),
                "host": host_stats()}

    def _on_head_lost(self, link: Link) -> None:
        if self._closing:
            return
        if link.peer is not None and link.peer.info.get("fault_tolerant") \
                and self.head_reconnect_timeout > 0:
            log.warning("lost the link to the head; waiting up to %g s for it to come back",
                        self.head_reconnect_timeout)
            self.head = cast(Link, HeadOutbox())  # what the agent's parts tell it, kept
            self._spawn(self._reconnect_head(), "reconnect to the head")
            return
        log.error("lost the link to the head; this node agent stops")
        self._spawn(self.aclose(), "stop")

    async def aclose(self) -> None:
        """Stop the workers, the server and the head link; cancel the agent's tasks."""
        if self._closing:
            return
        self._closing = self.leasing.closed = True
        await self.entrypoints.aclose()
        await self.workers.aclose()
        await self.server.aclose()
        if self.head is not None:
            await self.head.aclose()
        self.objects.close()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        self.stopped.set()

    # --- links ---------------------------------------------------------------------------
    def _on_hello(self, link: Link, hello: P.Hello) -> dict:
        link.on_message = self._dispatch
        if hello.role == "worker":
            handle = self.workers.handles.get(hello.ident)
            if handle is None:
                raise ConnectionError(f"unknown worker {hello.ident}")
            handle.link = link
            link.on_close.append(lambda _l: self._on_worker_link_lost(handle))
        else:
            if hello.role == "driver":
                self.drivers[link] = dict(hello.info)
            if hello.info.get("job_id") and hello.info.get("code_paths"):
                self.code_paths.setdefault(hello.info["job_id"], list(hello.info["code_paths"]))
            link.on_close.append(self._on_caller_gone)
        return {"node_id": self.node_id, "store_dir": self.store_dir,
                "session_dir": self.session_dir,
                "store_capacity": self.objects.accounts.capacity, "cluster_id": self.cluster_id}

    def _address_of(self, node_id: str) -> str | None:
        return next((n[1] for n in self.leases.view.others if n[0] == node_id), None)

    # --- workers -------------------------------------------------------------------------
    def _alive(self, worker_id: str) -> bool:
        slot = self.leases.workers.get(worker_id)
        return slot is not None and slot.state is not WorkerState.DEAD

    def _on_WorkerStarted(self, link: Link, msg: P.WorkerStarted) -> None:
        if msg.worker_id not in self.workers.handles or not self._alive(msg.worker_id):
            return
        self.workers.started(msg.worker_id, msg.address, msg.pid)
        self.leasing.feed(E.WorkerStarted(msg.worker_id))

    def _on_worker_exit(self, worker_id: str, code: int | None) -> None:
        handle = self.workers.handles.get(worker_id)
        if handle is None:
            return
        if not self._closing and self._alive(worker_id):
            log.info("worker %s (pid %s) exited with code %s", worker_id, handle.pid, code)
        self.logs.worker_exited(handle)  # its last words
        if handle.pid:
            self.objects.store.remove_temp_files_of(handle.pid)  # what it was writing
        if handle.link is not None:
            self.objects.free_unsealed(handle.link)
        if handle.address:
            self.objects.delete_objects_of(handle.address)  # fate-sharing: its objects too
        self.workers.forget(worker_id)
        self.leasing.feed(E.WorkerExited(worker_id, (
            f"its worker process (pid {handle.pid}) exited with code {code}")))

    def _on_worker_link_lost(self, handle: WorkerHandle) -> None:
        if self._closing:
            return
        if self._alive(handle.worker_id):
            self.workers.kill(handle.worker_id)  # a worker without its link is of no use
        if handle.link is not None:
            self._on_caller_gone(handle.link)  # and the workers it leased go with it

    def _on_caller_gone(self, link: Link) -> None:
        driver = self.drivers.pop(link, None)
        self.objects.free_unsealed(link)
        self.leasing.feed(E.CallerGone(link))
        if driver is not None:
            self._job_finished(driver.get("job_id", ""), driver.get("address", ""))

    def _on_JobFinished(self, link: Link, msg: P.JobFinished) -> None:
        """From the head: a driver left the cluster (its own node knew already)."""
        if not any(d.get("job_id") == msg.job_id for d in self.drivers.values()):
            self._job_finished(msg.job_id, msg.driver_address)

    def _job_finished(self, job_id: str, driver_address: str) -> None:
        """A driver left: its objects go, and so do the workers that served its job (they
        hold its objects and imported its code). Actors are the head's to end."""
        if driver_address:
            self.objects.delete_objects_of(driver_address)
        self.code_paths.pop(job_id, None)
        self.leasing.job_finished(job_id)
        self.leasing.feed(E.JobFinished(job_id))

    # --- objects and nodes ---------------------------------------------------------------
    def _on_ObjectsDeleted(self, link: Link, msg: P.ObjectsDeleted) -> None:
        if msg.node_id and msg.node_id != self.node_id:  # stored on another node
            self.transfers.forward(msg.node_id, P.ObjectsDeleted(msg.object_ids, ""))
            return
        for object_id in msg.object_ids:
            self.objects.drop(object_id)

    def _describe_owner(self, address: str) -> str:
        """Who owns an object, for people: a driver or worker of this node by pid."""
        if not address:
            return "copy of another node's object"
        for link, info in self.drivers.items():
            if info.get("address") == address:
                return f"driver pid {getattr(link.peer, 'pid', '?')}"
        for handle in self.workers.handles.values():
            if handle.address == address:
                what = f"actor {handle.actor_id[:8]}" if handle.actor_id else "worker"
                return f"{what} pid {handle.pid}"
        return address

    def _on_NodeDied(self, link: Link, msg: P.NodeDied) -> None:
        """From the head: a node is dead. Drop the links to its agent and processes, and
        tell the drivers and workers of this node, which hold links of their own there."""
        for peer in self.server.links:
            hello = peer.peer
            assert isinstance(hello, P.Hello)  # the server's links: each dialled in with one
            if peer.peer_node == msg.node_id or (hello.role == "node"
                                                 and hello.ident == msg.node_id):
                peer.abort(f"its node {msg.node_id[:12]} died: {msg.reason}")
            elif hello.role in ("driver", "worker"):
                peer.send_if_open(msg)
        self.transfers.abort_links_to(msg.node_id, msg.reason)


def machine_id() -> str:
    """This machine's identity (its boot: two nodes with the same id share /dev/shm)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        import socket

        return socket.gethostname()


def host_stats() -> dict:
    """The machine's CPU and memory use, for the dashboard (CPU: since the last call)."""
    import psutil

    mem = psutil.virtual_memory()
    return {"cpu_percent": psutil.cpu_percent(None), "memory_total": mem.total,
            "memory_used": mem.total - mem.available, "memory_percent": mem.percent}


#: what a node keeps of what it tells a head that is restarting (the newest)
OUTBOX_MAX = 10_000


class HeadOutbox:
    """Stands for the link to the head while a node waits for a restarted head: what the
    agent's parts tell the head (an actor started or died, an entrypoint ended) is kept,
    the newest OUTBOX_MAX, and sent once the head is back; what the node says again anyway
    (heartbeats, free resources, workers' output) is dropped.

    Example:
        >>> outbox = HeadOutbox()
        >>> outbox.send(P.ActorDied("a1", "it exited")); outbox.send_if_open(P.Heartbeat("n", {}))
        >>> [type(m).__name__ for m in outbox.messages]
        ['ActorDied']
    """

    closed = False  # (the agent's parts tell it what they would tell the head)
    restarting = True  # (the agent is not ready: /readyz)

    def __init__(self) -> None:
        self.messages: deque = deque(maxlen=OUTBOX_MAX)

    def send(self, msg) -> None:
        if not isinstance(msg, (P.Heartbeat, P.NodeResourcesChanged, P.LogLines)):
            self.messages.append(msg)

    send_if_open = send

    async def request(self, *args, **kwargs):
        raise ConnectionError("the head is restarting: try again once it is back")

    async def aclose(self) -> None:
        self.messages.clear()
