"""Scheduling strategies, as Ray's ``ray.util.scheduling_strategies``.

``scheduling_strategy=`` of a task or actor takes:

* ``"DEFAULT"`` (or None): where the resources are, the caller's own node first;
* ``"SPREAD"``: over the nodes that can hold it, one after another;
* :class:`NodeAffinitySchedulingStrategy`: on one node; with ``soft=True`` anywhere else
  when that node is dead, unknown or can never hold it, else the task fails (an actor
  dies) with an error that says so;
* :class:`PlacementGroupSchedulingStrategy`: in a bundle of a placement group (see
  :mod:`aray.util.placement_group`).

Node labels are not in aray yet: their strategy raises ValueError saying so.

Example:
    >>> strategy_wire("SPREAD"), strategy_wire(None)
    ({'kind': 'spread'}, {})
    >>> strategy_wire(NodeAffinitySchedulingStrategy("ab12", soft=True))
    {'kind': 'node', 'node_id': 'ab12', 'soft': True}
"""

from __future__ import annotations

from typing import Any

__all__ = ["NodeAffinitySchedulingStrategy", "NodeLabelSchedulingStrategy",
           "PlacementGroupSchedulingStrategy"]


class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (a hex id, as ``aray.nodes()`` and
    ``get_runtime_context().get_node_id()`` give it).

    Args:
        node_id: the node.
        soft: when that node is dead, unknown or can never hold the request, run it where
            the default strategy would; otherwise fail.

    Example:
        >>> NodeAffinitySchedulingStrategy(node_id="ab12", soft=False).soft
        False
    """

    def __init__(self, node_id: str, soft: bool, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise TypeError("NodeAffinitySchedulingStrategy needs a node id (a hex string, "
                            "as aray.nodes() gives it)")
        if not isinstance(soft, bool):
            raise TypeError("NodeAffinitySchedulingStrategy's soft must be True or False")
        self.node_id = node_id
        self.soft = soft
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


class PlacementGroupSchedulingStrategy:
    """Run in a bundle of a placement group.

    Args:
        placement_group: the group (None: in no group, even where the caller's group
            would capture this task).
        placement_group_bundle_index: the bundle, or -1 for any bundle of the group that
            can hold the request.
        placement_group_capture_child_tasks: the tasks and actors this one creates with no
            strategy of their own run in the group too.

    Example:
        >>> PlacementGroupSchedulingStrategy(None).placement_group_bundle_index
        -1
    """

    def __init__(self, placement_group: Any, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: bool | None = None) -> None:
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def __repr__(self) -> str:
        return (f"PlacementGroupSchedulingStrategy({self.placement_group!r}, "
                f"placement_group_bundle_index={self.placement_group_bundle_index})")


class NodeLabelSchedulingStrategy:
    """Ray's node label strategy; aray's nodes have no labels yet (ValueError when used).

    Example:
        >>> NodeLabelSchedulingStrategy({"zone": "a"}).hard
        {'zone': 'a'}
    """

    def __init__(self, hard: dict, *, soft: dict | None = None) -> None:
        self.hard = hard
        self.soft = soft


def strategy_wire(strategy: Any) -> dict:
    """A ``scheduling_strategy`` as it travels with a request: ``{}`` for the default.

    Raises ValueError for a strategy aray does not have, TypeError for anything else.
    """
    if strategy is None or strategy == "DEFAULT":
        return {}
    if isinstance(strategy, dict) and strategy.get("kind") in ("spread", "node", "pg",
                                                               "default"):
        return dict(strategy)  # a wire form already (options passed on)
    if strategy == "SPREAD":
        return {"kind": "spread"}
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return {"kind": "node", "node_id": strategy.node_id, "soft": strategy.soft}
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        return _group_wire(strategy)
    if isinstance(strategy, NodeLabelSchedulingStrategy):
        raise ValueError(f"{type(strategy).__name__} is not supported by aray yet: aray has "
                         "no node labels; ask for custom resources to keep work on some "
                         "nodes")
    raise TypeError(f"scheduling_strategy must be 'DEFAULT', 'SPREAD', a "
                    f"NodeAffinitySchedulingStrategy or a PlacementGroupSchedulingStrategy, "
                    f"got {strategy!r}")


def _group_wire(strategy: PlacementGroupSchedulingStrategy) -> dict:
    """``{"kind": "pg", "pg_id", "index", "capture", "bundles"}``; ``{"kind": "default"}``
    for ``placement_group=None`` (no group, and not captured by the caller's)."""
    from .placement_group import PlacementGroup

    pg = strategy.placement_group
    if pg is None:
        return {"kind": "default"}
    if not isinstance(pg, PlacementGroup):
        raise TypeError("PlacementGroupSchedulingStrategy's placement_group must be a "
                        f"PlacementGroup (from placement_group()), got {type(pg).__name__}")
    index = strategy.placement_group_bundle_index
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"placement_group_bundle_index must be an int, got {index!r}")
    count = pg.bundle_count
    if not -1 <= index < count:
        raise ValueError(f"placement_group_bundle_index {index} is out of range: the "
                         f"placement group has {count} bundles (0 to {count - 1}, or -1 "
                         "for any of them)")
    return {"kind": "pg", "pg_id": pg.id.hex(), "index": index,
            "capture": bool(strategy.placement_group_capture_child_tasks),
            "bundles": pg.bundle_specs}
