"""The node's lease decisions, driven by event sequences: no processes, no sockets."""

import itertools

import pytest

from aray.node.lease_events import (
    ActorKilled,
    ActorPlacementRequested,
    ActorWithdrawn,
    AssignJob,
    CallerGone,
    GrantLease,
    JobAssigned,
    JobFinished,
    KillWorker,
    LeaseRequested,
    LeaseReturned,
    NodeStarted,
    ReportActorDied,
    ReportResources,
    SpawnWorker,
    SpillBack,
    StartActor,
    ViewChanged,
    WarnInfeasible,
    WorkerBlocked,
    WorkerExited,
    WorkerKillRequested,
    WorkerStarted,
    WorkerUnblocked,
)
from aray.node.lease_scheduler import LeaseScheduler, WorkerState
from aray.node.scheduler import ReleaseError


def make(resources=None, **kw) -> LeaseScheduler:
    ids = (f"w{i}" for i in itertools.count(1))
    return LeaseScheduler(resources or {"CPU": 2}, new_id=lambda: next(ids), **kw)


def ask(req_id, shape=None, job="job1", caller="driver", may_spillback=True):
    return LeaseRequested(caller, req_id, shape or {"CPU": 1}, f"task {req_id}", job,
                          may_spillback)


def kinds(out, kind):
    return [i for i in out if isinstance(i, kind)]


def with_idle_worker(s, job="job1", shape=None) -> str:
    """A started worker of ``job`` that has served and returned one lease (of ``shape``)."""
    (spawn,) = s.handle(NodeStarted(1))
    s.handle(WorkerStarted(spawn.worker_id))
    out = s.handle(ask(0, shape, job=job))
    (assign,) = kinds(out, AssignJob)
    s.handle(JobAssigned(assign.worker_id, True))
    s.handle(LeaseReturned("driver", assign.worker_id))
    return assign.worker_id


def test_grant_to_an_idle_worker_of_the_job():
    s = make()
    w = with_idle_worker(s)
    out = s.handle(ask(1))
    assert kinds(out, GrantLease) == [GrantLease("driver", 1, w, [])]
    assert kinds(out, ReportResources) == [ReportResources({"CPU": 1.0})]
    assert not kinds(out, SpawnWorker)


def test_start_a_worker_when_none_is_idle_and_grant_once_it_is_up():
    s = make()
    out = s.handle(ask(1, job=""))
    assert out == [SpawnWorker("w1")]
    assert s.pool.available["CPU"] == 1  # held for the request while the worker starts
    assert s.handle(WorkerStarted("w1")) == [GrantLease("driver", 1, "w1", []),
                                             ReportResources({"CPU": 1.0})]


def test_a_fresh_worker_is_assigned_to_the_job_of_its_lease():
    s = make()
    s.handle(NodeStarted(1))
    s.handle(WorkerStarted("w1"))
    out = s.handle(ask(1, job="jobA"))
    assert out == [AssignJob("w1", "jobA")]
    assert s.workers["w1"].state is WorkerState.JOINING
    assert kinds(s.handle(JobAssigned("w1", True)), GrantLease) == [
        GrantLease("driver", 1, "w1", [])]
    assert s.workers["w1"].job_id == "jobA"
    # a worker of another job is not reused: a new one starts
    s.handle(LeaseReturned("driver", "w1"))
    assert s.handle(ask(2, job="jobB")) == [SpawnWorker("w2")]
    assert s.handle(WorkerStarted("w2")) == [AssignJob("w2", "jobB")]


def test_a_worker_that_cannot_join_is_killed_and_its_request_tries_another():
    s = make()
    s.handle(NodeStarted(1))
    s.handle(WorkerStarted("w1"))
    s.handle(ask(1))
    out = s.handle(JobAssigned("w1", False))
    assert out == [KillWorker("w1"), SpawnWorker("w2")]
    assert s.handle(WorkerStarted("w2")) == [AssignJob("w2", "job1")]


def test_a_worker_that_dies_while_starting_hands_its_request_on():
    s = make()
    s.handle(ask(1))
    assert s.handle(WorkerExited("w1", "")) == [SpawnWorker("w2")]
    assert s.pool.available["CPU"] == 1


def others(free, total=None):
    return [["n2", "addr2", total or {"CPU": 4}, free]]


def test_spillback_to_a_node_with_free_resources_counts_them_taken():
    s = make({"CPU": 1})
    s.handle(ViewChanged([["n1", "addr1", {"CPU": 1}, {"CPU": 1}],
                          *others({"CPU": 2})], "n1"))
    with_idle_worker(s)
    s.handle(ask(1))  # takes the only CPU here
    assert s.handle(ask(2)) == [SpillBack("driver", 2, "addr2")]
    assert s.handle(ask(3)) == [SpillBack("driver", 3, "addr2")]
    # the two CPUs there count as taken until the next view: the next one waits here
    assert s.handle(ask(4)) == []
    assert len(s.queue) == 1
    s.handle(ViewChanged([["n1", "addr1", {"CPU": 1}, {"CPU": 0}], *others({"CPU": 1})],
                         "n1"))
    assert s.handle(ask(5)) == [SpillBack("driver", 5, "addr2")]


def test_spillback_to_a_node_that_can_ever_run_it_when_this_one_never_can():
    s = make({"CPU": 1})
    s.handle(ViewChanged(others({"CPU": 0}), "n1"))
    assert s.handle(ask(1, {"CPU": 3})) == [SpillBack("driver", 1, "addr2")]


def test_a_request_that_must_wait_stays_queued_here():
    s = make({"CPU": 1})
    s.handle(ViewChanged(others({"CPU": 0}), "n1"))
    with_idle_worker(s)
    s.handle(ask(1))
    assert s.handle(ask(2)) == []  # busy everywhere, and it could run here: it waits
    assert len(s.queue) == 1
    # a request sent here by another node's spillback is never sent on
    assert s.handle(ask(3, {"CPU": 3}, may_spillback=False)) == []
    assert len(s.queue) == 2


def test_a_node_that_joins_takes_what_can_never_run_here():
    s = make({"CPU": 1})
    s.handle(ask(1, {"CPU": 3}))
    out = s.handle(ViewChanged([["n1", "addr1", {"CPU": 1}, {"CPU": 1}],
                                *others({"CPU": 4})], "n1"))
    assert out == [SpillBack("driver", 1, "addr2")]
    assert len(s.queue) == 0


def test_infeasible_warning_once():
    s = make({"CPU": 1})
    (warn,) = s.handle(ask(1, {"CPU": 1, "X": 2}))
    assert isinstance(warn, WarnInfeasible) and warn.req_id == 1 and warn.actor_id == ""
    assert "requires {CPU: 1.0, X: 2.0}" in warn.message
    assert "the cluster has {CPU: 1.0}" in warn.message
    assert s.handle(ViewChanged([["n1", "a1", {"CPU": 1}, {"CPU": 1}]], "n1")) == []
    assert s.pending() == [[{"CPU": 1, "X": 2}, 1, True]]


def test_infeasible_warning_names_every_resource_asked_for_and_every_resource_nodes_have():
    s = make({"CPU": 8, "GPU_MEMORY": 4, "memory": 2**31})
    (warn,) = s.handle(ask(1, {"CPU": 1, "GPU_MEMROY": 1}))
    # the misspelt custom resource, and what the node has of its own, custom ones included
    assert "It requires {CPU: 1.0, GPU_MEMROY: 1.0} for placement" in warn.message
    assert "(the cluster has {CPU: 8.0, GPU_MEMORY: 4.0, memory: 2.00 GiB})" in warn.message
    assert "No node has GPU_MEMROY (did you mean GPU_MEMORY?)." in warn.message
    assert "cannot be scheduled right now" in warn.message


def test_infeasible_warning_lists_the_nodes_one_by_one():
    s = make({"CPU": 4})
    view = ViewChanged([["n1", "a1", {"CPU": 4}, {"CPU": 4}],
                        ["n2", "a2", {"CPU": 4, "dataset": 1, "node:10.0.0.2": 1}, {"CPU": 4}],
                        ["n3", "a3", {"CPU": 4}, {"CPU": 4}]], "n1")
    s.handle(view)
    (warn,) = s.handle(ask(1, {"CPU": 8}))
    # 12 CPUs in all, but no node has 8: a sum would hide it
    assert ("(the cluster's 3 nodes: 2 with {CPU: 4.0}, 1 with {CPU: 4.0, dataset: 1.0})"
            in warn.message), warn.message
    assert "No node has" not in warn.message  # every node has CPUs, just not enough
    (warn,) = s.handle(ActorPlacementRequested("head", "a" * 16, {"CPU": 1, "TPU": 1}, {},
                                               "actor A", "job1", None))
    assert warn.message.startswith("The actor actor A cannot be scheduled")
    assert "No node has TPU." in warn.message  # no far-fetched guess (CPU)


def test_lending_a_blocked_workers_cpu_and_reclaiming_it():
    s = make({"CPU": 1})
    w = with_idle_worker(s)
    s.handle(ask(1))
    assert s.handle(ask(2)) == []  # no CPU free
    out = s.handle(WorkerBlocked(w))  # it waits in get: its CPU serves request 2
    assert out == [SpawnWorker("w2")]
    assert kinds(s.handle(WorkerStarted("w2")), AssignJob) == [AssignJob("w2", "job1")]
    s.handle(JobAssigned("w2", True))
    assert s.handle(WorkerUnblocked(w)) == []
    assert s.pool.available["CPU"] == -1  # oversubscribed until one of them finishes
    s.handle(LeaseReturned("driver", "w2"))
    s.handle(LeaseReturned("driver", w))
    assert s.pool.available["CPU"] == 1


def test_a_lease_returned_while_its_cpu_is_lent_gives_back_only_the_rest():
    s = make({"CPU": 1, "GPU": 1})
    w = with_idle_worker(s, shape={"CPU": 1, "GPU": 1})
    s.handle(ask(1, {"CPU": 1, "GPU": 1}))
    s.handle(WorkerBlocked(w))
    s.handle(LeaseReturned("driver", w))
    assert s.pool.available == {"CPU": 1.0, "GPU": 1.0}


def place(actor_id, placement, hold, job="job1"):
    return ActorPlacementRequested("head", actor_id, placement, hold, "actor A", job,
                                   {"spec": actor_id})


def test_an_actor_needs_its_placement_to_start_and_holds_only_its_hold():
    s = make({"CPU": 1, "GPU": 1})
    w = with_idle_worker(s, shape={"CPU": 1, "GPU": 1})
    out = s.handle(place("a1", {"CPU": 1, "GPU": 1}, {"CPU": 0, "GPU": 1}))
    assert kinds(out, StartActor) == [StartActor(w, "a1", [0], {"spec": "a1"})]
    assert s.pool.available == {"CPU": 1.0, "GPU": 0.0}  # the CPU was for placement only
    # a second actor that needs a CPU to start can start now (on a new worker)
    assert kinds(s.handle(place("a2", {"CPU": 1}, {"CPU": 0})), SpawnWorker)
    assert kinds(s.handle(WorkerExited(w, "its worker process exited")), ReportActorDied) == [
        ReportActorDied("a1", "its worker process exited")]
    assert s.pool.available["GPU"] == 1


def test_actors_killed_queued_starting_or_running():
    s = make({"CPU": 1})
    with_idle_worker(s)
    s.handle(ask(1))  # no CPU left: actors queue
    s.handle(place("queued", {"CPU": 1}, {"CPU": 0}))
    assert s.handle(ActorKilled("queued")) == [
        ReportActorDied("queued", "it was killed before it started")]
    s.handle(place("withdrawn", {"CPU": 1}, {"CPU": 0}))
    assert s.handle(ActorWithdrawn("withdrawn")) == [] and len(s.queue) == 0
    s.handle(LeaseReturned("driver", "w1"))
    s.handle(place("starting", {"CPU": 1}, {"CPU": 0}, job="job2"))  # a new worker starts
    assert s.handle(ActorKilled("starting")) == []
    out = s.handle(WorkerStarted("w2"))
    s.handle(JobAssigned("w2", True))
    assert s.workers["w2"].actor_id == ""
    assert s.pool.available["CPU"] == 1  # its placement was given back
    del out
    s.handle(place("running", {"CPU": 1}, {"CPU": 0}))
    assert s.handle(ActorKilled("running")) == [KillWorker("w1")]


def test_an_actor_killed_while_its_worker_joins_is_reported_dead():
    s = make({"CPU": 1})
    s.handle(NodeStarted(1))
    s.handle(WorkerStarted("w1"))
    s.handle(place("a", {"CPU": 1}, {"CPU": 0}))
    s.handle(ActorKilled("a"))
    out = s.handle(JobAssigned("w1", True))
    assert kinds(out, ReportActorDied) == [ReportActorDied("a", "it was killed before it started")]
    assert s.workers["w1"].state is WorkerState.IDLE


def test_caller_gone_releases_its_leases_and_kills_its_workers():
    s = make({"CPU": 2})
    w = with_idle_worker(s)
    s.handle(ask(1))
    s.handle(ask(2, caller="other"))  # starts w2 for the other caller
    s.handle(ask(3, caller="driver", shape={"CPU": 5}))  # queued forever
    out = s.handle(CallerGone("driver"))
    assert KillWorker(w) in out and len(s.queue) == 0
    assert s.workers[w].state is WorkerState.DEAD
    assert s.pool.available["CPU"] == 1  # the other caller's request still holds one
    assert s.handle(LeaseReturned("driver", w)) == []  # a late return changes nothing
    assert s.handle(WorkerExited(w, "")) == []
    assert s.pool.available["CPU"] == 1


def test_caller_gone_while_its_worker_starts_frees_the_worker_for_others():
    s = make({"CPU": 1})
    s.handle(ask(1, job=""))
    s.handle(CallerGone("driver"))
    assert s.pool.available["CPU"] == 1
    assert s.handle(WorkerStarted("w1")) == []
    assert s.workers["w1"].state is WorkerState.IDLE


def test_job_finished_kills_its_workers_but_not_its_actors():
    s = make({"CPU": 2}, prestart=1, shared=True)
    w = with_idle_worker(s)
    s.handle(ask(1))
    s.handle(place("a", {"CPU": 1}, {"CPU": 0}))
    s.handle(WorkerStarted("w2"))
    assert kinds(s.handle(JobAssigned("w2", True)), StartActor)
    out = s.handle(JobFinished("job1"))
    assert KillWorker(w) in out
    assert SpawnWorker("w3") in out  # a shared node keeps a fresh worker ready
    assert s.workers["w2"].state is not WorkerState.DEAD  # the actor's is the head's to end
    assert s.pool.available["CPU"] == 2


def test_only_the_holder_may_kill_a_worker():
    s = make()
    w = with_idle_worker(s)
    s.handle(ask(1))
    assert s.handle(WorkerKillRequested("stranger", w)) == []
    assert s.handle(WorkerKillRequested("driver", w)) == [KillWorker(w)]


def test_releasing_a_lease_twice_raises():
    s = make()
    w = with_idle_worker(s)
    s.handle(ask(1))
    s._release(s.workers[w])
    with pytest.raises(ReleaseError, match="released twice"):
        s._release(s.workers[w])


def test_gpu_leases_pack_fractions_and_keep_their_ids():
    s = make({"CPU": 4, "GPU": 2})
    s.handle(NodeStarted(2))
    s.handle(WorkerStarted("w1"))
    s.handle(WorkerStarted("w2"))
    s.handle(ask(1, {"CPU": 1, "GPU": 0.5}))
    (half,) = kinds(s.handle(JobAssigned("w1", True)), GrantLease)
    s.handle(ask(2, {"CPU": 1, "GPU": 1}))
    (whole,) = kinds(s.handle(JobAssigned("w2", True)), GrantLease)
    assert (half.worker_id, half.gpu_ids, whole.gpu_ids) == ("w1", [0], [1])
    s.handle(LeaseReturned("driver", "w1"))
    assert s.pool.free_gpus == [0]


def test_a_worker_is_leased_again_only_with_the_gpus_it_had():
    s = make({"CPU": 4, "GPU": 2})
    cpu_worker = with_idle_worker(s)  # it ran a lease without GPUs
    out = s.handle(ask(1, {"CPU": 1, "GPU": 1}))
    assert not kinds(out, GrantLease) and kinds(out, SpawnWorker)  # not that one
    (spawn,) = kinds(out, SpawnWorker)
    s.handle(WorkerStarted(spawn.worker_id))
    (gpu0,) = kinds(s.handle(JobAssigned(spawn.worker_id, True)), GrantLease)
    assert gpu0.gpu_ids == [0]
    s.handle(LeaseReturned("driver", gpu0.worker_id))
    # the same device again: the same worker; no GPU: the worker that had none
    (again,) = kinds(s.handle(ask(2, {"CPU": 1, "GPU": 1})), GrantLease)
    assert (again.worker_id, again.gpu_ids) == (gpu0.worker_id, [0])
    (cpu,) = kinds(s.handle(ask(3, {"CPU": 1})), GrantLease)
    assert cpu.worker_id == cpu_worker
    # device 1 (device 0 is taken) goes to no worker that had another device or none
    out = s.handle(ask(4, {"CPU": 1, "GPU": 1}))
    assert not kinds(out, GrantLease) and kinds(out, SpawnWorker)
