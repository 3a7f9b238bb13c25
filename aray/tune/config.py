"""The settings of an experiment: :class:`TuneConfig` (what to search, how many trials, how
to decide) and :class:`RunConfig` (where results go, when trials stop, failures)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CheckpointConfig", "FailureConfig", "RunConfig", "TuneConfig"]


@dataclass
class TuneConfig:
    """What to search and how.

    Attributes:
        metric: the result key that makes a trial better (for the scheduler, the search
            algorithm and ``get_best_result()``).
        mode: "min" or "max".
        num_samples: how many times to sample the ``param_space`` (each point of its
            grids this many times); with a search algorithm, how many trials.
        max_concurrent_trials: how many trials run at once (default: as many as the
            cluster's CPUs hold, given each trial's resources).
        search_alg: a :class:`~aray.tune.search.Searcher` (default: grid and random
            search, :class:`~aray.tune.search.BasicVariantGenerator`).
        scheduler: a :class:`~aray.tune.schedulers.TrialScheduler` (default: FIFO, which
            stops no trial early).
        time_budget_s: stop the experiment (its running trials too) after this long.

    Example:
        >>> from aray import tune
        >>> config = tune.TuneConfig(metric="loss", mode="min", num_samples=4)
    """

    metric: str | None = None
    mode: str | None = None
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    search_alg: Any = None
    scheduler: Any = None
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in (None, "min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {self.mode!r}")
        if self.num_samples < 1:
            raise ValueError("num_samples must be at least 1")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ValueError("max_concurrent_trials must be at least 1 (or None)")


@dataclass
class FailureConfig:
    """What to do when a trial fails.

    Attributes:
        max_failures: how many times a failed trial is retried (from its last checkpoint,
            or from the start if it has none); -1 for always.
        fail_fast: stop the whole experiment at the first trial that fails for good.

    Example:
        >>> from aray import tune
        >>> run = tune.RunConfig(failure_config=tune.FailureConfig(max_failures=2))
    """

    max_failures: int = 0
    fail_fast: bool = False


@dataclass
class CheckpointConfig:
    """Which checkpoints to keep.

    Attributes:
        num_to_keep: keep each trial's latest this many checkpoints (None: all).
        checkpoint_frequency: a class trainable's checkpoint every this many steps (0:
            none); a function trainable saves its own with ``report``.
        checkpoint_at_end: a class trainable's checkpoint after its last step.

    Example:
        >>> from aray import tune
        >>> run = tune.RunConfig(checkpoint_config=tune.CheckpointConfig(num_to_keep=2))
    """

    num_to_keep: int | None = None
    checkpoint_frequency: int = 0
    checkpoint_at_end: bool = False


@dataclass
class RunConfig:
    """Where an experiment's files go, and when its trials stop.

    Attributes:
        name: the experiment's directory under ``storage_path`` (default: the
            trainable's name and the time).
        storage_path: where experiments go (default: ``~/aray_results``); a directory
            every node sees when trials save checkpoints on several nodes.
        stop: stop a trial when a result reaches these values (``{"training_iteration":
            10}`` stops it at its 10th result: a key stops it at a value at least as high),
            or when ``stop(trial_id, result)`` returns True.
        failure_config: retries of failed trials.
        checkpoint_config: which checkpoints to keep.
        verbose: 0 prints nothing, 1 the progress table (or status lines) and a summary.

    Example:
        >>> from aray import tune
        >>> run = tune.RunConfig(name="exp", stop={"training_iteration": 5})
    """

    name: str | None = None
    storage_path: str | None = None
    stop: dict[str, Any] | Callable[[str, dict[str, Any]], bool] | None = None
    failure_config: FailureConfig | None = None
    checkpoint_config: CheckpointConfig | None = None
    verbose: int = 1
