"""The head's tables as plain data, without processes: every one stays bounded as what
it tracks comes and goes."""

from aray._head.state import ActorTable, JobTable, NodeTable, TaskTable


def test_dead_nodes_are_kept_up_to_a_bound():
    nodes = NodeTable(max_dead=3)
    for i in range(10):
        nodes.join(f"n{i}", f"a{i}", "127.0.0.1", {"CPU": 1.0})
        nodes.mark_dead(f"n{i}") if i < 8 else None
    assert [n.node_id for n in nodes.nodes.values()] == ["n5", "n6", "n7", "n8", "n9"]
    assert [n.node_id for n in nodes.alive()] == ["n8", "n9"]


def test_finished_jobs_are_kept_up_to_a_bound():
    jobs = JobTable(max_finished=2)
    ids = [jobs.new_job(pid) for pid in range(5)]
    for job_id in ids[:4]:
        jobs.finish(job_id)
    assert list(jobs.jobs) == ids[2:]
    assert jobs.jobs[ids[4]]["alive"]


def test_dead_actors_are_kept_up_to_a_bound_and_free_their_names():
    actors = ActorTable(max_dead=2)
    for i in range(5):
        actors.register(f"a{i}", f"name{i}", "ns", "job", {}, False)
        actors.mark_dead(actors.actors[f"a{i}"], "killed")
    assert list(actors.actors) == ["a3", "a4"]
    assert actors.names == {}
    # a name is free again once its actor is dead
    assert actors.register("b", "name4", "ns", "job", {}, False) == ("b", "")


def _events(first: int, n: int, state: str, job: str = "j") -> list:
    return [[i.to_bytes(4, "big"), state, float(i), {"job_id": job, "name": "f"}]
            for i in range(first, first + n)]


def test_ended_tasks_age_out_oldest_first_and_unended_ones_stay():
    table = TaskTable(limit=100)
    table.apply(_events(0, 50, "PENDING_NODE_ASSIGNMENT"))
    table.apply(_events(50, 300, "FINISHED"))
    assert table.ended == 100 and len(table.tasks) == 150
    ended = [t for t in table.tasks.values() if t["ended_at"] is not None]
    assert ended[0]["task_id"] == (250).to_bytes(4, "big").hex()  # the newest 100 remain


def test_a_finished_job_ends_its_tasks_so_that_they_age_out():
    table = TaskTable(limit=10)
    table.apply(_events(0, 30, "RUNNING", job="gone"))
    table.apply(_events(30, 5, "RUNNING", job="alive"))
    table.finish_job("gone", now=1.0)
    assert table.ended == 10  # the 30 of the gone job ended; only 10 are kept
    states = [t["state"] for t in table.tasks.values()]
    assert states.count("FAILED") == 10 and states.count("RUNNING") == 5
    failed = next(t for t in table.tasks.values() if t["state"] == "FAILED")
    assert "driver exited" in failed["error"]


def _recount(table: TaskTable) -> dict:
    out: dict = {}
    for task in table.tasks.values():
        by_state = out.setdefault(task["name"] or "?", {})
        by_state[task["state"]] = by_state.get(task["state"], 0) + 1
    return out


def test_task_counts_follow_every_event_aging_and_finished_job():
    table = TaskTable(limit=20)
    table.apply([[b"a", "RUNNING", 1.0, {}]])  # its name comes with a later event
    table.apply([[b"a", "FINISHED", 2.0, {"name": "late"}]])
    assert table.summary() == {"late": {"FINISHED": 1}}
    table.apply(_events(0, 30, "PENDING_NODE_ASSIGNMENT", job="gone"))
    table.apply(_events(10, 30, "RUNNING", job="gone"))
    table.apply(_events(30, 25, "FINISHED"))
    table.apply(_events(0, 3, "RUNNING"))  # an event never moves a task back
    table.finish_job("gone", now=5.0)
    assert table.summary() == _recount(table)
    assert sum(sum(s.values()) for s in table.summary().values()) == len(table.tasks)
    assert "late" not in table.summary()  # the oldest ended task aged out


def test_snapshots_do_not_change_with_the_tables():
    from aray._head.server import Head
    from aray._head.views import Snapshot, summary, tasks

    head = Head("token")
    head.tasks.apply(_events(0, 5, "RUNNING"))
    head.actors.register("a1", "svc", "ns", "j", {}, False)
    snapshot = Snapshot(head)
    head.tasks.apply(_events(5, 5, "FINISHED"))
    head.actors.register("a2", "", "ns", "j", {}, False)
    head.nodes.join("n1", "ws://n1", "127.0.0.1", {"CPU": 1.0})
    assert tasks(snapshot)["total"] == 5 and summary(snapshot)["tasks"]["total"] == 5
    assert summary(snapshot)["actors"]["total"] == 1 and summary(snapshot)["nodes"]["alive"] == 0
    assert summary(head)["tasks"]["total"] == 10
    counts_only = Snapshot(head, task_rows=False)
    assert summary(counts_only)["tasks"]["total"] == 10 and tasks(counts_only)["rows"] == []
