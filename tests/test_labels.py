"""Node labels and label scheduling: the selectors, the decisions of the node's lease
scheduler and of the head's placement over plain data, and tasks and actors on a
cluster of real nodes started by the CLI with labels."""

import json
import subprocess
import sys

import pytest
from test_cluster import Cluster

from aray._head.lifecycle import ActorLifecycle, Created, NodeJoined, Place, Registered, WarnDriver
from aray._head.placement import place
from aray._head.state import ActorTable, NodeInfo, NodeTable
from aray._options import placement_strategy, validate_task_options
from aray.node import labels as L
from aray.node.lease_events import (
    CallerGone,
    FailRequest,
    GrantLease,
    JobAssigned,
    LeaseRequested,
    NodeStarted,
    SpawnWorker,
    SpillBack,
    ViewChanged,
    WarnInfeasible,
    WorkerStarted,
)
from aray.node.lease_scheduler import LeaseScheduler
from aray.util.scheduling_strategies import (
    DoesNotExist,
    Exists,
    In,
    NodeLabelSchedulingStrategy,
    NotIn,
    strategy_wire,
)

# --- selectors ---------------------------------------------------------------------------


def test_rays_selector_strings_parse_to_operators():
    assert L.parse_selector({"a": "x", "b": "!x", "c": "in(x, y)", "d": "!in(x,y)"}) == {
        "a": ["in", ["x"]], "b": ["!in", ["x"]], "c": ["in", ["x", "y"]],
        "d": ["!in", ["x", "y"]]}
    assert L.parse_selector({"ray.io/accelerator-type": "H100"}) == {
        "ray.io/accelerator-type": ["in", ["H100"]]}
    for bad in ("in()", "in(a,)", "-a", "a b", "!!a", "in(a,b"):
        with pytest.raises(L.LabelError, match="invalid label selector value"):
            L.parse_selector({"zone": bad})
    with pytest.raises(L.LabelError, match="invalid label selector key '-zone'"):
        L.parse_selector({"-zone": "a"})
    with pytest.raises(L.LabelError, match="must be a dict"):
        L.parse_selector(["zone"])
    with pytest.raises(L.LabelError, match="must be a string"):
        L.parse_selector({"zone": 3})


def test_matching_follows_rays_rules_for_labels_a_node_lacks():
    node = {"zone": "a", "gpu": "h100"}
    assert L.matches({"zone": "a"}, node) and not L.matches({"zone": "b"}, node)
    assert L.matches({"zone": "in(a,b)", "gpu": "h100"}, node)
    assert not L.matches({"zone": "a", "gpu": "!h100"}, node)  # every key must match
    # a node without the label: "!x" and "!in(...)" match, "x" and "in(...)" do not
    assert L.matches({"disk": "!ssd"}, node) and L.matches({"disk": "!in(ssd,nvme)"}, node)
    assert not L.matches({"disk": "ssd"}, node) and not L.matches({"disk": "in(ssd)"}, node)
    assert L.matches({}, node)
    ops = L.parse_selector({"gpu": Exists(), "spot": DoesNotExist(), "zone": NotIn("c")})
    assert L.matches(ops, node) and not L.matches(ops, {"gpu": "x", "spot": "yes"})
    assert not L.matches(ops, {"zone": "a"})  # no gpu label


def test_node_labels_are_checked_where_they_are_given(tmp_path):
    assert L.parse_labels_json('{"zone": "a", "gpu": "h100"}') == {"zone": "a", "gpu": "h100"}
    assert L.parse_labels_json(" zone = a , tier= ") == {"zone": "a", "tier": ""}
    with pytest.raises(L.LabelError, match=r"^--labels: not valid JSON"):
        L.parse_labels_json('{"zone": a}')
    with pytest.raises(L.LabelError, match="^--labels: the value of label 'zone' must be a "
                                           "string, got 1"):
        L.parse_labels_json('{"zone": 1}')
    with pytest.raises(L.LabelError, match="^--labels: '\\[\"zone\"\\]' is not key=value"):
        L.parse_labels_json('["zone"]')
    with pytest.raises(L.LabelError, match="not key=value"):
        L.parse_labels_json("zone=a=b")
    with pytest.raises(L.LabelError, match="ray.io/node-id is set by aray"):
        L.parse_labels_json('{"ray.io/node-id": "x"}')
    yaml = tmp_path / "labels.yaml"
    yaml.write_text('# the zone\n"zone": "a"\ngpu: h100  # the model\n\n')
    assert L.parse_labels_file(str(yaml)) == {"zone": "a", "gpu": "h100"}
    yaml.write_text('{"zone": "b"}')
    assert L.parse_labels_file(str(yaml)) == {"zone": "b"}
    yaml.write_text("zone a\n")
    with pytest.raises(L.LabelError, match="line 1: 'zone a' is not 'key: value'"):
        L.parse_labels_file(str(yaml))
    with pytest.raises(L.LabelError, match="--labels-file: cannot read"):
        L.parse_labels_file(str(tmp_path / "missing"))
    # aray's own labels: the node's id, its GPU model; a node's own may set the model
    assert L.node_labels("n1", {"CPU": 1.0}) == {"ray.io/node-id": "n1"}
    assert L.node_labels("n1", {"accelerator_type:A100": 1.0},
                         {"ray.io/accelerator-type": "L4"})["ray.io/accelerator-type"] == "L4"


def test_strategies_and_options_make_one_wire_form():
    wire = strategy_wire(NodeLabelSchedulingStrategy({"zone": In("a", "b")},
                                                     soft={"gpu": Exists()}))
    assert wire == {"kind": "labels", "hard": {"zone": ["in", ["a", "b"]]},
                    "soft": {"gpu": ["exists", []]}}
    assert strategy_wire(wire) == wire  # passed on as it is
    opts = validate_task_options({"label_selector": {"zone": "!a"},
                                  "fallback_strategy": [{"label_selector": {"zone": "b"}}]})
    assert placement_strategy(opts) == {"kind": "labels", "hard": {"zone": ["!in", ["a"]]},
                                        "soft": {}, "fallback": [{"zone": ["in", ["b"]]}]}
    # options passed on (the wire forms) check again to themselves
    assert validate_task_options(opts) == opts
    with pytest.raises(ValueError, match="cannot both|needs hard or soft"):
        NodeLabelSchedulingStrategy({})
    with pytest.raises(ValueError, match="must be In, NotIn, Exists or DoesNotExist"):
        NodeLabelSchedulingStrategy({"zone": "a"})
    with pytest.raises(ValueError, match="In needs one value or more"):
        In()
    with pytest.raises(ValueError, match="fallback_strategy\\[0\\] must be"):
        validate_task_options({"fallback_strategy": [{"zone": "a"}]})
    both = placement_strategy(validate_task_options({
        "label_selector": {"zone": "a"},
        "scheduling_strategy": NodeLabelSchedulingStrategy({"gpu": Exists()})}))
    assert both["hard"] == {"gpu": ["exists", []], "zone": ["in", ["a"]]}
    with pytest.raises(ValueError, match="label_selector and fallback_strategy go with the "
                                         "default scheduling_strategy or a "
                                         "NodeLabelSchedulingStrategy in aray, not with "
                                         "'spread'"):
        placement_strategy(validate_task_options({"label_selector": {"zone": "a"},
                                                  "scheduling_strategy": "SPREAD"}))


# --- the node's decisions (tasks) --------------------------------------------------------
VIEW = [["me", "addr-me", {"CPU": 2}, {"CPU": 2}, {"ray.io/node-id": "me", "zone": "a"}],
        ["b", "addr-b", {"CPU": 2}, {"CPU": 2}, {"ray.io/node-id": "b", "zone": "b"}],
        ["c", "addr-c", {"CPU": 2}, {"CPU": 2}, {"ray.io/node-id": "c", "zone": "b",
                                                  "disk": "ssd"}],
        ["tiny", "addr-tiny", {"CPU": 0.5}, {"CPU": 0.5}, {"zone": "t"}]]


def scheduler(view=VIEW):
    s = LeaseScheduler({"CPU": 2}, new_id=lambda: "w1",
                       labels={"ray.io/node-id": "me", "zone": "a"})
    s.handle(ViewChanged([list(entry) for entry in view], "me"))
    return s


def ask(s, req_id, selector=None, soft=None, fallback=None, may_spillback=True, caller="c"):
    strategy = {"kind": "labels", "hard": L.parse_selector(selector),
                "soft": L.parse_selector(soft)}
    if fallback:
        strategy["fallback"] = [L.parse_selector(f) for f in fallback]
    return s.handle(LeaseRequested(caller, req_id, {"CPU": 1}, f"task {req_id}", "j",
                                   may_spillback, strategy))


def only(out, kind):
    return [o for o in out if isinstance(o, kind)]


def test_a_task_goes_to_a_node_whose_labels_match():
    s = scheduler()
    assert only(ask(s, 1, {"zone": "b"}), SpillBack) == [SpillBack("c", 1, "addr-b")]
    # the request counts as taken there until the next view: b is busy now, c is free
    ask(s, 2, {"zone": "b"})
    assert only(ask(s, 3, {"zone": "b"}), SpillBack)[0].address == "addr-c"
    # soft: among those that match, the one that matches it too
    assert only(ask(scheduler(), 4, {"zone": "b"}, soft={"disk": "ssd"}), SpillBack) == [
        SpillBack("c", 4, "addr-c")]
    # this node matches: it stays here, and is granted once a worker is up
    s = scheduler()
    out = ask(s, 5, {"zone": "in(a,z)"})
    assert not only(out, SpillBack) and only(out, SpawnWorker)
    s.handle(WorkerStarted("w1"))  # (it joins the request's job first)
    assert only(s.handle(JobAssigned("w1", True)), GrantLease)[0].req_id == 5
    # by the node id, which every node has as a label
    assert only(ask(scheduler(), 6, {"ray.io/node-id": "c"}), SpillBack)[0].address == "addr-c"
    # a fallback when no node that matches the selector can hold it
    assert only(ask(scheduler(), 7, {"zone": "t"}, fallback=[{"zone": "b"}]),
                SpillBack)[0].address == "addr-b"


def test_no_node_matches_it_waits_with_a_warning_until_one_joins():
    s = scheduler()
    out = ask(s, 1, {"zone": "z"})
    (warning,) = only(out, WarnInfeasible)
    assert not only(out, SpillBack) and not only(out, SpawnWorker)
    assert "label selector {zone: z}" in warning.message
    assert "b: {zone: b}" in warning.message and "me: {zone: a}" in warning.message
    assert "stays pending" in warning.message
    # a node that matches but can never hold it does not count
    assert only(ask(s, 2, {"zone": "t"}), WarnInfeasible)
    assert s.pending() == [[{"CPU": 1}, 2, True]]
    out = s.handle(ViewChanged([*VIEW, ["z", "addr-z", {"CPU": 1}, {"CPU": 1},
                                        {"zone": "z"}]], "me"))
    assert only(out, SpillBack) == [SpillBack("c", 1, "addr-z")]
    assert len(s.router.unmatched) == 1  # the one for zone t still waits
    s.handle(CallerGone("c"))
    assert s.router.unmatched == [] and s.pending() == []


def test_a_request_another_node_sent_is_not_sent_on():
    s = scheduler()
    (fail,) = only(ask(s, 1, {"zone": "b"}, may_spillback=False), FailRequest)
    assert fail.kind == "unschedulable" and "labels do not match its label selector {zone: b}" in \
        fail.message
    s.handle(NodeStarted(0))
    out = ask(s, 2, {"zone": "a"}, may_spillback=False)
    assert not only(out, SpillBack) and not only(out, FailRequest)


def test_a_head_of_four_field_view_entries_gives_nodes_without_labels():
    s = scheduler([entry[:4] for entry in VIEW])
    assert only(ask(s, 1, {"zone": "b"}), WarnInfeasible)
    assert only(ask(s, 2, {"zone": "!b"}), SpillBack) == []  # this node matches: here


# --- the head's decisions (actors) -------------------------------------------------------
def test_the_head_places_actors_by_labels_and_waits_for_a_node_that_matches():
    nodes = [NodeInfo(n, "", "", {"CPU": 2.0}, {"CPU": 2.0}, labels={"zone": z})
             for n, z in (("a", "a"), ("b", "b"))]
    wire = strategy_wire(NodeLabelSchedulingStrategy({"zone": In("b")}))
    assert place(nodes, {"CPU": 1.0}, wire) == ("b", "")
    assert place(nodes, {"CPU": 1.0}, strategy_wire(NodeLabelSchedulingStrategy(
        {"zone": NotIn("a")}))) == ("b", "")
    assert place(nodes, {"CPU": 1.0}, {"kind": "labels", "hard": {"zone": ["in", ["z"]]}}) \
        == ("", "")

    table = NodeTable()
    table.join("a", "ws://a", "127.0.0.1", {"CPU": 2.0}, labels={"zone": "a"})
    life = ActorLifecycle(ActorTable(), table)
    life.handle(Registered("x1", "", "ns", "j1", {}, False, ("driver", 1)))
    spec = {"placement": {"CPU": 1.0}, "description": "A (actor x1)",
            "scheduling_strategy": {"kind": "labels", "hard": {"zone": ["in", ["z"]]}}}
    (warn,) = life.handle(Created("x1", spec))
    assert isinstance(warn, WarnDriver) and "The actor A (actor x1)" in warn.message
    assert life.actors.actors["x1"].state.value == "PENDING"
    table.join("y", "ws://y", "127.0.0.1", {"CPU": 2.0}, labels={"zone": "y"})
    assert life.handle(NodeJoined("y")) == []  # no match: it waits on, without a warning
    table.join("z", "ws://z", "127.0.0.1", {"CPU": 2.0}, labels={"zone": "z"})
    assert life.handle(NodeJoined("z")) == [Place("z", "x1", spec)]
    assert table.describe()[2]["Labels"] == {"zone": "z"}


# --- a cluster of real nodes -------------------------------------------------------------
@pytest.fixture(scope="module")
def labelled():
    c = Cluster()
    c.head = c.start_head("--num-cpus", "1", "--labels", "zone=a")
    c.second = c.join("--num-cpus", "2", "--labels", '{"zone": "b", "gpu": "h100"}')
    yield c
    c.stop()


def test_tasks_and_actors_land_on_the_labelled_node(labelled, tmp_path):
    second = labelled.second["node_id"]
    r = labelled.driver(f"""
        import json
        from aray.util.scheduling_strategies import NodeLabelSchedulingStrategy, In, Exists
        aray.init(address="auto")

        @aray.remote
        def where():
            return aray.get_runtime_context().get_node_id()

        @aray.remote
        class Here:
            def node(self):
                ctx = aray.get_runtime_context()
                return ctx.get_node_id(), ctx.get_node_labels()["zone"]

        out = {{"nodes": {{n["NodeID"]: n["Labels"] for n in aray.nodes()}}}}
        b = where.options(label_selector={{"zone": "b"}})
        out["tasks"] = sorted(set(aray.get([b.remote() for _ in range(6)])))
        gpu = where.options(scheduling_strategy=NodeLabelSchedulingStrategy(
            {{"gpu": Exists()}}, soft={{"zone": In("b")}}))
        out["strategy"] = aray.get(gpu.remote())
        out["not_b"] = aray.get(where.options(label_selector={{"zone": "!b"}}).remote())
        actor = Here.options(label_selector={{"gpu": "in(h100,a100)"}}).remote()
        out["actor"] = aray.get(actor.node.remote())

        # no node has zone c: both wait, until a node with it joins
        waiting = where.options(label_selector={{"zone": "c"}}).remote()
        later = Here.options(label_selector={{"zone": "c"}}).remote()
        ready, _ = aray.wait([waiting, later.node.remote()], num_returns=2, timeout=1)
        out["waited"] = len(ready)
        subprocess_out = __import__("subprocess").run(
            [sys.executable, "-m", "aray", "start", "--address", "{labelled.address}",
             "--num-cpus", "1", "--labels", '{{"zone": "c"}}'],
            capture_output=True, text=True, timeout=60)
        assert subprocess_out.returncode == 0, subprocess_out.stderr
        out["joined_task"] = aray.get(waiting, timeout=60)
        out["joined_actor"] = aray.get(later.node.remote(), timeout=60)
        print("OUT " + json.dumps(out))
    """, tmp_path)
    out = json.loads(r.stdout.split("OUT ", 1)[1])
    head = labelled.head["node_id"]
    assert out["nodes"][second] == {"ray.io/node-id": second, "zone": "b", "gpu": "h100"}
    assert out["nodes"][head] == {"ray.io/node-id": head, "zone": "a"}
    assert out["tasks"] == [second] and out["strategy"] == second
    assert out["not_b"] == head
    assert out["actor"] == [second, "b"]
    assert out["waited"] == 0
    third = next(i["node_id"] for i in labelled.node_infos()
                 if i["node_id"] not in (head, second))
    assert out["joined_task"] == third and out["joined_actor"] == [third, "c"]
    assert "cannot be scheduled right now: no node whose labels match its label selector " \
           "{zone: c}" in r.stderr
    listing = labelled.cli("list", "nodes", "--address", labelled.address).stdout
    assert "gpu=h100,zone=b" in listing and "zone=c" in listing


def test_bad_labels_are_refused_naming_the_flag(labelled):
    for args, message in (
            (["--labels", '{"zone": 1}'], "--labels: the value of label 'zone' must be a string"),
            (["--labels", "{zone"], "--labels: not valid JSON"),
            (["--labels-file", "/nonexistent/labels"], "--labels-file: cannot read")):
        proc = labelled.cli("start", "--address", labelled.address, *args, check=False)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    for args, message in (
            ("address='local', labels={'z': 2}", "init(labels=...): the value of label 'z' "
                                                 "must be a string"),
            ("labels={'z': 'a'}", "labels and dashboard_port describe a new cluster")):
        proc = subprocess.run([sys.executable, "-c", f"import aray; aray.init({args})"],
                              capture_output=True, text=True, timeout=60, env=labelled.env)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
