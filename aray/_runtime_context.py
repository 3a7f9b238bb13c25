"""What the running code can learn about where it runs: node, job, task, actor.

A worker sets :data:`current_task` for each task or actor call it runs (on the call's own
thread or asyncio task); :class:`RuntimeContext` reads it, and falls back to the process's
core (the driver's job, node and namespace) where no task runs.
"""

from __future__ import annotations

import contextvars
import dataclasses
from typing import TYPE_CHECKING, Any

from . import _global

if TYPE_CHECKING:
    from ._actors import ActorHandle


@dataclasses.dataclass
class TaskContext:
    task_id: bytes  # b"" in an actor's constructor
    job_id: str
    name: str
    gpu_ids: list
    actor_id: str = ""
    owner: str = ""  # the caller's core: it owns the results
    resources: dict | None = None  # what the task holds, e.g. {"CPU": 1.0}; None: not told
    namespace: str | None = None  # its job's namespace; None: not told
    #: in an actor (its constructor and its calls): the spec it was created from, with
    #: "hold" (its resources) and, where the creator or head sent them, "name",
    #: "job_namespace", "restarts" (how often it restarted before this start) and "meta"
    actor: dict | None = None
    #: a task's placement group as its caller sent it ({} for none; an actor's is in
    #: ``actor["scheduling_strategy"]``)
    placement_group: dict = dataclasses.field(default_factory=dict)


#: the task this thread or asyncio task is executing (None in a driver)
current_task: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "aray_current_task", default=None)


def current_group_wire() -> dict:
    """The placement group of the running task or actor, as its strategy's wire form
    (``{"kind": "pg", "pg_id", "index", "capture", "bundles"}``), or ``{}``."""
    task = current_task.get()
    if task is None:
        return {}
    wire = task.placement_group or ((task.actor or {}).get("scheduling_strategy") or {})
    return wire if wire.get("kind") == "pg" else {}


def captured_strategy() -> dict:
    """The strategy of a task or actor created with none from inside a task or actor whose
    group captures its children (``placement_group_capture_child_tasks``): any bundle of
    that group; else ``{}``."""
    wire = current_group_wire()
    return dict(wire, index=-1) if wire.get("capture") else {}


class NotCarriedError(RuntimeError):
    """A fact of the running task that did not reach its worker (the caller or the head
    runs an older aray than the worker)."""


def _not_carried(what: str) -> NotCarriedError:
    return NotCarriedError(
        f"{what} did not reach this worker with its task: the process that sent the task "
        "runs another version of aray; run one version across the cluster")


def _in_actor(what: str) -> TaskContext:
    task = current_task.get()
    if task is None or not task.actor_id:
        raise AssertionError(f"{what} is only available inside an actor (its constructor or "
                             "its methods), not in a task or the driver")
    return task


def _actor_fact(task: TaskContext, key: str, what: str) -> Any:
    spec = task.actor or {}
    if key not in spec:
        raise _not_carried(what)
    return spec[key]


class RuntimeContext:
    """Facts about the current process and task, from :func:`aray.get_runtime_context`.

    The methods and properties are Ray's: ids are hex strings, and what has no value where
    it is asked (the task id in a driver, the actor id in a task) is None.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> ctx = aray.get_runtime_context()
        >>> len(ctx.get_node_id()) > 0, ctx.get_task_id(), ctx.get_actor_id()
        (True, None, None)
        >>> @aray.remote
        ... def where():
        ...     ctx = aray.get_runtime_context()
        ...     return ctx.get_task_id() is not None, ctx.get_job_id()
        >>> aray.get(where.remote()) == (True, ctx.get_job_id())
        True
    """

    # --- process, node, job --------------------------------------------------------------
    def get_node_id(self) -> str:
        """The id (hex) of the node this code runs on."""
        return _global.core().node_id

    def get_node_labels(self) -> dict[str, str]:
        """The labels of the node this code runs on (``ray.io/node-id`` and the node's own:
        see docs/scheduling.md), as :func:`aray.nodes` shows them; a question to the head.

        Example:
            >>> import aray
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> ctx = aray.get_runtime_context()
            >>> ctx.get_node_labels()["ray.io/node-id"] == ctx.get_node_id()
            True
        """
        from ._api import nodes

        node_id = self.get_node_id()
        return next((dict(n.get("Labels", {})) for n in nodes() if n["NodeID"] == node_id), {})

    def get_job_id(self) -> str:
        """The id (hex) of the job: the driver that started this work."""
        task = current_task.get()
        return task.job_id if task is not None else _global.core().job_id

    def get_worker_id(self) -> str:
        """The id of this worker process ("" in a driver)."""
        return _global.core().worker_id

    @property
    def namespace(self) -> str:
        """The namespace of the job (named actors are looked up there by default).

        Examples:
            >>> import aray
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)  # or init(namespace=...)
            >>> aray.get_runtime_context().namespace.startswith("anonymous-")
            True
        """
        task = current_task.get()
        if task is None:
            return _driver_namespace()
        if task.namespace:  # ("": its caller did not know it either)
            return task.namespace
        return _actor_fact(task, "job_namespace", "the namespace")

    @property
    def node_id(self) -> str:
        """Same as :meth:`get_node_id`."""
        return self.get_node_id()

    @property
    def job_id(self) -> str:
        """Same as :meth:`get_job_id`."""
        return self.get_job_id()

    # --- the running task ----------------------------------------------------------------
    def get_task_id(self) -> str | None:
        """The id (hex) of the running task or actor call, or None in a driver. In an actor's
        constructor: the id of the actor's creation."""
        task = current_task.get()
        if task is None:
            return None
        if not task.task_id and task.actor_id:  # as in Ray, creating an actor is a task
            return task.actor_id + "ffffffff"
        return task.task_id.hex()

    @property
    def task_id(self) -> str | None:
        """Same as :meth:`get_task_id`."""
        return self.get_task_id()

    def get_task_name(self) -> str | None:
        """The name of the running task (``f``, ``Cls.method``), or None in a driver."""
        task = current_task.get()
        return task.name if task is not None else None

    def is_canceled(self) -> bool:
        """Whether the running task or actor call was cancelled (``aray.cancel``): how a sync
        actor method, which a cancel does not interrupt, notices it and returns early.

        Raises:
            RuntimeError: in a driver, where no task runs; and in an async actor, where a
                cancel raises ``asyncio.CancelledError`` at the method's ``await`` instead.

        Examples:
            >>> import aray
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> @aray.remote
            ... def check():
            ...     return aray.get_runtime_context().is_canceled()
            >>> aray.get(check.remote())
            False
        """
        task = current_task.get()
        if task is None:
            raise RuntimeError("is_canceled() is only available in a task or an actor call")
        return bool(_global.core().executor.cancel_requested(task))

    def get_assigned_resources(self) -> dict[str, float]:
        """The resources the running task or actor holds, e.g. ``{"CPU": 1.0}``: a task's
        request (one CPU by default); an actor's for its lifetime (``{}`` by default: an
        actor needs a CPU to be placed but holds none, as in Ray).

        Raises:
            AssertionError: in a driver (as in Ray): only tasks and actors hold resources.

        Examples:
            >>> import aray
            >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
            >>> @aray.remote(num_cpus=2)
            ... class Big:
            ...     def held(self):
            ...         return aray.get_runtime_context().get_assigned_resources()
            >>> aray.get(Big.remote().held.remote())
            {'CPU': 2.0}
        """
        task = current_task.get()
        if task is None:
            raise AssertionError("get_assigned_resources() is only available in a task or an "
                                 "actor: the driver holds no resources")
        resources = task.resources
        if resources is None and task.actor is not None:
            resources = task.actor.get("hold")
        if resources is None:
            raise _not_carried("the resources of this task")
        return {name: float(amount) for name, amount in resources.items()}

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The accelerators of the running task or actor, by resource: ``{"GPU": ["0"]}``
        (ids as strings, as in Ray; empty lists in a driver or without GPUs).

        Examples:
            >>> import aray
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> aray.get_runtime_context().get_accelerator_ids()
            {'GPU': []}
        """
        return {"GPU": [str(i) for i in self.get_gpu_ids()]}

    def get_resource_ids(self) -> dict[str, list[str]]:
        """Ray's deprecated name of :meth:`get_accelerator_ids`."""
        return self.get_accelerator_ids()

    def get_gpu_ids(self) -> list:
        """The GPU ids of the running task (``[]`` in a driver)."""
        task = current_task.get()
        return list(task.gpu_ids) if task is not None else []

    def get_placement_group_id(self) -> str | None:
        """The id (hex) of the placement group the running task or actor was scheduled
        in, or None (in the driver, or outside any group)."""
        return current_group_wire().get("pg_id")

    # --- the running actor ---------------------------------------------------------------
    def get_actor_id(self) -> str | None:
        """The id of the actor whose method is running, or None outside actors."""
        task = current_task.get()
        return (task.actor_id or None) if task is not None else None

    @property
    def actor_id(self) -> str | None:
        """Same as :meth:`get_actor_id`."""
        return self.get_actor_id()

    def get_actor_name(self) -> str | None:
        """The name of the running actor ("" if it has none), or None outside actors.

        Examples:
            >>> import aray
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> aray.get_runtime_context().get_actor_name() is None  # in the driver
            True
        """
        task = current_task.get()
        if task is None or not task.actor_id:
            return None
        return _actor_fact(task, "name", "the actor's name")

    @property
    def current_actor(self) -> ActorHandle[Any]:
        """A handle to the running actor: its methods can call the actor itself.

        Raises:
            RuntimeError: outside an actor (as in Ray).

        Examples:
            >>> import aray
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> aray.get_runtime_context().current_actor
            Traceback (most recent call last):
            ...
            RuntimeError: current_actor is only available in an actor ...
        """
        from ._actors import ActorHandle

        task = current_task.get()
        if task is None or not task.actor_id:
            raise RuntimeError("current_actor is only available in an actor (its "
                               "constructor or its methods)")
        return ActorHandle(task.actor_id, _actor_fact(task, "meta", "the actor's handle"))

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether the running actor has been restarted (``max_restarts``) at least once.

        Raises:
            AssertionError: outside an actor (as in Ray).

        Examples:
            >>> import aray
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> aray.get_runtime_context().was_current_actor_reconstructed
            Traceback (most recent call last):
            ...
            AssertionError: was_current_actor_reconstructed is only available inside an actor ...
        """
        task = _in_actor("was_current_actor_reconstructed")
        return int(_actor_fact(task, "restarts", "how often the actor restarted")) > 0

    # --- all at once ---------------------------------------------------------------------
    def get(self) -> dict[str, Any]:
        """Ray's (deprecated) dict of the context: ``job_id``, ``node_id``, ``namespace``,
        and in a task or actor ``task_id`` and ``actor_id`` where they have a value.

        Examples:
            >>> import aray
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> sorted(aray.get_runtime_context().get())
            ['job_id', 'namespace', 'node_id']
        """
        context: dict[str, Any] = {"job_id": self.get_job_id(), "node_id": self.get_node_id(),
                                   "namespace": self.namespace}
        for key, value in (("task_id", self.get_task_id()), ("actor_id", self.get_actor_id())):
            if value is not None:
                context[key] = value
        return context


def _driver_namespace() -> str:
    """The driver's namespace: the one it asked for, or the one the head gave its job."""
    core = _global.core()
    head = getattr(core, "head", None)
    given = head.peer.info.get("namespace", "") if head is not None else ""
    return given or core.namespace or f"anonymous-{core.job_id}"


def job_namespace() -> str:
    """Any thread: the namespace of the running task's job, or of this driver's job ("" in
    a worker's own thread, where no task runs: not known there). What a caller sends with a
    task, so that ``get_runtime_context().namespace`` answers in the task."""
    task = current_task.get()
    if task is not None:
        if task.namespace:
            return task.namespace
        return str((task.actor or {}).get("job_namespace", ""))
    core = _global.core()
    return _driver_namespace() if core.role == "driver" else ""
