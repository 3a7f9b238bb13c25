"""Where a lease request goes under its scheduling strategy: plain code over what the node
knows of the cluster (its :class:`~.scheduler.ClusterView`), no I/O.

:meth:`Router.route` gives a :class:`Route`: keep the request here, send it to another
node's agent (spillback), fail it (its strategy can never be met), or, for a label strategy
that no node matches yet, keep it aside with a warning until a node that matches joins
(:meth:`Router.rematch`). Placement groups' bundles are not routed here: their callers ask
the head where a bundle is.

Example:
    >>> from .scheduler import ResourcePool
    >>> router = Router(ResourcePool({"CPU": 1}), ClusterView({"CPU": 1}), {})
    >>> router.view.update([["a", "addr-a", {"CPU": 1}, {"CPU": 1}],
    ...                     ["b", "addr-b", {"CPU": 4}, {"CPU": 4}]], own_id="a")
    >>> router.route({"CPU": 2}, "f", {}, True)
    Route(verdict='spill', detail='addr-b')
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import labels
from .scheduler import ClusterView, ResourcePool, fits, format_resources


class Route(NamedTuple):
    """``verdict``: "here", "spill" (``detail``: the agent's address), "fail" (``detail``:
    why) or "wait" (``detail``: the warning; the request waits for a matching node)."""

    verdict: str
    detail: str = ""


HERE = Route("here")


class Router:
    """Routes the lease requests of one node (see the module's docstring).

    Args:
        pool: the node's own pool (what fits here now, and ever).
        view: what the node knows of the others.
        node_labels: the node's labels.
    """

    def __init__(self, pool: ResourcePool, view: ClusterView, node_labels: dict) -> None:
        self.pool = pool
        self.view = view
        self.labels = dict(node_labels)
        self._spread_turn = 0  # SPREAD's rotation over the nodes
        #: requests with a label strategy that no node matches yet, with their strategies
        #: and shapes: they wait here until a node that matches joins
        self.unmatched: list[tuple[Any, dict, dict]] = []

    def route(self, shape: dict, description: str, strategy: dict,
              may_spillback: bool) -> Route:
        """Where a request of ``shape`` goes. One that another node sent here
        (``may_spillback`` False) stays, unless its labels do not match this node."""
        kind = strategy.get("kind")
        if kind == "labels":
            return self._by_labels(shape, description, strategy, may_spillback)
        if not may_spillback:  # (a request another node sent here stays: no ping-pong)
            return HERE
        if kind == "node":
            return self._affinity(shape, description, strategy)
        target = (self._spread_target(shape) if kind == "spread"
                  else self.view.spillback(shape, self.pool))
        return Route("spill", target) if target else HERE

    def _affinity(self, shape: dict, description: str, strategy: dict) -> Route:
        """A request for another node: that node's address, else, when it is soft, where
        the default strategy says, else a failure naming the node. (A request for this
        node comes as one that may not spill back.)"""
        node_id = strategy["node_id"]
        for entry in self.view.others:
            if entry[0] == node_id and fits(shape, entry[2]):
                return Route("spill", entry[1])
        if strategy.get("soft"):
            target = self.view.spillback(shape, self.pool)
            return Route("spill", target) if target else HERE
        known = any(entry[0] == node_id for entry in self.view.others)
        why = ("can never hold " + format_resources(shape) if known
               else "is not alive (or not a node of this cluster)")
        return Route("fail", (
            f"{description}: its NodeAffinitySchedulingStrategy(node_id={node_id!r}, "
            f"soft=False) names a node that {why}; use soft=True to run it elsewhere then"))

    def _spread_target(self, shape: dict) -> str:
        """SPREAD: the next of the nodes that can hold ``shape``, this one ("") among
        them, in turn."""
        nodes = ([""] if fits(shape, self.pool.total) else []) + [
            entry[1] for entry in self.view.others if fits(shape, entry[2])]
        if not nodes:
            return self.view.spillback(shape, self.pool)
        self._spread_turn += 1
        return nodes[self._spread_turn % len(nodes)]

    def _own(self, shape: dict) -> labels.Candidate:
        return ("", self.labels, self.pool.total, self.pool.fits(shape))

    def _by_labels(self, shape: dict, description: str, strategy: dict,
                   may_spillback: bool) -> Route:
        """A label strategy (see :func:`.labels.pick`): here, or the node it names, or (no
        node matches) wait here until one that matches joins. One another node sent here
        stays if this node matches, and fails if it does not (the sender's view was
        wrong; it is not sent on)."""
        if not may_spillback:
            if labels.pick([self._own(shape)], shape, strategy) is None:
                return Route("fail", (
                    f"{description} was sent to a node whose labels do not match its "
                    f"{labels.strategy_text(strategy)}: {self.labels}"))
            return HERE
        target = labels.route(strategy, shape, self._own(shape), self.view.others)
        if target is None:
            nodes = [(self.labels.get(labels.NODE_ID_LABEL, "this node"), self.labels)] + [
                (entry[0], labels.entry_labels(entry)) for entry in self.view.others]
            return Route("wait", labels.unmatched_message("task", description, shape,
                                                          strategy, nodes))
        return Route("spill", target) if target else HERE

    def wait(self, request: Any, shape: dict, strategy: dict) -> None:
        """Keep a request no node matches until one does."""
        self.unmatched.append((request, shape, strategy))

    def rematch(self) -> list[tuple[Any, str]]:
        """The view changed: the waiting requests a node now matches, each with where it
        goes ("" here, else an agent's address)."""
        found = []
        for entry in list(self.unmatched):
            request, shape, strategy = entry
            target = labels.route(strategy, shape, self._own(shape), self.view.others)
            if target is not None:
                self.unmatched.remove(entry)
                found.append((request, target))
        return found

    def forget(self, gone) -> None:
        """Drop the waiting requests ``gone(request)`` holds for (their caller left)."""
        self.unmatched = [entry for entry in self.unmatched if not gone(entry[0])]
