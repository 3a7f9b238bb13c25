"""aray.tune on a real cluster: trials as actors, their results and files, stopping,
failures and retries, checkpoints, ASHA, Optuna, and restoring an experiment whose driver
was killed."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import PRELUDE, descendants, wait_gone, wait_until

import aray
from aray import tune
from aray.tune.schedulers import ASHAScheduler

pytestmark = pytest.mark.usefixtures("cluster")


def run(trainable, tmp_path, param_space=None, **tune_config):
    run_config = tune_config.pop("run_config", {})
    return tune.Tuner(trainable, param_space=param_space or {},
                      tune_config=tune.TuneConfig(**tune_config),
                      run_config=tune.RunConfig(storage_path=str(tmp_path), name="exp",
                                                verbose=0, **run_config)).fit()


def gone(pids):
    return wait_gone(list(pids), timeout=10) == []


def test_grid_search_results_and_files(tmp_path):
    def train(config):
        for step in range(3):
            tune.report({"loss": config["x"] * config["opt"]["scale"] / (step + 1)})

    grid = run(train, tmp_path, {"x": tune.grid_search([1, 2, 3]),
                                 "opt": {"scale": tune.choice([10, 20])}},
               metric="loss", mode="min", num_samples=2)
    assert (len(grid), grid.num_errors, grid.num_terminated) == (6, 0, 6)
    assert sorted(r.config["x"] for r in grid) == [1, 1, 2, 2, 3, 3]
    best = grid.get_best_result()
    assert best.config["x"] == 1 and best.metrics["loss"] == min(r.metrics["loss"] for r in grid)
    assert best.metrics["training_iteration"] == 3 and best.metrics["done"] is True
    assert best.metrics["trial_id"] in best.path and best.error is None
    df = grid.get_dataframe()
    assert len(df) == 6 and {"loss", "config/x", "config/opt/scale", "logdir"} <= set(df)
    assert best.metrics_dataframe["training_iteration"].tolist() == [1, 2, 3]
    # the files of each trial
    with open(os.path.join(best.path, "result.json")) as f:
        lines = [json.loads(line) for line in f]
    assert [r["loss"] for r in lines] == best.metrics_dataframe["loss"].tolist()
    with open(os.path.join(best.path, "progress.csv")) as f:
        rows = f.read().splitlines()
    assert len(rows) == 4 and "loss" in rows[0].split(",")
    with open(os.path.join(best.path, "params.json")) as f:
        assert json.load(f) == best.config
    with open(tmp_path / "exp" / "experiment_state.json") as f:
        state = json.load(f)
    assert [t["status"] for t in state["trials"]] == ["TERMINATED"] * 6
    # no trial's actor outlives fit()
    assert gone({r.metrics["pid"] for r in grid})


def test_trial_runs_in_an_actor_with_its_resources_and_concurrency_is_bounded(tmp_path):
    @aray.remote
    class Gauge:
        def __init__(self):
            self.now = self.most = 0

        def enter(self):
            self.now += 1
            self.most = max(self.most, self.now)

        def leave(self):
            self.now -= 1

        def peak(self):
            return self.most

    def train(config):
        gauge = config["gauge"]
        aray.get(gauge.enter.remote())
        ctx = aray.get_runtime_context()
        tune.report({"cpus": ctx.get_assigned_resources().get("CPU", 0),
                     "actor": ctx.get_actor_id() is not None})
        aray.get(gauge.leave.remote())

    gauge = Gauge.remote()
    grid = run(tune.with_resources(train, {"cpu": 2}), tmp_path,
               {"gauge": gauge, "i": tune.grid_search([0, 1, 2])})
    assert [r.metrics["cpus"] for r in grid] == [2, 2, 2]
    assert all(r.metrics["actor"] for r in grid)
    assert aray.get(gauge.peak.remote()) == 1  # 2 CPUs hold one 2-CPU trial at a time

    gauge2 = Gauge.remote()
    run(train, tmp_path / "b", {"gauge": gauge2, "i": tune.grid_search(list(range(4)))},
        max_concurrent_trials=1)
    assert aray.get(gauge2.peak.remote()) == 1
    aray.kill(gauge)
    aray.kill(gauge2)


def test_stop_criteria_stop_the_running_trainable(tmp_path):
    def train(config):
        step = 0
        try:
            while True:
                step += 1
                tune.report({"step": step})
        except tune.StopTrial:
            open(os.path.join(tune.get_context().get_trial_dir(), "stopped"), "w").close()
            raise

    grid = run(train, tmp_path, {"i": tune.grid_search([0, 1])},
               run_config={"stop": {"training_iteration": 4}})
    assert [r.metrics["step"] for r in grid] == [4, 4]
    assert all(os.path.exists(os.path.join(r.path, "stopped")) for r in grid)
    assert gone({r.metrics["pid"] for r in grid})

    # a function as the stop criterion
    grid = run(train, tmp_path / "b", {"limit": tune.grid_search([2, 3])},
               run_config={"stop": lambda trial_id, result:
                           result["step"] >= result["config"]["limit"]})
    assert [r.metrics["step"] for r in grid] == [2, 3]


def test_errors_are_results_and_failed_trials_retry_from_their_checkpoint(tmp_path):
    def train(config):
        start = 0
        checkpoint = tune.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as d, open(os.path.join(d, "step")) as f:
                start = int(f.read())
        marker = os.path.join(config["dir"], f"failed_{config['kind']}")
        for step in range(start + 1, 6):
            if config["kind"] == "always" and step == 2:
                raise ValueError("this config never works")
            if config["kind"] == "once" and step == 3 and not os.path.exists(marker):
                open(marker, "w").close()
                raise RuntimeError("a crash, once")
            d = os.path.join(config["dir"], f"{config['kind']}_{step}")
            os.makedirs(d)
            with open(os.path.join(d, "step"), "w") as f:
                f.write(str(step))
            tune.report({"step": step, "start": start},
                        checkpoint=tune.Checkpoint.from_directory(d))

    grid = run(train, tmp_path, {"kind": tune.grid_search(["always", "once", "fine"]),
                                 "dir": str(tmp_path)},
               run_config={"failure_config": tune.FailureConfig(max_failures=1)})
    always, once, fine = grid
    assert (grid.num_errors, grid.num_terminated) == (1, 2)
    assert isinstance(always.error, ValueError) and "never works" in str(always.error)
    assert "never works" in (tmp_path / "exp" / os.path.basename(always.path) / "error.txt"
                             ).read_text()
    # retried once, from the checkpoint of step 2: steps 3 to 5 again, iterations go on
    assert once.error is None and once.metrics["start"] == 2
    assert once.metrics_dataframe["step"].tolist() == [1, 2, 3, 4, 5]
    assert once.metrics["training_iteration"] == 5
    assert fine.metrics["start"] == 0
    # checkpoints are copied into the trial's directory, numbered
    assert once.checkpoint.path == os.path.join(once.path, "checkpoint_000004")
    assert (tmp_path / "exp" / os.path.basename(once.path) / "checkpoint_000004" / "step"
            ).read_text() == "5"
    with once.checkpoint.as_directory() as d, open(os.path.join(d, "step")) as f:
        assert f.read() == "5"
    assert sorted(os.listdir(fine.checkpoint.to_directory(str(tmp_path / "copy")))) == ["step"]


def test_num_to_keep_deletes_older_checkpoints(tmp_path):
    def train(config):
        for step in range(4):
            d = os.path.join(config["dir"], str(step))
            os.makedirs(d)
            tune.report({"step": step}, checkpoint=tune.Checkpoint.from_directory(d))

    grid = run(train, tmp_path, {"dir": str(tmp_path)},
               run_config={"checkpoint_config": tune.CheckpointConfig(num_to_keep=2)})
    kept = sorted(n for n in os.listdir(grid[0].path) if n.startswith("checkpoint_"))
    assert kept == ["checkpoint_000002", "checkpoint_000003"]


def test_asha_stops_bad_trials_early(tmp_path):
    def train(config):
        for step in range(1, 9):
            tune.report({"acc": config["quality"] * step})

    qualities = [6, 5, 4, 3, 2, 1]
    grid = run(train, tmp_path, {"quality": tune.grid_search(qualities)},
               metric="acc", mode="max", max_concurrent_trials=2,
               scheduler=ASHAScheduler(max_t=8, grace_period=1, reduction_factor=2))
    iterations = {r.config["quality"]: r.metrics["training_iteration"] for r in grid}
    assert iterations[6] == 8  # the best trial runs to max_t
    assert iterations[1] == 1  # the worst is stopped at the first rung
    assert sum(iterations.values()) < 8 * len(qualities) / 2
    assert grid.get_best_result().config["quality"] == 6
    assert gone({r.metrics["pid"] for r in grid})


def test_optuna_search(tmp_path):
    from aray.tune.search.optuna import OptunaSearch

    def train(config):
        tune.report({"loss": (config["x"] - 1) ** 2 + config["n"], "kind": config["kind"]})

    grid = run(train, tmp_path, {"x": tune.uniform(-5, 5), "n": tune.randint(0, 3),
                                 "kind": "fixed"},
               metric="loss", mode="min", num_samples=10, max_concurrent_trials=2,
               search_alg=OptunaSearch(seed=0))
    assert len(grid) == 10 and grid.num_errors == 0
    xs = [r.config["x"] for r in grid]
    assert len(set(xs)) == 10 and all(-5 <= x <= 5 for x in xs)
    assert {r.config["n"] for r in grid} <= {0, 1, 2} and {r.metrics["kind"] for r in grid} == {
        "fixed"}
    best = grid.get_best_result()
    assert best.metrics["loss"] == min(r.metrics["loss"] for r in grid)
    with pytest.raises(ValueError, match="grid_search"):
        run(train, tmp_path / "b", {"x": tune.grid_search([1, 2])}, metric="loss",
            mode="min", search_alg=OptunaSearch())


RESTORE = """
import os, sys
from aray import tune

def train(config):
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            start = int(open(os.path.join(d, "step")).read())
    with open(os.path.join(LOG, "starts"), "a") as f:
        f.write(f"{{config['i'] + 10 * bool(config['pause'])}} {{start}}\\n")
    for step in range(start + 1, 6):
        time.sleep(config["pause"])
        d = os.path.join(LOG, f"{{config['i']}}_{{step}}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "step"), "w") as f:
            f.write(str(step))
        tune.report({{"step": step}}, checkpoint=tune.Checkpoint.from_directory(d))

LOG = {log!r}
aray.init(num_cpus=2)
report_pids()
"""


def test_restore_after_the_driver_is_killed(tmp_path, run_script):
    log, storage = tmp_path / "log", tmp_path / "results"
    log.mkdir()
    first = RESTORE.format(log=str(log)) + textwrap.dedent(f"""
        tune.Tuner(train, param_space={{"i": tune.grid_search([0, 1, 2, 3]),
                                        "pause": tune.grid_search([0.0, 0.4])}},
                   tune_config=tune.TuneConfig(max_concurrent_trials=2),
                   run_config=tune.RunConfig(storage_path={str(storage)!r}, name="exp")).fit()
        """)
    script = tmp_path / "first.py"
    script.write_text(PRELUDE + first)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    state_file = storage / "exp" / "experiment_state.json"

    def midway():
        try:
            trials = json.loads(state_file.read_text())["trials"]
        except (OSError, ValueError):
            return False
        done = [t for t in trials if t["status"] == "TERMINATED"]
        resumable = [t for t in trials if t["status"] == "RUNNING" and t["checkpoint_name"]]
        return len(done) >= 4 and resumable

    try:
        wait_until(midway, timeout=40, message="4 trials done and one with a checkpoint")
        pids = [proc.pid, *descendants(proc.pid)]
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert wait_gone(pids, timeout=20) == [], "the killed driver's cluster lives on"
    state = json.loads(state_file.read_text())["trials"]
    finished = {t["config"]["i"] + 10 * bool(t["config"]["pause"]) for t in state
                if t["status"] == "TERMINATED"}
    starts_before = (log / "starts").read_text().splitlines()

    second = RESTORE.format(log=str(log)) + textwrap.dedent(f"""
        assert tune.Tuner.can_restore({str(storage / "exp")!r})
        grid = tune.Tuner.restore({str(storage / "exp")!r}, train).fit()
        print("RESULT", json.dumps([[r.config["i"] + 10 * bool(r.config["pause"]),
                                     r.metrics["step"], r.metrics["training_iteration"]]
                                    for r in grid]))
        print("ERRORS", grid.num_errors)
        aray.shutdown()
        """)
    result = run_script(second, timeout=60)
    result.assert_no_leftovers()
    out = result.stdout
    rows = json.loads(out.split("RESULT ")[1].splitlines()[0])
    assert "ERRORS 0" in out
    assert sorted(r[0] for r in rows) == [0, 1, 2, 3, 10, 11, 12, 13]
    assert all(step == 5 and it == 5 for _, step, it in rows), rows
    starts_after = (log / "starts").read_text().splitlines()[len(starts_before):]
    restarted = [int(line.split()[0]) for line in starts_after]
    # the finished trials were not run again, the others were, once each; those that had
    # a checkpoint resumed from it
    assert sorted(restarted) == sorted({0, 1, 2, 3, 10, 11, 12, 13} - finished)
    assert any(int(line.split()[1]) > 0 for line in starts_after), starts_after


def test_a_trial_that_ignores_its_stop_is_killed(tmp_path, monkeypatch):
    import aray.tune.tuner

    monkeypatch.setattr(aray.tune.tuner, "STOP_GRACE_S", 0.5)

    def train(config):
        while True:
            try:
                tune.report({"pid": os.getpid()})
            except BaseException:  # swallows StopTrial too: a trainable that will not stop
                import time

                time.sleep(0.05)

    grid = run(train, tmp_path, run_config={"stop": {"training_iteration": 2}})
    assert grid[0].metrics["training_iteration"] == 2 and grid.num_errors == 0
    assert gone([grid[0].metrics["pid"]])


def test_fail_fast_and_time_budget_end_the_experiment(tmp_path):
    def train(config):
        if config["i"] == 0:
            raise ValueError("first")
        for _ in range(1000):
            tune.report({"i": config["i"]})
            import time

            time.sleep(0.01)

    grid = run(train, tmp_path, {"i": tune.grid_search([0, 1, 2, 3])}, max_concurrent_trials=1,
               run_config={"failure_config": tune.FailureConfig(fail_fast=True)})
    assert grid.num_errors == 1 and [r.metrics for r in grid] == [{}]

    grid = run(train, tmp_path / "b", {"i": tune.grid_search([1, 2, 3])},
               max_concurrent_trials=1, time_budget_s=0.5)
    iterations = [r.metrics.get("training_iteration", 0) for r in grid]
    assert 0 < iterations[0] < 1000 and sum(iterations) < 1000, iterations


def test_restore_restarts_or_resumes_errored_trials(tmp_path):
    flag = tmp_path / "broken"
    flag.touch()

    def train(config):
        if config["x"] == 2 and os.path.exists(config["flag"]):
            raise RuntimeError("broken")
        tune.report({"x": config["x"]}, y=1)  # the older keyword form of report

    space = {"x": tune.grid_search([1, 2]), "flag": str(flag)}
    grid = run(train, tmp_path, space)
    assert grid.num_errors == 1
    path = str(tmp_path / "exp")
    # restored as it was: the failed trial stays failed, and nothing runs again
    grid = tune.Tuner.restore(path, train).fit()
    assert grid.num_errors == 1 and isinstance(grid[1].error, RuntimeError)
    flag.unlink()
    grid = tune.Tuner.restore(path, train, restart_errored=True).fit()
    assert grid.num_errors == 0 and [r.metrics["x"] for r in grid] == [1, 2]
    assert grid[1].metrics["y"] == 1
    with pytest.raises(ValueError, match="not the directory of an experiment"):
        tune.Tuner.restore(str(tmp_path), train)


def test_report_outside_a_trial_says_so():
    with pytest.raises(RuntimeError, match="inside a trainable"):
        tune.report({"x": 1})


def test_live_table_in_a_terminal(tmp_path):
    import pty
    import time

    code = PRELUDE + textwrap.dedent(f"""
        from aray import tune
        aray.init(num_cpus=2)

        def train(config):
            for step in range(3):
                tune.report({{"loss": config["lr"] / (step + 1)}})

        tune.Tuner(train, param_space={{"lr": tune.grid_search([0.5, 0.25])}},
                   tune_config=tune.TuneConfig(metric="loss", mode="min"),
                   run_config=tune.RunConfig(storage_path={str(tmp_path)!r})).fit()
        aray.shutdown()
        """)
    script = tmp_path / "live.py"
    script.write_text(code)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(script)], stdout=follower, stderr=follower,
                            cwd=tmp_path, env={**os.environ, "COLUMNS": "160"})
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the script ended and closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=30) == 0
    out = b"".join(chunks).decode(errors="replace")
    # rich's table: box-drawing borders, a header row, a row per trial
    for text in ("Trial name", "status", "lr", "TERMINATED", "0.08333", "┃", "Results are in"):
        assert text in out, (text, out[-3000:])


def test_bench_tune_runs(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_tune.py")
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, script, "--trials", "4", "--results", "20",
                           "--rounds", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    timings = json.loads(out.read_text())["aray"]
    # per result is a difference of two walls, so noise can take it below 0 with 20 results
    assert timings["per trial (ms)"][0] > 0 and len(timings["per result (ms)"]) == 1
    assert "aray 0.1.0    per trial (ms)" in proc.stdout


def test_class_trainable_steps_checkpoints_and_resumes(tmp_path):
    class Walk(tune.Trainable):
        def setup(self, config):
            self.position = 0
            self.resumed_at = None

        def step(self):
            self.position += self.config["speed"]
            if self.position == 4 and self.resumed_at is None and self.config["speed"] == 1:
                raise RuntimeError("a crash at 4")
            return {"position": self.position, "resumed_at": self.resumed_at,
                    "done": self.position >= 6}

        def save_checkpoint(self, checkpoint_dir):
            with open(os.path.join(checkpoint_dir, "position"), "w") as f:
                f.write(str(self.position))

        def load_checkpoint(self, checkpoint_dir):
            with open(os.path.join(checkpoint_dir, "position")) as f:
                self.position = self.resumed_at = int(f.read())

    grid = run(tune.with_resources(Walk, {"cpu": 1}), tmp_path,
               {"speed": tune.grid_search([1, 2])},
               run_config={"checkpoint_config": tune.CheckpointConfig(checkpoint_frequency=2,
                                                                      checkpoint_at_end=True),
                           "failure_config": tune.FailureConfig(max_failures=1)})
    slow, fast = grid
    assert grid.num_errors == 0
    # the slow walk crashed at 4 and resumed from its checkpoint at 2 (its second step)
    assert slow.metrics["position"] == 6 and slow.metrics["resumed_at"] == 2
    assert slow.metrics_dataframe["position"].tolist() == [1, 2, 3, 4, 5, 6]
    assert fast.metrics_dataframe["position"].tolist() == [2, 4, 6]
    # checkpoints at steps 2 and 3 (the end) of the fast walk
    assert fast.checkpoint.path.endswith("checkpoint_000001")
    with fast.checkpoint.as_directory() as d, open(os.path.join(d, "position")) as f:
        assert f.read() == "6"
    with pytest.raises(TypeError, match="subclasses tune.Trainable"):
        tune.Tuner(dict)


def test_a_trial_whose_worker_dies_is_retried(tmp_path):
    def train(config):
        marker = os.path.join(config["dir"], "died")
        tune.report({"attempt": 1 + os.path.exists(marker)})
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker process dies, as in a segfault or an OOM kill

    grid = run(train, tmp_path, {"dir": str(tmp_path)},
               run_config={"failure_config": tune.FailureConfig(max_failures=1)})
    assert grid.num_errors == 0 and grid[0].metrics["attempt"] == 2
    # no checkpoint: the retry started from the beginning, and its results replace the first's
    assert grid[0].metrics_dataframe["attempt"].tolist() == [2]

    grid = run(train, tmp_path / "b", {"dir": str(tmp_path / "b")})
    assert grid.num_errors == 1 and "ActorDied" in type(grid[0].error).__name__
