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

    def __str__(self) -> str:
        i = self.info
        return (
            f"{i.type_name}: {i.message}\n\n"
            f"The above error was raised in {i.function} (node {i.node_id[:12]}, pid={i.pid}):\n"
            f"{i.traceback.rstrip()}"
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
