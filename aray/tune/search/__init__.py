"""Search algorithms: what config each new trial gets.

:class:`BasicVariantGenerator` (the default) crosses the ``grid_search`` keys of the
``param_space`` and draws its other domains at random, ``num_samples`` times over, as Ray's
does. A :class:`Searcher` suggests one config at a time and learns from the results of the
trials it suggested: :class:`aray.tune.search.optuna.OptunaSearch` is one.
"""

from __future__ import annotations

import itertools
import random
import types
from typing import Any

from .sample import Domain, Function

__all__ = ["BasicVariantGenerator", "Searcher", "flatten", "generate_variants", "unflatten"]


def _is_grid(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"grid_search"}


def flatten(config: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """The leaves of a nested config, keyed by their paths (a grid is a leaf).

    Example:
        >>> flatten({"a": {"b": 1}, "c": 2})
        {('a', 'b'): 1, ('c',): 2}
    """
    out: dict[tuple[str, ...], Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value and not _is_grid(value):
            out.update(flatten(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def unflatten(leaves: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    """The nested config of :func:`flatten`'s leaves.

    Example:
        >>> unflatten({("a", "b"): 1, ("c",): 2})
        {'a': {'b': 1}, 'c': 2}
    """
    out: dict[str, Any] = {}
    for path, value in leaves.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _draw(leaves: dict[tuple[str, ...], Any], rng: random.Random) -> dict[str, Any]:
    drawn = {path: value.sample(rng) if isinstance(value, Domain)
             and not isinstance(value, Function) else value for path, value in leaves.items()}
    # sample_from sees the config with every other value drawn, as in Ray
    functions = [path for path, value in leaves.items() if isinstance(value, Function)]
    for path in functions:
        spec = types.SimpleNamespace(config=unflatten(drawn))
        drawn[path] = leaves[path].sample(rng, spec)
    return unflatten(drawn)


def generate_variants(param_space: dict[str, Any], num_samples: int = 1,
                      rng: random.Random | None = None) -> list[dict[str, Any]]:
    """Every config of a search: each point of the grids' cross product, ``num_samples``
    times, with the other domains drawn anew for each.

    Example:
        >>> from aray import tune
        >>> generate_variants({"a": tune.grid_search([1, 2]), "b": 0}, num_samples=2)
        [{'a': 1, 'b': 0}, {'a': 2, 'b': 0}, {'a': 1, 'b': 0}, {'a': 2, 'b': 0}]
    """
    rng = rng or random.Random()
    leaves = flatten(param_space)
    grid_paths = [path for path, value in leaves.items() if _is_grid(value)]
    # the first grid varies fastest, as in Ray's listing of a grid
    points = list(itertools.product(*(leaves[p]["grid_search"] for p in reversed(grid_paths))))
    variants = []
    for _ in range(num_samples):
        for point in points:
            fixed = dict(leaves)
            fixed.update(zip(reversed(grid_paths), point))
            variants.append(_draw(fixed, rng))
    return variants


class Searcher:
    """A search algorithm that suggests one config at a time and learns from results.

    Subclasses implement :meth:`suggest` and :meth:`on_trial_complete` (and may implement
    :meth:`on_trial_result`); the Tuner calls :meth:`set_search_properties` first, with the
    ``TuneConfig``'s metric and mode and the ``param_space``.

    Example:
        >>> class Constant(Searcher):
        ...     def suggest(self, trial_id):
        ...         return {"x": 1}
        >>> Constant().suggest("t1")
        {'x': 1}
    """

    #: what :meth:`suggest` returns when the search has no more trials to suggest
    FINISHED = "FINISHED"

    def __init__(self, metric: str | None = None, mode: str | None = None) -> None:
        if mode not in (None, "min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        self.metric, self.mode = metric, mode

    def set_search_properties(self, metric: str | None, mode: str | None,
                              config: dict[str, Any], **spec: Any) -> bool:
        """Take the metric, mode and param space of the Tuner (those given to the searcher
        itself win); returns True.

        Example:
            >>> s = Searcher()
            >>> s.set_search_properties("loss", "min", {})
            True
        """
        self.metric = self.metric or metric
        self.mode = self.mode or mode
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The config of a new trial; None if none can be suggested now (wait for results),
        :attr:`FINISHED` if the search is over.

        Example:
            >>> BasicVariantGenerator().suggest("t1")
            'FINISHED'
        """
        raise NotImplementedError

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """A trial reported ``result`` (the default ignores it).

        Example:
            >>> Searcher().on_trial_result("t1", {"loss": 1.0})
        """

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        """A trial ended, with its last ``result`` (None if it reported nothing); ``error``
        if it failed.

        Example:
            >>> Searcher().on_trial_complete("t1", {"loss": 1.0})
        """


class BasicVariantGenerator(Searcher):
    """Grid and random search, the default: the configs of :func:`generate_variants`, one
    per trial.

    Args:
        random_state: seed of the draws (or a :class:`random.Random`), to draw the same
            configs again.
        points_to_evaluate: configs to try first (merged over draws of the space).

    Example:
        >>> from aray import tune
        >>> s = BasicVariantGenerator(random_state=0)
        >>> s.set_search_properties(None, None, {"x": tune.grid_search([1, 2])})
        True
        >>> [s.suggest("a"), s.suggest("b"), s.suggest("c")]
        [{'x': 1}, {'x': 2}, 'FINISHED']
    """

    def __init__(self, random_state: int | random.Random | None = None,
                 points_to_evaluate: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.rng = (random_state if isinstance(random_state, random.Random)
                    else random.Random(random_state))
        self.points_to_evaluate = list(points_to_evaluate or [])
        self.pending: list[dict[str, Any]] = []

    def set_search_properties(self, metric: str | None, mode: str | None,
                              config: dict[str, Any], num_samples: int = 1,
                              **spec: Any) -> bool:
        super().set_search_properties(metric, mode, config)
        first = []
        for point in self.points_to_evaluate:
            base = generate_variants(config, 1, self.rng)[0]
            first.append(unflatten({**flatten(base), **flatten(point)}))
        self.pending = first + generate_variants(config, num_samples, self.rng)
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        return self.pending.pop(0) if self.pending else self.FINISHED
