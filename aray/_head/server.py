"""The head service: node agents register and report here; drivers get a job id and ask
for the cluster's state. It is the control plane only: no task passes through it."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid

from .. import _protocol as P
from .._dispatch import Dispatcher
from .._link import Link, Server
from .._periodic import every
from ..node.scheduler import fits
from . import views
from .state import MAX_DEAD_NODES, ActorState, ActorTable, JobTable, NodeTable, TaskTable

log = logging.getLogger("aray.head")

#: how long a WaitActor for an actor id the head has never heard of is held before "no such actor"
UNKNOWN_ACTOR_GRACE = 10.0
#: how often, at most, node agents hear of the other nodes' free resources
VIEW_INTERVAL = 0.02
#: node agents send a heartbeat this often; a node silent for NODE_TIMEOUT seconds is dead
HEARTBEAT_INTERVAL = 1.0
NODE_TIMEOUT = float(os.environ.get("ARAY_NODE_TIMEOUT", "10"))


class Head:
    def __init__(self, token: str) -> None:
        # names this cluster in every ref it makes: a ref of another cluster (or of an
        # earlier session) is known for what it is
        self.cluster_id = uuid.uuid4().hex[:16]
        self.nodes = NodeTable()
        self.jobs = JobTable()
        self.actors = ActorTable()
        self.tasks = TaskTable()
        self.server = Server(token, self._on_hello, name="head", role="head")
        self._dispatch = Dispatcher("head", self)
        self.node_links: dict[Link, str] = {}  # node agents' links -> their node ids
        self.local_node_id = ""  # the node whose process runs the head
        self._driver_links: dict[str, Link] = {}  # job id -> driver link
        self._actor_waiters: dict[str, list[tuple[Link, int]]] = {}
        self._kill_waiters: dict[str, list[tuple[Link, int]]] = {}
        self._view_timer: asyncio.TimerHandle | None = None
        self._last_heard: dict[str, float] = {}  # node id -> time of its last heartbeat
        self._watchdog: asyncio.Task | None = None
        # dead nodes of this machine whose files wait for their process to be gone
        # (node id -> session directory; at most MAX_DEAD_NODES)
        self._leftover_files: dict[str, str] = {}

    async def start(self, address: str) -> str:
        self._watchdog = asyncio.get_running_loop().create_task(every(
            HEARTBEAT_INTERVAL, self._check_heartbeats, name="node watchdog", log=log,
            first_delay=HEARTBEAT_INTERVAL))
        return await self.server.start(address)

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self.server.aclose()

    def _check_heartbeats(self) -> None:
        """A node whose agent stopped sending heartbeats (hung, or cut off by the network)
        is dead, as if its link had dropped: drop that link (without waiting on the peer)."""
        now = time.monotonic()
        for link, node_id in list(self.node_links.items()):
            if now - self._last_heard.get(node_id, now) > NODE_TIMEOUT:
                log.warning("node %s sent no heartbeat for %.0f s: marked dead",
                            node_id[:12], NODE_TIMEOUT)
                self._on_node_lost(link, f"it sent no heartbeat for {NODE_TIMEOUT:g} s")
                link.abort(f"no heartbeat for {NODE_TIMEOUT:g} s")
        self._remove_leftover_files()

    def _on_TaskEvents(self, link: Link, msg: P.TaskEvents) -> None:
        self.tasks.apply(msg.events, msg.source)

    def _on_LogLines(self, link: Link, msg: P.LogLines) -> None:
        """A worker's output for a driver on another node than the worker's."""
        driver = self._driver_links.get(msg.job_id)
        if driver is not None and not driver.closed:
            driver.send(msg)

    def _on_Heartbeat(self, link: Link, msg: P.Heartbeat) -> None:
        self._last_heard[msg.node_id] = time.monotonic()
        self.nodes.update_status(msg.node_id, msg.status)

    def _on_hello(self, link: Link, hello: P.Hello) -> dict:
        link.on_message = self._dispatch
        if hello.role == "node":
            self.node_links[link] = hello.ident
            self._last_heard[hello.ident] = time.monotonic()
            link.on_close.append(self._on_node_lost)
            return {"heartbeat_interval": HEARTBEAT_INTERVAL, "cluster_id": self.cluster_id}
        link.on_close.append(self._forget_waiters)
        if hello.role != "driver":  # a worker's core: actor lookups only
            return {}
        address = hello.info.get("address", "")
        job_id = self.jobs.new_job(hello.pid, hello.info.get("namespace", ""), address)
        self._driver_links[job_id] = link
        link.on_close.append(lambda _l: self._on_job_finished(job_id, address))
        return {"job_id": job_id, "namespace": self.jobs.namespace(job_id),
                "cluster_id": self.cluster_id}

    def _on_job_finished(self, job_id: str, driver_address: str) -> None:
        self.jobs.finish(job_id)
        self.tasks.finish_job(job_id)
        self._driver_links.pop(job_id, None)
        for node_link in self.node_links:
            if not node_link.closed:
                node_link.send(P.JobFinished(job_id, driver_address))
        for record in list(self.actors.actors.values()):
            if record.job_id == job_id and not record.detached and record.state != ActorState.DEAD:
                self._kill(record, "its driver (job " + job_id + ") exited", no_restart=True)

    def _on_RegisterNode(self, link: Link, msg: P.RegisterNode) -> None:
        self.nodes.join(msg.node_id, msg.address, msg.ip, msg.resources, msg.host)
        log.info("node %s joined with %s", msg.node_id[:12], msg.resources)
        self._broadcast_view()
        # actors waiting on a node that can never hold them move to the new one if it can
        for record in self.actors.actors.values():
            if (record.state in (ActorState.PENDING, ActorState.RESTARTING)
                    and record.spec is not None and record.node_id != msg.node_id
                    and fits(record.spec["placement"], msg.resources)):
                node = self.nodes.nodes.get(record.node_id)
                if node is None or not node.alive or not fits(record.spec["placement"],
                                                              node.total):
                    old = self.node_link(record.node_id)
                    if old is not None:
                        old.send(P.WithdrawActor(record.actor_id))
                    self._place(record)

    def _remove_files_of(self, node_id: str) -> None:
        """A dead node of this machine whose process is gone (killed) could not remove its
        shared-memory store and spill files: remove them for it once its process is gone.
        (Its link drops while the kernel is still ending the process, so the process may
        outlive the news by a moment; a hung one may live on, and removes its own files
        if it ever exits cleanly.) The watchdog looks again every second."""
        from ..node.agent import machine_id

        node = self.nodes.nodes.get(node_id)
        host = node.host if node is not None else {}
        if not host.get("session_dir") or host.get("machine") != machine_id():
            return
        self._leftover_files[node_id] = host["session_dir"]
        while len(self._leftover_files) > MAX_DEAD_NODES:
            self._leftover_files.pop(next(iter(self._leftover_files)))
        self._remove_leftover_files()

    def _remove_leftover_files(self) -> None:
        from .._local import node_process_alive, remove_node_files

        for node_id, session_dir in list(self._leftover_files.items()):
            try:  # (it checks that the files are ours)
                if node_process_alive(session_dir):
                    continue
                remove_node_files(session_dir)
            except Exception:
                log.exception("could not remove the files of dead node %s", node_id[:12])
            del self._leftover_files[node_id]

    def _on_NodeResourcesChanged(self, link: Link, msg: P.NodeResourcesChanged) -> None:
        self.nodes.update_available(msg.node_id, msg.available)
        if len(self.node_links) > 1 and self._view_timer is None:
            # agents spill work to nodes with free resources: keep them informed, at most
            # every VIEW_INTERVAL seconds
            self._view_timer = asyncio.get_running_loop().call_later(
                VIEW_INTERVAL, self._broadcast_view)

    def node_link(self, node_id: str) -> Link | None:
        """The link to a live node's agent."""
        for link, known in self.node_links.items():
            if known == node_id and not link.closed:
                return link
        return None

    def _on_GetState(self, link: Link, msg: P.GetState):
        """The head's tables for the state API (``aray.util.state``, ``aray list``)."""
        rows, error = [], ""
        if msg.kind == "nodes":
            rows = views.nodes(self)
        elif msg.kind == "actors":
            rows = [r.describe(public=True) for r in self.actors.actors.values()]
        elif msg.kind == "jobs":
            rows = views.jobs(self)
        elif msg.kind == "tasks":
            rows = self.tasks.rows()
        elif msg.kind == "task_summary":
            rows = [self.tasks.summary()]
        elif msg.kind == "objects":  # the nodes know them: answer once they have
            return self._send_objects(link, msg.req_id)  # run by the link
        else:
            error = f"unknown state kind {msg.kind!r}: nodes, actors, jobs, tasks or objects"
        link.send(P.StateRows(msg.req_id, rows, error))

    async def _send_objects(self, link: Link, req_id: int) -> None:
        link.send_if_open(P.StateRows(req_id, await views.objects(self), ""))

    def _on_GetClusterState(self, link: Link, msg: P.GetClusterState) -> None:
        link.send(P.ClusterState(msg.req_id, views.nodes(self)))

    def _on_node_lost(self, link: Link, reason: str = "its link to the head dropped") -> None:
        node_id = self.node_links.pop(link, None)
        if node_id is not None:
            self.nodes.mark_dead(node_id)
            self._last_heard.pop(node_id, None)
            log.warning("node %s left the cluster: %s", node_id[:12], reason)
            # every process drops its links to that node, so nothing waits on a hung one
            died = P.NodeDied(node_id, reason)
            for other in self.node_links:
                other.send_if_open(died)
            self._remove_files_of(node_id)
            self._broadcast_view()
            for record in list(self.actors.actors.values()):
                if record.node_id == node_id and record.state != ActorState.DEAD:
                    self._on_ActorDied(link, P.ActorDied(record.actor_id,
                                                         f"its node {node_id[:12]} died"))

    # --- actors --------------------------------------------------------------------------
    def _on_RegisterActor(self, link: Link, msg: P.RegisterActor) -> None:
        namespace = self.jobs.namespace(msg.job_id, msg.namespace)
        actor_id, error = self.actors.register(msg.actor_id, msg.name, namespace,
                                               msg.job_id, msg.meta, msg.get_if_exists)
        link.send(P.ActorRegistered(msg.req_id, actor_id, error))

    def _on_CreateActor(self, link: Link, msg: P.CreateActor) -> None:
        record = self.actors.actors.get(msg.actor_id)
        if record is None or record.spec is not None:
            return  # unknown, or an alias that get_if_exists resolved to an existing actor
        record.spec = msg.spec
        self._place(record)

    def _place(self, record) -> None:
        """Send the actor to a node that can hold it (the agent queues it if busy)."""
        placement = record.spec["placement"]
        alive = self.nodes.alive()
        candidates = ([n for n in alive if fits(placement, n.available)]
                      or [n for n in alive if fits(placement, n.total)] or alive)
        if not candidates:
            self.actors.mark_dead(record, "no node is alive to run it")
            self._wake_actor_waiters(record)
            return
        node = candidates[0]
        record.node_id = node.node_id
        link = self.node_link(node.node_id)
        if link is not None:  # else its node is dying, and re-places its actors then
            link.send(P.CreateActor(record.actor_id, record.spec))

    def _on_ActorStarted(self, link: Link, msg: P.ActorStarted) -> None:
        record = self.actors.actors.get(msg.actor_id)
        if record is None or record.state == ActorState.DEAD:
            return
        if msg.error is not None:
            self.actors.mark_dead(record, "its constructor raised an exception", msg.error)
            agent = self.node_link(msg.node_id)
            if agent is not None:  # the worker has nothing left to do
                agent.send(P.KillActor(0, record.actor_id, True))
        else:
            record.state = ActorState.ALIVE
            record.address, record.worker_id = msg.address, msg.worker_id
            record.pid, record.node_id = msg.pid, msg.node_id
        self._wake_actor_waiters(record)

    def _on_ActorDied(self, link: Link, msg: P.ActorDied) -> None:
        record = self.actors.actors.get(msg.actor_id)
        if record is None or record.state == ActorState.DEAD:
            return
        if record.can_restart() and record.spec is not None:
            record.restarts += 1
            record.state = ActorState.RESTARTING
            record.address = ""
            log.info("restarting actor %s (%s)", record.actor_id, msg.reason)
            self._wake_actor_waiters(record)  # those waiting for a kill to take effect
            self._place(record)
        else:
            # a kill says why; otherwise the agent's reason (the process died, its node died)
            self.actors.mark_dead(record, record.death_cause if record.no_restart
                                  and record.death_cause else msg.reason)
            self._wake_actor_waiters(record)

    def _on_WaitActor(self, link: Link, msg: P.WaitActor) -> None:
        record = self.actors.actors.get(msg.actor_id)
        if record is None:
            # its creator's RegisterActor may still be on the way: wait a while for it
            self._actor_waiters.setdefault(msg.actor_id, []).append((link, msg.req_id))
            asyncio.get_running_loop().call_later(UNKNOWN_ACTOR_GRACE, self._give_up, msg.actor_id)
        elif record.state in (ActorState.ALIVE, ActorState.DEAD):
            link.send(P.ActorInfo(msg.req_id, record.describe()))
        else:
            self._actor_waiters.setdefault(msg.actor_id, []).append((link, msg.req_id))

    def _forget_waiters(self, link: Link) -> None:
        """A caller left: nobody is waiting for its WaitActor and KillActor replies."""
        for waiters in (self._actor_waiters, self._kill_waiters):
            for actor_id in [a for a, w in waiters.items() if any(x[0] is link for x in w)]:
                kept = [x for x in waiters[actor_id] if x[0] is not link]
                if kept:
                    waiters[actor_id] = kept
                else:
                    del waiters[actor_id]

    def _give_up(self, actor_id: str) -> None:
        if actor_id not in self.actors.actors:
            for link, req_id in self._actor_waiters.pop(actor_id, []):
                if not link.closed:
                    link.send(P.ActorInfo(req_id, {}))

    def _wake_actor_waiters(self, record) -> None:
        waiters = []
        if record.state in (ActorState.ALIVE, ActorState.DEAD):  # WaitActor: usable or gone
            waiters += self._actor_waiters.pop(record.actor_id, [])
        if record.state in (ActorState.DEAD, ActorState.RESTARTING):  # KillActor: down
            waiters += self._kill_waiters.pop(record.actor_id, [])
        for link, req_id in waiters:
            if not link.closed:
                link.send(P.ActorInfo(req_id, record.describe()))

    def _on_LookupActor(self, link: Link, msg: P.LookupActor) -> None:
        record = self.actors.lookup(msg.name, self.jobs.namespace(msg.job_id, msg.namespace))
        link.send(P.ActorInfo(msg.req_id, record.describe() if record else {}))

    def _on_KillActor(self, link: Link, msg: P.KillActor) -> None:
        """Kill an actor; the reply comes once it is down (dead, or restarting), so calls
        made after ``aray.kill()`` returns cannot reach the old instance."""
        record = self.actors.actors.get(msg.actor_id)
        if record is None or record.state == ActorState.DEAD:
            link.send(P.ActorInfo(msg.req_id, record.describe() if record else {}))
            return
        self._kill_waiters.setdefault(msg.actor_id, []).append((link, msg.req_id))
        self._kill(record, "it was killed with aray.kill()", msg.no_restart)

    def _kill(self, record, cause: str, no_restart: bool) -> None:
        record.no_restart = record.no_restart or no_restart
        agent = self.node_link(record.node_id)
        if agent is not None and record.spec is not None:
            agent.send(P.KillActor(0, record.actor_id, record.no_restart))
            record.death_cause = cause  # kept if the death that follows is final
        else:
            self.actors.mark_dead(record, cause)
            self._wake_actor_waiters(record)

    def _on_LeaseInfeasible(self, link: Link, msg: P.LeaseInfeasible) -> None:
        """An agent cannot place an actor anywhere: tell the driver of its job."""
        record = self.actors.actors.get(msg.actor_id)
        driver = self._driver_links.get(record.job_id) if record else None
        if driver is not None and not driver.closed:
            driver.send(P.Warn(msg.message))

    def _broadcast_view(self) -> None:
        if self._view_timer is not None:
            self._view_timer.cancel()
            self._view_timer = None
        view = P.ClusterViewChanged(self.nodes.view())
        for link in self.node_links:
            if not link.closed:
                link.send(view)

