"""aray.tune's pure parts, without a cluster: scheduler decisions, search spaces and
variants, the ResultGrid, the progress table."""

import io
import random

import pytest

from aray import tune
from aray.tune.result_grid import Result, ResultGrid
from aray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule
from aray.tune.search import BasicVariantGenerator, generate_variants


def feed(scheduler, trial_id, t, value, metric="acc"):
    return scheduler.on_trial_result(trial_id, {"training_iteration": t, metric: value})


def test_fifo_never_stops():
    s = FIFOScheduler()
    assert all(feed(s, "a", t, -t) == "CONTINUE" for t in range(1, 50))


def test_asha_rungs_are_grace_period_times_powers_of_the_reduction_factor():
    assert ASHAScheduler(max_t=100, grace_period=1, reduction_factor=4).rungs == [[1, 4, 16, 64]]
    assert ASHAScheduler(max_t=10, grace_period=2, reduction_factor=2).rungs == [[2, 4, 8]]
    assert ASHAScheduler(max_t=9, grace_period=1, reduction_factor=3, brackets=2).rungs == [
        [1, 3], [3]]


def test_asha_keeps_the_top_fraction_at_each_rung_and_stops_at_max_t():
    s = ASHAScheduler(metric="acc", mode="max", max_t=4, grace_period=1, reduction_factor=2)
    # the first trial at a rung has nothing to be compared with
    assert feed(s, "a", 1, 0.5) == "CONTINUE"
    # cutoff: the median of {0.5}: 0.4 is below it, 0.6 above
    assert feed(s, "b", 1, 0.4) == "STOP"
    assert feed(s, "c", 1, 0.6) == "CONTINUE"
    # a trial is decided on once per rung: between rungs it continues, whatever its value
    assert feed(s, "c", 1.5, 0.0) == "CONTINUE"
    assert feed(s, "a", 2, 0.9) == "CONTINUE"
    assert feed(s, "c", 2, 0.8) == "STOP"  # below the median of {0.9} at rung 2
    assert feed(s, "a", 3, 0.9) == "CONTINUE"
    assert feed(s, "a", 4, 0.9) == "STOP"  # max_t
    assert s.recorded[0][1] == {"a": 0.5, "b": 0.4, "c": 0.6}


def test_asha_min_mode_and_results_without_the_metric():
    s = ASHAScheduler(metric="loss", mode="min", max_t=10, grace_period=1, reduction_factor=2)
    assert feed(s, "a", 1, 1.0, "loss") == "CONTINUE"
    assert feed(s, "b", 1, 2.0, "loss") == "STOP"  # a higher loss is worse
    assert feed(s, "c", 1, 0.5, "loss") == "CONTINUE"
    assert s.on_trial_result("d", {"training_iteration": 1}) == "CONTINUE"
    assert s.on_trial_result("d", {"other": 1}) == "CONTINUE"


def test_asha_judges_a_trial_at_the_highest_rung_it_reached():
    # a trial that reports first at t=5 skips rungs 1 and 2 and is judged at rung 4
    s = ASHAScheduler(metric="acc", mode="max", max_t=16, grace_period=1, reduction_factor=2)
    feed(s, "a", 4, 0.9)
    assert feed(s, "b", 5, 0.1) == "STOP"
    assert "b" in s.recorded[0][4] and "b" not in s.recorded[0][1]


def test_asha_needs_metric_and_mode_and_checks_arguments():
    with pytest.raises(ValueError, match="metric and a mode"):
        feed(ASHAScheduler(), "a", 1, 0.5)
    s = ASHAScheduler()
    s.set_search_properties("acc", "max")
    assert feed(s, "a", 1, 0.5) == "CONTINUE"
    for bad in ({"reduction_factor": 1}, {"grace_period": 0}, {"max_t": 1, "grace_period": 2},
                {"mode": "maximize"}):
        with pytest.raises(ValueError):
            ASHAScheduler(**bad)


def test_median_stopping_rule():
    s = MedianStoppingRule(time_attr="training_iteration", metric="loss", mode="min",
                           grace_period=2, min_samples_required=2)
    for trial, loss in (("a", 1.0), ("b", 3.0)):
        for t in (1, 2, 3):
            assert feed(s, trial, t, loss, "loss") == "CONTINUE"
        s.on_trial_complete(trial, None)
    # within the grace period, nothing stops
    assert feed(s, "c", 1, 9.0, "loss") == "CONTINUE"
    # at t=2, the running means of a and b are 1.0 and 3.0 (median 2.0): 9.0 is worse
    assert feed(s, "c", 2, 9.0, "loss") == "STOP"
    # a trial whose best so far beats the median goes on
    assert feed(s, "d", 1, 1.5, "loss") == "CONTINUE"
    assert feed(s, "d", 2, 5.0, "loss") == "CONTINUE"


def test_median_stopping_rule_waits_for_enough_completed_trials():
    s = MedianStoppingRule(time_attr="training_iteration", metric="acc", mode="max",
                           grace_period=0, min_samples_required=3)
    for t in (1, 2):
        feed(s, "a", t, 0.9)
    s.on_trial_complete("a", None)
    assert feed(s, "b", 1, 0.0) == "CONTINUE"  # one completed trial of the three needed


def test_grid_search_crosses_grids_times_num_samples_with_nested_keys():
    space = {"a": tune.grid_search([1, 2]), "opt": {"b": tune.grid_search(["x", "y"]),
                                                   "lr": tune.loguniform(1e-4, 1e-1)},
             "fixed": 3}
    variants = generate_variants(space, num_samples=3, rng=random.Random(0))
    assert len(variants) == 12
    points = [(v["a"], v["opt"]["b"]) for v in variants]
    assert points[:4] == [(1, "x"), (2, "x"), (1, "y"), (2, "y")]
    assert points[4:8] == points[:4]
    assert all(1e-4 <= v["opt"]["lr"] < 1e-1 and v["fixed"] == 3 for v in variants)
    assert len({v["opt"]["lr"] for v in variants}) == 12  # drawn anew for each


def test_domains_draw_within_their_bounds():
    rng = random.Random(1)
    for _ in range(200):
        assert 0 <= tune.randint(0, 3).sample(rng) < 3
        assert tune.quniform(0, 1, 0.25).sample(rng) in (0, 0.25, 0.5, 0.75, 1.0)
        assert 2 <= tune.uniform(2, 3).sample(rng) < 3
        assert tune.choice(["a", "b"]).sample(rng) in ("a", "b")
        assert 8 <= tune.lograndint(8, 64).sample(rng) < 64
    assert {tune.randint(0, 3).sample(rng) for _ in range(100)} == {0, 1, 2}
    with pytest.raises(ValueError):
        tune.loguniform(0, 1)
    with pytest.raises(ValueError):
        tune.uniform(1, 1)


def test_sample_from_sees_the_rest_of_the_config():
    space = {"a": tune.randint(1, 100), "b": tune.sample_from(lambda spec: spec.config["a"] * 2)}
    for v in generate_variants(space, 5):
        assert v["b"] == 2 * v["a"]


def test_seeded_basic_variant_generator_draws_the_same_configs():
    def configs(seed):
        s = BasicVariantGenerator(random_state=seed)
        s.set_search_properties(None, None, {"x": tune.uniform(0, 1)}, num_samples=3)
        return [s.suggest(str(i)) for i in range(4)]

    assert configs(7) == configs(7) != configs(8)
    assert configs(7)[3] == "FINISHED"


def test_result_grid_best_scopes_and_dataframe():
    a = Result(metrics={"loss": 3.0, "config": {"x": 1}}, path="/a",
               metrics_history=[{"loss": 0.5}, {"loss": 3.0}])
    b = Result(metrics={"loss": 1.0, "config": {"x": 2}}, path="/b",
               metrics_history=[{"loss": 2.0}, {"loss": 1.0}])
    bad = Result(error=ValueError("boom"), path="/c")
    nan = Result(metrics={"loss": float("nan")}, metrics_history=[{"loss": float("nan")}])
    grid = ResultGrid([a, b, bad, nan], metric="loss", mode="min")
    assert grid.get_best_result() is b
    assert grid.get_best_result(scope="all") is a
    assert grid.get_best_result(scope="avg") is b
    assert grid.get_best_result("loss", "max") is a
    assert (len(grid), grid.num_errors, grid.num_terminated) == (4, 1, 3)
    assert [r.path for r in grid][:3] == ["/a", "/b", "/c"] and grid[1] is b
    assert isinstance(grid.errors[0], ValueError)
    df = grid.get_dataframe()
    assert df["config/x"].tolist()[:2] == [1, 2] and df["logdir"].tolist()[:2] == ["/a", "/b"]
    assert grid.get_dataframe(filter_metric="loss", filter_mode="min")["loss"].tolist()[:2] == [
        0.5, 1.0]
    with pytest.raises(RuntimeError, match="no trial"):
        ResultGrid([bad]).get_best_result("loss", "min")
    with pytest.raises(ValueError, match="metric and a mode"):
        ResultGrid([a]).get_best_result()


class FakeTrial:
    def __init__(self, trial_id, status, config, result):
        self.trial_id, self.status, self.config, self.last_result = (trial_id, status, config,
                                                                     result)


def test_progress_table_and_status_lines(capsys):
    from rich.console import Console

    from aray.tune.progress import ProgressReporter

    trials = [FakeTrial("t_00000", "RUNNING", {"lr": 0.1, "m": {"d": 2}},
                        {"training_iteration": 3, "time_total_s": 1.5, "loss": 0.25}),
              FakeTrial("t_00001", "TERMINATED", {"lr": 0.01, "m": {"d": 4}},
                        {"training_iteration": 5, "time_total_s": 2.0, "loss": 0.125})]
    reporter = ProgressReporter(metric="loss", mode="min", interactive=False)
    console = Console(file=io.StringIO(), width=200)
    console.print(reporter.table(trials))
    text = console.file.getvalue()
    for cell in ("t_00000", "RUNNING", "TERMINATED", "m/d", "0.125", "best loss=0.125"):
        assert cell in text, cell
    reporter.update(trials, force=True)
    reporter.finish(trials, "/tmp/exp")
    out = capsys.readouterr().out
    assert "Trials: 2 (1 RUNNING, 1 TERMINATED; best loss=0.125 (t_00001))" in out
    assert "Results are in /tmp/exp" in out


TUNE_MODULES = ["aray.tune", "aray.tune.tuner", "aray.tune.session", "aray.tune.search",
                "aray.tune.search.sample", "aray.tune.search.optuna", "aray.tune.schedulers",
                "aray.tune.checkpoint", "aray.tune.result_grid", "aray.tune.progress",
                "aray.tune.config", "aray.tune.trial", "aray.tune.trainable"]


def test_every_public_name_of_tune_has_a_docstring_with_an_example():
    import importlib
    import inspect

    missing = []
    for name in TUNE_MODULES:
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            if "Example" not in doc:
                missing.append(f"{name}.{attr}")
            for meth_name, meth in vars(obj).items() if inspect.isclass(obj) else ():
                if meth_name.startswith("_") or not inspect.isfunction(meth):
                    continue
                if "Example" not in (inspect.getdoc(meth) or ""):
                    missing.append(f"{name}.{attr}.{meth_name}")
    assert missing == []


def test_tune_docstring_examples_run(tmp_path):
    import os
    import subprocess
    import sys

    from test_api import DOCTEST_RUNNER

    # the examples' temporary directories go to tmp_path, and go with it
    proc = subprocess.run([sys.executable, "-c", DOCTEST_RUNNER, *TUNE_MODULES],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert int(proc.stdout.split("ATTEMPTED ")[1].split()[0]) > 150
