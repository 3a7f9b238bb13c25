"""A bounded soak test: a 2-node cluster under a mixed, verified workload, with a node lost
and replaced midway.

Run::

    python benchmarks/soak.py [--minutes 5] [--seed 1] [--json FILE]

The script starts a cluster of its own with the command line (``aray start --head`` and
``aray start --address``, 2 CPUs each, on free ports, in a temporary ``ARAY_SESSION_ROOT``,
so it never sees or stops another cluster of this machine), connects a driver to it with
``aray.init(address=...)`` and, for ``--minutes``, runs from several driver threads a random
mix of operations whose every result is checked: plain and nested tasks, actor calls,
``aray.put``/``aray.get`` of random sizes, tasks that return large objects (some from the
second node), lineage reconstruction of objects held across the node loss, and
``aray.wait`` over batches. At half the duration it SIGKILLs the second node's process and a
few seconds later adds a new node; the workload goes on throughout. At the end it prints
the operations done by kind, the errors (any exception or wrong value; an operation that
takes longer than ``--op-timeout`` is an error "hung"), the RSS and open fds of every
runtime process at the start and at the end, and a verdict; stops the cluster with
``aray stop`` and checks that nothing of its session is left. The exit status is 1 when
there were errors or leftovers. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from pathlib import Path

# Short, and set before aray is imported: the nodes' unix sockets live under it (their paths
# have a length limit), and the CLI and aray.init(address=...) find nodes through it only.
SESSION_ROOT = tempfile.mkdtemp(prefix="aray-soak-")
os.environ["ARAY_SESSION_ROOT"] = SESSION_ROOT

import numpy as np  # noqa: E402
import psutil  # noqa: E402

import aray  # noqa: E402

CPUS_PER_NODE = 2
FAR = "soak_far"  # the custom resource of the second node (and of its replacement)
HEAD = "soak_head"  # the custom resource of the head node
KINDS = ("bytes", "uint8", "int32", "float64")  # what a payload is made of
MIN_SIZE = 8
HELD_MAX = 12  # large objects made on the second node and read again later
SAMPLES_IN_FULL = 3  # errors printed with their traceback
SAMPLES_LISTED = 20  # errors listed by type and message


# --- payloads, made the same way on both sides --------------------------------------------

def make_payload(seed: int, size: int, kind: str):
    """A value of about ``size`` bytes, a pure function of its arguments, so that the driver
    can rebuild what a task made and compare."""
    rng = np.random.default_rng(seed)
    if kind == "bytes":
        return rng.bytes(size)
    if kind == "uint8":
        return rng.integers(0, 256, size=size, dtype=np.uint8)
    if kind == "int32":
        return rng.integers(-2**31, 2**31 - 1, size=max(1, size // 4), dtype=np.int32)
    return rng.random(max(1, size // 8))


def checksum(value) -> tuple:
    """(type, dtype, length, crc32) of a payload: equal on both sides only if the content is."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ("bytes", "", len(value), zlib.crc32(value))
    array = np.ascontiguousarray(value)
    return ("ndarray", str(array.dtype), int(array.size), zlib.crc32(array.view(np.uint8)))


def plain(value):
    """``value`` with every list and tuple in it made a tuple, for comparisons."""
    if isinstance(value, (list, tuple)):
        return tuple(plain(v) for v in value)
    return value


def node_id() -> str:
    """The id of the node this code runs on."""
    return aray.get_runtime_context().get_node_id()


# --- what runs in the cluster ----------------------------------------------------------------

@aray.remote(max_retries=5)
def digest(value, tag: int) -> tuple:
    """The checksum of an argument (a value, or a put object resolved to its value)."""
    return tag, checksum(value)


@aray.remote(max_retries=5)
def make(seed: int, size: int, kind: str):
    """A large return value, stored in the object store of the node that runs this."""
    return make_payload(seed, size, kind)


@aray.remote(max_retries=5)
def fan_out(seed: int, children: int, size: int, kind: str, far: bool) -> list:
    """A nested task: makes ``children`` payloads in tasks of its own (on the second node
    when ``far``), reads them and returns their checksums."""
    options = {"resources": {FAR: 1}} if far else {}
    refs = [make.options(**options).remote(seed + i, size, kind) for i in range(children)]
    # bounded like the driver's gets: a lost child must show up as an error, not a hang
    return [checksum(v) for v in aray.get(refs, timeout=600)]


@aray.remote(max_retries=5)
def pause(i: int, seconds: float) -> int:
    """A short task that takes a while, for aray.wait over batches."""
    time.sleep(seconds)
    return i * i


@aray.remote(max_retries=5, num_cpus=1)
def occupy(seconds: float) -> str:
    """Hold a CPU of the head node for a while, so that actors created meanwhile go to the
    second node."""
    time.sleep(seconds)
    return node_id()


@aray.remote(max_restarts=-1, max_task_retries=-1)
class Keeper:
    """An actor whose state is rebuilt from its constructor's arguments, so that its answers
    stay checkable after it restarts on another node."""

    def __init__(self, seed: int, size: int) -> None:
        """Make the actor's deterministic state."""
        self.seed = seed
        self.data = make_payload(seed, size, "bytes")
        self.calls = 0

    def digest(self, value, tag: int) -> tuple:
        """The checksum of an argument."""
        self.calls += 1
        return tag, checksum(value)

    def window(self, start: int, length: int) -> int:
        """The crc32 of a slice of the state."""
        self.calls += 1
        return zlib.crc32(self.data[start:start + length])

    def where(self) -> tuple:
        """(node id, pid) of the actor's process."""
        return node_id(), os.getpid()


# --- the cluster -------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port that nothing listens on at the moment."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def aray_cli(*args: str, timeout: float = 90) -> str:
    """Run ``aray ARGS`` with this interpreter and the soak's session root; its stdout, or
    RuntimeError with its output when it fails."""
    proc = subprocess.run([sys.executable, "-m", "aray", *args], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))
    if proc.returncode != 0:
        raise RuntimeError(f"`aray {' '.join(args)}` failed ({proc.returncode}):\n"
                           f"{proc.stdout}{proc.stderr}")
    return proc.stdout


def start_node(*args: str) -> dict:
    """``aray start ARGS``; the node's cluster.json (pid, node id, session, store), read from
    the session directory that ``aray start`` printed, checked against the pid it printed."""
    out = aray_cli("start", *args)
    pid = int(re.search(r"\(pid (\d+)\)", out).group(1))
    session = re.search(r"Session: (\S+)", out).group(1)
    with open(os.path.join(session, "cluster.json")) as f:
        info = json.load(f)
    if info["pid"] != pid:
        raise RuntimeError(f"aray start printed pid {pid}, its cluster.json says {info['pid']}")
    return info


def children_of(pid: int) -> list[psutil.Process]:
    """Every process under ``pid`` (workers, the worker template), or [] once it is gone."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids, timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs; those still running after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    return left


def session_processes() -> list[psutil.Process]:
    """Processes of this user other than this one whose environment has the soak's session
    root: whatever the soak's nodes started, wherever it was reparented to."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "uids"]):
        try:
            if proc.pid == me or proc.info["uids"].real != os.getuid():
                continue
            if proc.environ().get("ARAY_SESSION_ROOT") == SESSION_ROOT and alive(proc.pid):
                found.append(proc)
        except (psutil.Error, OSError, AttributeError):
            continue  # gone, or not ours to read
    return found


# --- processes: RSS and fds --------------------------------------------------------------------

def describe(proc: psutil.Process, node_pid: int) -> str:
    """A short name for a process under a node process: the worker template (the
    forkserver the node starts), a worker (forked by the template) or the resource tracker."""
    try:
        cmdline = " ".join(proc.cmdline())
        parent = proc.ppid()
    except psutil.Error:
        return "?"
    if "resource_tracker" in cmdline:
        return "resource tracker"
    if "forkserver" in cmdline:
        return "worker template" if parent == node_pid else "worker"
    return "other"


def runtime_pids(rows: list[dict]) -> list[int]:
    """The pids of a snapshot's rows but the driver's: those must be gone after aray stop."""
    return [r["pid"] for r in rows if r["role"] != "driver"]


def snapshot(nodes: dict[str, int]) -> list[dict]:
    """RSS, private memory (USS: what the process alone holds, without the shared-memory
    store pages it has mapped, which RSS counts) and open fds of the driver, of each node
    process (``{label: pid}``) and of every process under it."""
    rows = []

    def add(role: str, proc: psutil.Process) -> None:
        """One row for ``proc``, unless it exited meanwhile."""
        try:
            with proc.oneshot():
                rows.append({"role": role, "pid": proc.pid, "rss": proc.memory_info().rss,
                             "uss": proc.memory_full_info().uss, "fds": proc.num_fds()})
        except psutil.Error:
            pass  # a worker that exited between the listing and the reading

    add("driver", psutil.Process())
    for label, pid in nodes.items():
        try:
            add(f"{label}: node process", psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
        for child in children_of(pid):
            add(f"{label}: {describe(child, pid)}", child)
    return rows


def group_totals(rows: list[dict]) -> dict[str, dict]:
    """RSS and fds summed by the part of the role before ':' (driver, head node, ...)."""
    totals: dict[str, dict] = {}
    for row in rows:
        group = row["role"].split(":")[0]
        t = totals.setdefault(group, {"processes": 0, "rss": 0, "uss": 0, "fds": 0})
        t["processes"] += 1
        t["rss"] += row["rss"]
        t["uss"] += row["uss"]
        t["fds"] += row["fds"]
    return totals


def print_processes(start: list[dict], end: list[dict]) -> None:
    """One line per process seen at the start or at the end, then the sums per group."""
    mib = 2**20
    by_pid: dict[int, dict] = {}
    for when, rows in (("start", start), ("end", end)):
        for row in rows:
            entry = by_pid.setdefault(row["pid"], {"role": row["role"]})
            entry[when] = row
    print(f"  {'process':<32} {'pid':>7}  {'RSS start':>10} {'RSS end':>10}  "
          f"{'USS start':>10} {'USS end':>10}  {'fds start':>9} {'fds end':>7}")

    def mem(row, key: str) -> str:
        """A row's RSS or USS in MiB, or '-' for a process not there at that time."""
        return f"{row[key] / mib:.1f} MiB" if row else "-"

    for pid, entry in by_pid.items():
        s, e = entry.get("start"), entry.get("end")
        print(f"  {entry['role']:<32} {pid:>7}  {mem(s, 'rss'):>10} {mem(e, 'rss'):>10}  "
              f"{mem(s, 'uss'):>10} {mem(e, 'uss'):>10}  "
              f"{(s['fds'] if s else '-'):>9} {(e['fds'] if e else '-'):>7}")
    starts, ends = group_totals(start), group_totals(end)
    print("  sums (processes, RSS, USS, fds):")
    empty = {"processes": 0, "rss": 0, "uss": 0, "fds": 0}
    for group in dict.fromkeys([*starts, *ends]):
        s, e = starts.get(group, empty), ends.get(group, empty)
        print(f"    {group:<20} start {s['processes']:>2} proc {s['rss'] / mib:8.1f} MiB RSS "
              f"{s['uss'] / mib:8.1f} MiB USS {s['fds']:>5} fds   end {e['processes']:>2} proc "
              f"{e['rss'] / mib:8.1f} MiB RSS {e['uss'] / mib:8.1f} MiB USS {e['fds']:>5} fds")


# --- the workload ------------------------------------------------------------------------------

class Mismatch(Exception):
    """A result that arrived but is not the value the operation should have produced."""


class Hung(Exception):
    """An operation that did not finish within --op-timeout seconds."""


class Soak:
    """The operations, their counts and errors, and the threads that run them."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Set up the counters; the cluster must be up and the driver connected."""
        self.args = args
        self.max_size = int(args.max_mb * 2**20)
        self.lock = threading.Lock()
        self.ops: dict[str, int] = {}
        self.latency: dict[str, list[float]] = {}
        self.errors: list[dict] = []
        self.slow: list[dict] = []  # operations that took more than --slow seconds
        self.held: list[tuple] = []  # (ref, seed, size, kind) of objects made on node 2
        self.actors: list = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.kill_at: float | None = None  # seconds since t0
        self.rejoined_at: float | None = None
        self.warming = True  # until the soak proper starts
        self.rebuilt = 0  # lineage reconstructions the driver's runtime logged
        # a filter, not a handler: the runtime's warnings still reach stderr as they would
        logging.getLogger("aray").addFilter(self.count_rebuilds)
        self.kinds = {
            "task": (self.op_task, 3), "nested task": (self.op_nested, 1),
            "actor call": (self.op_actor, 3), "put/get": (self.op_put_get, 3),
            "large return": (self.op_large_return, 2), "held object reread": (self.op_reread, 1),
            "wait batch": (self.op_wait, 1),
        }

    # --- helpers ---
    def count_rebuilds(self, record: logging.LogRecord) -> bool:
        """Count the runtime's "lost with its node; running ... again" warnings; keep all."""
        if "was lost with its node" in str(record.msg):
            with self.lock:
                self.rebuilt += 1
        return True

    def now(self) -> float:
        """Seconds since the workload started."""
        return time.monotonic() - self.t0

    def phase(self, t: float) -> str:
        """Where ``t`` falls: warm-up, before the kill, between kill and rejoin, or after."""
        if self.warming:
            return "warm-up"
        if self.kill_at is None or t < self.kill_at:
            return "before kill"
        if self.rejoined_at is None or t < self.rejoined_at:
            return "node down"
        return "after rejoin"

    def size(self, rng: random.Random) -> int:
        """A random size, log-uniform between a few bytes and --max-mb: mostly small values,
        some in shared memory, a few of several MB."""
        return int(math.exp(rng.uniform(math.log(MIN_SIZE), math.log(self.max_size))))

    def get(self, refs, deadline: float):
        """aray.get bounded by the operation's deadline: Hung instead of waiting forever."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise Hung(f"no result after {self.args.op_timeout:g} s")
        try:
            return aray.get(refs, timeout=left)
        except aray.exceptions.GetTimeoutError as exc:
            raise Hung(f"no result after {self.args.op_timeout:g} s ({exc})") from None

    @staticmethod
    def expect(what: str, got, want) -> None:
        """Mismatch unless ``got == want``, lists and tuples alike (a result's tuples may
        come back as either, depending on how it was serialized)."""
        got, want = plain(got), plain(want)
        if got != want:
            raise Mismatch(f"{what}: got {str(got)[:200]}, expected {str(want)[:200]}")

    def run_one(self, kind: str, rng: random.Random) -> None:
        """Run one operation; count it, its latency, and its error if it fails."""
        fn = self.kinds[kind][0]
        started = self.now()
        deadline = time.monotonic() + self.args.op_timeout
        error = None
        try:
            fn(rng, deadline)
        except Exception as exc:  # every failure is a finding, whatever its type
            error = exc
        took = self.now() - started
        phase = self.phase(started)
        if phase == "before kill" and self.kill_at is not None and started + took > self.kill_at:
            phase = "in flight at the kill"
        with self.lock:
            self.ops[kind] = self.ops.get(kind, 0) + 1
            self.latency.setdefault(kind, []).append(took)
            if took > self.args.slow:
                self.slow.append({"kind": kind, "started_s": round(started, 2),
                                  "took_s": round(took, 2), "phase": phase,
                                  "failed": error is not None})
            if error is not None:
                self.errors.append({
                    "kind": kind, "started_s": round(started, 2), "took_s": round(took, 2),
                    "phase": phase, "type": type(error).__name__,
                    "message": str(error),
                    "traceback": "".join(traceback.format_exception(error))})

    def worker(self, index: int) -> None:
        """One driver thread: random operations until the soak's time is up."""
        rng = random.Random(self.args.seed * 1000 + index)
        names = list(self.kinds)
        weights = [self.kinds[k][1] for k in names]
        while not self.stop.is_set():
            self.run_one(rng.choices(names, weights)[0], rng)

    # --- the operations ---
    def op_task(self, rng: random.Random, deadline: float) -> None:
        """1 to 8 plain tasks with random payloads as arguments (inline or put), some on the
        second node; each returns the checksum of what it received."""
        refs, want = [], []
        for tag in range(rng.randint(1, 8)):
            value = make_payload(rng.getrandbits(32), self.size(rng), rng.choice(KINDS))
            arg = aray.put(value) if rng.random() < 0.3 else value
            far = rng.random() < 0.4
            task = digest.options(resources={FAR: 1}) if far else digest
            refs.append(task.remote(arg, tag))
            want.append((tag, checksum(value)))
        self.expect("task checksums", self.get(refs, deadline), want)

    def op_nested(self, rng: random.Random, deadline: float) -> None:
        """A task that runs 1 to 4 tasks of its own and reads their (sometimes large)
        results, sometimes on the second node."""
        seed, n = rng.getrandbits(30), rng.randint(1, 4)
        size, kind = self.size(rng), rng.choice(KINDS)
        far_children = rng.random() < 0.5
        task = fan_out.options(resources={FAR: 1}) if rng.random() < 0.3 else fan_out
        got = self.get(task.remote(seed, n, size, kind, far_children), deadline)
        want = [checksum(make_payload(seed + i, size, kind)) for i in range(n)]
        self.expect("nested checksums", got, want)

    def op_actor(self, rng: random.Random, deadline: float) -> None:
        """1 to 6 calls to one actor: checksums of random arguments, and slices of the
        actor's state, which a restarted actor rebuilds the same."""
        index = rng.randrange(len(self.actors))
        actor, seed, state_size = self.actors[index]
        state = None
        refs, want = [], []
        for tag in range(rng.randint(1, 6)):
            if rng.random() < 0.5:
                value = make_payload(rng.getrandbits(32), self.size(rng), rng.choice(KINDS))
                refs.append(actor.digest.remote(value, tag))
                want.append((tag, checksum(value)))
            else:
                if state is None:
                    state = make_payload(seed, state_size, "bytes")
                start = rng.randrange(state_size)
                length = rng.randint(1, state_size)
                refs.append(actor.window.remote(start, length))
                want.append(zlib.crc32(state[start:start + length]))
        self.expect(f"actor {index} results", self.get(refs, deadline), want)

    def op_put_get(self, rng: random.Random, deadline: float) -> None:
        """aray.put of a random value, aray.get of it compared in full, and its checksum
        computed by a task (sometimes on the second node, which pulls a copy)."""
        value = make_payload(rng.getrandbits(32), self.size(rng), rng.choice(KINDS))
        ref = aray.put(value)
        back = self.get(ref, deadline)
        if isinstance(value, bytes):
            self.expect("put/get bytes", bytes(back) == value and type(back) is bytes, True)
        else:
            same = (isinstance(back, np.ndarray) and back.dtype == value.dtype
                    and np.array_equal(back, value))
            self.expect("put/get array", same, True)
        task = digest.options(resources={FAR: 1}) if rng.random() < 0.5 else digest
        self.expect("put checksum in a task", self.get(task.remote(ref, 0), deadline),
                    (0, checksum(value)))

    def op_large_return(self, rng: random.Random, deadline: float) -> None:
        """1 to 3 tasks that return objects above the inline limit (into shared memory), most
        made on the second node, read here; and one more made there and not read, kept for
        a later reread (aray.wait, which never pulls a copy, says when it is made)."""
        refs, specs = [], []
        for _ in range(rng.randint(1, 3)):
            spec = (rng.getrandbits(32), rng.randint(200_000, self.max_size), rng.choice(KINDS))
            far = rng.random() < 0.7
            refs.append((make.options(resources={FAR: 1}) if far else make).remote(*spec))
            specs.append(spec)
        values = self.get(refs, deadline)
        for value, spec in zip(values, specs):
            self.expect("large return", checksum(value), checksum(make_payload(*spec)))
        del values  # the driver's node keeps its copies only while they are in use
        spec = (rng.getrandbits(32), rng.randint(200_000, self.max_size), rng.choice(KINDS))
        ref = make.options(resources={FAR: 1}).remote(*spec)
        ready, _ = aray.wait([ref], timeout=max(0.0, deadline - time.monotonic()),
                             fetch_local=False)
        if not ready:
            raise Hung(f"aray.wait: a large return not ready after {self.args.op_timeout:g} s")
        with self.lock:
            if len(self.held) >= HELD_MAX:  # its object is freed with its last ref
                self.held.pop(rng.randrange(len(self.held)))
            self.held.append((ref, *spec))

    def op_reread(self, rng: random.Random, deadline: float) -> None:
        """Read an object made on the second node some time ago and not read since: the only
        copy is there, so after that node's loss the owner must rebuild it by running its
        task again (lineage reconstruction). Once read, a copy is here: it leaves the pool."""
        with self.lock:
            entry = self.held.pop(rng.randrange(len(self.held))) if self.held else None
        if entry is None:
            return self.op_large_return(rng, deadline)
        ref, seed, size, kind = entry
        self.expect("held object", checksum(self.get(ref, deadline)),
                    checksum(make_payload(seed, size, kind)))

    def op_wait(self, rng: random.Random, deadline: float) -> None:
        """A batch of 4 to 16 short tasks taken as they finish with aray.wait, then checked."""
        n = rng.randint(4, 16)
        refs = []
        for i in range(n):
            task = pause.options(resources={FAR: 1}) if rng.random() < 0.3 else pause
            refs.append(task.remote(i, rng.uniform(0, 0.2)))
        pending, done = list(refs), []
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Hung(f"aray.wait: {len(pending)} of {n} not ready after "
                           f"{self.args.op_timeout:g} s")
            ready, pending = aray.wait(pending, num_returns=min(len(pending), rng.randint(1, 4)),
                                       timeout=left)
            done += ready
        self.expect("wait returned every ref once", sorted(map(str, done)),
                    sorted(map(str, refs)))
        self.expect("wait batch values", self.get(refs, deadline), [i * i for i in range(n)])


# --- the run -------------------------------------------------------------------------------------

def create_actors(soak: Soak, count: int, head_id: str, second_id: str) -> dict:
    """Create ``count`` Keeper actors, about half on the second node: those are made while
    tasks hold every CPU of the head node, where an actor could not be placed then."""
    far_count = count // 2
    hold = [occupy.options(resources={HEAD: 1}).remote(4.0) for _ in range(CPUS_PER_NODE)]

    def head_busy() -> bool:
        """Whether the head sees no CPU free on the head node (its tasks hold them)."""
        node = next(n for n in aray.nodes() if n["NodeID"] == head_id)
        return node.get("Available", {}).get("CPU", CPUS_PER_NODE) < 1

    deadline = time.monotonic() + 30
    while not head_busy() and time.monotonic() < deadline:
        time.sleep(0.1)
    for i in range(count):
        if i == far_count:  # the head node's CPUs are free again: the rest go there
            aray.get(hold, timeout=60)
        seed = soak.args.seed * 7919 + i
        actor = Keeper.remote(seed, 300_000)
        aray.get(actor.where.remote(), timeout=60)  # placed and started before the next
        soak.actors.append((actor, seed, 300_000))
    aray.get(hold, timeout=60)
    places = {"head node": 0, "second node": 0}
    for actor, _, _ in soak.actors:
        nid, _pid = aray.get(actor.where.remote(), timeout=60)
        places["second node" if nid == second_id else "head node"] += 1
    return places


def actors_at_end(soak: Soak, head_id: str, new_id: str) -> dict:
    """Where the Keeper actors are now, and how often the head restarted them."""
    from aray.util.state import list_actors

    places = {"head node": 0, "new node": 0, "elsewhere": 0}
    for actor, _, _ in soak.actors:
        nid, _pid = aray.get(actor.where.remote(), timeout=soak.args.op_timeout)
        places["head node" if nid == head_id else "new node" if nid == new_id
               else "elsewhere"] += 1
    rows = list_actors(filters=[("class_name", "=", "Keeper")])
    places["restarts"] = sum(int(r.get("restarts") or 0) for r in rows)
    return places


def kill_and_replace(soak: Soak, second: dict, head_address: str, report: dict) -> dict:
    """SIGKILL the second node's process; after --rejoin-after seconds start a new node;
    wait until the head lists it alive. Returns the new node's info."""
    doomed = [p.pid for p in children_of(second["pid"])]
    soak.kill_at = soak.now()
    os.kill(second["pid"], signal.SIGKILL)  # this soak started it: its pid is ours to end
    print(f"[{soak.kill_at:6.1f} s] killed the second node (pid {second['pid']}, "
          f"{len(doomed)} processes under it)", flush=True)
    time.sleep(soak.args.rejoin_after)
    third = start_node("--address", head_address, "--num-cpus", str(CPUS_PER_NODE),
                       "--resources", json.dumps({FAR: 100}), "--object-store-memory",
                       str(soak.args.store_mb * 2**20))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(n["NodeID"] == third["node_id"] and n["Alive"] for n in aray.nodes()):
            break
        time.sleep(0.2)
    soak.rejoined_at = soak.now()
    print(f"[{soak.rejoined_at:6.1f} s] a new node joined (pid {third['pid']})", flush=True)
    # the killed node's workers and worker template exit by themselves once it is gone
    survivors = wait_gone(doomed, 20)
    dead = next((n for n in aray.nodes() if n["NodeID"] == second["node_id"]), {})
    report.update({"killed_pid": second["pid"], "killed_at_s": round(soak.kill_at, 2),
                   "rejoined_at_s": round(soak.rejoined_at, 2), "new_node_pid": third["pid"],
                   "killed_node_marked_dead": dead.get("Alive") is False,
                   "killed_node_processes": len(doomed),
                   "killed_node_processes_left_20s_later": survivors})
    return third


def summarize(soak: Soak) -> dict:
    """Operations by kind, with mean and max latency."""
    out = {}
    for kind in soak.kinds:
        lat = soak.latency.get(kind, [])
        out[kind] = {"done": soak.ops.get(kind, 0),
                     "errors": sum(1 for e in soak.errors if e["kind"] == kind),
                     "mean_s": round(sum(lat) / len(lat), 3) if lat else None,
                     "max_s": round(max(lat), 2) if lat else None}
    return out


def verdict_of(errors: int, ops: int, leftovers: list, notes: list[str]) -> str:
    """One line: PASS or FAIL, and why."""
    if errors or leftovers:
        why = []
        if errors:
            why.append(f"{errors} error{'s' if errors != 1 else ''} in {ops} operations")
        if leftovers:
            why.append(f"left behind: {', '.join(leftovers)}")
        return "FAIL: " + "; ".join(why)
    line = f"PASS: {ops} operations, 0 errors, a node killed and replaced, nothing left behind"
    return line + (f" (watch: {'; '.join(notes)})" if notes else "")


def growth_notes(start: list[dict], end: list[dict]) -> list[str]:
    """Processes alive at both ends whose RSS or fds grew a lot: worth a longer soak."""
    notes = []
    before = {r["pid"]: r for r in start}
    for row in end:
        s = before.get(row["pid"])
        if s is None:
            continue
        # private memory: store pages a process has mapped count in its RSS, not its USS
        grew = row["uss"] - s["uss"]
        if grew > 100 * 2**20 and row["uss"] > 1.5 * s["uss"]:
            notes.append(f"{row['role']} (pid {row['pid']}) USS +{grew / 2**20:.0f} MiB")
        if row["fds"] - s["fds"] > 50:
            notes.append(f"{row['role']} (pid {row['pid']}) fds {s['fds']} -> {row['fds']}")
    return notes


def run(args: argparse.Namespace) -> int:
    """Start the cluster, soak it, report, stop it; the exit status."""
    duration = args.minutes * 60
    port, dash_port = free_port(), free_port()
    head_address = f"127.0.0.1:{port}"
    report: dict = {"args": vars(args), "session_root": SESSION_ROOT}
    store = ["--object-store-memory", str(args.store_mb * 2**20)]
    node_pids: list[int] = []  # every node process this soak started
    seen: set[int] = set()  # every runtime process seen, for the leftover check
    store_dirs: list[str] = []
    errors: list[dict] = []
    setup_error: dict | None = None
    leftovers: list[str] = []
    soak = None
    try:
        head = start_node("--head", "--port", str(port), "--num-cpus", str(CPUS_PER_NODE),
                          "--resources", json.dumps({HEAD: 100}),
                          "--dashboard-port", str(dash_port), *store)
        node_pids.append(head["pid"])
        store_dirs.append(head["store_dir"])
        second = start_node("--address", head_address, "--num-cpus", str(CPUS_PER_NODE),
                            "--resources", json.dumps({FAR: 100}), *store)
        node_pids.append(second["pid"])
        store_dirs.append(second["store_dir"])
        print(f"cluster: head node pid {head['pid']} at {head_address}, second node pid "
              f"{second['pid']}; session root {SESSION_ROOT}", flush=True)
        aray.init(address=head_address)
        soak = Soak(args)
        places = create_actors(soak, args.actors, head["node_id"], second["node_id"])
        print(f"actors: {places['head node']} on the head node, {places['second node']} on "
              "the second node", flush=True)
        report["actors"] = places
        for kind in soak.kinds:  # warm-up: start the workers every kind needs, on both nodes
            soak.run_one(kind, random.Random(args.seed))
        soak.warming = False
        nodes = {"head node": head["pid"], "second node": second["pid"]}
        start_rows = snapshot(nodes)
        seen.update(runtime_pids(start_rows))

        soak.t0 = time.monotonic()  # the soak proper starts here
        threads = [threading.Thread(target=soak.worker, args=(i,), daemon=True,
                                    name=f"soak-{i}") for i in range(args.threads)]
        for t in threads:
            t.start()
        print(f"[{0:6.1f} s] {args.threads} driver threads running for {duration:g} s "
              f"(kill at {duration / 2:g} s)", flush=True)
        time.sleep(max(0.0, duration / 2 - soak.now()))
        seen.update(runtime_pids(snapshot(nodes)))
        third = kill_and_replace(soak, second, head_address, report.setdefault("kill", {}))
        node_pids.append(third["pid"])
        store_dirs.append(third["store_dir"])
        nodes = {"head node": head["pid"], "new node": third["pid"]}
        while soak.now() < duration:
            time.sleep(min(5.0, duration - soak.now()))
            seen.update(runtime_pids(snapshot(nodes)))
            with soak.lock:
                done, failed = sum(soak.ops.values()), len(soak.errors)
            print(f"[{soak.now():6.1f} s] {done} operations, {failed} errors", flush=True)
        soak.stop.set()
        # an operation in flight ends within --op-timeout: wait that long, and a bit more
        for t in threads:
            t.join(max(1.0, args.op_timeout + 10 - (soak.now() - duration)))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            soak.errors.append({"kind": "driver thread", "started_s": round(soak.now(), 2),
                                "took_s": 0, "phase": "end", "type": "Hung",
                                "message": f"threads {stuck} still in an operation",
                                "traceback": ""})
        # every actor answers at the end, restarted or not
        for index in range(len(soak.actors)):
            soak.run_one("actor call", random.Random(args.seed + index))
        report["actors_at_end"] = actors_at_end(soak, head["node_id"], third["node_id"])
        end_rows = snapshot(nodes)
        seen.update(runtime_pids(end_rows))
        report["processes"] = {"start": start_rows, "end": end_rows,
                               "start_sums": group_totals(start_rows),
                               "end_sums": group_totals(end_rows)}
    except Exception as exc:  # the soak itself failed (setup, kill, rejoin): an error too
        setup_error = {
            "kind": "soak", "started_s": round(soak.now(), 2) if soak else 0, "took_s": 0,
            "phase": "setup" if soak is None else soak.phase(soak.now()),
            "type": type(exc).__name__, "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc))}
    finally:
        if soak is not None:
            soak.stop.set()  # no new operations while the cluster stops
            with soak.lock:
                errors = list(soak.errors)
                report["duration_s"] = round(soak.now(), 2)
                report["operations"] = summarize(soak)
                report["slow_operations"] = list(soak.slow)
                report["objects_rebuilt"] = soak.rebuilt
        if setup_error:
            errors.append(setup_error)
        leftovers = stop_cluster(node_pids, seen, store_dirs)

    print_report(soak, report, errors, leftovers)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    if args.write_docs:
        write_docs(report, args)
    if errors or leftovers:
        print(f"logs kept in {SESSION_ROOT}")
        return 1
    shutil.rmtree(SESSION_ROOT, ignore_errors=True)
    return 0


#: the section of docs/benchmarks.md this script writes (benchmarks/compare.py keeps it)
DOCS_HEADING = "## Soak: a 2-node cluster that loses a node"


def write_docs(report: dict, args: argparse.Namespace) -> None:
    """Put this run's figures in docs/benchmarks.md, replacing the soak's section (the
    sections after it are kept)."""
    import platform

    page_path = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
    page = page_path.read_text()
    after = ""  # the sections that follow the soak's (the scale figures) stay
    if DOCS_HEADING in page:
        page, rest = page.split(DOCS_HEADING, 1)
        page = page.rstrip() + "\n\n"
        if "\n## " in rest:
            after = "\n" + rest[rest.index("\n## ") + 1:]
    mib = 2**20
    kill = report.get("kill", {})
    lines = [
        DOCS_HEADING, "",
        f"`python benchmarks/soak.py --minutes {args.minutes:g}` (seed {args.seed}) starts a "
        "head and a second node with `aray start` (2 CPUs each), runs tasks, nested tasks, "
        "actor calls, puts and gets of random sizes, large results made on the second node and "
        "waits from 4 driver threads, checks every result, SIGKILLs the second node at half "
        "time and adds a new one a few seconds later. Figures of the run on "
        f"{time.strftime('%Y-%m-%d')} ({os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}):", "",
        "| operation | done | errors | mean | max |", "| --- | ---: | ---: | ---: | ---: |"]
    for kind, op in report.get("operations", {}).items():
        lines.append(f"| {kind} | {op['done']:,} | {op['errors']} | {op['mean_s']:.3f} s | "
                     f"{op['max_s']:.2f} s |")
    lines += ["", f"{report.get('verdict', '')}. The second node was killed at "
              f"{kill.get('killed_at_s', 0):.0f} s and a new one was up "
              f"{kill.get('rejoined_at_s', 0) - kill.get('killed_at_s', 0):.1f} s later; "
              f"{report.get('objects_rebuilt', 0)} objects lost with it were rebuilt from "
              f"lineage and {report.get('actors_at_end', {}).get('restarts', 0)} actors "
              "restarted. Operations in flight across the kill waited for the new node.", "",
              "Memory and descriptors of the runtime's processes, summed per node, at the "
              "workload's start and end (USS is what a process holds alone; RSS also counts "
              "the shared-memory store pages it has mapped):", "",
              "| processes | start: n, RSS, USS, fds | end: n, RSS, USS, fds |",
              "| --- | --- | --- |"]
    sums = report.get("processes", {})
    start, end = sums.get("start_sums", {}), sums.get("end_sums", {})
    empty = {"processes": 0, "rss": 0, "uss": 0, "fds": 0}
    for group in dict.fromkeys([*start, *end]):
        s, e = start.get(group, empty), end.get(group, empty)
        lines.append(f"| {group} | {s['processes']}, {s['rss'] / mib:.0f} MiB, "
                     f"{s['uss'] / mib:.0f} MiB, {s['fds']} | {e['processes']}, "
                     f"{e['rss'] / mib:.0f} MiB, {e['uss'] / mib:.0f} MiB, {e['fds']} |")
    page_path.write_text(page + "\n".join(lines) + "\n" + after)
    print(f"wrote the soak's section of {page_path}", flush=True)


def stop_cluster(node_pids: list[int], seen: set[int], store_dirs: list[str]) -> list[str]:
    """Disconnect, ``aray stop`` the soak's nodes, and list what is left of its session:
    processes, shared-memory stores. Leftover processes are killed by pid."""
    if aray.is_initialized():
        done = threading.Event()

        def shutdown() -> None:
            """aray.shutdown in a thread of its own, so a hang cannot stop the cleanup."""
            try:
                aray.shutdown()
            finally:
                done.set()

        threading.Thread(target=shutdown, daemon=True).start()
        if not done.wait(60):
            print("aray.shutdown() did not return within 60 s", flush=True)
    seen.update(p.pid for pid in node_pids for p in children_of(pid))
    try:
        print(aray_cli("stop").strip(), flush=True)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"aray stop failed: {exc}", flush=True)
    left = []
    survivors = wait_gone(sorted(seen | set(node_pids)), 20)
    others = [p.pid for p in session_processes() if p.pid not in survivors]
    for pid in survivors + others:
        left.append(f"process {pid}")
        try:
            os.kill(pid, signal.SIGKILL)  # a process of this soak's own session
        except OSError:
            pass
    names = {os.path.basename(p) for p in glob.glob(os.path.join(SESSION_ROOT, "session_*"))}
    shm = {os.path.dirname(d) or "/dev/shm" for d in store_dirs} | {"/dev/shm"}
    for base in sorted(shm):
        for path in glob.glob(os.path.join(base, "aray-session_*")):
            if os.path.basename(path)[len("aray-"):] in names or path in store_dirs:
                left.append(path)
                shutil.rmtree(path, ignore_errors=True)
    return left


def print_report(soak: Soak | None, report: dict, errors: list[dict], leftovers: list[str]):
    """The summary: operations, errors, slow operations, processes, leftovers, verdict."""
    print("\n=== soak summary ===")
    if "kill" in report:
        k = report["kill"]
        print(f"node loss: second node (pid {k.get('killed_pid')}) SIGKILLed at "
              f"{k.get('killed_at_s')} s, new node (pid {k.get('new_node_pid')}) alive at "
              f"{k.get('rejoined_at_s')} s; killed node marked dead: "
              f"{k.get('killed_node_marked_dead')}; its {k.get('killed_node_processes')} "
              f"processes left 20 s later: {k.get('killed_node_processes_left_20s_later')}")
    if "actors_at_end" in report:
        a, b = report.get("actors", {}), report["actors_at_end"]
        print(f"actors: {a.get('head node')} on the head node and {a.get('second node')} on "
              f"the second node at the start; {b['head node']} on the head node and "
              f"{b['new node']} on the new node at the end, after {b['restarts']} restarts")
    ops = report.get("operations", {})
    total = sum(o["done"] for o in ops.values())
    print(f"operations ({total} in {report.get('duration_s', 0)} s):")
    for kind, o in ops.items():
        mean = "-" if o["mean_s"] is None else f"{o['mean_s']:.3f}"
        print(f"  {kind:<20} {o['done']:>7} done  {o['errors']:>4} errors  "
              f"mean {mean} s  max {o['max_s'] if o['max_s'] is not None else '-'} s")
    if "objects_rebuilt" in report:
        print(f"objects rebuilt from lineage (the driver's log says): "
              f"{report['objects_rebuilt']}")
    print(f"errors: {len(errors)}")
    for e in errors[:SAMPLES_LISTED]:
        # the first line: a remote error's message goes on with the remote traceback
        first, _, more = e["message"].partition("\n")
        print(f"  [{e['started_s']:7.1f} s, {e['phase']}, took {e['took_s']} s] {e['kind']}: "
              f"{e['type']}: {first[:300]}{' (...)' if more or len(first) > 300 else ''}")
    for e in errors[:SAMPLES_IN_FULL]:
        # the traceback ends with the type and the whole message; without one, the message
        print(f"--- {e['kind']} at {e['started_s']} s: {e['type']} in full ---\n"
              f"{(e['traceback'] or e['message']).rstrip()}")
    slow = report.get("slow_operations", [])
    if slow:
        print(f"operations slower than {report['args']['slow']:g} s: {len(slow)}")
        for s in slow[:SAMPLES_LISTED]:
            print(f"  [{s['started_s']:7.1f} s, {s['phase']}] {s['kind']} took {s['took_s']} s"
                  + (" and failed" if s["failed"] else ""))
    procs = report.get("processes")
    notes = []
    if procs:
        print("runtime processes (RSS, private memory (USS), open fds; "
              "the workload's start and end):")
        print_processes(procs["start"], procs["end"])
        notes = growth_notes(procs["start"], procs["end"])
    print(f"left behind after aray stop: {', '.join(leftovers) if leftovers else 'nothing'}")
    verdict = verdict_of(len(errors), total, leftovers, notes)
    report.update({"errors": len(errors), "error_samples": errors[:SAMPLES_LISTED],
                   "leftovers": leftovers, "verdict": verdict})
    print(f"verdict: {verdict}", flush=True)


def main() -> None:
    """Parse the command line and run the soak."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="duration (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random workload")
    parser.add_argument("--threads", type=int, default=4,
                        help="driver threads running operations at once (default 4)")
    parser.add_argument("--actors", type=int, default=4, help="Keeper actors (default 4)")
    parser.add_argument("--max-mb", type=float, default=4.0,
                        help="largest value put, passed or returned, in MiB (default 4)")
    parser.add_argument("--store-mb", type=int, default=512,
                        help="object store capacity of each node, in MiB (default 512)")
    parser.add_argument("--op-timeout", type=float, default=120.0,
                        help="an operation that takes longer is an error, 'hung' (default 120)")
    parser.add_argument("--slow", type=float, default=10.0,
                        help="list operations that take longer than this, in s (default 10)")
    parser.add_argument("--rejoin-after", type=float, default=5.0,
                        help="seconds between the kill and the new node's start (default 5)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures there")
    parser.add_argument("--write-docs", action="store_true",
                        help="put the figures in docs/benchmarks.md (its soak section)")
    args = parser.parse_args()
    sys.exit(run(args))


if __name__ == "__main__":
    main()
