"""Scheduling strategies (SPREAD, node affinity) for tasks and actors, on a two-node
cluster started by the CLI; and their decisions as pure functions."""

import json

import pytest
from test_cluster import Cluster

from aray._head.placement import place
from aray._head.state import NodeInfo
from aray.node.lease_events import FailRequest, LeaseRequested, SpillBack, ViewChanged
from aray.node.lease_scheduler import LeaseScheduler
from aray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
    strategy_wire,
)


def test_the_node_decides_spread_and_affinity_over_plain_data():
    s = LeaseScheduler({"CPU": 2}, new_id=lambda: "w")
    s.handle(ViewChanged([["me", "addr-me", {"CPU": 2}, {"CPU": 2}],
                          ["b", "addr-b", {"CPU": 2}, {"CPU": 2}],
                          ["tiny", "addr-tiny", {"CPU": 0.5}, {"CPU": 0.5}]], "me"))

    def ask(req_id, strategy):
        return s.handle(LeaseRequested("c", req_id, {"CPU": 1}, f"task {req_id}", "j", True,
                                       strategy))

    # SPREAD: this node and b in turn (tiny can never hold it)
    targets = []
    for i in range(4):
        out = ask(i, {"kind": "spread"})
        spill = [o for o in out if isinstance(o, SpillBack)]
        targets.append(spill[0].address if spill else "here")
    assert sorted(targets) == ["addr-b", "addr-b", "here", "here"]
    assert [o.address for o in ask(9, {"kind": "node", "node_id": "b", "soft": False})
            if isinstance(o, SpillBack)] == ["addr-b"]
    (fail,) = [o for o in ask(10, {"kind": "node", "node_id": "gone", "soft": False})
               if isinstance(o, FailRequest)]
    assert fail.kind == "unschedulable" and "names a node that is not alive" in fail.message
    assert "can never hold" in [o for o in ask(11, {"kind": "node", "node_id": "tiny",
                                                    "soft": False})][0].message
    soft = ask(12, {"kind": "node", "node_id": "gone", "soft": True})
    assert not any(isinstance(o, FailRequest) for o in soft)  # the default strategy's way


def test_the_head_places_actors_by_strategy_over_plain_data():
    nodes = [NodeInfo(n, "", "", {"CPU": 2.0}, {"CPU": 2.0}) for n in ("a", "b")]
    assert [place(nodes, {"CPU": 1.0}, {"kind": "spread"}, t)[0] for t in range(4)] == \
        ["a", "b", "a", "b"]
    assert place(nodes, {"CPU": 1.0}, {"kind": "node", "node_id": "b", "soft": False}) == \
        ("b", "")
    assert place(nodes, {"CPU": 1.0}, {"kind": "node", "node_id": "x", "soft": True}) == \
        ("a", "")
    assert place(nodes, {"CPU": 1.0}, {"kind": "node", "node_id": "x", "soft": False})[0] \
        is None


def test_strategies_are_checked_where_they_are_given():
    with pytest.raises(TypeError, match="placement_group must be a PlacementGroup"):
        strategy_wire(PlacementGroupSchedulingStrategy("my-group"))
    assert strategy_wire(PlacementGroupSchedulingStrategy(None)) == {"kind": "default"}
    with pytest.raises(TypeError, match="scheduling_strategy must be 'DEFAULT', 'SPREAD'"):
        strategy_wire("NEAREST")
    with pytest.raises(TypeError, match="needs a node id"):
        NodeAffinitySchedulingStrategy("", soft=False)


@pytest.fixture(scope="module")
def two_nodes():
    c = Cluster()
    c.head = c.start_head("--num-cpus", "2")
    c.second = c.join("--num-cpus", "2")
    yield c
    c.stop()


def test_spread_and_node_affinity_on_two_nodes(two_nodes, tmp_path):
    second = two_nodes.second["node_id"]
    r = two_nodes.driver(f"""
        import json
        from aray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity
        aray.init(address="auto")

        @aray.remote
        def where():
            time.sleep(0.2)
            return aray.get_runtime_context().get_node_id()

        @aray.remote
        class Here:
            def node(self):
                return aray.get_runtime_context().get_node_id()

        out = {{}}
        out["spread"] = sorted(set(aray.get([where.options(scheduling_strategy="SPREAD")
                                             .remote() for _ in range(6)])))
        pinned = where.options(scheduling_strategy=Affinity({second!r}, soft=False))
        out["pinned"] = sorted(set(aray.get([pinned.remote() for _ in range(4)])))
        soft = where.options(scheduling_strategy=Affinity("00" * 16, soft=True))
        out["soft"] = len(aray.get(soft.remote()))
        try:
            aray.get(where.options(scheduling_strategy=Affinity("00" * 16, soft=False))
                     .remote(), timeout=30)
        except aray.exceptions.TaskUnschedulableError as e:
            out["hard"] = str(e)
        actors = [Here.options(scheduling_strategy="SPREAD").remote() for _ in range(4)]
        out["actor_spread"] = sorted(set(aray.get([a.node.remote() for a in actors])))
        fixed = Here.options(scheduling_strategy=Affinity({second!r}, soft=False)).remote()
        out["actor_pinned"] = aray.get(fixed.node.remote())
        lost = Here.options(scheduling_strategy=Affinity("00" * 16, soft=False)).remote()
        try:
            aray.get(lost.node.remote(), timeout=30)
        except aray.exceptions.ActorDiedError as e:
            out["actor_hard"] = str(e)
        print("OUT " + json.dumps(out))
    """, tmp_path)
    out = json.loads(r.stdout.split("OUT ", 1)[1])
    nodes = sorted([two_nodes.head["node_id"], second])
    assert out["spread"] == nodes and out["actor_spread"] == nodes
    assert out["pinned"] == [second] and out["actor_pinned"] == second
    assert out["soft"] == 32
    assert "names a node that is not alive" in out["hard"] and "soft=True" in out["hard"]
    assert "names a node that is not alive" in out["actor_hard"]
