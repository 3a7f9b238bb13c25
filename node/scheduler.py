"""Resource accounting and lease decisions: plain code over plain data, no I/O.

Amounts are rounded to 1e-4 so that fractional resources (``num_cpus=0.1``) add up exactly.
"""

from __future__ import annotations

import difflib
from collections import deque
from typing import Any

PRECISION = 4


def _q(x: float) -> float:
    return round(float(x), PRECISION)


def format_resources(resources: dict) -> str:
    """``{CPU: 1.0, CustomResource1: 2.0}`` in the style of the warning users see."""
    inner = ", ".join(f"{k}: {float(v)}" for k, v in sorted(resources.items())
                      if not k.startswith("node:"))
    return "{" + inner + "}"


def fits(shape: dict, available: dict) -> bool:
    """Whether ``available`` holds every positive amount of ``shape``.

    Examples:
        >>> fits({"CPU": 1}, {"CPU": 2}), fits({"CPU": 1, "X": 2}, {"CPU": 2})
        (True, False)
    """
    return all(available.get(k, 0.0) >= _q(v) - 1e-9 for k, v in shape.items() if v > 0)


def feasible_anywhere(shape: dict, node_totals: list[dict]) -> bool:
    """Can some node ever satisfy ``shape`` (if it were idle)?"""
    return any(fits(shape, total) for total in node_totals)


def taken(available: dict, shape: dict) -> dict:
    """``available`` with ``shape`` taken from it (a new dict, never below zero): what a
    node has free once a request sent to it runs, counted before the node says so itself.

    Example:
        >>> taken({"CPU": 2.0, "GPU": 1.0}, {"CPU": 0.5}), taken({"CPU": 1.0}, {"CPU": 2})
        ({'CPU': 1.5, 'GPU': 1.0}, {'CPU': 0.0})
    """
    left = dict(available)
    for k, v in shape.items():
        left[k] = max(0.0, _q(left.get(k, 0.0) - v))
    return left


def spillback_target(shape: dict, pool: ResourcePool, others: list[list]) -> str:
    """The agent address of another node to send a request to, or "" to keep it here.

    ``others`` are the other nodes as ``[node_id, address, total, free]``. A request that
    fits here stays; one this node can never satisfy goes to a node that can (one with the
    resources free now, if any); one that must wait here goes where it can run now. The
    chosen node's free resources count the request as taken until the next view, so that a
    burst of requests does not all go to the same node.

    Examples:
        >>> others = [["b", "addr-b", {"CPU": 4}, {"CPU": 4}]]
        >>> spillback_target({"CPU": 2}, ResourcePool({"CPU": 1}), others), others[0][3]
        ('addr-b', {'CPU': 2.0})
    """
    if not others or pool.fits(shape):
        return ""
    able = [n for n in others if fits(shape, n[2])]
    free = [n for n in able if fits(shape, n[3])]
    if free:
        free[0][3] = taken(free[0][3], shape)
        return free[0][1]
    if able and not fits(shape, pool.total):
        return able[0][1]  # it can never run here: wait there
    return ""


#: resources that are sizes in bytes: shown in GiB in what users read
BYTE_RESOURCES = ("memory", "object_store_memory")


def resources_text(resources: dict) -> str:
    """Every resource of ``resources`` (but the ``node:IP`` markers) as users read it,
    sizes in GiB.

    Examples:
        >>> resources_text({"GPU_MEMORY": 4, "CPU": 2, "memory": 2**31, "node:10.0.0.1": 1})
        '{CPU: 2.0, GPU_MEMORY: 4.0, memory: 2.00 GiB}'
    """
    parts = [f"{k}: {v / 2**30:.2f} GiB" if k in BYTE_RESOURCES else f"{k}: {float(v)}"
             for k, v in sorted(resources.items()) if not k.startswith("node:")]
    return "{" + ", ".join(parts) + "}"


def _nodes_text(node_totals: list[dict]) -> str:
    """What the nodes have, node by node (nodes alike counted once): a sum would hide that
    no single node has enough."""
    counts: dict[str, int] = {}
    for total in node_totals:
        text = resources_text(total)
        counts[text] = counts.get(text, 0) + 1
    nodes = len(node_totals)
    if nodes == 1:
        return f"the cluster has {next(iter(counts))}"
    if len(counts) == 1:
        return f"each of the cluster's {nodes} nodes has {next(iter(counts))}"
    if all(n == 1 for n in counts.values()):
        texts = list(counts)
        return f"the cluster's {nodes} nodes have " + ", ".join(texts[:-1]) + " and " + texts[-1]
    return f"the cluster's {nodes} nodes: " + ", ".join(f"{n} with {text}"
                                                         for text, n in counts.items())


def _missing_text(shape: dict, node_totals: list[dict]) -> str:
    """The resources of ``shape`` that no node has at all, with the name a node has that
    is closest to each, since a misspelt name is the usual cause."""
    have = sorted({k for total in node_totals for k, v in total.items()
                   if v > 0 and not k.startswith("node:")})
    missing = [k for k, v in sorted(shape.items()) if v > 0 and k not in have]
    if not missing:
        return ""
    notes = []
    for name in missing:
        # 0.75: GPU_MEMROY finds GPU_MEMORY, but TPU does not find CPU
        close = difflib.get_close_matches(name.lower(), [k.lower() for k in have], n=1,
                                          cutoff=0.75)
        guess = next((k for k in have if close and k.lower() == close[0]), "")
        notes.append(f"{name} (did you mean {guess}?)" if guess else name)
    return " No node has " + " or ".join(notes) + "."


def infeasible_message(what: str, description: str, shape: dict,
                       node_totals: list[dict]) -> str:
    """The warning a caller gets once when no node of the cluster could ever run a
    request: every resource it asks for, every resource each node has (custom ones
    included), and the names it asks for that no node has.

    Examples:
        >>> print(infeasible_message("task", "f", {"CPU": 1, "GPU_MEMROY": 1},
        ...                          [{"CPU": 8, "GPU_MEMORY": 4}]))  # doctest: +ELLIPSIS
        The task f cannot be scheduled right now. It requires {CPU: 1.0, GPU_MEMROY: 1.0} \
for placement, but no node of the cluster can provide that (the cluster has {CPU: 8.0, \
GPU_MEMORY: 4.0}). No node has GPU_MEMROY (did you mean GPU_MEMORY?). It stays pending ...
    """
    return (f"The {what} {description} cannot be scheduled right now. It requires "
            f"{resources_text(shape)} for placement, but no node of the cluster can provide "
            f"that ({_nodes_text(node_totals)}).{_missing_text(shape, node_totals)} It stays "
            "pending and runs as soon as a node that can run it joins; otherwise, reduce its "
            "resource requirements.")


class ClusterView:
    """What one node knows of the cluster: every node's totals (can a request ever run?)
    and the other nodes' free resources (where to send what does not fit here).

    Examples:
        >>> view = ClusterView({"CPU": 1})
        >>> view.feasible({"CPU": 2})
        False
        >>> view.update([["a", "addr-a", {"CPU": 1}, {"CPU": 1}],
        ...              ["b", "addr-b", {"CPU": 4}, {"CPU": 4}]], own_id="a")
        >>> view.feasible({"CPU": 2}), view.spillback({"CPU": 2}, ResourcePool({"CPU": 1}))
        (True, 'addr-b')
    """

    def __init__(self, own_total: dict) -> None:
        self._own_total = own_total
        self.totals: list[dict] = [own_total]
        self.others: list[list] = []  # other nodes: [node_id, address, total, free]

    def update(self, nodes: list[list], own_id: str) -> None:
        """The head's latest view: ``[node_id, address, total, free]`` per node."""
        self.totals = [n[2] for n in nodes] or [self._own_total]
        self.others = [n for n in nodes if n[0] != own_id]

    def feasible(self, shape: dict) -> bool:
        """Whether some node of the cluster could ever run ``shape``."""
        return feasible_anywhere(shape, self.totals)

    def spillback(self, shape: dict, pool: ResourcePool) -> str:
        """The address of another node to run ``shape`` on, or "" (see spillback_target)."""
        return spillback_target(shape, pool, self.others)

    def infeasible_message(self, what: str, description: str, shape: dict) -> str:
        """The warning for a request no node can run (see :func:`infeasible_message`)."""
        return infeasible_message(what, description, shape, self.totals)


class ReleaseError(RuntimeError):
    """Resources were given back that were not taken (a lease released twice, say)."""


class ResourcePool:
    """The resources of one node: totals, what is free, and how much of each GPU is free.

    Fractional GPU requests pack onto the most used device that still has room before they
    take a fresh one; whole-GPU requests take devices nothing else uses. Giving back more
    than was taken raises :class:`ReleaseError`.

    Examples:
        >>> pool = ResourcePool({"CPU": 2, "GPU": 2})
        >>> pool.acquire({"GPU": 0.5}), pool.acquire({"GPU": 1})
        ([0], [1])
        >>> pool.release({"GPU": 1}, [1])
        >>> pool.release({"GPU": 1}, [1])
        Traceback (most recent call last):
        ...
        aray.node.scheduler.ReleaseError: released more GPU than the node has (2.5 of 2.0 free): released twice?
    """

    def __init__(self, total: dict, gpu_slots: list[int] | None = None) -> None:
        self.total = {k: _q(v) for k, v in total.items()}
        self.available = dict(self.total)
        gpus = self.total.get("GPU", 0.0)
        # each device's capacity: whole devices, and a fraction of one if the total says so
        self.gpu_capacity = [1.0] * int(gpus) + ([_q(gpus - int(gpus))] if gpus % 1 else [])
        self.gpu_free = list(self.gpu_capacity)
        #: the ids that acquire() gives out for the devices (a placement group's bundle
        #: names the node's devices it reserved); by default 0, 1, ...
        self.gpu_slots = list(gpu_slots) if gpu_slots is not None else list(
            range(len(self.gpu_capacity)))

    @property
    def free_gpus(self) -> list[int]:
        """The ids of the GPUs nothing uses."""
        return [i for i, free in enumerate(self.gpu_free) if free >= 1.0 - 1e-9]

    def fits(self, shape: dict) -> bool:
        """Whether ``shape`` can be taken now (amounts, and a device for its GPUs)."""
        return fits(shape, self.available) and self._devices(shape.get("GPU", 0)) is not None

    def _devices(self, gpu: float) -> list[int] | None:
        """The devices a request of ``gpu`` GPUs would get (None: none can take it)."""
        if gpu <= 0:
            return []
        if gpu >= 1:  # whole devices, each its own
            n = int(-(-gpu // 1))
            free = self.free_gpus
            return free[:n] if len(free) >= n else None
        # a fraction: the fullest device that still has room, so that fractions pack
        room = [(free, i) for i, free in enumerate(self.gpu_free) if free >= _q(gpu) - 1e-9]
        return [min(room)[1]] if room else None

    def acquire(self, shape: dict) -> list[int]:
        """Take ``shape`` (which must fit); returns the GPU ids assigned to it."""
        gpu = shape.get("GPU", 0)
        devices = self._devices(gpu)
        assert devices is not None, f"{shape} does not fit the free GPUs {self.gpu_free}"
        for k, v in shape.items():
            self.available[k] = _q(self.available.get(k, 0.0) - v)
        for i in devices:
            self.gpu_free[i] = 0.0 if gpu >= 1 else _q(self.gpu_free[i] - gpu)
        return [self.gpu_slots[i] for i in devices]

    def release(self, shape: dict, gpu_ids: list[int]) -> None:
        """Give back ``shape`` and the GPU ids :meth:`acquire` gave it.

        Raises:
            ReleaseError: more would be free than the node has (released twice).
        """
        for k, v in shape.items():
            after = _q(self.available.get(k, 0.0) + v)
            if v > 0 and after > self.total.get(k, 0.0) + 1e-9:
                raise ReleaseError(f"released more {k} than the node has ({after} of "
                                   f"{self.total.get(k, 0.0)} free): released twice?")
        gpu = shape.get("GPU", 0)
        devices = [self.gpu_slots.index(i) for i in gpu_ids if i in self.gpu_slots]
        if gpu > 0 and len(devices) < len(gpu_ids):
            raise ReleaseError(f"released GPUs {gpu_ids}, not all of them this pool's")
        for i in devices if gpu > 0 else ():
            after = self.gpu_capacity[i] if gpu >= 1 else _q(self.gpu_free[i] + gpu)
            if after > self.gpu_capacity[i] + 1e-9 or (gpu >= 1 and self.gpu_free[i] > 1e-9):
                raise ReleaseError(f"released GPU {i}, which was not taken: released twice?")
        for k, v in shape.items():
            self.available[k] = _q(self.available.get(k, 0.0) + v)
        for i in devices if gpu > 0 else ():
            self.gpu_free[i] = self.gpu_capacity[i] if gpu >= 1 else _q(self.gpu_free[i] + gpu)

    def lend(self, cpus: float) -> None:
        """A leased worker blocked in get: its CPUs may run other work meanwhile."""
        self.available["CPU"] = _q(self.available.get("CPU", 0.0) + cpus)

    def reclaim(self, cpus: float) -> None:
        """The blocked worker resumed: take its CPUs back (briefly oversubscribing if needed)."""
        self.available["CPU"] = _q(self.available.get("CPU", 0.0) - cpus)


class LeaseQueue:
    """Lease requests in arrival order; any request that fits may go ahead of one that does not.

    Examples:
        >>> q = LeaseQueue(); q.push("big"); q.push("small")
        >>> pool = ResourcePool({"CPU": 1})
        >>> [item for item, _, _ in q.take_grantable(lambda i: [pool],
        ...                                           lambda i: {"CPU": 4 if i == "big" else 1})]
        ['small']
    """

    def __init__(self) -> None:
        self._items: deque[Any] = deque()

    def push(self, item: Any) -> None:
        """Queue ``item`` behind the others."""
        self._items.append(item)

    def remove_if(self, pred) -> list:
        """Take out every item ``pred`` holds for; returns them in order."""
        gone = [i for i in self._items if pred(i)]
        for i in gone:
            self._items.remove(i)
        return gone

    def take_grantable(self, pools_of, shape_of) -> list:
        """Pop every request that fits one of its pools (``pools_of(item)``: the pools it may
        take from, in order), acquiring its resources there; returns
        ``[(item, pool, gpu_ids)]``."""
        granted = []
        for item in list(self._items):
            shape = shape_of(item)
            pool = next((p for p in pools_of(item) if p.fits(shape)), None)
            if pool is not None:
                self._items.remove(item)
                granted.append((item, pool, pool.acquire(shape)))
        return granted

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self._items)
