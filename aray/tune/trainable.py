"""Class trainables: Ray Tune's ``Trainable`` API, run as a function trainable."""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from .checkpoint import Checkpoint
from .session import get_checkpoint, report

__all__ = ["Trainable", "as_function"]


class Trainable:
    """A trainable as a class: :meth:`setup` once, then :meth:`step` once per result, with
    :meth:`save_checkpoint` and :meth:`load_checkpoint` for checkpoints.

    The Tuner calls ``step()`` until a result has ``done=True`` in it, the ``stop``
    criteria are met or a scheduler stops the trial; it saves a checkpoint every
    ``CheckpointConfig(checkpoint_frequency=N)`` steps and at the end with
    ``checkpoint_at_end=True``, and loads the last one when the trial starts again.

    Example:
        >>> from aray import tune
        >>> class Counter(tune.Trainable):
        ...     def setup(self, config):
        ...         self.n = config["start"]
        ...     def step(self):
        ...         self.n += 1
        ...         return {"n": self.n, "done": self.n >= 3}
        >>> c = Counter({"start": 1})
        >>> c.step(), c.iteration
        ({'n': 2, 'done': False}, 0)
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = dict(config or {})
        #: how many steps have been reported
        self.iteration = 0
        self.setup(self.config)

    @property
    def training_iteration(self) -> int:
        """The same as :attr:`iteration` (Ray's two names).

        Example:
            >>> Trainable().training_iteration
            0
        """
        return self.iteration

    def setup(self, config: dict[str, Any]) -> None:
        """Set up the trial from its config (the default does nothing).

        Example:
            >>> Trainable({"x": 1}).config
            {'x': 1}
        """

    def step(self) -> dict[str, Any]:
        """Train for one iteration and return its result (``"done": True`` to end).

        Example:
            >>> class One(Trainable):
            ...     def step(self):
            ...         return {"done": True}
            >>> One().step()
            {'done': True}
        """
        raise NotImplementedError

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any] | None:
        """Write the trial's state into ``checkpoint_dir`` (the default saves nothing).

        Example:
            >>> import tempfile
            >>> Trainable().save_checkpoint(tempfile.mkdtemp()) is None
            True
        """
        return None

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        """Read back what :meth:`save_checkpoint` wrote (the default reads nothing).

        Example:
            >>> import tempfile
            >>> Trainable().load_checkpoint(tempfile.mkdtemp())
        """

    def cleanup(self) -> None:
        """Release what :meth:`setup` took, when the trial ends (the default does nothing).

        Example:
            >>> Trainable().cleanup()
        """


def as_function(cls: type[Trainable], checkpoint_frequency: int = 0,
                checkpoint_at_end: bool = False) -> Callable[[dict[str, Any]], None]:
    """The function trainable that runs the class trainable ``cls``.

    Example:
        >>> from aray import tune
        >>> class One(tune.Trainable):
        ...     def step(self):
        ...         return {"done": True}
        >>> as_function(One).__name__
        'One'
    """

    def save(trainable: Trainable) -> tuple[Checkpoint, str]:
        directory = tempfile.mkdtemp(prefix="checkpoint-")
        trainable.save_checkpoint(directory)
        return Checkpoint.from_directory(directory), directory

    @functools.wraps(cls, updated=())
    def run(config: dict[str, Any]) -> None:
        trainable = cls(config)
        try:
            checkpoint = get_checkpoint()
            if checkpoint is not None:
                with checkpoint.as_directory() as directory:
                    trainable.load_checkpoint(directory)
            while True:
                result = dict(trainable.step())
                done = bool(result.pop("done", False))
                trainable.iteration += 1
                due = (checkpoint_frequency and trainable.iteration % checkpoint_frequency == 0
                       or done and checkpoint_at_end)
                if not due:
                    report(result)
                else:
                    saved, directory = save(trainable)
                    try:
                        report(result, checkpoint=saved)
                    finally:  # report copied it into the trial's directory
                        shutil.rmtree(directory, ignore_errors=True)
                if done:
                    return
        finally:
            trainable.cleanup()

    return run
