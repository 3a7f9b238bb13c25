"""Objects in shared memory: one file per object in a session directory on tmpfs.

Writers create ``.<id>.tmp``, fill it and rename it to ``<id>``: a reader never sees a
half-written object, and a writer killed mid-way leaves only a temp file that the node agent
removes. Readers map the file read-only, so values deserialized from it are zero-copy views.
"""

from __future__ import annotations

import mmap
import os

from ._serialize import Serialized


def default_root() -> str:
    """Where object files live: /dev/shm when it exists (tmpfs), else the temp dir."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else os.environ.get("TMPDIR", "/tmp")


class ShmDirectory:
    """A directory of sealed objects, addressed by object id."""

    def __init__(self, path: str) -> None:
        self.path = path

    def create(self) -> None:
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    def _file(self, object_id: bytes) -> str:
        return os.path.join(self.path, object_id.hex())

    def write(self, object_id: bytes, value: Serialized) -> int:
        """Write and seal an object; returns its size in bytes."""
        final = self._file(object_id)
        tmp = os.path.join(self.path, f".{object_id.hex()}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
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
        finally:
            os.close(fd)
        os.rename(tmp, final)
        return value.total_size

    def read(self, object_id: bytes) -> mmap.mmap:
        """Map a sealed object read-only. Raises FileNotFoundError if it is not here."""
        fd = os.open(self._file(object_id), os.O_RDONLY)
        try:
            return mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        finally:
            os.close(fd)

    def contains(self, object_id: bytes) -> bool:
        return os.path.exists(self._file(object_id))

    def delete(self, object_id: bytes) -> None:
        try:
            os.unlink(self._file(object_id))
        except FileNotFoundError:
            pass

    def remove_all(self) -> None:
        """Delete every object and the directory itself (at node shutdown)."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return
        for name in names:
            try:
                os.unlink(os.path.join(self.path, name))
            except OSError:
                pass
        try:
            os.rmdir(self.path)
        except OSError:
            pass
