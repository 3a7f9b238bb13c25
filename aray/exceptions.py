"""The errors aray raises. Every one pickles and says what to do next.

::

    ArayError
    ├── TaskError               a task or actor method raised; also an instance of the
    │                           original exception type, so ``except ValueError`` works
    ├── GetTimeoutError         get/wait timed out (also a ``TimeoutError``)
    ├── TaskCancelledError      the task was cancelled with ``aray.cancel``
    ├── WorkerCrashedError      the worker process died and retries ran out
    ├── ActorError
    │   └── ActorDiedError      the actor is dead (killed, crashed, constructor failed)
    ├── ObjectLostError         every copy of an object is gone
    │   └── OwnerDiedError      the process that owned the object exited
    ├── ObjectStoreFullError    an object does not fit in the object store
    ├── AuthenticationError     wrong or missing cluster token (also a ``ConnectionError``)
    ├── RequestTimeoutError     another aray process did not answer in time (also a
    │                           ``ConnectionError`` and a ``TimeoutError``)
    ├── AraySystemError         aray itself failed in another process (carries its traceback)
    └── NotInitializedError     an operation needs ``aray.init()`` first (also a ``RuntimeError``)

Code written for Ray finds its names here as the same classes: ``RayError`` is
``ArayError``, ``RayTaskError`` is ``TaskError``, ``RayActorError`` is ``ActorError``,
``RaySystemError`` is ``AraySystemError``; Ray's other errors exist too (``ActorUnavailableError``,
``NodeDiedError``, ``TaskUnschedulableError``...), each under the aray error it is a case of,
so ``except`` clauses written for Ray work. Those aray never raises say so.

Examples:
    >>> import aray
    >>> issubclass(aray.exceptions.GetTimeoutError, TimeoutError)
    True
"""

from __future__ import annotations

import dataclasses

import cloudpickle


class ArayError(Exception):
    """Base class of every error aray raises."""


class GetTimeoutError(ArayError, TimeoutError):
    """``aray.get``/``aray.wait`` did not finish within ``timeout`` seconds."""


class TaskCancelledError(ArayError):
    """The task was cancelled with :func:`aray.cancel` before it produced its result."""

    def __init__(self, task_name: str = "", detail: str = "") -> None:
        self.task_name = task_name
        self.detail = detail
        super().__init__(task_name, detail)

    def __str__(self) -> str:
        name = f" {self.task_name}" if self.task_name else ""
        return f"task{name} was cancelled{': ' + self.detail if self.detail else ''}"


class WorkerCrashedError(ArayError):
    """The worker running the task died, and the task's ``max_retries`` ran out.

    Raise ``max_retries`` in ``@aray.remote(max_retries=...)`` if the crash is transient,
    or look at the worker's log in the session directory for why it died.
    """


class ActorError(ArayError):
    """Base class of actor failures."""


class ActorDiedError(ActorError):
    """The actor is dead; calls to it cannot run."""


class ActorUnavailableError(ActorError):
    """The actor cannot be reached for the moment but may be later (Ray's name; aray
    raises :class:`ActorDiedError` or waits for the restart instead)."""


class ObjectLostError(ArayError):
    """Every copy of the object is gone and it cannot be rebuilt."""


class OwnerDiedError(ObjectLostError):
    """The process that created (owns) the object has exited, so its value is gone."""


class ObjectStoreFullError(ArayError):
    """The object does not fit into the object store, even after evicting and spilling."""


class AuthenticationError(ArayError, ConnectionError):
    """The cluster refused the connection: wrong or missing token."""


class RequestTimeoutError(ArayError, ConnectionError, TimeoutError):
    """Another aray process (a node agent, the head, an object's owner) did not answer a
    request within its deadline: it is hung, overloaded, or its machine is cut off."""


class AraySystemError(ArayError):
    """aray itself failed: another process of the cluster raised while handling a request
    from this one. The message carries that process's traceback; please report it."""


class NotInitializedError(ArayError, RuntimeError):
    """An aray operation was called before ``aray.init()`` (or after ``aray.shutdown()``)."""


# --- errors from user code --------------------------------------------------------------


@dataclasses.dataclass
class RemoteErrorInfo:
    """What a worker sends back when user code raises: enough to rebuild the error anywhere."""

    cause: BaseException | None  # the original exception, when it pickles
    type_name: str
    message: str
    traceback: str
    function: str
    node_id: str
    pid: int


class TaskError(ArayError):
    """A task or actor method raised an exception.

    The instance you catch is also an instance of the original exception's type, so
    ``except ValueError`` catches a ``ValueError`` raised remotely. ``str(err)`` shows the
    remote traceback with the function name, node and pid; ``err.cause`` is the original
    exception (``None`` if it could not be pickled).

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote
        ... def boom():
        ...     raise ValueError("bad")
        >>> try:
        ...     aray.get(boom.remote())
        ... except ValueError as err:
        ...     print(type(err).__name__, err.cause)
        TaskError(ValueError) bad
    """

    info: RemoteErrorInfo

    def __init__(self, info: RemoteErrorInfo) -> None:
        Exception.__init__(self, info.message)
        self.info = info

    @property
    def cause(self) -> BaseException | None:
        """The exception the task raised (None if it could not be pickled)."""
        return self.info.cause

    @property
    def function_name(self) -> str:
        """The task or method that raised."""
        return self.info.function

    @property
    def traceback_str(self) -> str:
        """The remote traceback, as text (Ray's name)."""
        return self.info.traceback

    @property
    def pid(self) -> int:
        """The process the task ran in."""
        return self.info.pid

    def __str__(self) -> str:
        i = self.info
        return (
            f"{i.type_name}: {i.message}\n\n"
            f"The above error was raised in {i.function} (node {i.node_id[:12]}, pid={i.pid}):\n"
            f"{i.traceback.rstrip()}\n\n"
            f"(Catch it as {i.type_name}, or as aray.exceptions.TaskError and read its .cause"
            f"{'' if i.cause is not None else ', None here: the exception did not pickle'}.)"
        )

    def __reduce__(self):
        return (task_error, (self.info,))

    @classmethod
    def as_instance_of_cause(cls, info: RemoteErrorInfo) -> TaskError:
        return task_error(info)


_DYNAMIC: dict[type, type[TaskError]] = {}


def task_error(info: RemoteErrorInfo) -> TaskError:
    """Build a TaskError that also derives from the type of ``info.cause`` when it can."""
    cause = info.cause
    base = type(cause) if cause is not None else None
    if isinstance(cause, TaskError):  # a nested task error: derive from the original type
        inner = cause.info.cause
        base = type(inner) if inner is not None else None
        base = None if base is None or issubclass(base, TaskError) else base
    if base is None or base is TaskError or not issubclass(base, Exception):
        return TaskError(info)
    cls = _DYNAMIC.get(base)
    if cls is None:
        try:
            made = type(
                f"TaskError({base.__name__})",
                (TaskError, base),
                {"__module__": __name__, "__init__": TaskError.__init__,
                 "__str__": TaskError.__str__, "__reduce__": TaskError.__reduce__},
            )
        except TypeError:  # e.g. an incompatible layout of a C exception type
            return TaskError(info)
        assert issubclass(made, TaskError)  # its first base
        cls = _DYNAMIC[base] = made
    err = cls.__new__(cls)
    TaskError.__init__(err, info)
    if cause is not None:
        err.args = cause.args
    return err


def error_from_blob(blob: bytes) -> BaseException:
    """The exception a task's pickled error stands for (a :class:`TaskError` most often;
    a cancelled task's or a dead actor's error as it is).

    Examples:
        >>> import cloudpickle
        >>> err = error_from_blob(cloudpickle.dumps(ValueError("bad")))
        >>> type(err).__name__, str(err)
        ('ValueError', 'bad')
    """
    try:
        info = cloudpickle.loads(blob)
    except Exception as exc:
        return TaskError(RemoteErrorInfo(None, "Exception", f"(unreadable error: {exc})",
                                         "", "?", "", 0))
    if isinstance(info, RemoteErrorInfo):
        if isinstance(info.cause, (TaskCancelledError, ActorDiedError)):
            return info.cause
        return task_error(info)
    return info if isinstance(info, BaseException) else TaskError(info)


# --- Ray's names -------------------------------------------------------------------------
# The same classes under Ray's names, and Ray's other errors as cases of aray's, so that
# code written for Ray (``except ray.exceptions.RayActorError``) runs unchanged.

RayError = ArayError
RayTaskError = TaskError
RayActorError = ActorError
RaySystemError = AraySystemError


class NodeDiedError(ArayError):
    """A node died (Ray's name; aray reports a dead node's work as
    :class:`WorkerCrashedError`, :class:`ActorDiedError` or :class:`ObjectLostError`)."""


class LocalRayletDiedError(NodeDiedError):
    """This process's node died (Ray's name; aray raises ``ConnectionError`` then)."""


class TaskUnschedulableError(ArayError):
    """The task can never be scheduled as asked: its ``NodeAffinitySchedulingStrategy``
    (``soft=False``) names a node that is dead, unknown or too small. (A task no node has
    the resources for is not an error: aray warns and keeps it queued, since a node with
    them may join.)

    Example:
        >>> issubclass(TaskUnschedulableError, ArayError)
        True
    """


class ActorUnschedulableError(ActorError):
    """No node can ever host the actor as asked (Ray's name). aray warns and keeps an actor
    no node has the resources for pending; an actor whose hard node affinity names a
    node that is dead or unknown dies, and its calls raise ActorDiedError saying why."""


class OutOfMemoryError(ArayError):
    """A node ran low on memory and killed a worker (Ray's name; aray does not raise it)."""


class OutOfDiskError(ObjectStoreFullError):
    """The disk objects spill to is full (Ray's name; aray raises
    :class:`ObjectStoreFullError`)."""


class ObjectFetchTimedOutError(ObjectLostError):
    """An object could not be fetched in time (Ray's name; aray raises
    :class:`RequestTimeoutError`)."""


class ObjectReconstructionFailedError(ObjectLostError):
    """A lost object could not be rebuilt by running its task again (Ray's name)."""


class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectReconstructionFailedError):
    """Rebuilding a lost object used up its task's retries (Ray's name)."""


class ObjectReconstructionFailedLineageEvictedError(ObjectReconstructionFailedError):
    """A lost object's task is no longer known, so it cannot be rebuilt (Ray's name)."""


class PendingCallsLimitExceeded(ActorError):
    """Too many calls wait for an actor (Ray's name; aray queues them all)."""


class RuntimeEnvSetupError(ArayError):
    """A task's runtime env could not be set up: pip failed, a package was too big to
    upload, or the setup outlasted ``setup_timeout_seconds`` (see docs/runtime-env.md).

    Example:
        >>> str(RuntimeEnvSetupError("runtime_env pip: pip install x failed"))
        'runtime_env pip: pip install x failed'
    """


class AsyncioActorExit(ArayError):
    """An async actor ends itself (Ray's name, raised inside the actor)."""


class UnserializableException(ArayError):
    """A task raised an exception that cannot be pickled (Ray's name; aray raises a
    :class:`TaskError` carrying its type name, message and traceback, ``cause`` None)."""


class CrossLanguageError(ArayError):
    """Ray's error for calls between languages; aray runs Python only."""


class PlasmaObjectNotAvailable(ObjectLostError):
    """Ray's error for an object missing from its store (aray raises
    :class:`ObjectLostError`)."""


class TaskPlacementGroupRemoved(ArayError):
    """The placement group a task was to run in was removed (before or while it ran).

    Example:
        >>> issubclass(TaskPlacementGroupRemoved, ArayError)
        True
    """


class ActorPlacementGroupRemoved(ActorError):
    """Ray's error for an actor whose placement group was removed (aray raises
    :class:`ActorDiedError`, whose message says the group was removed)."""
