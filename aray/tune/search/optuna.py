"""Bayesian search with Optuna (``pip install optuna``, or aray's ``tune`` extra)."""

from __future__ import annotations

from typing import Any

from . import Searcher, _is_grid, flatten, unflatten
from .sample import Categorical, Domain, Float, Integer

__all__ = ["OptunaSearch"]


def _distribution(path: tuple[str, ...], domain: Any) -> Any:
    import optuna

    name = "/".join(path)
    if isinstance(domain, Float):
        if domain.log and domain.q is not None:
            raise ValueError(f"{name}: Optuna has no log-uniform range with a step")
        return optuna.distributions.FloatDistribution(domain.lower, domain.upper,
                                                      log=domain.log, step=domain.q)
    if isinstance(domain, Integer):
        # aray's (and Ray's) upper bound is excluded, Optuna's is included
        step = domain.q if domain.q > 1 and not domain.log else 1
        return optuna.distributions.IntDistribution(domain.lower, domain.upper - 1,
                                                    log=domain.log, step=step)
    if isinstance(domain, Categorical):
        return optuna.distributions.CategoricalDistribution(domain.categories)
    raise ValueError(f"{name}: OptunaSearch cannot search a {type(domain).__name__} "
                     "(uniform, loguniform, quniform, randint and choice it can)")


class OptunaSearch(Searcher):
    """A :class:`~aray.tune.search.Searcher` that asks an Optuna study (TPE by default, a
    Bayesian method) for each trial's config, and tells it each trial's last result.

    The space is the Tuner's ``param_space`` (its ``uniform``, ``loguniform``,
    ``quniform``, ``randint`` and ``choice`` values; ``grid_search`` is not for it) unless
    ``space`` is given. A trial that fails is told to the study as failed.

    Args:
        space: the space to search, in aray's terms (default: the ``param_space``).
        metric: the key to optimize (default: the TuneConfig's).
        mode: "min" or "max" (default: the TuneConfig's).
        points_to_evaluate: configs to try first.
        sampler: an Optuna sampler (default: TPE, seeded with ``seed``).
        seed: the seed of the default sampler.

    Example:
        >>> from aray import tune
        >>> from aray.tune.search.optuna import OptunaSearch
        >>> config = tune.TuneConfig(metric="loss", mode="min", num_samples=20,
        ...                          search_alg=OptunaSearch(seed=0))
    """

    def __init__(self, space: dict[str, Any] | None = None, metric: str | None = None,
                 mode: str | None = None, points_to_evaluate: list[dict[str, Any]] | None = None,
                 sampler: Any = None, seed: int | None = None) -> None:
        import optuna  # raises here, when the searcher is made, if optuna is missing

        super().__init__(metric, mode)
        self.space = space
        self.points_to_evaluate = list(points_to_evaluate or [])
        self.sampler = sampler or optuna.samplers.TPESampler(seed=seed)
        self.study: Any = None
        self.distributions: dict[str, Any] = {}
        self.constants: dict[tuple[str, ...], Any] = {}
        self.asked: dict[str, Any] = {}

    def set_search_properties(self, metric: str | None, mode: str | None,
                              config: dict[str, Any], **spec: Any) -> bool:
        import optuna

        super().set_search_properties(metric, mode, config)
        if not self.metric or not self.mode:
            raise ValueError("OptunaSearch needs a metric and a mode: give them to it or to "
                             "TuneConfig(metric=..., mode=...)")
        for path, value in flatten(self.space if self.space is not None else config).items():
            if _is_grid(value):
                raise ValueError(f"{'/'.join(path)}: OptunaSearch does not take grid_search "
                                 "(use choice)")
            if isinstance(value, Domain):
                self.distributions["/".join(path)] = _distribution(path, value)
            else:
                self.constants[path] = value
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-trial lines: noise
        direction = (optuna.study.StudyDirection.MAXIMIZE if self.mode == "max"
                     else optuna.study.StudyDirection.MINIMIZE)
        self.study = optuna.create_study(sampler=self.sampler, direction=direction)
        for point in self.points_to_evaluate:
            self.study.enqueue_trial({"/".join(p): v for p, v in flatten(point).items()})
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        trial = self.study.ask(self.distributions)
        self.asked[trial_id] = trial
        leaves = dict(self.constants)
        leaves.update({tuple(name.split("/")): value for name, value in trial.params.items()})
        return unflatten(leaves)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        import optuna

        trial = self.asked.pop(trial_id, None)
        if trial is None:
            return
        value = (result or {}).get(self.metric or "")
        if error or value is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, float(value))
