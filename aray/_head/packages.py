"""The head's store of runtime env packages: uploaded once by a submitter, read by nodes.

A package's name carries the hash of its bytes (see :mod:`aray._packages`), so the store
checks what it received against its name before it keeps it, and never keeps two copies.
Uploads arrive in pieces into a partial file of their uploader's own, renamed into place
when complete: a reader sees a whole package or none.
"""

from __future__ import annotations

import hashlib
import os
import re

from .. import _protocol as P
from .._link import Link
from .._packages import max_package_bytes

#: what a package is called: PREFIX_HASH.zip or .whl (see aray._packages.pack)
NAME = re.compile(r"^[a-z_]{1,32}_(?P<digest>[0-9a-f]{24})\.(zip|whl)$")
#: the largest piece a reader gets at a time
MAX_READ = 8 * 2**20


class PackageStore:
    """Packages under ``root`` (the head's session folder ``packages``); the handlers of
    the package messages.

    Example:
        >>> import tempfile
        >>> store = PackageStore(tempfile.mkdtemp())
        >>> store.size("wd_" + "0" * 24 + ".zip")
        -1
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._partial: dict[tuple[int, str], int] = {}  # (uploader, name) -> bytes so far

    def _path(self, name: str) -> str:
        if not NAME.match(name):
            raise ValueError(f"{name!r} is not the name of a runtime env package")
        return os.path.join(self.root, name)

    def size(self, name: str) -> int:
        """The bytes of package ``name``, or -1 when it is not here."""
        try:
            return os.path.getsize(self._path(name))
        except FileNotFoundError:
            return -1

    def _on_PackageInfo(self, link: Link, msg: P.PackageInfo) -> None:
        link.send(P.PackageSize(msg.req_id, self.size(msg.name)))

    def _on_PutPackage(self, link: Link, msg: P.PutPackage) -> None:
        path = self._path(msg.name)
        key = (id(link), msg.name)
        partial = f"{path}.partial-{id(link)}"
        done = self._partial.get(key, 0)
        if msg.offset != done:
            self._partial.pop(key, None)
            raise ValueError(f"package {msg.name}: a piece at {msg.offset}, expected {done}")
        if done + len(msg.data) > max_package_bytes():
            self._partial.pop(key, None)
            os.unlink(partial)
            raise ValueError(f"package {msg.name} is larger than the head takes "
                             f"({max_package_bytes()} bytes)")
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        if done == 0:  # a new upload, or one started again by its uploader
            link.on_close.append(lambda _link: self._abandon(key, partial))
        with open(partial, "ab" if done else "wb") as f:
            f.write(msg.data)
        done += len(msg.data)
        self._partial[key] = done
        if msg.last:
            del self._partial[key]
            self._complete(msg.name, partial, path)
        link.send(P.PackageSize(msg.req_id, done))

    def _complete(self, name: str, partial: str, path: str) -> None:
        digest = hashlib.blake2b(digest_size=12)
        with open(partial, "rb") as f:
            while chunk := f.read(2**20):
                digest.update(chunk)
        match = NAME.match(name)
        assert match is not None
        if digest.hexdigest() != match["digest"]:
            os.unlink(partial)
            raise ValueError(f"package {name}: its bytes do not match its name (corrupted "
                             "in transit, or not made by aray)")
        os.replace(partial, path)  # two uploads of one package: the same bytes either way

    def _abandon(self, key: tuple[int, str], partial: str) -> None:
        """An uploader left with its upload unfinished: drop the piece it sent."""
        if self._partial.pop(key, None) is not None:
            try:
                os.unlink(partial)
            except FileNotFoundError:
                pass

    def _on_GetPackage(self, link: Link, msg: P.GetPackage) -> None:
        path = self._path(msg.name)
        try:
            with open(path, "rb") as f:
                f.seek(msg.offset)
                data = f.read(min(max(msg.length, 0), MAX_READ))
                size = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            raise FileNotFoundError(f"the head holds no runtime env package {msg.name}; "
                                    "was the cluster's head restarted?") from None
        link.send(P.PackageData(msg.req_id, data, size))
