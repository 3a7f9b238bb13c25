"""``@aray.remote``: remote functions and their options."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar

from . import _global
from ._tasks import FunctionDescriptor, TaskSpec, serialize_args
from ._refs import ObjectRef, new_task_id, return_id
from ._runtime_context import current_task

P = ParamSpec("P")
R = TypeVar("R")

TASK_OPTIONS = {
    "num_cpus": 1,
    "num_gpus": 0,
    "resources": None,
    "memory": 0,
    "num_returns": 1,
    "max_retries": 3,
    "retry_exceptions": False,
    "name": None,
}


#: the largest count an option takes (retries, restarts, return values): more is a mistake
MAX_COUNT = 10**9
#: the most values one task or method may return
MAX_RETURNS = 1_000_000


def _number(name: str, value: Any, *, integer: bool = False, minimum: float = 0,
            maximum: float | None = None) -> Any:
    """Check a numeric option and return it as a plain ``int`` or ``float`` (a numpy
    number would not travel in aray's messages). NaN, infinities and values out of
    range are refused with a ValueError that names the option."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if integer and int(value) != value:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if integer and maximum is None:
        maximum = MAX_COUNT
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return int(value) if integer else float(value)


def validate_resources(resources: Any, what: str = "resources") -> dict:
    """Check a dict of custom resources; returns it with plain float amounts."""
    if resources is None:
        return {}
    if not isinstance(resources, dict):
        raise TypeError(f"{what} must be a dict of name -> amount, got {type(resources).__name__}")
    out = {}
    for key, amount in resources.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{what} keys must be non-empty strings, got {key!r}")
        if key in ("CPU", "GPU"):
            raise ValueError(
                f"use num_cpus/num_gpus instead of {key!r} in {what} (e.g. num_cpus=2)")
        out[str(key)] = _number(f"{what}[{key!r}]", amount)
    return out


def check_string(name: str, value: Any) -> str:
    """A string option, as a plain ``str`` (a str subclass travels, but need not)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__} ({value!r})")
    return str(value)


def check_num_returns(value: Any) -> Any:
    """``num_returns``: a whole number from 0 to MAX_RETURNS, or "streaming"."""
    if value == "streaming" and isinstance(value, str):
        return "streaming"
    return _number("num_returns", value, integer=True, maximum=MAX_RETURNS)


def validate_task_options(options: dict) -> dict:
    """Check ``@aray.remote``/``.options`` keywords for a task; returns them with numbers
    as plain ints and floats."""
    out = {}
    for key, value in options.items():
        if key not in TASK_OPTIONS:
            raise ValueError(
                f"invalid option {key!r} for a remote function; valid options are: "
                + ", ".join(sorted(TASK_OPTIONS)))
        if key in ("num_cpus", "num_gpus", "memory"):
            value = _number(key, value)
            if key == "num_gpus" and value > 1 and int(value) != value:
                raise ValueError(f"num_gpus above 1 must be a whole number, got {value!r}")
        elif key == "resources":
            value = validate_resources(value)
        elif key == "num_returns":
            value = check_num_returns(value)
        elif key == "max_retries":
            value = _number(key, value, integer=True, minimum=-1)
        elif key == "retry_exceptions":
            if not (isinstance(value, bool) or (
                    isinstance(value, (list, tuple)) and value
                    and all(inspect.isclass(t) and issubclass(t, BaseException) for t in value))):
                raise TypeError("retry_exceptions must be a bool or a list of exception types")
        elif key == "name" and value is not None:
            value = check_string(key, value)
        out[key] = value
    return out


def resource_shape(num_cpus: float, num_gpus: float, resources: dict | None,
                   memory: float = 0) -> dict:
    """The resource request of a task or actor, without zero entries."""
    shape = {"CPU": float(num_cpus), "GPU": float(num_gpus), "memory": float(memory)}
    shape.update({k: float(v) for k, v in (resources or {}).items()})
    return {k: v for k, v in shape.items() if v > 0}


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
                                     opts["memory"])
        retry = opts["retry_exceptions"]
        self._retry_exceptions = tuple(retry) if isinstance(retry, (list, tuple)) else retry
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__name__ = getattr(fn, "__name__", "remote_function")
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__wrapped__ = fn

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"remote function {self._name} cannot be called directly; "
            f"use {self.__name__}.remote(...) to run it as a task")

    def options(self, **options) -> RemoteFunction[P, R]:
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
        core = _global.core()
        self._descriptor.blob_and_id()  # fail here, not later, if the function cannot pickle
        blob, deps, held = serialize_args(args, kwargs, lambda: f"{self._name}.remote()")
        task_id = new_task_id()
        streaming = self._options["num_returns"] == "streaming"
        n = 0 if streaming else int(self._options["num_returns"])
        spec = TaskSpec(
            task_id=task_id, function=self._descriptor, name=self._name, args=blob,
            dep_refs=deps, held=held, return_ids=[return_id(task_id, i) for i in range(n)],
            shape=self._shape,
            max_retries=0 if streaming else int(self._options["max_retries"]),
            retry_exceptions=self._retry_exceptions, job_id=core.current_job_id(),
            streaming=streaming, parent=_current_task_id())
        refs = core.submit(spec)
        if streaming:
            return refs  # type: ignore[return-value]
        if n == 1:
            return refs[0]
        return refs if n > 1 else None  # type: ignore[return-value]

    def __reduce__(self):
        return RemoteFunction, (self._function,
                                {k: v for k, v in self._options.items() if v != TASK_OPTIONS[k]},
                                self._descriptor)

    def __repr__(self) -> str:
        return f"<aray.RemoteFunction {self._name}>"


def remote(*args, **options):
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
    if args:
        raise TypeError(
            "@aray.remote takes either a function or keyword options, "
            "e.g. @aray.remote or @aray.remote(num_cpus=2)")
    validate_options_for_any(options)

    def decorate(obj):
        return _make_remote(obj, options)

    return decorate


def validate_options_for_any(options: dict) -> None:
    """Options are checked again for the kind of object they decorate."""
    from . import _actors

    allowed = set(TASK_OPTIONS) | set(_actors.ACTOR_OPTIONS)
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ValueError(f"invalid option {unknown[0]!r} for @aray.remote; valid options are: "
                         + ", ".join(sorted(allowed)))


def _make_remote(obj, options: dict):
    if inspect.isclass(obj):
        from . import _actors

        return _actors.make_actor_class(obj, options)
    if not callable(obj):
        raise TypeError(f"@aray.remote needs a function or a class, got {type(obj).__name__}")
    return RemoteFunction(obj, options)
