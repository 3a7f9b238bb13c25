"""The Tuner: runs the trials of an experiment as actors and gathers their results."""

from __future__ import annotations

import functools
import json
import os
import secrets
import time
from collections.abc import Callable
from typing import Any, cast

import cloudpickle

import aray

from .config import CheckpointConfig, FailureConfig, RunConfig, TuneConfig
from .progress import ProgressReporter
from .result_grid import ResultGrid
from .schedulers import FIFOScheduler, TrialScheduler
from .search import BasicVariantGenerator, Searcher
from .session import CONTINUE, STOP, TrialRunner
from .trainable import Trainable, as_function
from .trial import ERROR, PENDING, RUNNING, TERMINATED, Trial

__all__ = ["Tuner", "with_resources"]

STATE_FILE = "experiment_state.json"
TUNER_FILE = "tuner.pkl"
SEARCH_FILE = "search_state.pkl"
#: how long a stopped trial gets to end by itself (its report() raises) before it is killed
STOP_GRACE_S = 5.0


def with_resources(trainable: Callable[[dict[str, Any]], Any],
                   resources: dict[str, float]) -> Callable[[dict[str, Any]], Any]:
    """The trainable, to be run with ``resources`` per trial (default: 1 CPU): ``cpu``,
    ``gpu``, ``memory`` (bytes) and custom resources, by name.

    Example:
        >>> from aray import tune
        >>> def train(config):
        ...     tune.report({"x": 1})
        >>> train_2cpu = tune.with_resources(train, {"cpu": 2})
    """
    if isinstance(trainable, type):  # a class trainable: a subclass that carries them
        return type(trainable.__name__, (trainable,), {"_tune_resources": dict(resources)})

    @functools.wraps(trainable)
    def wrapped(config: dict[str, Any]) -> Any:
        return trainable(config)

    wrapped._tune_resources = dict(resources)  # type: ignore[attr-defined]
    return wrapped


def _remote_options(trainable: Any) -> dict[str, Any]:
    resources = dict(getattr(trainable, "_tune_resources", {"cpu": 1}))
    # two calls at once: run() runs the trainable, next() passes its results and decisions
    options: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0, "max_concurrency": 2}
    custom = {}
    for key, value in resources.items():
        if key.lower() == "cpu":
            options["num_cpus"] = value
        elif key.lower() == "gpu":
            options["num_gpus"] = value
        elif key == "memory":
            options["memory"] = value
        elif value:
            custom[key] = value
    if custom:
        options["resources"] = custom
    return options


def _stop_now(stop: Any, trial_id: str, result: dict[str, Any]) -> bool:
    if stop is None:
        return False
    if callable(stop):
        return bool(stop(trial_id, result))
    return any(key in result and result[key] >= value for key, value in stop.items())


class Tuner:
    """Search the ``param_space`` for the configs that make ``trainable`` do best: each
    config is a trial, run in an actor of its own (with the trainable's resources, see
    :func:`with_resources`), as many at once as the cluster holds.

    ``fit()`` returns a :class:`~aray.tune.ResultGrid`. A trial that fails is retried as
    ``RunConfig(failure_config=...)`` says, and then shows up in the grid with its error:
    ``fit()`` itself raises only for errors of the experiment (a bad config). The
    experiment's state is written to its directory as it runs, so that
    :meth:`Tuner.restore` can resume it after the driver died.

    Example:
        >>> import tempfile
        >>> import aray
        >>> from aray import tune
        >>> _ = aray.init(num_cpus=2, ignore_reinit_error=True)
        >>> def train(config):
        ...     tune.report({"score": config["x"] ** 2})
        >>> tuner = tune.Tuner(train, param_space={"x": tune.grid_search([1, 2, 3])},
        ...                    tune_config=tune.TuneConfig(metric="score", mode="max"),
        ...                    run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(),
        ...                                              verbose=0))
        >>> tuner.fit().get_best_result().config
        {'x': 3}
    """

    def __init__(self, trainable: Callable[[dict[str, Any]], Any], *,
                 param_space: dict[str, Any] | None = None,
                 tune_config: TuneConfig | None = None,
                 run_config: RunConfig | None = None) -> None:
        if not callable(trainable):
            raise TypeError("the trainable must be a function of a config or a "
                            f"tune.Trainable class, not {trainable!r}")
        if isinstance(trainable, type) and not issubclass(trainable, Trainable):
            raise TypeError(f"a class trainable subclasses tune.Trainable, and {trainable!r} "
                            "does not")
        self.trainable = trainable
        self.param_space = dict(param_space or {})
        self.tune_config = tune_config or TuneConfig()
        self.run_config = run_config or RunConfig()
        name = getattr(trainable, "__name__", "trainable")
        self.name = self.run_config.name or f"{name}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"
        storage = self.run_config.storage_path or os.path.join("~", "aray_results")
        self.experiment_path = os.path.abspath(os.path.join(os.path.expanduser(storage),
                                                            self.name))
        self.trials: list[Trial] = []
        self.searcher: Any = None
        self.scheduler: Any = None
        self.search_finished = False
        self._restored = False
        self._results: ResultGrid | None = None

    # -- restore ---------------------------------------------------------------------------

    @classmethod
    def can_restore(cls, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is the directory of an experiment that :meth:`restore` can
        resume.

        Example:
            >>> import tempfile
            >>> Tuner.can_restore(tempfile.mkdtemp())
            False
        """
        path = os.fspath(path)
        return (os.path.exists(os.path.join(path, STATE_FILE))
                and os.path.exists(os.path.join(path, TUNER_FILE)))

    @classmethod
    def restore(cls, path: str | os.PathLike[str],
                trainable: Callable[[dict[str, Any]], Any], *, resume_unfinished: bool = True,
                resume_errored: bool = False, restart_errored: bool = False,
                param_space: dict[str, Any] | None = None) -> Tuner:
        """The Tuner of the experiment in directory ``path``, to resume with ``fit()``:
        trials that ended are not run again; unfinished ones resume from their last
        checkpoint (or start again if they have none), and trials not started yet start.

        Args:
            path: the experiment's directory (``storage_path/name``).
            trainable: the trainable (the same code, or a fixed one).
            resume_unfinished: resume the trials that were running (else they count as
                ended).
            resume_errored: resume the failed trials from their last checkpoint.
            restart_errored: start the failed trials again from the beginning.
            param_space: the param space, if its values do not pickle.

        Example:
            >>> from aray import tune
            >>> def train(config):
            ...     tune.report({"x": 1})
            >>> path = "/tmp/results/my_experiment"
            >>> if tune.Tuner.can_restore(path):
            ...     results = tune.Tuner.restore(path, train).fit()
        """
        path = os.path.abspath(os.fspath(path))
        if not cls.can_restore(path):
            raise ValueError(f"{path} is not the directory of an experiment to restore "
                             f"(it has no {STATE_FILE} and {TUNER_FILE})")
        with open(os.path.join(path, TUNER_FILE), "rb") as f:
            saved = cloudpickle.loads(f.read())
        run_config: RunConfig = saved["run_config"]
        run_config.name = os.path.basename(path)
        run_config.storage_path = os.path.dirname(path)
        tuner = cls(trainable, param_space=param_space or saved["param_space"],
                    tune_config=saved["tune_config"], run_config=run_config)
        with open(os.path.join(path, STATE_FILE)) as f:
            state = json.load(f)
        tuner.search_finished = state.get("search_finished", False)
        search_state = os.path.join(path, SEARCH_FILE)
        if os.path.exists(search_state):
            with open(search_state, "rb") as f:
                tuner.searcher, tuner.scheduler = cloudpickle.loads(f.read())
        for entry in state["trials"]:
            trial = Trial.from_state(entry, path)
            if trial.status == ERROR and restart_errored:
                trial.status, trial.error, trial.num_failures = PENDING, None, 0
                trial.checkpoint_name, trial.checkpoint_iteration = None, 0
                trial.checkpoint_time = 0.0
                trial.rewind()
            elif trial.status == ERROR and resume_errored:
                trial.status, trial.error, trial.num_failures = PENDING, None, 0
                trial.rewind()
            elif trial.status in (PENDING, RUNNING):
                if resume_unfinished:
                    trial.status = PENDING
                    trial.rewind()
                else:
                    trial.status = TERMINATED
            tuner.trials.append(trial)
        tuner._restored = True
        return tuner

    def get_results(self) -> ResultGrid:
        """The results of the last ``fit()`` (or those saved, for a restored Tuner).

        Example:
            >>> from aray import tune
            >>> len(tune.Tuner(lambda config: None).get_results())
            0
        """
        if self._results is None:
            return ResultGrid([t.result() for t in self.trials], self.tune_config.metric,
                              self.tune_config.mode, self.experiment_path)
        return self._results

    # -- fit -------------------------------------------------------------------------------

    def fit(self) -> ResultGrid:
        """Run the experiment (starting aray if it is not yet) and return its results.

        Example:
            >>> import tempfile
            >>> from aray import tune
            >>> def train(config):
            ...     tune.report({"loss": config["x"]})
            >>> grid = tune.Tuner(train, param_space={"x": tune.uniform(0, 1)},
            ...                   tune_config=tune.TuneConfig(num_samples=2),
            ...                   run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(),
            ...                                             verbose=0)).fit()
            >>> len(grid), grid.num_errors
            (2, 0)
        """
        if not aray.is_initialized():
            aray.init()
        config = self.tune_config
        os.makedirs(self.experiment_path, exist_ok=True)
        if self.searcher is None:
            self.searcher = config.search_alg or BasicVariantGenerator()
            self.searcher.set_search_properties(config.metric, config.mode, self.param_space,
                                                num_samples=config.num_samples)
        if self.scheduler is None:
            self.scheduler = config.scheduler or FIFOScheduler()
            self.scheduler.set_search_properties(config.metric, config.mode)
        if not self._restored:
            with open(os.path.join(self.experiment_path, TUNER_FILE), "wb") as f:
                f.write(cloudpickle.dumps({"param_space": self.param_space,
                                           "tune_config": config,
                                           "run_config": self.run_config}))
        run = _Run(self)
        try:
            run.loop()
        finally:
            run.close()
        self._results = ResultGrid([t.result() for t in self.trials], config.metric,
                                   config.mode, self.experiment_path)
        return self._results


class _Run:
    """One ``fit()``: starts trials, passes their results to the scheduler and the
    searcher, stops, retries and ends them, and writes the experiment's state."""

    def __init__(self, tuner: Tuner) -> None:
        self.tuner = tuner
        self.trials = tuner.trials
        self.searcher: Searcher = tuner.searcher
        self.scheduler: TrialScheduler = tuner.scheduler
        run = tuner.run_config
        self.stop = run.stop
        self.failures = run.failure_config or FailureConfig()
        self.checkpoints = run.checkpoint_config or CheckpointConfig()
        self.options = _remote_options(tuner.trainable)
        self.runner_class = aray.remote(**self.options)(TrialRunner)
        trainable = tuner.trainable
        if isinstance(trainable, type) and issubclass(trainable, Trainable):
            trainable = as_function(trainable, self.checkpoints.checkpoint_frequency,
                                    self.checkpoints.checkpoint_at_end)
        self.trainable_ref = aray.put(trainable)  # pickled once, not per trial
        self.max_concurrent = tuner.tune_config.max_concurrent_trials or self._default_limit()
        # a searcher other than the basic one suggests as long as it is asked: num_samples
        # says how many trials to ask it for
        self.max_trials = (None if isinstance(self.searcher, BasicVariantGenerator)
                           else tuner.tune_config.num_samples)
        self.uid = secrets.token_hex(3)[:5]
        self.deadline = (time.monotonic() + tuner.tune_config.time_budget_s
                         if tuner.tune_config.time_budget_s else None)
        self.halted = False
        self.reporter = ProgressReporter(tuner.tune_config.metric, tuner.tune_config.mode,
                                         run.verbose)

    def _default_limit(self) -> int:
        cpus = self.options.get("num_cpus", 0)
        if not cpus:
            return 64
        total = aray.cluster_resources().get("CPU", 1)
        return max(1, int(total // cpus))

    # -- the state file --------------------------------------------------------------------

    def save(self) -> None:
        path = self.tuner.experiment_path
        state = {"name": self.tuner.name, "timestamp": time.time(),
                 "search_finished": self.tuner.search_finished,
                 "trials": [t.state() for t in self.trials]}
        # written whole to a new file and renamed over the old: a driver killed while
        # writing leaves the last state, not half of one
        for name, data, mode in (
                (SEARCH_FILE, cloudpickle.dumps((self.searcher, self.scheduler)), "wb"),
                (STATE_FILE, json.dumps(state, indent=1), "w")):
            tmp = os.path.join(path, name + ".tmp")
            with open(tmp, mode) as f:
                f.write(data)
            os.replace(tmp, os.path.join(path, name))

    # -- starting trials -------------------------------------------------------------------

    def _new_trial(self) -> Trial | None:
        if self.tuner.search_finished or self.halted:
            return None
        if self.max_trials is not None and len(self.trials) >= self.max_trials:
            self.tuner.search_finished = True
            return None
        trial_id = f"{self.uid}_{len(self.trials):05d}"
        config = self.searcher.suggest(trial_id)
        if config == Searcher.FINISHED:
            self.tuner.search_finished = True
            return None
        if not isinstance(config, dict):
            return None  # None: the searcher waits for results first
        trial = Trial(trial_id, config, os.path.join(self.tuner.experiment_path, trial_id))
        self.trials.append(trial)
        self.scheduler.on_trial_add(trial_id)
        return trial

    def launch(self) -> None:
        running = sum(t.status == RUNNING for t in self.trials)
        started = False
        while running < self.max_concurrent and not self.halted:
            trial = next((t for t in self.trials if t.status == PENDING), None)
            if trial is None:
                trial = self._new_trial()
            if trial is None:
                break
            self._start(trial)
            running += 1
            started = True
        if started:
            self.save()

    def _start(self, trial: Trial) -> None:
        trial.open_files()
        trial.status = RUNNING
        trial.stop_deadline = None
        trial.actor = self.runner_class.remote(
            cast(Any, self.trainable_ref),  # (a ref in place of its value: resolved first)
            trial.config, trial.trial_id, trial.path, self.tuner.name,
            trial.checkpoint_path, trial.checkpoint_iteration, trial.checkpoint_time,
            trial.checkpoint_index)
        trial.actor.run.remote()  # its end (or error) comes through next()
        trial.ref = trial.actor.next.remote(None)

    # -- events ----------------------------------------------------------------------------

    def loop(self) -> None:
        self.launch()
        while True:
            waiting = [t for t in self.trials if t.ref is not None]
            if not waiting:
                self.launch()
                if not any(t.ref is not None for t in self.trials):
                    break  # nothing runs, and nothing more can start
                continue
            by_ref = {t.ref: t for t in waiting}
            ready, _ = aray.wait(list(by_ref), num_returns=1, timeout=0.25)
            if ready:
                ready, _ = aray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
            for ref in ready:
                self.on_event(by_ref[ref], ref)
            now = time.monotonic()
            for trial in waiting:
                if trial.stop_deadline is not None and now > trial.stop_deadline \
                        and trial.status == RUNNING:
                    self.finish(trial)  # it did not stop by itself: killed
            if self.deadline is not None and now > self.deadline:
                self.halt()
            self.launch()
            self.reporter.update(self.trials)

    def on_event(self, trial: Trial, ref: Any) -> None:
        trial.ref = None
        try:
            event = aray.get(ref)
        except Exception as e:  # the trainable's error, or its actor died
            self.on_error(trial, e)
            return
        if event[0] != "result":  # "done" or "stopped"
            self.finish(trial)
            return
        if trial.stop_deadline is not None:
            # reported again after it was told to stop (it caught StopTrial): not kept, and
            # told again, until its deadline passes and it is killed
            trial.ref = trial.actor.next.remote(STOP)
            return
        result, checkpoint = event[1], event[2]
        result["config"] = trial.config
        result["date"] = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(result["timestamp"]))
        trial.add_result(result)
        if checkpoint is not None:
            trial.keep_checkpoint(os.path.basename(checkpoint), self.checkpoints.num_to_keep)
            self.save()
        self.searcher.on_trial_result(trial.trial_id, result)
        decision = self.scheduler.on_trial_result(trial.trial_id, result)
        if _stop_now(self.stop, trial.trial_id, result):
            decision = STOP
        if decision == STOP:
            trial.stop_deadline = time.monotonic() + STOP_GRACE_S
        trial.ref = trial.actor.next.remote(STOP if decision == STOP else CONTINUE)

    def _end_actor(self, trial: Trial) -> None:
        if trial.actor is not None:
            try:
                aray.kill(trial.actor)
            except Exception:  # already gone
                pass
        trial.actor = trial.ref = None
        trial.stop_deadline = None

    def finish(self, trial: Trial) -> None:
        """The trial ended by itself or was stopped: TERMINATED."""
        self._end_actor(trial)
        trial.status = TERMINATED
        if trial.results:
            trial.results[-1]["done"] = True
        trial.close_files()
        self.scheduler.on_trial_complete(trial.trial_id, trial.last_result or None)
        self.searcher.on_trial_complete(trial.trial_id, trial.last_result or None)
        self.save()

    def on_error(self, trial: Trial, error: BaseException) -> None:
        stopping = trial.stop_deadline is not None
        self._end_actor(trial)
        if stopping:  # it failed on its way out: it was stopped all the same
            self.finish(trial)
            return
        trial.num_failures += 1
        retries = self.failures.max_failures
        if retries < 0 or trial.num_failures <= retries:
            trial.status = PENDING  # started again by launch(), from its last checkpoint
            trial.rewind()
            self.save()
            return
        trial.set_error(error)
        trial.close_files()
        self.scheduler.on_trial_remove(trial.trial_id)
        self.searcher.on_trial_complete(trial.trial_id, trial.last_result or None, error=True)
        self.save()
        if self.failures.fail_fast:
            self.halt()

    def halt(self) -> None:
        """Stop every running trial, and start no more."""
        self.halted = True
        for trial in self.trials:
            if trial.status == RUNNING:
                self.finish(trial)

    def close(self) -> None:
        # whatever ended the loop (an interrupt too): no trial's actor outlives fit()
        for trial in self.trials:
            if trial.actor is not None:
                self._end_actor(trial)
            trial.close_files()
        self.save()
        self.reporter.finish(self.trials, self.tuner.experiment_path)
