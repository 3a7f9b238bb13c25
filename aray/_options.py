"""The options of tasks, actors and actor methods: their defaults and their checks.

Every option a user gives is checked where it is given, with an error that names it, and
comes out as plain Python values (numpy numbers would not travel in aray's messages).
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
from typing import Any, Protocol, cast

from ._runtime_env import check as check_runtime_env

TASK_OPTIONS = {
    "num_cpus": 1,
    "num_gpus": 0,
    "resources": None,
    "memory": 0,
    "num_returns": 1,
    "max_retries": 3,
    "retry_exceptions": False,
    "name": None,
    "max_calls": 0,
    "runtime_env": None,
    "accelerator_type": None,
    "scheduling_strategy": None,
    "label_selector": None,
    "fallback_strategy": None,
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


#: Ray's older options for a placement group, which its scheduling_strategy replaced
LEGACY_GROUP_OPTIONS = ("placement_group", "placement_group_bundle_index",
                        "placement_group_capture_child_tasks")


def fold_group_options(options: dict) -> dict:
    """Ray's older ``placement_group=pg, placement_group_bundle_index=i,
    placement_group_capture_child_tasks=b`` as the ``scheduling_strategy`` they mean (as
    Ray still takes them); their defaults are dropped.

    Example:
        >>> fold_group_options({"num_cpus": 1, "placement_group": "default"})
        {'num_cpus': 1}
    """
    given = {k: options[k] for k in LEGACY_GROUP_OPTIONS if k in options}
    if not given:
        return options
    out = {k: v for k, v in options.items() if k not in LEGACY_GROUP_OPTIONS}
    group = given.get("placement_group")
    if group is None or group == "default":
        return out
    if options.get("scheduling_strategy") is not None:
        raise ValueError("give either placement_group or scheduling_strategy, not both "
                         "(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, ...) is "
                         "the newer form)")
    from .util.scheduling_strategies import PlacementGroupSchedulingStrategy

    out["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
        group, given.get("placement_group_bundle_index", -1),
        given.get("placement_group_capture_child_tasks"))
    return out


def validate_task_options(options: dict) -> dict:
    """Check ``@aray.remote``/``.options`` keywords for a task; returns them with numbers
    as plain ints and floats."""
    out = {}
    for key, value in fold_group_options(options).items():
        if not known_option(key, value, "task"):
            continue
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
        elif key == "max_calls":
            value = _number(key, value, integer=True)
        elif key == "runtime_env":
            value = check_runtime_env(value, "a remote function's options") or None
        elif key == "accelerator_type" and value is not None:
            value = check_string(key, value)
        elif key == "scheduling_strategy":
            value = check_strategy(value)
        elif key in ("label_selector", "fallback_strategy"):
            value = check_label_option(key, value)
        elif key == "retry_exceptions":
            if not (isinstance(value, bool) or (
                    isinstance(value, (list, tuple)) and value
                    and all(inspect.isclass(t) and issubclass(t, BaseException) for t in value))):
                raise TypeError("retry_exceptions must be a bool or a list of exception types")
        elif key == "name" and value is not None:
            value = check_string(key, value)
        out[key] = value
    return out


def check_strategy(value: Any) -> dict | None:
    """A ``scheduling_strategy`` as it travels (None for the default): see
    :mod:`aray.util.scheduling_strategies`.

    Example:
        >>> check_strategy("SPREAD"), check_strategy("DEFAULT")
        ({'kind': 'spread'}, None)
    """
    from .util.scheduling_strategies import strategy_wire  # (aray.util imports the API)

    return strategy_wire(value) or None


def check_bundle_fit(shape: dict, strategy: dict | None, what: str) -> None:
    """Refuse a request for a placement group's bundle that the bundle can never hold.

    Example:
        >>> wire = {"kind": "pg", "pg_id": "ab", "index": 0, "bundles": [{"CPU": 1.0}]}
        >>> check_bundle_fit({"CPU": 2.0}, wire, "f")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: f asks for {CPU: 2.0}, more than bundle 0 of placement group ab has ...
    """
    from .node.scheduler import fits, resources_text

    if not strategy or strategy.get("kind") != "pg" or not strategy.get("bundles"):
        return
    bundles, index = strategy["bundles"], int(strategy.get("index", -1))
    if index >= 0 and not fits(shape, bundles[index]):
        raise ValueError(f"{what} asks for {resources_text(shape)}, more than bundle {index} "
                         f"of placement group {strategy['pg_id']} has "
                         f"({resources_text(bundles[index])}); ask for less, or use a bigger "
                         "bundle")
    if index < 0 and not any(fits(shape, b) for b in bundles):
        raise ValueError(f"{what} asks for {resources_text(shape)}, more than any bundle of "
                         f"placement group {strategy['pg_id']} has "
                         f"({', '.join(resources_text(b) for b in bundles)}); ask for less, "
                         "or use bigger bundles")


def check_label_option(key: str, value: Any) -> Any:
    """``label_selector`` or ``fallback_strategy`` in its wire form (None for none): see
    :mod:`aray.util.scheduling_strategies`.

    Example:
        >>> check_label_option("label_selector", {"zone": "!a"})
        {'zone': ['!in', ['a']]}
    """
    from .util import scheduling_strategies as S  # (aray.util imports the API)

    if key == "label_selector":
        return S.check_label_selector(value)
    return S.check_fallback_strategy(value)


def placement_strategy(options: dict) -> dict:
    """The wire form of where a task or actor of these (checked) options runs: its
    ``scheduling_strategy``, with ``label_selector`` and ``fallback_strategy`` folded in.

    Example:
        >>> placement_strategy({"scheduling_strategy": None, "fallback_strategy": None,
        ...                     "label_selector": {"zone": ["in", ["a"]]}})["kind"]
        'labels'
    """
    from .util.scheduling_strategies import with_label_selector

    return with_label_selector(options.get("scheduling_strategy"),
                               options.get("label_selector"), options.get("fallback_strategy"))


#: how much of the resource ``accelerator_type:X`` a task of that type asks for (Ray's)
ACCELERATOR_AMOUNT = 0.001


def resource_shape(num_cpus: float, num_gpus: float, resources: dict | None,
                   memory: float = 0, accelerator_type: str | None = None) -> dict:
    """The resource request of a task or actor, without zero entries; an
    ``accelerator_type`` asks for a little of the resource a node of that type has, as
    in Ray.

    Example:
        >>> resource_shape(1, 1, None, accelerator_type="H100")
        {'CPU': 1.0, 'GPU': 1.0, 'accelerator_type:H100': 0.001}
    """
    shape = {"CPU": float(num_cpus), "GPU": float(num_gpus), "memory": float(memory)}
    shape.update({k: float(v) for k, v in (resources or {}).items()})
    if accelerator_type:
        shape[f"accelerator_type:{accelerator_type}"] = ACCELERATOR_AMOUNT
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
    "runtime_env": None,
    "accelerator_type": None,
    "scheduling_strategy": None,
    "label_selector": None,
    "fallback_strategy": None,
}

METHOD_OPTIONS = {"num_returns": 1, "concurrency_group": None, "name": None}


#: the most calls an actor runs at once (each thread of a threaded actor is started ahead)
MAX_CONCURRENCY = 100_000


def validate_actor_options(options: dict) -> dict:
    """Check an actor's options; returns them with numbers as plain ints and floats."""
    out: dict[str, Any] = {}
    for key, value in fold_group_options(options).items():
        if not known_option(key, value, "actor"):
            continue
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
        elif key == "runtime_env":
            value = check_runtime_env(value, "an actor's options") or None
        elif key == "accelerator_type":
            value = check_string(key, value)
        elif key == "scheduling_strategy":
            value = check_strategy(value)
        elif key in ("label_selector", "fallback_strategy"):
            value = check_label_option(key, value)
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
        if not known_option(key, value, "method"):
            continue
        if key == "num_returns":
            value = check_num_returns(value)
        elif key in ("concurrency_group", "name") and value is not None:
            value = check_string(key, value)
        out[key] = value
    return out


def validate_options_for_any(options: dict) -> None:
    """Refuse the names that are options of neither tasks nor actors, in aray or in Ray,
    before ``@aray.remote(...)`` knows what it decorates; the options are checked again
    for the kind of object they decorate."""
    allowed = set(TASK_OPTIONS) | set(ACTOR_OPTIONS) | set(LEGACY_GROUP_OPTIONS)
    for key in options:
        if key not in allowed and not set(_NOT_YET.get(key, ((),))[0]) - {"init"}:
            raise ValueError(_unknown(key, "@aray.remote", sorted(allowed), sorted(
                k for k, (kinds, _) in _NOT_YET.items() if set(kinds) - {"init"})))


#: Ray's options of tasks, actors and actor methods, and arguments of init(), that aray does
#: not have yet: the kinds Ray takes each for ("init" for init()), and what to do instead in
#: aray (docs/migrating.md, "Not in aray yet")
_NOT_YET: dict[str, tuple[tuple[str, ...], str]] = {
    "_labels": (("task", "actor"), "aray records no labels of tasks and actors (node labels "
                "and label_selector are there)"),
    "_metadata": (("task", "actor"), "it carries settings of Ray's libraries, which aray "
                  "does not have"),
    "enable_task_events": (("task", "actor", "method"), "aray records every task and call "
                           "in its task table (`aray list tasks`)"),
    "object_store_memory": (("task", "actor"), "it reserves nothing in Ray either (deprecated "
                            "for actors, refused for tasks): leave it out"),
    "_generator_backpressure_num_objects": (("task", "method"), "a streaming generator sends "
                                            "each item as it is yielded"),
    "max_pending_calls": (("actor",), "calls queue without a limit"),
    "allow_out_of_order_execution": (("actor",), "calls from one caller start in the order "
                                     "they were made; threaded and async actors run up to "
                                     "max_concurrency of them at once"),
    "enable_tensor_transport": (("actor",), "objects travel through the object store"),
    "tensor_transport": (("method",), "objects travel through the object store"),
    "max_task_retries": (("method",), "give max_task_retries to the actor class "
                         "(@aray.remote(max_restarts=..., max_task_retries=...))"),
    "retry_exceptions": (("method",), "a method that raises is not run again"),
    "job_config": (("init",), "a job's settings are init()'s own arguments"),
    "local_mode": (("init",), "run with aray.init(num_cpus=1) and a debugger on the worker "
                   "instead"),
    **{key: (("init",), "configure the 'aray' logger with the logging module")
       for key in ("logging_level", "logging_format", "configure_logging", "log_to_stderr")},
    "_system_config": (("init",), "aray has no system config"),
    "_temp_dir": (("init",), "set ARAY_SESSION_ROOT"),
    "_node_ip_address": (("init",), "use `aray start --node-ip-address`"),
    "storage": (("init",), "aray has no cluster storage"),
    "object_spilling_directory": (("init",), "objects spill into the session directory"),
    "enable_resource_isolation": (("init",), "aray has no resource isolation"),
}

#: the values of those options that ask for what aray does anyway (Ray's defaults): they are
#: accepted, and dropped, so that code that spells out a default runs unchanged
_DEFAULTS: dict[str, tuple[Any, ...]] = {

    "_labels": (None, {}),
    "_metadata": (None, {}), "enable_task_events": (None, True),
    "object_store_memory": (None,),
    "_generator_backpressure_num_objects": (None, -1), "max_pending_calls": (None, -1),
    "allow_out_of_order_execution": (None, False), "enable_tensor_transport": (None, False),
    "tensor_transport": (None,), "max_task_retries": (None,),
    "retry_exceptions": (None,),
}
#: the same for init()'s arguments
_INIT_DEFAULTS: tuple[Any, ...] = (None, False, {})

_KINDS: dict[str, tuple[str, str, dict]] = {
    "task": ("a remote function", "remote functions", TASK_OPTIONS),
    "actor": ("an actor", "actors", ACTOR_OPTIONS),
    "method": ("an actor method", "actor methods", METHOD_OPTIONS),
}


def known_option(key: str, value: Any, kind: str) -> bool:
    """Whether ``key`` is an option of ``kind`` ("task", "actor" or "method") to check and
    keep. False for an option of Ray's that aray does not have, given its default value
    (dropped); a ValueError for one given any other value, saying it is not supported yet,
    and for a name that is no option of ``kind``, with the closest one.

    Examples:
        >>> known_option("num_cpus", 2, "task"), known_option("_metadata", None, "task")
        (True, False)
        >>> known_option("_metadata", {"a": 1}, "task")
        Traceback (most recent call last):
        ...
        ValueError: _metadata is not supported by aray yet: it carries settings of Ray's ...
        >>> known_option("num_cpu", 2, "task")
        Traceback (most recent call last):
        ...
        ValueError: unknown option 'num_cpu' for a remote function (did you mean 'num_cpus'?)...
    """
    what, plural, options = _KINDS[kind]
    if key in options:
        return True
    kinds, instead = _NOT_YET.get(key, ((), ""))
    if kind in kinds:
        if _is_default(value, _DEFAULTS[key]):
            return False
        raise ValueError(f"{key} is not supported by aray yet: {instead}. See \"Not in aray "
                         "yet\" in docs/migrating.md for what aray has instead.")
    others = [_KINDS[k][1] for k in _KINDS if k != kind and (key in _KINDS[k][2] or k in kinds)]
    if others:
        raise ValueError(f"{key} is an option of {' and of '.join(others)}, not of {plural}")
    raise ValueError(_unknown(key, what, sorted(options),
                              [k for k, (ks, _) in _NOT_YET.items() if kind in ks]))


def check_init_argument(key: str, value: Any) -> None:
    """Refuse an argument of Ray's ``init()`` that aray lacks, unless it has its default
    value; a TypeError for a name that is no argument of Ray's ``init()`` either.

    Examples:
        >>> check_init_argument("local_mode", False)
        >>> check_init_argument("local_mode", True)
        Traceback (most recent call last):
        ...
        ValueError: init(local_mode=...) is not supported by aray yet: run with ...
    """
    kinds, instead = _NOT_YET.get(key, ((), ""))
    if "init" not in kinds:
        raise TypeError(f"init() got an unexpected keyword argument {key!r}")
    if not _is_default(value, _INIT_DEFAULTS):
        raise ValueError(f"init({key}=...) is not supported by aray yet: {instead}. See "
                         "\"Not in aray yet\" in docs/migrating.md.")


def _is_default(value: Any, defaults: tuple[Any, ...]) -> bool:
    return any(type(value) is type(d) and value == d for d in defaults)


def _unknown(key: str, what: str, valid: list[str], not_yet: list[str]) -> str:
    """An unknown option's error: the closest name (a typo is the usual cause), among
    aray's options and Ray's that aray lacks, and aray's options."""
    close = difflib.get_close_matches(key, valid + not_yet, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return (f"unknown option {key!r} for {what}{guess}; the options are: {', '.join(valid)}. "
            "Ray's options that aray does not have yet are listed in docs/migrating.md.")
