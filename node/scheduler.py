"""Resource accounting and lease decisions: plain code over plain data, no I/O.

Amounts are rounded to 1e-4 so that fractional resources (``num_cpus=0.1``) add up exactly.
"""

from __future__ import annotations

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
    return all(available.get(k, 0.0) >= _q(v) - 1e-9 for k, v in shape.items() if v > 0)


def feasible_anywhere(shape: dict, node_totals: list[dict]) -> bool:
    """Can some node ever satisfy ``shape`` (if it were idle)?"""
    return any(fits(shape, total) for total in node_totals)


class ResourcePool:
    """The resources of one node: totals, what is free, and which GPU ids are free."""

    def __init__(self, total: dict) -> None:
        self.total = {k: _q(v) for k, v in total.items()}
        self.available = dict(self.total)
        self.free_gpus = list(range(int(self.total.get("GPU", 0))))

    def fits(self, shape: dict) -> bool:
        return fits(shape, self.available)

    def acquire(self, shape: dict) -> list[int]:
        """Take ``shape`` (which must fit); returns the GPU ids assigned to it."""
        for k, v in shape.items():
            self.available[k] = _q(self.available.get(k, 0.0) - v)
        gpu = shape.get("GPU", 0)
        if gpu >= 1:  # whole GPUs: each holds its own device ids
            n = int(-(-gpu // 1))
            gpus, self.free_gpus = self.free_gpus[:n], self.free_gpus[n:]
            return gpus
        if gpu > 0:  # a fraction of a GPU shares a device (the first one that is not whole-leased)
            return self.free_gpus[:1] or [0]
        return []

    def release(self, shape: dict, gpu_ids: list[int]) -> None:
        for k, v in shape.items():
            self.available[k] = min(self.total.get(k, 0.0), _q(self.available.get(k, 0.0) + v))
        if shape.get("GPU", 0) >= 1:
            self.free_gpus = sorted(set(self.free_gpus) | set(gpu_ids))

    def lend(self, cpus: float) -> None:
        """A leased worker blocked in get: its CPUs may run other work meanwhile."""
        self.available["CPU"] = _q(self.available.get("CPU", 0.0) + cpus)

    def reclaim(self, cpus: float) -> None:
        """The blocked worker resumed: take its CPUs back (briefly oversubscribing if needed)."""
        self.available["CPU"] = _q(self.available.get("CPU", 0.0) - cpus)


class LeaseQueue:
    """Lease requests in arrival order; any request that fits may go ahead of one that does not."""

    def __init__(self) -> None:
        self._items: deque[Any] = deque()

    def push(self, item: Any) -> None:
        self._items.append(item)

    def remove_if(self, pred) -> list:
        gone = [i for i in self._items if pred(i)]
        for i in gone:
            self._items.remove(i)
        return gone

    def take_grantable(self, pool: ResourcePool, shape_of) -> list:
        """Pop every request that fits, acquiring its resources; returns [(item, gpu_ids)]."""
        granted = []
        for item in list(self._items):
            shape = shape_of(item)
            if pool.fits(shape):
                self._items.remove(item)
                granted.append((item, pool.acquire(shape)))
        return granted

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self._items)
