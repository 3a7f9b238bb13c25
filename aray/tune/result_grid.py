"""The results of an experiment: a :class:`Result` per trial, in a :class:`ResultGrid`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .checkpoint import Checkpoint

__all__ = ["Result", "ResultGrid", "flatten_result"]


def flatten_result(result: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A result with its nested dicts flattened into ``a/b`` keys, as in Ray's tables.

    Example:
        >>> flatten_result({"config": {"lr": 0.1}, "loss": 1})
        {'config/lr': 0.1, 'loss': 1}
    """
    out: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, dict) and value:
            out.update(flatten_result(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass
class Result:
    """One trial's outcome.

    Attributes:
        metrics: its last result (the reported metrics, ``training_iteration``,
            ``time_total_s``, ``trial_id``, ``config``...); empty if it reported none.
        checkpoint: its last checkpoint, or None.
        error: the exception it failed with (after its retries), or None.
        path: its directory (``result.json``, ``progress.csv``, the checkpoints).
        metrics_history: every result it reported, in order.

    Example:
        >>> r = Result(metrics={"loss": 0.5, "config": {"lr": 0.1}}, path="/tmp/t")
        >>> r.config
        {'lr': 0.1}
    """

    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    error: BaseException | None = None
    path: str = ""
    metrics_history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        """The trial's config.

        Example:
            >>> Result(metrics={"config": {"x": 1}}).config
            {'x': 1}
        """
        return self.metrics.get("config", {})

    @property
    def metrics_dataframe(self) -> Any:
        """Every result of the trial, a row each, as a pandas DataFrame.

        Example:
            >>> r = Result(metrics_history=[{"loss": 1}, {"loss": 0.5}])
            >>> r.metrics_dataframe["loss"].tolist()
            [1.0, 0.5]
        """
        import pandas as pd

        return pd.DataFrame([flatten_result(r) for r in self.metrics_history])

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.metrics.items() if k != "config"}
        error = f", error={self.error!r}" if self.error is not None else ""
        return f"Result(metrics={shown!r}, path={self.path!r}{error})"


def _finite(value: Any) -> bool:
    try:
        return not (math.isnan(value) or math.isinf(value))
    except TypeError:
        return False


class ResultGrid:
    """The :class:`Result` of each trial of an experiment, as ``Tuner.fit()`` returns them:
    index it, iterate over it, or ask for the best.

    Example:
        >>> grid = ResultGrid([Result(metrics={"loss": 2.0}), Result(metrics={"loss": 1.0})],
        ...                   metric="loss", mode="min")
        >>> len(grid), grid.get_best_result().metrics["loss"]
        (2, 1.0)
    """

    def __init__(self, results: list[Result], metric: str | None = None,
                 mode: str | None = None, experiment_path: str = "") -> None:
        self._results, self._metric, self._mode = results, metric, mode
        self.experiment_path = experiment_path

    def __len__(self) -> int:
        return len(self._results)

    def __getitem__(self, i: int) -> Result:
        return self._results[i]

    def __iter__(self) -> Iterator[Result]:
        return iter(self._results)

    def __repr__(self) -> str:
        return f"ResultGrid<{len(self)} results, {self.num_errors} errors>"

    @property
    def errors(self) -> list[BaseException]:
        """The errors of the trials that failed.

        Example:
            >>> ResultGrid([Result(error=ValueError("x"))]).errors
            [ValueError('x')]
        """
        return [r.error for r in self._results if r.error is not None]

    @property
    def num_errors(self) -> int:
        """How many trials failed.

        Example:
            >>> ResultGrid([Result(error=ValueError("x")), Result()]).num_errors
            1
        """
        return len(self.errors)

    @property
    def num_terminated(self) -> int:
        """How many trials ended without an error (finished, or stopped early).

        Example:
            >>> ResultGrid([Result(error=ValueError("x")), Result()]).num_terminated
            1
        """
        return len(self) - self.num_errors

    def get_best_result(self, metric: str | None = None, mode: str | None = None,
                        scope: str = "last", filter_nan_and_inf: bool = True) -> Result:
        """The result of the trial with the best ``metric`` (default: the TuneConfig's).

        Args:
            metric: the key to compare.
            mode: "min" or "max".
            scope: "last" compares each trial's last result, "all" its best one, "avg" the
                mean of its results; "last-N-avg" the mean of its last N.
            filter_nan_and_inf: leave out NaN and infinite values.

        Example:
            >>> grid = ResultGrid([Result(metrics={"acc": 0.7}), Result(metrics={"acc": 0.9})])
            >>> grid.get_best_result("acc", "max").metrics["acc"]
            0.9
        """
        metric, mode = metric or self._metric, mode or self._mode
        if not metric or not mode:
            raise ValueError("get_best_result() needs a metric and a mode: pass them, or "
                             "give them to TuneConfig(metric=..., mode=...)")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        best, best_value = None, None
        for result in self._results:
            value = self._score(result, metric, mode, scope)
            if value is None or (filter_nan_and_inf and not _finite(value)):
                continue
            if best_value is None or (value > best_value if mode == "max"
                                      else value < best_value):
                best, best_value = result, value
        if best is None:
            raise RuntimeError(f"no trial reported a value of {metric!r} to compare"
                               + (f" ({self.num_errors} trials failed)" if self.errors else ""))
        return best

    @staticmethod
    def _score(result: Result, metric: str, mode: str, scope: str) -> float | None:
        history = [r[metric] for r in result.metrics_history if metric in r] or (
            [result.metrics[metric]] if metric in result.metrics else [])
        if not history:
            return None
        if scope == "last":
            return history[-1]
        if scope == "all":
            return max(history) if mode == "max" else min(history)
        if scope == "avg":
            return sum(history) / len(history)
        if scope.startswith("last-") and scope.endswith("-avg"):
            n = int(scope[5:-4])
            return sum(history[-n:]) / len(history[-n:])
        raise ValueError(f"scope must be 'last', 'all', 'avg' or 'last-N-avg', not {scope!r}")

    def get_dataframe(self, filter_metric: str | None = None,
                      filter_mode: str | None = None) -> Any:
        """A pandas DataFrame with a row per trial: its last result (its best by
        ``filter_metric`` and ``filter_mode`` if given), config keys as ``config/...``
        columns, and its directory as ``logdir``.

        Example:
            >>> grid = ResultGrid([Result(metrics={"loss": 1.0, "config": {"lr": 0.1}})])
            >>> grid.get_dataframe()[["loss", "config/lr"]].values.tolist()
            [[1.0, 0.1]]
        """
        import pandas as pd

        rows = []
        for result in self._results:
            row = result.metrics
            if filter_metric and filter_mode:
                candidates = [r for r in result.metrics_history if filter_metric in r]
                if candidates:
                    pick = max if filter_mode == "max" else min
                    row = pick(candidates, key=lambda r: r[filter_metric])
            rows.append({**flatten_result(row), "logdir": result.path})
        return pd.DataFrame(rows)
