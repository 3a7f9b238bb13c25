"""What runs in a trial's actor: the trainable, and the functions it calls (:func:`report`,
:func:`get_checkpoint`, :func:`get_context`).

``report`` hands each result to the actor's :meth:`TrialRunner.next` (which the Tuner calls)
and waits for the Tuner's decision on it; when the decision is STOP, it raises
:class:`StopTrial` in the trainable, which ends it there. So a trial runs at most one result
ahead of the decisions on it, and a stopped trial stops at once, in its own code.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import time
from collections.abc import Callable
from typing import Any

from .checkpoint import Checkpoint

__all__ = ["StopTrial", "TrialContext", "get_checkpoint", "get_context", "report"]

CONTINUE, STOP = "CONTINUE", "STOP"


class StopTrial(BaseException):
    """Raised by :func:`report` in a trainable that the Tuner stops (a scheduler's decision
    or a ``stop`` criterion). It derives from BaseException, as KeyboardInterrupt does, so
    that ``except Exception`` in a training loop does not keep a stopped trial running.

    Example:
        >>> issubclass(StopTrial, Exception)
        False
    """


class TrialContext:
    """What a running trainable can ask about its trial (Ray's ``tune.get_context()``).

    Example:
        >>> from aray import tune
        >>> def train(config):
        ...     tune.report({"id": tune.get_context().get_trial_id()})
    """

    def __init__(self, trial_id: str, trial_dir: str, experiment_name: str) -> None:
        self._trial_id, self._trial_dir, self._name = trial_id, trial_dir, experiment_name

    def get_trial_id(self) -> str:
        """The trial's id.

        Example:
            >>> TrialContext("t_00000", "/tmp/x", "exp").get_trial_id()
            't_00000'
        """
        return self._trial_id

    def get_trial_dir(self) -> str:
        """The trial's directory under the experiment's (its results and checkpoints).

        Example:
            >>> TrialContext("t_00000", "/tmp/x", "exp").get_trial_dir()
            '/tmp/x'
        """
        return self._trial_dir

    def get_experiment_name(self) -> str:
        """The experiment's name (``RunConfig(name=...)``).

        Example:
            >>> TrialContext("t_00000", "/tmp/x", "exp").get_experiment_name()
            'exp'
        """
        return self._name


class _Session:
    """The state of the trial that runs in this process."""

    def __init__(self, runner: TrialRunner) -> None:
        self.runner = runner


_session: _Session | None = None  # one trial per actor process


def _current() -> _Session:
    if _session is None:
        raise RuntimeError("tune.report(), get_checkpoint() and get_context() work inside a "
                           "trainable that a Tuner runs, and this is not one")
    return _session


def report(metrics: dict[str, Any] | None = None, *, checkpoint: Checkpoint | None = None,
           **kwargs: Any) -> None:
    """Report a trial's ``metrics`` (one result, one training iteration), with an optional
    ``checkpoint`` to resume from, and wait for the Tuner's decision on it.

    The checkpoint's files are copied into the trial's directory before ``report`` returns,
    so the trainable may delete its own. If the trial is to stop, ``report`` raises
    :class:`StopTrial`, which ends the trainable. Ray's older ``report(**metrics)`` form
    works too.

    Example:
        >>> from aray import tune
        >>> def train(config):
        ...     for step in range(10):
        ...         tune.report({"loss": config["lr"] / (step + 1)})
    """
    metrics = {**(metrics or {}), **kwargs}
    _current().runner._report(metrics, checkpoint)


def get_checkpoint() -> Checkpoint | None:
    """The checkpoint the trial resumes from (its last, after a failure or a restore of the
    experiment); None when it starts afresh.

    Example:
        >>> import os
        >>> from aray import tune
        >>> def train(config):
        ...     start = 0
        ...     ckpt = tune.get_checkpoint()
        ...     if ckpt:
        ...         with ckpt.as_directory() as d:
        ...             start = int(open(os.path.join(d, "step")).read()) + 1
    """
    path = _current().runner.checkpoint_path
    return Checkpoint(path) if path else None


def get_context() -> TrialContext:
    """The :class:`TrialContext` of the running trial.

    Example:
        >>> from aray import tune
        >>> def train(config):
        ...     tune.report({"dir": tune.get_context().get_trial_dir()})
    """
    runner = _current().runner
    return TrialContext(runner.trial_id, runner.trial_dir, runner.experiment_name)


class TrialRunner:
    """The actor of one trial (made remote by the Tuner with the trial's resources).

    :meth:`run` runs the trainable; :meth:`next`, called beside it, passes the decision on
    the previous result to the trainable and returns the trainable's next event,
    ``("result", metrics, checkpoint)``, ``("done",)`` or ``("stopped",)``; the trainable's
    exception is raised from it.

    Example:
        >>> import threading
        >>> from aray import tune
        >>> def train(config):
        ...     tune.report({"x": config["x"]})
        >>> r = TrialRunner(train, {"x": 1}, "t_00000", "/tmp/t", "exp")
        >>> threading.Thread(target=r.run).start()
        >>> r.next(None)[1]["x"]
        1
        >>> r.next("CONTINUE")
        ('done',)
    """

    def __init__(self, trainable: Callable[[dict[str, Any]], Any], config: dict[str, Any],
                 trial_id: str, trial_dir: str, experiment_name: str,
                 checkpoint_path: str | None = None, iteration: int = 0,
                 time_total: float = 0.0, checkpoint_index: int = 0) -> None:
        self.trainable, self.config = trainable, config
        self.trial_id, self.trial_dir, self.experiment_name = trial_id, trial_dir, experiment_name
        self.checkpoint_path = checkpoint_path
        self.iteration, self.time_offset = iteration, time_total
        self.checkpoint_index = checkpoint_index
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.decisions: queue.Queue[str] = queue.Queue()
        self.hostname, self.pid = socket.gethostname(), os.getpid()

    def run(self) -> None:
        """Run the trainable to its end (the Tuner calls it once, and :meth:`next` beside
        it: the actor runs two calls at once). It runs in the actor's own call, not in a
        thread of its own, so that ``aray.get_runtime_context()`` in it is the actor's.

        Example:
            >>> r = TrialRunner(lambda config: None, {}, "t_00000", "/tmp/t", "exp")
            >>> r.run()
            >>> r.next(None)
            ('done',)
        """
        global _session
        _session = _Session(self)
        self.started = self.last = time.time()
        try:
            self.trainable(self.config)
            self.events.put(("done",))
        except StopTrial:
            self.events.put(("stopped",))
        except BaseException as e:  # any error of the trainable is the trial's
            self.events.put(("error", e))

    def _report(self, metrics: dict[str, Any], checkpoint: Checkpoint | None) -> None:
        now = time.time()
        self.iteration += 1
        saved = None
        if checkpoint is not None:
            saved = os.path.join(self.trial_dir, f"checkpoint_{self.checkpoint_index:06d}")
            self.checkpoint_index += 1
            if os.path.abspath(checkpoint.path) != saved:
                shutil.copytree(checkpoint.path, saved, dirs_exist_ok=True)
            self.checkpoint_path = saved
        result = {
            **metrics,
            "training_iteration": self.iteration,
            "time_this_iter_s": now - self.last,
            "time_total_s": self.time_offset + now - self.started,
            "timestamp": int(now),
            "trial_id": self.trial_id,
            "pid": self.pid,
            "hostname": self.hostname,
            "done": False,
            "checkpoint_dir_name": os.path.basename(saved) if saved else None,
        }
        self.last = now
        self.events.put(("result", result, saved))
        if self.decisions.get() == STOP:
            raise StopTrial(self.trial_id)

    def next(self, decision: str | None) -> tuple[Any, ...]:
        """Pass ``decision`` (CONTINUE or STOP, None for the first call) on the last result,
        and return the trainable's next event.

        Example:
            >>> r = TrialRunner(lambda config: None, {}, "t_00000", "/tmp/t", "exp")
            >>> r.run()
            >>> r.next(None)
            ('done',)
        """
        if decision is not None:
            self.decisions.put(decision)
        event = self.events.get()
        if event[0] == "error":
            raise event[1]
        return event
