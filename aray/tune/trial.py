"""A trial: one config of an experiment, its results, its checkpoints, its files.

Each trial's directory holds ``params.json`` (its config), ``result.json`` (a JSON line per
result), ``progress.csv`` (the same as a table, nested keys flattened as ``a/b``), its
``checkpoint_XXXXXX`` directories, and ``error.txt`` if it failed. They are written as the
results come, line by line, so that a driver that dies leaves them whole up to its last
result; :meth:`Trial.state` is what the experiment's state file keeps of it.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
from typing import Any

import cloudpickle

from .checkpoint import Checkpoint
from .result_grid import Result, flatten_result

__all__ = ["Trial"]

PENDING, RUNNING, TERMINATED, ERROR = "PENDING", "RUNNING", "TERMINATED", "ERROR"


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays, and whatever else a trainable reports: as near as JSON goes
    if hasattr(value, "tolist"):
        return value.tolist()
    return repr(value)


class Trial:
    """One trial of an experiment (the Tuner's bookkeeping; see :class:`aray.tune.Result`
    for what the user gets).

    Example:
        >>> import tempfile
        >>> t = Trial("abcde_00000", {"x": 1}, tempfile.mkdtemp())
        >>> t.status
        'PENDING'
    """

    def __init__(self, trial_id: str, config: dict[str, Any], path: str) -> None:
        self.trial_id, self.config, self.path = trial_id, config, path
        self.status = PENDING
        self.results: list[dict[str, Any]] = []
        self.num_failures = 0
        self.error: BaseException | None = None
        # the last checkpoint, and where the trial was when it saved it
        self.checkpoint_name: str | None = None
        self.checkpoint_iteration = 0
        self.checkpoint_time = 0.0
        self.checkpoint_index = 0
        self.checkpoints: list[str] = []
        # while it runs: its actor, the ref of its next event, when a stop must be done by
        self.actor: Any = None
        self.ref: Any = None
        self.stop_deadline: float | None = None
        self._csv: Any = None
        self._csv_writer: Any = None
        self._json: Any = None

    @property
    def last_result(self) -> dict[str, Any]:
        return self.results[-1] if self.results else {}

    @property
    def checkpoint_path(self) -> str | None:
        return os.path.join(self.path, self.checkpoint_name) if self.checkpoint_name else None

    def open_files(self) -> None:
        """Create the trial's directory and its params.json (once), and open its logs.

        Example:
            >>> import os, tempfile
            >>> t = Trial("a_00000", {"x": 1}, os.path.join(tempfile.mkdtemp(), "a_00000"))
            >>> t.open_files()
            >>> sorted(os.listdir(t.path))
            ['params.json', 'result.json']
        """
        os.makedirs(self.path, exist_ok=True)
        params = os.path.join(self.path, "params.json")
        if not os.path.exists(params):
            with open(params, "w") as f:
                json.dump(self.config, f, default=_json_default)
                f.write("\n")
        if self._json is None:
            self._json = open(os.path.join(self.path, "result.json"), "a")  # noqa: SIM115

    def close_files(self) -> None:
        """Close the trial's logs (add_result opens them again).

        Example:
            >>> import tempfile
            >>> t = Trial("a_00000", {}, tempfile.mkdtemp())
            >>> t.open_files()
            >>> t.close_files()
        """
        for f in (self._json, self._csv):
            if f is not None:
                f.close()
        self._json = self._csv = self._csv_writer = None

    def add_result(self, result: dict[str, Any]) -> None:
        """Keep ``result`` and append it to result.json and progress.csv.

        Example:
            >>> import os, tempfile
            >>> t = Trial("a_00000", {}, tempfile.mkdtemp())
            >>> t.add_result({"loss": 1.0, "training_iteration": 1})
            >>> open(os.path.join(t.path, "progress.csv")).read().splitlines()
            ['loss,training_iteration', '1.0,1']
        """
        self.results.append(result)
        self.open_files()
        self._json.write(json.dumps(result, default=_json_default) + "\n")
        self._json.flush()
        row = flatten_result(result)
        if self._csv is None:
            path = os.path.join(self.path, "progress.csv")
            new = not os.path.exists(path) or os.path.getsize(path) == 0
            if new:
                fields = list(row)
            else:
                with open(path, newline="") as f:
                    fields = next(csv.reader(f), list(row))
            self._csv = open(path, "a", newline="")  # noqa: SIM115
            self._csv_writer = csv.DictWriter(self._csv, fieldnames=fields,
                                              extrasaction="ignore")
            if new:
                self._csv_writer.writeheader()
        self._csv_writer.writerow(row)
        self._csv.flush()

    def rewind(self) -> None:
        """Forget the results after the last checkpoint (all if there is none), in memory
        and in the files: the trial resumes from there and reports them again.

        Example:
            >>> import tempfile
            >>> t = Trial("a_00000", {}, tempfile.mkdtemp())
            >>> for i in (1, 2):
            ...     t.add_result({"training_iteration": i})
            >>> t.checkpoint_iteration = 1
            >>> t.rewind()
            >>> t.results
            [{'training_iteration': 1}]
        """
        self.close_files()
        self.results = [r for r in self.results
                        if r.get("training_iteration", 0) <= self.checkpoint_iteration]
        for name in ("result.json", "progress.csv"):
            path = os.path.join(self.path, name)
            if os.path.exists(path):
                os.remove(path)
        results, self.results = self.results, []
        for result in results:
            self.add_result(result)

    def keep_checkpoint(self, name: str, num_to_keep: int | None) -> None:
        """Make ``name`` the latest checkpoint; delete the oldest beyond ``num_to_keep``.

        Example:
            >>> import tempfile
            >>> t = Trial("a_00000", {}, tempfile.mkdtemp())
            >>> t.keep_checkpoint("checkpoint_000003", None)
            >>> t.checkpoint_index
            4
        """
        self.checkpoint_name = name
        self.checkpoint_iteration = self.last_result.get("training_iteration", 0)
        self.checkpoint_time = self.last_result.get("time_total_s", 0.0)
        self.checkpoint_index = int(name.rsplit("_", 1)[1]) + 1
        self.checkpoints.append(name)
        while num_to_keep is not None and len(self.checkpoints) > max(num_to_keep, 1):
            shutil.rmtree(os.path.join(self.path, self.checkpoints.pop(0)), ignore_errors=True)

    def set_error(self, error: BaseException) -> None:
        """Fail the trial for good with ``error``, and write it to error.txt (and
        error.pkl, which a restored experiment reads back).

        Example:
            >>> import tempfile
            >>> t = Trial("a_00000", {}, tempfile.mkdtemp())
            >>> t.set_error(ValueError("bad"))
            >>> t.status
            'ERROR'
        """
        self.status, self.error = ERROR, error
        os.makedirs(self.path, exist_ok=True)
        with open(os.path.join(self.path, "error.txt"), "w") as f:
            f.write(f"{type(error).__name__}: {error}\n")
        try:
            blob = cloudpickle.dumps(error)
        except Exception:  # an exception that does not pickle is kept as its text
            blob = cloudpickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))
        with open(os.path.join(self.path, "error.pkl"), "wb") as f:
            f.write(blob)

    def result(self) -> Result:
        """The :class:`~aray.tune.Result` of the trial, as it stands.

        Example:
            >>> Trial("a_00000", {"x": 1}, "/tmp/a").result().error is None
            True
        """
        checkpoint = Checkpoint(self.checkpoint_path) if self.checkpoint_path else None
        metrics = dict(self.last_result)
        if metrics:
            metrics["config"] = self.config
        return Result(metrics=metrics, checkpoint=checkpoint, error=self.error, path=self.path,
                      metrics_history=list(self.results))

    def state(self) -> dict[str, Any]:
        """What the experiment's state file keeps of the trial.

        Example:
            >>> Trial("a_00000", {"x": 1}, "/tmp/a").state()["status"]
            'PENDING'
        """
        # the config as JSON, for people and tools to read, and pickled, for restore: its
        # values may be anything (actor handles, functions) that JSON cannot hold
        config = json.loads(json.dumps(self.config, default=_json_default))
        pickled = base64.b64encode(cloudpickle.dumps(self.config)).decode()
        return {"trial_id": self.trial_id, "config": config, "config_pickle": pickled,
                "status": self.status,
                "dir": os.path.basename(self.path), "num_failures": self.num_failures,
                "checkpoint_name": self.checkpoint_name,
                "checkpoint_iteration": self.checkpoint_iteration,
                "checkpoint_time": self.checkpoint_time,
                "checkpoint_index": self.checkpoint_index, "checkpoints": self.checkpoints}

    @classmethod
    def from_state(cls, state: dict[str, Any], experiment_path: str) -> Trial:
        """The trial of a state file's entry, with its results read back from result.json.

        Example:
            >>> import tempfile
            >>> t = Trial.from_state({"trial_id": "a_00000", "config": {}, "status": "ERROR",
            ...                       "dir": "a_00000"}, tempfile.mkdtemp())
            >>> t.status
            'ERROR'
        """
        config = state["config"]
        if "config_pickle" in state:
            config = cloudpickle.loads(base64.b64decode(state["config_pickle"]))
        trial = cls(state["trial_id"], config,
                    os.path.join(experiment_path, state["dir"]))
        trial.status = state["status"]
        trial.num_failures = state.get("num_failures", 0)
        trial.checkpoint_name = state.get("checkpoint_name")
        trial.checkpoint_iteration = state.get("checkpoint_iteration", 0)
        trial.checkpoint_time = state.get("checkpoint_time", 0.0)
        trial.checkpoint_index = state.get("checkpoint_index", 0)
        trial.checkpoints = list(state.get("checkpoints", []))
        results = os.path.join(trial.path, "result.json")
        if os.path.exists(results):
            with open(results) as f:
                for line in f:
                    try:
                        trial.results.append(json.loads(line))
                    except ValueError:  # the line a killed driver was writing
                        break
        if trial.status == ERROR:
            try:
                with open(os.path.join(trial.path, "error.pkl"), "rb") as f:
                    trial.error = cloudpickle.loads(f.read())
            except Exception:  # no file, or unpickling fails: the error's text is enough
                trial.error = RuntimeError(f"trial {trial.trial_id} failed (see error.txt)")
        return trial
