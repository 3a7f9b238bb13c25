"""The node's worker log files, as the dashboard sees them: a listing, and reads of a
byte range. The files are the workers' stdout and stderr (``worker-ID.out`` / ``.err``
under the session's ``logs`` directory); the agent tails them for drivers on its own."""

from __future__ import annotations

import os
import re

from aray import _protocol as P

#: the names a read may ask for: nothing outside the logs directory, nothing but worker logs
_LOG_NAME = re.compile(r"^worker-([0-9a-f]+)\.(out|err)$")
#: the most one read returns
MAX_READ = 1 << 20
#: the largest offset, either way, a read may ask for: more than any file holds, small enough
#: for a message (msgpack carries 64-bit integers) and for a JavaScript number to keep exactly
MAX_OFFSET = 1 << 53
#: the most files a listing names (the most recently written ones)
MAX_FILES = 1000


def list_log_files(logs_dir: str, pids: dict[str, int], alive: set[str]) -> list[dict]:
    """One dict per worker log file: ``file``, ``pid``, ``stream`` ("out" or "err"),
    ``size``, ``alive`` and ``modified`` (seconds since the epoch), the most recently
    written first (at most MAX_FILES). ``pids`` maps worker ids to their pids (kept after a
    worker exits); ``alive`` holds the ids of running workers."""
    out = []
    try:
        names = os.listdir(logs_dir)
    except FileNotFoundError:
        return out
    for name in names:
        match = _LOG_NAME.match(name)
        if match is None:
            continue
        try:
            st = os.stat(os.path.join(logs_dir, name))
        except FileNotFoundError:
            continue
        worker_id, stream = match.groups()
        out.append({"file": name, "pid": pids.get(worker_id, 0), "stream": stream,
                    "size": st.st_size, "alive": worker_id in alive, "modified": st.st_mtime})
    out.sort(key=lambda f: -f["modified"])
    return out[:MAX_FILES]


def read_log(logs_dir: str, name: str, offset: int, limit: int) -> tuple[bytes, int, int, str]:
    """``(data, next_offset, size, error)`` for up to ``limit`` bytes of the log file
    ``name`` from ``offset``; a negative offset counts from the end of the file, and an
    offset past either end means that end. ``limit`` 0 means MAX_READ. Only the names
    :func:`list_log_files` gives are readable."""
    if not _LOG_NAME.match(name):
        return b"", 0, 0, (f"no such log file: {name!r} (worker log files are named "
                           "worker-ID.out or worker-ID.err)")
    limit = max(0, min(limit or MAX_READ, MAX_READ))
    try:
        with open(os.path.join(logs_dir, name), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = max(0, size + offset) if offset < 0 else min(offset, size)
            f.seek(start)
            data = f.read(limit)
    except FileNotFoundError:
        return b"", 0, 0, f"no such log file: {name!r}"
    if offset < 0 and start > 0:
        # started mid-file: begin at the next whole line
        cut = data.find(b"\n")
        if cut >= 0:
            start, data = start + cut + 1, data[cut + 1:]
    return _readable(data), start + len(data), size, ""


def _readable(data: bytes) -> bytes:
    """The task markers the worker writes, as lines a person reads: ``--- task NAME``."""
    marker = P.TASK_MARKER.encode()
    if marker not in data:
        return data
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(marker):
            job, _, name = line[len(marker):].partition(b"::")
            lines[i] = b"--- task " + name + b" (job " + job + b")"
    return b"\n".join(lines)
