"""Trial schedulers: whether a running trial goes on after each result it reports.

A scheduler sees results only (a trial's id and its result dicts) and answers
:attr:`TrialScheduler.CONTINUE` or :attr:`TrialScheduler.STOP`; it never touches a trial, so
it can be tested, and reasoned about, without a cluster. The Tuner stops the trial when the
answer is STOP.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ASHAScheduler", "AsyncHyperBandScheduler", "FIFOScheduler", "MedianStoppingRule",
           "TrialScheduler"]


def _check_mode(mode: str | None) -> None:
    if mode not in (None, "min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")


class TrialScheduler:
    """The interface of the schedulers: decisions from results.

    Example:
        >>> from aray.tune.schedulers import FIFOScheduler
        >>> FIFOScheduler().on_trial_result("t1", {"loss": 1.0})
        'CONTINUE'
    """

    CONTINUE = "CONTINUE"
    STOP = "STOP"

    def __init__(self, metric: str | None = None, mode: str | None = None) -> None:
        _check_mode(mode)
        self.metric, self.mode = metric, mode

    def set_search_properties(self, metric: str | None, mode: str | None) -> bool:
        """Take the Tuner's metric and mode where the scheduler was given none.

        Example:
            >>> s = FIFOScheduler()
            >>> s.set_search_properties("loss", "min")
            True
        """
        _check_mode(mode)
        self.metric = self.metric or metric
        self.mode = self.mode or mode
        return True

    def on_trial_add(self, trial_id: str) -> None:
        """A trial was created.

        Example:
            >>> FIFOScheduler().on_trial_add("t1")
        """

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> str:
        """The decision on a trial that just reported ``result``: CONTINUE or STOP.

        Example:
            >>> FIFOScheduler().on_trial_result("t1", {"loss": 1.0})
            'CONTINUE'
        """
        return self.CONTINUE

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None) -> None:
        """A trial ended by itself (or was stopped), ``result`` being its last.

        Example:
            >>> FIFOScheduler().on_trial_complete("t1", {"loss": 1.0})
        """

    def on_trial_remove(self, trial_id: str) -> None:
        """A trial failed or was stopped for good.

        Example:
            >>> FIFOScheduler().on_trial_remove("t1")
        """

    def _score(self, result: dict[str, Any]) -> float | None:
        """The result's metric, signed so that higher is better; None if it has none."""
        if self.metric is None or self.mode is None:
            raise ValueError(f"{type(self).__name__} needs a metric and a mode: give them to "
                             "it or to TuneConfig(metric=..., mode=...)")
        value = result.get(self.metric)
        if value is None:
            return None
        value = float(value)
        if math.isnan(value):
            return None
        return value if self.mode == "max" else -value


class FIFOScheduler(TrialScheduler):
    """The default: every trial runs to its end (or its ``stop`` criteria).

    Example:
        >>> from aray import tune
        >>> config = tune.TuneConfig(scheduler=FIFOScheduler())
    """


class ASHAScheduler(TrialScheduler):
    """Asynchronous successive halving (ASHA): a trial is stopped at a rung of its training
    time if its metric is not in the top ``1 / reduction_factor`` of what the trials that
    reached that rung before it had there.

    The rungs are at ``grace_period * reduction_factor ** k`` (for k = 0, 1, ... below
    ``max_t``), in units of ``time_attr``; a trial that reaches ``max_t`` is stopped. As the
    decision compares with the trials that got to a rung first, it never waits for the
    others: every trial is decided on as it reports.

    Args:
        time_attr: the result key that measures training time; it must grow.
        metric: the key to compare (default: the TuneConfig's).
        mode: "min" or "max" (default: the TuneConfig's).
        max_t: the most time a trial gets.
        grace_period: the least time a trial gets before it can be stopped.
        reduction_factor: the rungs are this many times apart, and keep this fraction.
        brackets: how many brackets of rungs (Hyperband's), each starting a rung later.
        stop_last_trials: stop trials at ``max_t`` (else they run on).

    Example:
        >>> s = ASHAScheduler(metric="acc", mode="max", max_t=8, grace_period=1,
        ...                   reduction_factor=2)
        >>> s.rungs[0]
        [1, 2, 4]
        >>> s.on_trial_result("a", {"training_iteration": 1, "acc": 0.9})
        'CONTINUE'
        >>> s.on_trial_result("b", {"training_iteration": 1, "acc": 0.1})
        'STOP'
    """

    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None,
                 mode: str | None = None, max_t: float = 100, grace_period: float = 1,
                 reduction_factor: float = 4, brackets: int = 1,
                 stop_last_trials: bool = True) -> None:
        super().__init__(metric, mode)
        if grace_period <= 0:
            raise ValueError("grace_period must be positive")
        if max_t < grace_period:
            raise ValueError("max_t must be at least grace_period")
        if reduction_factor <= 1:
            raise ValueError("reduction_factor must be more than 1")
        if brackets < 1:
            raise ValueError("brackets must be at least 1")
        self.time_attr, self.max_t = time_attr, max_t
        self.grace_period, self.reduction_factor = grace_period, reduction_factor
        self.stop_last_trials = stop_last_trials
        #: the milestones of each bracket, lowest first
        self.rungs: list[list[float]] = []
        for bracket in range(brackets):
            milestones = []
            k = bracket
            while grace_period * reduction_factor ** k < max_t:
                milestones.append(grace_period * reduction_factor ** k)
                k += 1
            self.rungs.append(milestones)
        #: per bracket and milestone: the score each trial had there
        self.recorded: list[dict[float, dict[str, float]]] = [
            {m: {} for m in milestones} for milestones in self.rungs]
        self.bracket_of: dict[str, int] = {}

    def _bracket(self, trial_id: str) -> int:
        if trial_id not in self.bracket_of:
            # brackets in turn: Ray draws them with weights; in turn keeps decisions pure
            self.bracket_of[trial_id] = len(self.bracket_of) % len(self.rungs)
        return self.bracket_of[trial_id]

    def on_trial_add(self, trial_id: str) -> None:
        self._bracket(trial_id)

    def _cutoff(self, scores: dict[str, float]) -> float | None:
        if not scores:
            return None
        # the score at the (1 - 1/rf) quantile: those below it are not in the top 1/rf
        values = sorted(scores.values())
        return _percentile(values, 1 - 1 / self.reduction_factor)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> str:
        t = result.get(self.time_attr)
        if t is None:
            return self.CONTINUE
        if t >= self.max_t and self.stop_last_trials:
            return self.STOP
        score = self._score(result)
        if score is None:
            return self.CONTINUE
        bracket = self._bracket(trial_id)
        # the highest rung the trial has reached and not been decided at yet
        for milestone in reversed(self.rungs[bracket]):
            recorded = self.recorded[bracket][milestone]
            if t < milestone or trial_id in recorded:
                continue
            cutoff = self._cutoff(recorded)
            recorded[trial_id] = score
            if cutoff is not None and score < cutoff:
                return self.STOP
            break
        return self.CONTINUE

    def debug_string(self) -> str:
        """The rungs and how many trials each recorded.

        Example:
            >>> ASHAScheduler(metric="m", mode="max", max_t=4, reduction_factor=2).debug_string()
            'rungs of bracket 0: 1: 0 trials, 2: 0 trials'
        """
        lines = []
        for b, milestones in enumerate(self.rungs):
            parts = [f"{m:g}: {len(self.recorded[b][m])} trials" for m in milestones]
            lines.append(f"rungs of bracket {b}: " + ", ".join(parts))
        return "\n".join(lines)


#: Ray's other name of ASHA
AsyncHyperBandScheduler = ASHAScheduler


def _percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1), interpolated linearly between neighbours, as numpy's."""
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


class MedianStoppingRule(TrialScheduler):
    """Stop a trial whose best metric by time ``t`` is worse than the median of the
    completed trials' running averages up to ``t`` (the median stopping rule of Google
    Vizier).

    Args:
        time_attr: the result key that measures training time.
        metric: the key to compare (default: the TuneConfig's).
        mode: "min" or "max" (default: the TuneConfig's).
        grace_period: no trial is stopped before this much time.
        min_samples_required: how many completed trials it takes to stop one.
        hard_stop: stop the trial (there is no pausing: False lets it run on).

    Example:
        >>> s = MedianStoppingRule(time_attr="training_iteration", metric="loss",
        ...                        mode="min", grace_period=1, min_samples_required=1)
        >>> for t in (1, 2):
        ...     _ = s.on_trial_result("good", {"training_iteration": t, "loss": 1.0})
        >>> s.on_trial_complete("good", {"training_iteration": 2, "loss": 1.0})
        >>> s.on_trial_result("bad", {"training_iteration": 1, "loss": 5.0})
        'STOP'
    """

    def __init__(self, time_attr: str = "time_total_s", metric: str | None = None,
                 mode: str | None = None, grace_period: float = 60.0,
                 min_samples_required: int = 3, hard_stop: bool = True) -> None:
        super().__init__(metric, mode)
        self.time_attr, self.grace_period = time_attr, grace_period
        self.min_samples_required, self.hard_stop = min_samples_required, hard_stop
        #: per trial: (time, score) of each result
        self.history: dict[str, list[tuple[float, float]]] = {}
        self.completed: set[str] = set()

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> str:
        t, score = result.get(self.time_attr), self._score(result)
        if t is None or score is None:
            return self.CONTINUE
        history = self.history.setdefault(trial_id, [])
        history.append((float(t), score))
        if t < self.grace_period:
            return self.CONTINUE
        means = [m for other in self.completed if other != trial_id
                 if (m := self._running_mean(other, t)) is not None]
        if len(means) < self.min_samples_required:
            return self.CONTINUE
        best = max(s for _, s in history)
        median = _percentile(sorted(means), 0.5)
        return self.STOP if best < median and self.hard_stop else self.CONTINUE

    def _running_mean(self, trial_id: str, t: float) -> float | None:
        scores = [s for time, s in self.history.get(trial_id, []) if time <= t]
        return sum(scores) / len(scores) if scores else None

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None) -> None:
        if self.history.get(trial_id):
            self.completed.add(trial_id)

    def on_trial_remove(self, trial_id: str) -> None:
        self.on_trial_complete(trial_id, None)
