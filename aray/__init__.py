"""aray: an asyncio-native distributed runtime with Ray Core's programming model.

How the layers stack::

    public API      aray.remote / get / wait / put / ...   (_api.py: thin sync wrappers)
                    aray.aio.*                              (the coroutines they wrap)
    core            _core.Core: owner table, links, results (one per process)
                    _tasks / _actor_calls: submission of tasks and actor calls
                    _worker: task execution in worker processes
    protocol/links  _protocol (every message, one codec) and _link (authenticated websockets)
    node agent      aray.node: worker pool, leases, logs      (imports the protocol, the store)
    store           aray.store: serialization, shared memory  (imports nothing of aray)

Examples:
    >>> import aray
    >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
    >>> @aray.remote
    ... def f(x):
    ...     return x * x
    >>> aray.get([f.remote(i) for i in range(4)])
    [0, 1, 4, 9]
"""

from __future__ import annotations

from . import aio, exceptions
from ._actors import ActorClass, ActorHandle, ActorProxy, method
from ._api import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_gpu_ids,
    get_runtime_context,
    init,
    is_initialized,
    kill,
    nodes,
    object_store_stats,
    put,
    shutdown,
    wait,
)
from ._as_completed import as_completed
from ._refs import ObjectRef
from ._remote import RemoteFunction, remote
from ._runtime_context import RuntimeContext
from ._streams import ObjectRefGenerator

# isort: split
from . import actor, runtime_env, util  # noqa: E402  (after the API it builds on, as in Ray: aray.util.ActorPool)

__version__ = "0.1.0"

#: Ray's old name of ObjectRef, kept for programs that still use it
ObjectID = ObjectRef

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ActorProxy",
    "ObjectID",
    "ObjectRef",
    "ObjectRefGenerator",
    "RemoteFunction",
    "RuntimeContext",
    "__version__",
    "actor",
    "aio",
    "as_completed",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "object_store_stats",
    "put",
    "remote",
    "runtime_env",
    "shutdown",
    "util",
    "wait",
]
