"""Placement groups, as Ray's ``ray.util.placement_group``: reserve bundles of resources
across the cluster at once, then run tasks and actors in them.

A group's bundles are reserved all together or not at all, so that two groups that each
fit but not together never hold half of the cluster each. The head places them (see
:mod:`aray._head.placement_groups`); tasks and actors ask for one with
``scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)``
(from :mod:`aray.util.scheduling_strategies`).

Example:
    >>> import aray
    >>> from aray.util.placement_group import placement_group, remove_placement_group
    >>> from aray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
    >>> pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
    >>> pg.wait(timeout_seconds=30)
    True
    >>> @aray.remote(num_cpus=1)
    ... def where():
    ...     return aray.util.get_current_placement_group().id == pg.id
    >>> aray.get(where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
    ...     pg, placement_group_bundle_index=1)).remote())
    True
    >>> remove_placement_group(pg)
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from .. import _global
from .. import _protocol as P
from .._link import CONTROL_TIMEOUT
from .._portal import call, on_runtime
from .._refs import ObjectRef
from .._runtime_context import current_group_wire

__all__ = ["PlacementGroup", "PlacementGroupID", "get_current_placement_group",
           "get_placement_group", "placement_group", "placement_group_table",
           "remove_placement_group"]

#: Ray's strategies; the head checks them again
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class PlacementGroupID:
    """A placement group's id (``pg.id``), as Ray's: ``hex()`` and ``binary()``.

    Example:
        >>> PlacementGroupID.from_hex("ab12").hex()
        'ab12'
    """

    __slots__ = ("_hex",)

    def __init__(self, binary: bytes) -> None:
        self._hex = binary.hex()

    @classmethod
    def from_hex(cls, text: str) -> PlacementGroupID:
        return cls(bytes.fromhex(text))

    def hex(self) -> str:
        return self._hex

    def binary(self) -> bytes:
        return bytes.fromhex(self._hex)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroupID) and other._hex == self._hex

    def __hash__(self) -> int:
        return hash(self._hex)

    def __repr__(self) -> str:
        return f"PlacementGroupID({self._hex})"


class PlacementGroup:
    """A handle to a placement group: pass it to tasks and actors, wait for it, remove it.

    Attributes:
        id: its :class:`PlacementGroupID`.
        bundle_specs: the resources of each bundle, as asked for.
        bundle_count: how many bundles it has.

    Example:
        >>> pg = PlacementGroup(PlacementGroupID.from_hex("ab12"), [{"CPU": 1.0}])
        >>> pg.bundle_count, pg.bundle_specs
        (1, [{'CPU': 1.0}])
    """

    def __init__(self, id: PlacementGroupID, bundle_specs: list[dict] | None = None) -> None:
        self.id = id
        self._bundles = [dict(b) for b in bundle_specs] if bundle_specs is not None else None

    @property
    def bundle_specs(self) -> list[dict]:
        """The resources of each bundle (asked of the head for a group found by id)."""
        if self._bundles is None:
            info = _head_call(_lookup(self.id.hex(), ""), "bundle_specs")
            self._bundles = _bundles_of(info) if info else []
        return self._bundles

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> ObjectRef[PlacementGroup]:
        """A ref that resolves (to this group) once every bundle is reserved: ``aray.get``
        it, ``aray.wait`` on it, or ``await`` it. As in Ray, it is a task with no
        resources run in the group's first bundle.

        Example:
            >>> import aray
            >>> from aray.util.placement_group import placement_group
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> pg = placement_group([{"CPU": 1}])
            >>> aray.get(pg.ready(), timeout=30).id == pg.id
            True
            >>> aray.util.remove_placement_group(pg)
        """
        from .scheduling_strategies import PlacementGroupSchedulingStrategy

        return _ready_check().options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            self, placement_group_bundle_index=0)).remote(self)

    def wait(self, timeout_seconds: float | None = 30) -> bool:
        """Wait up to ``timeout_seconds`` for every bundle to be reserved; True if they
        are (False on timeout, or if the group was removed).

        Example:
            >>> import aray
            >>> from aray.util.placement_group import placement_group
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> pg = placement_group([{"CPU": 1}])
            >>> pg.wait(timeout_seconds=30)
            True
            >>> aray.util.remove_placement_group(pg)
        """
        return _head_call(wait_async(self, timeout_seconds), "PlacementGroup.wait")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __reduce__(self) -> tuple:
        return _rebuild, (self.id.hex(), self._bundles)

    def __repr__(self) -> str:
        return f"PlacementGroup(id={self.id.hex()}, bundles={self._bundles})"


def _rebuild(pg_hex: str, bundles: list[dict] | None) -> PlacementGroup:
    return PlacementGroup(PlacementGroupID.from_hex(pg_hex), bundles)


_READY = None


def _ready_check():
    """The remote function behind ``PlacementGroup.ready()`` (made once)."""
    global _READY
    if _READY is None:
        from .._remote import RemoteFunction

        def placement_group_ready(pg: PlacementGroup) -> PlacementGroup:
            return pg

        _READY = RemoteFunction(placement_group_ready, {"num_cpus": 0, "max_retries": 0})
    return _READY


def _head_call(coro, what: str) -> Any:
    core = _global.core_or_init()
    return call(core.loop, _on_head, coro, what=what)


async def _on_head(coro):
    return await coro


async def _request(make, timeout: float | None = CONTROL_TIMEOUT) -> P.PlacementGroupInfo:
    core = _global.core_or_init()
    head = await on_runtime(core.loop, core.head_link())
    return await on_runtime(core.loop, head.request(make, timeout=timeout))


def _bundles_of(info: dict) -> list[dict]:
    """A group's bundles in order, from its row (``{index: resources}``)."""
    return [info["bundles"][i] for i in sorted(info["bundles"])]


async def _lookup(pg_hex: str, name: str) -> dict:
    core = _global.core()
    reply = await _request(lambda r: P.LookupPlacementGroup(r, pg_hex, name,
                                                             core.current_job_id()))
    return reply.info


async def placement_group_async(bundles: list[dict], strategy: str = "PACK", name: str = "",
                                lifetime: str | None = None,
                                bundle_label_selector: list[dict] | None = None,
                                _soft_target_node_id: str | None = None) -> PlacementGroup:
    """:func:`placement_group` for a coroutine: the same arguments and result.

    Example:
        >>> import asyncio, aray
        >>> from aray.util.placement_group import placement_group_async
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> async def main():
        ...     pg = await placement_group_async([{"CPU": 1}])
        ...     return await wait_async(pg, 30)
        >>> asyncio.run(main())
        True
    """
    shapes = _check(bundles, strategy, lifetime, _soft_target_node_id)
    selectors = _selectors(bundle_label_selector, len(shapes))
    core = _global.core_or_init()
    pg_id = os.urandom(9).hex()
    reply = await _request(lambda r: P.CreatePlacementGroup(
        r, pg_id, str(name or ""), shapes, strategy, core.current_job_id(),
        lifetime == "detached", selectors))
    if reply.error:
        raise ValueError(reply.error)
    return PlacementGroup(PlacementGroupID.from_hex(pg_id), shapes)


def placement_group(bundles: list[dict], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None,
                    bundle_label_selector: list[dict] | None = None,
                    _soft_target_node_id: str | None = None) -> PlacementGroup:
    """Reserve ``bundles`` of resources (``[{"CPU": 1, "GPU": 1}, ...]``) across the
    cluster, all at once. It returns at once; the group is placed as soon as the nodes
    have room (``pg.ready()``, ``pg.wait()``), and stays pending until then.

    Args:
        bundles: one dict of resource name -> amount per bundle.
        strategy: ``"PACK"`` (few nodes), ``"SPREAD"`` (many nodes), ``"STRICT_PACK"``
            (one node) or ``"STRICT_SPREAD"`` (a node per bundle).
        name: a name to find it by with :func:`get_placement_group` (unique in the
            namespace).
        lifetime: None (it is removed when its creator's job ends) or ``"detached"``.
        bundle_label_selector: a label selector per bundle (Ray's syntax, as for
            ``label_selector``): the labels the bundle's node must have.

    Raises:
        ValueError: bad bundles, strategy or lifetime, or a name already taken.

    Example:
        >>> import aray
        >>> from aray.util.placement_group import placement_group
        >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
        >>> pg = placement_group([{"CPU": 1}] * 2, strategy="STRICT_PACK", name="pair")
        >>> aray.util.get_placement_group("pair") == pg
        True
        >>> aray.util.remove_placement_group(pg)
    """
    return _head_call(placement_group_async(bundles, strategy, name, lifetime,
                                            bundle_label_selector, _soft_target_node_id),
                      "placement_group")


def _selectors(selectors: Any, count: int) -> list[dict]:
    """``bundle_label_selector`` in its wire form: a selector per bundle (``[]``: none)."""
    from .scheduling_strategies import check_label_selector

    if selectors is None:
        return []
    if not isinstance(selectors, (list, tuple)) or len(selectors) != count:
        raise ValueError(f"bundle_label_selector must be a list of one label selector per "
                         f"bundle ({count}), e.g. [{{'zone': 'a'}}] * {count}; got "
                         f"{selectors!r}")
    return [check_label_selector(s) or {} for s in selectors]


def _check(bundles: Any, strategy: Any, lifetime: Any, soft_node: Any) -> list[dict]:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if lifetime not in (None, "detached"):
        raise ValueError(f"lifetime must be None or 'detached'; got {lifetime!r}")
    if soft_node:
        raise ValueError("_soft_target_node_id is not supported by aray yet: use "
                         "bundle_label_selector with the node's ray.io/node-id label")
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError("bundles must be a non-empty list of dicts, e.g. [{'CPU': 1}]; "
                         f"got {bundles!r}")
    shapes = []
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, dict):
            raise ValueError(f"bundle {i} must be a dict of resource name -> amount; got "
                             f"{bundle!r}")
        for k, v in bundle.items():
            if not isinstance(k, str) or not k:
                raise ValueError(f"bundle {i}: resource names must be non-empty strings, "
                                 f"got {k!r}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"bundle {i}: {k!r}: {v!r} is not a resource amount "
                                 "(amounts are numbers of zero or more)")
        if not any(v > 0 for v in bundle.values()):
            raise ValueError(f"bundle {i} is empty ({bundle!r}): every bundle needs a "
                             "positive amount of some resource")
        shapes.append({k: float(v) for k, v in bundle.items() if v > 0})
    return shapes


async def wait_async(pg: PlacementGroup, timeout_seconds: float | None = 30) -> bool:
    """:meth:`PlacementGroup.wait` for a coroutine.

    Example:
        >>> import asyncio, aray
        >>> from aray.util.placement_group import placement_group_async
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> async def main():
        ...     return await wait_async(await placement_group_async([{"CPU": 1}]), 30)
        >>> asyncio.run(main())
        True
    """
    try:
        pg_hex = pg.id.hex()
        reply = await asyncio.wait_for(_request(lambda r: P.WaitPlacementGroup(r, pg_hex),
                                                timeout=None), timeout_seconds)
    except TimeoutError:
        return False
    return reply.info.get("state") == "CREATED"


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Free the group's bundles and end what runs in them: its actors die, its tasks
    fail (``TaskPlacementGroupRemoved``), and tasks still asking for it fail too.

    Example:
        >>> import aray
        >>> from aray.util.placement_group import placement_group, remove_placement_group
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> pg = placement_group([{"CPU": 1}])
        >>> remove_placement_group(pg)
        >>> aray.util.placement_group_table(pg)["state"]
        'REMOVED'
    """
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError("remove_placement_group() takes a PlacementGroup, got "
                        f"{type(placement_group).__name__}")
    pg_hex = placement_group.id.hex()
    _head_call(_request(lambda r: P.RemovePlacementGroup(r, pg_hex)), "remove_placement_group")


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The group created with ``name=placement_group_name`` in this job's namespace.

    Raises:
        ValueError: no group of that name (or it was removed).

    Example:
        >>> import aray
        >>> from aray.util.placement_group import placement_group, get_placement_group
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> pg = placement_group([{"CPU": 1}], name="mine")
        >>> get_placement_group("mine").bundle_specs
        [{'CPU': 1.0}]
        >>> aray.util.remove_placement_group(pg)
    """
    if not isinstance(placement_group_name, str) or not placement_group_name:
        raise ValueError("get_placement_group() needs the group's name (a non-empty str)")
    info = _head_call(_lookup("", placement_group_name), "get_placement_group")
    if not info:
        raise ValueError(f"Failed to look up placement group with name: "
                         f"{placement_group_name}")
    return PlacementGroup(PlacementGroupID.from_hex(info["placement_group_id"]),
                          _bundles_of(info))


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict:
    """One group's row (``placement_group_id``, ``name``, ``bundles``,
    ``bundles_to_node_id``, ``strategy``, ``state`` ...), or, with no argument, every
    group's row by id, as Ray's.

    Example:
        >>> import aray
        >>> from aray.util.placement_group import placement_group, placement_group_table
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> pg = placement_group([{"CPU": 1}])
        >>> pg.wait(30) and placement_group_table(pg)["state"]
        'CREATED'
        >>> aray.util.remove_placement_group(pg)
    """
    if placement_group is not None:
        info = _head_call(_lookup(placement_group.id.hex(), ""), "placement_group_table")
        info.pop("bundle_addresses", None)
        return info
    from .state import _rows

    return {row["placement_group_id"]: row for row in _rows("placement_groups", None, None)}


def get_current_placement_group() -> PlacementGroup | None:
    """The group the running task or actor was scheduled in (None in the driver, or
    outside any group).

    Example:
        >>> from aray.util.placement_group import get_current_placement_group
        >>> get_current_placement_group() is None  # in the driver
        True
    """
    wire = current_group_wire()
    if not wire:
        return None
    return PlacementGroup(PlacementGroupID.from_hex(wire["pg_id"]), wire.get("bundles"))
