"""The options of tasks, actors and actor methods: their defaults and their checks.

Every option a user gives is checked where it is given, with an error that names it, and
comes out as plain Python values (numpy numbers would not travel in aray's messages).
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Protocol, cast

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


class _RealNumber(Protocol):
    """What the checks use of a ``numbers.Real`` (int, float, a numpy number, a Fraction):
    typeshed's Real declares no ``__int__`` and compares only with untyped operands."""

    def __float__(self) -> float: ...
    def __int__(self) -> int: ...
    def __lt__(self, other: float, /) -> bool: ...
    def __gt__(self, other: float, /) -> bool: ...


def _number(name: str, value: Any, *, integer: bool = False, minimum: float = 0,
            maximum: float | None = None) -> Any:
    """Check a numeric option and return it as a plain ``int`` or ``float`` (a numpy
    number would not travel in aray's messages). NaN, infinities and values out of
    range are refused with a ValueError that names the option."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    number = cast(_RealNumber, value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if integer and int(number) != number:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if integer and maximum is None:
        maximum = MAX_COUNT
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return int(number) if integer else float(number)


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


ACTOR_OPTIONS: dict[str, Any] = {
    "num_cpus": None,
    "num_gpus": 0,
    "resources": None,
    "memory": 0,
    "max_concurrency": None,
    "max_restarts": 0,
    "max_task_retries": 0,
    "name": None,
    "namespace": None,
    "lifetime": None,
    "get_if_exists": False,
    "concurrency_groups": None,
}

METHOD_OPTIONS = {"num_returns": 1, "concurrency_group": None}


#: the most calls an actor runs at once (each thread of a threaded actor is started ahead)
MAX_CONCURRENCY = 100_000


def validate_actor_options(options: dict) -> dict:
    """Check an actor's options; returns them with numbers as plain ints and floats."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in ACTOR_OPTIONS:
            raise ValueError(f"invalid option {key!r} for an actor; valid options are: "
                             + ", ".join(sorted(ACTOR_OPTIONS)))
        if value is None and ACTOR_OPTIONS[key] is None:
            out[key] = value
            continue
        if key in ("num_cpus", "num_gpus", "memory"):
            value = _number(key, value)
        elif key == "resources":
            value = validate_resources(value)
        elif key == "max_concurrency":
            value = _number(key, value, integer=True, minimum=1, maximum=MAX_CONCURRENCY)
        elif key in ("max_restarts", "max_task_retries"):
            value = _number(key, value, integer=True, minimum=-1)
        elif key in ("name", "namespace"):
            value = check_string(key, value)
        elif key == "lifetime" and value not in (None, "detached", "non_detached"):
            raise ValueError(f"lifetime must be None or 'detached', got {value!r}")
        elif key == "get_if_exists" and not isinstance(value, bool):
            raise TypeError("get_if_exists must be True or False")
        elif key == "concurrency_groups":
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise TypeError("concurrency_groups must map group names to a number of "
                                "concurrent calls >= 1, e.g. {'io': 2}")
            value = {str(k): _number(f"concurrency_groups[{k!r}]", v, integer=True, minimum=1,
                                     maximum=MAX_CONCURRENCY) for k, v in value.items()}
        out[key] = value
    return out


def validate_method_options(options: dict) -> dict:
    """Check an actor method's options; returns them with plain numbers."""
    out = {}
    for key, value in options.items():
        if key not in METHOD_OPTIONS:
            raise ValueError(f"invalid option {key!r} for an actor method; valid options are: "
                             + ", ".join(sorted(METHOD_OPTIONS)))
        if key == "num_returns":
            value = check_num_returns(value)
        elif key == "concurrency_group" and value is not None:
            value = check_string(key, value)
        out[key] = value
    return out


def validate_options_for_any(options: dict) -> None:
    """Options are checked again for the kind of object they decorate."""
    allowed = set(TASK_OPTIONS) | set(ACTOR_OPTIONS)
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ValueError(f"invalid option {unknown[0]!r} for @aray.remote; valid options are: "
                         + ", ".join(sorted(allowed)))
