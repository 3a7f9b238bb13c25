"""The arena: one shared-memory file per node whose pages are reused from object to object.

Writing a large object into a *fresh* tmpfs file costs a page fault and a zeroed page per
4 KiB, which bounds a put at a few GB/s. The arena is allocated once, sized like the store, and
its regions are handed out again and again, so a writer that keeps the arena mapped copies
into pages that already exist at memcpy speed.

Who does what:

* The node agent owns the free list (:class:`Allocator`, inside :class:`ArenaSpace`): writers
  ask it for a region, tell it when the object is sealed, and it frees the region when the
  object is deleted or spilled.
* Every process maps the arena through an :class:`ArenaClient`: writers copy into a persistent
  read-write mapping; readers map one object read-only and get zero-copy views of it.
* A region starts with a 64-byte header naming the object it holds. Readers **pin** a region
  with a shared open-file-description lock on its first byte while any view of it is alive
  (``weakref.finalize`` on the mapping unpins). To free a region the agent first overwrites
  the header, then checks for a pin: a reader that pinned before sees its object and keeps it
  (the agent parks the region until the pin goes); a reader that pins after finds the header
  changed and looks for the object elsewhere. Pins of a process vanish when it exits, with its
  open file descriptions, so a crashed reader never leaks a region.
"""

from __future__ import annotations

import bisect
import fcntl
import mmap
import os
import struct
import threading
import weakref

HEADER = 64
MIN_SIZE = 512 * 1024  # smaller objects are not worth a round trip to the agent
PAGE = mmap.ALLOCATIONGRANULARITY
_MAGIC = b"arayobj\x01"
_TOMBSTONE = bytes(HEADER)
# struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for open-file-description locks)
_FLOCK = struct.Struct("@hhqqi4x")
_OFD_LOCKS = hasattr(fcntl, "F_OFD_SETLK")


def supported() -> bool:
    """Open-file-description locks (Linux) are what makes pins safe; without them, no arena."""
    return _OFD_LOCKS


def region_size(size: int) -> int:
    """Bytes of arena an object of ``size`` bytes takes (header included, whole pages)."""
    return (HEADER + size + PAGE - 1) // PAGE * PAGE


def _header(object_id: bytes, size: int) -> bytes:
    head = _MAGIC + struct.pack("<QB", size, len(object_id)) + object_id
    return head.ljust(HEADER, b"\0")


def _lock(fd: int, kind: int, offset: int, wait: bool = False) -> int:
    """Set (or, with F_UNLCK, drop) an OFD lock on the byte at ``offset``."""
    cmd = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
    fcntl.fcntl(fd, cmd, _FLOCK.pack(kind, os.SEEK_SET, offset, 1, 0))
    return offset


def _is_locked(fd: int, offset: int) -> bool:
    probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    kind = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe))[0]
    return kind != fcntl.F_UNLCK


class Allocator:
    """Best-fit allocation of page-aligned regions in ``[0, size)``, with coalescing.

    Plain bookkeeping: no memory is touched here.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        # the free regions by start, by end (to merge a freed region with its neighbours),
        # and by length: the sorted distinct lengths, and each length's regions. Allocation
        # takes a region of the smallest length that fits (bisection over the lengths, not
        # a walk over the regions), so many small holes do not slow it down, and the
        # untouched end of the arena, whose pages were never faulted in, is used last.
        self._by_start: dict[int, int] = {}  # start -> length
        self._by_end: dict[int, int] = {}  # end -> start
        self._lengths: list[int] = []
        self._of_length: dict[int, dict[int, None]] = {}  # length -> starts
        self.in_use = 0
        if size:
            self._add(0, size)

    def _add(self, start: int, length: int) -> None:
        self._by_start[start] = length
        self._by_end[start + length] = start
        starts = self._of_length.get(length)
        if starts is None:
            starts = self._of_length[length] = {}
            bisect.insort(self._lengths, length)
        starts[start] = None

    def _remove(self, start: int, popped: bool = False) -> int:
        """Forget a free region (``popped``: already taken out of its length's regions)."""
        length = self._by_start.pop(start)
        del self._by_end[start + length]
        starts = self._of_length[length]
        if not popped:
            del starts[start]
        if not starts:
            del self._of_length[length]
            del self._lengths[bisect.bisect_left(self._lengths, length)]
        return length

    def allocate(self, nbytes: int) -> int | None:
        """Offset of a free region of at least ``nbytes`` (rounded to pages), or None."""
        nbytes = (nbytes + PAGE - 1) // PAGE * PAGE
        i = bisect.bisect_left(self._lengths, nbytes)
        if i == len(self._lengths):
            return None
        length = self._lengths[i]
        # the region of that length freed last (popitem: O(1), and its pages are warm)
        start, _ = self._of_length[length].popitem()
        self._remove(start, popped=True)
        if length > nbytes:
            self._add(start + nbytes, length - nbytes)
        self.in_use += nbytes
        return start

    def free(self, offset: int, nbytes: int) -> None:
        nbytes = (nbytes + PAGE - 1) // PAGE * PAGE
        self.in_use -= nbytes
        # merge with the free neighbours on either side
        if offset + nbytes in self._by_start:
            nbytes += self._remove(offset + nbytes)
        before = self._by_end.get(offset)
        if before is not None:
            nbytes += self._remove(before)
            offset = before
        self._add(offset, nbytes)

    def largest_free(self) -> int:
        return self._lengths[-1] if self._lengths else 0

    @property
    def free_regions(self) -> int:
        """How many free regions (holes) there are."""
        return len(self._by_start)


class ArenaSpace:
    """The node agent's side: the arena file, its free list and the regions still pinned."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size // PAGE * PAGE
        self.allocator = Allocator(self.size)
        self._parked: dict[int, int] = {}  # freed while a reader pinned it: offset -> bytes
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, self.size)  # sparse: pages exist once first written
            self._map = mmap.mmap(fd, self.size) if self.size else None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def allocate(self, size: int) -> int:
        """Offset of a region for an object of ``size`` bytes, or -1 if none is free."""
        need = region_size(size)
        offset = self.allocator.allocate(need)
        if offset is None and self._parked:
            self.sweep()
            offset = self.allocator.allocate(need)
        return -1 if offset is None else offset

    def release(self, offset: int, size: int) -> None:
        """Free an object's region: at once, or when its last reader lets go."""
        assert self._map is not None
        self._map[offset : offset + HEADER] = _TOMBSTONE  # new readers will not take it
        if _is_locked(self._fd, offset):
            self._parked[offset] = region_size(size)
        else:
            self.allocator.free(offset, region_size(size))

    def sweep(self) -> None:
        """Free the parked regions nobody pins any more."""
        for offset, nbytes in list(self._parked.items()):
            if not _is_locked(self._fd, offset):
                del self._parked[offset]
                self.allocator.free(offset, nbytes)

    def read_at(self, offset: int, start: int, length: int) -> bytes:
        """Bytes ``[start, start + length)`` of the object in the region at ``offset``."""
        assert self._map is not None
        base = offset + HEADER + start
        return self._map[base : base + length]

    def write_at(self, offset: int, start: int, data) -> None:
        """Write part of an object that arrives in pieces (a copy pulled from another node)."""
        assert self._map is not None
        base = offset + HEADER + start
        self._map[base : base + len(data)] = data

    def seal(self, offset: int, object_id: bytes, size: int) -> None:
        """Mark a region written with :meth:`write_at` as holding ``object_id``."""
        assert self._map is not None
        self._map[offset : offset + HEADER] = _header(object_id, size)

    def copy_out(self, offset: int, size: int, fd: int) -> None:
        """Write an object's bytes to the open file ``fd`` (to spill it: the caller creates
        the file, with the store's modes, and names it)."""
        assert self._map is not None
        view = memoryview(self._map)[offset + HEADER : offset + HEADER + size]
        try:
            written = 0
            while written < size:  # write() may write less than asked
                written += os.write(fd, view[written:])
        finally:
            view.release()

    @property
    def parked_bytes(self) -> int:
        return sum(self._parked.values())

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        os.close(self._fd)


class ArenaClient:
    """One process's access to the arena: a write mapping and pinned read mappings."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self._size = 0
        self._write_map: mmap.mmap | None = None
        self._pins: dict[int, int] = {}  # offset -> live read mappings of it
        self._lock = threading.Lock()

    def _open(self) -> int:
        if self._fd < 0:
            with self._lock:
                if self._fd < 0:
                    fd = os.open(self.path, os.O_RDWR)
                    self._size = os.fstat(fd).st_size
                    self._fd = fd
        return self._fd

    def write(self, offset: int, object_id: bytes, value) -> None:
        """Copy a serialized value into its region, header last (so it reads as sealed)."""
        fd = self._open()
        if self._write_map is None:
            with self._lock:
                if self._write_map is None:
                    # kept for the life of the process: its pages stay mapped, so the next
                    # object written to a reused region costs no page faults
                    self._write_map = mmap.mmap(fd, self._size)
        view = memoryview(self._write_map)
        try:
            value.write_into(view[offset + HEADER : offset + HEADER + value.total_size])
            view[offset : offset + HEADER] = _header(object_id, value.total_size)
        finally:
            view.release()

    def read(self, offset: int, object_id: bytes, size: int) -> memoryview:
        """A read-only view of the object in the region at ``offset``, pinned while alive.

        Raises FileNotFoundError if the region no longer holds that object.
        """
        fd = self._open()
        self._pin(offset)
        try:
            mapping = mmap.mmap(fd, HEADER + size, prot=mmap.PROT_READ, offset=offset)
        except BaseException:
            self._unpin(offset)
            raise
        if mapping[:HEADER] != _header(object_id, size):
            mapping.close()
            self._unpin(offset)
            raise FileNotFoundError(f"object {object_id.hex()} is no longer in the arena")
        # the views handed out keep ``mapping`` alive; when the last one goes, so does the pin
        weakref.finalize(mapping, self._unpin, offset)
        return memoryview(mapping)[HEADER:]

    def _pin(self, offset: int) -> None:
        with self._lock:
            count = self._pins.get(offset, 0)
            if count == 0:
                _lock(self._fd, fcntl.F_RDLCK, offset)
            self._pins[offset] = count + 1

    def _unpin(self, offset: int) -> None:
        with self._lock:
            count = self._pins.get(offset, 0) - 1
            if count > 0:
                self._pins[offset] = count
                return
            self._pins.pop(offset, None)
            if self._fd >= 0:
                try:
                    _lock(self._fd, fcntl.F_UNLCK, offset)
                except OSError:
                    pass

    def close(self) -> None:
        """Drop the write mapping and the descriptor (pins go with it)."""
        with self._lock:
            if self._write_map is not None:
                try:
                    self._write_map.close()
                except BufferError:  # a write in flight in another thread
                    pass
                self._write_map = None
