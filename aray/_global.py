"""The one place where this process's runtime is looked up.

There is at most one :class:`~aray._core.Core` per process: the driver's after
``aray.init()``, or the worker's inside a worker process. Everything that needs it calls
:func:`core` (which raises a clear error before ``init``) or :func:`core_or_none`.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from .exceptions import NotInitializedError

if TYPE_CHECKING:
    from ._core import Core

_core: Core | None = None


def core() -> Core:
    if _core is None:
        raise NotInitializedError("aray is not initialized: call aray.init() first")
    return _core


def core_or_init() -> Core:
    """The core for the first ``.remote()``, ``put``, ``get`` or ``wait`` of a program:
    as in Ray, a call without a prior ``aray.init()`` calls it with default options (which
    joins the cluster ``aray start`` runs on this machine, or starts one), with a notice.
    ``ARAY_ENABLE_AUTO_CONNECT=0`` (Ray's ``RAY_ENABLE_AUTO_CONNECT``) turns that off."""
    if _core is None and os.environ.get("ARAY_ENABLE_AUTO_CONNECT",
                                        os.environ.get("RAY_ENABLE_AUTO_CONNECT", "")) != "0":
        from ._api import init

        print("aray: aray.init() was not called; calling it with default options",
              file=sys.stderr, flush=True)
        init()
    return core()


def core_or_none() -> Core | None:
    return _core


def set_core(c: Core | None) -> None:
    global _core
    _core = c
