"""aray's operations as coroutines: the one implementation the sync API wraps.

Every coroutine here works from any event loop: when the runtime lives on another loop (a
sync ``aray.init()`` runs it on a private thread), the work hops to the runtime loop and the
result comes back.

Examples:
    >>> import asyncio, aray
    >>> async def main():
    ...     await aray.aio.init(num_cpus=1)
    ...     @aray.remote
    ...     def f(x):
    ...         return x + 1
    ...     value = await f.remote(1)
    ...     await aray.aio.shutdown()
    ...     return value
    >>> asyncio.run(main())
    2
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import numbers
import operator
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import _global
from . import _protocol as P
from ._core import Core
from ._objects import ObjectState
from ._portal import off_loop, on_runtime
from ._refs import ObjectRef
from ._runtime_env import check as check_runtime_env
from ._runtime_env import merge as merge_runtime_env
from .exceptions import GetTimeoutError

if TYPE_CHECKING:
    from ._actors import ActorHandle

R = TypeVar("R")

log = logging.getLogger("aray")

__all__ = ["init", "shutdown", "get", "wait", "put", "cancel", "nodes", "cluster_resources",
           "available_resources", "get_actor", "kill", "object_store_stats"]


# --- init / shutdown ----------------------------------------------------------------------


async def init(address: str | None = None, *, num_cpus: float | None = None,
               num_gpus: float | None = None, resources: dict | None = None,
               object_store_memory: int | None = None, log_to_driver: bool = True,
               ignore_reinit_error: bool = False, token: str | None = None,
               namespace: str | None = None, include_dashboard: bool | None = None,
               dashboard_host: str = "127.0.0.1", dashboard_port: int | None = None,
               _redis_password: str | None = None, runtime_env: dict | None = None,
               labels: dict | None = None) -> InitInfo:
    """Start a local cluster on the running loop and connect to it.

    Same arguments as :func:`aray.init`; returns once the cluster is ready.

    Examples:
        >>> import asyncio, aray
        >>> async def main():
        ...     info = await aray.aio.init(num_cpus=1)
        ...     await aray.aio.shutdown()
        ...     return sorted(info)
        >>> asyncio.run(main())
        ['address', 'dashboard_url', 'node_id', 'session_dir']
    """
    loop = asyncio.get_running_loop()
    core = existing_core(ignore_reinit_error)
    if core is None:
        # session folders, pruning old ones, starting the node process: not on this loop,
        # which is the application's
        plan = await loop.run_in_executor(None, functools.partial(
            prepare, address, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
            object_store_memory=object_store_memory, token=token or _redis_password,
            namespace=namespace, include_dashboard=include_dashboard,
            dashboard_host=dashboard_host, dashboard_port=dashboard_port,
            runtime_env=runtime_env, labels=labels))
        core = make_core(loop, plan, log_to_driver)
    await on_runtime(core.loop, connect(core))
    return init_info(core)


class InitInfo(dict):
    """What :func:`aray.init` returns: a dict of ``address`` (what ``aray.init(address=...)``
    and ``--address`` take to reach this cluster: ``HOST:PORT`` of a head that `aray start`
    runs, the session directory of a program's own cluster), ``node_id``, ``session_dir``
    and ``dashboard_url`` (also readable as attributes, as in Ray), and the attribute
    ``dashboard_login_url``: the dashboard's URL with the token, a link that logs in.

    The login link is an attribute, not a key, so that printing the dict shows no token.

    Examples:
        >>> info = InitInfo({"dashboard_url": "http://127.0.0.1:8265"}, "secret")
        >>> info, info.dashboard_url
        ({'dashboard_url': 'http://127.0.0.1:8265'}, 'http://127.0.0.1:8265')
        >>> info.dashboard_login_url
        'http://127.0.0.1:8265/?token=secret'
    """

    def __init__(self, fields: dict, token: str) -> None:
        super().__init__(fields)
        from ._local import login_url

        url = fields.get("dashboard_url", "")
        #: "" when there is no dashboard (or not yet: see :func:`init_info`)
        self.dashboard_login_url = login_url(url, token) if url else ""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def init_info(core: Core) -> InitInfo:
    """What ``init`` returns: the node, the session directory and the dashboard's URL
    ("" when there is none, or while a cluster started from inside a loop is starting)."""
    return InitInfo({"address": core.cluster_address, "node_id": core.node_id,
                     "session_dir": core.session_dir, "dashboard_url": core.dashboard_url},
                    core.token)


def bootstrap(loop: asyncio.AbstractEventLoop, address: str | None, *, log_to_driver: bool,
              ignore_reinit_error: bool, **options) -> Core:
    """The part of init that does not wait (for a sync ``init`` inside a running loop):
    start the node process and make the driver core."""
    existing = existing_core(ignore_reinit_error)
    if existing is not None:
        return existing
    return make_core(loop, prepare(address, **options), log_to_driver)


def prepare(address: str | None, *, num_cpus, num_gpus, resources, object_store_memory,
            token: str | None = None, namespace: str | None = None,
            include_dashboard: bool | None = None, dashboard_host: str = "127.0.0.1",
            dashboard_port: int | None = None, _redis_password: str | None = None,
            runtime_env: dict | None = None, labels: dict | None = None) -> dict:
    """Everything init does before a core exists, none of it on an event loop: check the
    options, find the cluster to join or start one (session folders, the node process).
    Returns what :func:`make_core` needs."""
    from ._local import LocalCluster, cluster_address, find_cluster

    dashboard = dashboard_config(include_dashboard, dashboard_host, dashboard_port)
    token = token or _redis_password or None
    if token is not None and not isinstance(token, str):
        raise TypeError("token must be a non-empty string")
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise TypeError("namespace must be a non-empty string")
    # a job's entrypoint (aray job submit) runs in the job's env: its tasks inherit it
    job_env = json.loads(os.environ.get("ARAY_JOB_RUNTIME_ENV") or "{}")
    plan: dict = {"namespace": namespace or "", "cluster": None, "dashboard_url": "",
                  "runtime_env": merge_runtime_env(
                      job_env, check_runtime_env(runtime_env, "aray.init()"))}
    address = address or os.environ.get("ARAY_ADDRESS") or None
    found = None
    if address is None:
        # as Ray's init after `ray start`: join the cluster `aray start` runs on this machine,
        # and start one for this program only when there is none ("local" always starts one)
        try:
            found = find_cluster("auto")
        except ConnectionError:  # none runs here
            found = None
    if address not in (None, "local") or found is not None:
        if (num_cpus is not None or num_gpus is not None or resources or object_store_memory
                or dashboard_port is not None or labels):
            raise ValueError(
                "num_cpus, num_gpus, resources, object_store_memory, labels and dashboard_port "
                "describe "
                "a new cluster; when connecting to an existing one "
                + ("(address=...)" if found is None else
                   f"(one that `aray start` runs on this machine, found at {cluster_address(found)}"
                   "; pass address='local' to start a new one instead)")
                + " leave them out, and give them to `aray start` instead")
        return _plan_to_join(plan, address, found, token)
    total = node_resources(num_cpus, num_gpus, resources, object_store_memory)
    cluster = LocalCluster(resources=total, object_store_memory=object_store_memory,
                           token=token, dashboard=dashboard, labels=init_labels(labels))
    cluster.spawn()
    plan["cluster"] = cluster
    plan["address"] = cluster.session_dir  # it has no TCP port: found by its session
    plan["core"] = dict(token=cluster.token, session_dir=cluster.session_dir,
                        node_address=cluster.node_address, head_address=cluster.head_address,
                        store_dir=cluster.store_dir)
    return plan


def _plan_to_join(plan: dict, address: str | None, found: dict | None,
                  token: str | None) -> dict:
    """:func:`prepare`'s plan for a cluster that runs already: a client's, through the
    head (``aray://``), or a driver's on a node of that cluster (``found`` on this
    machine, or at ``address``)."""
    from ._local import cluster_address, find_cluster

    if address is not None and address.startswith("aray://"):
        plan["core"] = client_settings(address, token)
        plan["address"] = address
        return plan
    info = found or find_cluster(address)
    if found is not None:
        print(f"aray: connecting to the cluster at {cluster_address(found)} that `aray "
              "start` runs on this machine (address='local' starts a new one)",
              file=sys.stderr, flush=True)
    plan["core"] = dict(token=token or os.environ.get("ARAY_TOKEN") or info["token"],
                        session_dir=info["session_dir"], node_address=info["node_address"],
                        head_address=info["head_address"], store_dir=info["store_dir"],
                        tcp_host=info.get("tcp_host", ""))
    plan["dashboard_url"] = info.get("dashboard_url", "")
    plan["address"] = cluster_address(info)
    return plan


def make_core(loop: asyncio.AbstractEventLoop, plan: dict, log_to_driver: bool) -> Core:
    """The driver's core on ``loop`` (its thread), from what :func:`prepare` found."""
    core = Core(loop=loop, role="driver", log_to_driver=log_to_driver, **plan["core"])
    core.cluster = plan["cluster"]
    core.dashboard_url = plan["dashboard_url"]
    core.namespace = plan["namespace"]
    core.cluster_address = plan["address"]
    core.runtime_envs.parent = plan["runtime_env"]
    core.on_log_lines = print_worker_lines
    _global.set_core(core)
    return core


def client_settings(address: str, token: str | None) -> dict:
    """The core of a driver in client mode (``aray://HOST:PORT``): it joins no node; the
    head's node agent leases it workers, and objects travel over the links."""
    import socket
    import tempfile

    from ._link import parse_address
    from ._local import find_cluster

    _, host, port = parse_address(address)
    token = token or os.environ.get("ARAY_TOKEN")
    if not token:  # a head on this machine: its session has the token
        try:
            token = find_cluster(address)["token"]
        except ConnectionError:
            pass
    if not token:
        raise ValueError(f"connecting to {address} needs the cluster's token: pass "
                         "aray.init(address=..., token=...) or set ARAY_TOKEN")
    # listen where the cluster can call back: the address this machine reaches the head from
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                       socket.SOCK_DGRAM) as probe:
        probe.connect((host, port))
        local_ip = probe.getsockname()[0]
    # (the pid in its name says whose it is: see tests/_leaks.py)
    session_dir = tempfile.mkdtemp(prefix=f"aray-client-{os.getpid()}-")
    return dict(token=token, session_dir=session_dir, node_address="",
                head_address=f"tcp://{host}:{port}", store_dir=os.path.join(session_dir, "store"),
                node_id="client-" + os.urandom(8).hex(), tcp_host=local_ip, client=True)


def existing_core(ignore_reinit_error: bool) -> Core | None:
    """The running core when a second init may reuse it; raise when it may not."""
    existing = _global.core_or_none()
    if existing is not None and not ignore_reinit_error:
        raise RuntimeError(
            "aray.init() was called twice: aray is already running in this process. "
            "Call aray.shutdown() first, or pass ignore_reinit_error=True.")
    return existing


async def connect(core: Core) -> None:
    """Wait for the node process, then open the driver's links (on the runtime loop)."""
    try:
        if core.cluster is not None:
            info = await core.cluster.wait_ready()
            core.dashboard_url = info.get("dashboard_url", "")
            if core.dashboard_url:  # not the token: the login link is init's to return
                print(f"aray: dashboard at {core.dashboard_url}", file=sys.stderr, flush=True)
        await core.start()
        env = core.runtime_envs.parent
        if env and env.get("config", {}).get("eager_install", True):
            # as Ray's eager_install: the job's env is uploaded and set up now, in a worker
            # its first task then takes, instead of when that task comes
            core.spawn(core.tasks.leases.prepare_env(env), name="runtime env (eager install)")
    except BaseException as exc:
        core.fail_start(exc)
        if _global.core_or_none() is core:
            _global.set_core(None)
        await core.stop()
        if core.cluster is not None:
            await off_loop(core.cluster.stop)
        raise


def dashboard_config(include: bool | None, host: str, port: int | None) -> dict | None:
    """The dashboard settings of a new cluster, checked: ``None`` for no dashboard."""
    if include is not None and not isinstance(include, bool):
        raise TypeError(f"include_dashboard must be True, False or None, not {include!r}")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                             or not 0 <= port <= 65535):
        raise ValueError(f"dashboard_port must be a port number from 0 (any free port) to "
                         f"65535, not {port!r}")
    if not isinstance(host, str) or not host:
        raise ValueError(f"dashboard_host must be a host name or IP address, not {host!r}")
    if include is False:
        return None
    return {"host": host, "port": port}


def node_resources(num_cpus, num_gpus, resources, object_store_memory) -> dict:
    import psutil

    from ._options import _number, validate_resources

    custom = validate_resources(resources)
    if num_cpus is None:
        num_cpus = psutil.cpu_count() or 1
    _number("num_cpus", num_cpus)
    model = ""
    if num_gpus is None:  # what the machine has (nvidia-smi, CUDA_VISIBLE_DEVICES)
        from .node.accelerators import detect

        num_gpus, model = detect()
    _number("num_gpus", num_gpus, integer=True)
    if object_store_memory is not None:
        object_store_memory = _number("object_store_memory", object_store_memory,
                                      integer=True, minimum=1, maximum=2**62)
    mem = psutil.virtual_memory().total
    # default: 30% of RAM, but no more than the shared-memory filesystem can hold
    store = int(object_store_memory or min(mem * 0.3, _shm_free_bytes() or mem))
    total = {"CPU": float(num_cpus), "memory": float(int(mem * 0.7) - store)}
    if num_gpus:
        total["GPU"] = float(num_gpus)
        if model:  # as Ray names it: tasks may ask for accelerator_type:H100
            total[f"accelerator_type:{model}"] = 1.0
    total["object_store_memory"] = float(store)
    total.update({k: float(v) for k, v in custom.items()})
    return total


def init_labels(labels: Any) -> dict:
    """``init(labels=...)`` checked: a dict of str -> str, as ``aray start --labels``.

    Example:
        >>> init_labels({"zone": "a"})
        {'zone': 'a'}
    """
    from .node.labels import LabelError, check_labels

    try:
        return check_labels(labels, "init(labels=...)")
    except LabelError as exc:
        raise ValueError(f"init(labels=...): {exc}") from None


def _shm_free_bytes() -> int:
    import shutil

    from .store.shm import default_root

    try:
        return shutil.disk_usage(default_root()).free
    except OSError:
        return 0


#: the driver writes a worker's lines to its terminal in strings of about this size
_WRITE_SIZE = 64 * 1024


def print_worker_lines(msg: P.LogLines) -> None:
    """Echo a worker's output on the driver's terminal, prefixed like ``(f pid=123)``, one
    line per line (or piece of a long or unfinished line) the node agent sent."""
    stream = sys.stdout if msg.stream == 1 else sys.stderr
    prefix = f"({msg.name} pid={msg.pid}) "
    try:
        parts: list[str] = []
        size = 0
        for line in msg.lines:
            parts += (prefix, line, "\n")
            size += len(line)
            if size >= _WRITE_SIZE:  # a message of many lines is never one big string
                stream.write("".join(parts))
                parts, size = [], 0
        stream.write("".join(parts))
        stream.flush()
    except (OSError, ValueError):
        pass


async def shutdown() -> None:
    """Stop the runtime: close links, stop the local cluster and its workers.

    Examples:
        >>> import asyncio, aray
        >>> async def main():
        ...     await aray.aio.init(num_cpus=1)
        ...     await aray.aio.shutdown()
        ...     return aray.is_initialized()
        >>> asyncio.run(main())
        False
    """
    core = _global.core_or_none()
    if core is None:
        return
    _global.set_core(None)
    await on_runtime(core.loop, core.stop())
    if core.cluster is not None:
        await off_loop(core.cluster.stop)


# --- objects ------------------------------------------------------------------------------


def as_ref_list(value: Any, what: str) -> tuple[list[ObjectRef], bool]:
    """``(refs, single)`` from one ref or a list/tuple of refs; TypeError otherwise."""
    if isinstance(value, ObjectRef):
        return [value], True
    if isinstance(value, (list, tuple)):
        if set(map(type, value)) <= {ObjectRef}:  # C-speed for long lists
            return list(value), False
        i, item = next((i, x) for i, x in enumerate(value) if not isinstance(x, ObjectRef))
        raise TypeError(f"aray.{what}() expects ObjectRefs, but item {i} of the list is a "
                        f"{type(item).__name__} ({item!r:.60})")
    raise TypeError(
        f"aray.{what}() expects an ObjectRef or a list of ObjectRefs, got a "
        f"{type(value).__name__} ({value!r:.60})")


_ref_id = operator.attrgetter("_id")


def check_timeout(timeout: Any) -> None:
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
            raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")


@overload
async def get(object_refs: ObjectRef[R], *, timeout: float | None = None) -> R: ...
@overload
async def get(object_refs: Sequence[ObjectRef[R]], *, timeout: float | None = None) -> list[R]: ...
async def get(object_refs: ObjectRef[Any] | Sequence[ObjectRef[Any]], *,
              timeout: float | None = None) -> Any:
    """Wait for one ref (or a list of refs) and return the value(s).

    Raises the task's error (a :class:`~aray.exceptions.TaskError` that is also the original
    exception type) or :class:`~aray.exceptions.GetTimeoutError` after ``timeout`` seconds.

    Examples:
        >>> import asyncio, aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> refs = [aray.put(i) for i in range(3)]
        >>> asyncio.run(aray.aio.get(refs))
        [0, 1, 2]
    """
    refs, single = as_ref_list(object_refs, "get")
    check_timeout(timeout)
    core = _global.core()
    return await on_runtime(core.loop, get_values(core, refs, single, timeout, False))


async def get_values(core: Core, refs: list[ObjectRef], single: bool, timeout: float | None,
                     blocking: bool) -> Any:
    """Runs on the runtime loop; ``blocking`` when a thread waits on it (sync ``get``)."""
    await core.wait_ready()
    await core.waits.wait_entries(refs, len(refs), timeout, blocking, fail_fast=True)
    entries = [core.ownership.entry_for(r) for r in refs]
    for entry in entries:  # one failed: its error now, whatever the others do (as in Ray)
        if entry.state is ObjectState.FAILED:
            core.fetcher.materialize(entry)  # raises the error
    missing = sum(1 for e in entries if not e.ready)
    if missing:
        raise GetTimeoutError(
            f"aray.get() timed out after {timeout} s: {missing} of {len(refs)} objects are not "
            "ready yet. Raise the timeout, or use aray.wait() to take what is ready.")
    await core.fetcher.fetch_entries(entries)  # copies of what lives on other nodes
    values = [core.fetcher.materialize(e) for e in entries]
    return values[0] if single else values


async def wait(object_refs: Sequence[ObjectRef[R]], *, num_returns: int = 1,
               timeout: float | None = None, fetch_local: bool = True
               ) -> tuple[list[ObjectRef[R]], list[ObjectRef[R]]]:
    """Wait until ``num_returns`` refs are ready or ``timeout`` seconds pass.

    Returns ``(ready, not_ready)``: ``ready`` holds at most ``num_returns`` refs, both lists
    keep the input order, and together they hold every input ref.

    Examples:
        >>> import asyncio, aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> refs = [aray.put(1), aray.put(2)]
        >>> ready, rest = asyncio.run(aray.aio.wait(refs, num_returns=2))
        >>> len(ready), len(rest)
        (2, 0)
    """
    refs = check_wait_args(object_refs, num_returns, timeout)
    core = _global.core()
    ready = split_ready(core, refs, num_returns)
    if ready is not None:
        return ready
    return await on_runtime(core.loop, wait_refs(core, refs, num_returns, timeout, False))


def check_wait_args(object_refs: Sequence[ObjectRef[R]], num_returns: int,
                    timeout: float | None) -> list[ObjectRef[R]]:
    if isinstance(object_refs, ObjectRef):
        raise TypeError("aray.wait() expects a list of ObjectRefs, not a single ObjectRef; "
                        "use aray.wait([ref])")
    refs, _ = as_ref_list(object_refs, "wait")
    if len(set(map(_ref_id, refs))) != len(refs):
        raise ValueError("aray.wait() requires a list of unique ObjectRefs; this one has "
                         "duplicates")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int):
        raise TypeError(f"num_returns must be an int, got {num_returns!r}")
    if num_returns < 1 and refs:
        raise ValueError(f"num_returns must be at least 1, got {num_returns}")
    if num_returns > len(refs) and refs:
        raise ValueError(f"num_returns ({num_returns}) cannot be greater than the number of "
                         f"ObjectRefs ({len(refs)})")
    check_timeout(timeout)
    return refs


async def wait_refs(core: Core, refs: list[ObjectRef[R]], num_returns: int,
                    timeout: float | None, blocking: bool
                    ) -> tuple[list[ObjectRef[R]], list[ObjectRef[R]]]:
    """Runs on the runtime loop."""
    if not refs:
        return [], []
    await core.wait_ready()
    await core.waits.wait_entries(refs, num_returns, timeout, blocking)
    return split_ready(core, refs, num_returns, force=True)  # type: ignore[return-value]


def split_ready(core: Core, refs: list[ObjectRef[R]], num_returns: int, force: bool = False
                ) -> tuple[list[ObjectRef[R]], list[ObjectRef[R]]] | None:
    """``(ready, not_ready)`` as ``wait`` returns them. From another thread (not ``force``)
    only when every ref is ready already, else None: refs submitted a moment ago may not be
    registered on the loop yet, so a partial view could pick the wrong ones."""
    entries = core.objects.entries
    flags = [(e := entries.get(r._id)) is not None and e.ready for r in refs]
    n_ready = sum(flags)
    if n_ready < len(refs) and not force:
        return None
    if n_ready == len(refs) and num_returns >= n_ready:
        return list(refs), []
    ready: list[ObjectRef[R]] = []
    not_ready: list[ObjectRef[R]] = []
    for ref, is_ready in zip(refs, flags):
        if is_ready and len(ready) < num_returns:
            ready.append(ref)
        else:
            not_ready.append(ref)
    return ready, not_ready


async def put(value: R) -> ObjectRef[R]:
    """Store ``value`` (serialized once) and return a ref to it.

    Examples:
        >>> import asyncio, aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> async def main():
        ...     ref = await aray.aio.put({"a": 1})
        ...     return await ref
        >>> asyncio.run(main())
        {'a': 1}
    """
    core = _global.core()
    if _small(value):
        return core.ownership.put(value)
    # pickling and writing a large value would stall this loop (the application's): do it
    # in a thread, which can also use the node's arena for it
    return await asyncio.to_thread(core.ownership.put, value)


#: values of these types, below this size, are put on the caller's loop: a thread would
#: cost more than pickling them
_SMALL_TYPES = (type(None), bool, int, float, complex, str, bytes)
_SMALL_SIZE = 64 * 1024


def _small(value: Any) -> bool:
    return isinstance(value, _SMALL_TYPES) and sys.getsizeof(value) < _SMALL_SIZE


async def cancel(ref: ObjectRef[Any], *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that produces ``ref``; see :func:`aray.cancel`.

    Examples:
        >>> import asyncio, aray, time
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote
        ... def slow():
        ...     time.sleep(30)
        >>> async def main():
        ...     ref = slow.remote()
        ...     await aray.aio.cancel(ref)
        ...     try:
        ...         await ref
        ...     except aray.exceptions.TaskCancelledError:
        ...         return "cancelled"
        >>> asyncio.run(main())
        'cancelled'
    """
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"aray.cancel() expects an ObjectRef, got a {type(ref).__name__}")
    core = _global.core()
    core.call_soon(core.cancels.cancel, ref, bool(force), bool(recursive))


# --- cluster ------------------------------------------------------------------------------


async def nodes() -> list[dict]:
    """One dict per node (``NodeID``, ``Alive``, ``NodeManagerAddress``, ``Resources``).

    Examples:
        >>> import asyncio, aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> [n["Alive"] for n in asyncio.run(aray.aio.nodes())]
        [True]
    """
    core = _global.core()
    return await on_runtime(core.loop, core.cluster_state())


async def cluster_resources() -> dict:
    """Total resources of the alive nodes, e.g. ``{"CPU": 2.0, ...}``.

    Examples:
        >>> import asyncio, aray
        >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
        >>> asyncio.run(aray.aio.cluster_resources())["CPU"]
        2.0
    """
    return _sum_resources(await nodes(), "Resources")


async def available_resources() -> dict:
    """Resources free right now on the alive nodes (keys with nothing free are left out).

    Examples:
        >>> import asyncio, aray
        >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
        >>> "CPU" in asyncio.run(aray.aio.available_resources())
        True
    """
    free = _sum_resources(await nodes(), "Available")
    return {k: v for k, v in free.items() if v > 0}


def _sum_resources(node_list: list[dict], key: str) -> dict:
    total: dict[str, float] = {}
    for node in node_list:
        if node["Alive"]:
            for name, amount in node[key].items():
                total[name] = round(total.get(name, 0.0) + amount, 4)
    return total


# --- actors -------------------------------------------------------------------------------


async def get_actor(name: str, namespace: str | None = None) -> ActorHandle[Any]:
    """The handle of the live actor called ``name`` (in ``namespace``, default: this job's).

    Raises ValueError when there is no such actor.

    Examples:
        >>> import asyncio, aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote
        ... class Box:
        ...     def get(self):
        ...         return "inside"
        >>> box = Box.options(name="box").remote()
        >>> async def main():
        ...     same = await aray.aio.get_actor("box")
        ...     return await same.get.remote()
        >>> asyncio.run(main())
        'inside'
    """
    from ._actors import ActorHandle

    if not isinstance(name, str) or not name:
        raise TypeError("get_actor() needs the actor's name as a non-empty string")
    core = _global.core()
    info = await on_runtime(core.loop, core.actors.lookup(name, namespace or "",
                                                          core.current_job_id()))
    if not info:
        where = f"namespace {namespace!r}" if namespace else "this job's namespace"
        raise ValueError(
            f"there is no live actor named {name!r} in {where}. Create one with "
            f"Cls.options(name={name!r}).remote(), or pass namespace= if it lives elsewhere.")
    return ActorHandle(info["actor_id"], info["meta"])


async def kill(actor: ActorHandle[Any], *, no_restart: bool = True) -> None:
    """End an actor now; see :func:`aray.kill`.

    Examples:
        >>> import asyncio, aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote
        ... class Worker:
        ...     def ping(self):
        ...         return "pong"
        >>> w = Worker.remote()
        >>> asyncio.run(aray.aio.kill(w))
    """
    from ._actors import ActorHandle

    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() expects an actor handle, got a {type(actor).__name__}")
    core = _global.core()
    await on_runtime(core.loop, core.actors.kill(actor.actor_id, bool(no_restart)))


async def object_store_stats() -> dict:
    """Figures of this node's object store.

    ``used_bytes`` (in shared memory), ``capacity_bytes``, ``num_objects``, and
    ``spilled_bytes``/``num_spilled`` (moved to disk when memory ran over capacity), and
    ``arena_bytes``/``arena_in_use_bytes`` (the arena that holds large objects).

    Examples:
        >>> import asyncio, aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> stats = asyncio.run(aray.aio.object_store_stats())
        >>> stats["num_objects"] >= 0 and stats["capacity_bytes"] > 0
        True
    """
    core = _global.core()
    stats, _objects = await on_runtime(core.loop, core.store_stats())
    return stats
