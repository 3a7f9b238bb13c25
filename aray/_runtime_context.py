"""What the running code can learn about where it runs: node, job, task, actor."""

from __future__ import annotations

import contextvars
import dataclasses

from . import _global


@dataclasses.dataclass
class TaskContext:
    task_id: bytes
    job_id: str
    name: str
    gpu_ids: list
    actor_id: str = ""
    owner: str = ""  # the caller's core: it owns the results


#: the task this thread or asyncio task is executing (None in a driver)
current_task: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "aray_current_task", default=None)


class RuntimeContext:
    """Facts about the current process and task, from :func:`aray.get_runtime_context`.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> ctx = aray.get_runtime_context()
        >>> len(ctx.get_node_id()) > 0, ctx.get_task_id()
        (True, None)
    """

    def get_node_id(self) -> str:
        """The id (hex) of the node this code runs on."""
        return _global.core().node_id

    def get_job_id(self) -> str:
        """The id (hex) of the job: the driver that started this work."""
        task = current_task.get()
        return task.job_id if task is not None else _global.core().job_id

    def get_task_id(self) -> str | None:
        """The id (hex) of the running task, or None in a driver."""
        task = current_task.get()
        return task.task_id.hex() if task is not None else None

    def get_actor_id(self) -> str | None:
        """The id of the actor whose method is running, or None outside actors."""
        task = current_task.get()
        return (task.actor_id or None) if task is not None else None

    def get_worker_id(self) -> str:
        """The id of this worker process ("" in a driver)."""
        return _global.core().worker_id

    @property
    def node_id(self) -> str:
        """Same as :meth:`get_node_id`."""
        return self.get_node_id()

    @property
    def job_id(self) -> str:
        """Same as :meth:`get_job_id`."""
        return self.get_job_id()

    def get_gpu_ids(self) -> list:
        """The GPU ids of the running task (``[]`` in a driver)."""
        task = current_task.get()
        return list(task.gpu_ids) if task is not None else []
