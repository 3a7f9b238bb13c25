"""aray.tune: parallel hyperparameter search, with Ray Tune's API.

A trainable is a function of a config that reports results with :func:`report`. A
:class:`Tuner` runs it once per config of the ``param_space`` (a trial), each trial in an
actor of its own, as many at once as the cluster holds, and returns a :class:`ResultGrid`.
Schedulers (:mod:`aray.tune.schedulers`) stop bad trials early; search algorithms
(:mod:`aray.tune.search`) pick the configs.

Example:
    >>> import tempfile
    >>> import aray
    >>> from aray import tune
    >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
    >>> def train(config):
    ...     for step in range(3):
    ...         tune.report({"loss": (config["x"] - 2) ** 2 + 1 / (step + 1)})
    >>> grid = tune.Tuner(
    ...     train, param_space={"x": tune.grid_search([1, 2, 3])},
    ...     tune_config=tune.TuneConfig(metric="loss", mode="min"),
    ...     run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), verbose=0)).fit()
    >>> grid.get_best_result().config
    {'x': 2}
"""

from __future__ import annotations

from .checkpoint import Checkpoint
from .config import CheckpointConfig, FailureConfig, RunConfig, TuneConfig
from .result_grid import Result, ResultGrid
from .search.sample import (
    choice,
    grid_search,
    lograndint,
    loguniform,
    qloguniform,
    qrandint,
    quniform,
    randint,
    randn,
    sample_from,
    uniform,
)
from .session import StopTrial, TrialContext, get_checkpoint, get_context, report
from .trainable import Trainable
from .tuner import Tuner, with_resources

# isort: split
from . import schedulers, search  # noqa: E402  (as in Ray: tune.schedulers, tune.search)

__all__ = [
    "Checkpoint",
    "CheckpointConfig",
    "FailureConfig",
    "Result",
    "ResultGrid",
    "RunConfig",
    "StopTrial",
    "Trainable",
    "TrialContext",
    "TuneConfig",
    "Tuner",
    "choice",
    "get_checkpoint",
    "get_context",
    "grid_search",
    "lograndint",
    "loguniform",
    "qloguniform",
    "qrandint",
    "quniform",
    "randint",
    "randn",
    "report",
    "sample_from",
    "schedulers",
    "search",
    "uniform",
    "with_resources",
]
