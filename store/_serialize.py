"""Pickle-5 serialization whose out-of-band buffers can live in shared memory.

A serialized object is one contiguous layout::

    u32 n_buffers | u64 pickle_len | n x (u64 offset, u64 length) | pickle | buffers...

Buffers start on 64-byte boundaries, so a reader that maps the layout from shared memory can
hand numpy arrays and Arrow buffers out as views **without copying**. Small values use the
same layout in an ordinary ``bytes`` object.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

import cloudpickle

_HEAD = struct.Struct("<IQ")
_SLOT = struct.Struct("<QQ")
ALIGN = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


class Serialized:
    """A value pickled with protocol 5: the pickle stream plus its out-of-band buffers."""

    __slots__ = ("pickled", "buffers", "offsets", "total_size")

    def __init__(self, pickled: bytes, buffers: list[memoryview]) -> None:
        self.pickled = pickled
        self.buffers = buffers
        head = _HEAD.size + _SLOT.size * len(buffers) + len(pickled)
        offsets = []
        pos = head
        for buf in buffers:
            pos = _align(pos)
            offsets.append(pos)
            pos += buf.nbytes
        self.offsets = offsets
        self.total_size = pos

    def header(self) -> bytes:
        parts = [_HEAD.pack(len(self.buffers), len(self.pickled))]
        parts += [_SLOT.pack(off, buf.nbytes) for off, buf in zip(self.offsets, self.buffers)]
        parts.append(self.pickled)
        return b"".join(parts)

    def chunks(self) -> list:
        """The layout as a list of byte chunks (header, padding, buffers), for writev."""
        out: list = [self.header()]
        pos = len(out[0])
        for off, buf in zip(self.offsets, self.buffers):
            if off > pos:
                out.append(bytes(off - pos))
            out.append(buf)
            pos = off + buf.nbytes
        return out

    def to_bytes(self) -> bytes:
        if not self.buffers:
            return self.header()
        return b"".join(bytes(c) if isinstance(c, memoryview) else c for c in self.chunks())

    def write_into(self, dest: memoryview) -> None:
        """Write the layout into ``dest`` (at least ``total_size`` bytes)."""
        head = self.header()
        dest[: len(head)] = head
        for off, buf in zip(self.offsets, self.buffers):
            dest[off : off + buf.nbytes] = buf


def serialize(value: Any) -> Serialized:
    """Pickle ``value`` with cloudpickle (protocol 5), keeping large buffers out of band."""
    buffers: list[memoryview] = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        try:
            buffers.append(buf.raw())
        except BufferError:  # not contiguous: let pickle copy it in band
            return True
        return False

    pickled = cloudpickle.dumps(value, protocol=5, buffer_callback=keep)
    return Serialized(pickled, buffers)


def deserialize(data) -> Any:
    """Rebuild a value from a layout held in ``bytes``, a memoryview or an mmap.

    Out-of-band buffers are views into ``data``: nothing is copied, and the views keep
    ``data`` alive. Views into read-only memory give read-only arrays.
    """
    view = memoryview(data)
    n, plen = _HEAD.unpack_from(view, 0)
    pos = _HEAD.size
    slots = []
    for _ in range(n):
        slots.append(_SLOT.unpack_from(view, pos))
        pos += _SLOT.size
    pickled = view[pos : pos + plen]
    buffers = [view[off : off + length] for off, length in slots]
    return pickle.loads(pickled, buffers=buffers)
