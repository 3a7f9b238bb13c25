"""Placement groups, as the head keeps them: the table, and the reservation of bundles.

A group's bundles are reserved all at once or not at all, which is what keeps two groups
that each fit the cluster alone, but not together, from deadlocking each other half-placed:

1. :func:`~aray._head.placement.plan_bundles` picks a node for every bundle from what the
   nodes have free (a pure function);
2. each chosen node's agent is asked to reserve its bundles now, all or none
   (``ReserveBundles``), and answers at once: it never queues a reservation;
3. if every node said yes, the group is ``CREATED``; if one said no (its free resources
   changed since it last reported), the others give theirs back (``ReleaseBundles``) and
   the group stays ``PENDING``, to be tried again when a node reports, joins or a group
   is removed.

Groups are reserved one at a time, in the order they were created, by one task. A node
that dies takes its bundles with it: the group is ``RESCHEDULING`` until they are
reserved again elsewhere (the bundles on live nodes stay where they are).

The table itself is :mod:`~aray._head.group_table`'s.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .. import _protocol as P
from .._link import CONTROL_TIMEOUT, Link
from . import lifecycle as L
from .group_table import PlacementGroupRecord, PlacementGroupState, check_bundles
from .placement import plan_bundles

if TYPE_CHECKING:
    from .server import Head

log = logging.getLogger("aray.head")

#: how soon after a change (a node reported, joined, a group was removed) pending groups
#: are tried again: a burst of changes costs one try
RETRY_DELAY = 0.01
#: how soon a group is tried again after a node refused its bundles, whatever else happens
#: (its view of the node was stale, or the node's devices are too fragmented)
REFUSED_RETRY = 1.0


class PlacementGroups:
    """The head's handlers of placement group messages, and the one task that reserves
    bundles (see the module's docstring)."""

    def __init__(self, head: Head) -> None:
        self.head = head
        self.table = head.placement_groups
        self._waiters: dict[str, list[tuple[Link, int]]] = {}  # pg id -> WaitPlacementGroup
        self._timer: asyncio.TimerHandle | None = None
        self._placing: asyncio.Task | None = None
        self._again = False  # something changed while the placing task ran
        self._refused: asyncio.TimerHandle | None = None  # a retry after a node said no

    # --- messages ------------------------------------------------------------------------
    def _on_CreatePlacementGroup(self, link: Link, msg: P.CreatePlacementGroup) -> None:
        namespace = self.head.jobs.namespace(msg.job_id)
        error = check_bundles(msg.bundles, msg.strategy)
        if not error and msg.name and self.table.lookup(msg.name, namespace) is not None:
            error = (f"a placement group named {msg.name!r} already exists in namespace "
                     f"{namespace!r}; remove it first or choose another name")
        if error:
            link.send(P.PlacementGroupInfo(msg.req_id, {}, error))
            return
        record = self.table.add(msg.pg_id, msg.name, namespace, msg.bundles, msg.strategy,
                                msg.job_id, msg.detached, msg.label_selectors)
        link.send(P.PlacementGroupInfo(msg.req_id, record.describe(), ""))
        self.changed()

    def _on_WaitPlacementGroup(self, link: Link, msg: P.WaitPlacementGroup) -> None:
        record = self.table.groups.get(msg.pg_id)
        if record is None or not record.waiting:
            link.send(P.PlacementGroupInfo(msg.req_id, self._info(record), ""))
        else:
            self._waiters.setdefault(msg.pg_id, []).append((link, msg.req_id))

    def _on_RemovePlacementGroup(self, link: Link, msg: P.RemovePlacementGroup) -> None:
        record = self.table.groups.get(msg.pg_id)
        if record is not None and record.state is not PlacementGroupState.REMOVED:
            self.remove(record, "it was removed with remove_placement_group()")
        link.send(P.PlacementGroupInfo(msg.req_id, self._info(record), ""))

    def _on_LookupPlacementGroup(self, link: Link, msg: P.LookupPlacementGroup) -> None:
        record = (self.table.groups.get(msg.pg_id) if msg.pg_id else
                  self.table.lookup(msg.name, self.head.jobs.namespace(msg.job_id)))
        link.send(P.PlacementGroupInfo(msg.req_id, self._info(record), ""))

    def _info(self, record: PlacementGroupRecord | None) -> dict:
        """A group's row with the agent address of each bundle's node (for the callers
        that send leases there)."""
        if record is None:
            return {}
        info = record.describe()
        info["bundle_addresses"] = {
            i: node.address for i, node_id in enumerate(record.nodes)
            if node_id and (node := self.head.nodes.nodes.get(node_id)) is not None}
        return info

    def rows(self) -> list[dict]:
        """Every group's row, for the state API."""
        return [r.describe() for r in self.table.groups.values()]

    # --- what the head tells us ----------------------------------------------------------
    def remove(self, record: PlacementGroupRecord, why: str) -> None:
        """Free a group's bundles, and end the actors and tasks in them."""
        for node_id, indexes in _by_node(record).items():
            self._send(node_id, P.ReleaseBundles(record.pg_id, indexes))
        self.table.mark_removed(record)
        log.info("placement group %s removed: %s", record.pg_id[:12], why)
        self._wake(record)
        self.head._actor_event(L.PlacementGroupRemoved(record.pg_id, why))
        self.changed()  # what it held may place others

    def node_lost(self, node_id: str) -> None:
        """The bundles on a dead node wait to be reserved elsewhere."""
        for record in self.table.groups.values():
            if node_id in record.nodes and record.state is not PlacementGroupState.REMOVED:
                record.nodes = [None if n == node_id else n for n in record.nodes]
                self.table.set_state(record, PlacementGroupState.RESCHEDULING)
                log.warning("placement group %s lost bundles on node %s: rescheduling",
                            record.pg_id[:12], node_id[:12])
        self.changed()

    def bundles_confirmed(self, node_id: str, held: list[tuple]) -> None:
        """A node registered again after a head restart, holding the bundles ``held``
        (``(pg_id, index)``): those it no longer holds are reserved again elsewhere."""
        keep = {(pg, int(i)) for pg, i in held}
        for record in self.table.groups.values():
            lost = [i for i, n in enumerate(record.nodes)
                    if n == node_id and (record.pg_id, i) not in keep]
            if lost and record.state is not PlacementGroupState.REMOVED:
                for i in lost:
                    record.nodes[i] = None
                self.table.set_state(record, PlacementGroupState.RESCHEDULING)
        self.changed()

    def job_finished(self, job_id: str) -> None:
        """A group fate-shares with its creator's job, unless it is detached."""
        for record in list(self.table.groups.values()):
            if record.job_id == job_id and not record.detached \
                    and record.state is not PlacementGroupState.REMOVED:
                self.remove(record, f"its job {job_id} finished")

    def changed(self) -> None:
        """Something that may let a waiting group be placed happened: try soon."""
        if not self.table.any_waiting():
            return
        if self._placing is not None and not self._placing.done():
            self._again = True
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(RETRY_DELAY, self._start)

    def _retry_refused(self) -> None:
        self._refused = None
        self.changed()

    def aclose(self) -> None:
        if self._refused is not None:
            self._refused.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self._placing is not None:
            self._placing.cancel()

    # --- reserving -----------------------------------------------------------------------
    def _start(self) -> None:
        self._timer = None
        self._placing = asyncio.get_running_loop().create_task(self._place_waiting())

    async def _place_waiting(self) -> None:
        """Try every waiting group; again while something changed meanwhile (a group
        created, a node's report) that may let one be placed."""
        self._again = True
        while self._again:
            self._again = False
            try:
                for record in self.table.waiting():
                    await self._try(record)
            except Exception:  # (a bug: say so, and go on with the next change)
                log.exception("placing placement groups failed")
            if self._again:
                await asyncio.sleep(RETRY_DELAY)  # (a burst of changes costs one pass)

    async def _try(self, record: PlacementGroupRecord) -> None:
        """Reserve the group's waiting bundles, all of them or none."""
        alive = list(self.head.nodes.iter_alive())
        fixed = {i: n for i, n in enumerate(record.nodes) if n is not None}
        plan = plan_bundles(alive, record.bundles, record.strategy, fixed,
                            selectors=record.label_selectors)
        if plan is None:
            if not record.warned and plan_bundles(alive, record.bundles, record.strategy,
                                                  fixed, free=False,
                                                  selectors=record.label_selectors) is None:
                record.warned = True
                self.head.warn_job(record.job_id, _infeasible_message(record, alive))
            return
        asks: dict[str, list] = {}
        for i, node_id in enumerate(plan):
            if i not in fixed:
                asks.setdefault(node_id, []).append([i, record.bundles[i]])
        answers = await asyncio.gather(*(self._reserve(n, record.pg_id, b)
                                         for n, b in asks.items()))
        reserved = [node_id for node_id, ok in zip(asks, answers, strict=True) if ok]
        if len(reserved) < len(asks) or not record.waiting:  # all or none
            for node_id in reserved:
                self._send(node_id, P.ReleaseBundles(record.pg_id, [i for i, _ in asks[node_id]]))
            if record.waiting and self._refused is None:
                # a node's free resources were not what its last report said: its next
                # report tries again, and so does this, in case that report came first
                self._refused = asyncio.get_running_loop().call_later(
                    REFUSED_RETRY, self._retry_refused)
            return
        for node_id, bundles in asks.items():
            for i, shape in bundles:
                record.nodes[i] = node_id
                self.head.nodes.reserve(node_id, shape)
        self.table.set_state(record, PlacementGroupState.CREATED)
        self._wake(record)
        self.head._actor_event(L.PlacementGroupPlaced(record.pg_id))

    async def _reserve(self, node_id: str, pg_id: str, bundles: list) -> bool:
        link = self.head.node_link(node_id)
        if link is None:
            return False
        try:
            reply = await link.request(lambda r: P.ReserveBundles(r, pg_id, bundles),
                                       timeout=CONTROL_TIMEOUT)
        except (ConnectionError, TimeoutError, OSError):
            return False  # (the node's death comes as news of its own)
        return bool(reply.ok)

    def _send(self, node_id: str, msg) -> None:
        link = self.head.node_link(node_id)
        if link is not None:
            link.send(msg)

    def _wake(self, record: PlacementGroupRecord) -> None:
        info = self._info(record)
        for link, req_id in self._waiters.pop(record.pg_id, []):
            link.send_if_open(P.PlacementGroupInfo(req_id, info, ""))


def _by_node(record: PlacementGroupRecord) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, node_id in enumerate(record.nodes):
        if node_id is not None:
            out.setdefault(node_id, []).append(i)
    return out


def _infeasible_message(record: PlacementGroupRecord, alive: list) -> str:
    from ..node.scheduler import resources_text

    bundles = ", ".join(resources_text(b) for b in record.bundles)
    nodes = ", ".join(resources_text(n.total) for n in alive) or "no node"
    return (f"The placement group {record.name or record.pg_id} cannot be placed right now: "
            f"its bundles [{bundles}] with strategy {record.strategy} need more than the "
            f"cluster's nodes have ({nodes}). It stays pending and is placed as soon as "
            "nodes that can hold it join; otherwise, make its bundles smaller or use a "
            "strategy that is not strict.")
