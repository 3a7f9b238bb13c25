"""The one place where this process's runtime is looked up.

There is at most one :class:`~aray._core.Core` per process: the driver's after
``aray.init()``, or the worker's inside a worker process. Everything that needs it calls
:func:`core` (which raises a clear error before ``init``) or :func:`core_or_none`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .exceptions import NotInitializedError

if TYPE_CHECKING:
    from ._core import Core

_core: Core | None = None


def core() -> Core:
    if _core is None:
        raise NotInitializedError("aray is not initialized: call aray.init() first")
    return _core


def core_or_none() -> Core | None:
    return _core


def set_core(c: Core | None) -> None:
    global _core
    _core = c
