"""The progress of an experiment in the terminal: a live table of the trials (with rich)
when stdout is a terminal, a status line every few seconds when it is not (a log, a pipe).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from .result_grid import flatten_result

__all__ = ["ProgressReporter"]

# the result keys every trial has: shown as columns of their own, or not at all
_AUTO = {"training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "trial_id",
         "pid", "hostname", "done", "checkpoint_dir_name", "config", "date"}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ProgressReporter:
    """Shows the trials' status, params and last metrics as an experiment runs.

    Args:
        metric: the metric to show first (and the best trial by, with ``mode``).
        mode: "min" or "max".
        verbose: 0 shows nothing, 1 the table or status lines and a summary at the end.
        interactive: a live table (default: when stdout is a terminal and rich is there).
        interval: seconds between status lines when not interactive.

    Example:
        >>> reporter = ProgressReporter(metric="loss", mode="min", verbose=0)
        >>> reporter.update([])
    """

    def __init__(self, metric: str | None = None, mode: str | None = None, verbose: int = 1,
                 interactive: bool | None = None, interval: float = 5.0) -> None:
        self.metric, self.mode, self.verbose, self.interval = metric, mode, verbose, interval
        if interactive is None:
            interactive = sys.stdout.isatty()
        self.live: Any = None
        if interactive and verbose:
            try:
                from rich.live import Live
            except ImportError:  # rich is in the tune extra: without it, status lines
                interactive = False
            else:
                self.live = Live(auto_refresh=False)
                self.live.start()
        self.interactive = bool(interactive)
        self.last_line = 0.0
        self.last_refresh = 0.0

    def _summary(self, trials: list[Any]) -> str:
        counts: dict[str, int] = {}
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        text = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        best = self._best(trials)
        if best is not None:
            text += f"; best {self.metric}={_fmt(best.last_result[self.metric])} " \
                    f"({best.trial_id})"
        return f"Trials: {len(trials)} ({text})"

    def _best(self, trials: list[Any]) -> Any:
        if not self.metric or not self.mode:
            return None
        scored = [t for t in trials if isinstance(t.last_result.get(self.metric), int | float)]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda t: t.last_result[self.metric])

    def table(self, trials: list[Any]) -> Any:
        """A rich Table of the trials: name, status, params, iterations, time, metrics.

        Example:
            >>> ProgressReporter(verbose=0).table([]).row_count
            0
        """
        from rich.table import Table

        params = sorted({k for t in trials for k in flatten_result(t.config)})
        metrics: list[str] = [self.metric] if self.metric else []
        for trial in trials:
            for key in trial.last_result:
                if key not in _AUTO and key not in metrics and len(metrics) < 4:
                    metrics.append(key)
        table = Table(title=self._summary(trials))
        for column in ["Trial name", "status", *params, "iter", "total time (s)", *metrics]:
            table.add_column(column, no_wrap=True)
        for trial in trials:
            config, result = flatten_result(trial.config), trial.last_result
            table.add_row(trial.trial_id, trial.status, *(_fmt(config.get(p, "")) for p in params),
                          _fmt(result.get("training_iteration", "")),
                          _fmt(result.get("time_total_s", "")),
                          *(_fmt(result.get(m, "")) for m in metrics))
        return table

    def update(self, trials: list[Any], force: bool = False) -> None:
        """Refresh the table (at most 4 times a second), or print a status line if
        ``interval`` seconds have passed since the last.

        Example:
            >>> ProgressReporter(verbose=0).update([], force=True)
        """
        if not self.verbose:
            return
        now = time.monotonic()
        if self.live is not None:
            if force or now - self.last_refresh >= 0.25:
                self.live.update(self.table(trials), refresh=True)
                self.last_refresh = now
        elif force or now - self.last_line >= self.interval:
            print(self._summary(trials), flush=True)
            self.last_line = now

    def finish(self, trials: list[Any], experiment_path: str) -> None:
        """Show the final table (or the trials, a line each), and where the results are.

        Example:
            >>> ProgressReporter(verbose=0).finish([], "/tmp/exp")
        """
        if not self.verbose:
            return
        if self.live is not None:
            self.live.update(self.table(trials), refresh=True)
            self.live.stop()
        else:
            print(self._summary(trials))
            for trial in trials:
                result = {k: v for k, v in trial.last_result.items() if k not in _AUTO}
                iters = trial.last_result.get("training_iteration", 0)
                params = " ".join(f"{k}={_fmt(v)}" for k, v in flatten_result(trial.config)
                                  .items())
                metrics = " ".join(f"{k}={_fmt(v)}" for k, v in result.items())
                print(f"  {trial.trial_id} {trial.status} iter={iters} {params} | {metrics}")
        print(f"Results are in {experiment_path}", flush=True)
