"""Where the head puts actors: plain functions over plain data, no I/O and no clock.

A node here is anything with ``node_id``, ``total`` and ``available`` resource dicts (the
head's :class:`~aray._head.state.NodeInfo`); a request is a resource shape such as
``{"CPU": 1.0}`` (an actor's placement shape; placement groups' bundles will ask the same).

Example:
    >>> from aray._head.state import NodeInfo
    >>> busy = NodeInfo("a", "", "", {"CPU": 2.0}, {"CPU": 0.0})
    >>> idle = NodeInfo("b", "", "", {"CPU": 2.0}, {"CPU": 2.0})
    >>> choose_node([busy, idle], {"CPU": 1.0})
    'b'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from ..node import labels
from ..node.scheduler import fits, taken


class NodeResources(Protocol):
    """What placement needs to know of a node."""

    node_id: str
    total: dict
    available: dict


def choose_node(alive: Iterable[NodeResources], shape: dict) -> str | None:
    """The node a request of ``shape`` goes to: the first with the resources free now,
    else the first that could ever hold it (its agent queues it until they are free),
    else the first node (whose agent tells the caller that no node can run it); ``None``
    when no node is alive.

    Example:
        >>> from aray._head.state import NodeInfo
        >>> choose_node([NodeInfo("a", "", "", {"CPU": 1.0}, {"CPU": 1.0})], {"GPU": 1})
        'a'
        >>> choose_node([], {"CPU": 1.0}) is None
        True
    """
    # one pass, which ends at the first node with the resources free
    could = first = None
    for node in alive:
        if fits(shape, node.available):
            return node.node_id
        if could is None and fits(shape, node.total):
            could = node.node_id
        if first is None:
            first = node.node_id
    return could if could is not None else first


def place(alive: Iterable[NodeResources], shape: dict, strategy: dict,
          turn: int = 0) -> tuple[str | None, str]:
    """The node an actor of ``shape`` goes to under its ``scheduling_strategy`` (its wire
    form: ``{}``, ``{"kind": "spread"}``, ``{"kind": "node", "node_id", "soft"}``,
    ``{"kind": "labels", ...}``), and why there is none ("" when that is just no node
    alive). ``turn`` rotates SPREAD. Under a label strategy that no node can meet, the node
    is "": the actor waits for one that can (see :func:`by_labels`).

    Example:
        >>> from aray._head.state import NodeInfo
        >>> nodes = [NodeInfo(n, "", "", {"CPU": 2.0}, {"CPU": 2.0}) for n in "ab"]
        >>> place(nodes, {"CPU": 1.0}, {"kind": "spread"}, turn=1)
        ('b', '')
        >>> why = place(nodes, {"CPU": 1.0}, {"kind": "node", "node_id": "z", "soft": False})[1]
        >>> why.endswith("names a node that is not alive (or not a node of this cluster)")
        True
    """
    nodes = list(alive)
    kind = strategy.get("kind")
    if kind == "spread":
        could = [n for n in nodes if fits(shape, n.total)]
        if could:
            return could[turn % len(could)].node_id, ""
    elif kind == "labels":
        return by_labels(nodes, shape, strategy) or "", ""
    elif kind == "node":
        node_id = strategy["node_id"]
        target = next((n for n in nodes if n.node_id == node_id), None)
        if target is not None and fits(shape, target.total):
            return node_id, ""
        if not strategy.get("soft"):
            why = ("is not alive (or not a node of this cluster)" if target is None
                   else f"can never hold {shape}")
            return None, (f"its NodeAffinitySchedulingStrategy(node_id={node_id!r}, "
                          f"soft=False) names a node that {why}")
    return choose_node(nodes, shape), ""


def by_labels(alive: Iterable[NodeResources], shape: dict, strategy: dict) -> str | None:
    """The node a request of ``shape`` goes to under a label strategy (see
    :func:`aray.node.labels.pick`; a node's labels are its ``labels``), None when no node
    whose labels match can hold it.

    Example:
        >>> from aray._head.state import NodeInfo
        >>> nodes = [NodeInfo(n, "", "", {"CPU": 1.0}, {"CPU": 1.0}, labels={"zone": n})
        ...          for n in "ab"]
        >>> by_labels(nodes, {"CPU": 1.0}, {"kind": "labels", "hard": {"zone": ["in", ["b"]]}})
        'b'
    """
    return labels.pick([(n.node_id, getattr(n, "labels", {}), n.total, fits(shape, n.available))
                        for n in alive], shape, strategy)


def should_move(shape: dict, current: NodeResources | None, joined: NodeResources) -> bool:
    """Whether a pending request of ``shape`` waiting on ``current`` (``None``: a node
    that is gone) moves to the node that ``joined``: when the new node can hold it and
    the one it waits on never could.

    Example:
        >>> from aray._head.state import NodeInfo
        >>> small = NodeInfo("a", "", "", {"CPU": 1.0}, {"CPU": 1.0})
        >>> big = NodeInfo("b", "", "", {"CPU": 8.0}, {"CPU": 8.0})
        >>> should_move({"CPU": 4.0}, small, big), should_move({"CPU": 1.0}, small, big)
        (True, False)
    """
    if current is not None and current.node_id == joined.node_id:
        return False
    return fits(shape, joined.total) and (current is None or not fits(shape, current.total))


def on_node(items: Iterable, node_id: str) -> list:
    """Those of ``items`` (anything with a ``node_id``) placed on ``node_id``: what a
    node's death affects."""
    return [item for item in items if item.node_id == node_id]


def bundle_node(bundles: list[tuple[str | None, dict]], index: int, shape: dict,
                turn: int = 0) -> str | None:
    """The node a request of ``shape`` in a placement group goes to: that of bundle
    ``index``, or for -1 the node of a bundle that can hold it (``turn`` rotates among
    them); ``None`` while the bundle is not reserved.

    Example:
        >>> bundle_node([("a", {"CPU": 1.0}), ("b", {"CPU": 4.0})], -1, {"CPU": 2})
        'b'
    """
    if index >= 0:
        return bundles[index][0] if index < len(bundles) else None
    able = [node for node, b in bundles if node is not None and fits(shape, b)]
    return able[turn % len(able)] if able else None


#: the placement group strategies, as Ray names them
PG_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def plan_bundles(nodes: Iterable[NodeResources], bundles: list[dict], strategy: str,
                 fixed: dict[int, str] | None = None, *, free: bool = True,
                 selectors: list[dict] | None = None) -> list[str] | None:
    """The node of each bundle of a placement group, all at once, or ``None`` when they
    cannot all be placed (nothing is half-placed). ``fixed``: the bundles that keep their
    node (a group rescheduling the bundles of a dead node). ``free``: plan over what the
    nodes have free now; ``False``: over their totals (could the group ever be placed?).

    * ``PACK``: as few nodes as will do, one if one can hold them all;
    * ``SPREAD``: a node of its own for each bundle where there are nodes enough;
    * ``STRICT_PACK``: one node for all, or none;
    * ``STRICT_SPREAD``: a node of its own for each bundle, or none.

    ``selectors``: a label selector per bundle (wire form, ``{}``: any node), which the
    bundle's node must match (``bundle_label_selector``).

    Examples:
        >>> from aray._head.state import NodeInfo
        >>> nodes = [NodeInfo(n, "", "", {"CPU": 2.0}, {"CPU": 2.0}) for n in "ab"]
        >>> plan_bundles(nodes, [{"CPU": 1}, {"CPU": 1}], "PACK")
        ['a', 'a']
        >>> plan_bundles(nodes, [{"CPU": 1}, {"CPU": 1}], "SPREAD")
        ['a', 'b']
        >>> plan_bundles(nodes, [{"CPU": 1}] * 3, "STRICT_SPREAD") is None
        True
        >>> plan_bundles(nodes, [{"CPU": 2}, {"CPU": 1}], "PACK")
        ['a', 'b']
        >>> plan_bundles(nodes, [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD", {0: "b"})
        ['b', 'a']
    """
    fixed = fixed or {}
    nodes = list(nodes)
    have = {n.node_id: dict(n.available if free else n.total) for n in nodes}
    order = list(have)
    node_labels = {n.node_id: getattr(n, "labels", {}) for n in nodes}

    def allowed(i: int, node_id: str) -> bool:
        return not selectors or not selectors[i] or labels.matches(selectors[i],
                                                                  node_labels[node_id])

    plan: list[str | None] = [fixed.get(i) for i in range(len(bundles))]
    todo = [i for i in range(len(bundles)) if plan[i] is None]
    if strategy in ("PACK", "STRICT_PACK"):
        # the node that holds the fixed ones (or any, in order) if it takes all the others
        used = [n for n in dict.fromkeys(plan) if n is not None]
        for node_id in used + [n for n in order if n not in used]:
            if node_id in have and fits(_sum(bundles[i] for i in todo), have[node_id]) \
                    and all(allowed(i, node_id) for i in todo):
                for i in todo:
                    plan[i] = node_id
                return plan  # type: ignore[return-value]
        if strategy == "STRICT_PACK":
            return None
    for i in todo:
        used = [n for n in plan if n is not None]
        if strategy == "PACK":  # the nodes already used first, in the order they were
            candidates = list(dict.fromkeys(used)) + [n for n in order if n not in used]
        else:  # spread: nodes not used yet first (only those, when strict)
            candidates = [n for n in order if n not in used]
            if strategy == "SPREAD":
                candidates += list(dict.fromkeys(used))
        chosen = next((n for n in candidates if fits(bundles[i], have[n]) and allowed(i, n)),
                      None)
        if chosen is None:
            return None
        plan[i] = chosen
        have[chosen] = taken(have[chosen], bundles[i])
    return plan  # type: ignore[return-value]


def _sum(shapes: Iterable[dict]) -> dict:
    total: dict = {}
    for shape in shapes:
        for k, v in shape.items():
            total[k] = total.get(k, 0.0) + v
    return total
