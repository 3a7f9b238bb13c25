"""The head's placement groups as plain data: their states, records and table, and the
check of what a user asks for. No I/O (the reservation of bundles is
:mod:`~aray._head.placement_groups`'s).

Example:
    >>> table = PlacementGroupTable()
    >>> record = table.add("ab12", "", "ns", [{"CPU": 1.0}], "PACK", "job1", False)
    >>> record.state.value, record.describe()["bundles"]
    ('PENDING', {0: {'CPU': 1.0}})
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable

from .placement import PG_STRATEGIES
from .state import _bound

#: removed groups kept for the state API, the oldest going first
MAX_REMOVED_GROUPS = 10_000


class PlacementGroupState(enum.StrEnum):
    """Ray's states of a placement group."""

    PENDING = "PENDING"  # not every bundle is reserved yet
    CREATED = "CREATED"  # every bundle is reserved
    REMOVED = "REMOVED"  # removed (or its job ended): nothing is reserved
    RESCHEDULING = "RESCHEDULING"  # a node died with some of its bundles: they wait


@dataclasses.dataclass(eq=False)
class PlacementGroupRecord:
    """One placement group: its bundles, where each is reserved, its state."""

    pg_id: str
    name: str
    namespace: str
    bundles: list[dict]
    strategy: str
    job_id: str
    detached: bool
    state: PlacementGroupState = PlacementGroupState.PENDING
    nodes: list[str | None] = dataclasses.field(default_factory=list)  # per bundle
    created_at: float = dataclasses.field(default_factory=time.time)
    warned: bool = False  # its creator was told it cannot be placed on this cluster
    #: a label selector per bundle (wire form; [] or {}: any node), bundle_label_selector
    label_selectors: list = dataclasses.field(default_factory=list)

    def describe(self) -> dict:
        """Its row, with the keys of Ray's ``placement_group_table()``."""
        return {"placement_group_id": self.pg_id, "name": self.name,
                "namespace": self.namespace, "job_id": self.job_id,
                "bundles": dict(enumerate(self.bundles)),
                "bundles_to_node_id": {i: n for i, n in enumerate(self.nodes) if n},
                "strategy": self.strategy, "state": self.state.value,
                "bundle_label_selector": list(self.label_selectors),
                "is_detached": self.detached, "created_at": self.created_at}

    @property
    def waiting(self) -> bool:
        """Some bundle waits to be reserved."""
        return self.state in (PlacementGroupState.PENDING, PlacementGroupState.RESCHEDULING)


def check_bundles(bundles: object, strategy: object) -> str:
    """What is wrong with a group's ``bundles`` and ``strategy`` ("" when nothing is), in
    words the user can act on.

    Examples:
        >>> check_bundles([{"CPU": 1}], "PACK")
        ''
        >>> check_bundles([{}], "PACK")
        'bundle 0 is empty: every bundle needs a positive amount of some resource'
        >>> check_bundles([{"CPU": 1}], "TIGHT")
        "strategy must be one of PACK, SPREAD, STRICT_PACK or STRICT_SPREAD, not 'TIGHT'"
    """
    if strategy not in PG_STRATEGIES:
        return (f"strategy must be one of {', '.join(PG_STRATEGIES[:-1])} or "
                f"{PG_STRATEGIES[-1]}, not {strategy!r}")
    if not isinstance(bundles, list) or not bundles:
        return "bundles must be a non-empty list of dicts (resource name -> amount)"
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, dict):
            return f"bundle {i} must be a dict of resource name -> amount, not {bundle!r}"
        for k, v in bundle.items():
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) \
                    or v < 0:
                return (f"bundle {i} has {k!r}: {v!r}; amounts must be numbers of zero or "
                        "more")
        if not any(v > 0 for v in bundle.values()):
            return f"bundle {i} is empty: every bundle needs a positive amount of some resource"
    return ""


class PlacementGroupTable:
    """The head's placement groups, by id, in the order they were created; names are
    unique per namespace among the groups not removed."""

    def __init__(self, max_removed: int = MAX_REMOVED_GROUPS) -> None:
        self.groups: dict[str, PlacementGroupRecord] = {}
        self.names: dict[tuple[str, str], str] = {}
        # the groups with bundles to reserve, oldest first: what every node's report asks
        # about, kept apart from the (many) groups placed or removed
        self._waiting: dict[str, None] = {}
        self._removed: dict[str, None] = {}
        self.max_removed = max_removed
        #: told of every group whose state or bundles' nodes changed (the head's storage)
        self.on_change: Callable[[PlacementGroupRecord], None] = lambda record: None

    def add(self, pg_id: str, name: str, namespace: str, bundles: list[dict], strategy: str,
            job_id: str, detached: bool, label_selectors: list | None = None
            ) -> PlacementGroupRecord:
        record = PlacementGroupRecord(pg_id, name, namespace,
                                      [{k: float(v) for k, v in b.items() if v > 0}
                                       for b in bundles],
                                      strategy, job_id, detached, nodes=[None] * len(bundles),
                                      label_selectors=list(label_selectors or []))
        self.restore(record)
        return record

    def restore(self, record: PlacementGroupRecord) -> None:
        """Keep ``record`` (a new one, or one a restarted head read back)."""
        self.groups[record.pg_id] = record
        if record.waiting:
            self._waiting[record.pg_id] = None
        if record.name and record.state is not PlacementGroupState.REMOVED:
            self.names[(record.namespace, record.name)] = record.pg_id
        self.on_change(record)

    def lookup(self, name: str, namespace: str) -> PlacementGroupRecord | None:
        pg_id = self.names.get((namespace, name))
        return self.groups.get(pg_id) if pg_id else None

    def mark_removed(self, record: PlacementGroupRecord) -> None:
        record.nodes = [None] * len(record.bundles)
        self.set_state(record, PlacementGroupState.REMOVED)
        if record.name and self.names.get((record.namespace, record.name)) == record.pg_id:
            del self.names[(record.namespace, record.name)]
        self._removed[record.pg_id] = None
        _bound(self._removed, self.groups, self.max_removed)

    def set_state(self, record: PlacementGroupRecord, state: PlacementGroupState) -> None:
        record.state = state
        if record.waiting:
            self._waiting[record.pg_id] = None
        else:
            self._waiting.pop(record.pg_id, None)
        self.on_change(record)

    def waiting(self) -> list[PlacementGroupRecord]:
        """The groups with bundles to reserve, oldest first."""
        return [self.groups[pg_id] for pg_id in self._waiting]

    def any_waiting(self) -> bool:
        return bool(self._waiting)

    def bundle_nodes(self, pg_id: str) -> list[tuple[str | None, dict]] | None:
        """Where each bundle of a group is (None: not reserved now), with its shape; None
        when the group was removed or never existed (what actor placement reads)."""
        record = self.groups.get(pg_id)
        if record is None or record.state is PlacementGroupState.REMOVED:
            return None
        if record.waiting:
            return [(None, shape) for shape in record.bundles]
        return list(zip(record.nodes, record.bundles, strict=True))
