"""Packages of code that travel with a runtime env: made once, named by their content.

The submitting side packs a folder (``working_dir``, a folder of ``py_modules``) into a zip
whose bytes depend only on the files' paths, contents and modes, so that the same folder
gives the same name on every machine and is uploaded once (:func:`pack`). A ``.zip`` or
``.whl`` given as it is travels as it is. A node unpacks each package once into its cache
(:class:`PackageCache`), shared by the workers of every job that uses it, and removes the
entries no live worker uses once there are more than a bound.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import shutil
import stat
import time
import zipfile
from collections.abc import Callable

import pathspec

#: Ray's default bound on a package (its RAY_RUNTIME_ENV_MAX_PACKAGE_SIZE ... 500 MiB)
MAX_PACKAGE_BYTES = 500 * 2**20
#: what is never packed: version control metadata and interpreter caches
ALWAYS_EXCLUDED = [".git/", "__pycache__/", "*.pyc"]
#: a fixed time for every entry, so that the zip's bytes depend on content only
_EPOCH = (1980, 1, 1, 0, 0, 0)


def max_package_bytes() -> int:
    """The size bound (``ARAY_RUNTIME_ENV_MAX_PACKAGE_BYTES`` changes it)."""
    return int(os.environ.get("ARAY_RUNTIME_ENV_MAX_PACKAGE_BYTES", MAX_PACKAGE_BYTES))


def pack(path: str, excludes: list[str], prefix: str, top: str = "") -> tuple[str, bytes]:
    """The package of ``path`` (a folder, or a .zip/.whl file taken as it is): its name
    (``PREFIX_HASH.zip``, or ``.whl``) and its bytes. ``top`` puts the folder's files under
    a folder of that name in the zip (a ``py_modules`` folder stays a package).

    Raises ValueError when the package is larger than :func:`max_package_bytes`, naming
    its size and what to leave out.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "a.py").write_text("x = 1"); (d / ".git").mkdir()
        >>> _ = (d / ".git" / "HEAD").write_text("ref")
        >>> name, data = pack(str(d), [], "wd")
        >>> name.startswith("wd_") and zipfile.ZipFile(io.BytesIO(data)).namelist()
        ['a.py']
        >>> pack(str(d), [], "wd") == (name, data)
        True
    """
    limit = max_package_bytes()
    if os.path.isfile(path):
        size = os.path.getsize(path)
        _check_size(path, size, limit)
        with open(path, "rb") as f:
            data = f.read()
        suffix = ".whl" if path.endswith(".whl") else ".zip"
        return f"{prefix}_{_digest(data)}{suffix}", data
    spec = pathspec.GitIgnoreSpec.from_lines([*ALWAYS_EXCLUDED, *excludes])
    buffer = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, files in os.walk(path):
            dirs.sort()
            rel_root = os.path.relpath(root, path)
            keep = []
            for d in dirs:
                rel = os.path.normpath(os.path.join(rel_root, d))
                if not spec.match_file(rel + "/"):
                    keep.append(d)
            dirs[:] = keep  # excluded folders are not even walked
            for name in sorted(files):
                full = os.path.join(root, name)
                rel = os.path.normpath(os.path.join(rel_root, name))
                if spec.match_file(rel) or not os.path.isfile(full):
                    continue
                total += os.path.getsize(full)
                _check_size(path, total, limit)
                info = zipfile.ZipInfo(os.path.join(top, rel) if top else rel, _EPOCH)
                info.external_attr = (stat.S_IMODE(os.stat(full).st_mode) | stat.S_IFREG) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(full, "rb") as f:
                    archive.writestr(info, f.read())
    data = buffer.getvalue()
    return f"{prefix}_{_digest(data)}.zip", data


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _check_size(path: str, size: int, limit: int) -> None:
    if size > limit:
        raise ValueError(
            f"the runtime_env package of {path} is larger than {_size(limit)} (at least "
            f"{_size(size)}): leave big files out with "
            "runtime_env={'excludes': [...]} (gitignore patterns) and put data in the object "
            "store or shared storage instead")


class PackageCache:
    """A node's cache of folders under ``root``: unpacked packages, pip environments.

    :meth:`entry` makes a folder once, whatever the number of workers asking at the same
    time (a file lock), records the asking process as a user, and returns the folder;
    :meth:`get` is the entry of an unpacked package, whose bytes ``fetch(name)`` returns
    (from the head). :meth:`prune` removes the entries no live process uses, oldest first,
    beyond ``keep`` entries.

    Example:
        >>> import tempfile
        >>> buffer = io.BytesIO()
        >>> with zipfile.ZipFile(buffer, "w") as z:
        ...     z.writestr("m.py", "x = 1")
        >>> cache = PackageCache(tempfile.mkdtemp())
        >>> folder = cache.get("wd_1.zip", lambda name: buffer.getvalue())
        >>> sorted(os.listdir(folder))
        ['m.py']
    """

    def __init__(self, root: str, keep: int = 10) -> None:
        self.root = root
        self.keep = keep

    def get(self, name: str, fetch: Callable[[str], bytes]) -> str:
        """The folder package ``name`` is unpacked in (a wheel is a zip too: unpacked,
        its modules import from the folder)."""
        def unpack(partial: str) -> None:
            with zipfile.ZipFile(io.BytesIO(fetch(name))) as archive:
                _extract(archive, partial)

        return self.entry(os.path.splitext(name)[0], unpack)

    def entry(self, key: str, make: Callable[[str], None]) -> str:
        """The folder ``key``, made by ``make(folder)`` in a folder of its own that is
        renamed into place, so that the entry is complete or absent, never half there."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        folder = os.path.join(self.root, key)
        with open(folder + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one makes it; the others wait, then use it
            if not os.path.isdir(folder):
                partial = folder + f".partial-{os.getpid()}"
                shutil.rmtree(partial, ignore_errors=True)
                try:
                    make(partial)
                except BaseException:
                    shutil.rmtree(partial, ignore_errors=True)
                    raise
                os.rename(partial, folder)
            self._add_user(folder)
        self.prune()
        return folder

    def _add_user(self, folder: str) -> None:
        users = folder + ".users"
        os.makedirs(users, exist_ok=True)
        open(os.path.join(users, str(os.getpid())), "w").close()
        os.utime(folder)  # recently used: pruned last

    def prune(self) -> None:
        """Remove the entries no live process uses, oldest first, past ``keep`` entries."""
        try:
            entries = [e for e in os.scandir(self.root) if e.is_dir() and "." not in e.name]
        except FileNotFoundError:
            return
        if len(entries) <= self.keep:
            return
        entries.sort(key=lambda e: e.stat().st_mtime)
        for entry in entries[:len(entries) - self.keep]:
            with open(entry.path + ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if self._in_use(entry.path):
                    continue
                shutil.rmtree(entry.path, ignore_errors=True)
                shutil.rmtree(entry.path + ".users", ignore_errors=True)
            try:
                os.unlink(entry.path + ".lock")
            except FileNotFoundError:
                pass

    @staticmethod
    def _in_use(folder: str) -> bool:
        users = folder + ".users"
        try:
            pids = os.listdir(users)
        except FileNotFoundError:
            return False
        alive = False
        for pid in pids:
            try:
                os.kill(int(pid), 0)
                alive = True
            except (ProcessLookupError, ValueError):
                os.unlink(os.path.join(users, pid))  # a user that has exited
            except PermissionError:
                alive = True
        # a folder made a moment ago by a process still setting it up counts as used
        return alive or time.time() - os.stat(folder).st_mtime < 1


def _extract(archive: zipfile.ZipFile, target: str) -> None:
    """Unpack, keeping the files' modes, and refusing paths that leave ``target``."""
    os.makedirs(target)
    base = os.path.realpath(target)
    for info in archive.infolist():
        dest = os.path.realpath(os.path.join(target, info.filename))
        if not dest.startswith(base + os.sep) and dest != base:
            raise ValueError(f"the package entry {info.filename!r} points outside its folder")
        archive.extract(info, target)
        mode = (info.external_attr >> 16) & 0o777
        if mode and not info.is_dir():
            os.chmod(dest, mode)
