"""Arguments checked where a call is made: ``f.remote(...)``, ``Cls.remote(...)`` and
``handle.method.remote(...)`` raise ``TypeError`` at once when the arguments do not bind to
the signature, before anything is pickled or submitted (as Ray does).

A signature travels with actor handles (to other processes) as a small plain list, and is
turned back into a checker there. The checker of a function whose parameters are all plain
(positional or keyword, no defaults) checks the common call (every argument positional, the
right number) without building a binding, since it runs on every call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

#: ``[(name, kind, has_default), ...]``, kind as :class:`inspect.Parameter`'s kinds number them
Spec = list[tuple[str, int, bool]]
Checker = Callable[[tuple, dict], None]

_P = inspect.Parameter
_KINDS = {int(k): k for k in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD, _P.VAR_POSITIONAL,
                              _P.KEYWORD_ONLY, _P.VAR_KEYWORD)}
_NO_DEFAULT = inspect.Parameter.empty


def spec_of(fn: Any, bound: bool = False) -> Spec | None:
    """The parameters of ``fn`` (without the first, ``self``, when ``bound``), or None when
    they cannot be read (a builtin, some C callables): such calls are not checked.

    Examples:
        >>> def f(a, b=1, *rest, key, **more): ...
        >>> [name for name, _, _ in spec_of(f)]
        ['a', 'b', 'rest', 'key', 'more']
    """
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if bound:
        if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                inspect.Parameter.POSITIONAL_OR_KEYWORD):
            return None  # (def m(*args): self comes in args; leave it unchecked)
        params = params[1:]
    return [(p.name, int(p.kind), p.default is not _NO_DEFAULT) for p in params]


def checker(spec: Spec | None, where: str) -> Checker:
    """A function that raises ``TypeError`` naming ``where`` when ``(args, kwargs)`` do not
    bind to ``spec``.

    Examples:
        >>> check = checker(spec_of(lambda x, y: None), "add.remote")
        >>> check((1, 2), {})
        >>> check((1,), {})
        Traceback (most recent call last):
        ...
        TypeError: add.remote(): missing a required argument: 'y'
    """
    if spec is None:
        return _unchecked
    signature = inspect.Signature([
        inspect.Parameter(name, _KINDS[kind], default=None if has_default else _NO_DEFAULT)
        for name, kind, has_default in spec])

    def bind(args: tuple, kwargs: dict) -> None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{where}(): {exc}") from None

    plain = all(kind == inspect.Parameter.POSITIONAL_OR_KEYWORD and not has_default
                for _, kind, has_default in spec)
    if not plain:
        return bind
    count = len(spec)

    def check(args: tuple, kwargs: dict) -> None:
        if kwargs or len(args) != count:
            bind(args, kwargs)

    return check


def _unchecked(args: tuple, kwargs: dict) -> None:
    return None
