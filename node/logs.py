"""The node's worker log files: what the agent forwards to drivers as workers print, and
what the dashboard sees (a listing, and reads of a byte range). The files are the workers'
stdout and stderr (``worker-ID.out`` / ``.err`` under the session's ``logs`` directory).

The agent reads each file in bounded chunks and hands the bytes to a :class:`LogTail`,
which decides what goes to the drivers and under which task's name."""

from __future__ import annotations

import codecs
import os
import re

from aray import _protocol as P

#: the names a read may ask for: nothing outside the logs directory, nothing but worker logs
#: and the output of the entrypoints of submitted jobs
_LOG_NAME = re.compile(r"^worker-([0-9a-f]+)\.(out|err)$")
_JOB_LOG_NAME = re.compile(r"^job-driver-[A-Za-z0-9_.\-]{1,128}\.log$")
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
    out: list[dict] = []
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
    if not (_LOG_NAME.match(name) or _JOB_LOG_NAME.match(name)):
        return b"", 0, 0, (f"no such log file: {name!r} (worker log files are named "
                           "worker-ID.out or worker-ID.err, jobs' job-driver-ID.log)")
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


# --- tailing, for drivers -----------------------------------------------------------------

#: output without a newline goes to the driver once it has waited this long (seconds) ...
PARTIAL_AFTER = 0.5
#: ... or once it is this long (characters); a longer line arrives as pieces of this size
PARTIAL_MAX = 64 * 1024
#: a worker's marker line is never longer than this: text after what looks like the start
#: of a marker, but longer, is output
MARKER_MAX = 4096

#: what goes to the drivers: ``(task, job, stream, lines)``
Batch = tuple[str, str, int, list[str]]


class LogTail:
    """What one stream (1 stdout, 2 stderr) of one worker printed, as batches for drivers.

    The caller reads the file from :attr:`offset` on and gives the bytes, and the time, to
    :meth:`feed`; it sends what that returns: ``(task, job, stream, lines)`` batches in the
    order the worker printed them. Whole lines go at once. A partial line (no newline yet)
    goes once it is ``partial_after`` seconds old or ``partial_max`` characters long, as a
    line of its own; the rest of it follows as another (so a 100 MB line arrives as pieces,
    and nothing holds it all). The worker's task markers (:data:`~aray._protocol.TASK_MARKER`
    lines) switch the task the following output is attributed to; they are not output.
    """

    def __init__(self, stream: int, partial_after: float = PARTIAL_AFTER,
                 partial_max: int = PARTIAL_MAX) -> None:
        self.stream = stream
        self.partial_after = partial_after
        self.partial_max = partial_max
        self.offset = 0  # bytes of the file fed so far: where the next read starts
        self.task = "worker"  # whose output follows: the last marker's task and job
        self.job = ""
        # decodes incrementally: a character cut between two reads waits for its last bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""  # text after the last newline, not sent yet
        self._since = 0.0  # when the oldest character of _partial arrived
        self._sent = 0  # characters taken from the stream so far (sent, or markers)
        self._held_at = -1  # where (in characters) a possible marker start was held back
        self._held_since = 0.0
        self._cut = False  # the last thing sent was a piece of a line not ended yet
        self._out: list[Batch] = []

    def feed(self, data: bytes, now: float) -> list[Batch]:
        """Take ``data``, the file's next bytes (``b""`` when none came: a partial line may
        have become due), read at monotonic time ``now``; return the batches to send."""
        self.offset += len(data)
        text = self._decoder.decode(data)
        if text:
            if not self._partial:
                self._since = now
            self._partial += text
            end = self._partial.rfind("\n")
            if end >= 0:
                self._lines(self._partial[:end])
                self._sent += end + 1
                self._partial = self._partial[end + 1:]
                self._since = now
        self._cut_partial(now, force=False)
        return self._take()

    def flush(self, ended: bool = False) -> list[Batch]:
        """The batches of everything fed and not sent yet, the partial line too (the driver
        is shutting down, or the worker exited). ``ended``: the stream is over, so the bytes
        of a character it left unfinished are shown as U+FFFD rather than kept."""
        if ended:
            self._partial += self._decoder.decode(b"", final=True)
        self._cut_partial(0.0, force=True)
        return self._take()

    def _lines(self, text: str) -> None:
        """Whole lines (``text`` without its last newline): output, and task markers."""
        lines = text.split("\n")
        if self._cut:
            self._cut = False
            if not lines[0]:  # the newline ending a line whose pieces went already
                del lines[0]
        if P.TASK_MARKER not in text:
            self._emit(lines)
            return
        start = 0
        for i, line in enumerate(lines):
            at = line.find(P.TASK_MARKER)
            if at < 0:
                continue
            # output before the marker on its line: the previous task ended without a newline
            self._emit(lines[start:i] + ([line[:at]] if at else []))
            self.job, _, self.task = line[at + len(P.TASK_MARKER):].partition("::")
            start = i + 1
        self._emit(lines[start:])

    def _cut_partial(self, now: float, force: bool) -> None:
        """Send pieces of the partial line that are long enough, or old enough (all of it
        when ``force``), keeping back a possible marker start a read cut in two."""
        while self._partial:
            keep = len(self._partial) if force else self._marker_start(now)
            if keep >= self.partial_max:
                piece = self._partial[:self.partial_max]
            elif keep and (force or now - self._since >= self.partial_after):
                piece = self._partial[:keep]
            else:
                return
            self._emit([piece])
            self._cut = True
            self._sent += len(piece)
            self._partial = self._partial[len(piece):]
            self._since = now

    def _marker_start(self, now: float) -> int:
        """Where in the partial line a task marker may begin (its length if nowhere). The
        worker writes a marker line at once, so only a read that caught it half-written
        shows a marker without its newline: what looks like one (a line that ends in ":", say)
        is held back for at most ``partial_after`` seconds, then it is output."""
        text = self._partial
        at = text.rfind(P.TASK_MARKER)
        if at < 0 or len(text) - at > MARKER_MAX:
            at = len(text)
            for n in range(min(len(P.TASK_MARKER) - 1, len(text)), 0, -1):
                if text.endswith(P.TASK_MARKER[:n]):
                    at = len(text) - n
                    break
        if at == len(text):
            return at
        if self._sent + at != self._held_at:
            self._held_at, self._held_since = self._sent + at, now
        elif now - self._held_since >= self.partial_after:
            return len(text)
        return at

    def _emit(self, lines: list[str]) -> None:
        """Queue output lines under the current task, cutting any longer than partial_max."""
        if not lines:
            return
        size = self.partial_max
        if max(map(len, lines)) > size:
            lines = [line[i:i + size] for line in lines for i in range(0, len(line) or 1, size)]
        if self._out and self._out[-1][:2] == (self.task, self.job):
            self._out[-1][3].extend(lines)
        else:
            self._out.append((self.task, self.job, self.stream, lines))

    def _take(self) -> list[Batch]:
        out, self._out = self._out, []
        return out
