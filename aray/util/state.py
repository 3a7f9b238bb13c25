"""The state API: what the cluster's head knows of its nodes, actors, jobs and tasks.

Each function returns a list of dicts, one per node, actor or job, read from the head of
the cluster this program is connected to (after :func:`aray.init`), or else from the cluster
``address`` names (``"HOST:PORT"``, or a session directory); without one, from the cluster
that ``aray start`` started on this machine, or else from the newest one a program started
for itself with :func:`aray.init`. The same data is printed by ``aray list
nodes|actors|jobs|tasks|objects`` and ``aray summary tasks``, and served by the dashboard's
JSON API.

``filters`` keeps the rows that match every ``(key, op, value)`` given, where ``op`` is
``"="`` or ``"!="``, as in Ray's state API: ``list_actors(filters=[("state", "=",
"ALIVE")])``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .. import _global
from .. import _protocol as P
from .._link import CONTROL_TIMEOUT, ask
from .._portal import call

__all__ = ["list_actors", "list_jobs", "list_nodes", "list_objects", "list_placement_groups",
           "list_tasks", "summarize_tasks"]

Filter = tuple[str, str, Any]


def list_nodes(filters: list[Filter] | None = None, *, address: str | None = None) -> list[dict]:
    """Every node of the cluster, dead ones too, with Ray's keys (``NodeID``, ``Alive``,
    ``NodeManagerAddress``, ``Resources``, ...) as in :func:`aray.nodes`.

    Examples:
        >>> import aray
        >>> from aray.util.state import list_nodes
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> [node["Alive"] for node in list_nodes()]
        [True]
    """
    return _rows("nodes", filters, address)


def list_actors(filters: list[Filter] | None = None, *,
                address: str | None = None) -> list[dict]:
    """Every actor the head knows, with ``actor_id``, ``class_name``, ``name``,
    ``namespace``, ``job_id``, ``state`` (``PENDING``, ``ALIVE``, ``RESTARTING``, ``DEAD``),
    ``node_id``, ``pid``, ``restarts``, ``max_restarts``, ``detached`` and ``death_cause``.

    Examples:
        >>> import aray
        >>> from aray.util.state import list_actors
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote
        ... class Counter:
        ...     def ping(self):
        ...         return "pong"
        >>> counter = Counter.options(name="state-doc-counter").remote()
        >>> aray.get(counter.ping.remote())
        'pong'
        >>> [a["state"] for a in list_actors(filters=[("name", "=", "state-doc-counter")])]
        ['ALIVE']
    """
    return _rows("actors", filters, address)


def list_jobs(filters: list[Filter] | None = None, *, address: str | None = None) -> list[dict]:
    """Every job (a driver that connected): ``job_id``, ``driver_pid``, ``driver_address``
    (where its core listens), ``namespace``, ``alive``, ``start_time`` and, once it ended,
    ``end_time`` (seconds since the epoch).

    Examples:
        >>> import aray, os
        >>> from aray.util.state import list_jobs
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> [job["alive"] for job in list_jobs(filters=[("driver_pid", "=", os.getpid())])]
        [True]
    """
    return _rows("jobs", filters, address)


def list_tasks(filters: list[Filter] | None = None, *, address: str | None = None) -> list[dict]:
    """The cluster's tasks and actor calls: every one that has not ended, and the last
    100,000 that have. Each has ``task_id``, ``name``, ``type`` (``NORMAL_TASK`` or
    ``ACTOR_TASK``), ``job_id``, ``state`` (``PENDING_ARGS_AVAIL``: waiting for its
    arguments; ``PENDING_NODE_ASSIGNMENT``: waiting for a worker; ``RUNNING``; ``FINISHED``;
    ``FAILED``), ``node_id``, ``worker_pid``, ``error``, and the times (seconds since the
    epoch) ``submitted_at``, ``started_at``, ``ended_at``, plus ``duration_s`` once it ended.

    Tasks report their states in batches, every 0.1 s: a task that just changed may still
    show its previous state.

    Examples:
        >>> import aray, time
        >>> from aray.util.state import list_tasks
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote
        ... def state_doc_task():
        ...     return 1
        >>> aray.get(state_doc_task.remote())
        1
        >>> time.sleep(0.5)
        >>> [t["state"] for t in list_tasks(filters=[("name", "=", "state_doc_task")])]
        ['FINISHED']
    """
    return _rows("tasks", filters, address)


def list_objects(filters: list[Filter] | None = None, *,
                 address: str | None = None) -> list[dict]:
    """Every object in the cluster's object stores, once each, gathered from every live
    node: ``object_id``, ``size`` (bytes), ``owner`` (the process that made it, e.g.
    ``driver pid 4242``), ``nodes`` (ids of the nodes holding a copy, the first one's
    first) and ``spilled`` (a copy is on disk). Small objects kept inline by their owner are
    not in a store, so they are not listed.

    Examples:
        >>> import aray, numpy as np
        >>> from aray.util.state import list_objects
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> ref = aray.put(np.zeros(1_000_000))
        >>> [row["size"] > 8_000_000 for row in list_objects()
        ...  if row["object_id"] == ref.hex()]
        [True]
    """
    return _rows("objects", filters, address)


def list_placement_groups(filters: list[Filter] | None = None, *,
                          address: str | None = None) -> list[dict]:
    """Every placement group the head knows (removed ones too, the last 10,000):
    ``placement_group_id``, ``name``, ``namespace``, ``job_id``, ``state`` (``PENDING``,
    ``CREATED``, ``RESCHEDULING``, ``REMOVED``), ``strategy``, ``bundles`` (index ->
    resources), ``bundles_to_node_id``, ``is_detached`` and ``created_at``.

    Examples:
        >>> import aray
        >>> from aray.util.state import list_placement_groups
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> pg = aray.util.placement_group([{"CPU": 1}], name="state-doc-pg")
        >>> pg.wait(30)
        True
        >>> [g["state"] for g in list_placement_groups(filters=[("name", "=", "state-doc-pg")])]
        ['CREATED']
        >>> aray.util.remove_placement_group(pg)
    """
    return _rows("placement_groups", filters, address)


def summarize_tasks(*, address: str | None = None) -> dict[str, dict[str, int]]:
    """How many tasks of each name are in each state: ``{name: {state: count}}``, over the
    tasks :func:`list_tasks` knows.

    Examples:
        >>> import aray, time
        >>> from aray.util.state import summarize_tasks
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote
        ... def state_doc_summary():
        ...     return 1
        >>> aray.get([state_doc_summary.remote() for _ in range(3)])
        [1, 1, 1]
        >>> time.sleep(0.5)
        >>> summarize_tasks()["state_doc_summary"]
        {'FINISHED': 3}
    """
    return _rows("task_summary", None, address)[0]


def _rows(kind: str, filters: list[Filter] | None, address: str | None,
          token: str | None = None, note: Callable[[str], None] | None = None) -> list[dict]:
    """The rows of ``kind``, from this program's cluster or else from the one ``address``
    names (see :func:`aray._local.reach_cluster`, which ``token`` is for); ``note`` is told
    which cluster was chosen when several run on this machine."""
    checked = _check_filters(filters)
    core = _global.core_or_none()
    if address is None and token is None and core is not None:
        rows = call(core.loop, _from_core, core, kind, what=f"list_{kind}")
    else:
        rows = asyncio.run(_from_cluster(kind, address, token, note))
    return [row for row in rows if all(_matches(row, f) for f in checked)]


async def _from_core(core, kind: str) -> list[dict]:
    head = await core.head_link()
    # objects are gathered from every node, each given NODE_ANSWER_TIMEOUT by the head
    reply = await head.request(lambda r: P.GetState(r, kind), timeout=CONTROL_TIMEOUT)
    if reply.error:
        raise ValueError(reply.error)
    return reply.rows


async def _from_cluster(kind: str, address: str | None, token: str | None,
                        note: Callable[[str], None] | None) -> list[dict]:
    from .._local import reach_cluster

    info = reach_cluster(address, token)
    if info["note"] and note is not None:
        note(info["note"])
    reply = await ask(info["head_address"], info["token"], lambda r: P.GetState(r, kind),
                      name="state")
    if reply.error:
        raise ValueError(reply.error)
    return reply.rows


def _check_filters(filters: list[Filter] | None) -> list[Filter]:
    out = []
    for f in filters or []:
        if not (isinstance(f, (tuple, list)) and len(f) == 3 and f[1] in ("=", "!=")):
            raise ValueError(f"a filter is (key, '=' or '!=', value), not {f!r}")
        out.append(tuple(f))
    return out


def _matches(row: dict, f: Filter) -> bool:
    key, op, value = f
    have = row.get(key)
    # values given as text (from the command line) match numbers and flags written alike
    equal = have == value or (isinstance(value, str) and str(have) == value)
    return equal if op == "=" else not equal
