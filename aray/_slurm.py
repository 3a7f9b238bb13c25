"""aray on a Slurm allocation: ``aray symmetric-run``, as Ray's ``ray symmetric-run``.

``srun`` starts the same command on every node of the allocation (one task per node)::

    srun --ntasks-per-node=1 aray symmetric-run --address HEAD_IP:6379 -- python train.py

Each task finds its role. Under Slurm, the first node of the step's node list
(``SLURM_STEP_NODELIST``, else ``SLURM_JOB_NODELIST``, expanded by ``scontrol show
hostnames`` or :func:`expand_hostlist`) is the head; elsewhere, as in Ray, the node that owns
the address's IP is. The head runs ``aray start --head --block`` with the node's share of the
allocation (:func:`allocation_resources`), waits until ``--min-nodes`` nodes have joined
(default: the step's node count), runs the entrypoint with ``ARAY_ADDRESS`` and
``ARAY_TOKEN`` set, so that ``aray.init()`` joins, and stops its node when the entrypoint
exits; the entrypoint's exit code is the command's. Every other node waits for the head,
runs ``aray start --address HEAD --block``, and stays until the head goes away (the end of
the job), then stops its node and exits 0. SIGTERM or SIGINT (``scancel``, the end of the
job's time, Ctrl-C on ``srun``) stops the entrypoint first (SIGKILL after
:data:`ENTRYPOINT_GRACE` seconds), then the node, whose stop removes its shared-memory
store.

The nodes share a token (see docs/slurm.md, "Security"): ``--token`` or ``ARAY_TOKEN`` (the
sbatch template makes one per job; ``srun`` hands the job's environment to every task), or
a token file: ``--token-file PATH`` or, under Slurm without a token,
:func:`default_token_file`. The head writes a new token there (mode 0600, in a directory
that is the user's alone) and removes it at the end; the other nodes wait for it, which
needs a filesystem that every node sees (home directories usually are).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: seconds the entrypoint has to exit after SIGTERM (or SIGINT) before it is killed
ENTRYPOINT_GRACE = 10.0
#: seconds an ``aray start --block`` process has to stop its node before it is killed
NODE_STOP_GRACE = 20.0
#: how often the nodes ask the head how many nodes have joined, or whether it is still there
POLL_INTERVAL = 0.5
#: a node whose head has not answered this many polls in a row takes the job as over
HEAD_GONE_AFTER = 3
#: the options of ``aray start`` that symmetric-run sets itself, or refuses
OWN_OPTIONS = {"head", "address", "port", "node_ip_address", "block", "token",
               "redis_password", "min_nodes"}


# --- the allocation ------------------------------------------------------------------------


def expand_hostlist(text: str) -> list[str]:
    """The host names of a Slurm host list, in order, as ``scontrol show hostnames`` gives
    them.

    A list is comma-separated entries; an entry may hold ranges in brackets, each a
    comma-separated list of numbers and ``LOW-HIGH`` ranges, whose numbers keep the width of
    ``LOW`` (``[08-10]``: 08, 09, 10). Several brackets in one entry expand to every
    combination, the last one varying fastest. Raises ValueError for what Slurm would not
    take (an unclosed bracket, a range that goes down, a bound that is not a number).

    Example:
        >>> expand_hostlist("node[01-03,07],gpu5")
        ['node01', 'node02', 'node03', 'node07', 'gpu5']
        >>> expand_hostlist("rack[1-2]-n[8-10]")[:4]
        ['rack1-n8', 'rack1-n9', 'rack1-n10', 'rack2-n8']
        >>> expand_hostlist("n[3-1]")
        Traceback (most recent call last):
        ...
        ValueError: bad Slurm host list 'n[3-1]': the range 3-1 goes down
    """
    hosts: list[str] = []
    for entry in _split_outside_brackets(text, text):
        hosts.extend(_expand_entry(entry, text))
    return hosts


def _split_outside_brackets(text: str, whole: str) -> list[str]:
    """``text`` cut at the commas (and spaces) that are not inside brackets."""
    entries, current, depth = [], "", 0
    for char in text:
        if char == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"bad Slurm host list {whole!r}: brackets inside brackets")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"bad Slurm host list {whole!r}: a ']' with no '['")
        if depth == 0 and (char == "," or char.isspace()):
            if current:
                entries.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise ValueError(f"bad Slurm host list {whole!r}: a '[' with no ']'")
    if current:
        entries.append(current)
    return entries


def _expand_entry(entry: str, whole: str) -> list[str]:
    start = entry.find("[")
    if start < 0:
        return [entry]
    end = entry.index("]", start)
    prefix, body, rest = entry[:start], entry[start + 1:end], entry[end + 1:]
    tails = _expand_entry(rest, whole)
    out: list[str] = []
    for number in _range_numbers(body, whole):
        out.extend(prefix + number + tail for tail in tails)
    return out


def _range_numbers(body: str, whole: str) -> list[str]:
    numbers: list[str] = []
    for part in body.split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"bad Slurm host list {whole!r}: {part!r} is not a number or "
                             "a LOW-HIGH range")
        if not dash:
            numbers.append(low)
            continue
        if int(high) < int(low):
            raise ValueError(f"bad Slurm host list {whole!r}: the range {part} goes down")
        numbers.extend(str(n).zfill(len(low)) for n in range(int(low), int(high) + 1))
    return numbers


def in_slurm_step(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is a task of a Slurm job (of ``srun``, or a batch script).

    Example:
        >>> in_slurm_step({"SLURM_JOB_ID": "42", "SLURMD_NODENAME": "n1"}), in_slurm_step({})
        (True, False)
    """
    return bool(env.get("SLURM_JOB_ID") and (env.get("SLURMD_NODENAME")
                                             or "SLURM_NODEID" in env))


def allocation_hosts(env: Mapping[str, str] = os.environ) -> list[str]:
    """The nodes of this job step, in Slurm's order (the first is the head's): the step's
    node list (``SLURM_STEP_NODELIST``), else the job's (``SLURM_JOB_NODELIST``,
    ``SLURM_NODELIST``), expanded by ``scontrol show hostnames`` when it is on ``PATH``,
    else by :func:`expand_hostlist`. Empty outside Slurm.

    Example:
        >>> allocation_hosts({"SLURM_JOB_NODELIST": "n[1-2]", "PATH": ""})
        ['n1', 'n2']
    """
    text = (env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
            or env.get("SLURM_NODELIST") or "")
    if not text:
        return []
    scontrol = shutil.which("scontrol", path=env.get("PATH", os.defpath))
    if scontrol:
        try:
            proc = subprocess.run([scontrol, "show", "hostnames", text], capture_output=True,
                                  text=True, timeout=30, env=dict(env))
            if proc.returncode == 0 and proc.stdout.split():
                return proc.stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            pass  # the parser knows the syntax as well
    return expand_hostlist(text)


def allocation_node_count(env: Mapping[str, str] = os.environ) -> int | None:
    """How many nodes the job step has (``SLURM_STEP_NUM_NODES``, else the job's
    ``SLURM_JOB_NUM_NODES``/``SLURM_NNODES``); None outside Slurm.

    Example:
        >>> allocation_node_count({"SLURM_JOB_NUM_NODES": "4"}), allocation_node_count({})
        (4, None)
    """
    for name in ("SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES"):
        if env.get(name, "").isdigit():
            return int(env[name])
    return None


def allocation_resources(env: Mapping[str, str] = os.environ) -> dict:
    """What this node of the allocation has, for ``aray start``: ``num_cpus``
    (``SLURM_CPUS_ON_NODE``), ``num_gpus`` and ``memory`` in bytes (``SLURM_MEM_PER_NODE``,
    else ``SLURM_MEM_PER_CPU`` times the CPUs; Slurm counts in MiB). None means "as
    ``aray start`` finds it": every value outside Slurm, the memory of a job that asked for
    none (it has the node's; or a step of srun outside sbatch, which says nothing of it:
    see :func:`job_memory`), and the GPUs when ``CUDA_VISIBLE_DEVICES`` is set (Slurm sets
    it to the job's GPUs, and aray's detection counts those and learns their model). A
    job with neither ``CUDA_VISIBLE_DEVICES`` nor ``SLURM_GPUS_ON_NODE`` has no GPU: 0.

    Example:
        >>> allocation_resources({"SLURM_JOB_ID": "7", "SLURM_CPUS_ON_NODE": "8",
        ...                       "SLURM_MEM_PER_NODE": "16384"})
        {'num_cpus': 8.0, 'num_gpus': 0, 'memory': 17179869184}
        >>> allocation_resources({"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "2"})["num_gpus"]
        2
        >>> allocation_resources({})
        {'num_cpus': None, 'num_gpus': None, 'memory': None}
    """
    found: dict[str, Any] = {"num_cpus": None, "num_gpus": None, "memory": None}
    if not env.get("SLURM_JOB_ID"):
        return found
    cpus = _count(env.get("SLURM_CPUS_ON_NODE"))
    if cpus is not None:
        found["num_cpus"] = float(cpus)
    if env.get("CUDA_VISIBLE_DEVICES") is None:
        found["num_gpus"] = _count(env.get("SLURM_GPUS_ON_NODE")) or 0
    per_node = _count(env.get("SLURM_MEM_PER_NODE"))
    per_cpu = _count(env.get("SLURM_MEM_PER_CPU"))
    if per_node:
        found["memory"] = per_node * 2**20
    elif per_cpu and cpus:
        found["memory"] = per_cpu * cpus * 2**20
    return found


def job_memory(job: str, cpus: int | None) -> int | None:
    """A node's memory in bytes from ``scontrol show job -o`` (``job``): ``MinMemoryNode``,
    or ``MinMemoryCPU`` times ``cpus``. None when the job asked for none (0: the node's
    memory, as ``aray start`` finds it). A step that ``srun`` started outside ``sbatch``
    has no ``SLURM_MEM_PER_NODE``: its memory is found this way.

    Example:
        >>> job_memory("JobId=7 MinMemoryNode=300M TRES=cpu=2", None)
        314572800
        >>> job_memory("JobId=7 MinMemoryCPU=1G", 2), job_memory("MinMemoryNode=0", 4)
        (2147483648, None)
    """
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    for name, times in (("MinMemoryNode", 1), ("MinMemoryCPU", cpus)):
        match = re.search(rf"\b{name}=(\d+(?:\.\d+)?)([KMGT]?)\b", job)
        if match and times:
            amount = float(match.group(1)) * units.get(match.group(2), 2**20) * times
            return int(amount) or None
    return None


def _scontrol_job_memory(env: Mapping[str, str], cpus: float | None) -> int | None:
    """:func:`job_memory` of this job, asked of ``scontrol``; None if it cannot say."""
    scontrol = shutil.which("scontrol", path=env.get("PATH", os.defpath))
    if not scontrol or not env.get("SLURM_JOB_ID"):
        return None
    try:
        proc = subprocess.run([scontrol, "show", "job", "-o", env["SLURM_JOB_ID"]],
                              capture_output=True, text=True, timeout=30, env=dict(env))
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return job_memory(proc.stdout, int(cpus) if cpus else None)


def _count(text: str | None) -> int | None:
    """A whole number of Slurm's environment ("8", or "8(x2)" as some variables say)."""
    if not text:
        return None
    match = re.match(r"\s*(\d+)", text)
    return int(match.group(1)) if match else None


def memory_split(memory: int, object_store_memory: int | None, shm_free: int) -> tuple[int, int]:
    """``(memory, object_store_memory)`` for a node that may use ``memory`` bytes in all,
    as ``aray start`` splits a machine's RAM: the store takes ``object_store_memory``, else
    30% (no more than ``shm_free``, what /dev/shm holds); tasks and actors get 70% less the
    store (the store's pages count against the job's memory limit too).

    Example:
        >>> memory_split(1000, None, 10**9), memory_split(1000, 100, 10**9)
        ((400, 300), (600, 100))
    """
    store = object_store_memory or min(int(memory * 0.3), shm_free)
    return max(0, int(memory * 0.7) - store), store


# --- roles and addresses -------------------------------------------------------------------


def default_token_file(env: Mapping[str, str] = os.environ) -> str | None:
    """Where, under Slurm with no token given, the head writes the job step's token for
    the other nodes to read: ``~/.aray/slurm-JOB.STEP.token``. None outside Slurm.

    Example:
        >>> default_token_file({"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0", "HOME": "/h"})
        '/h/.aray/slurm-42.0.token'
    """
    job = env.get("SLURM_JOB_ID")
    if not job:
        return None
    step = env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID") or "batch"
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".aray", f"slurm-{job}.{step}.token")


def local_addresses() -> set[str]:
    """The IP addresses of this machine's interfaces.

    Example:
        >>> "127.0.0.1" in local_addresses()
        True
    """
    import psutil

    return {addr.address.split("%")[0] for addrs in psutil.net_if_addrs().values()
            for addr in addrs if addr.family in (socket.AF_INET, socket.AF_INET6)}


def resolve(host: str) -> str:
    """``host`` as an IP address (the first one the resolver gives).

    Example:
        >>> resolve("127.0.0.1"), resolve("localhost") in ("127.0.0.1", "::1")
        ('127.0.0.1', True)
    """
    try:
        return str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
    except socket.gaierror as exc:
        raise ValueError(f"--address: cannot resolve the host {host!r}: {exc}") from None


def route_address(ip: str, port: int) -> str:
    """This machine's address on the way to ``ip`` (where a node listens for the others):
    the source address of a UDP socket connected there, which sends nothing.

    Example:
        >>> route_address("127.0.0.1", 6379)
        '127.0.0.1'
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((ip, port))
        return probe.getsockname()[0]


def is_head(env: Mapping[str, str], head_ip: str, min_nodes: int,
            hosts: list[str] | None = None, local: set[str] | None = None) -> bool:
    """Whether this task runs the head. In a Slurm step: on the first node of ``hosts``
    (default :func:`allocation_hosts`), known by ``SLURMD_NODENAME`` (or node 0 by
    ``SLURM_NODEID``). Elsewhere, as Ray decides: on the machine that has ``head_ip``
    (not a loopback address when more than one node is awaited, or every machine would be
    the head).

    Example:
        >>> env = {"SLURM_JOB_ID": "7", "SLURMD_NODENAME": "n2"}
        >>> is_head(env, "10.0.0.1", 2, hosts=["n1", "n2"])
        False
        >>> is_head({}, "127.0.0.1", 1, local={"127.0.0.1"})
        True
    """
    if in_slurm_step(env):
        hosts = allocation_hosts(env) if hosts is None else hosts
        name = env.get("SLURMD_NODENAME")
        if name and hosts:
            return name == hosts[0]
        return env.get("SLURM_NODEID") == "0"
    local = local_addresses() if local is None else local
    if min_nodes > 1:
        local = {ip for ip in local if not ipaddress.ip_address(ip).is_loopback}
    return head_ip in local


# --- the command ---------------------------------------------------------------------------


@dataclass
class Plan:
    """What one task of ``aray symmetric-run`` does (see :func:`plan`).

    Example:
        >>> Plan(head=False, host="10.0.0.1", port=6379, min_nodes=2, entrypoint=["true"],
        ...      start_options=[], token="t", token_file=None, wait_timeout=60).address
        '10.0.0.1:6379'
    """

    head: bool
    host: str  # the head's IP address
    port: int
    min_nodes: int
    entrypoint: list[str]
    start_options: list[str]  # passed to `aray start`
    token: str | None
    token_file: str | None
    wait_timeout: float
    node: str = ""  # this node's name (Slurm's), for messages

    @property
    def address(self) -> str:
        """The head's ``HOST:PORT``."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def plan(args: argparse.Namespace, start_parser: argparse.ArgumentParser,
         env: Mapping[str, str] = os.environ) -> Plan:
    """What this task does, from the options of ``aray symmetric-run`` (``args``) and the
    environment: its role, the head's address, how many nodes to wait for, the options of
    ``aray start`` (the user's, and the allocation's resources for those the user left
    out) and where the token comes from. Raises ValueError for options it cannot take.

    Example:
        >>> from aray.cli import build_parser, start_parser
        >>> args = build_parser().parse_args(
        ...     ["symmetric-run", "--address", "127.0.0.1:6390", "--num-cpus", "2",
        ...      "--", "python", "train.py"])
        >>> p = plan(args, start_parser(), {"ARAY_TOKEN": "t"})
        >>> p.head, p.address, p.min_nodes, p.entrypoint, p.start_options
        (True, '127.0.0.1:6390', 1, ['python', 'train.py'], ['--num-cpus', '2.0'])
    """
    from ._link import parse_address

    for name, option in (("head", "--head"), ("block", "--block"), ("port", "--port"),
                         ("node_ip_address", "--node-ip-address")):
        if getattr(args, name, None) not in (None, False):
            raise ValueError(f"{option} is symmetric-run's to set: it starts the head on the "
                             "address of --address, and every node in the foreground")
    if not args.entrypoint:
        raise ValueError("no entrypoint: give the command to run after `--`, e.g. "
                         "`aray symmetric-run --address HOST:6379 -- python train.py`")
    _, host, port = parse_address(args.address)
    if not port:
        raise ValueError(f"--address must be HOST:PORT, not {args.address!r}")
    head_ip = resolve(host)
    slurm = in_slurm_step(env)
    count = allocation_node_count(env) if slurm else None
    min_nodes = args.min_nodes if args.min_nodes is not None else (count or 1)
    if min_nodes < 1:
        raise ValueError(f"--min-nodes must be at least 1, not {min_nodes}")
    head = is_head(env, head_ip, min_nodes)
    if head and slurm and head_ip not in local_addresses():
        raise ValueError(
            f"this node ({env.get('SLURMD_NODENAME', '?')}) is the first of the allocation, "
            f"so it runs the head, but --address {args.address} ({head_ip}) is not one of "
            "its addresses: give the first node's address (the sbatch template shows how)")
    token = args.token or args.redis_password or None
    if token and args.token_file:
        raise ValueError("give the token one way: --token or --token-file, not both")
    token_file = args.token_file
    if not token_file:  # the environment's token, else the default file under Slurm
        token = token or env.get("ARAY_TOKEN") or None
        token_file = None if token else default_token_file(env)
    resources = allocation_resources(env) if slurm else allocation_resources({})
    if slurm and resources["memory"] is None:  # srun outside sbatch: ask the controller
        resources["memory"] = _scontrol_job_memory(env, resources["num_cpus"])
    return Plan(head=head, host=head_ip, port=port, min_nodes=min_nodes,
                entrypoint=list(args.entrypoint),
                start_options=start_options(args, start_parser, resources),
                token=token, token_file=token_file, wait_timeout=args.wait_timeout,
                node=env.get("SLURMD_NODENAME") or socket.gethostname())


def start_options(args: argparse.Namespace, start_parser: argparse.ArgumentParser,
                  resources: Mapping[str, Any] | None = None) -> list[str]:
    """The ``aray start`` options of ``args`` (those set to other than their default), as a
    command line, and the allocation's ``resources`` (:func:`allocation_resources`) for the
    ones the user left out: ``--num-cpus``, ``--num-gpus``, and the memory, as
    ``--object-store-memory`` and a ``memory`` entry of ``--resources`` (see
    :func:`memory_split`). What symmetric-run sets itself (:data:`OWN_OPTIONS`) is left out.

    Example:
        >>> from aray.cli import build_parser, start_parser
        >>> args = build_parser().parse_args(["symmetric-run", "--address", "h:1",
        ...                                   "--include-dashboard", "false", "--", "x"])
        >>> start_options(args, start_parser(), {"num_cpus": 4.0, "num_gpus": 0})
        ['--include-dashboard', 'False', '--num-cpus', '4.0', '--num-gpus', '0']
    """
    resources = resources or {}
    given = argparse.Namespace(**vars(args))
    if given.num_cpus is None and resources.get("num_cpus") is not None:
        extra = ["--num-cpus", str(resources["num_cpus"])]
    else:
        extra = []
    if given.num_gpus is None and resources.get("num_gpus") is not None:
        extra += ["--num-gpus", str(resources["num_gpus"])]
    try:
        custom = json.loads(given.resources or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"--resources must be JSON, e.g. '{{\"dataset\": 1}}': {exc}") from None
    if resources.get("memory") and isinstance(custom, dict) and "memory" not in custom:
        from .aio import _shm_free_bytes

        memory, store = memory_split(int(resources["memory"]), given.object_store_memory,
                                     _shm_free_bytes() or int(resources["memory"]))
        given.object_store_memory = store
        given.resources = json.dumps({**custom, "memory": memory})
    argv: list[str] = []
    for action in start_parser._actions:
        if not action.option_strings or action.dest in OWN_OPTIONS | {"help"}:
            continue
        value = getattr(given, action.dest, action.default)
        if value is None or value == action.default:
            continue
        option = max(action.option_strings, key=len)
        argv += [option] if action.nargs == 0 else [option, str(value)]
    return argv + extra


def symmetric_run(args: argparse.Namespace, start_parser: argparse.ArgumentParser) -> int:
    """``aray symmetric-run``: this task's part (see the module's docstring); returns the
    exit code (the entrypoint's on the head, 0 on the other nodes at the end of the job,
    128 + the signal's number when a signal stopped it).

    Example:
        >>> from aray.cli import build_parser, start_parser
        >>> args = build_parser().parse_args(["symmetric-run", "--address", "127.0.0.1:6391",
        ...     "--num-cpus", "1", "--include-dashboard", "false", "--", "true"])
        >>> symmetric_run(args, start_parser())  # doctest: +SKIP
        0
    """
    the_plan = plan(args, start_parser)
    return asyncio.run(_run(the_plan))


class _Stop:
    """The signal that asked this task to stop (SIGTERM from Slurm, SIGINT from srun)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.signum = 0

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self._set, signum)

    def _set(self, signum: int) -> None:
        if not self.signum:
            self.signum = signum
        self.event.set()

    async def sleep(self, seconds: float) -> None:
        """Sleep, or less if the signal comes."""
        try:
            await asyncio.wait_for(self.event.wait(), seconds)
        except TimeoutError:
            pass


class _Stopped(Exception):
    """A signal came: the task stops what it was waiting for."""


def _say(text: str) -> None:
    print(f"aray symmetric-run: {text}", file=sys.stderr, flush=True)


async def _run(p: Plan) -> int:
    stop = _Stop()
    stop.install()
    wrote_token = False
    node: _Node | None = None
    try:
        if p.head:
            token = p.token
            if token is None:
                token = secrets.token_hex(16)
                if p.token_file:
                    _write_token_file(p.token_file, token)
                    wrote_token = True
            node = await _start_node(p, token, ["--head", "--port", str(p.port)], p.host)
            return await _head(p, token, node, stop)
        token = await _worker_token(p, stop)
        await _wait_for_head(p, token, stop)
        node = await _start_node(p, token, ["--address", p.address],
                                 route_address(p.host, p.port))
        return await _worker(p, token, node, stop)
    except _Stopped:
        return 128 + stop.signum
    finally:
        if node is not None:
            await _stop_node(node)
        if wrote_token and p.token_file:
            _remove(p.token_file)


async def _start_node(p: Plan, token: str, role: list[str], ip: str) -> _Node:
    """``aray start --block`` for this node, its token in its environment (not in ``ps``).
    Its errors go to stderr; of what it prints, which tells how to use a cluster of ``aray
    start``, one line is said: where its session (and logs) are."""
    argv = [sys.executable, "-P", "-m", "aray", "start", *role, "--node-ip-address", ip,
            "--block", *p.start_options]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        env={**os.environ, "ARAY_TOKEN": token})
    assert proc.stdout is not None
    what = "the head node" if p.head else "a node"
    return _Node(proc, asyncio.ensure_future(_session_line(proc.stdout, what, p.node)))


@dataclass
class _Node:
    """An ``aray start --block`` process, and the task that reads what it prints."""

    proc: asyncio.subprocess.Process
    reader: asyncio.Future

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode


async def _session_line(stdout: asyncio.StreamReader, what: str, name: str) -> None:
    """Read what ``aray start`` prints until it ends; say its session directory."""
    while line := await stdout.readline():
        text = line.decode(errors="replace").strip()
        if text.startswith("Session:"):
            _say(f"started {what} on {name} (session {text.split(':', 1)[1].strip()})")


async def _stop_node(node: _Node) -> None:
    """SIGTERM to ``aray start --block``, which stops its node and removes its store;
    SIGKILL if it takes too long (its node then stops as its lifeline closes)."""
    if node.proc.returncode is None:
        try:
            node.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(node.proc.wait(), NODE_STOP_GRACE)
        except ProcessLookupError:
            pass
        except TimeoutError:
            node.proc.kill()
    await node.proc.wait()
    await node.reader


async def _alive_nodes(address: str, token: str) -> int | None:
    """How many nodes the head counts alive; None when it does not answer. A wrong token
    raises (AuthenticationError)."""
    from . import _protocol as P
    from ._link import ask
    from .exceptions import AuthenticationError

    try:
        reply = await ask(f"tcp://{address}", token, lambda r: P.GetClusterState(r),
                          name="symmetric-run", timeout=10)
    except AuthenticationError:
        raise
    except (ConnectionError, OSError, TimeoutError):
        return None
    return sum(1 for node in reply.nodes if node.get("Alive"))


async def _head(p: Plan, token: str, node: _Node, stop: _Stop) -> int:
    deadline = time.monotonic() + p.wait_timeout
    seen = 0
    while True:
        if stop.event.is_set():
            raise _Stopped
        if node.returncode is not None:
            raise RuntimeError(f"the head node did not start (`aray start` exited with code "
                               f"{node.returncode}; what it said is above)")
        alive = await _alive_nodes(p.address, token)
        if alive is not None and alive != seen:
            seen = alive
            _say(f"{alive} of {p.min_nodes} node{'s' if p.min_nodes > 1 else ''} joined the "
                 f"cluster at {p.address}")
        if alive is not None and alive >= p.min_nodes:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{seen} of {p.min_nodes} nodes joined within {p.wait_timeout:g} s "
                "(--wait-timeout): is `aray symmetric-run` running on every node (srun "
                "--ntasks-per-node=1), and can they reach the head's port?")
        await stop.sleep(POLL_INTERVAL)
    env = {**os.environ, "ARAY_ADDRESS": p.address, "ARAY_TOKEN": token}
    _say(f"running {shlex.join(p.entrypoint)[:200]}")
    try:
        proc = await asyncio.create_subprocess_exec(*p.entrypoint, env=env)
    except OSError as exc:
        _say(f"cannot run the entrypoint: {exc}")
        return 127
    waiter = asyncio.ensure_future(proc.wait())
    stopper = asyncio.ensure_future(stop.event.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not waiter.done():
        _say(f"signal {stop.signum}: stopping the entrypoint, then the cluster")
        try:
            proc.send_signal(stop.signum)
            await asyncio.wait_for(asyncio.shield(waiter), ENTRYPOINT_GRACE)
        except ProcessLookupError:
            pass
        except TimeoutError:
            proc.kill()
        await waiter
    code = proc.returncode if proc.returncode is not None else 1
    code = 128 - code if code < 0 else code
    _say(f"the entrypoint exited with code {code}; stopping the cluster")
    return code


async def _worker_token(p: Plan, stop: _Stop) -> str:
    """The token: given, else read from the token file once the head has written it."""
    if p.token:
        return p.token
    if not p.token_file:
        raise ValueError("no token for the cluster: set ARAY_TOKEN (the same on every node), "
                         "or pass --token-file PATH on a filesystem every node sees")
    deadline = time.monotonic() + p.wait_timeout
    while True:
        token = _read_token_file(p.token_file)
        if token:
            return token
        if time.monotonic() > deadline:
            raise TimeoutError(f"the head wrote no token file {p.token_file} within "
                               f"{p.wait_timeout:g} s: do all nodes see that directory?")
        await stop.sleep(POLL_INTERVAL)
        if stop.event.is_set():
            raise _Stopped


async def _wait_for_head(p: Plan, token: str, stop: _Stop) -> str:
    from .exceptions import AuthenticationError

    deadline = time.monotonic() + p.wait_timeout
    while True:
        try:
            if await _alive_nodes(p.address, token) is not None:
                return token
        except AuthenticationError:
            if not p.token_file or p.token:
                raise
            token = _read_token_file(p.token_file) or token  # an older job's, replaced
        if time.monotonic() > deadline:
            raise TimeoutError(f"the head at {p.address} did not answer within "
                               f"{p.wait_timeout:g} s (--wait-timeout)")
        await stop.sleep(POLL_INTERVAL)
        if stop.event.is_set():
            raise _Stopped


async def _worker(p: Plan, token: str, node: _Node, stop: _Stop) -> int:
    """Until the head goes away (the end of the job): then 0. A node that stops while the
    head still answers failed: its exit code."""
    misses = 0
    while not stop.event.is_set():
        alive = await _alive_nodes(p.address, token)
        misses = 0 if alive is not None else misses + 1
        if misses >= HEAD_GONE_AFTER:
            return 0
        if node.returncode is not None and alive is not None:
            _say(f"the node on {p.node} stopped (code {node.returncode}) while the head "
                 "still runs")
            return node.returncode or 1
        await stop.sleep(POLL_INTERVAL)
    return 128 + stop.signum


def _write_token_file(path: str, token: str) -> None:
    """A new token in ``path`` (mode 0600), in a directory of this user's that nobody else
    may write to (made 0700 if missing)."""
    from ._local import _write_private, check_private

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    check_private(directory, "token file's directory")
    _write_private(path, token)


def _read_token_file(path: str) -> str:
    from ._local import read_private

    try:
        return read_private(path, "token file").strip()
    except FileNotFoundError:
        return ""


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
