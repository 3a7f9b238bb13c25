"""``@aray.remote``: the decorator, and remote functions (tasks). Actor classes are in
:mod:`aray._actors`; the options of both are checked in :mod:`aray._options`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, overload

from . import _actors, _global
from ._options import (
    ACTOR_OPTIONS,
    TASK_OPTIONS,
    check_bundle_fit,
    placement_strategy,
    resource_shape,
    validate_options_for_any,
    validate_task_options,
)
from ._refs import ObjectRef, new_task_id, return_id
from ._runtime_context import captured_strategy, current_task
from ._tasks import FunctionDescriptor, TaskSpec, serialize_args

if TYPE_CHECKING:
    from ._actors import ActorClass

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
C = TypeVar("C", bound=type)


def _current_task_id() -> bytes:
    task = current_task.get()
    return task.task_id if task is not None else b""


class RemoteFunction(Generic[P, R]):
    """A function that runs as a task on the cluster; made by :func:`aray.remote`.

    ``f.remote(*args)`` submits a task and returns an :class:`~aray.ObjectRef` at once;
    ``f.options(...)`` returns a copy with other options. Calling ``f(...)`` directly is an
    error: it would run nowhere.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote
        ... def square(x):
        ...     return x * x
        >>> aray.get(square.remote(4))
        16
        >>> aray.get(square.options(num_cpus=0.5).remote(3))
        9
    """

    def __init__(self, fn: Callable[P, R], options: dict,
                 descriptor: FunctionDescriptor | None = None) -> None:
        self._function = fn
        self._options = {**TASK_OPTIONS, **validate_task_options(options)}
        if "num_returns" not in options and (inspect.isgeneratorfunction(fn)
                                             or inspect.isasyncgenfunction(fn)):
            self._options["num_returns"] = "streaming"  # as in Ray: generators stream
        self._descriptor = descriptor or FunctionDescriptor(fn)
        self._name = self._options["name"] or getattr(fn, "__qualname__", "task")
        opts = self._options
        self._shape = resource_shape(opts["num_cpus"], opts["num_gpus"], opts["resources"],
                                     opts["memory"], opts["accelerator_type"])
        self._strategy = placement_strategy(opts)  # (label_selector folded in)
        check_bundle_fit(self._shape, self._strategy, self._name)
        retry = opts["retry_exceptions"]
        self._retry_exceptions = tuple(retry) if isinstance(retry, (list, tuple)) else retry
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__name__ = getattr(fn, "__name__", "remote_function")
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote function {self._name} cannot be called directly; "
            f"use {self.__name__}.remote(...) to run it as a task")

    def options(self, **options: Any) -> RemoteFunction[P, R]:
        """A copy of this remote function with some options changed.

        Examples:
            >>> import aray
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> @aray.remote
            ... def pair():
            ...     return 1, 2
            >>> a, b = pair.options(num_returns=2).remote()
            >>> aray.get([a, b])
            [1, 2]
        """
        merged = {k: v for k, v in self._options.items() if v != TASK_OPTIONS[k]}
        merged.update(validate_task_options(options))
        return RemoteFunction(self._function, merged, self._descriptor)

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> ObjectRef[R]:
        """Submit a task running this function; returns its ObjectRef(s) at once."""
        core = _global.core_or_init()
        self._descriptor.check_args(args, kwargs)
        self._descriptor.blob_and_id()  # fail here, not later, if the function cannot pickle
        blob, deps, held = serialize_args(args, kwargs, lambda: f"{self._name}.remote()")
        task_id = new_task_id()
        streaming = self._options["num_returns"] == "streaming"
        n = 0 if streaming else int(self._options["num_returns"])
        spec = TaskSpec(
            task_id=task_id, function=self._descriptor, name=self._name, args=blob,
            dep_refs=deps, held_refs=held, return_ids=[return_id(task_id, i) for i in range(n)],
            shape=self._shape,
            max_retries=0 if streaming else int(self._options["max_retries"]),
            retry_exceptions=self._retry_exceptions, job_id=core.current_job_id(),
            max_calls=int(self._options["max_calls"]),
            streaming=streaming, parent=_current_task_id(),
            runtime_env=core.runtime_envs.inherited(self._options["runtime_env"] or {}),
            strategy=self._strategy or captured_strategy())
        refs = core.submit(spec)
        if streaming:
            return refs  # type: ignore[return-value]
        if n == 1:
            return refs[0]  # type: ignore[index]  # (a list unless streaming)
        return refs if n > 1 else None  # type: ignore[return-value]

    def __reduce__(self) -> tuple[Any, ...]:
        return RemoteFunction, (self._function,
                                {k: v for k, v in self._options.items() if v != TASK_OPTIONS[k]},
                                self._descriptor)

    def __repr__(self) -> str:
        return f"<aray.RemoteFunction {self._name}>"


class _Decorator(Protocol):
    """What ``aray.remote(**options)`` returns: a decorator of functions and classes."""

    @overload
    def __call__(self, obj: C, /) -> ActorClass[C]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, obj: Callable[P, Coroutine[Any, Any, R]], /) -> RemoteFunction[P, R]: ...
    @overload
    def __call__(self, obj: Callable[P, R], /) -> RemoteFunction[P, R]: ...


# The overloads tell type checkers what the decorator makes: a class becomes an ActorClass,
# an ``async def`` a remote function whose refs hold what the coroutine returns (that is
# what its tasks produce), any other function a remote function of its own return type.
# (mypy sees a class as a callable too, hence its complaint about the first overload.)
@overload
def remote(obj: C, /) -> ActorClass[C]: ...  # type: ignore[overload-overlap]
@overload
def remote(obj: Callable[P, Coroutine[Any, Any, R]], /) -> RemoteFunction[P, R]: ...
@overload
def remote(obj: Callable[P, R], /) -> RemoteFunction[P, R]: ...
@overload
def remote(**options: Any) -> _Decorator: ...
def remote(*args: Any, **options: Any) -> Any:
    """Turn a function into a remote function (a task), optionally with options.

    Use it bare (``@aray.remote``) or with options (``@aray.remote(num_cpus=2,
    num_returns=2, max_retries=0, resources={"GPU_MEMORY": 1})``). Both plain and
    ``async def`` functions work.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote(num_returns=2)
        ... def split(x):
        ...     return x, -x
        >>> aray.get(list(split.remote(5)))
        [5, -5]
    """
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args or not options:  # @aray.remote() too, as Ray refuses it
        raise RemoteArgumentsError(remote_arguments_error())
    validate_options_for_any(options)

    def decorate(obj: Any) -> Any:
        return _make_remote(obj, options)

    return decorate


class RemoteArgumentsError(TypeError, AssertionError):
    """``@aray.remote`` given positional arguments, or empty parentheses. Ray raises an
    AssertionError with this message; it is a TypeError too, as a wrong call is."""


def remote_arguments_error() -> str:
    """Ray's message for ``@ray.remote()`` and ``@ray.remote(1)``, with aray's options.

    Example:
        >>> print(remote_arguments_error()[:74])
        The @aray.remote decorator must be applied either with no arguments and no
    """
    names = list(dict.fromkeys([*TASK_OPTIONS, *ACTOR_OPTIONS]))
    return ("The @aray.remote decorator must be applied either with no arguments and no "
            "parentheses, for example '@aray.remote', or it must be applied using some of "
            f"the arguments in the list {names}, for example "
            "'@aray.remote(num_returns=2, resources={\"CustomResource\": 1})'.")


def _make_remote(obj: Any, options: dict) -> Any:
    if inspect.isclass(obj):
        return _actors.make_actor_class(obj, options)
    if not callable(obj):
        raise TypeError(f"@aray.remote needs a function or a class, got {type(obj).__name__}")
    return RemoteFunction(obj, options)
