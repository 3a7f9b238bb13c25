"""The joblib backend aray.util.joblib: joblib.Parallel and a real scikit-learn
GridSearchCV with n_jobs=-1 run in aray's actors on the shared 2-CPU cluster."""

import functools
import os
import sys

import cloudpickle
import joblib
import pytest

import aray
from aray.util.joblib import register_aray, register_ray
from aray.util.queue import Queue

pytestmark = [pytest.mark.usefixtures("cluster"), pytest.mark.timeout(120)]

# aray's workers cannot import this test module: its functions travel by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def where():
    return os.getpid(), aray.get_runtime_context().get_actor_id()


def fail(x):
    raise KeyError(f"no {x}")


def recording_scorer(log, estimator, X, y):
    """Score as the estimator does, and say which process (and actor) did it."""
    log.put(where())
    return estimator.score(X, y)


def test_parallel_runs_in_the_pools_actors():
    register_aray()
    with joblib.parallel_backend("aray", n_jobs=2):
        places = joblib.Parallel()(joblib.delayed(where)() for _ in range(6))
    pids = {pid for pid, _ in places}
    assert os.getpid() not in pids
    assert all(actor_id for _, actor_id in places), places  # each ran in an aray actor


def test_an_error_in_a_job_reaches_the_caller_as_its_own_type():
    register_aray()
    with pytest.raises(KeyError, match="no 2"), joblib.parallel_backend("aray", n_jobs=2):
        joblib.Parallel()(joblib.delayed(fail)(x) for x in [2, 2])
    # the backend still works after the failed call
    with joblib.parallel_backend("aray", n_jobs=2):
        assert joblib.Parallel()(joblib.delayed(abs)(-x) for x in range(3)) == [0, 1, 2]


def test_grid_search_with_all_cpus_runs_on_aray():
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import GridSearchCV

    X, y = load_iris(return_X_y=True)
    log = Queue()
    search = GridSearchCV(RandomForestClassifier(n_estimators=5, random_state=0),
                          {"max_depth": [1, 4]}, cv=3, n_jobs=-1,
                          scoring=functools.partial(recording_scorer, log))
    register_ray()  # Ray's name registers the backend as "ray" too
    with joblib.parallel_backend("ray"):
        search.fit(X, y)
    assert search.best_params_ == {"max_depth": 4}
    places = log.get_nowait_batch(log.qsize())
    log.shutdown()
    # 2 settings x 3 folds, each scored on its test fold (no train scores asked for)
    assert len(places) == 6, places
    assert os.getpid() not in {pid for pid, _ in places}
    assert all(actor_id for _, actor_id in places), places
    assert len({actor_id for _, actor_id in places}) == 2  # n_jobs=-1: both CPUs' actors


def test_a_missing_joblib_says_what_to_install(run_script):
    result = run_script("""
        sys.modules["joblib"] = None  # as if it were not installed
        try:
            import aray.util.joblib
        except ImportError as err:
            print("MESSAGE", err)
    """)
    assert "MESSAGE aray.util.joblib needs joblib: pip install 'aray[joblib]'" in result.stdout
