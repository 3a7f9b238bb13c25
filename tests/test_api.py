"""The public surface: exported names, and a docstring with an example on each."""

import inspect
import os

import pytest

import aray
import aray.aio
import aray.exceptions

EXPECTED = {
    "ActorClass", "ActorHandle", "ActorProxy", "ObjectRef", "ObjectRefGenerator", "RemoteFunction",
    "RuntimeContext", "__version__", "actor", "aio", "as_completed", "available_resources",
    "cancel", "cluster_resources", "exceptions", "get", "get_actor", "get_gpu_ids",
    "get_runtime_context", "init", "is_initialized", "kill", "method", "nodes",
    "object_store_stats", "put", "remote", "shutdown", "util", "wait", "ObjectID",
    "runtime_env",
}


def test_all_is_what_we_export():
    assert set(aray.__all__) == EXPECTED
    for name in aray.__all__:
        assert hasattr(aray, name), name


def public_callables():
    for module, names in ((aray, aray.__all__), (aray.aio, aray.aio.__all__)):
        for name in names:
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{module.__name__}.{name}", obj


def test_every_public_function_has_a_docstring_with_an_example():
    missing = []
    for name, obj in public_callables():
        doc = inspect.getdoc(obj) or ""
        if not doc or ("Example" not in doc and ">>>" not in doc):
            missing.append(name)
    assert missing == []


def test_error_tree():
    e = aray.exceptions
    for cls in (e.TaskError, e.GetTimeoutError, e.TaskCancelledError, e.WorkerCrashedError,
                e.ActorDiedError, e.ObjectLostError, e.OwnerDiedError, e.ObjectStoreFullError,
                e.AuthenticationError, e.NotInitializedError):
        assert issubclass(cls, e.ArayError)
    assert issubclass(e.GetTimeoutError, TimeoutError)
    assert issubclass(e.AuthenticationError, ConnectionError)


def test_cli_version_and_help():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "aray", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == f"aray {aray.__version__}"
    script = os.path.join(os.path.dirname(sys.executable), "aray")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, check=True).stdout
    assert "usage: aray" in out


DOCTEST_RUNNER = """
import doctest, importlib, sys
import aray
failed = 0
finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    for test in finder.find(module):
        if test.examples:
            failed += runner.run(test).failed
            aray.shutdown()  # each example starts from a clean slate
print("ATTEMPTED", runner.tries, "FAILED", failed)
sys.exit(1 if failed else 0)
"""


@pytest.mark.timeout(600)  # some 60 examples, each starting a runtime of its own
def test_docstring_examples_run():
    import subprocess
    import sys

    modules = ["aray", "aray._api", "aray.aio", "aray._refs", "aray._remote", "aray._actors",
               "aray._streams", "aray._as_completed", "aray.exceptions", "aray._runtime_context",
               "aray.util.state", "aray._local", "aray.actor",
               "aray._options", "aray.node.lease_scheduler", "aray.node.scheduler",
               "aray.node.admission", "aray.node.lease_records", "aray._leases", "aray._cancels",
               "aray._task_queue", "aray._waits", "aray.node.labels",
               "aray.util.scheduling_strategies", "aray._head.placement"]
    proc = subprocess.run([sys.executable, "-c", DOCTEST_RUNNER, *modules],
                          capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert int(proc.stdout.split("ATTEMPTED ")[1].split()[0]) > 50
