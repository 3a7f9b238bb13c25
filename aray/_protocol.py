"""Every message aray sends between processes, and the one codec for them.

A frame is a msgpack array of messages; each message is ``[tag, field, ...]``. Payload bytes
(serialized values, pickled functions) ride inside as msgpack ``bin`` and are never unpickled
by the link layer. A client's :class:`Hello` rides in the ``Aray-Hello`` header of its
HTTP upgrade request; the server checks its version and token before it upgrades, and
answers with a :class:`Welcome` as the first frame, or refuses with an HTTP status.
Each message class says who may send it to whom (``ROUTES``, see :mod:`aray._dispatch`).

Naming: commands are imperative (``PushTask``), events past tense (``TaskFinished``),
and replies share the ``req_id`` of their request (``REPLY = True`` on the class).
"""

from __future__ import annotations

import base64
from typing import Any, NamedTuple, Protocol

import msgpack

PROTOCOL_VERSION = 6

#: the HTTP header of the upgrade request that carries the client's Hello, and its
#: largest size: all an unauthenticated peer may send (see aray._link)
HELLO_HEADER = "Aray-Hello"
HELLO_MAX = 4096
HELLO_HEADER_MAX = (HELLO_MAX + 2) // 3 * 4

#: the line a worker writes to its log files when it starts a task (then ``JOB::NAME``), so
#: that its node agent knows whose task printed what follows
TASK_MARKER = "::aray-task::"


class MessageClass(Protocol):
    """A message class as :func:`_message` registers it: a NamedTuple with the class
    attributes that registering sets (which the class itself does not declare)."""

    __name__: str
    TAG: int
    REPLY: bool
    ROUTES: frozenset[tuple[str, str]]
    REQUEST: bool

    def __call__(self, *fields: Any) -> Any: ...


_BY_TAG: dict[int, MessageClass] = {}


#: the roles of processes: what a link's peer is (its Hello says, or its Welcome)
SENDER_ROLES = ("head", "node", "driver", "worker", "core")
#: what a message may be received by: the head, a node agent, a core (driver or worker)
RECEIVER_ROLES = ("head", "node", "core")


def _routes(text: str) -> frozenset[tuple[str, str]]:
    """``"driver,core->head; head->node"`` as {(sender, receiver), ...}."""
    out = set()
    for route in filter(None, (r.strip() for r in text.split(";"))):
        senders, _, receiver = route.partition("->")
        assert receiver.strip() in RECEIVER_ROLES, route
        for sender in senders.split(","):
            assert sender.strip() in SENDER_ROLES, route
            out.add((sender.strip(), receiver.strip()))
    return frozenset(out)


def _message(tag: int, *, reply: bool = False, routes: str = ""):
    """Register a message class under ``tag``. ``routes``: who may send it to whom
    (``"driver,core->head; head->node"``); a receiver refuses it from anyone else. Replies
    and the handshake have none: they are never dispatched."""

    def register(cls):
        if tag in _BY_TAG:
            raise RuntimeError(f"message tag {tag} used twice")
        cls.TAG = tag
        cls.REPLY = reply
        cls.ROUTES = _routes(routes)
        # a request: answered by a reply with the same req_id (0: nobody waits for it)
        cls.REQUEST = not reply and cls._fields[:1] == ("req_id",)
        _BY_TAG[tag] = cls
        return cls

    return register


# --- handshake --------------------------------------------------------------------------


@_message(1)
class Hello(NamedTuple):
    """Who connects, with which protocol version and token: the ``Aray-Hello`` header of
    the upgrade request that opens every link (see :func:`encode_hello`)."""

    version: int
    token: str
    role: str  # "driver" | "worker" | "node" | "core"
    ident: str  # worker id, node id, job id ... (role-specific)
    pid: int
    info: dict


@_message(2)
class Welcome(NamedTuple):
    """The server's answer to a good Hello: the first frame of every link."""

    version: int
    info: dict


@_message(3, reply=True)
class RequestFailed(NamedTuple):
    """The answer to a request whose handler raised: the requester raises it."""

    req_id: int
    error: str  # "TypeName: message"
    traceback: str


# --- head: nodes, jobs, cluster view ----------------------------------------------------


@_message(10, routes="node->head")
class RegisterNode(NamedTuple):
    node_id: str
    address: str
    ip: str
    resources: dict
    host: dict  # {"machine", "pid", "session_dir"}: to clean up after it if it is killed
    labels: dict = {}  # its labels (its own and aray's ray.io/...), for label scheduling
    #: what it holds when it registers again with a restarted head: its actors as
    #: [actor_id, worker_id, address, pid] and its placement groups' bundles as [pg_id, index]
    actors: list = []
    bundles: list = []
    entrypoints: dict = {}  # {"running": [id, ...], "ended": {id: [exit code, message]}}


@_message(11, routes="node->head")
class NodeResourcesChanged(NamedTuple):
    node_id: str
    available: dict


@_message(12, routes="head->node")
class ClusterViewChanged(NamedTuple):
    """Head -> a node agent that registered: every alive node's totals, free resources
    and labels, for infeasibility, spillback and label strategies. What changes later comes as
    :class:`ClusterViewUpdated`."""

    nodes: list  # [[node_id, address, total_resources, available_resources, labels], ...]


@_message(77, routes="head->node")
class ClusterViewUpdated(NamedTuple):
    """Head -> node agents: what changed in the view since the last one sent: the whole
    entries of nodes that joined or whose resources changed, and the ids of nodes that
    left. Applied to the view of the last ClusterViewChanged, in order, it gives the
    head's view (an entry replaces the one of its node, a new node goes last)."""

    changed: list  # [[node_id, address, total, available, labels], ...]
    removed: list  # [node_id, ...]


@_message(15, routes="head->node")
class JobFinished(NamedTuple):
    """Head -> node agents: a driver left; its workers and objects go on every node."""

    job_id: str
    driver_address: str


@_message(16, routes="node->head")
class Heartbeat(NamedTuple):
    """Node agent -> head, every HEARTBEAT_INTERVAL seconds: this node is alive, and how
    its store and queue look (for ``aray status``)."""

    node_id: str
    status: dict  # {"store": store stats, "pending": [[shape, count, infeasible], ...],
    #                "host": {"cpu_percent", "memory_total", "memory_used", "memory_percent"}}


@_message(75, routes="head->node; node->core")
class NodeDied(NamedTuple):
    """Head -> node agents -> their drivers and workers: the head declared this node dead
    (its link dropped, or it sent no heartbeat for the node timeout). Every process closes
    its links to that node's agent and workers, so what waits on them fails over now."""

    node_id: str
    reason: str


@_message(17, routes="head->node")
class WithdrawActor(NamedTuple):
    """Head -> node agent: forget a queued actor that this node cannot hold; a node that
    can has joined, and the head places it there."""

    actor_id: str


@_message(18, routes="driver,core->head")
class GetState(NamedTuple):
    """Ask the head for one of its tables: "nodes", "actors", "jobs", "tasks", "objects"
    (gathered from every node's store), or "task_summary" (one row: counts per task name
    and state)."""

    req_id: int
    kind: str


@_message(5, reply=True)
class StateRows(NamedTuple):
    req_id: int
    rows: list  # one dict per node, actor or job
    error: str


@_message(6, routes="driver,core->head")
class TaskEvents(NamedTuple):
    """Core -> head, batched: what became of tasks (for the state API).

    Each event is ``[task_id, state, time, fields]``; a task's submitter sends the
    ``PENDING_*`` states of tasks still waiting at a batch's time, the worker that runs it
    ``RUNNING`` (if it still runs then) and ``FINISHED``/``FAILED``.
    """

    events: list
    source: dict  # fields of every event of the batch (a worker's node_id and worker_pid)


@_message(13, routes="driver,core->head")
class GetClusterState(NamedTuple):
    req_id: int


@_message(14, reply=True)
class ClusterState(NamedTuple):
    req_id: int
    nodes: list  # list of dicts (see _head.state.NodeTable.describe)


# --- head: runtime env packages ---------------------------------------------------------


@_message(79, routes="driver,core->head")
class PackageInfo(NamedTuple):
    """Does the head hold this runtime env package? (a folder is uploaded once)"""

    req_id: int
    name: str


@_message(80, routes="driver,core->head")
class PutPackage(NamedTuple):
    """A piece of a package being uploaded, at ``offset``; ``last`` completes it."""

    req_id: int
    name: str
    offset: int
    data: bytes
    last: bool


@_message(81, reply=True)
class PackageSize(NamedTuple):
    req_id: int
    size: int  # -1: the head does not hold it (PackageInfo); else its bytes so far


@_message(82, routes="driver,core,node->head")
class GetPackage(NamedTuple):
    """Up to ``length`` bytes of a package from ``offset`` (a node unpacking it)."""

    req_id: int
    name: str
    offset: int
    length: int


@_message(83, reply=True)
class PackageData(NamedTuple):
    req_id: int
    data: bytes
    size: int  # the whole package's


# --- submitted jobs: entrypoints that a node runs for the head ---------------------------


@_message(85, routes="head->node")
class StartEntrypoint(NamedTuple):
    """Run a submitted job's entrypoint on this node, holding ``resources`` while it runs."""

    submission_id: str
    entrypoint: str
    runtime_env: dict  # its wire form
    env: dict  # variables to set (ARAY_ADDRESS, ARAY_SUBMISSION_ID, ...)
    resources: dict


@_message(86, routes="node->head")
class EntrypointStarted(NamedTuple):
    submission_id: str
    pid: int
    log_file: str  # its output, in the node's logs folder


@_message(87, routes="node->head")
class EntrypointEnded(NamedTuple):
    submission_id: str
    exit_code: int | None  # None: it never started
    message: str  # why it did not start, or what its output's last line says


@_message(88, routes="head->node")
class StopEntrypoint(NamedTuple):
    """SIGTERM the entrypoint's process group, then SIGKILL after ``grace`` seconds."""

    submission_id: str
    grace: float


# --- node agent: leases and workers -----------------------------------------------------


@_message(20, routes="driver,worker,core->node")
class RequestLease(NamedTuple):
    req_id: int
    shape: dict  # resource name -> amount
    description: str  # what the lease is for, used in warnings
    job_id: str  # workers serve one job: they import its code and die with it
    spilled: bool  # sent here by another node's spillback: queue it, do not send it on
    runtime_env: dict  # its wire form ({}: none): workers are pooled per job and env
    strategy: dict  # scheduling_strategy's wire form ({}: the default)


@_message(19, reply=True)
class LeaseSpillback(NamedTuple):
    """Agent -> requester: ask the agent at ``address`` instead (it can run the request)."""

    req_id: int
    address: str


@_message(84, reply=True)
class LeaseFailed(NamedTuple):
    """Agent -> requester: no worker can serve the request (its runtime env failed, or its
    strategy names a node that cannot run it)."""

    req_id: int
    message: str
    #: "unschedulable": TaskUnschedulableError; "env": RuntimeEnvSetupError; "bundle": the
    #: placement group's bundle is not on this node (ask the head where it is now)
    kind: str


@_message(21, reply=True)
class LeaseGranted(NamedTuple):
    req_id: int
    worker_id: str
    address: str
    node_id: str
    gpu_ids: list


@_message(22, routes="node->core; node->head")
class LeaseInfeasible(NamedTuple):
    """The request stays queued, but no node in the cluster can satisfy it now."""

    req_id: int
    message: str
    actor_id: str  # set when the request places an actor (agent -> head)


@_message(23, routes="driver,worker,core->node")
class ReturnLease(NamedTuple):
    worker_id: str


@_message(24, routes="worker->node")
class WorkerStarted(NamedTuple):
    worker_id: str
    address: str
    pid: int


@_message(25, routes="worker->node")
class WorkerBlocked(NamedTuple):
    worker_id: str


@_message(26, routes="worker->node")
class WorkerUnblocked(NamedTuple):
    worker_id: str


@_message(27, routes="driver,worker,core->node")
class KillWorker(NamedTuple):
    worker_id: str


@_message(28, routes="node->core; node->head; head->core")
class LogLines(NamedTuple):
    """Lines a worker printed, forwarded by its node agent to the driver of the job (through
    the head when the driver is on another node)."""

    pid: int
    name: str
    stream: int  # 1 stdout, 2 stderr
    lines: list
    job_id: str


@_message(29, routes="driver->node")
class FlushLogs(NamedTuple):
    """Driver -> node agent at shutdown: forward what workers printed, then reply."""

    req_id: int


@_message(30, reply=True)
class LogsFlushed(NamedTuple):
    req_id: int


@_message(31, routes="driver,worker->node")
class ObjectSealed(NamedTuple):
    """A process wrote an object into this node's store."""

    object_id: bytes
    size: int
    on_disk: bool  # shared memory was full: it went straight to the spill directory
    owner: str  # address of the owning core: its objects go when it exits
    offset: int  # its region in the arena, or -1 for an object in a file of its own


@_message(32, routes="driver,worker,node->node; node->core")
class ObjectsDeleted(NamedTuple):
    """The owner deleted these objects; to the agent of the node that stores them (any
    node agent forwards to the right one)."""

    object_ids: list
    node_id: str  # the node whose store holds them ("" for the receiving agent's own)


@_message(37, routes="driver,worker->node")
class AllocObject(NamedTuple):
    """A writer asks the node agent for an arena region for a large object."""

    req_id: int
    object_id: bytes
    size: int


@_message(38, reply=True)
class ObjectAllocated(NamedTuple):
    req_id: int
    offset: int  # -1: no region free, write a file of its own


@_message(39, routes="driver,worker->node")
class PullObject(NamedTuple):
    """A core asks its node agent for a local copy of an object stored on another node."""

    req_id: int
    object_id: bytes
    node_id: str  # where it is
    size: int


@_message(49, reply=True)
class ObjectPulled(NamedTuple):
    req_id: int
    offset: int  # of the local copy in the arena, -1 for a file of its own
    error: str  # why there is no copy ("" if there is)


@_message(50, routes="node,core->node")
class ReadObject(NamedTuple):
    """Node agent -> node agent: a chunk of an object's bytes (for a pull)."""

    req_id: int
    object_id: bytes
    start: int
    length: int


@_message(51, reply=True)
class ObjectChunk(NamedTuple):
    req_id: int
    data: bytes
    error: str


@_message(33, routes="driver,worker,core->node; head->node")
class GetStoreStats(NamedTuple):
    req_id: int


@_message(34, reply=True)
class StoreStats(NamedTuple):
    req_id: int
    stats: dict
    objects: list


@_message(71, routes="head->node")
class ListLogs(NamedTuple):
    """Head -> node agent: the worker log files of this node (for the dashboard)."""

    req_id: int


@_message(72, reply=True)
class LogFiles(NamedTuple):
    req_id: int
    files: list  # [{"file", "pid", "stream", "size", "alive", "modified"}, ...]


@_message(73, routes="head->node")
class ReadLog(NamedTuple):
    """Head -> node agent: bytes of one log file from ``offset`` (negative: from the end)."""

    req_id: int
    file: str
    offset: int
    limit: int


@_message(74, reply=True)
class LogData(NamedTuple):
    req_id: int
    data: bytes
    offset: int  # where the next read starts
    size: int
    error: str


@_message(35, routes="node->core")
class AssignJob(NamedTuple):
    """Node agent -> a fresh worker: from now on you serve this job (import its code)."""

    req_id: int
    job_id: str
    code_paths: list  # the driver's script directory and sys.path (see driver_code_paths)
    runtime_env: dict  # the wire form of the env to set up first ({}: none)


@_message(36, reply=True)
class JobAssigned(NamedTuple):
    req_id: int
    error: str  # "": joined; else why its runtime env could not be set up


# --- placement groups -------------------------------------------------------------------


@_message(89, routes="driver,core->head")
class CreatePlacementGroup(NamedTuple):
    """Caller -> head: reserve these bundles (answered at once with PlacementGroupInfo;
    WaitPlacementGroup waits for the reservation)."""

    req_id: int
    pg_id: str
    name: str
    bundles: list  # [shape, ...]
    strategy: str  # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    job_id: str
    detached: bool  # lifetime="detached": it outlives its creator's job
    label_selectors: list = []  # per bundle, the labels its node must have ({}: any)


@_message(90, routes="driver,core->head")
class RemovePlacementGroup(NamedTuple):
    req_id: int
    pg_id: str


@_message(91, routes="driver,core->head")
class WaitPlacementGroup(NamedTuple):
    """Caller -> head: reply once the group is placed (or removed)."""

    req_id: int
    pg_id: str


@_message(92, routes="driver,core->head")
class LookupPlacementGroup(NamedTuple):
    """Caller -> head: a group by id (``pg_id``) or by name in the caller's namespace."""

    req_id: int
    pg_id: str
    name: str
    job_id: str


@_message(93, reply=True)
class PlacementGroupInfo(NamedTuple):
    req_id: int
    info: dict  # {} when there is no such group; else its row (see PlacementGroupRecord)
    error: str


@_message(94, routes="head->node")
class ReserveBundles(NamedTuple):
    """Head -> node agent: reserve all of these bundles now, or none (BundlesReserved)."""

    req_id: int
    pg_id: str
    bundles: list  # [[index, shape], ...]


@_message(95, reply=True)
class BundlesReserved(NamedTuple):
    req_id: int
    ok: bool


@_message(96, routes="head->node")
class ReleaseBundles(NamedTuple):
    """Head -> node agent: these bundles end; what runs in them is killed."""

    pg_id: str
    indexes: list


# --- core to core: tasks and objects ----------------------------------------------------


@_message(40, routes="core->core")
class PushTask(NamedTuple):
    task_id: bytes
    fn_id: bytes
    fn_blob: bytes | None  # sent the first time a function crosses this link
    name: str
    args: bytes  # serialized (args, kwargs) with top-level refs replaced by slots
    deps: list  # [object_id, resolved value] per slot (see aray._objects)
    return_ids: list
    num_returns: int  # -1 for a streaming generator
    job_id: str
    gpu_ids: list
    owner: str  # address of the caller's core, for refs the task creates
    resources: dict  # the task's resource request, e.g. {"CPU": 1.0} (get_runtime_context)
    namespace: str  # its job's namespace (get_runtime_context)
    max_calls: int  # the worker exits after this many calls of the function (0: never)
    #: its placement group ({"pg_id", "index", "capture", "bundles"}), {} for none: for
    #: get_current_placement_group() and the child tasks it captures
    placement_group: dict


@_message(76, routes="core->core")
class WorkerRetires(NamedTuple):
    """Worker -> caller, before the task's answer: this worker exits after ``task_id``
    (its function's ``max_calls``): push nothing more to it, and do not give its lease back
    (its exit frees the lease's resources)."""

    task_id: bytes


@_message(97, routes="core->core")
class TakeBackTask(NamedTuple):
    """Caller -> worker: give back ``task_id`` if it is still queued there (a worker of the
    caller's has become free for it); answered by :class:`TaskTakenBack`."""

    task_id: bytes


@_message(98, routes="core->core")
class TaskTakenBack(NamedTuple):
    """Worker -> caller: ``taken``: the task left the worker's queue and will not run
    there; otherwise it has started (or finished), and its answer comes as usual."""

    task_id: bytes
    taken: bool


@_message(41, routes="core->core")
class TaskFinished(NamedTuple):
    task_id: bytes
    results: list  # one resolved value per return id (streaming: [] and see StreamItem)
    error: bytes | None  # pickled RemoteErrorInfo


@_message(42, routes="core->core")
class CancelTask(NamedTuple):
    task_id: bytes
    recursive: bool  # also cancel the tasks it submitted


@_message(78, routes="core->core")
class CancelObject(NamedTuple):
    """``aray.cancel()`` of a ref that another core owns: its owner, which submitted the
    task or actor call that makes it, cancels that (as for its own refs)."""

    object_id: bytes
    force: bool
    recursive: bool


@_message(43, routes="core->core")
class GetObject(NamedTuple):
    """Ask an object's owner for its value; the reply comes once it is ready."""

    req_id: int
    object_id: bytes


@_message(44, reply=True)
class ObjectReply(NamedTuple):
    req_id: int
    value: list  # a resolved value: ["v", data] | ["s", node_id, size, offset] | ["e", error]


@_message(46, routes="core->core")
class AddBorrower(NamedTuple):
    """To an object's owner: keep it, one more holder has a ref (the sender, or a caller the
    sender returns it to)."""

    req_id: int
    object_id: bytes


@_message(47, reply=True)
class BorrowerAdded(NamedTuple):
    req_id: int


@_message(48, routes="core->core")
class RemoveBorrower(NamedTuple):
    """To an object's owner: one holder that registered with AddBorrower let go."""

    object_id: bytes


@_message(45, routes="core->core")
class StreamItem(NamedTuple):
    """One value yielded by a streaming task or method, sent as soon as it is produced."""

    task_id: bytes
    index: int  # type: ignore[assignment]  # a field may share a name with tuple.index
    value: list  # a resolved value


@_message(52, routes="core->core")
class StreamConsumed(NamedTuple):
    """Caller -> the worker running a stream: the consumer has taken the first ``count``
    items (``STREAM_DONE``: it dropped the generator). A producer runs at most
    ``aray._streams.STREAM_WINDOW`` items ahead of this."""

    task_id: bytes
    count: int  # type: ignore[assignment]  # a field may share a name with tuple.count


#: StreamConsumed.count of a consumer that is gone: produce without waiting
STREAM_DONE = 2**62


# --- actors -----------------------------------------------------------------------------


@_message(60, routes="driver,core->head")
class RegisterActor(NamedTuple):
    """Caller -> head: reserve an actor id (and its name, if it has one)."""

    req_id: int
    actor_id: str
    name: str
    namespace: str
    get_if_exists: bool
    job_id: str
    meta: dict  # class name, method options, lifetime ... (see _actors.ActorClass)


@_message(61, reply=True)
class ActorRegistered(NamedTuple):
    req_id: int
    actor_id: str  # an existing actor's id when get_if_exists found one
    error: str


@_message(62, routes="driver,core->head; head->node; node->core")
class CreateActor(NamedTuple):
    """Caller -> head -> node agent -> worker: construct the actor."""

    actor_id: str
    spec: dict


@_message(63, routes="worker->node; node->head")
class ActorStarted(NamedTuple):
    """Worker -> node agent -> head: the constructor ran (``error`` if it raised)."""

    actor_id: str
    worker_id: str
    address: str
    pid: int
    node_id: str
    error: bytes | None


@_message(64, routes="node->head")
class ActorDied(NamedTuple):
    """Node agent -> head: the actor's worker process is gone."""

    actor_id: str
    reason: str


@_message(65, routes="driver,core->head")
class WaitActor(NamedTuple):
    """Caller -> head: reply once the actor is alive (or dead)."""

    req_id: int
    actor_id: str


@_message(66, routes="driver,core->head")
class LookupActor(NamedTuple):
    req_id: int
    name: str
    namespace: str  # "" means the namespace of the caller's job
    job_id: str


@_message(67, reply=True)
class ActorInfo(NamedTuple):
    req_id: int
    info: dict  # {} when there is no such actor


@_message(68, routes="driver,core->head; head->node")
class KillActor(NamedTuple):
    """Caller -> head (replied with ActorInfo once the actor is down) -> node agent (0)."""

    req_id: int
    actor_id: str
    no_restart: bool


@_message(69, routes="core->core")
class CallActor(NamedTuple):
    """Caller -> actor worker: run one method call."""

    task_id: bytes
    actor_id: str
    method: str
    args: bytes
    deps: list
    return_ids: list
    num_returns: int  # -1 for a streaming method
    job_id: str
    owner: str
    group: str  # concurrency group for this call ("" = the method's own)
    name: str  # the call's name in the state API and errors ("" = Class.method)


@_message(70, routes="head->core")
class Warn(NamedTuple):
    """Head -> driver: a warning the user should see (e.g. an infeasible actor)."""

    message: str


# --- codec ------------------------------------------------------------------------------


def encode(messages: list) -> bytes:
    """Pack messages into one frame."""
    return msgpack.packb([(m.TAG, *m) for m in messages], use_bin_type=True)


def decode(frame: bytes) -> list:
    """Unpack a frame into message objects; raises ValueError on anything malformed."""
    try:
        items = msgpack.unpackb(frame, raw=False, strict_map_key=False)
        return [_BY_TAG[item[0]](*item[1:]) for item in items]
    except Exception as exc:  # malformed msgpack, unknown tag, wrong arity
        raise ValueError(f"malformed aray frame: {exc}") from None


def encode_hello(hello: Hello) -> str:
    """A Hello as the value of the ``Aray-Hello`` header (msgpack, base64)."""
    data = msgpack.packb(list(hello), use_bin_type=True)
    if len(data) > HELLO_MAX:
        raise ValueError(f"a Hello of {len(data)} bytes is larger than {HELLO_MAX}")
    return base64.b64encode(data).decode("ascii")


def decode_hello(text: str) -> Hello:
    """The Hello in an ``Aray-Hello`` header; raises ValueError on anything malformed.
    Only small, plain values come out: nothing is unpickled."""
    try:
        if len(text) > HELLO_HEADER_MAX:
            raise ValueError("too long")
        hello = Hello(*msgpack.unpackb(base64.b64decode(text, validate=True), raw=False))
        if not isinstance(hello.info, dict) or not isinstance(hello.role, str):
            raise ValueError("wrong field types")
        return hello
    except Exception as exc:
        raise ValueError(f"malformed Hello: {exc}") from None


def message_types() -> dict[int, MessageClass]:
    """Every registered message class by tag (for tests and tools)."""
    return dict(_BY_TAG)


Message = Any
