"""What the head shows of the cluster: the rows and summaries behind the state API
(``aray.util.state``, ``aray list``), the dashboard's JSON API and ``/metrics``.

Tables the head keeps (nodes, jobs, actors, tasks) are read from the head itself (on its
loop) or from a :class:`Snapshot` of them (on the dashboard's thread): the views take
either. Objects and log files live on the nodes, so those views ask every node's agent
over its link, on the head's loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Reversible
from typing import TYPE_CHECKING, Protocol

from .. import _protocol as P
from ..node.logs import MAX_OFFSET, MAX_READ
from .jobs import JobStatus
from .state import TASK_STATES

if TYPE_CHECKING:
    from .server import Head
    from .state import ActorTable, JobTable, NodeTable

#: a node that does not answer within this many seconds is left out of a listing
NODE_ANSWER_TIMEOUT = 5.0
#: the most rows one page of the JSON API holds
MAX_PAGE = 1000


class Tasks(Protocol):
    """What views read of the tasks: a :class:`~aray._head.state.TaskTable` or the
    :class:`~aray._head.state.TaskRows` of a snapshot."""

    def __len__(self) -> int: ...
    def in_order(self) -> Reversible[dict]: ...
    def rows(self, tasks=None) -> list[dict]: ...
    def summary(self) -> dict: ...


class Tables(Protocol):
    """What the views of the head's tables read: the :class:`~aray._head.server.Head`
    itself (on its loop) or a :class:`Snapshot` of it (on another thread). Read-only
    properties, so that a table may be a plain attribute of either."""

    @property
    def local_node_id(self) -> str: ...
    @property
    def nodes(self) -> NodeTable: ...
    @property
    def jobs(self) -> JobTable: ...
    @property
    def actors(self) -> ActorTable: ...
    @property
    def tasks(self) -> Tasks: ...
    @property
    def submissions(self) -> list[dict]: ...


class Snapshot:
    """The head's tables as they were at one moment, for the views of another thread.

    Taken on the head's loop, at the cost of copying each table's index (a few ms for
    100,000 tasks, and only for views that list tasks), never its rows: rows are shared
    and only read by the views. Has the attributes of the
    :class:`~aray._head.server.Head` that views read.

    Example:
        >>> from aray._head.server import Head
        >>> summary(Snapshot(Head("token")))["tasks"]["total"]
        0
    """

    def __init__(self, head: Head, task_rows: bool = True) -> None:
        self.local_node_id = head.local_node_id
        self.nodes = head.nodes.snapshot()
        self.jobs = head.jobs.snapshot()
        self.actors = head.actors.snapshot()
        self.submissions = head.submissions
        self.group_rows = head.groups.rows()  # (a list of new dicts: safe on another thread)
        # without task_rows: the tasks' number and counts only (all the summary needs)
        self.tasks = head.tasks.snapshot(task_rows)


def page(rows, offset: int, limit: int, total: int) -> dict:
    """The JSON API's envelope for one page of rows."""
    return {"total": total, "offset": offset, "limit": limit, "rows": rows}


def page_of(rows: list, offset: int, limit: int, convert=list) -> dict:
    """The envelope of ``rows[offset:offset + limit]`` (at most MAX_PAGE rows), made into
    what the API shows by ``convert``; only the page's rows are converted."""
    offset, limit = max(0, offset), max(0, min(limit, MAX_PAGE))
    return page(convert(rows[offset:offset + limit]), offset, limit, len(rows))


def nodes(head: Tables) -> list[dict]:
    return head.nodes.describe(head.local_node_id)


def tasks(head: Tables, *, state: str = "", name: str = "", job_id: str = "",
          offset: int = 0, limit: int = 100) -> dict:
    """One page of tasks, newest first; ``name`` matches a part of the name. Only the page's
    rows are copied, so a page costs little even with 100,000 tasks in the table."""
    matching = [t for t in reversed(head.tasks.in_order())
                if (not state or t["state"] == state) and (not name or name in t["name"])
                and (not job_id or t["job_id"] == job_id)]
    # the table is in the order the head first heard of each task, which is nearly the
    # order of submission (a task that never waited is first heard of when it ends), so
    # this sort has little to do
    matching.sort(key=_submitted, reverse=True)
    return page_of(matching, offset, limit, head.tasks.rows)


def _submitted(task: dict) -> float:
    return task["submitted_at"]


def actors(head: Tables, *, state: str = "", offset: int = 0, limit: int = 100) -> dict:
    matching = [r for r in reversed(head.actors.actors.values()) if not state or r.state == state]
    return page_of(matching, offset, limit,
                   lambda records: [r.describe(public=True) for r in records])


def jobs(head: Tables) -> list[dict]:
    """The drivers' jobs, each with its submission's state if ``aray job submit`` started
    it (``submission_status``), then the submitted jobs whose entrypoint has no driver
    (it has not called ``aray.init()``, or failed before), as rows of their own."""
    submissions = {s["submission_id"]: s for s in head.submissions}
    rows, linked = [], set()
    for job in head.jobs.jobs.values():
        row = dict(job)
        submitted = submissions.get(job.get("submission_id", ""))
        if submitted is not None:
            row["submission_status"] = submitted["status"]
            linked.add(submitted["submission_id"])
        rows.append(row)
    for s in submissions.values():
        if s["submission_id"] not in linked:
            rows.append({"job_id": "", "driver_pid": s["driver_pid"],
                         "start_time": s["start_time"] / 1000,
                         "end_time": s["end_time"] / 1000 if s["end_time"] else None,
                         "alive": not JobStatus(s["status"]).is_terminal(), "namespace": "",
                         "submission_id": s["submission_id"],
                         "submission_status": s["status"]})
    return sorted(rows, key=lambda r: r["start_time"])


def summary(head: Tables) -> dict:
    """Counts for the overview: nodes, jobs, actors and tasks by state, and the cluster's
    resources and object store use summed over its live nodes."""
    by_name = head.tasks.summary()
    task_states = dict.fromkeys(TASK_STATES, 0)
    for counts in by_name.values():
        for state, n in counts.items():
            task_states[state] = task_states.get(state, 0) + n
    actor_states: dict[str, int] = {}
    for record in head.actors.actors.values():
        actor_states[record.state.value] = actor_states.get(record.state.value, 0) + 1
    alive = head.nodes.alive()
    total: dict[str, float] = {}
    available: dict[str, float] = {}
    store = dict.fromkeys(["used_bytes", "capacity_bytes", "num_objects", "spilled_bytes",
                           "num_spilled"], 0)
    for node in alive:
        for k, v in node.total.items():
            total[k] = total.get(k, 0) + v
        for k, v in node.available.items():
            available[k] = available.get(k, 0) + v
        for k, v in node.status.get("store", {}).items():
            if k in store:
                store[k] += v
    return {
        "nodes": {"alive": len(alive), "dead": len(head.nodes.nodes) - len(alive)},
        "jobs": {"alive": sum(1 for j in head.jobs.jobs.values() if j["alive"]),
                 "total": len(head.jobs.jobs)},
        "actors": {"by_state": actor_states, "total": len(head.actors.actors)},
        "tasks": {"by_state": task_states, "by_name": by_name, "total": len(head.tasks)},
        "object_store": store,
        "resources": {"total": total, "available": available},
    }


def timeline(head: Tables, seconds: float = 60.0, max_rows: int = 2000) -> dict:
    """Tasks that ran during the last ``seconds``: one row per task with its worker and its
    start and end (``None`` while it runs), the most recent ``max_rows`` of them."""
    now = time.time()
    since = now - seconds
    rows = []
    for task in reversed(head.tasks.in_order()):
        start, end = task["started_at"], task["ended_at"]
        if start is None or (end is not None and end < since):
            continue
        rows.append({"task_id": task["task_id"], "name": task["name"], "state": task["state"],
                     "node_id": task["node_id"], "worker_pid": task["worker_pid"],
                     "start": start, "end": end})
        if len(rows) >= max_rows:
            break
    return {"now": now, "rows": rows}


async def _ask_nodes(head: Head, make) -> list[tuple[str, object]]:
    """Send ``make(req_id)`` to every live node's agent; ``[(node_id, reply)]`` of those that
    answered in time."""
    links = [(node_id, link) for link, node_id in list(head.node_links.items())
             if not link.closed]

    async def one(link):
        try:
            return await link.request(make, timeout=NODE_ANSWER_TIMEOUT)
        except (TimeoutError, ConnectionError):
            return None

    replies = await asyncio.gather(*(one(link) for _, link in links))
    return [(node_id, reply) for (node_id, _), reply in zip(links, replies) if reply is not None]


async def objects(head: Head) -> list[dict]:
    """Every object in the cluster's stores, once per object: ``object_id``, ``size``,
    ``owner`` (who made it), ``nodes`` (the nodes that hold a copy, the owner's first) and
    ``spilled`` (some copy is on disk)."""
    merged: dict[str, dict] = {}
    # a node names the owners among its own processes; drivers elsewhere, the head names
    drivers = {job["driver_address"]: f"driver pid {job['driver_pid']}"
               for job in head.jobs.jobs.values() if job["driver_address"]}
    for node_id, reply in await _ask_nodes(head, lambda r: P.GetStoreStats(r)):
        assert isinstance(reply, P.StoreStats)  # what an agent answers GetStoreStats with
        for obj in reply.objects:
            row = merged.setdefault(obj["object_id"], {
                "object_id": obj["object_id"], "size": obj["size"], "owner": "", "nodes": [],
                "spilled": False})
            primary = not obj["owner"].startswith("copy of")
            if primary:
                row["owner"] = drivers.get(obj["owner"], obj["owner"])
                row["nodes"].insert(0, node_id)
            else:
                row["nodes"].append(node_id)
            row["spilled"] = row["spilled"] or obj["spilled"]
    return list(merged.values())


async def log_files(head: Head) -> list[dict]:
    """The worker log files of every live node, each with its ``node_id``."""
    out = []
    for node_id, reply in await _ask_nodes(head, lambda r: P.ListLogs(r)):
        assert isinstance(reply, P.LogFiles)  # what an agent answers ListLogs with
        out += [dict(f, node_id=node_id) for f in reply.files]
    return out


async def read_log(head: Head, node_id: str, file: str, offset: int, limit: int) -> dict:
    """``{"data", "offset", "size"}`` of one node's log file; raises LookupError when the
    node or the file is unknown, ValueError when ``offset`` or ``limit`` is out of the
    range a node reads (callers check what users give them first)."""
    if not (-MAX_OFFSET <= offset <= MAX_OFFSET and 0 <= limit <= MAX_READ):
        # a number the link cannot encode must never reach it: it would stop its writer
        raise ValueError(f"a log read of {limit} bytes from offset {offset} is out of range")
    link = head.node_link(node_id)
    if link is None:
        raise LookupError(f"no live node with id {node_id!r}")
    reply = await link.request(lambda r: P.ReadLog(r, file, offset, limit),
                               timeout=NODE_ANSWER_TIMEOUT)
    if reply.error:
        raise LookupError(reply.error)
    return {"data": reply.data.decode("utf-8", "replace"), "offset": reply.offset,
            "size": reply.size}
