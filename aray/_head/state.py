"""The head's tables as plain data: nodes, jobs, actors and tasks. No I/O, testable on its
own. Every table is bounded: what has ended (dead nodes, finished jobs, dead actors, ended
tasks) is kept for the state API up to a limit, the oldest going first."""

from __future__ import annotations

import dataclasses
import enum
import time
from collections import OrderedDict

from ..node.scheduler import taken

#: how many ended rows each table keeps for the state API
MAX_DEAD_NODES = 1_000
MAX_FINISHED_JOBS = 10_000
MAX_DEAD_ACTORS = 10_000
MAX_ENDED_TASKS = 100_000


def _bound(order: dict, table: dict, limit: int) -> None:
    """Drop the oldest keys of ``order`` (ended rows, oldest first) from ``table`` until
    at most ``limit`` remain."""
    while len(order) > limit:
        key = next(iter(order))
        del order[key]
        table.pop(key, None)


class NodeState(enum.StrEnum):
    """Whether a node is in the cluster. A node never comes back: an agent that
    reconnects registers as a new node."""

    ALIVE = "ALIVE"
    DEAD = "DEAD"


@dataclasses.dataclass
class NodeInfo:
    """One node as the head knows it: its agent's address, its resources (``total``, and
    ``available`` as of its last report), its last heartbeat's ``status`` and its
    ``labels``."""

    node_id: str
    address: str
    ip: str
    total: dict
    available: dict
    state: NodeState = NodeState.ALIVE
    joined_at: float = dataclasses.field(default_factory=time.time)
    status: dict = dataclasses.field(default_factory=dict)  # from its last heartbeat
    host: dict = dataclasses.field(default_factory=dict)  # machine, pid, session directory
    labels: dict = dataclasses.field(default_factory=dict)  # str -> str (docs/scheduling.md)

    @property
    def alive(self) -> bool:
        return self.state is NodeState.ALIVE


def _view_entry(n: NodeInfo) -> list:
    return [n.node_id, n.address, n.total, n.available, n.labels]


class NodeTable:
    """Nodes by id, in the order they joined; the most recent ``max_dead`` dead ones are kept.

    Example:
        >>> nodes = NodeTable()
        >>> _ = nodes.join("n1", "ws://127.0.0.1:1", "127.0.0.1", {"CPU": 2.0})
        >>> nodes.mark_dead("n1"); nodes.nodes["n1"].state
        <NodeState.DEAD: 'DEAD'>
    """

    def __init__(self, max_dead: int = MAX_DEAD_NODES) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self._dead: dict[str, None] = {}  # dead node ids, oldest first
        self.max_dead = max_dead

    def join(self, node_id: str, address: str, ip: str, total: dict,
             host: dict | None = None, labels: dict | None = None) -> NodeInfo:
        info = NodeInfo(node_id, address, ip, dict(total), dict(total), host=dict(host or {}),
                        labels=dict(labels or {}))
        self.nodes[node_id] = info
        return info

    def update_available(self, node_id: str, available: dict) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            node.available = dict(available)

    def reserve(self, node_id: str, shape: dict) -> None:
        """Count a request just placed on a node as taking ``shape`` of its free resources,
        until the node's next report: placements made before it reports (a burst of actor
        creations) then spread over the nodes instead of all going to the first."""
        node = self.nodes.get(node_id)
        if node is not None:
            node.available = taken(node.available, shape)

    def update_status(self, node_id: str, status: dict) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            node.status = status

    def mark_dead(self, node_id: str) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            node.state = NodeState.DEAD
            self._dead[node_id] = None
            _bound(self._dead, self.nodes, self.max_dead)

    def alive(self) -> list[NodeInfo]:
        return list(self.iter_alive())

    def iter_alive(self):
        """The alive nodes, in the order they joined, without making a list of them."""
        return (n for n in self.nodes.values() if n.alive)

    def snapshot(self) -> NodeTable:
        """A copy to read from another thread (the rows are shared, and only read there)."""
        copy = _shallow(self)
        copy.nodes, copy._dead = dict(self.nodes), {}
        return copy

    def view(self) -> list:
        """What node agents need to know of each other: [node_id, address, totals, free,
        labels]."""
        return [_view_entry(n) for n in self.alive()]

    def view_changes(self, node_ids) -> tuple[list, list]:
        """(entries, removed) for a ClusterViewUpdated of these nodes, in the order given:
        the view entry of each that is alive, and the ids of the others. (Nodes new to the
        agents must come in the order they joined: an agent appends them.)"""
        changed, removed = [], []
        for node_id in node_ids:
            node = self.nodes.get(node_id)
            if node is not None and node.alive:
                changed.append(_view_entry(node))
            else:
                removed.append(node_id)
        return changed, removed

    def describe(self, head_node: str = "") -> list[dict]:
        """One dict per node with Ray's keys (``NodeID``, ``Alive``, ``Resources`` ...);
        ``head_node``: the id of the node the head runs on."""
        out = []
        for n in self.nodes.values():
            resources = dict(n.total)
            resources[f"node:{n.ip}"] = 1.0
            out.append({
                "NodeID": n.node_id,
                "Alive": n.alive,
                "alive": n.alive,
                "NodeManagerAddress": n.ip,
                "NodeManagerHostname": n.ip,
                "NodeName": n.ip,
                "AgentAddress": n.address,
                "Resources": resources,
                "Labels": dict(n.labels),
                "Available": dict(n.available) if n.alive else {},
                "ObjectStore": n.status.get("store", {}) if n.alive else {},
                "PendingDemands": n.status.get("pending", []) if n.alive else [],
                "Host": n.status.get("host", {}) if n.alive else {},
                "is_head": n.node_id == head_node,
            })
        return out


class JobTable:
    def __init__(self, max_finished: int = MAX_FINISHED_JOBS) -> None:
        self._next = 1
        self.jobs: dict[str, dict] = {}
        self._finished: dict[str, None] = {}  # finished job ids, oldest first
        self.max_finished = max_finished

    def new_job(self, pid: int, namespace: str = "", address: str = "",
                submission_id: str = "") -> str:
        """A new job id; its namespace is the driver's, or an anonymous one of its own.
        ``address``: where the driver's core listens (it owns the job's objects);
        ``submission_id``: the submitted job (aray job submit) whose entrypoint it is."""
        job_id = self._next.to_bytes(4, "little").hex()
        self._next += 1
        self.jobs[job_id] = {"job_id": job_id, "driver_pid": pid, "start_time": time.time(),
                             "alive": True, "namespace": namespace or f"anonymous-{job_id}",
                             "driver_address": address, "submission_id": submission_id}
        return job_id

    def snapshot(self) -> JobTable:
        """A copy to read from another thread: its own copy of every row."""
        copy = _shallow(self)
        copy.jobs, copy._finished = {k: dict(v) for k, v in self.jobs.items()}, {}
        return copy

    def namespace(self, job_id: str, requested: str = "") -> str:
        if requested:
            return requested
        job = self.jobs.get(job_id)
        return job["namespace"] if job else f"anonymous-{job_id}"

    def finish(self, job_id: str) -> None:
        if job_id in self.jobs:
            self.jobs[job_id]["alive"] = False
            self.jobs[job_id]["end_time"] = time.time()
            self._finished[job_id] = None
            _bound(self._finished, self.jobs, self.max_finished)


class ActorState(enum.StrEnum):
    """An actor's state; the values are what the state API and the dashboard show."""

    PENDING = "PENDING"  # registered, constructor not run yet
    ALIVE = "ALIVE"
    RESTARTING = "RESTARTING"  # its process died (or was killed) and it may run again
    DEAD = "DEAD"  # for good: its name is free again


@dataclasses.dataclass
class ActorRecord:
    actor_id: str
    name: str
    namespace: str
    job_id: str
    meta: dict
    state: ActorState = ActorState.PENDING
    spec: dict | None = None
    address: str = ""
    worker_id: str = ""
    node_id: str = ""
    pid: int = 0
    restarts: int = 0
    no_restart: bool = False
    death_cause: str = ""
    death_error: bytes | None = None  # the constructor's pickled error, if that killed it

    @property
    def detached(self) -> bool:
        return self.meta.get("lifetime") == "detached"

    @property
    def max_restarts(self) -> int:
        return int(self.meta.get("max_restarts", 0))

    def can_restart(self) -> bool:
        return not self.no_restart and (self.max_restarts < 0 or self.restarts < self.max_restarts)

    def describe(self, public: bool = False) -> dict:
        """This actor as a dict; ``public``: what the state API shows (nothing pickled)."""
        out = {"actor_id": self.actor_id, "name": self.name, "namespace": self.namespace,
               "job_id": self.job_id, "state": self.state.value, "address": self.address,
               "node_id": self.node_id, "pid": self.pid, "restarts": self.restarts,
               "class_name": self.meta.get("class_name", ""), "death_cause": self.death_cause}
        if public:
            out["detached"] = self.detached
            out["max_restarts"] = self.max_restarts
        else:
            out["meta"] = self.meta
            out["death_error"] = self.death_error
        return out


class ActorTable:
    """Actors by id, and names per namespace. A name is free again once its actor is dead;
    the most recent ``max_dead`` dead actors are kept."""

    def __init__(self, max_dead: int = MAX_DEAD_ACTORS) -> None:
        self.actors: dict[str, ActorRecord] = {}
        self.names: dict[tuple[str, str], str] = {}
        self._dead: dict[str, None] = {}  # dead actor ids, oldest first
        self.max_dead = max_dead

    def register(self, actor_id: str, name: str, namespace: str, job_id: str, meta: dict,
                 get_if_exists: bool) -> tuple[str, str]:
        """Returns ``(actor_id, error)``: the new id, an existing one, or an error message."""
        if name:
            existing = self.names.get((namespace, name))
            if existing is not None and self.actors[existing].state != ActorState.DEAD:
                if get_if_exists:
                    return existing, ""
                return "", (f"an actor named {name!r} already exists in namespace "
                            f"{namespace!r}; pick another name, or pass get_if_exists=True "
                            "to get a handle to it")
            self.names[(namespace, name)] = actor_id
        self.actors[actor_id] = ActorRecord(actor_id, name, namespace, job_id, dict(meta))
        return actor_id, ""

    def snapshot(self) -> ActorTable:
        """A copy to read from another thread (the records are shared, and only read
        there)."""
        copy = _shallow(self)
        copy.actors, copy.names, copy._dead = dict(self.actors), dict(self.names), {}
        return copy

    def lookup(self, name: str, namespace: str) -> ActorRecord | None:
        actor_id = self.names.get((namespace, name))
        record = self.actors.get(actor_id) if actor_id else None
        return record if record is not None and record.state != ActorState.DEAD else None

    def mark_dead(self, record: ActorRecord, cause: str, error: bytes | None = None) -> None:
        record.state = ActorState.DEAD
        record.death_cause = cause
        record.death_error = error
        record.address = ""
        if record.name and self.names.get((record.namespace, record.name)) == record.actor_id:
            del self.names[(record.namespace, record.name)]
        self._dead[record.actor_id] = None
        _bound(self._dead, self.actors, self.max_dead)


class TaskState(enum.StrEnum):
    """A task's state, in the order a task goes through them (the values are Ray's names,
    which the state API and the dashboard show)."""

    PENDING_ARGS_AVAIL = "PENDING_ARGS_AVAIL"  # waiting for its arguments
    PENDING_NODE_ASSIGNMENT = "PENDING_NODE_ASSIGNMENT"  # waiting for a worker
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"


#: the order of a task's states: an event never moves a task back
TASK_STATES = [state.value for state in TaskState]
_RANK = {state: i for i, state in enumerate(TASK_STATES)}
_RANK[TaskState.FAILED] = _RANK[TaskState.FINISHED]
_ENDED = (TaskState.FINISHED, TaskState.FAILED)


class TaskTable:
    """Tasks by id, built from the events of their submitters and workers; keeps the most
    recent ``limit`` tasks that ended (and every task that has not: when a job finishes,
    its tasks that never ended are marked failed, and count as ended). O(1) per event,
    the counts per name and state included.

    Example:
        >>> table = TaskTable()
        >>> table.apply([[b"\\x01", "RUNNING", 1.0, {"name": "f"}]])
        >>> table.apply([[b"\\x01", "FINISHED", 2.0, {}]])
        >>> table.summary()
        {'f': {'FINISHED': 1}}
    """

    def __init__(self, limit: int = MAX_ENDED_TASKS) -> None:
        self.limit = limit
        self.tasks: dict[str, dict] = {}  # in order of first event
        # ids of ended tasks, in the order they ended (an OrderedDict: taking the oldest
        # is O(1); a dict's first item is found by skipping the slots of those taken before)
        self._ended: OrderedDict[str, None] = OrderedDict()
        self.version = 0  # changes with every batch applied
        self._counts: dict[str, dict[str, int]] = {}  # name -> state -> tasks

    @property
    def ended(self) -> int:
        return len(self._ended)

    def _count(self, task: dict, n: int) -> None:
        by_state = self._counts.setdefault(task["name"] or "?", {})
        by_state[task["state"]] = left = by_state.get(task["state"], 0) + n
        if left <= 0:
            del by_state[task["state"]]
            if not by_state:
                del self._counts[task["name"] or "?"]

    def apply(self, events: list, source: dict | None = None) -> None:
        """Merge a batch of events (``[task_id, state, time, fields]``); ``source``: fields
        of every event of the batch (the reporting worker's node and pid)."""
        self.version += 1
        for task_id, state, when, fields in events:
            key = task_id.hex()
            task = self.tasks.get(key)
            if task is None:
                task = self.tasks[key] = {
                    "task_id": key, "name": "", "job_id": "", "type": "NORMAL_TASK",
                    "state": state, "node_id": "", "worker_pid": 0, "error": "",
                    # first heard of when it ran: it was submitted no later than that
                    "submitted_at": fields.get("started_at") or when, "started_at": None,
                    "ended_at": None}
            else:
                self._count(task, -1)
            was_ended = task["ended_at"] is not None
            for k, v in (*(source or {}).items(), *fields.items()):
                if v or k not in task:
                    task[k] = v
            if state == TaskState.RUNNING:
                task["started_at"] = when
            elif state in _ENDED:
                task["ended_at"] = when
            if _RANK.get(state, 0) >= _RANK.get(task["state"], 0):
                task["state"] = state
            self._count(task, 1)
            if not was_ended and task["ended_at"] is not None:
                self._ended[key] = None
        self._bound()

    def _bound(self) -> None:
        while len(self._ended) > self.limit:
            key, _ = self._ended.popitem(last=False)
            task = self.tasks.pop(key, None)
            if task is not None:
                self._count(task, -1)

    def finish_job(self, job_id: str, now: float | None = None) -> None:
        """The job's driver is gone: its tasks that never ended never will (its workers
        went with it). Mark them failed, so that they age out like the others."""
        now = time.time() if now is None else now
        self.version += 1
        for key, task in self.tasks.items():
            if task["job_id"] == job_id and task["ended_at"] is None:
                self._count(task, -1)
                task["state"], task["ended_at"] = TaskState.FAILED.value, now
                task["error"] = task["error"] or "its driver exited before it ended"
                self._count(task, 1)
                self._ended[key] = None
        self._bound()

    def __len__(self) -> int:
        return len(self.tasks)

    def in_order(self):
        """The tasks, in the order the table first heard of them."""
        return self.tasks.values()

    def rows(self, tasks=None) -> list[dict]:
        """Tasks as the state API shows them (all, or those of ``tasks``)."""
        return task_rows(self.tasks.values() if tasks is None else tasks)

    def summary(self) -> dict:
        """Counts per task name and state (a copy: kept up to date as events come)."""
        return {name: dict(by_state) for name, by_state in self._counts.items()}

    def snapshot(self, rows: bool = True) -> TaskRows:
        """The tasks as they are now, to read from another thread (``rows=False``: their
        number and counts only)."""
        return TaskRows(self, rows)


class TaskRows:
    """A :class:`TaskTable`'s tasks as they were at one moment, to read from another
    thread: a list of the rows (shared with the table, and only read here) and the counts.
    It answers what views ask of a table: ``in_order()``, ``rows()``, ``summary()``."""

    def __init__(self, table: TaskTable, rows: bool = True) -> None:
        # a list: faster to make than a dict
        self._tasks = list(table.tasks.values()) if rows else []
        self._len = len(table.tasks)
        self._counts = table.summary()
        self.version = table.version

    def __len__(self) -> int:
        return self._len

    def in_order(self) -> list[dict]:
        return self._tasks

    def rows(self, tasks=None) -> list[dict]:
        return task_rows(self._tasks if tasks is None else tasks)

    def summary(self) -> dict:
        return self._counts


def task_rows(tasks) -> list[dict]:
    """Tasks as the state API shows them: copies of their rows, with ``duration_s`` once
    they ran and ended."""
    out = []
    for task in tasks:
        row = dict(task)
        if task["started_at"] is not None and task["ended_at"] is not None:
            row["duration_s"] = task["ended_at"] - task["started_at"]
        out.append(row)
    return out


def _shallow(table):
    """A new table of ``table``'s class with the same attributes (snapshots replace the
    ones that change)."""
    copy = object.__new__(type(table))
    copy.__dict__.update(table.__dict__)
    return copy
