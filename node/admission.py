"""Which lease requests a node takes: the door of the lease scheduler. Plain code, no I/O.

A request that arrives is admitted here (a :class:`~.lease_records.Request` for the
scheduler to queue), or answered at once: sent to another node (spillback), failed (its
strategy or its bundle can never be met here), or held aside with a warning until a node
whose labels match joins. When the cluster's view changes, what can never run here moves on
to a node that joined and can, and queued requests that no node can run get their warning
once.
:class:`~.lease_scheduler.LeaseScheduler` then decides which worker gets what it admitted.

Example:
    >>> from . import lease_events as E
    >>> from .bundles import Pools
    >>> from .routing import Router
    >>> from .scheduler import ClusterView, ResourcePool
    >>> pool = ResourcePool({"CPU": 1})
    >>> view = ClusterView(pool.total)
    >>> door = Admission(pool, view, Pools(pool), Router(pool, view, {}))
    >>> door.lease(E.LeaseRequested("driver", 1, {"CPU": 1}, "f()", "", True))
    ... # doctest: +ELLIPSIS
    Request(caller='driver', req_id=1, shape={'CPU': 1}, description='f()', ...)
    >>> door.lease(E.LeaseRequested("driver", 2, {"GPU": 1}, "g()", "", False,
    ...                             {"kind": "pg", "pg_id": "p1", "index": 0}))
    ... # doctest: +ELLIPSIS
    [FailRequest(caller='driver', req_id=2, actor_id='', message='g(): bundle 0 ...', ...)]
"""

from __future__ import annotations

from collections.abc import Iterable

from . import lease_events as E
from .bundles import Pools
from .lease_records import Request
from .routing import Router
from .scheduler import ClusterView, ResourcePool, fits, format_resources


class Admission:
    """Admits the lease requests and actor placements of one node (see the module's
    docstring). It shares the node's pool, view, bundle pools and router with the
    scheduler, and reads them only; the router's set-aside requests are its own."""

    def __init__(self, pool: ResourcePool, view: ClusterView, pools: Pools,
                 router: Router) -> None:
        self.pool, self.view, self.pools, self.router = pool, view, pools, router

    def lease(self, ev: E.LeaseRequested) -> Request | list:
        """The request to queue here, or the instructions that answer it elsewhere."""
        if ev.strategy.get("kind") == "pg":  # the caller found the bundle's node: this one
            bundle = (ev.strategy["pg_id"], int(ev.strategy.get("index", -1)))
            if not self.pools.for_request(bundle):
                return [E.FailRequest(ev.caller, ev.req_id, "", (
                    f"{ev.description}: bundle {bundle[1]} of placement group {bundle[0]} is "
                    "not on this node"), kind="bundle")]
            return Request(ev.caller, ev.req_id, dict(ev.shape), ev.description, ev.job_id,
                           bundle=bundle)
        route = self.router.route(ev.shape, ev.description, ev.strategy, ev.may_spillback)
        if route.verdict == "spill":
            return [E.SpillBack(ev.caller, ev.req_id, route.detail)]
        if route.verdict == "fail":
            return [E.FailRequest(ev.caller, ev.req_id, "", route.detail, kind="unschedulable")]
        req = Request(ev.caller, ev.req_id, dict(ev.shape), ev.description, ev.job_id)
        if route.verdict == "wait":  # no node's labels match: until one that does joins
            req.warned = True
            self.router.wait(req, req.shape, ev.strategy)
            return [E.WarnInfeasible(ev.caller, ev.req_id, route.detail, "")]
        return req

    def actor(self, ev: E.ActorPlacementRequested) -> Request | list:
        """The placement to queue here, or the report that it cannot be (its bundle left)."""
        if ev.bundle is not None and not self.pools.for_request(ev.bundle):
            return [E.ReportActorDied(ev.actor_id, (
                f"bundle {ev.bundle[1]} of its placement group {ev.bundle[0]} is not on the "
                "node it was sent to"))]
        return Request(ev.caller, 0, dict(ev.placement), ev.description, ev.job_id,
                       ev.actor_id, dict(ev.hold), ev.spec, bundle=ev.bundle)

    def warn_if_infeasible(self, req: Request) -> list:
        """Tell a queued request's caller, once, that no node of the cluster can run it."""
        if req.warned or req.bundle is not None or self.view.feasible(req.shape):
            return []
        req.warned = True
        what = "actor" if req.actor_id else "task"
        return [E.WarnInfeasible(req.caller, req.req_id, self.view.infeasible_message(
            what, req.description, req.shape), req.actor_id)]

    def moved_on(self, queued: Iterable[Request]) -> tuple[list[Request], list]:
        """Queued tasks that can never run here but can on a node that joined:
        ``(to take out of the queue, the instructions that send them there)``."""
        moved: list[Request] = []
        out: list = []
        for req in queued:
            if req.actor_id or req.bundle is not None or fits(req.shape, self.pool.total):
                continue
            target = self.view.spillback(req.shape, self.pool)
            if target:
                moved.append(req)
                out.append(E.SpillBack(req.caller, req.req_id, target))
        return moved, out

    def pending(self, queued: Iterable[Request]) -> list[list]:
        """The requests waiting, by shape: ``[shape, count, infeasible]`` (for status)."""
        pending: dict[str, list] = {}
        for req in queued:
            entry = pending.setdefault(format_resources(req.shape), [req.shape, 0, False])
            entry[1] += 1
            entry[2] = entry[2] or not self.view.feasible(req.shape)
        for req, _, _ in self.router.unmatched:
            entry = pending.setdefault(format_resources(req.shape), [req.shape, 0, True])
            entry[1], entry[2] = entry[1] + 1, True
        return list(pending.values())
