"""A node's pools: its own free resources, and the placement groups' bundles reserved on it.

A reserved bundle is a :class:`~.scheduler.ResourcePool` of its own, taken from the
node's pool (GPU devices included), that only requests for its group draw on. A pool is
named by a key: ``None`` for the node's own, ``(pg_id, index)`` for a bundle. Plain data,
no I/O: the lease scheduler asks, and decides what happens to the requests and workers
of a bundle that ends.

Example:
    >>> from .scheduler import ResourcePool
    >>> pools = Pools(ResourcePool({"CPU": 4, "GPU": 2}))
    >>> pools.reserve("pg", [[0, {"CPU": 1, "GPU": 1}], [1, {"CPU": 1, "GPU": 1}]])
    True
    >>> pools.node.available, pools.pool(("pg", 1)).acquire({"GPU": 1})
    ({'CPU': 2.0, 'GPU': 0.0}, [1])
"""

from __future__ import annotations

import dataclasses

from .scheduler import ResourcePool


@dataclasses.dataclass
class Bundle:
    """A placement group's bundle reserved on this node."""

    shape: dict
    pool: ResourcePool
    gpu_ids: list  # the node's GPU slots it took


class Pools:
    """The node's pool and its bundles' pools, by key."""

    def __init__(self, node: ResourcePool) -> None:
        self.node = node
        self.bundles: dict[tuple[str, int], Bundle] = {}  # (pg id, index) -> bundle

    def for_request(self, bundle: tuple | None) -> list[ResourcePool]:
        """The pools a request may draw on: the node's (``bundle`` None), its bundle's,
        or, for index -1, any of its group's bundles here; [] when none is here."""
        if bundle is None:
            return [self.node]
        pg_id, index = bundle
        if index >= 0:
            found = self.bundles.get((pg_id, index))
            return [found.pool] if found is not None else []
        return [b.pool for (pg, _), b in self.bundles.items() if pg == pg_id]

    def key_of(self, pool: ResourcePool) -> tuple | None:
        if pool is self.node:
            return None
        return next(key for key, b in self.bundles.items() if b.pool is pool)

    def pool(self, key: tuple | None) -> ResourcePool | None:
        """The pool of ``key`` (None once its bundle has ended)."""
        if key is None:
            return self.node
        bundle = self.bundles.get(key)
        return bundle.pool if bundle is not None else None

    def give_back(self, key: tuple | None, shape: dict, gpu_ids: list) -> None:
        """Release into the pool of ``key``; what a bundle that ended held went back with
        it."""
        pool = self.pool(key)
        if pool is not None:
            pool.release(shape, gpu_ids)

    def keep_only(self, key: tuple | None, placement: dict, hold: dict) -> None:
        """An actor placed with ``placement`` now holds only ``hold`` (its GPUs stay), in
        the pool of ``key``."""
        pool = self.pool(key)
        assert pool is not None  # (a bundle's end takes its queued requests out)
        pool.release({k: v for k, v in placement.items() if k != "GPU"}, [])
        pool.acquire({k: v for k, v in hold.items() if k != "GPU"})

    def lend(self, key: tuple | None, cpus: float) -> None:
        """A blocked worker's ``cpus`` serve other leases of the pool of ``key``."""
        pool = self.pool(key)
        if pool is not None:
            pool.lend(cpus)

    def reclaim(self, key: tuple | None, cpus: float) -> None:
        """The worker resumes: it takes its ``cpus`` back (see ResourcePool.reclaim)."""
        pool = self.pool(key)
        if pool is not None:
            pool.reclaim(cpus)

    def reserve(self, pg_id: str, bundles: list) -> bool:
        """Reserve ``[[index, shape], ...]`` of a group now, all of them or none."""
        if any((pg_id, i) in self.bundles for i, _ in bundles) or not self._fit_together(
                [shape for _, shape in bundles]):
            return False
        for index, shape in bundles:
            gpu_ids = self.node.acquire(shape)
            self.bundles[(pg_id, index)] = Bundle(dict(shape), ResourcePool(shape, gpu_ids),
                                                  gpu_ids)
        return True

    def _fit_together(self, shapes: list[dict]) -> bool:
        """Whether all of ``shapes`` fit the node's free resources at once (GPU devices
        included): tried on a copy of the pool."""
        trial = ResourcePool(self.node.total)
        trial.available, trial.gpu_free = dict(self.node.available), list(self.node.gpu_free)
        for shape in shapes:
            if not trial.fits(shape):
                return False
            trial.acquire(shape)
        return True

    def here(self, pg_id: str, indexes: list) -> set[tuple[str, int]]:
        """The keys of those bundles of a group that are reserved here."""
        return {(pg_id, i) for i in indexes if (pg_id, i) in self.bundles}

    def end(self, keys: set) -> None:
        """End these bundles: their resources go back to the node's pool."""
        for key in keys:
            bundle = self.bundles.pop(key)
            self.node.release(bundle.shape, bundle.gpu_ids)
