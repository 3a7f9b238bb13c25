"""Whether the shared-memory filesystem can hold the object store a node is starting with.

A node's object store lives in /dev/shm (a tmpfs); its arena is a sparse file as large as
the store, whose pages exist once written. When /dev/shm is smaller than the store, the
store runs out of room before it is full: new objects go to the spill directory on disk
(slower), and a process writing into an arena page that tmpfs cannot back is killed by
SIGBUS. Containers get a small /dev/shm unless told otherwise (Docker: 64 MiB), so
``aray start`` says so, and what to do, when it starts a node in one.
"""

from __future__ import annotations

import shutil

#: the share of memory the object store takes by default (see aray.aio.node_resources)
DEFAULT_SHARE = 0.3
#: below this, a store cut short by /dev/shm is not worth a word (a small machine's)
SMALL = 256 * 2**20

FIX = ("Give /dev/shm more room: on Kubernetes, the sizeLimit of the memory-backed "
       "emptyDir mounted at /dev/shm (see docs/kubernetes.md); with Docker, `docker run "
       "--shm-size=...`; or ask for a smaller store with --object-store-memory.")


def shm_free(path: str | None = None) -> int:
    """The bytes free in the shared-memory filesystem (``path``: the store's root, by
    default /dev/shm); 0 when it cannot be read.

    Example:
        >>> shm_free("/no/such/dir")
        0
    """
    from .store.shm import default_root

    try:
        return shutil.disk_usage(path or default_root()).free
    except OSError:
        return 0


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def shm_warning(store_bytes: int, asked: bool, free: int, memory: int) -> str:
    """A warning when /dev/shm (``free`` bytes free) is smaller than the object store of
    ``store_bytes`` (``asked``: given with --object-store-memory; else the default, which is
    30% of ``memory`` cut to what /dev/shm holds); "" when all is well, or /dev/shm cannot
    be read (``free`` 0).

    Example:
        >>> shm_warning(2 * 2**30, True, free=64 * 2**20, memory=16 * 2**30)[:60]
        'the object store was asked for 2.00 GiB, but /dev/shm has 64'
        >>> shm_warning(64 * 2**20, False, free=64 * 2**20, memory=16 * 2**30)[:60]
        'the object store has only 64 MiB, all that /dev/shm has free'
        >>> shm_warning(2**30, True, free=8 * 2**30, memory=16 * 2**30)
        ''
    """
    if free <= 0:
        return ""
    if asked:
        if store_bytes <= free:
            return ""
        return (f"the object store was asked for {_size(store_bytes)}, but /dev/shm has "
                f"{_size(free)} free: past that, objects go to disk and a process writing "
                f"one may be killed by SIGBUS. {FIX}")
    wanted = int(memory * DEFAULT_SHARE)
    if store_bytes >= wanted or wanted < SMALL or store_bytes < free - 2**20:
        return ""
    return (f"the object store has only {_size(store_bytes)}, all that /dev/shm has free, "
            f"instead of the default {_size(wanted)} (30% of memory). {FIX}")


def store_warning(resources: dict, asked: bool) -> str:
    """:func:`shm_warning` for a node about to start with ``resources`` (as
    :func:`aray.aio.node_resources` makes them; ``asked``: --object-store-memory given),
    measured now.

    Example:
        >>> store_warning({"object_store_memory": 2**20}, asked=True)
        ''
    """
    import psutil

    return shm_warning(int(resources.get("object_store_memory", 0)), asked, shm_free(),
                       psutil.virtual_memory().total)
