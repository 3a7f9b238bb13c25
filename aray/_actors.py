"""Actors: stateful workers made from classes with ``@aray.remote``.

``Cls.remote(*args)`` returns an :class:`ActorHandle` at once; the head places the actor on
a node, whose agent starts a dedicated worker and runs the constructor there. Method calls
(``handle.method.remote(...)``) go straight from the caller to that worker.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, Union, cast, overload

from . import _global
from ._actor_calls import ActorCall
from ._options import (
    ACTOR_OPTIONS,
    METHOD_OPTIONS,
    check_bundle_fit,
    placement_strategy,
    resource_shape,
    validate_actor_options,
    validate_method_options,
)
from ._portal import on_loop
from ._refs import ObjectRef, new_task_id, return_id
from ._runtime_context import captured_strategy
from ._signatures import checker, spec_of
from ._tasks import FunctionDescriptor, serialize_args

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])
# An actor class is generic in the class it was made of (its constructor's type), so that
# type checkers read ``Cls.remote(...)`` against ``__init__``: ``remote`` takes ``self`` as
# an ``ActorClass`` of a callable, which binds the constructor's parameters and the instance
# type. Covariant, so that ``ActorClass[type[Impl]]`` is an ``ActorClass`` of that callable.
K = TypeVar("K", covariant=True)

class RemoteMethod(Protocol[P, R]):
    """How type checkers see a method marked with :func:`aray.method`: called as it is
    inside its class, and ``.remote(...)``, checked against its parameters, through an
    :data:`ActorProxy`. (Only for type checkers: at run time the method stays a function.)"""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> ObjectRef[R]: ...


class AsyncRemoteMethod(Protocol[P, R]):
    """:class:`RemoteMethod` of an ``async def`` method: its refs hold what it returns."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]: ...

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> ObjectRef[R]: ...


class _MethodDecorator(Protocol):
    """What ``aray.method(**options)`` returns."""

    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /
                 ) -> AsyncRemoteMethod[P, R]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], R], /) -> RemoteMethod[P, R]: ...


#: A handle as type checkers should see it to check calls method by method: take the handle
#: as a parameter ``counter: ActorProxy[Counter]`` and mark the methods with
#: :func:`aray.method`; ``counter.add.remote(1)`` is then checked against ``add`` and gives
#: an ``ObjectRef`` of its return type. (The name and the form are Ray's.)
ActorProxy = Union["ActorHandle[T]", type[T]]


@overload
def method(fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /
           ) -> AsyncRemoteMethod[P, R]: ...
@overload
def method(fn: Callable[Concatenate[Any, P], R], /) -> RemoteMethod[P, R]: ...
@overload
def method(**options: Any) -> _MethodDecorator: ...
def method(*args: Any, **options: Any) -> Any:
    """Mark an actor method, optionally with options: ``num_returns`` and
    ``concurrency_group``. Bare (``@aray.method``) it sets none and tells type checkers
    the method's signature (see :data:`ActorProxy`).

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote
        ... class Pair:
        ...     @aray.method(num_returns=2)
        ...     def both(self):
        ...         return 1, 2
        ...     @aray.method
        ...     def first(self) -> int:
        ...         return self.both()[0]
        >>> pair = Pair.remote()
        >>> a, b = pair.both.remote()
        >>> aray.get([a, b, pair.first.remote()])
        [1, 2, 1]
    """
    if len(args) == 1 and not options and callable(args[0]):
        args[0].__aray_method__ = {}
        return args[0]
    if args:
        raise TypeError("@aray.method takes a method or keyword options, e.g. @aray.method "
                        "or @aray.method(num_returns=2)")
    options = validate_method_options(options)

    def decorate(fn: F) -> F:
        fn.__aray_method__ = dict(options)  # type: ignore[attr-defined]
        return fn

    return decorate


def _methods(cls: type) -> dict[str, tuple[Any, bool]]:
    """The methods of ``cls`` callable through a handle: name -> (function, whether its
    first parameter is bound: ``self`` or ``cls``, not a static method's)."""
    found = {}
    for name in dir(cls):
        if name.startswith("__") and name != "__call__":
            continue
        member = inspect.getattr_static(cls, name, None)
        fn = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
        if inspect.isfunction(fn):
            found[name] = (fn, not isinstance(member, staticmethod))
    return found


class ActorClass(Generic[K]):
    """A class turned into an actor factory by :func:`aray.remote`.

    ``Cls.remote(*args)`` creates an actor and returns its handle at once;
    ``Cls.options(...)`` returns a copy with other options (``name``, ``namespace``,
    ``lifetime``, ``get_if_exists``, resources, ``max_concurrency``, ``max_restarts``...).

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote
        ... class Counter:
        ...     def __init__(self):
        ...         self.n = 0
        ...     def incr(self):
        ...         self.n += 1
        ...         return self.n
        >>> c = Counter.remote()
        >>> aray.get([c.incr.remote(), c.incr.remote()])
        [1, 2]
    """

    def __init__(self, impl: K, options: dict,
                 descriptor: FunctionDescriptor | None = None) -> None:
        cls = self._cls = cast(type, impl)
        self._options = {**ACTOR_OPTIONS, **validate_actor_options(options)}
        self._strategy = placement_strategy(self._options)  # (label_selector folded in)
        self._descriptor = descriptor or FunctionDescriptor(cls)
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        self.__module__ = cls.__module__
        methods = _methods(cls)
        self._is_async = inspect.iscoroutinefunction(getattr(cls, "__init__", None)) or any(
            inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f)
            for f, _ in methods.values())
        # checked at the call site: the constructor here, the methods through the handles
        self._check_init = checker(spec_of(cls), f"{cls.__name__}.remote")
        self._signatures = {name: spec_of(fn, bound) for name, (fn, bound) in methods.items()}
        groups = self._options["concurrency_groups"] or {}
        self._method_options: dict[str, dict] = {}
        for name, (fn, _) in methods.items():
            chosen = getattr(fn, "__aray_method__", {})
            opts = {**METHOD_OPTIONS, **chosen}
            if "num_returns" not in chosen and (inspect.isgeneratorfunction(fn)
                                                or inspect.isasyncgenfunction(fn)):
                opts["num_returns"] = "streaming"  # generator methods stream, as in Ray
            group = opts["concurrency_group"]
            if group is not None and group not in groups:
                raise ValueError(
                    f"method {cls.__name__}.{name} uses concurrency group {group!r}, which is "
                    f"not in the actor's concurrency_groups {sorted(groups)}")
            self._method_options[name] = opts

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Actors cannot be instantiated directly. Instead of "
                        f"'{self.__name__}()', use '{self.__name__}.remote()'.")

    def __getattr__(self, name: str) -> Any:
        # The class's own attributes through its name: inside a method, ``Counter.LIMIT``
        # or ``Counter.helper()`` finds the decorated name, this object, as in Ray.
        cls = self.__dict__.get("_cls")
        if cls is None or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)  # (while unpickling, or a protocol lookup)
        try:
            value = getattr(cls, name)
        except AttributeError:
            raise AttributeError(f"actor class {cls.__name__} has no attribute {name!r}"
                                 ) from None
        if inspect.isfunction(value):
            # a function of the class (a method, a static method) is handed out as a copy:
            # were it the very object, pickle would find it at module.Cls.name and pickle
            # the class's methods by reference, which workers cannot import
            return functools.wraps(value)(functools.partial(value))
        return value

    def options(self, **options: Any) -> ActorClass[K]:
        """A copy of this actor class with some options changed."""
        merged = {k: v for k, v in self._options.items() if v != ACTOR_OPTIONS[k]}
        merged.update(validate_actor_options(options))
        return ActorClass(self._cls, merged, self._descriptor)  # type: ignore[arg-type]

    def _shapes(self) -> tuple[dict, dict]:
        """(placement, hold): by default an actor needs a CPU to be placed and holds none."""
        o = self._options
        kind = o["accelerator_type"]
        if o["num_cpus"] is None:
            placement = resource_shape(1, o["num_gpus"], o["resources"], o["memory"], kind)
            hold = resource_shape(0, o["num_gpus"], o["resources"], o["memory"], kind)
        else:
            placement = hold = resource_shape(o["num_cpus"], o["num_gpus"], o["resources"],
                                              o["memory"], kind)
        return placement, hold

    def _meta(self) -> dict:
        return {"class_name": self.__name__, "methods": self._method_options,
                "signatures": self._signatures,
                "concurrency_groups": self._options["concurrency_groups"] or {},
                "max_task_retries": int(self._options["max_task_retries"]),
                "max_restarts": int(self._options["max_restarts"]),
                "lifetime": self._options["lifetime"]}

    def remote(self: ActorClass[Callable[P, T]], *args: P.args,
               **kwargs: P.kwargs) -> ActorHandle[T]:
        """Create the actor (its constructor runs in a new worker); returns its handle."""
        core = _global.core_or_init()
        o = self._options
        self._check_init(args, kwargs)
        blob, _ = self._descriptor.blob_and_id()
        args_blob, deps, held = serialize_args(args, kwargs, lambda: f"{self.__name__}.remote()")
        core.held_for_job.extend(held)  # a restarted actor runs its constructor again
        actor_id = os.urandom(8).hex()
        meta = self._meta()
        placement, hold = self._shapes()
        check_bundle_fit(placement, self._strategy, f"actor {self.__name__}")
        default_concurrency = 1000 if self._is_async else 1
        spec = {
            "class_blob": blob, "class_name": self.__name__, "args": args_blob,
            "placement": placement, "hold": hold,
            "max_concurrency": int(o["max_concurrency"] or default_concurrency),
            "concurrency_groups": o["concurrency_groups"] or {},
            "method_groups": {m: opts["concurrency_group"] for m, opts in
                              self._method_options.items() if opts["concurrency_group"]},
            "is_async": self._is_async, "job_id": core.current_job_id(),
            "description": f"{self.__name__} (actor {actor_id})", "meta": meta,
            "runtime_env": core.runtime_envs.inherited(o["runtime_env"] or {}),
            "scheduling_strategy": self._strategy or captured_strategy(),
        }
        register = None
        if o["name"]:
            register = core.actors.register(actor_id, o["name"], o["namespace"] or "",
                                            bool(o["get_if_exists"]), meta, spec["job_id"])
            if not on_loop(core.loop):  # fail at the call site if the name is taken
                target = asyncio.run_coroutine_threadsafe(register, core.loop).result()
                if target != actor_id:
                    return ActorHandle(target, meta)
                register = asyncio.sleep(0, result=target)  # registered already
            # on aray's own loop we cannot block: a taken name fails the calls instead
        core.call_soon(lambda: core.spawn(core.actors.create(actor_id, register, spec, deps),
                                          name=f"create actor {actor_id}"))
        lifetime = None
        if not o["name"] and o["lifetime"] != "detached":
            # held by every handle, here and (borrowed) elsewhere: when it is unused, no
            # handle is left and the actor ends. (A named actor can be looked up by name,
            # so it lives until killed or its job ends; a detached one until killed.)
            lifetime = core.ownership.put(None)
            core.call_soon(core.actors.watch_lifetime, lifetime._id, actor_id)
        return ActorHandle(actor_id, meta, lifetime)

    def __repr__(self) -> str:
        return f"<aray.ActorClass {self.__name__}>"


#: methods every actor has: ``__ray_ready__`` (True once the constructor ran) and
#: ``__ray_terminate__`` (the actor ends after the calls made before it)
_BUILTIN_METHODS = ("__ray_ready__", "__ray_terminate__")


class ActorHandle(Generic[T]):
    """A reference to a live actor: call its methods with ``handle.method.remote(...)``.

    Handles pickle: pass them to tasks and other actors, and call the actor from there.

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote
        ... class Log:
        ...     def __init__(self):
        ...         self.lines = []
        ...     def add(self, line):
        ...         self.lines.append(line)
        ...     def read(self):
        ...         return self.lines
        >>> @aray.remote
        ... def work(log, i):
        ...     aray.get(log.add.remote(f"task {i}"))
        >>> log = Log.remote()
        >>> _ = aray.get([work.remote(log, i) for i in range(3)])
        >>> sorted(aray.get(log.read.remote()))
        ['task 0', 'task 1', 'task 2']
    """

    def __init__(self, actor_id: str, meta: dict,
                 lifetime: ObjectRef[None] | None = None) -> None:
        self._actor_id = actor_id
        self._meta = meta
        self._lifetime = lifetime  # (see ActorClass.remote)
        self._checkers: dict[str, Callable[[tuple, dict], None]] = {}

    def _check_call(self, method: str, args: tuple, kwargs: dict) -> None:
        """Raise TypeError if the arguments do not bind to the method's signature."""
        check = self._checkers.get(method)
        if check is None:
            spec = self._meta.get("signatures", {}).get(method)
            where = f"{self._meta.get('class_name', 'actor')}.{method}.remote"
            check = self._checkers[method] = checker(spec, where)
        check(args, kwargs)

    @property
    def actor_id(self) -> str:
        """The actor's id (hex), the same inside it from ``get_runtime_context()``."""
        return self._actor_id

    def __getattr__(self, name: str) -> ActorMethod[..., Any]:
        methods = self.__dict__.get("_meta", {}).get("methods", {})
        if name in methods:
            return ActorMethod(self, name, methods[name])
        if name in _BUILTIN_METHODS:  # every actor has them, as in Ray
            return ActorMethod(self, name, dict(METHOD_OPTIONS))
        raise AttributeError(
            f"actor {self.__dict__.get('_meta', {}).get('class_name', '?')} has no method "
            f"{name!r}")

    def __reduce__(self):
        return ActorHandle, (self._actor_id, self._meta, self._lifetime)

    def __dir__(self) -> list[str]:
        # the methods too, for the REPL's and the IDE's completion
        return sorted({*super().__dir__(), *self.__dict__.get("_meta", {}).get("methods", {})})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __repr__(self) -> str:
        return f"Actor({self._meta.get('class_name')}, {self._actor_id})"


class ActorMethod(Generic[P, R]):
    """``handle.method``: call it with ``.remote(...)``; ``.options(num_returns=...)``."""

    def __init__(self, handle: ActorHandle[Any], name: str, options: dict) -> None:
        self._handle = handle
        self._name = name
        self._options = options

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor methods cannot be called directly; use "
                        f"{self._name}.remote(...) instead of {self._name}(...)")

    def options(self, **options: Any) -> ActorMethod[P, R]:
        """A copy of this method with ``num_returns``, ``concurrency_group`` or ``name`` (the
        call's name in ``aray list tasks``, the dashboard and errors) changed.

        Examples:
            >>> import aray
            >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
            >>> @aray.remote
            ... class Counter:
            ...     def add(self, n):
            ...         return n
            >>> c = Counter.remote()
            >>> aray.get(c.add.options(name="first add").remote(1))
            1
        """
        options = validate_method_options(options)
        group = options.get("concurrency_group")
        groups = self._handle._meta.get("concurrency_groups") or {}
        if group is not None and group not in groups:
            raise ValueError(f"concurrency group {group!r} is not one of the actor's "
                             f"concurrency_groups {sorted(groups)}")
        return ActorMethod(self._handle, self._name, {**self._options, **options})

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> ObjectRef[R]:
        """Call the method on the actor; returns its ObjectRef(s) (or a ref generator)."""
        core = _global.core_or_init()
        self._handle._check_call(self._name, args, kwargs)
        meta = self._handle._meta
        args_blob, deps, held = serialize_args(
            args, kwargs, lambda: f"{meta.get('class_name')}.{self._name}.remote()")
        task_id = new_task_id()
        streaming = self._options["num_returns"] == "streaming"
        n = -1 if streaming else int(self._options["num_returns"])
        call = ActorCall(task_id, self._name, args_blob, deps,
                         [return_id(task_id, i) for i in range(max(n, 0))], n,
                         int(meta.get("max_task_retries", 0)),
                         group=self._options.get("concurrency_group") or "", held_refs=held,
                         name=self._options.get("name") or "")
        refs = core.submit_actor_call(self._handle._actor_id, call)
        # typed for the common case of one return: num_returns is an option, not a type
        if streaming or n > 1:
            return refs  # type: ignore[return-value]
        return refs[0] if n == 1 else None  # type: ignore[return-value, index]


def make_actor_class(cls: type[T], options: dict) -> ActorClass[type[T]]:
    """The actor class of ``cls`` (what ``@aray.remote`` makes of a class)."""
    return ActorClass(cls, options)
