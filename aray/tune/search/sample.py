"""Search space primitives: the values of a ``param_space`` that are drawn per trial.

Each domain draws its value from a :class:`random.Random` the search algorithm owns, so a
seeded search draws the same configs again. ``grid_search`` is not drawn: it marks a key
whose values are crossed with every other grid (see :mod:`aray.tune.search`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Categorical", "Domain", "Float", "Function", "Integer", "Normal", "choice",
           "grid_search",
           "lograndint", "loguniform", "qloguniform", "qrandint", "quniform", "randint",
           "randn", "sample_from", "uniform"]


class Domain:
    """A set of values a config key may take, and how to draw one.

    Example:
        >>> import random
        >>> from aray import tune
        >>> 0.0 <= tune.uniform(0, 1).sample(random.Random(0)) < 1.0
        True
    """

    def sample(self, rng: random.Random) -> Any:
        """Draw a value with ``rng``.

        Example:
            >>> import random
            >>> from aray import tune
            >>> tune.choice(["a"]).sample(random.Random(0))
            'a'
        """
        raise NotImplementedError


class Float(Domain):
    """Floats in ``[lower, upper)``, drawn uniformly or log-uniformly, rounded to ``q``.

    Example:
        >>> import random
        >>> from aray.tune.search.sample import Float
        >>> Float(1, 2).sample(random.Random(0)) < 2
        True
    """

    def __init__(self, lower: float, upper: float, *, log: bool = False, base: float = 10,
                 q: float | None = None) -> None:
        if not lower < upper:
            raise ValueError(f"lower ({lower}) must be less than upper ({upper})")
        if log and lower <= 0:
            raise ValueError(f"a log-uniform range must be positive, not from {lower}")
        self.lower, self.upper, self.log, self.base, self.q = lower, upper, log, base, q

    def sample(self, rng: random.Random) -> float:
        if self.log:
            lo, hi = math.log(self.lower, self.base), math.log(self.upper, self.base)
            value = self.base ** rng.uniform(lo, hi)
        else:
            value = rng.uniform(self.lower, self.upper)
        if self.q is not None:
            # rounded onto the grid of q, as Ray's quniform, and kept inside the bounds
            value = round(value / self.q) * self.q
            value = min(max(value, self.lower), self.upper)
        return value

    def __repr__(self) -> str:
        kind = "loguniform" if self.log else "uniform"
        return f"{kind}({self.lower}, {self.upper}" + (f", q={self.q})" if self.q else ")")


class Integer(Domain):
    """Integers in ``[lower, upper)`` (``upper`` excluded, as Ray's ``randint``).

    Example:
        >>> import random
        >>> from aray.tune.search.sample import Integer
        >>> Integer(3, 4).sample(random.Random(0))
        3
    """

    def __init__(self, lower: int, upper: int, *, log: bool = False, q: int = 1) -> None:
        if not lower < upper:
            raise ValueError(f"lower ({lower}) must be less than upper ({upper})")
        self.lower, self.upper, self.log, self.q = int(lower), int(upper), log, int(q)

    def sample(self, rng: random.Random) -> int:
        if self.log:
            value = int(math.exp(rng.uniform(math.log(self.lower), math.log(self.upper))))
        else:
            value = rng.randrange(self.lower, self.upper)
        if self.q > 1:
            value = int(round(value / self.q) * self.q)
        return min(max(value, self.lower), self.upper - 1)

    def __repr__(self) -> str:
        return f"randint({self.lower}, {self.upper})"


class Categorical(Domain):
    """One of ``categories``, each as likely.

    Example:
        >>> import random
        >>> from aray.tune.search.sample import Categorical
        >>> Categorical([7]).sample(random.Random(0))
        7
    """

    def __init__(self, categories: Sequence[Any]) -> None:
        if not categories:
            raise ValueError("choice() needs at least one category")
        self.categories = list(categories)

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.categories)

    def __repr__(self) -> str:
        return f"choice({self.categories!r})"


class Normal(Domain):
    """Floats from a normal distribution (``randn``).

    Example:
        >>> import random
        >>> from aray.tune.search.sample import Normal
        >>> isinstance(Normal(0, 1).sample(random.Random(0)), float)
        True
    """

    def __init__(self, mean: float = 0.0, sd: float = 1.0) -> None:
        self.mean, self.sd = mean, sd

    def sample(self, rng: random.Random) -> float:
        return rng.gauss(self.mean, self.sd)


class Function(Domain):
    """A value computed by ``func(spec)``, where ``spec.config`` is the rest of the trial's
    config with its other values drawn (Ray's ``sample_from``).

    Example:
        >>> import random
        >>> from aray.tune.search.sample import Function
        >>> Function(lambda spec: 42).sample(random.Random(0))
        42
    """

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func

    def sample(self, rng: random.Random, spec: Any = None) -> Any:
        return self.func(spec)


def uniform(lower: float, upper: float) -> Float:
    """A float drawn uniformly from ``[lower, upper)``.

    Example:
        >>> from aray import tune
        >>> space = {"dropout": tune.uniform(0.0, 0.5)}
    """
    return Float(lower, upper)


def quniform(lower: float, upper: float, q: float) -> Float:
    """A float drawn uniformly from ``[lower, upper]`` and rounded to a multiple of ``q``.

    Example:
        >>> import random
        >>> from aray import tune
        >>> tune.quniform(0, 1, 0.25).sample(random.Random(0)) in (0, 0.25, 0.5, 0.75, 1)
        True
    """
    return Float(lower, upper, q=q)


def loguniform(lower: float, upper: float, base: float = 10) -> Float:
    """A float drawn so that its logarithm is uniform in ``[log lower, log upper)``: for
    learning rates and other scales.

    Example:
        >>> from aray import tune
        >>> space = {"lr": tune.loguniform(1e-4, 1e-1)}
    """
    return Float(lower, upper, log=True, base=base)


def qloguniform(lower: float, upper: float, q: float, base: float = 10) -> Float:
    """:func:`loguniform`, rounded to a multiple of ``q``.

    Example:
        >>> from aray import tune
        >>> space = {"lr": tune.qloguniform(1e-4, 1e-1, 1e-4)}
    """
    return Float(lower, upper, log=True, base=base, q=q)


def randint(lower: int, upper: int) -> Integer:
    """An integer drawn uniformly from ``[lower, upper)`` (``upper`` excluded, as in Ray).

    Example:
        >>> from aray import tune
        >>> space = {"layers": tune.randint(1, 5)}  # 1, 2, 3 or 4
    """
    return Integer(lower, upper)


def qrandint(lower: int, upper: int, q: int = 1) -> Integer:
    """:func:`randint`, rounded to a multiple of ``q``.

    Example:
        >>> from aray import tune
        >>> space = {"batch": tune.qrandint(16, 129, 16)}
    """
    return Integer(lower, upper, q=q)


def lograndint(lower: int, upper: int) -> Integer:
    """An integer in ``[lower, upper)`` whose logarithm is drawn uniformly.

    Example:
        >>> from aray import tune
        >>> space = {"units": tune.lograndint(8, 1024)}
    """
    return Integer(lower, upper, log=True)


def randn(mean: float = 0.0, sd: float = 1.0) -> Normal:
    """A float from a normal distribution.

    Example:
        >>> from aray import tune
        >>> space = {"noise": tune.randn(0, 0.1)}
    """
    return Normal(mean, sd)


def choice(categories: Sequence[Any]) -> Categorical:
    """One of ``categories``, drawn uniformly.

    Example:
        >>> from aray import tune
        >>> space = {"activation": tune.choice(["relu", "tanh"])}
    """
    return Categorical(categories)


def sample_from(func: Callable[..., Any]) -> Function:
    """A value computed from the rest of the config: ``func(spec)`` sees it as
    ``spec.config``.

    Example:
        >>> from aray import tune
        >>> space = {"a": tune.randint(1, 4),
        ...          "b": tune.sample_from(lambda spec: spec.config["a"] * 2)}
    """
    return Function(func)


def grid_search(values: Sequence[Any]) -> dict[str, list[Any]]:
    """Try every one of ``values``: the trials cross the grids of all keys (and run each
    point ``num_samples`` times).

    Example:
        >>> from aray import tune
        >>> tune.grid_search([1, 2])
        {'grid_search': [1, 2]}
    """
    return {"grid_search": list(values)}
