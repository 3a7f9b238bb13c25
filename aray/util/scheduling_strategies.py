"""Scheduling strategies, as Ray's ``ray.util.scheduling_strategies``.

``scheduling_strategy=`` of a task or actor takes:

* ``"DEFAULT"`` (or None): where the resources are, the caller's own node first;
* ``"SPREAD"``: over the nodes that can hold it, one after another;
* :class:`NodeAffinitySchedulingStrategy`: on one node; with ``soft=True`` anywhere else
  when that node is dead, unknown or can never hold it, else the task fails (an actor
  dies) with an error that says so;
* :class:`NodeLabelSchedulingStrategy`: on a node whose labels match ``hard`` (and, when
  it can, ``soft``), with the operators :class:`In`, :class:`NotIn`, :class:`Exists` and
  :class:`DoesNotExist`. The ``label_selector=`` option says the same in Ray's strings
  (``{"zone": "in(a,b)"}``). A request no node's labels match stays pending, with a
  warning, until such a node joins (as in Ray).
* :class:`PlacementGroupSchedulingStrategy`: in a bundle of a placement group (see
  :mod:`aray.util.placement_group`).

Example:
    >>> strategy_wire("SPREAD"), strategy_wire(None)
    ({'kind': 'spread'}, {})
    >>> strategy_wire(NodeAffinitySchedulingStrategy("ab12", soft=True))
    {'kind': 'node', 'node_id': 'ab12', 'soft': True}
    >>> strategy_wire(NodeLabelSchedulingStrategy({"zone": In("a", "b")}))
    {'kind': 'labels', 'hard': {'zone': ['in', ['a', 'b']]}, 'soft': {}}
"""

from __future__ import annotations

from typing import Any

from ..node.labels import LabelError, check_value, parse_selector

__all__ = ["DoesNotExist", "Exists", "In", "NodeAffinitySchedulingStrategy",
           "NodeLabelSchedulingStrategy", "NotIn", "PlacementGroupSchedulingStrategy"]


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


class _Operator:
    """A label operator: which values of a label a node may (not) have."""

    _op = ""

    def __init__(self, *values: str) -> None:
        self.values = [check_value(v, type(self).__name__, "operator") for v in values]

    def _wire(self) -> list:
        return [self._op, list(self.values)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.values))})"


class _ValuesOperator(_Operator):
    def __init__(self, *values: str) -> None:
        if not values:
            raise ValueError(f"{type(self).__name__} needs one value or more, e.g. "
                             f"{type(self).__name__}(\"value1\", \"value2\")")
        try:
            super().__init__(*values)
        except LabelError as exc:
            raise ValueError(str(exc)) from None


class In(_ValuesOperator):
    """The node has the label, with one of these values.

    Example:
        >>> NodeLabelSchedulingStrategy({"zone": In("a", "b")}).hard
        {'zone': In('a', 'b')}
    """

    _op = "in"


class NotIn(_ValuesOperator):
    """The node lacks the label, or has it with none of these values.

    Example:
        >>> NotIn("spot").values
        ['spot']
    """

    _op = "!in"


class Exists(_Operator):
    """The node has the label, whatever its value.

    Example:
        >>> NodeLabelSchedulingStrategy({"gpu": Exists()}).hard
        {'gpu': Exists()}
    """

    _op = "exists"

    def __init__(self) -> None:
        super().__init__()


class DoesNotExist(_Operator):
    """The node lacks the label.

    Example:
        >>> NodeLabelSchedulingStrategy({"spot": DoesNotExist()}).hard
        {'spot': DoesNotExist()}
    """

    _op = "!exists"

    def __init__(self) -> None:
        super().__init__()


_OPERATORS = (In, NotIn, Exists, DoesNotExist)


class NodeLabelSchedulingStrategy:
    """Run on a node whose labels match ``hard``; among those, prefer the ones that match
    ``soft`` too. Each maps a label key to an operator: :class:`In`, :class:`NotIn`,
    :class:`Exists`, :class:`DoesNotExist`. When no node matches ``hard`` (or none that
    matches can hold the request) it stays pending, with a warning, until one joins.

    Args:
        hard: what the node must have.
        soft: what it should have, when a node that matches ``hard`` has it too.

    Example:
        >>> s = NodeLabelSchedulingStrategy({"zone": In("a")}, soft={"disk": In("ssd")})
        >>> s.hard, s.soft
        ({'zone': In('a')}, {'disk': In('ssd')})
    """

    def __init__(self, hard: dict, *, soft: dict | None = None) -> None:
        self.hard = _operators(hard, "hard")
        self.soft = _operators(soft, "soft")
        if not (self.hard or self.soft):
            raise ValueError("NodeLabelSchedulingStrategy needs hard or soft (or both) to "
                             "name a label, e.g. {\"zone\": In(\"a\")}")

    def __repr__(self) -> str:
        return f"NodeLabelSchedulingStrategy(hard={self.hard!r}, soft={self.soft!r})"


def _operators(expressions: dict | None, what: str) -> dict:
    if expressions is None:
        return {}
    if not isinstance(expressions, dict):
        raise ValueError(f"NodeLabelSchedulingStrategy's {what} must be a dict of label key "
                         f"-> operator (e.g. {{\"zone\": In(\"a\")}}), got "
                         f"{type(expressions).__name__}")
    for key, op in expressions.items():
        if not isinstance(op, _OPERATORS):
            raise ValueError(f"NodeLabelSchedulingStrategy's {what}[{key!r}] must be In, "
                             f"NotIn, Exists or DoesNotExist (e.g. {{\"zone\": In(\"a\")}}), "
                             f"got {op!r}")
    try:
        parse_selector(expressions, f"NodeLabelSchedulingStrategy's {what}")
    except LabelError as exc:
        raise ValueError(str(exc)) from None
    return dict(expressions)


def strategy_wire(strategy: Any) -> dict:
    """A ``scheduling_strategy`` as it travels with a request: ``{}`` for the default.

    Raises ValueError for a strategy aray does not have, TypeError for anything else.
    """
    if strategy is None or strategy == "DEFAULT":
        return {}
    if isinstance(strategy, dict) and strategy.get("kind") in ("spread", "node", "labels",
                                                               "pg", "default"):
        return dict(strategy)  # a wire form already (options passed on)
    if strategy == "SPREAD":
        return {"kind": "spread"}
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return {"kind": "node", "node_id": strategy.node_id, "soft": strategy.soft}
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        return _group_wire(strategy)
    if isinstance(strategy, NodeLabelSchedulingStrategy):
        return {"kind": "labels", "hard": parse_selector(strategy.hard),
                "soft": parse_selector(strategy.soft)}
    raise TypeError(f"scheduling_strategy must be 'DEFAULT', 'SPREAD', a "
                    f"NodeAffinitySchedulingStrategy, a NodeLabelSchedulingStrategy or a "
                    f"PlacementGroupSchedulingStrategy, got {strategy!r}")


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


def check_label_selector(value: Any) -> dict | None:
    """The ``label_selector`` option in its wire form (None for none): a dict of label key
    -> Ray's value string (``"a"``, ``"!a"``, ``"in(a,b)"``, ``"!in(a,b)"``).

    Example:
        >>> check_label_selector({"zone": "in(a,b)"})
        {'zone': ['in', ['a', 'b']]}
    """
    if value is None:
        return None
    try:
        return parse_selector(value) or None
    except LabelError as exc:
        raise ValueError(str(exc)) from None


def check_fallback_strategy(value: Any) -> list | None:
    """The ``fallback_strategy`` option in its wire form (None for none): a list of
    ``{"label_selector": {...}}``, tried in order when no node that matches the selector
    before can ever hold the request.

    Example:
        >>> check_fallback_strategy([{"label_selector": {"zone": "b"}}])
        [{'zone': ['in', ['b']]}]
    """
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise TypeError("fallback_strategy must be a list of {'label_selector': {...}}, got "
                        f"{type(value).__name__}")
    out = []
    for i, option in enumerate(value):
        if isinstance(option, dict) and set(option) == {"label_selector"} \
                and isinstance(option["label_selector"], dict):
            selector = option["label_selector"]
        elif isinstance(option, dict) and option and all(
                isinstance(v, list) for v in option.values()):
            selector = option  # a wire form already (options passed on)
        else:
            raise ValueError(f"fallback_strategy[{i}] must be {{'label_selector': {{...}}}} "
                             f"(the only fallback option aray and Ray have), got {option!r}")
        try:
            out.append(parse_selector(selector, f"fallback_strategy[{i}]['label_selector']"))
        except LabelError as exc:
            raise ValueError(str(exc)) from None
    return out or None


def with_label_selector(strategy: dict | None, label_selector: dict | None,
                        fallback: list | None) -> dict:
    """The wire form of a task's or actor's placement: its ``scheduling_strategy`` (wire
    form, None for the default), with its ``label_selector`` and ``fallback_strategy``
    (their wire forms) folded in as a label strategy (with a NodeLabelSchedulingStrategy,
    a node must match both; with SPREAD or a node affinity, ValueError).

    Examples:
        >>> with_label_selector(None, {"zone": ["in", ["a"]]}, None)
        {'kind': 'labels', 'hard': {'zone': ['in', ['a']]}, 'soft': {}}
        >>> with_label_selector({"kind": "spread"}, None, None)
        {'kind': 'spread'}
    """
    if not label_selector and not fallback:
        return strategy or {}
    if strategy and strategy.get("kind") == "labels":  # both must match
        merged = dict(strategy, hard={**strategy.get("hard", {}), **(label_selector or {})})
        if fallback:
            merged["fallback"] = [*strategy.get("fallback", []), *fallback]
        return merged
    if strategy:
        raise ValueError("label_selector and fallback_strategy go with the default "
                         "scheduling_strategy or a NodeLabelSchedulingStrategy in aray, not "
                         f"with {strategy.get('kind')!r}; to pin work to a node, select its "
                         "label ray.io/node-id")
    out: dict = {"kind": "labels", "hard": dict(label_selector or {}), "soft": {}}
    if fallback:
        out["fallback"] = list(fallback)
    return out
