"""Objects in shared memory: large ones in the node's arena (see :mod:`aray.store.arena`),
the others one file per object, in a session directory on tmpfs.

Writers of files create ``.<id>.<pid>.tmp``, fill it and rename it to ``<id>``: a reader
never sees a half-written object, and a writer killed mid-way leaves only a temp file that
the node agent removes. Readers map the file read-only, so values deserialized from it are
zero-copy views.
When shared memory is over capacity the node agent moves objects to a spill directory on
disk; readers find them there, whether the object had a file or an arena region.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil

from ._serialize import Serialized
from .arena import ArenaClient

ARENA_FILE = "arena"


def default_root() -> str:
    """Where object files live: /dev/shm when it exists (tmpfs), else the temp dir."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else os.environ.get("TMPDIR", "/tmp")


def _create_private(path: str) -> int:
    """A new file only this user can read and write (objects are the users' data), whatever
    the umask; truncated if a dead writer left one of that name."""
    return os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW, 0o600)


def _copy_fd(source: int, dest: int) -> None:
    """Copy a whole file between descriptors, in the kernel where it can."""
    size = os.fstat(source).st_size
    copied = 0
    while copied < size:
        sent = os.sendfile(dest, source, copied, size - copied)
        if sent == 0:  # the file shrank meanwhile
            break
        copied += sent


class ShmDirectory:
    """A directory of sealed objects, addressed by object id, with a spill directory on disk.

    An object lives in shared memory (``path``) or, once spilled, on disk (``spill_path``);
    readers look in both, so spilling never makes an object unreadable.
    """

    def __init__(self, path: str, spill_path: str = "") -> None:
        self.path = path
        self.spill_path = spill_path
        self.arena = ArenaClient(os.path.join(path, ARENA_FILE))

    def create(self) -> None:
        """Make the store directory and the spill directory, mode 0700.

        Raises FileExistsError if either exists: /dev/shm is shared by all users, and a
        directory someone else made in advance must not become this node's store.
        """
        os.mkdir(self.path, 0o700)
        if self.spill_path:
            os.mkdir(self.spill_path, 0o700)

    def _file(self, object_id: bytes) -> str:
        return os.path.join(self.path, object_id.hex())

    def _spilled(self, object_id: bytes) -> str:
        return os.path.join(self.spill_path, object_id.hex())

    def write(self, object_id: bytes, value: Serialized) -> bool:
        """Write and seal an object in shared memory; returns False if it went to disk.

        When shared memory itself is full, the object goes straight to the spill directory.
        """
        try:
            self._write_in(self.path, object_id, value)
            return True
        except OSError as exc:
            if exc.errno != errno.ENOSPC or not self.spill_path:
                raise
        self._write_in(self.spill_path, object_id, value)
        return False

    def _write_in(self, directory: str, object_id: bytes, value: Serialized) -> int:
        final = os.path.join(directory, object_id.hex())
        # the temp name carries the writer's pid: the node agent removes what a dead writer
        # left half-written
        tmp = os.path.join(directory, f".{object_id.hex()}.{os.getpid()}.tmp")
        fd = _create_private(tmp)
        try:
            chunks = value.chunks()
            # writev has a per-call limit on the number of chunks and on bytes written
            while chunks:
                written = os.writev(fd, chunks[:512])
                while written and chunks:
                    first = chunks[0]
                    size = first.nbytes if isinstance(first, memoryview) else len(first)
                    if written >= size:
                        written -= size
                        chunks.pop(0)
                    else:
                        chunks[0] = memoryview(first)[written:]
                        written = 0
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, final)
        return value.total_size

    def read(self, object_id: bytes, offset: int = -1, size: int = 0):
        """Map a sealed object read-only: from its arena region (``offset`` >= 0) or its own
        file in memory, else from the spill directory.

        Raises FileNotFoundError if it is in none of them.
        """
        if offset >= 0:
            try:
                return self.arena.read(offset, object_id, size)
            except FileNotFoundError:
                pass  # spilled (or deleted) since its location was known
        fd = self._open(object_id)
        try:
            return mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        finally:
            os.close(fd)

    def _open(self, object_id: bytes) -> int:
        """A read-only descriptor of an object's own file, in memory or spilled."""
        for path in (self._file(object_id), self.spill_path and self._spilled(object_id)):
            if path:
                try:
                    return os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    pass
        raise FileNotFoundError(f"object {object_id.hex()} is not in the store")

    def spill_from_arena(self, object_id: bytes, arena, offset: int, size: int) -> None:
        """Copy an arena object to disk (the caller frees its region afterwards)."""
        self._spill_with(object_id, lambda fd: arena.copy_out(offset, size, fd))

    def _spill_with(self, object_id: bytes, fill) -> None:
        """Write a spill file: ``fill(fd)`` into a private temp file, renamed once complete;
        on failure (a full disk) the temp file goes."""
        tmp = self._spilled(object_id) + ".spilling"
        fd = _create_private(tmp)
        try:
            fill(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, self._spilled(object_id))

    def read_range(self, object_id: bytes, start: int, length: int) -> bytes:
        """Bytes of an object in a file of its own (in memory or spilled)."""
        fd = self._open(object_id)
        try:
            return os.pread(fd, length, start)
        finally:
            os.close(fd)

    def begin_file(self, object_id: bytes) -> tuple[int, str]:
        """Open a temp file to write an object in pieces; :meth:`end_file` seals it."""
        tmp = os.path.join(self.path, f".{object_id.hex()}.{os.getpid()}.tmp")
        return _create_private(tmp), tmp

    def end_file(self, object_id: bytes, fd: int, tmp: str, ok: bool) -> None:
        os.close(fd)
        if ok:
            os.rename(tmp, self._file(object_id))
        else:
            os.unlink(tmp)

    def contains(self, object_id: bytes) -> bool:
        return os.path.exists(self._file(object_id)) or bool(
            self.spill_path and os.path.exists(self._spilled(object_id)))

    def spill(self, object_id: bytes) -> bool:
        """Move an object from shared memory to disk. Readers that mapped it keep their view;
        new readers find it on disk. False if the object is gone (deleted meanwhile)."""
        src = self._file(object_id)
        try:
            source = os.open(src, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:  # complete on disk before it leaves memory
            self._spill_with(object_id, lambda fd: _copy_fd(source, fd))
        finally:
            os.close(source)
        try:
            os.unlink(src)
        except FileNotFoundError:  # deleted while we copied: drop the copy too
            os.unlink(self._spilled(object_id))
            return False
        return True

    def delete(self, object_id: bytes) -> None:
        for path in (self._file(object_id), self.spill_path and self._spilled(object_id)):
            if path:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    def remove_temp_files_of(self, pid: int) -> int:
        """Remove what a dead writer left half-written; returns how many files."""
        removed = 0
        for directory in (self.path, self.spill_path):
            if not directory:
                continue
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                if name.startswith(".") and name.endswith(f".{pid}.tmp"):
                    try:
                        os.unlink(os.path.join(directory, name))
                        removed += 1
                    except FileNotFoundError:
                        pass
        return removed

    def remove_all(self) -> None:
        """Delete every object, spilled ones too, and the directories (at node shutdown)."""
        for directory in (self.path, self.spill_path):
            if directory:
                shutil.rmtree(directory, ignore_errors=True)
