"""Where the head puts actors, without processes: plain nodes in, a node id out."""

from aray._head import placement
from aray._head.state import NodeInfo


def node(node_id: str, total: dict, available: dict | None = None) -> NodeInfo:
    return NodeInfo(node_id, f"ws://{node_id}", "127.0.0.1", total,
                    dict(total if available is None else available))


def test_a_node_with_the_resources_free_now_comes_first():
    nodes = [node("busy", {"CPU": 4.0}, {"CPU": 0.5}), node("free", {"CPU": 2.0})]
    assert placement.choose_node(nodes, {"CPU": 1.0}) == "free"


def test_a_node_that_could_hold_it_later_comes_next():
    nodes = [node("small", {"CPU": 1.0}, {"CPU": 0.0}), node("big", {"CPU": 8.0}, {"CPU": 0.0})]
    assert placement.choose_node(nodes, {"CPU": 4.0}) == "big"


def test_a_request_no_node_can_hold_goes_to_the_first_node():
    # its agent warns the job's driver that it is infeasible, and keeps it queued
    nodes = [node("a", {"CPU": 1.0}), node("b", {"CPU": 1.0})]
    assert placement.choose_node(nodes, {"GPU": 1.0}) == "a"


def test_no_node_alive_places_nothing():
    assert placement.choose_node([], {"CPU": 1.0}) is None


def test_custom_resources_and_zero_amounts():
    nodes = [node("plain", {"CPU": 2.0}), node("special", {"CPU": 2.0, "disk": 1.0})]
    assert placement.choose_node(nodes, {"CPU": 1.0, "disk": 1.0}) == "special"
    assert placement.choose_node(nodes, {"CPU": 0.0}) == "plain"


def test_a_pending_request_moves_to_a_joining_node_only_when_its_own_never_fits():
    small, big = node("small", {"CPU": 1.0}), node("big", {"CPU": 8.0})
    assert placement.should_move({"CPU": 4.0}, small, big)
    assert not placement.should_move({"CPU": 1.0}, small, big)  # it runs where it waits
    assert not placement.should_move({"CPU": 16.0}, small, big)  # the new one cannot either
    assert placement.should_move({"CPU": 1.0}, None, big)  # its node is gone
    assert not placement.should_move({"CPU": 1.0}, big, big)  # it waits there already


def test_what_a_node_death_affects():
    class Item:
        def __init__(self, name, node_id):
            self.name, self.node_id = name, node_id

    items = [Item("a", "n1"), Item("b", "n2"), Item("c", "n1")]
    assert [i.name for i in placement.on_node(items, "n1")] == ["a", "c"]
    assert placement.on_node(items, "n3") == []
