"""A head that survives restarts: what it writes to its storage as its tables change, what
it reads back when it starts again, and how it takes back the nodes that reconnect.

Written (see :mod:`.storage`): the cluster's id and token, and the job counter; every job;
every actor not dead (its record, spec and restart count; a dead one is deleted); every
placement group not removed. A restarted head reads them back before it listens:

* jobs keep their ids and records, and a driver that reconnects gets its job back;
* actors keep their records, as they were: their workers on the nodes that stay go on
  answering their callers directly while the head is away;
* node agents reconnect (for ``--head-reconnect-timeout`` seconds) and register again
  with the actors and bundles they hold: those are confirmed where they are;
* what no node confirms within that time is gone with its node (the head's own, say):
  those actors restart as their ``max_restarts`` allows, or die; those bundles are
  reserved again elsewhere (their groups are ``RESCHEDULING``).

Example:
    >>> row = actor_row(ActorRecord("a1", "counter", "ns", "j1", {"lifetime": "detached"}))
    >>> actor_from_row(row).detached, row["state"]
    (True, 'PENDING')
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from . import lifecycle as L
from .group_table import PlacementGroupRecord, PlacementGroupState
from .state import ActorRecord, ActorState
from .storage import _where

if TYPE_CHECKING:
    from .jobs import JobManager
    from .server import Head
    from .storage import RedisStorage

log = logging.getLogger("aray.head")


def record_row(record: ActorRecord | PlacementGroupRecord) -> dict:
    """A record (an actor's, a placement group's) as the storage keeps it: its fields,
    its state as the enum's value."""
    row = dataclasses.asdict(record)
    row["state"] = record.state.value
    return row


#: the row of an actor's or of a placement group's record
actor_row = group_row = record_row


def actor_from_row(row: dict) -> ActorRecord:
    return ActorRecord(**dict(row, state=ActorState(row["state"])))


def group_from_row(row: dict) -> PlacementGroupRecord:
    return PlacementGroupRecord(**dict(row, state=PlacementGroupState(row["state"])))


class Recovery:
    """The head's durable state (see the module's docstring).

    Args:
        head: the head whose tables it writes and restores.
        storage: where they go.
        grace: how long after a restart nodes have to come back before what they held is
            taken for lost (the nodes' ``--head-reconnect-timeout``).
    """

    def __init__(self, head: Head, storage: RedisStorage, grace: float) -> None:
        self.head = head
        self.storage = storage
        self.grace = grace
        self._written: dict[str, tuple] = {}  # actor id -> what its last row said
        self._unconfirmed: set[str] = set()  # actors restored, not yet reported by a node
        self._nodes_back: set[str] = set()  # nodes that registered since the restart
        self._restored_nodes: set[str] = set()  # the nodes the restored state names
        self._timer: asyncio.TimerHandle | None = None
        self._submissions: dict[str, dict] = {}  # read back, for the head's JobManager

    # --- writing -------------------------------------------------------------------------
    def save_cluster(self) -> None:
        self.storage.put("cluster", "cluster", {"cluster_id": self.head.cluster_id,
                                                "token": self.head.server.token,
                                                "next_job": self.head.jobs._next})

    def job_changed(self, job_id: str) -> None:
        job = self.head.jobs.jobs.get(job_id)
        self.storage.put("jobs", job_id, dict(job) if job is not None else None)
        self.save_cluster()  # (the counter)

    def actors_changed(self, actor_id: str | None) -> None:
        """Write the actors whose records changed: ``actor_id``'s, or (None) any."""
        actors = self.head.actors.actors
        ids = [actor_id] if actor_id is not None else list(actors) + [
            a for a in self._written if a not in actors]
        for one in ids:
            record = actors.get(one)
            if record is None or record.state is ActorState.DEAD:
                if self._written.pop(one, None) is not None:
                    self.storage.put("actors", one, None)
                continue
            mark = (record.state, record.node_id, record.address, record.restarts,
                    record.spec is not None, record.no_restart)
            if self._written.get(one) != mark:
                self._written[one] = mark
                self.storage.put("actors", one, actor_row(record))

    def submission_changed(self, submission_id: str, job: dict | None) -> None:
        self.storage.put("submissions", submission_id, job)

    def attach_jobs(self, manager: JobManager) -> None:
        """The head's submitted jobs: those read back, and their changes from now on."""
        manager.restore(self._submissions)
        for job in self._submissions.values():
            if job.get("driver_node_id"):
                self._restored_nodes.add(job["driver_node_id"])
        self._submissions = {}
        manager.on_change = self.submission_changed

    def group_changed(self, record: PlacementGroupRecord) -> None:
        removed = record.state is PlacementGroupState.REMOVED
        self.storage.put("groups", record.pg_id, None if removed else group_row(record))

    # --- restoring -----------------------------------------------------------------------
    async def restore(self) -> bool:
        """Read the state an earlier head left (StorageError if the storage cannot be
        read); True if there was one."""
        tables = await self.storage.load()
        cluster = tables["cluster"].get("cluster")
        if cluster is None:
            self.save_cluster()
            return False
        head = self.head
        if cluster.get("token") != head.server.token:
            from .storage import StorageError

            raise StorageError("the storage holds the state of a cluster with another token: "
                               "start the head with that cluster's token (ARAY_TOKEN), or "
                               "give it storage of its own")
        head.cluster_id = cluster["cluster_id"]
        head.jobs._next = max(head.jobs._next, int(cluster.get("next_job", 1)))
        for job_id, job in tables["jobs"].items():
            head.jobs.jobs[job_id] = job
        for actor_id, row in tables["actors"].items():
            record = actor_from_row(row)
            head.actors.actors[actor_id] = record
            if record.name:
                head.actors.names[(record.namespace, record.name)] = actor_id
            self._unconfirmed.add(actor_id)
            self._restored_nodes.add(record.node_id)
        self._submissions = tables["submissions"]
        for row in tables["groups"].values():
            group = group_from_row(row)
            head.placement_groups.restore(group)
            self._restored_nodes.update(n for n in group.nodes if n)
        self._restored_nodes.discard("")
        log.info("restored from %s: %d jobs, %d actors, %d placement groups; nodes have "
                 "%g s to come back", _where(self.storage.url), len(tables["jobs"]),
                 len(tables["actors"]), len(tables["groups"]), self.grace)
        return True

    def start_grace(self) -> None:
        """Once the head listens: what no node confirms in time is lost."""
        if self._unconfirmed or self._restored_nodes:
            self._timer = asyncio.get_running_loop().call_later(self.grace, self._grace_over)

    def node_registered(self, node_id: str, actors: list, bundles: list) -> None:
        """A node (back) in the cluster, with the actors it hosts as ``[actor_id,
        worker_id, address, pid]`` and the bundles it holds as ``[pg_id, index]``."""
        self._nodes_back.add(node_id)
        records = self.head.actors.actors
        for actor_id, worker_id, address, pid in actors:
            record = records.get(actor_id)
            if record is None or record.state is ActorState.DEAD:
                continue  # (killed while the head was away: the node ends it)
            self._unconfirmed.discard(actor_id)
            record.node_id, record.worker_id, record.address, record.pid = (
                node_id, worker_id, address, pid)
            if record.state is not ActorState.ALIVE:
                self.head._actor_event(L.Started(actor_id, node_id, address, worker_id, pid))
        hosted = {a[0] for a in actors}
        for actor_id in [a for a in self._unconfirmed if records[a].node_id == node_id]:
            if actor_id not in hosted:  # its worker ended while the head was away
                self._unconfirmed.discard(actor_id)
                self.head._actor_event(L.Died(actor_id, "its worker ended while the head "
                                                        "was restarting"))
        self.head.groups.bundles_confirmed(node_id, [tuple(b) for b in bundles])
        self.actors_changed(None)

    def _grace_over(self) -> None:
        self._timer = None
        for actor_id in sorted(self._unconfirmed):
            record = self.head.actors.actors.get(actor_id)
            if record is not None and record.state is not ActorState.DEAD:
                log.warning("actor %s: its node %s did not come back after the head "
                            "restarted", actor_id, record.node_id[:12])
                self.head._actor_event(L.Died(actor_id, (
                    f"its node {record.node_id[:12]} did not come back after the head "
                    "restarted")))
        self._unconfirmed.clear()
        for node_id in sorted(self._restored_nodes - self._nodes_back):
            self.head.groups.node_lost(node_id)
            if self.head.submitted_jobs is not None:  # the entrypoints it ran
                self.head.submitted_jobs.node_lost(node_id)
        self.actors_changed(None)

    def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def make_recovery(head: Head, url: str, grace: float) -> Any:
    """The head's :class:`Recovery` on the storage at ``url``."""
    from .storage import open_storage

    return Recovery(head, open_storage(url), grace)
