"""Checkpoints: a directory of files that a trial saves and resumes from."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

__all__ = ["Checkpoint"]


class Checkpoint:
    """A directory of files a trainable saved with ``tune.report(..., checkpoint=...)``.

    What ``report`` is given is copied into the trial's directory under the experiment's
    ``storage_path`` (``checkpoint_000000``, ``checkpoint_000001``...), so the trainable may
    delete its own copy; the :class:`Checkpoint` of a :class:`~aray.tune.Result`, and what
    :func:`aray.tune.get_checkpoint` returns, point there. The storage path must be a
    directory every node sees (a shared file system) for trials on other nodes to save
    checkpoints, as in Ray.

    Example:
        >>> import os, tempfile
        >>> from aray.tune import Checkpoint
        >>> d = tempfile.mkdtemp()
        >>> with open(os.path.join(d, "w.txt"), "w") as f:
        ...     _ = f.write("1.5")
        >>> ckpt = Checkpoint.from_directory(d)
        >>> with ckpt.as_directory() as path:
        ...     print(open(os.path.join(path, "w.txt")).read())
        1.5
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str]) -> Checkpoint:
        """The checkpoint of the files in directory ``path`` (not copied until reported).

        Example:
            >>> import tempfile
            >>> Checkpoint.from_directory(tempfile.mkdtemp()).path.startswith("/")
            True
        """
        path = os.path.abspath(os.fspath(path))
        if not os.path.isdir(path):
            raise NotADirectoryError(f"a checkpoint is a directory, and {path} is not one")
        return cls(path)

    def to_directory(self, path: str | os.PathLike[str] | None = None) -> str:
        """Copy the checkpoint's files to directory ``path`` (a new temporary one if None);
        returns it.

        Example:
            >>> import os, tempfile
            >>> d = tempfile.mkdtemp()
            >>> open(os.path.join(d, "f"), "w").close()
            >>> os.listdir(Checkpoint.from_directory(d).to_directory())
            ['f']
        """
        target = os.fspath(path) if path is not None else tempfile.mkdtemp(prefix="checkpoint-")
        shutil.copytree(self.path, target, dirs_exist_ok=True)
        return target

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        """A directory with the checkpoint's files, for the ``with`` block: the checkpoint's
        own (it is on this machine's file system), so do not change its files.

        Example:
            >>> import os, tempfile
            >>> d = tempfile.mkdtemp()
            >>> with Checkpoint.from_directory(d).as_directory() as path:
            ...     os.path.isdir(path)
            True
        """
        yield self.path

    def __repr__(self) -> str:
        return f"Checkpoint(path={self.path!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Checkpoint) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)
