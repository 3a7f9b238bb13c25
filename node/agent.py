"""The node agent: one per machine. Leases workers, lends CPUs of blocked workers, forwards logs.

Callers (drivers and workers) ask for a lease per resource shape; the agent grants an idle
worker when the node's resources allow (starting one if needed), keeps the request queued
otherwise, and warns the caller once when no node of the cluster could ever satisfy it.
Tasks then flow from the caller straight to the leased worker; the agent is not on that path.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
import uuid

from aray import _protocol as P
from aray._link import CHUNK_TIMEOUT, CONTROL_TIMEOUT, Link, Server, connect
from aray._dispatch import Dispatcher
from aray._periodic import every

from aray.store.service import StoreAccounts
from aray.store.arena import ArenaSpace
from aray.store.arena import supported as arena_supported
from aray.store.shm import ARENA_FILE, ShmDirectory

from .logs import LogTail, list_log_files, read_log
from .pool import WorkerPool
from .scheduler import LeaseQueue, ResourcePool, feasible_anywhere, fits, format_resources

#: objects travel between nodes in chunks of PULL_CHUNK bytes, PULL_WINDOW at a time
PULL_CHUNK = 4 * 2**20
PULL_WINDOW = 4

log = logging.getLogger("aray.node")

#: the log reader's rounds: this often, and this often while a flood leaves output unread
LOG_POLL_INTERVAL = 0.1
LOG_CATCH_UP_INTERVAL = 0.01
#: a log file is read LOG_CHUNK bytes at a time, at most LOG_BUDGET per stream and round:
#: a flood goes out over several rounds, and the file (not the agent) holds the rest
LOG_CHUNK = 256 * 1024
LOG_BUDGET = 1 << 20
#: a link with more messages than this waiting (its peer reads slower than it gets output)
#: gets no new log lines in a round: they wait in the file
LOG_BACKLOG = 4
#: pids of workers that exited, kept to name their log files (the most recent ones)
MAX_WORKER_PIDS = 10_000


class WorkerState(enum.Enum):
    STARTING = 0
    IDLE = 1
    LEASED = 2
    DEAD = 3


class Worker:
    __slots__ = ("worker_id", "pid", "state", "link", "address", "lease", "gpu_ids", "blocked",
                 "holder", "log_prefix", "log_tails", "started",
                 "actor_id", "job_id")

    def __init__(self, worker_id: str, log_prefix: str) -> None:
        self.worker_id = worker_id
        self.pid = 0
        self.state = WorkerState.STARTING
        self.link: Link | None = None
        self.address = ""
        self.lease: dict = {}
        self.gpu_ids: list = []
        self.blocked = False
        self.holder: Link | None = None  # the caller holding the lease
        self.log_prefix = log_prefix
        self.log_tails = (LogTail(1), LogTail(2))  # where the reader is in .out and .err
        self.started = asyncio.Event()
        self.actor_id = ""  # set for the life of the worker once it hosts an actor
        self.job_id = ""  # the job it serves ("" until its first lease): workers are per job


class LeaseRequest:
    """A caller's request for a worker; ``actor`` is set when the head places an actor."""

    __slots__ = ("link", "msg", "warned", "actor")

    def __init__(self, link: Link, msg: P.RequestLease, actor: P.CreateActor | None = None):
        self.link = link
        self.msg = msg
        self.warned = False
        self.actor = actor

    @property
    def job_id(self) -> str:
        return self.actor.spec.get("job_id", "") if self.actor else self.msg.job_id


class NodeAgent:
    """The node agent service: a server for callers and workers, a link to the head."""

    def __init__(self, *, token: str, session_dir: str, store_dir: str, resources: dict,
                 head_address: str, ip: str = "127.0.0.1", node_id: str | None = None,
                 worker_target: str = "aray._worker:main",
                 preload: tuple[str, ...] = ("aray._worker",), prestart: int | None = None,
                 shared: bool = False, tcp_host: str = "") -> None:
        self.node_id = node_id or uuid.uuid4().hex
        self.token = token
        self.session_dir = session_dir
        self.store_dir = store_dir
        self.ip = ip
        self.head_address = head_address
        self.resources = ResourcePool(resources)
        self.store = ShmDirectory(store_dir, os.path.join(session_dir, "spill"))
        self.accounts = StoreAccounts(int(resources.get("object_store_memory", 0)) or 2**62)
        self.arena: ArenaSpace | None = None  # made in start(), sized like the store
        self._allocated: dict[bytes, tuple[int, int, Link]] = {}  # region not yet sealed
        if prestart is None:
            # a cluster that serves many jobs (aray start) keeps a worker per CPU ready; the
            # one aray.init() starts for a program begins with one and adds them on demand
            cpus = int(resources.get("CPU", 1))
            prestart = cpus if shared else min(cpus, 1)
        self.prestart = prestart
        self.shared = shared  # serves many jobs (aray start): keep fresh workers ready
        # in a cluster of several nodes: the host this node's agent and workers listen on
        # (TCP), so that processes of other nodes reach them
        self.tcp_host = tcp_host
        self.public_address = ""  # the agent's TCP address in such a cluster
        self.stopped = asyncio.Event()
        self.server = Server(token, self._on_hello, name="node", role="node")
        self.pool = WorkerPool(worker_target, list(preload), self._on_worker_exit)
        self.workers: dict[str, Worker] = {}
        self.worker_pids: dict[str, int] = {}  # every worker's pid, kept for its log files
        self.requests = LeaseQueue()
        self.drivers: dict[Link, dict] = {}  # driver link -> its Hello info
        self.code_paths: dict[str, str] = {}  # job id -> where its driver's modules are
        self.cluster_totals: list[dict] = [self.resources.total]
        self.others: list[list] = []  # other nodes: [node_id, address, total, free]
        self._agents: dict[str, asyncio.Future] = {}  # links to other nodes' agents
        self._pulls: dict[bytes, asyncio.Future] = {}  # copies being pulled from other nodes
        self._copies: dict[bytes, set[Link]] = {}  # our objects other nodes hold copies of
        self.head: Link | None = None
        self.cluster_id = ""  # the head's name for the cluster (see Head.cluster_id)
        self.address = ""
        self._tasks: set[asyncio.Task] = set()
        self._killed_actors: dict[str, None] = {}  # killed before their worker started
        self._closing = False
        self._dispatch = Dispatcher("node", self)
        self._logs_behind = False  # the last log round left output unread
        self._exited_logs: list[Worker] = []  # exited workers whose output is not all read

    # --- lifecycle -----------------------------------------------------------------------
    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self, address: str) -> str:
        os.makedirs(os.path.join(self.session_dir, "logs"), exist_ok=True)
        if arena_supported() and self.accounts.capacity < 2**62:
            self.arena = ArenaSpace(os.path.join(self.store_dir, ARENA_FILE),
                                    self.accounts.capacity)
        self.address = await self.server.start(address)
        if self.tcp_host:
            self.public_address = await self.server.listen(f"tcp://{self.tcp_host}:0")
        # the template process imports the worker module while we connect to the head
        self._spawn(self.pool.warm_up(), "warm up")
        hello = P.Hello(P.PROTOCOL_VERSION, self.token, "node", self.node_id, os.getpid(), {})
        self.head = await connect(self.head_address, hello, name="node->head")
        self.head.on_message = self._dispatch
        self.head.on_close.append(self._on_head_lost)
        self.cluster_id = self.head.peer.info.get("cluster_id", "")
        self._spawn(self.head.run(), "head link")
        self.head.send(P.RegisterNode(
            self.node_id, self.public_address or self.address, self.ip, self.resources.total,
            {"machine": machine_id(), "pid": os.getpid(), "session_dir": self.session_dir}))
        for _ in range(self.prestart):
            self._start_worker()
        self._spawn(self._tail_logs(), "log reader")
        self._spawn(every(self.head.peer.info.get("heartbeat_interval", 1.0),
                          self._send_heartbeat, name="heartbeat", log=log), "heartbeat")
        return self.address

    def _send_heartbeat(self) -> None:
        if self.head is not None:
            self.head.send_if_open(P.Heartbeat(self.node_id, self._status()))

    def _status(self) -> dict:
        """What ``aray status`` shows of this node beyond its resources."""
        pending: dict[str, list] = {}
        for req in self.requests:
            key = format_resources(req.msg.shape)
            entry = pending.setdefault(key, [req.msg.shape, 0, False])
            entry[1] += 1
            entry[2] = entry[2] or not feasible_anywhere(req.msg.shape, self.cluster_totals)
        return {"store": self.accounts.stats(), "pending": list(pending.values()),
                "host": host_stats()}

    def _on_head_lost(self, _link: Link) -> None:
        if not self._closing:
            log.error("lost the link to the head; this node agent stops")
            self._spawn(self.aclose(), "stop")

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        await self.pool.aclose()
        await self.server.aclose()
        if self.head is not None:
            await self.head.aclose()
        if self.arena is not None:
            self.arena.close()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        self.stopped.set()

    # --- links ---------------------------------------------------------------------------
    def _on_hello(self, link: Link, hello: P.Hello) -> dict:
        link.on_message = self._dispatch
        if hello.role == "worker":
            worker = self.workers.get(hello.ident)
            if worker is None:
                raise ConnectionError(f"unknown worker {hello.ident}")
            worker.link = link
            link.on_close.append(lambda _l, w=worker: self._on_worker_link_lost(w))
        else:
            if hello.role == "driver":
                self.drivers[link] = dict(hello.info)
            if hello.info.get("job_id") and hello.info.get("code_path"):
                self.code_paths.setdefault(hello.info["job_id"], hello.info["code_path"])
            link.on_close.append(self._on_caller_gone)
        return {"node_id": self.node_id, "store_dir": self.store_dir,
                "session_dir": self.session_dir, "store_capacity": self.accounts.capacity,
                "cluster_id": self.cluster_id}

    # --- workers -------------------------------------------------------------------------
    def _start_worker(self) -> Worker:
        """Start a fresh worker; its first lease assigns it to a job."""
        worker_id = uuid.uuid4().hex[:16]
        prefix = os.path.join(self.session_dir, "logs", f"worker-{worker_id}")
        worker = Worker(worker_id, prefix)
        self.workers[worker_id] = worker
        config = {"worker_id": worker_id, "token": self.token, "session_dir": self.session_dir,
                  "node_address": self.address, "head_address": self.head_address,
                  "store_dir": self.store_dir, "node_id": self.node_id, "log_prefix": prefix,
                  "tcp_host": self.tcp_host}
        self._spawn(self._launch(worker, config), f"start worker {worker_id}")
        return worker

    async def _launch(self, worker: Worker, config: dict) -> None:
        try:
            handle = await self.pool.start(worker.worker_id, config)
        except Exception:
            log.exception("could not start a worker process")
            self._forget(worker)
            return
        worker.pid = handle.pid

    def _on_WorkerStarted(self, link: Link, msg: P.WorkerStarted) -> None:
        worker = self.workers.get(msg.worker_id)
        if worker is None or worker.state is WorkerState.DEAD:
            return
        worker.address = msg.address
        worker.pid = msg.pid
        self.worker_pids[worker.worker_id] = msg.pid
        for old in list(self.worker_pids)[:max(0, len(self.worker_pids) - MAX_WORKER_PIDS)]:
            if old not in self.workers:
                del self.worker_pids[old]
        if worker.state is WorkerState.STARTING and worker.holder is None:
            worker.state = WorkerState.IDLE
            self._schedule()
        worker.started.set()

    def _on_worker_exit(self, worker_id: str, code: int | None) -> None:
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        if not self._closing and worker.state is not WorkerState.DEAD:
            log.info("worker %s (pid %s) exited with code %s", worker_id, worker.pid, code)
        if self._read_logs(worker, flush=True, ended=True):  # its last words
            self._exited_logs.append(worker)  # more than a round's worth: later rounds
        if worker.pid:
            self.store.remove_temp_files_of(worker.pid)  # what it was writing when it died
        if worker.link is not None:
            self._free_unsealed(worker.link)
        if worker.actor_id and self.head is not None and not self.head.closed:
            self.head.send(P.ActorDied(worker.actor_id, (
                f"its worker process (pid {worker.pid}) exited with code {code}")))
        if worker.address:
            self._delete_objects_of(worker.address)  # fate-sharing: its objects die with it
        self._forget(worker)

    def _on_worker_link_lost(self, worker: Worker) -> None:
        if worker.state is not WorkerState.DEAD and not self._closing:
            self.pool.kill(worker.worker_id)  # a worker without its link is of no use
        if worker.link is not None and not self._closing:
            self._on_caller_gone(worker.link)  # and the workers it leased go with it

    def _forget(self, worker: Worker) -> None:
        if worker.state is WorkerState.LEASED:
            self._release(worker)
        worker.state = WorkerState.DEAD
        worker.started.set()  # wake a grant waiting for this worker: it sees DEAD
        self.workers.pop(worker.worker_id, None)
        self._schedule()

    # --- leases --------------------------------------------------------------------------
    def _on_RequestLease(self, link: Link, msg: P.RequestLease) -> None:
        if not msg.spilled:
            target = self._spill_target(msg.shape)
            if target:
                link.send(P.LeaseSpillback(msg.req_id, target))
                return
        req = LeaseRequest(link, msg)
        self.requests.push(req)
        self._schedule()
        if req in self.requests:
            self._warn_if_infeasible(req)

    def _spill_target(self, shape: dict) -> str:
        """The agent address of another node to send a request to, or "" to keep it here.

        A request this node can never satisfy goes to a node that can (one with the
        resources free now, if any); one that must wait here goes where it can run now.
        """
        if not self.others or self.resources.fits(shape):
            return ""
        able = [n for n in self.others if fits(shape, n[2])]
        free = [n for n in able if fits(shape, n[3])]
        if free:
            # count it as taken there until the head's next view says otherwise, so that a
            # burst of requests does not all go to the same node
            for k, v in shape.items():
                free[0][3][k] = free[0][3].get(k, 0.0) - v
            return free[0][1]
        if able and not fits(shape, self.resources.total):
            return able[0][1]  # it can never run here: wait there
        return ""

    def _warn_if_infeasible(self, req: LeaseRequest) -> None:
        shape = req.msg.shape
        if req.warned or feasible_anywhere(shape, self.cluster_totals):
            return
        req.warned = True
        have: dict = {}
        for total in self.cluster_totals:
            for k, v in total.items():
                if k in shape or k in ("CPU", "GPU"):  # what matters for this request
                    have[k] = have.get(k, 0) + v
        what = "actor" if req.actor else "task"
        req.link.send(P.LeaseInfeasible(req.msg.req_id, (
            f"The {what} {req.msg.description} cannot be scheduled right now. It requires "
            f"{format_resources(shape)} for placement, but no node of the cluster can provide "
            f"that (the cluster has {format_resources(have)}). It stays pending and runs as soon "
            "as a node that can run it joins; otherwise, reduce its resource requirements."),
            req.actor.actor_id if req.actor else ""))

    def _schedule(self) -> None:
        """Grant every queued request that fits, to an idle worker or a newly started one."""
        if self._closing:
            return
        idle = [w for w in self.workers.values() if w.state is WorkerState.IDLE]
        starting = [w for w in self.workers.values()
                    if w.state is WorkerState.STARTING and w.holder is None]
        for req, gpu_ids in self.requests.take_grantable(self.resources, lambda r: r.msg.shape):
            if req.link.closed:
                self.resources.release(req.msg.shape, gpu_ids)
                continue
            worker = _pick(idle, req.job_id)
            if worker is not None and worker.job_id == req.job_id:
                self._grant(worker, req, gpu_ids)  # the common case: at once
                continue
            if worker is not None:  # an idle fresh worker: it must join the job first
                worker.state = WorkerState.LEASED
            else:  # reserve a worker that is starting (or start one)
                worker = _pick(starting, req.job_id) or self._start_worker()
            worker.holder = req.link
            self._spawn(self._grant_when_ready(worker, req, gpu_ids), "grant")

    async def _grant_when_ready(self, worker: Worker, req: LeaseRequest, gpu_ids) -> None:
        """Grant once the worker is up and serves the request's job."""
        await worker.started.wait()
        if worker.state is not WorkerState.DEAD and not worker.job_id and req.job_id:
            worker.job_id = req.job_id
            try:
                assert worker.link is not None
                await worker.link.request(lambda r: P.AssignJob(
                    r, req.job_id, self.code_paths.get(req.job_id, "")), timeout=CONTROL_TIMEOUT)
            except (ConnectionError, AssertionError):
                worker.state = WorkerState.DEAD
        if worker.state is WorkerState.DEAD or req.link.closed:
            self.resources.release(req.msg.shape, gpu_ids)
            worker.holder = None
            if worker.state is not WorkerState.DEAD:
                worker.state = WorkerState.IDLE
            if not req.link.closed:
                self.requests.push(req)  # the worker died while starting: try another
            self._schedule()
            return
        self._grant(worker, req, gpu_ids)

    def _grant(self, worker: Worker, req: LeaseRequest, gpu_ids: list) -> None:
        worker.job_id = worker.job_id or req.job_id
        worker.state = WorkerState.LEASED
        worker.lease = dict(req.msg.shape)
        worker.gpu_ids = gpu_ids
        worker.holder = req.link
        worker.blocked = False
        if req.actor is not None and req.actor.actor_id in self._killed_actors:
            self._release(worker)  # killed while its worker was starting
            worker.state = WorkerState.IDLE
            self._killed_actors.pop(req.actor.actor_id, None)
            if self.head is not None:
                self.head.send(P.ActorDied(req.actor.actor_id, "it was killed before it started"))
            self._schedule()
            return
        if req.actor is None:
            req.link.send(P.LeaseGranted(req.msg.req_id, worker.worker_id, worker.address,
                                         self.node_id, gpu_ids))
        else:
            # the worker is the actor's for life; it keeps only what the actor holds
            # (by default an actor needs a CPU to be placed but holds none while it lives)
            hold = req.actor.spec["hold"]
            self.resources.release({k: v for k, v in worker.lease.items() if k != "GPU"}, [])
            self.resources.acquire({k: v for k, v in hold.items() if k != "GPU"})
            worker.lease = dict(hold)
            worker.actor_id = req.actor.actor_id
            spec = dict(req.actor.spec, gpu_ids=gpu_ids)
            assert worker.link is not None
            worker.link.send(P.CreateActor(req.actor.actor_id, spec))
            # what the placement needed beyond the hold is free again: place the next one
            asyncio.get_running_loop().call_soon(self._schedule)
        self._report_resources()

    def _release(self, worker: Worker) -> None:
        shape = dict(worker.lease)
        if worker.blocked:  # its CPUs were lent out already
            shape.pop("CPU", None)
        self.resources.release(shape, worker.gpu_ids)
        worker.lease, worker.gpu_ids, worker.holder, worker.blocked = {}, [], None, False
        self._report_resources()

    def _on_ReturnLease(self, link: Link, msg: P.ReturnLease) -> None:
        worker = self.workers.get(msg.worker_id)
        if worker is None or worker.state is not WorkerState.LEASED or worker.holder is not link:
            return
        self._release(worker)
        # it stays, even beyond the number of CPUs: it may own objects its job still uses;
        # the job's end takes it
        worker.state = WorkerState.IDLE
        self._schedule()

    def _on_caller_gone(self, link: Link) -> None:
        driver = self.drivers.pop(link, None)
        self._free_unsealed(link)
        self.requests.remove_if(lambda r: r.link is link)
        if driver is not None:
            self._job_finished(driver.get("job_id", ""), driver.get("address", ""))
        for worker in list(self.workers.values()):
            if worker.holder is link and worker.state is WorkerState.LEASED:
                # it may still be running the caller's task; nobody wants the result
                self._release(worker)
                worker.state = WorkerState.DEAD
                self.pool.kill(worker.worker_id)
        self._schedule()

    def _on_JobFinished(self, link: Link, msg: P.JobFinished) -> None:
        """From the head: a driver left the cluster (its own node knew already)."""
        if not any(d.get("job_id") == msg.job_id for d in self.drivers.values()):
            self._job_finished(msg.job_id, msg.driver_address)

    def _job_finished(self, job_id: str, driver_address: str) -> None:
        """A driver left: its objects go, and so do the workers that served its job (they
        hold its objects and imported its code). Actors are the head's to end."""
        if driver_address:
            self._delete_objects_of(driver_address)
        self.code_paths.pop(job_id, None)
        if not job_id:
            return
        for worker in list(self.workers.values()):
            if worker.job_id == job_id and not worker.actor_id:
                if worker.state is WorkerState.LEASED:
                    self._release(worker)
                worker.state = WorkerState.DEAD
                self.pool.kill(worker.worker_id)
        if self.shared:  # the next job should not wait for workers to start
            fresh = sum(1 for w in self.workers.values()
                        if not w.job_id and w.state is not WorkerState.DEAD)
            for _ in range(max(0, self.prestart - fresh)):
                self._start_worker()

    def _delete_objects_of(self, owner: str) -> None:
        for object_id in self.accounts.owned_by(owner):
            self._drop_object(object_id)

    def _drop_object(self, object_id: bytes) -> None:
        for holder in self._copies.pop(object_id, ()):  # copies on other nodes go too
            if not holder.closed:
                holder.send(P.ObjectsDeleted([object_id], ""))
        obj = self.accounts.deleted(object_id)
        self.store.delete(object_id)
        # a region being copied to disk is freed when the copy is done (see _spill)
        if obj is not None and obj.offset >= 0 and not obj.spilling and self.arena is not None:
            self.arena.release(obj.offset, obj.size)

    def _on_WorkerBlocked(self, link: Link, msg: P.WorkerBlocked) -> None:
        worker = self.workers.get(msg.worker_id)
        if worker is not None and worker.state is WorkerState.LEASED and not worker.blocked:
            worker.blocked = True
            self.resources.lend(worker.lease.get("CPU", 0))
            self._schedule()

    def _on_WorkerUnblocked(self, link: Link, msg: P.WorkerUnblocked) -> None:
        worker = self.workers.get(msg.worker_id)
        if worker is not None and worker.blocked:
            worker.blocked = False
            self.resources.reclaim(worker.lease.get("CPU", 0))

    def _on_KillWorker(self, link: Link, msg: P.KillWorker) -> None:
        worker = self.workers.get(msg.worker_id)
        if worker is not None and worker.holder is link:
            self.pool.kill(worker.worker_id)

    def _on_CreateActor(self, link: Link, msg: P.CreateActor) -> None:
        """From the head: find (or start) a worker for this actor and construct it there."""
        placement = msg.spec["placement"]
        request = P.RequestLease(0, placement, msg.spec.get("description", "actor"),
                                 msg.spec.get("job_id", ""), True)
        req = LeaseRequest(link, request, actor=msg)
        self.requests.push(req)
        self._schedule()
        if req in self.requests:
            self._warn_if_infeasible(req)

    def _on_WithdrawActor(self, link: Link, msg: P.WithdrawActor) -> None:
        self.requests.remove_if(
            lambda r: r.actor is not None and r.actor.actor_id == msg.actor_id)

    def _on_ActorStarted(self, link: Link, msg: P.ActorStarted) -> None:
        if self.head is not None and not self.head.closed:
            self.head.send(msg)

    def _on_KillActor(self, link: Link, msg: P.KillActor) -> None:
        queued = self.requests.remove_if(
            lambda r: r.actor is not None and r.actor.actor_id == msg.actor_id)
        if queued and self.head is not None:
            self.head.send(P.ActorDied(msg.actor_id, "it was killed before it started"))
            return
        for worker in self.workers.values():
            if worker.actor_id == msg.actor_id:
                self.pool.kill(worker.worker_id)
                return
        # its worker may still be starting (or it was never here): remember a bounded few
        self._killed_actors[msg.actor_id] = None
        while len(self._killed_actors) > MAX_WORKER_PIDS:
            del self._killed_actors[next(iter(self._killed_actors))]

    def _on_NodeDied(self, link: Link, msg: P.NodeDied) -> None:
        """From the head: a node is dead. Drop the links to its agent and processes, and
        tell the drivers and workers of this node, which hold links of their own there."""
        for peer in self.server.links:
            if peer.peer_node == msg.node_id or (peer.peer.role == "node"
                                                 and peer.peer.ident == msg.node_id):
                peer.abort(f"its node {msg.node_id[:12]} died: {msg.reason}")
            elif peer.peer.role in ("driver", "worker"):
                peer.send_if_open(msg)
        for pending in list(self._agents.values()):
            if pending.done() and not pending.cancelled() and pending.exception() is None:
                agent = pending.result()
                if agent.peer_node == msg.node_id:
                    agent.abort(f"its node {msg.node_id[:12]} died: {msg.reason}")

    def _on_ClusterViewChanged(self, link: Link, msg: P.ClusterViewChanged) -> None:
        self.cluster_totals = [n[2] for n in msg.nodes] or [self.resources.total]
        self.others = [n for n in msg.nodes if n[0] != self.node_id]
        # what can never run here but can on a node that joined: send it there
        for req in self.requests.remove_if(
                lambda r: r.actor is None and not fits(r.msg.shape, self.resources.total)
                and self._spill_target(r.msg.shape) != ""):
            req.link.send(P.LeaseSpillback(req.msg.req_id, self._spill_target(req.msg.shape)))
        for req in self.requests:
            self._warn_if_infeasible(req)

    def _report_resources(self) -> None:
        if self.head is not None and not self.head.closed:
            self.head.send(P.NodeResourcesChanged(self.node_id, dict(self.resources.available)))

    # --- object store --------------------------------------------------------------------
    def _on_AllocObject(self, link: Link, msg: P.AllocObject) -> None:
        offset = -1 if self.arena is None else self.arena.allocate(msg.size)
        if offset >= 0:
            self._allocated[msg.object_id] = (offset, msg.size, link)
        link.send(P.ObjectAllocated(msg.req_id, offset))

    def _free_unsealed(self, link: Link) -> None:
        """Regions a writer was given and never sealed (it died or left): free them."""
        for object_id, (offset, size, writer) in list(self._allocated.items()):
            if writer is link and self.arena is not None:
                del self._allocated[object_id]
                self.arena.release(offset, size)

    def _on_ObjectSealed(self, link: Link, msg: P.ObjectSealed) -> None:
        self._allocated.pop(msg.object_id, None)
        if msg.object_id in self.accounts.objects:
            # written twice (a retried task): keep the first copy
            if msg.offset >= 0 and self.arena is not None:
                self.arena.release(msg.offset, msg.size)
            return
        for object_id in self.accounts.sealed(msg.object_id, msg.size, msg.on_disk, msg.owner,
                                              msg.offset):
            self._spawn(self._spill(object_id), "spill")

    async def _spill(self, object_id: bytes) -> None:
        loop = asyncio.get_running_loop()
        obj = self.accounts.objects[object_id]
        region = obj.offset
        try:
            if region >= 0:
                assert self.arena is not None
                await loop.run_in_executor(None, self.store.spill_from_arena, object_id,
                                           self.arena, region, obj.size)
                ok = True
            else:
                ok = await loop.run_in_executor(None, self.store.spill, object_id)
        except OSError:
            log.exception("could not spill object %s", object_id.hex())
            ok = False
        deleted = self.accounts.objects.get(object_id) is not obj
        if region >= 0 and (ok or deleted):
            assert self.arena is not None
            self.arena.release(region, obj.size)  # readers that mapped it keep their view
            obj.offset = -1
            if deleted:
                self.store.delete(object_id)  # deleted while we copied: drop the copy
        if deleted or (not ok and region < 0):
            self.accounts.deleted(object_id)  # (file) deleted meanwhile
        else:
            self.accounts.spill_done(object_id, ok)

    def _on_ObjectsDeleted(self, link: Link, msg: P.ObjectsDeleted) -> None:
        if msg.node_id and msg.node_id != self.node_id:  # stored on another node
            address = next((n[1] for n in self.others if n[0] == msg.node_id), None)
            if address is not None:
                self._spawn(self._forward(address, P.ObjectsDeleted(msg.object_ids, "")),
                            "forward")
            return
        for object_id in msg.object_ids:
            self._drop_object(object_id)

    async def _forward(self, address: str, msg) -> None:
        try:
            (await self._agent_link(address)).send(msg)
        except (ConnectionError, OSError):
            pass  # that node is gone, and its store with it

    # --- objects of other nodes ----------------------------------------------------------
    def _on_PullObject(self, link: Link, msg: P.PullObject):
        return self._answer_pull(link, msg)  # run by the link, which answers if it fails

    async def _answer_pull(self, link: Link, msg: P.PullObject) -> None:
        try:
            offset, error = await self._local_copy(msg.object_id, msg.node_id, msg.size), ""
        except (LookupError, ConnectionError, OSError) as exc:
            offset, error = -1, str(exc)
        if not link.closed:
            link.send(P.ObjectPulled(msg.req_id, offset, error))

    async def _local_copy(self, object_id: bytes, node_id: str, size: int) -> int:
        """This node's copy of an object (pulled once, however many ask): its arena offset."""
        obj = self.accounts.objects.get(object_id)
        if obj is not None:
            return obj.offset
        pull = self._pulls.get(object_id)
        if pull is None:
            pull = self._pulls[object_id] = asyncio.ensure_future(
                self._pull(object_id, node_id, size))
            pull.add_done_callback(lambda _f: self._pulls.pop(object_id, None))
        return await asyncio.shield(pull)

    async def _pull(self, object_id: bytes, node_id: str, size: int) -> int:
        address = next((n[1] for n in self.others if n[0] == node_id), None)
        if address is None:
            raise LookupError(f"object {object_id.hex()} was on node {node_id[:12]}, which has "
                              "left the cluster")
        link = await self._agent_link(address)
        arena = self.arena
        offset = arena.allocate(size) if arena is not None else -1
        if offset < 0:
            fd, tmp = self.store.begin_file(object_id)

        def write(start: int, data: bytes) -> None:
            if arena is not None and offset >= 0:
                arena.write_at(offset, start, data)
            else:
                os.pwrite(fd, data, start)
        window = asyncio.Semaphore(PULL_WINDOW)

        async def chunk(start: int) -> None:
            async with window:  # at most PULL_WINDOW chunks in memory at once
                reply = await link.request(lambda r: P.ReadObject(
                    r, object_id, start, min(PULL_CHUNK, size - start)), timeout=CHUNK_TIMEOUT)
                if reply.error:
                    raise LookupError(reply.error)
                write(start, reply.data)

        ok = False
        try:
            await asyncio.gather(*(chunk(s) for s in range(0, size, PULL_CHUNK)))
            ok = True
        finally:
            if offset >= 0:
                assert self.arena is not None
                if ok:
                    self.arena.seal(offset, object_id, size)
                else:
                    self.arena.release(offset, size)
            else:
                self.store.end_file(object_id, fd, tmp, ok)
        for spill in self.accounts.sealed(object_id, size, False, "", offset):
            self._spawn(self._spill(spill), "spill")
        return offset

    async def _agent_link(self, address: str) -> Link:
        """The link to another node's agent, dialled once."""
        pending = self._agents.get(address)
        if pending is not None and pending.done() and (
                pending.exception() is not None or pending.result().closed):
            pending = None
        if pending is None:
            pending = self._agents[address] = asyncio.ensure_future(self._dial_agent(address))
        return await asyncio.shield(pending)

    async def _dial_agent(self, address: str) -> Link:
        hello = P.Hello(P.PROTOCOL_VERSION, self.token, "node", self.node_id, os.getpid(), {})
        link = await connect(address, hello, name=f"node->{address}")
        link.on_message = self._dispatch
        self._spawn(link.run(), f"link {address}")
        return link

    def _on_ReadObject(self, link: Link, msg: P.ReadObject) -> None:
        obj = self.accounts.objects.get(msg.object_id)
        # not accounted yet: its writer's ObjectSealed may still be on the way (a reader
        # learns the location only after the write, so the bytes are there): read its
        # region, or its file
        offset = obj.offset if obj is not None else self._allocated.get(msg.object_id, (-1,))[0]
        data, error = b"", ""
        try:
            if offset >= 0:
                assert self.arena is not None
                data = self.arena.read_at(offset, msg.start, msg.length)
            else:
                data = self.store.read_range(msg.object_id, msg.start, msg.length)
        except FileNotFoundError:
            error = (f"object {msg.object_id.hex()} is no longer on node {self.node_id[:12]}: "
                     "its owner freed it")
        if not error and msg.start == 0:
            self._copies.setdefault(msg.object_id, set()).add(link)
        link.send(P.ObjectChunk(msg.req_id, data, error))

    def _on_GetStoreStats(self, link: Link, msg: P.GetStoreStats) -> None:
        stats = self.accounts.stats()
        # arena regions taken, whether by live objects, unsealed writes or pinned freed ones
        stats["arena_bytes"] = self.arena.size if self.arena is not None else 0
        stats["arena_in_use_bytes"] = self.arena.allocator.in_use if self.arena is not None else 0
        listing = self.accounts.listing()
        for obj in listing:
            obj["owner"] = self._describe_owner(obj["owner"])
        link.send(P.StoreStats(msg.req_id, stats, listing))

    def _describe_owner(self, address: str) -> str:
        """Who owns an object, for people: a driver or worker of this node by pid."""
        if not address:
            return "copy of another node's object"
        for link, info in self.drivers.items():
            if info.get("address") == address:
                return f"driver pid {getattr(link.peer, 'pid', '?')}"
        for worker in self.workers.values():
            if worker.address == address:
                what = f"actor {worker.actor_id[:8]}" if worker.actor_id else "worker"
                return f"{what} pid {worker.pid}"
        return address

    def _on_ListLogs(self, link: Link, msg: P.ListLogs) -> None:
        files = list_log_files(os.path.join(self.session_dir, "logs"), self.worker_pids,
                               set(self.workers))
        link.send(P.LogFiles(msg.req_id, files))

    def _on_ReadLog(self, link: Link, msg: P.ReadLog) -> None:
        data, offset, size, error = read_log(os.path.join(self.session_dir, "logs"), msg.file,
                                             msg.offset, msg.limit)
        link.send(P.LogData(msg.req_id, data, offset, size, error))

    def _on_FlushLogs(self, link: Link, msg: P.FlushLogs) -> None:
        self._spawn(self._flush_logs(link, msg.req_id), "flush logs")

    # --- logs ----------------------------------------------------------------------------
    async def _tail_logs(self) -> None:
        await every(lambda: LOG_CATCH_UP_INTERVAL if self._logs_behind else LOG_POLL_INTERVAL,
                    self._logs_round, name="the log reader", log=log,
                    first_delay=LOG_POLL_INTERVAL)

    def _logs_round(self) -> None:
        self._logs_behind = False
        if self.drivers or self.others:  # someone here, or elsewhere, may read them
            for worker in list(self.workers.values()):
                self._logs_behind |= self._read_logs(worker)
        for worker in list(self._exited_logs):
            if self._read_logs(worker, flush=True, ended=True):
                self._logs_behind = True
            else:
                self._exited_logs.remove(worker)

    async def _flush_logs(self, link: Link, req_id: int) -> None:
        """Forward what the driver's workers printed, partial lines too, then tell the
        driver (which waits for that before it shuts down); a round's budget at a time, so
        that its link keeps up, until caught up or until the driver stops waiting."""
        job = self.drivers.get(link, {}).get("job_id", "")
        while not link.closed and any([
                self._read_logs(worker, flush=True)
                for worker in [*self.workers.values(), *self._exited_logs]
                if worker.job_id in ("", job)]):  # not the workers of drivers that lag
            await asyncio.sleep(LOG_CATCH_UP_INTERVAL)
        link.send_if_open(P.LogsFlushed(req_id))

    def _read_logs(self, worker: Worker, flush: bool = False, ended: bool = False) -> bool:
        """Forward what is new in the worker's .out and .err, up to LOG_BUDGET bytes of
        each; True if some is left for a later round (the budget ran out, or, when
        ``flush``, a link it goes to is behind). ``flush``: a stream read to its end sends
        its partial line too (``ended``: the worker exited)."""
        now = time.monotonic()
        left = False
        for tail in worker.log_tails:
            if any(link.queued > LOG_BACKLOG for link in self._log_links(tail.job)):
                # the file keeps it; the reader catches up at the link's pace
                left = left or flush
                continue
            path = worker.log_prefix + (".out" if tail.stream == 1 else ".err")
            budget = LOG_BUDGET
            try:
                with open(path, "rb") as f:
                    f.seek(tail.offset)
                    while budget > 0:
                        data = f.read(min(LOG_CHUNK, budget))
                        budget -= len(data)
                        self._send_logs(worker, tail.feed(data, now))  # b"": a partial is due?
                        if not data:
                            break
            except FileNotFoundError:
                continue
            if budget <= 0:
                left = True
            elif flush:
                self._send_logs(worker, tail.flush(ended))
        return left

    def _log_links(self, job: str) -> list[Link]:
        """Where output printed under ``job`` goes: the job's drivers on this node that want
        it (output before any task: every driver here), else the head, which forwards it to
        the job's driver on another node."""
        links: list[Link] = []
        local = False
        for link, info in self.drivers.items():
            if not job or info.get("job_id") == job:
                local = True
                if info.get("log_to_driver", True) and not link.closed:
                    links.append(link)
        if not local and job and self.head is not None and not self.head.closed:
            links.append(self.head)
        return links

    def _send_logs(self, worker: Worker, batches: list) -> None:
        for task, job, stream, lines in batches:
            msg = P.LogLines(worker.pid, task, stream, lines, job)
            for link in self._log_links(job):
                link.send(msg)


def machine_id() -> str:
    """This machine's identity (its boot: two nodes with the same id share /dev/shm)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        import socket

        return socket.gethostname()


def host_stats() -> dict:
    """The machine's CPU and memory use, for the dashboard (CPU: since the last call)."""
    import psutil

    mem = psutil.virtual_memory()
    return {"cpu_percent": psutil.cpu_percent(None), "memory_total": mem.total,
            "memory_used": mem.total - mem.available, "memory_percent": mem.percent}


def _pick(workers: list[Worker], job_id: str) -> Worker | None:
    """Take a worker for ``job_id`` from ``workers``: one of that job, else a fresh one."""
    for wanted in (job_id, ""):
        for i, worker in enumerate(workers):
            if worker.job_id == wanted:
                return workers.pop(i)
    return None
