"""The actor lifecycle as the head decides it, without processes: event sequences in,
instructions out, and the actor table after them."""

import pytest

from aray._head import lifecycle as L
from aray._head.state import ActorState, ActorTable, NodeTable

SPEC = {"placement": {"CPU": 1.0}}


class Caller:
    """Stands for a link to a caller: the lifecycle only hands it back."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


@pytest.fixture
def world():
    nodes = NodeTable()
    nodes.join("n1", "ws://n1", "127.0.0.1", {"CPU": 2.0})
    return L.ActorLifecycle(ActorTable(), nodes)


def start(world, actor_id="a1", name="", job_id="j1", node_id="n1", **meta):
    """Register, create and start an actor; returns the instructions of its start."""
    world.handle(L.Registered(actor_id, name, "ns", job_id, meta, False, (Caller("c"), 0)))
    out = world.handle(L.Created(actor_id, SPEC))
    assert out == [L.Place(node_id, actor_id, SPEC)]
    return world.handle(L.Started(actor_id, node_id, f"ws://{actor_id}", "w1", 42))


def state(world, actor_id="a1"):
    return world.actors.actors[actor_id].state


def test_register_then_create_places_and_start_wakes_waiters(world):
    waiter = (Caller("driver"), 7)
    out = world.handle(L.Registered("a1", "", "ns", "j1", {}, False, (Caller("c"), 1)))
    assert out == [L.RegistrationAnswered(out[0].waiter, "a1", "")]
    assert world.handle(L.WaitRequested("a1", waiter)) == []  # pending: it waits
    world.handle(L.Created("a1", SPEC))
    out = world.handle(L.Started("a1", "n1", "ws://a1", "w1", 42))
    assert [type(i) for i in out] == [L.Reply] and out[0].waiters == [waiter]
    assert out[0].info["state"] == "ALIVE" and out[0].info["address"] == "ws://a1"
    assert state(world) is ActorState.ALIVE and world.waiting() == 0


def test_a_constructor_that_raises_kills_the_worker_and_the_actor(world):
    waiter = (Caller("driver"), 1)
    world.handle(L.Registered("a1", "", "ns", "j1", {"max_restarts": 5}, False, waiter))
    world.handle(L.Created("a1", SPEC))
    world.handle(L.WaitRequested("a1", waiter))
    out = world.handle(L.StartFailed("a1", "n1", b"pickled error"))
    assert out[0] == L.KillOnNode("n1", "a1", True)
    assert out[1].info["death_error"] == b"pickled error"
    assert state(world) is ActorState.DEAD  # max_restarts does not retry a constructor


@pytest.mark.parametrize("max_restarts, lives", [(0, 1), (2, 3)])
def test_restarts_up_to_max_restarts(world, max_restarts, lives):
    start(world, max_restarts=max_restarts)
    for life in range(1, lives + 1):
        out = world.handle(L.Died("a1", "its process died"))
        if life < lives:
            assert state(world) is ActorState.RESTARTING
            assert out == [L.Place("n1", "a1", SPEC)]
            world.handle(L.Started("a1", "n1", "ws://again", "w2", 43))
    record = world.actors.actors["a1"]
    assert record.state is ActorState.DEAD and record.restarts == max_restarts
    assert record.death_cause == "its process died"


def test_max_restarts_minus_one_restarts_forever(world):
    start(world, max_restarts=-1)
    for _ in range(100):
        assert world.handle(L.Died("a1", "crash")) == [L.Place("n1", "a1", SPEC)]
    assert state(world) is ActorState.RESTARTING and world.actors.actors["a1"].restarts == 100


def test_kill_with_no_restart_ends_it_when_its_node_reports_the_death(world):
    start(world, max_restarts=3)
    killer = (Caller("killer"), 3)
    assert world.handle(L.KillRequested("a1", True, killer)) == [L.KillOnNode("n1", "a1", True)]
    assert state(world) is ActorState.ALIVE  # until its node says the process is gone
    out = world.handle(L.Died("a1", "its worker process exited"))
    assert out[0].waiters == [killer]
    record = world.actors.actors["a1"]
    assert record.state is ActorState.DEAD
    assert record.death_cause == "it was killed with aray.kill()"


def test_kill_allowing_restart_answers_once_it_restarts(world):
    start(world, max_restarts=1)
    killer = (Caller("killer"), 3)
    assert world.handle(L.KillRequested("a1", False, killer)) == [L.KillOnNode("n1", "a1", False)]
    out = world.handle(L.Died("a1", "killed"))
    assert out[0] == L.Reply([killer], out[0].info) and out[0].info["state"] == "RESTARTING"
    assert out[1] == L.Place("n1", "a1", SPEC)


def test_a_death_during_a_kill_that_forbids_restarts_is_final_and_says_kill(world):
    start(world, max_restarts=5)
    world.handle(L.KillRequested("a1", True, (Caller("k1"), 1)))
    # the node died before its agent reported the kill: the kill's cause is kept
    world.nodes.mark_dead("n1")
    out = world.handle(L.NodeDied("n1"))
    assert [type(i) for i in out] == [L.Reply]
    record = world.actors.actors["a1"]
    assert record.state is ActorState.DEAD and record.death_cause.startswith("it was killed")
    # a second kill of a dead actor is answered at once
    out = world.handle(L.KillRequested("a1", True, (Caller("k2"), 2)))
    assert out[0].info["state"] == "DEAD"


def test_a_node_death_restarts_its_actors_elsewhere(world):
    world.nodes.join("n2", "ws://n2", "127.0.0.1", {"CPU": 2.0})
    start(world, "a1", max_restarts=1)
    start(world, "a2")
    world.nodes.mark_dead("n1")
    out = world.handle(L.NodeDied("n1"))
    assert out == [L.Place("n2", "a1", SPEC)]
    assert state(world, "a2") is ActorState.DEAD
    assert world.actors.actors["a2"].death_cause == "its node n1 died"


def test_the_last_node_dying_leaves_nowhere_to_restart(world):
    start(world, max_restarts=-1)
    world.nodes.mark_dead("n1")
    world.handle(L.NodeDied("n1"))
    assert world.actors.actors["a1"].death_cause == "no node is alive to run it"


def test_detached_actors_survive_their_job(world):
    start(world, "plain", job_id="j1")
    start(world, "kept", job_id="j1", lifetime="detached")
    start(world, "other", job_id="j2")
    out = world.handle(L.JobFinished("j1"))
    assert out == [L.KillOnNode("n1", "plain", True)]
    world.handle(L.Died("plain", "its worker process exited"))
    assert world.actors.actors["plain"].death_cause == "its driver (job j1) exited"
    assert state(world, "kept") is ActorState.ALIVE and state(world, "other") is ActorState.ALIVE


def test_a_job_finishing_before_its_actor_was_created_marks_it_dead(world):
    world.handle(L.Registered("a1", "", "ns", "j1", {}, False, (Caller("c"), 0)))
    assert world.handle(L.JobFinished("j1")) == []
    assert state(world) is ActorState.DEAD


def test_names_are_freed_at_death(world):
    start(world, "a1", name="svc")
    out = world.handle(L.Registered("a2", "svc", "ns", "j1", {}, False, (Caller("c"), 1)))
    assert "already exists" in out[0].error
    out = world.handle(L.Registered("a3", "svc", "ns", "j1", {}, True, (Caller("c"), 2)))
    assert out[0].actor_id == "a1" and not out[0].error  # get_if_exists
    assert world.handle(L.Created("a3", SPEC)) == []  # an alias is not created again
    world.handle(L.Died("a1", "crash"))
    assert world.actors.lookup("svc", "ns") is None
    out = world.handle(L.Registered("a4", "svc", "ns", "j1", {}, False, (Caller("c"), 3)))
    assert out[0] == L.RegistrationAnswered(out[0].waiter, "a4", "")


def test_a_pending_actor_moves_to_a_node_that_joins_and_can_hold_it(world):
    big = {"placement": {"CPU": 4.0}}
    world.handle(L.Registered("a1", "", "ns", "j1", {}, False, (Caller("c"), 0)))
    assert world.handle(L.Created("a1", big)) == [L.Place("n1", "a1", big)]  # queued there
    world.handle(L.Registered("a2", "", "ns", "j1", {}, False, (Caller("c"), 1)))
    world.handle(L.Created("a2", SPEC))  # fits n1: stays there
    world.nodes.join("n2", "ws://n2", "127.0.0.1", {"CPU": 8.0})
    out = world.handle(L.NodeJoined("n2"))
    assert out == [L.Withdraw("n1", "a1"), L.Place("n2", "a1", big)]
    assert world.actors.actors["a1"].node_id == "n2"
    world.nodes.join("n3", "ws://n3", "127.0.0.1", {"CPU": 8.0})
    assert world.handle(L.NodeJoined("n3")) == []  # n2 can hold it


def test_waiters_of_an_unknown_actor_give_up_after_the_grace(world):
    waiter = (Caller("w"), 5)
    assert world.handle(L.WaitRequested("ghost", waiter)) == [L.GiveUpLater("ghost")]
    assert world.handle(L.GraceOver("ghost")) == [L.Reply([waiter], {})]
    # registered meanwhile: the grace's end does nothing; its start wakes the waiter
    world.handle(L.WaitRequested("late", waiter))
    start(world, "late")
    assert world.handle(L.GraceOver("late")) == [] and world.waiting() == 0


def test_a_caller_that_leaves_is_forgotten(world):
    start(world, max_restarts=1)
    world.handle(L.Died("a1", "crash"))  # restarting: waits are held
    gone, stays = Caller("gone"), Caller("stays")
    world.handle(L.WaitRequested("a1", (gone, 1)))
    world.handle(L.WaitRequested("a1", (stays, 2)))
    world.handle(L.KillRequested("a1", False, (gone, 3)))
    world.handle(L.CallerLeft(gone))
    assert world.waiting() == 1
    out = world.handle(L.Started("a1", "n1", "ws://a1", "w2", 44))
    assert out[0].waiters == [(stays, 2)]


def test_placements_count_against_a_node_until_it_reports():
    # a burst of creations before any node reports: each placement takes its shape from
    # the head's idea of the node's free resources, so the burst spreads
    nodes = NodeTable()
    for name in ("n1", "n2"):
        nodes.join(name, f"ws://{name}", "127.0.0.1", {"CPU": 2.0})
    world = L.ActorLifecycle(ActorTable(), nodes)
    placed = []
    for i in range(5):
        world.handle(L.Registered(f"a{i}", "", "ns", "j1", {}, False, (Caller("c"), i)))
        [place] = world.handle(L.Created(f"a{i}", SPEC))
        placed.append(place.node_id)
    # the fifth fits nowhere now: it waits on the first node that could hold it
    assert placed == ["n1", "n1", "n2", "n2", "n1"]
    assert nodes.nodes["n2"].available == {"CPU": 0.0}
    nodes.update_available("n2", {"CPU": 1.0})  # the node's own word replaces the estimate
    world.handle(L.Registered("a9", "", "ns", "j1", {}, False, (Caller("c"), 9)))
    assert world.handle(L.Created("a9", SPEC))[0].node_id == "n2"
