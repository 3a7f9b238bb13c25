"""The plain records the lease scheduler decides over: requests, leases, worker slots and
their states. Data only; :mod:`.lease_scheduler` changes them, :mod:`.admission` makes
requests.

Example:
    >>> slot = WorkerSlot("w1")
    >>> slot.state, slot.holder
    (<WorkerState.STARTING: 0>, None)
    >>> slot.lease = Lease("driver", {"CPU": 1}, [])
    >>> slot.holder
    'driver'
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Container, Hashable
from typing import Any


class WorkerState(enum.Enum):
    """A worker's life: STARTING -> IDLE <-> LEASED, with JOINING while a fresh worker joins
    the job of the request it is reserved for; DEAD once it is ending or gone."""

    STARTING = 0
    IDLE = 1
    LEASED = 2
    DEAD = 3
    JOINING = 4


class RequestState(enum.Enum):
    """QUEUED until resources allow; RESERVED while its resources are taken and a worker
    starts or joins its job for it; GRANTED once the caller has its worker."""

    QUEUED = 0
    RESERVED = 1
    GRANTED = 2


class LeaseState(enum.Enum):
    """HELD: the lease's resources are taken; LENT: its worker blocks in get, and its CPUs
    serve other leases until it resumes."""

    HELD = 0
    LENT = 1


@dataclasses.dataclass(eq=False)
class Request:
    """A caller's request for a worker (an actor's placement when ``actor_id`` is set)."""

    caller: Hashable
    req_id: int
    shape: dict
    description: str
    job_id: str
    actor_id: str = ""
    hold: dict = dataclasses.field(default_factory=dict)
    spec: Any = None
    state: RequestState = RequestState.QUEUED
    gpu_ids: list = dataclasses.field(default_factory=list)
    warned: bool = False  # the caller was told it is infeasible
    #: (placement group id, bundle index, -1 for any of the group's bundles here), or None
    bundle: tuple | None = None
    #: the pool its resources were taken from once reserved or granted (None: the node's)
    pool_key: tuple | None = None


@dataclasses.dataclass
class Lease:
    """What a worker's holder took: ``shape`` and the GPU devices it got."""

    caller: Hashable
    shape: dict
    gpu_ids: list
    state: LeaseState = LeaseState.HELD
    pool_key: tuple | None = None  # the bundle it took them from (None: the node's pool)

    def to_give_back(self) -> dict:
        """What returns to its pool when it ends: its shape, less the CPUs lent out."""
        if self.state is LeaseState.LENT:  # its CPUs were given back when it blocked
            return {k: v for k, v in self.shape.items() if k != "CPU"}
        return dict(self.shape)


@dataclasses.dataclass
class WorkerSlot:
    """The scheduler's view of one worker process."""

    worker_id: str
    state: WorkerState = WorkerState.STARTING
    job_id: str = ""  # the job it serves ("" until its first lease): workers are per job
    actor_id: str = ""  # set for the life of the worker once it hosts an actor
    lease: Lease | None = None
    reserved: Request | None = None  # the request it starts or joins a job for
    #: the GPU devices of its last lease (None: it has had none). A process that used a
    #: GPU keeps that device's context, whatever CUDA_VISIBLE_DEVICES says next, so a
    #: worker is leased again only with the same devices (or none again)
    gpu_ids: tuple | None = None

    @property
    def holder(self) -> Hashable | None:
        """The caller its lease (or reservation) is for."""
        if self.lease is not None:
            return self.lease.caller
        return self.reserved.caller if self.reserved is not None else None


class WorkerSlots(dict[str, WorkerSlot]):
    """The scheduler's worker slots by id, and the questions the scheduler asks of them.

    Example:
        >>> slots = WorkerSlots(iter(["w1", "w2"]).__next__)
        >>> slots.spawn().worker_id, slots.spawn().worker_id
        ('w1', 'w2')
        >>> slots["w1"].state = WorkerState.IDLE
        >>> [[w.worker_id for w in group] for group in slots.grantable()]
        [['w1'], ['w2']]
    """

    def __init__(self, new_id: Callable[[], str]) -> None:
        super().__init__()
        self._new_id = new_id

    def spawn(self) -> WorkerSlot:
        """A slot for a new worker, STARTING."""
        worker = WorkerSlot(self._new_id())
        self[worker.worker_id] = worker
        return worker

    def grantable(self) -> tuple[list[WorkerSlot], list[WorkerSlot]]:
        """``(idle, starting and not yet reserved)``: the workers a request may get."""
        idle = [w for w in self.values() if w.state is WorkerState.IDLE]
        starting = [w for w in self.values()
                    if w.state is WorkerState.STARTING and w.reserved is None]
        return idle, starting

    def held_by(self, caller: Hashable) -> list[WorkerSlot]:
        """The workers whose lease or reservation is ``caller``'s."""
        return [w for w in self.values() if w.holder == caller]

    def of_job(self, job_id: str) -> list[WorkerSlot]:
        """The live workers of ``job_id`` (or of its runtime envs) that host no actor."""
        return [w for w in self.values() if _of_job(w.job_id, job_id) and not w.actor_id
                and w.state is not WorkerState.DEAD]

    def fresh(self) -> int:
        """How many live workers have served no job yet."""
        return sum(1 for w in self.values() if not w.job_id and w.state is not WorkerState.DEAD)

    def of_actor(self, actor_id: str) -> WorkerSlot | None:
        """The worker that hosts ``actor_id``, if any."""
        return next((w for w in self.values() if w.actor_id == actor_id), None)

    def in_pools(self, keys: Container[tuple | None]) -> list[WorkerSlot]:
        """The live workers whose lease or reservation took from one of the pools ``keys``."""
        found = []
        for worker in self.values():
            held = worker.lease if worker.lease is not None else worker.reserved
            if held is not None and held.pool_key in keys and worker.state is not WorkerState.DEAD:
                found.append(worker)
        return found

    @staticmethod
    def pick(workers: list[WorkerSlot], job_id: str, gpu_ids: list) -> WorkerSlot | None:
        """Take a worker for ``job_id`` from ``workers``: one of that job, else a fresh one;
        either way one that last had the devices ``gpu_ids`` (or none, or never a lease)."""
        devices = tuple(gpu_ids)
        for wanted in (job_id, ""):
            for i, worker in enumerate(workers):
                if worker.job_id == wanted and worker.gpu_ids in (None, devices):
                    return workers.pop(i)
        return None


def _of_job(pool: str, job_id: str) -> bool:
    """Is a worker of ``pool`` (a job id, or ``JOB:ENV`` for a job's runtime env) one of
    ``job_id``'s?"""
    return pool == job_id or pool.startswith(job_id + ":")
