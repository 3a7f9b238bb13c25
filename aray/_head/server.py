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
from . import lifecycle as L
from . import views
from .actor_service import ActorService
from .group_table import PlacementGroupTable
from .jobs import JobManager
from .packages import PackageStore
from .placement_groups import PlacementGroups
from .recovery import make_recovery
from .state import MAX_DEAD_NODES, ActorTable, JobTable, NodeTable, TaskTable

log = logging.getLogger("aray.head")

#: how often, at most, node agents hear of changes in the view (nodes joining, leaving,
#: their free resources)
VIEW_INTERVAL = 0.02
#: the view's changes go to every agent, one send per link: in a large cluster the head
#: sends them less often, so that it makes at most this many sends a second however many
#: nodes there are (1,000 nodes: every 0.1 s, as Ray's resource reports; 3,000: 0.3 s)
VIEW_SENDS_PER_SECOND = 10_000
#: node agents send a heartbeat this often; a node silent for NODE_TIMEOUT seconds is dead
HEARTBEAT_INTERVAL = 1.0
NODE_TIMEOUT = float(os.environ.get("ARAY_NODE_TIMEOUT", "10"))


class Head:
    """The head of one cluster: a thin shell that turns the messages of its links into
    updates of its tables (:mod:`~aray._head.state`) and events of the actor lifecycle
    (:mod:`~aray._head.lifecycle`), and carries out the instructions that come back.

    Example:
        >>> async def main():
        ...     head = Head(token="secret")
        ...     address = await head.start("unix:///tmp/head.sock")
        ...     await head.aclose()
    """

    def __init__(self, token: str, packages_dir: str = "", storage: str = "",
                 reconnect_grace: float = 60.0) -> None:
        # names this cluster in every ref it makes: a ref of another cluster (or of an
        # earlier session) is known for what it is
        self.cluster_id = uuid.uuid4().hex[:16]
        self.nodes = NodeTable()
        self.jobs = JobTable()
        self.actors = ActorTable()
        self.tasks = TaskTable()
        self.server = Server(token, self._on_hello, name="head", role="head")
        self._dispatch = Dispatcher("head", self)
        #: runtime env packages (with a session folder to keep them in)
        self.packages = PackageStore(packages_dir) if packages_dir else None
        if self.packages is not None:
            self._dispatch.add(self.packages)
        #: the jobs of `aray job submit` (see set_job_manager)
        self.submitted_jobs: JobManager | None = None
        self.node_links: dict[Link, str] = {}  # node agents' links -> their node ids
        self._link_of_node: dict[str, Link] = {}  # and back
        self.local_node_id = ""  # the node whose process runs the head
        self._driver_links: dict[str, Link] = {}  # job id -> driver link
        self.placement_groups = PlacementGroupTable()
        #: the actors' messages, and their lifecycle (see aray/_head/actor_service.py)
        self.actor_service = ActorService(self)
        self.lifecycle = self.actor_service.lifecycle
        self._dispatch.add(self.actor_service)
        #: placement groups' messages, and the reservation of their bundles
        self.groups = PlacementGroups(self)
        self._dispatch.add(self.groups)
        #: the tables kept in ``storage`` (a Redis URL), to outlive this process; None:
        #: this head's state ends with it, and so does the cluster
        self.recovery = make_recovery(self, storage, reconnect_grace) if storage else None
        if self.recovery is not None:
            self.placement_groups.on_change = self.recovery.group_changed
        self._view_timer: asyncio.TimerHandle | None = None
        # nodes whose view entry changed since the last ClusterViewUpdated (in the order
        # they changed, so that new nodes come in the order they joined)
        self._view_dirty: dict[str, None] = {}
        self._view_holders: set[Link] = set()  # node links sent a full view
        self._last_heard: dict[str, float] = {}  # node id -> time of its last heartbeat
        self._watchdog: asyncio.Task | None = None
        # dead nodes of this machine whose files wait for their process to be gone
        # (node id -> session directory; at most MAX_DEAD_NODES)
        self._leftover_files: dict[str, str] = {}

    def set_job_manager(self, manager: JobManager) -> None:
        """Run submitted jobs (the node process of a head with a session does)."""
        self.submitted_jobs = manager
        self._dispatch.add(manager)
        if self.recovery is not None:
            self.recovery.attach_jobs(manager)

    @property
    def submissions(self) -> list[dict]:
        """The records of the submitted jobs (aray job submit), oldest first."""
        return [] if self.submitted_jobs is None else self.submitted_jobs.list()

    async def restore(self) -> bool:
        """Read back what an earlier head of this cluster kept in the storage (before
        :meth:`start`); True if there was anything. StorageError if it cannot be read."""
        return await self.recovery.restore() if self.recovery is not None else False

    async def start(self, address: str) -> str:
        self._watchdog = asyncio.get_running_loop().create_task(every(
            HEARTBEAT_INTERVAL, self._check_heartbeats, name="node watchdog", log=log,
            first_delay=HEARTBEAT_INTERVAL))
        address = await self.server.start(address)
        if self.recovery is not None:
            self.recovery.start_grace()
        return address

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.submitted_jobs is not None:
            self.submitted_jobs.aclose()
        self.groups.aclose()
        await self.server.aclose()
        if self.recovery is not None:
            self.recovery.aclose()
            await self.recovery.storage.aclose()

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
            self._link_of_node[hello.ident] = link
            self._last_heard[hello.ident] = time.monotonic()
            link.on_close.append(self._on_node_lost)
            return {"heartbeat_interval": HEARTBEAT_INTERVAL, "cluster_id": self.cluster_id,
                    "fault_tolerant": self.recovery is not None}
        link.on_close.append(self.actor_service.forget_waiters)
        if hello.role != "driver":  # a worker's core: actor lookups only
            return {}
        address = hello.info.get("address", "")
        job_id = str(hello.info.get("job_id", ""))
        job = self.jobs.jobs.get(job_id)
        if not (job and job["alive"] and job_id not in self._driver_links):
            # (a driver that reconnects to a restarted head gets its job back)
            job_id = self.jobs.new_job(hello.pid, hello.info.get("namespace", ""), address,
                                       str(hello.info.get("submission_id", "")))
        if self.recovery is not None:
            self.recovery.job_changed(job_id)
        self._driver_links[job_id] = link
        link.on_close.append(lambda _l: self._on_job_finished(job_id, address))
        return {"job_id": job_id, "namespace": self.jobs.namespace(job_id),
                "cluster_id": self.cluster_id, "fault_tolerant": self.recovery is not None}

    def _on_job_finished(self, job_id: str, driver_address: str) -> None:
        self.jobs.finish(job_id)
        if self.recovery is not None:
            self.recovery.job_changed(job_id)
        self.tasks.finish_job(job_id)
        self._driver_links.pop(job_id, None)
        for node_link in self.node_links:
            if not node_link.closed:
                node_link.send(P.JobFinished(job_id, driver_address))
        self._actor_event(L.JobFinished(job_id))
        self.groups.job_finished(job_id)

    def _on_RegisterNode(self, link: Link, msg: P.RegisterNode) -> None:
        self.nodes.join(msg.node_id, msg.address, msg.ip, msg.resources, msg.host, msg.labels)
        log.info("node %s joined with %s", msg.node_id[:12], msg.resources)
        if self.recovery is not None:  # (back after a restart: what it holds is there)
            self.recovery.node_registered(msg.node_id, msg.actors, msg.bundles)
            if self.submitted_jobs is not None:
                self.submitted_jobs.node_registered(msg.node_id, msg.entrypoints)
        self._view_dirty[msg.node_id] = None
        self._view_changed_soon()  # the others hear of it
        if not link.closed:  # and it hears of every node, itself included, now
            link.send(P.ClusterViewChanged(self.nodes.view()))
            self._view_holders.add(link)
        self._actor_event(L.NodeJoined(msg.node_id))
        self.groups.changed()

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
        if msg.node_id not in self.nodes.nodes:
            return
        self.nodes.update_available(msg.node_id, msg.available)
        self._view_dirty[msg.node_id] = None
        self.groups.changed()  # (at once, when no group waits)
        if len(self.node_links) > 1:
            # agents spill work to nodes with free resources: keep them informed
            self._view_changed_soon()

    def _view_changed_soon(self) -> None:
        """Send the view's changes within VIEW_INTERVAL seconds (longer in a large
        cluster) as one update, so that N nodes joining cost N updates per agent at most."""
        if self._view_timer is None:
            delay = max(VIEW_INTERVAL, len(self._view_holders) / VIEW_SENDS_PER_SECOND)
            self._view_timer = asyncio.get_running_loop().call_later(
                delay, self._broadcast_view)

    def node_link(self, node_id: str) -> Link | None:
        """The link to a live node's agent."""
        link = self._link_of_node.get(node_id)
        return link if link is not None and not link.closed else None

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
        elif msg.kind == "placement_groups":
            rows = self.groups.rows()
        elif msg.kind == "objects":  # the nodes know them: answer once they have
            return self._send_objects(link, msg.req_id)  # run by the link
        else:
            error = (f"unknown state kind {msg.kind!r}: nodes, actors, jobs, tasks, objects or "
                     "placement_groups")
        link.send(P.StateRows(msg.req_id, rows, error))

    async def _send_objects(self, link: Link, req_id: int) -> None:
        link.send_if_open(P.StateRows(req_id, await views.objects(self), ""))

    def _on_GetClusterState(self, link: Link, msg: P.GetClusterState) -> None:
        link.send(P.ClusterState(msg.req_id, views.nodes(self)))

    def _on_node_lost(self, link: Link, reason: str = "its link to the head dropped") -> None:
        node_id = self.node_links.pop(link, None)
        self._view_holders.discard(link)
        if node_id is not None:
            if self._link_of_node.get(node_id) is link:
                del self._link_of_node[node_id]
            self.nodes.mark_dead(node_id)
            self._view_dirty[node_id] = None
            self._last_heard.pop(node_id, None)
            log.warning("node %s left the cluster: %s", node_id[:12], reason)
            # every process drops its links to that node, so nothing waits on a hung one
            died = P.NodeDied(node_id, reason)
            for other in self.node_links:
                other.send_if_open(died)
            self._remove_files_of(node_id)
            self._view_changed_soon()
            self.groups.node_lost(node_id)  # (first: its actors restart in their bundles)
            self._actor_event(L.NodeDied(node_id))
            if self.submitted_jobs is not None:
                self.submitted_jobs.node_lost(node_id)

    # --- actors: the messages are the ActorService's ---------------------------------------
    def _actor_event(self, event) -> None:
        self.actor_service.event(event)

    def warn_job(self, job_id: str, message: str) -> None:
        """Show ``message`` to the user of a job: its driver prints it."""
        driver = self._driver_links.get(job_id)
        if driver is not None and not driver.closed:
            driver.send(P.Warn(message))

    def _broadcast_view(self) -> None:
        """Send the agents what changed in the view since the last time (each agent got
        the whole view when it registered): one message for all, whose size grows with
        the changes, not with the cluster."""
        if self._view_timer is not None:
            self._view_timer.cancel()
            self._view_timer = None
        if not self._view_dirty:
            return
        changed, removed = self.nodes.view_changes(self._view_dirty)
        self._view_dirty = {}
        update = P.ClusterViewUpdated(changed, removed)
        for link in self._view_holders:
            if not link.closed:
                link.send(update)

