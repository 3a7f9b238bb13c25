"""The sync API: thin wrappers that run :mod:`aray.aio`'s coroutines on the runtime loop."""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import _global, aio
from ._actor_groups import warn_blocking_get
from ._options import check_init_argument
from ._portal import LoopThread, call, on_loop, refuse_on_loop
from ._refs import ObjectRef
from ._runtime_context import RuntimeContext, current_task

if TYPE_CHECKING:
    from ._actors import ActorHandle

R = TypeVar("R")

log = logging.getLogger("aray")

_atexit_registered = False


def init(address: str | None = None, *, num_cpus: float | None = None,
         num_gpus: float | None = None, resources: dict | None = None,
         object_store_memory: int | None = None, log_to_driver: bool = True,
         ignore_reinit_error: bool = False, token: str | None = None,
         namespace: str | None = None, include_dashboard: bool | None = None,
         dashboard_host: str = "127.0.0.1", dashboard_port: int | None = None,
         _redis_password: str | None = None, runtime_env: dict | None = None,
         labels: dict | None = None, **ray_arguments: Any) -> aio.InitInfo:
    """Start a local aray cluster (head, node agent, workers) and connect this process.

    Args:
        address: ``None`` starts a new local cluster for this program. ``"auto"`` connects
            to the cluster ``aray start --head`` started on this machine, ``"HOST:PORT"``
            (or ``"aray://HOST:PORT"``) to the one whose head listens there. The
            ``ARAY_ADDRESS`` environment variable is used when no address is given; the
            token comes from ``token=``, ``ARAY_TOKEN`` or the cluster's session directory.
        num_cpus: CPUs to offer (default: the machine's logical CPU count).
        num_gpus: GPUs to offer (default: those ``nvidia-smi`` lists, within
            ``CUDA_VISIBLE_DEVICES``; see docs/gpus.md).
        resources: custom resources, e.g. ``{"dataset": 1}``.
        object_store_memory: object store capacity in bytes (default 30% of RAM).
        log_to_driver: echo workers' stdout/stderr here, prefixed with ``(task pid=N)``.
        ignore_reinit_error: make a second ``init`` a no-op instead of an error.
        token: the cluster's secret token (generated when not given). ``_redis_password``
            is accepted as an alias, for scripts written for Ray.
        namespace: where this job's named actors live (default: a namespace of its own).
        include_dashboard: ``False`` starts the new cluster without its dashboard.
        dashboard_host: where the dashboard listens (default loopback only).
        dashboard_port: the dashboard's port; by default 8265, or any free port if 8265 is
            taken; ``0`` for any free port.
        runtime_env: the job's runtime env, which its tasks and actors inherit (and merge
            their own with): ``working_dir``, ``py_modules``, ``env_vars``, ``excludes``,
            ``pip``, ``config``. See docs/runtime-env.md.
        labels: the new cluster's node's labels, str -> str (``{"zone": "a"}``), for
            ``label_selector`` and ``NodeLabelSchedulingStrategy``; aray adds
            ``ray.io/node-id``. See docs/scheduling.md.

    Returns a dict with ``node_id``, ``session_dir`` and ``dashboard_url``, also readable as
    attributes, and the attribute ``dashboard_login_url``: the dashboard's URL with the
    token, a link that logs in (not a key, so printing the dict shows no token). A new
    cluster's dashboard URL, without the token, is also printed to stderr.

    Called from sync code it returns once the cluster is ready. Called inside a running
    event loop it binds aray to that loop, returns at once without blocking it, and every
    operation waits for the cluster to be up.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
        >>> aray.is_initialized()
        True
    """
    for key, value in ray_arguments.items():
        check_init_argument(key, value)
    options: dict[str, Any] = dict(
        num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
        object_store_memory=object_store_memory, log_to_driver=log_to_driver,
        ignore_reinit_error=ignore_reinit_error, token=token, namespace=namespace,
        include_dashboard=include_dashboard, dashboard_host=dashboard_host,
        dashboard_port=dashboard_port, _redis_password=_redis_password,
        runtime_env=runtime_env, labels=labels)
    _register_atexit()
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return _init_sync(address, options)
    existing = _global.core_or_none()
    core = aio.bootstrap(loop, address, **options)
    if core is not existing:
        core.spawn(aio.connect(core), name="connect")
    return aio.init_info(core)


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_shutdown_at_exit)
        _atexit_registered = True


def _init_sync(address: str | None, options: dict[str, Any]) -> aio.InitInfo:
    """init() from sync code: the runtime gets a loop on a thread of its own."""
    running = aio.existing_core(options["ignore_reinit_error"])
    if running is not None:
        return aio.init_info(running)
    thread = LoopThread()
    try:
        info = call(thread.loop, aio.init, address, what="init", **options)
    except BaseException:
        thread.stop()
        raise
    _global.core().loop_thread = thread
    return info


def is_initialized() -> bool:
    """Whether ``aray.init()`` has been called (and not shut down) in this process.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> aray.is_initialized()
        True
    """
    return _global.core_or_none() is not None


def shutdown() -> None:
    """Stop the runtime and the local cluster it started; leaves no process behind.

    Safe to call twice. Inside the event loop that runs aray prefer
    ``await aray.aio.shutdown()``; a sync call there stops the cluster without waiting for
    the loop.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> aray.shutdown()
        >>> aray.is_initialized()
        False
    """
    core = _global.core_or_none()
    if core is None:
        return
    if core.loop_thread is not None:
        try:
            call(core.loop, aio.shutdown, what="shutdown")
        finally:
            core.loop_thread.stop()
        return
    # aray runs on an application's loop
    if core.loop.is_running() and not on_loop(core.loop):
        call(core.loop, aio.shutdown, what="shutdown")
        return
    _global.set_core(None)
    if core.loop.is_running():  # we are on that loop: close links in the background
        core.loop.create_task(core.stop())
    if core.cluster is not None:
        # the node process stops when its lifeline closes; waiting for it (up to its stop
        # timeout) would stall the loop we are on, so a thread waits and reaps it
        core.cluster.close_lifeline()
        threading.Thread(target=core.cluster.stop, name="aray-node-reaper").start()


def _shutdown_at_exit() -> None:
    core = _global.core_or_none()
    try:
        shutdown()
    except Exception:
        # the process ends anyway: say why the shutdown failed, and stop what it started
        log.exception("aray: shutdown at exit failed")
        if core is not None and core.cluster is not None:
            core.cluster.stop()


@overload
def get(object_refs: ObjectRef[R], *, timeout: float | None = None) -> R: ...
@overload
def get(object_refs: Sequence[ObjectRef[R]], *, timeout: float | None = None) -> list[R]: ...
def get(object_refs: ObjectRef[Any] | Sequence[ObjectRef[Any]], *,
        timeout: float | None = None) -> Any:
    """Block until the value(s) of ``object_refs`` are ready and return them.

    Takes one ref (returns its value) or a list of refs (returns a list, in order). In async
    code, ``await ref`` or ``await aray.aio.get(...)`` instead. Inside a task, a blocked
    ``get`` lends the task's CPU back to its node, so nested tasks cannot deadlock.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote
        ... def f(x):
        ...     return x * x
        >>> aray.get(f.remote(4)), aray.get([f.remote(1), f.remote(2)])
        (16, [1, 4])
    """
    refs, single = aio.as_ref_list(object_refs, "get")
    aio.check_timeout(timeout)
    core = _global.core_or_init()
    refuse_on_loop(core.loop, "get")
    warn_blocking_get()  # (once, in an async actor's method: it blocks that loop)
    values = core.waits.ready_values(refs)  # already here: no need to wake the runtime loop
    if values is None and single and timeout is None and core.role != "worker":
        # the light wait of one ref, outside a worker (where a blocked get lends its CPU)
        core.waits.block_until_ready(refs[0])
        values = core.waits.ready_values(refs)  # (None if it lives on another node)
    if values is None:
        return call(core.loop, aio.get_values, core, refs, single, timeout, True, what="get")
    return values[0] if single else values


def wait(object_refs: Sequence[ObjectRef[R]], *, num_returns: int = 1,
         timeout: float | None = None, fetch_local: bool = True
         ) -> tuple[list[ObjectRef[R]], list[ObjectRef[R]]]:
    """Block until ``num_returns`` of the refs are ready, or ``timeout`` seconds pass.

    Returns ``(ready, not_ready)`` with the input order kept; ``timeout`` is in seconds.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> refs = [aray.put(i) for i in range(3)]
        >>> ready, not_ready = aray.wait(refs, num_returns=2)
        >>> len(ready), len(not_ready)
        (2, 1)
    """
    refs = aio.check_wait_args(object_refs, num_returns, timeout)
    core = _global.core_or_init()
    refuse_on_loop(core.loop, "wait")
    # every ref ready already (or none given): no need to wake the runtime loop
    return aio.split_ready(core, refs, num_returns, force=not refs) or call(
        core.loop, aio.wait_refs, core, refs, num_returns, timeout, True, what="wait")


def put(value: R) -> ObjectRef[R]:
    """Store ``value`` once and return a ref; pass the ref to many tasks instead of the value.

    Like ``f.remote()``, ``put`` never waits for the runtime loop: it serializes in the
    calling thread and hands the object over.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> ref = aray.put("hello")
        >>> aray.get(ref)
        'hello'
    """
    return _global.core_or_init().ownership.put(value)


def cancel(ref: ObjectRef[Any], *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that produces ``ref``.

    A queued task is dropped; a running one gets :class:`~aray.exceptions.TaskCancelledError`
    raised inside it (``force=True`` kills its worker instead). ``get`` on the ref then raises
    ``TaskCancelledError``. Cancelled tasks are not retried. With ``recursive`` (the default)
    the tasks it submitted are cancelled too; a killed worker always takes the workers it
    leased for its own tasks with it.

    Examples:
        >>> import aray, time
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote
        ... def slow():
        ...     time.sleep(30)
        >>> ref = slow.remote()
        >>> aray.cancel(ref)
        >>> try:
        ...     aray.get(ref)
        ... except aray.exceptions.TaskCancelledError:
        ...     print("cancelled")
        cancelled
    """
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"aray.cancel() expects an ObjectRef, got a {type(ref).__name__}")
    core = _global.core()
    core.call_soon(core.cancels.cancel, ref, bool(force), bool(recursive))


def nodes() -> list[dict]:
    """The cluster's nodes, one dict each, with Ray's keys (``NodeID``, ``Alive``, ...).

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> len(aray.nodes()) >= 1
        True
    """
    return call(_global.core().loop, aio.nodes, what="nodes")


def cluster_resources() -> dict:
    """Total resources of the cluster, e.g. ``{"CPU": 2.0, "memory": ..., ...}``.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
        >>> aray.cluster_resources()["CPU"] >= 1
        True
    """
    return call(_global.core().loop, aio.cluster_resources, what="cluster_resources")


def available_resources() -> dict:
    """Resources free right now (resources with nothing free are left out).

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
        >>> "CPU" in aray.available_resources()
        True
    """
    return call(_global.core().loop, aio.available_resources, what="available_resources")


def get_runtime_context() -> RuntimeContext:
    """Where the calling code runs: node, job, task and actor ids.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> aray.get_runtime_context().get_task_id() is None  # in the driver
        True
    """
    _global.core()
    return RuntimeContext()


def get_gpu_ids() -> list:
    """The GPU ids assigned to the running task (``[]`` in a driver or without GPUs).

    Examples:
        >>> import aray
        >>> aray.get_gpu_ids()
        []
    """
    task = current_task.get()
    return list(task.gpu_ids) if task is not None else []


def get_actor(name: str, namespace: str | None = None) -> ActorHandle[Any]:
    """The handle of the live actor called ``name``; ValueError if there is none.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote
        ... class Registry:
        ...     def __init__(self):
        ...         self.items = []
        ...     def add(self, x):
        ...         self.items.append(x)
        ...         return len(self.items)
        >>> _ = Registry.options(name="registry").remote()
        >>> aray.get(aray.get_actor("registry").add.remote("a"))
        1
    """
    return call(_global.core().loop, aio.get_actor, name, namespace, what="get_actor")


def kill(actor: ActorHandle[Any], *, no_restart: bool = True) -> None:
    """End an actor at once: its pending and later calls raise ``ActorDiedError``.

    With ``no_restart=False`` an actor created with ``max_restarts`` is restarted instead.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote
        ... class Worker:
        ...     def ping(self):
        ...         return "pong"
        >>> w = Worker.remote()
        >>> aray.get(w.ping.remote())
        'pong'
        >>> aray.kill(w)
        >>> try:
        ...     aray.get(w.ping.remote())
        ... except aray.exceptions.ActorDiedError:
        ...     print("dead")
        dead
    """
    call(_global.core().loop, aio.kill, actor, no_restart=no_restart, what="kill")


def object_store_stats() -> dict:
    """Figures of this node's object store: ``used_bytes``, ``capacity_bytes``,
    ``num_objects``, ``spilled_bytes``, ``num_spilled``, and ``arena_bytes`` /
    ``arena_in_use_bytes`` (the arena that holds large objects, and how much of it is taken,
    counting regions still pinned by readers).

    Examples:
        >>> import aray, numpy as np
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> ref = aray.put(np.zeros(1_000_000))  # 8 MB: goes to shared memory
        >>> aray.object_store_stats()["used_bytes"] >= 8_000_000
        True
    """
    return call(_global.core().loop, aio.object_store_stats, what="object_store_stats")
