"""Placement groups: the head's plan and the node's bundles as pure decisions, then
groups on real clusters started by the CLI (two nodes; a node killed under a group; a
group waiting for a node to join)."""

import json

import pytest
from test_cluster import Cluster

from aray._head.group_table import PlacementGroupTable, check_bundles
from aray._head.placement import bundle_node, plan_bundles
from aray._head.state import NodeInfo
from aray.node import lease_events as E
from aray.node.lease_scheduler import LeaseScheduler
from aray.util.placement_group import PlacementGroup, PlacementGroupID, _check
from aray.util.scheduling_strategies import PlacementGroupSchedulingStrategy, strategy_wire


def nodes(*free, total=None):
    return [NodeInfo(f"n{i}", "", "", dict(total or f), dict(f)) for i, f in enumerate(free)]


# --- the head's plan ---------------------------------------------------------------------
def test_the_plan_places_every_bundle_or_none_by_strategy():
    two = nodes({"CPU": 2.0}, {"CPU": 2.0})
    one = [{"CPU": 1}]
    assert plan_bundles(two, one * 2, "PACK") == ["n0", "n0"]
    assert plan_bundles(two, one * 3, "PACK") == ["n0", "n0", "n1"]  # as few as will do
    assert plan_bundles(two, one * 2, "SPREAD") == ["n0", "n1"]
    assert plan_bundles(two, one * 3, "SPREAD") == ["n0", "n1", "n0"]  # reuse when short
    assert plan_bundles(two, one * 2, "STRICT_PACK") == ["n0", "n0"]
    assert plan_bundles(two, one * 3, "STRICT_PACK") is None  # no node holds three
    assert plan_bundles(two, one * 2, "STRICT_SPREAD") == ["n0", "n1"]
    assert plan_bundles(two, one * 3, "STRICT_SPREAD") is None
    # free resources decide; totals say whether it could ever be placed
    busy = nodes({"CPU": 0.0}, {"CPU": 0.0}, total={"CPU": 2.0})
    assert plan_bundles(busy, one, "PACK") is None
    assert plan_bundles(busy, one, "PACK", free=False) == ["n0"]
    # a group rescheduling keeps its bundles on live nodes; strict spread avoids them
    assert plan_bundles(two, one * 2, "STRICT_SPREAD", {1: "n0"}) == ["n1", "n0"]
    assert plan_bundles(two, one * 2, "STRICT_PACK", {0: "n1"}) == ["n1", "n1"]
    # custom resources and GPUs count like CPUs
    assert plan_bundles(nodes({"CPU": 1.0}, {"CPU": 1.0, "GPU": 2.0}), [{"GPU": 1}] * 2,
                        "PACK") == ["n1", "n1"]


def test_bundles_go_to_nodes_whose_labels_match_their_selectors():
    a, b = nodes({"CPU": 2.0}, {"CPU": 2.0})
    a.labels, b.labels = {"zone": "x"}, {"zone": "y"}
    zone = [{"zone": ["in", ["y"]]}, {}]  # bundle 0 in zone y, bundle 1 anywhere
    assert plan_bundles([a, b], [{"CPU": 1}] * 2, "PACK", selectors=zone) == ["n1", "n1"]
    assert plan_bundles([a, b], [{"CPU": 1}] * 2, "STRICT_SPREAD",
                        selectors=zone) == ["n1", "n0"]
    nowhere = [{"zone": ["in", ["z"]]}, {}]
    assert plan_bundles([a, b], [{"CPU": 1}] * 2, "PACK", selectors=nowhere) is None
    assert plan_bundles([a, b], [{"CPU": 1}] * 2, "PACK", free=False,
                        selectors=nowhere) is None  # (so its creator is warned)
    from aray.util.placement_group import _selectors
    assert _selectors([{"zone": "!x"}, None], 2) == [{"zone": ["!in", ["x"]]}, {}]
    with pytest.raises(ValueError, match="one label selector per bundle"):
        _selectors([{"zone": "x"}], 2)


def test_a_request_in_any_bundle_goes_to_a_bundle_that_can_hold_it():
    bundles = [("a", {"CPU": 1.0}), ("b", {"CPU": 4.0}), (None, {"CPU": 4.0})]
    assert bundle_node(bundles, -1, {"CPU": 2}) == "b"
    assert {bundle_node(bundles, -1, {"CPU": 1}, turn) for turn in range(2)} == {"a", "b"}
    assert bundle_node(bundles, 2, {"CPU": 1}) is None  # not reserved yet
    assert bundle_node(bundles, 0, {"CPU": 1}) == "a"


def test_bad_groups_are_refused_with_what_to_do():
    assert "non-empty list" in check_bundles([], "PACK")
    assert "bundle 1 is empty" in check_bundles([{"CPU": 1}, {"CPU": 0}], "PACK")
    assert "numbers of zero or more" in check_bundles([{"CPU": -1}], "PACK")
    assert "strategy must be one of" in check_bundles([{"CPU": 1}], "pack")
    for bad, words in [([], "non-empty list"), ([{"CPU": 0}], "is empty"),
                       ([{"CPU": "1"}], "not a resource amount"), ([["CPU"]], "must be a dict")]:
        with pytest.raises(ValueError, match=words):
            _check(bad, "PACK", None, None)
    with pytest.raises(ValueError, match="lifetime must be None or 'detached'"):
        _check([{"CPU": 1}], "PACK", "forever", None)
    pg = PlacementGroup(PlacementGroupID.from_hex("ab12"), [{"CPU": 1.0}, {"GPU": 1.0}])
    with pytest.raises(ValueError, match="placement_group_bundle_index 2 is out of range"):
        strategy_wire(PlacementGroupSchedulingStrategy(pg, 2))
    wire = strategy_wire(PlacementGroupSchedulingStrategy(pg, 1, True))
    assert wire == {"kind": "pg", "pg_id": "ab12", "index": 1, "capture": True,
                    "bundles": [{"CPU": 1.0}, {"GPU": 1.0}]}


def test_the_table_frees_names_of_removed_groups_and_bounds_them():
    table = PlacementGroupTable(max_removed=2)
    for i in range(4):
        record = table.add(f"g{i}", "name" if i == 3 else "", "ns", [{"CPU": 1}], "PACK",
                           "j", False)
        if i < 3:
            table.mark_removed(record)
    assert sorted(table.groups) == ["g1", "g2", "g3"]  # the oldest removed one is gone
    assert table.lookup("name", "ns").pg_id == "g3"
    table.mark_removed(table.groups["g3"])
    assert table.lookup("name", "ns") is None
    assert table.bundle_nodes("g3") is None


# --- the node's bundles ------------------------------------------------------------------
def scheduler(resources):
    ids = iter(f"w{i}" for i in range(100))
    s = LeaseScheduler(resources, new_id=lambda: next(ids))
    return s


def started(s, out):
    """Start the workers ``out`` asks for, and have them join their jobs; returns every
    instruction that followed."""
    more, todo = [], list(out)
    while todo:
        ins = todo.pop(0)
        if isinstance(ins, E.SpawnWorker):
            step = s.handle(E.WorkerStarted(ins.worker_id))
        elif isinstance(ins, E.AssignJob):
            step = s.handle(E.JobAssigned(ins.worker_id, True))
        else:
            continue
        more += step
        todo += step
    return more


def test_a_node_reserves_all_of_its_bundles_or_none():
    s = scheduler({"CPU": 2, "GPU": 2})
    out = s.handle(E.BundlesRequested("head", 1, "pg", [[0, {"CPU": 2}], [1, {"CPU": 1}]]))
    assert out == [E.AnswerBundles("head", 1, False)] and s.pool.available["CPU"] == 2
    out = s.handle(E.BundlesRequested("head", 2, "pg", [[0, {"CPU": 1, "GPU": 1}],
                                                        [1, {"CPU": 1, "GPU": 1}]]))
    assert out[0] == E.AnswerBundles("head", 2, True)
    assert s.pool.available == {"CPU": 0.0, "GPU": 0.0}
    # a task outside the group cannot use them; one in bundle 1 gets bundle 1's GPU
    outside = s.handle(E.LeaseRequested("c", 3, {"CPU": 1}, "f", "j", False))
    assert not any(isinstance(i, E.GrantLease) for i in outside)
    inside = s.handle(E.LeaseRequested("c", 4, {"CPU": 1, "GPU": 1}, "g", "j", False,
                                       {"kind": "pg", "pg_id": "pg", "index": 1}))
    grants = [i for i in started(s, inside) if isinstance(i, E.GrantLease)]
    assert [(g.req_id, g.gpu_ids) for g in grants] == [(4, [1])]
    # a request for a bundle this node does not have is sent back to ask again
    elsewhere = s.handle(E.LeaseRequested("c", 5, {"CPU": 1}, "h", "j", False,
                                          {"kind": "pg", "pg_id": "pg", "index": 7}))
    assert [i.kind for i in elsewhere] == ["bundle"]


def test_fractional_gpus_in_a_bundle_pack_onto_its_own_device():
    s = scheduler({"CPU": 4, "GPU": 2})
    s.handle(E.BundlesRequested("head", 1, "other", [[0, {"GPU": 1}]]))  # takes device 0
    s.handle(E.BundlesRequested("head", 2, "pg", [[0, {"CPU": 2, "GPU": 1}]]))
    strategy = {"kind": "pg", "pg_id": "pg", "index": -1}
    grants = []
    for req_id in (1, 2):
        out = s.handle(E.LeaseRequested("c", req_id, {"CPU": 1, "GPU": 0.5}, "f", "j", False,
                                        strategy))
        grants += [i for i in out + started(s, out) if isinstance(i, E.GrantLease)]
    assert [g.gpu_ids for g in grants] == [[1], [1]]


def test_releasing_a_bundle_kills_what_runs_in_it_and_fails_what_waits():
    s = scheduler({"CPU": 2})
    s.handle(E.BundlesRequested("head", 1, "pg", [[0, {"CPU": 1}]]))
    strategy = {"kind": "pg", "pg_id": "pg", "index": 0}
    out = s.handle(E.LeaseRequested("c", 1, {"CPU": 1}, "running", "j", False, strategy))
    worker = next(i for i in started(s, out) if isinstance(i, E.GrantLease)).worker_id
    waiting = s.handle(E.LeaseRequested("c", 2, {"CPU": 1}, "waiting", "j", False, strategy))
    assert not any(isinstance(i, E.GrantLease) for i in waiting)
    out = s.handle(E.BundlesReleased("pg", [0]))
    assert E.KillWorker(worker) in out
    assert [(i.req_id, i.kind) for i in out if isinstance(i, E.FailRequest)] == [(2, "bundle")]
    assert s.pool.available["CPU"] == 2 and not s.pools.bundles
    # the killed worker's exit later gives back nothing twice
    assert s.handle(E.WorkerExited(worker, "killed")) == []
    assert s.pool.available["CPU"] == 2
    assert s.handle(E.BundlesReleased("pg", [0])) == []  # (released twice: nothing to do)


def test_an_actor_in_a_bundle_holds_only_its_hold_of_the_bundle():
    s = scheduler({"CPU": 2})
    s.handle(E.BundlesRequested("head", 1, "pg", [[0, {"CPU": 1}]]))
    out = s.handle(E.ActorPlacementRequested("head", "a1", {"CPU": 1}, {}, "A", "j", {},
                                             ("pg", 0)))
    assert any(isinstance(i, E.StartActor) for i in started(s, out))
    assert s.pools.bundles[("pg", 0)].pool.available["CPU"] == 1  # placed with 1, holds none
    assert s.pool.available["CPU"] == 1
    missing = s.handle(E.ActorPlacementRequested("head", "a2", {"CPU": 1}, {}, "A", "j", {},
                                                 ("pg", 3)))
    assert isinstance(missing[0], E.ReportActorDied)


# --- on real clusters --------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_nodes():
    c = Cluster()
    c.head = c.start_head("--num-cpus", "2")
    c.second = c.join("--num-cpus", "2", "--resources", '{"b": 1}')
    yield c
    c.stop()


def test_groups_place_tasks_and_actors_in_their_bundles(two_nodes, tmp_path):
    head, second = two_nodes.head["node_id"], two_nodes.second["node_id"]
    two_nodes.env["SECOND_NODE"] = second
    r = two_nodes.driver("""
        import json
        from aray.util import placement_group, remove_placement_group, placement_group_table
        from aray.util.scheduling_strategies import PlacementGroupSchedulingStrategy as In
        aray.init(address="auto")
        out = {}

        @aray.remote(num_cpus=1)
        def where():
            time.sleep(0.1)
            return aray.get_runtime_context().get_node_id()

        @aray.remote(num_cpus=1)
        class Member:
            def where(self):
                return (aray.get_runtime_context().get_node_id(),
                        aray.util.get_current_placement_group().id.hex())

        pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD", name="pair")
        assert aray.get(pg.ready(), timeout=30) == pg
        table = placement_group_table(pg)
        out["state"], out["nodes"] = table["state"], table["bundles_to_node_id"]
        out["tasks"] = [aray.get([where.options(scheduling_strategy=In(pg, i)).remote()
                                  for _ in range(3)]) for i in (0, 1)]
        member = Member.options(scheduling_strategy=In(pg, 1)).remote()
        out["actor"] = aray.get(member.where.remote())
        out["named"] = aray.util.get_placement_group("pair") == pg
        pinned = placement_group([{"CPU": 0.5}], bundle_label_selector=[
            {"ray.io/node-id": os.environ["SECOND_NODE"]}])
        assert pinned.wait(30)
        out["pinned"] = placement_group_table(pinned)["bundles_to_node_id"]
        remove_placement_group(pinned)
        try:
            where.options(num_cpus=2, scheduling_strategy=In(pg, 0))
        except ValueError as e:
            out["too_big"] = str(e)
        remove_placement_group(pg)
        def member_dead():  # (the kill reaches the actor's node a moment later, as in Ray)
            try:
                aray.get(member.where.remote(), timeout=30)
            except aray.exceptions.ActorDiedError as e:
                out["actor_after"] = str(e)
                return True
            return False
        wait_until(member_dead, 30, message="the removed group's actor to die")
        try:
            aray.get(where.options(scheduling_strategy=In(pg, 0)).remote(), timeout=30)
        except aray.exceptions.TaskPlacementGroupRemoved as e:
            out["task_after"] = str(e)
        out["state_after"] = placement_group_table(pg)["state"]
        print("OUT " + json.dumps(out))
    """, tmp_path)
    out = json.loads(r.stdout.split("OUT ", 1)[1])
    assert out["state"] == "CREATED" and sorted(out["nodes"].values()) == sorted([head, second])
    assert [set(t) for t in out["tasks"]] == [{out["nodes"]["0"]}, {out["nodes"]["1"]}]
    assert out["actor"][0] == out["nodes"]["1"] and out["named"] is True
    assert out["pinned"] == {"0": second}
    assert "more than bundle 0 of placement group" in out["too_big"]
    assert "placement group" in out["actor_after"] and "was removed" in out["actor_after"]
    assert "was removed" in out["task_after"] and out["state_after"] == "REMOVED"


def test_two_groups_that_fit_only_one_at_a_time_never_deadlock(two_nodes, tmp_path):
    """Each group wants 2 CPUs on both nodes: one is placed whole, the other waits whole,
    and is placed once the first is removed."""
    r = two_nodes.driver("""
        from aray.util import placement_group, remove_placement_group, placement_group_table
        aray.init(address="auto")
        groups = [placement_group([{"CPU": 2}, {"CPU": 2}], strategy="STRICT_SPREAD")
                  for _ in range(2)]
        wait_until(lambda: sorted(placement_group_table(g)["state"] for g in groups)
                   == ["CREATED", "PENDING"], 30, message="one group placed, one pending")
        first = next(g for g in groups if placement_group_table(g)["state"] == "CREATED")
        other = next(g for g in groups if g != first)
        assert len(placement_group_table(other)["bundles_to_node_id"]) == 0  # none half-held
        assert not other.wait(0.5)
        remove_placement_group(first)
        assert other.wait(30)
        remove_placement_group(other)
        print("DONE")
    """, tmp_path)
    assert "DONE" in r.stdout


def test_child_tasks_are_captured_only_when_asked(two_nodes, tmp_path):
    r = two_nodes.driver("""
        from aray.util import placement_group, remove_placement_group
        from aray.util.scheduling_strategies import PlacementGroupSchedulingStrategy as In
        aray.init(address="auto")
        pg = placement_group([{"CPU": 1, "b": 1}])  # only the second node has "b"
        assert pg.wait(30)

        @aray.remote(num_cpus=0.5)
        def child():
            group = aray.util.get_current_placement_group()
            return group.id.hex() if group else None

        @aray.remote(num_cpus=0.5)
        def parent():
            return aray.get(child.remote())

        captured = parent.options(scheduling_strategy=In(pg, -1, True)).remote()
        free = parent.options(scheduling_strategy=In(pg, -1, False)).remote()
        print("CAPTURED", aray.get(captured, timeout=30) == pg.id.hex())
        print("FREE", aray.get(free, timeout=30))
        remove_placement_group(pg)
    """, tmp_path)
    assert "CAPTURED True" in r.stdout and "FREE None" in r.stdout


def test_a_group_ends_with_its_job_unless_detached_and_is_listed(two_nodes, tmp_path):
    two_nodes.driver("""
        from aray.util import placement_group
        aray.init(address="auto", namespace="groups")
        assert placement_group([{"CPU": 1}], name="mine").wait(30)
        assert placement_group([{"CPU": 1}], name="kept", lifetime="detached").wait(30)
    """, tmp_path)
    out = two_nodes.cli("list", "placement-groups", "--address", two_nodes.address).stdout
    rows = {line.split()[1]: line for line in out.splitlines()[1:-1]}
    assert "CREATED" in rows["kept"] and "REMOVED" in rows["mine"], out
    assert "0: CPU: 1" in rows["kept"] and out.rstrip().endswith("placement groups)")
    r = two_nodes.driver("""
        aray.init(address="auto", namespace="groups")
        pg = aray.util.get_placement_group("kept")
        aray.util.remove_placement_group(pg)
        try:
            aray.util.get_placement_group("kept")
        except ValueError as e:
            print("GONE", e)
    """, tmp_path)
    assert "GONE Failed to look up placement group with name: kept" in r.stdout


@pytest.fixture
def cluster():
    c = Cluster()
    c.env["ARAY_NODE_TIMEOUT"] = "3"
    yield c
    c.stop()


def test_a_group_waits_for_a_node_and_moves_off_a_dead_one(cluster, tmp_path):
    """A group no node can hold stays pending with a warning, and is placed when a node
    that can hold it joins; when that node is killed, the group is RESCHEDULING until
    another such node joins, and its actor (max_restarts) comes back there."""
    cluster.start_head("--num-cpus", "1")
    cluster.env["TEST_ADDRESS"] = cluster.address
    r = cluster.driver("""
        import signal, subprocess
        from aray.util import placement_group, placement_group_table
        from aray.util.scheduling_strategies import PlacementGroupSchedulingStrategy as In
        aray.init(address="auto")
        ADDRESS = os.environ["TEST_ADDRESS"]

        @aray.remote(num_cpus=1, max_restarts=1)
        class Member:
            def node(self):
                return aray.get_runtime_context().get_node_id()

        def node_of(actor):
            try:
                return aray.get(actor.node.remote(), timeout=5)
            except (aray.exceptions.ActorUnavailableError, aray.exceptions.GetTimeoutError):
                return None

        def join():
            out = subprocess.run([sys.executable, "-m", "aray", "start", "--address", ADDRESS,
                                  "--num-cpus", "1", "--resources", '{"big": 1}'],
                                 check=True, capture_output=True, text=True).stdout
            return int(out.split("(pid ")[1].split(")")[0])

        pg = placement_group([{"CPU": 1, "big": 1}], strategy="STRICT_PACK")
        member = Member.options(scheduling_strategy=In(pg, 0)).remote()
        assert not pg.wait(1)
        pid = join()
        assert pg.wait(30)
        first = aray.get(member.node.remote(), timeout=30)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: placement_group_table(pg)["state"] == "RESCHEDULING", 30,
                   message="the group to lose its bundle")
        join()
        wait_until(lambda: placement_group_table(pg)["state"] == "CREATED", 30,
                   message="the group to be placed again")
        second = wait_until(lambda: node_of(member), 60, message="the actor to come back")
        print("MOVED", first != second, second == placement_group_table(pg)
              ["bundles_to_node_id"][0])
    """, tmp_path, timeout=150)
    assert "MOVED True True" in r.stdout
    assert "cannot be placed right now" in r.stderr and "STRICT_PACK" in r.stderr


def test_groups_created_while_others_are_placed_are_all_placed(run_script):
    """Groups that arrive while the head is reserving others are tried too, not left
    pending until something else changes."""
    r = run_script("""
        from aray.util import placement_group, remove_placement_group, placement_group_table
        aray.init(num_cpus=2)
        for _ in range(3):
            groups = [placement_group([{"CPU": 0.001}]) for _ in range(100)]
            wait_until(lambda: all(placement_group_table(g)["state"] == "CREATED"
                                   for g in groups), 20, message="every group placed")
            for g in groups:
                remove_placement_group(g)
        print("DONE")
    """).check()
    assert "DONE" in r.stdout
