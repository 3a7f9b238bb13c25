"""Job submission: `aray job ...`, the HTTP API with Ray's paths, and JobSubmissionClient,
against a two-node cluster started by the CLI."""

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest
from conftest import wait_until
from test_cluster import Cluster
from test_runtime_env import make_wheel


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    c.env["ARAY_JOB_STOP_GRACE_SECONDS"] = "1"
    c.head = c.start_head("--num-cpus", "2")
    c.second = c.join("--num-cpus", "1", "--resources", '{"far": 1}')
    with open(os.path.join(c.root, "session_latest", "token")) as f:
        c.token = f.read().strip()
    c.dashboard = c.head["dashboard_url"]
    yield c
    c.stop()


def dashboard_jobs(c) -> dict:
    """The rows of the dashboard's jobs page, by submission id."""
    request = urllib.request.Request(c.dashboard + "/api/jobs",
                                     headers={"Authorization": f"Bearer {c.token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return {row["submission_id"]: row for row in json.load(response)["rows"]
                if row.get("submission_id")}


def job(c, *args, check=True):
    return c.cli("job", *args, check=check)


def status_of(c, submission_id):
    out = job(c, "status", submission_id).stdout
    return out.split(": ", 1)[1].splitlines()[0]


def test_a_job_runs_code_that_exists_only_in_its_working_dir(cluster, tmp_path):
    code = tmp_path / "project"
    code.mkdir()
    (code / "helpers_only_here.py").write_text("def triple(x):\n    return 3 * x\n")
    (code / "main.py").write_text(textwrap.dedent("""
        import os, sys, aray
        import helpers_only_here
        aray.init()

        @aray.remote(resources={"far": 1})
        def far(x):
            import helpers_only_here
            return helpers_only_here.triple(x), aray.get_runtime_context().get_node_id()

        values, nodes = zip(*aray.get([far.remote(i) for i in range(3)]))
        print("VALUES", list(values), sorted(set(nodes)), sys.argv[1:], os.environ["MODE"])
    """))
    out = job(cluster, "submit", "--working-dir", str(code), "--submission-id", "first",
              "--runtime-env-json", '{"env_vars": {"MODE": "job"}}', "--",
              "python", "main.py", "x", "y").stdout
    assert "Job 'first' submitted successfully" in out
    assert f"VALUES [0, 3, 6] ['{cluster.second['node_id']}'] ['x', 'y'] job" in out
    assert "Job 'first' succeeded" in out
    # the record outlives the entrypoint: status, logs and the list have it
    assert status_of(cluster, "first") == "SUCCEEDED"
    assert "VALUES [0, 3, 6]" in job(cluster, "logs", "first").stdout
    listed = [json.loads(line) for line in job(cluster, "list").stdout.splitlines()]
    assert {"submission_id": "first", "status": "SUCCEEDED"}.items() <= listed[0].items()
    # the dashboard's jobs page shows it with the driver it ran
    row = dashboard_jobs(cluster)["first"]
    assert row["submission_status"] == "SUCCEEDED" and row["job_id"] and not row["alive"]

    # the same id again, an unknown id: one clear line each
    again = job(cluster, "submit", "--submission-id", "first", "--", "true", check=False)
    assert again.returncode == 1
    assert again.stderr.strip() == ("aray job submit: a job with submission id 'first' exists "
                                    "already; choose another id, or delete that job first")
    unknown = job(cluster, "status", "no-such-job", check=False)
    assert unknown.returncode == 1 and unknown.stderr.strip() == (
        "aray job status: no job with submission id 'no-such-job': `aray job list` shows the "
        "jobs of this cluster")
    assert "deleted" in job(cluster, "delete", "first").stdout
    assert job(cluster, "status", "first", check=False).returncode == 1


def test_bad_entrypoints_and_working_dirs_fail_in_one_line(cluster, tmp_path):
    missing = job(cluster, "submit", "--submission-id", "missing", "--", "python",
                  "no_such_script.py", check=False)
    assert missing.returncode == 1
    assert "Job 'missing' failed: Job entrypoint command failed with exit code 2: its last " \
           "line: " in missing.stdout and "no_such_script.py" in missing.stdout
    not_found = job(cluster, "submit", "--", "no-such-command-aray", check=False)
    assert "exit code 127: the command was not found" in not_found.stdout
    row = dashboard_jobs(cluster)["missing"]  # no driver ever connected: a row of its own
    assert (row["job_id"], row["submission_status"], row["alive"]) == ("", "FAILED", False)

    big = tmp_path / "big"
    big.mkdir()
    (big / "data.bin").write_bytes(os.urandom(50_000))
    proc = subprocess.run([sys.executable, "-m", "aray", "job", "submit", "--working-dir",
                           str(big), "--", "python", "-c", "pass"], capture_output=True,
                          text=True, timeout=60,
                          env={**cluster.env, "ARAY_RUNTIME_ENV_MAX_PACKAGE_BYTES": "10000"})
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "larger than 10000 bytes" in proc.stderr and "excludes" in proc.stderr

    wrong = job(cluster, "list", "--address", cluster.dashboard, "--token", "wrong",
                check=False)
    assert wrong.returncode == 1 and "refused the token" in wrong.stderr
    no_command = job(cluster, "submit", check=False)
    assert "give the command to run after --" in no_command.stderr


def test_stopping_a_job_that_ignores_sigterm_ends_it_and_its_actors(cluster, tmp_path):
    script = tmp_path / "stubborn.py"
    script.write_text(textwrap.dedent("""
        import signal, time, aray
        signal.signal(signal.SIGTERM, lambda *a: print("ignoring SIGTERM", flush=True))
        aray.init()

        @aray.remote
        class Keeper:
            def ping(self):
                return "pong"

        keeper = Keeper.options(name="kept-by-stubborn").remote()
        print("STARTED", aray.get(keeper.ping.remote()), flush=True)
        while True:
            time.sleep(0.1)
    """))
    job(cluster, "submit", "--no-wait", "--submission-id", "stubborn", "--working-dir",
        str(tmp_path), "--", "python", "stubborn.py")
    wait_until(lambda: "STARTED pong" in job(cluster, "logs", "stubborn").stdout, 30,
               interval=0.2, message="the job's actor answered")
    assert status_of(cluster, "stubborn") == "RUNNING"
    started = time.monotonic()
    assert "was stopped" in job(cluster, "stop", "stubborn").stdout
    wait_until(lambda: status_of(cluster, "stubborn") == "STOPPED", 20, interval=0.2,
               message="the job stopped")
    assert time.monotonic() - started < 15  # SIGKILL came after the grace period
    assert "ignoring SIGTERM" in job(cluster, "logs", "stubborn").stdout
    # its actor ended with its driver
    wait_until(lambda: "kept-by-stubborn" not in cluster.cli(
        "list", "actors", "--filter", "state=ALIVE").stdout, 20, interval=0.2,
        message="the job's actor ended")
    assert "not running" in job(cluster, "stop", "stubborn").stdout


def test_logs_are_followed_while_the_job_runs(cluster, tmp_path):
    script = tmp_path / "ticks.py"
    marker = tmp_path / "go"
    script.write_text(textwrap.dedent(f"""
        import os, time
        print("tick 1", flush=True)
        while not os.path.exists({str(marker)!r}):  # until the test has seen tick 1
            time.sleep(0.05)
        print("tick 2", flush=True)
    """))
    job(cluster, "submit", "--no-wait", "--submission-id", "ticks", "--",
        sys.executable, str(script))
    follow = subprocess.Popen([sys.executable, "-m", "aray", "job", "logs", "--follow",
                               "ticks"], stdout=subprocess.PIPE, text=True, env=cluster.env)
    try:
        assert follow.stdout.readline() == "tick 1\n"  # while the job still runs
        assert status_of(cluster, "ticks") == "RUNNING"
        marker.write_text("")
        assert follow.stdout.readline() == "tick 2\n"
        assert follow.wait(timeout=30) == 0  # the follow ends with the job
    finally:
        follow.kill()
        follow.wait()
    assert status_of(cluster, "ticks") == "SUCCEEDED"


def test_the_http_api_and_the_python_client(cluster, tmp_path):
    wheel = make_wheel(str(tmp_path), "jobwheel", body="WORD = 'from the wheel'\n")
    # Ray's paths and JSON, with the token; none without it
    request = urllib.request.Request(cluster.dashboard + "/api/jobs/")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 401
    body = json.dumps({"entrypoint": "echo http-api", "submission_id": "by-http"}).encode()
    request = urllib.request.Request(cluster.dashboard + "/api/jobs/", data=body,
                                     headers={"Authorization": f"Bearer {cluster.token}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response) == {"submission_id": "by-http", "job_id": "by-http"}

    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, json, time, aray
        from aray.job_submission import JobStatus, JobSubmissionClient

        client = JobSubmissionClient({cluster.dashboard!r}, token={cluster.token!r})
        entry = ("python -c \\"import aray, jobwheel; aray.init(); "
                 "f = aray.remote(lambda: __import__('jobwheel').WORD); "
                 "print(jobwheel.WORD, aray.get(f.remote()))\\"")
        sid = client.submit_job(entrypoint=entry, runtime_env={{"pip": [{wheel!r}]}},
                                metadata={{"owner": "test"}})
        async def follow():
            return "".join([t async for t in client.tail_job_logs(sid)])
        logs = asyncio.run(follow())
        info = client.get_job_info(sid)
        while not client.get_job_status("by-http").is_terminal():
            time.sleep(0.1)
        print("OUT " + json.dumps([logs, str(info.status), info.metadata,
                                   str(client.get_job_status("by-http")),
                                   client.get_job_logs("by-http"),
                                   sid in [j.submission_id for j in client.list_jobs()],
                                   client.stop_job(sid)]))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env=cluster.env)
    assert proc.returncode == 0, proc.stderr
    logs, status, metadata, http_status, http_logs, listed, stopped = json.loads(
        proc.stdout.split("OUT ", 1)[1])
    assert "from the wheel from the wheel" in logs  # the entrypoint and its task
    assert (status, metadata, listed, stopped) == ("SUCCEEDED", {"owner": "test"}, True, False)
    assert (http_status, http_logs) == ("SUCCEEDED", "http-api\n")


def test_an_entrypoint_runs_where_its_resources_are_and_holds_them(cluster, tmp_path):
    (tmp_path / "placed.py").write_text(textwrap.dedent("""
        import aray
        aray.init()

        @aray.remote(resources={"far": 1})
        def needs_far():
            return 1

        ready, _ = aray.wait([needs_far.remote()], timeout=1.0)
        print("NODE", aray.get_runtime_context().get_node_id(),
              "FAR", aray.available_resources().get("far", 0.0), "RAN", len(ready))
    """))
    out = job(cluster, "submit", "--submission-id", "placed", "--working-dir", str(tmp_path),
              "--entrypoint-resources", '{"far": 1}', "--", "python", "placed.py").stdout
    # on the node that has "far", which the entrypoint holds: its own task must wait
    assert f"NODE {cluster.second['node_id']} FAR 0.0 RAN 0" in out, out
    info = json.loads(subprocess.run(
        [sys.executable, "-c", "import json, sys; from aray.job_submission import "
         "JobSubmissionClient as C; print(json.dumps(C().get_job_info('placed').__dict__, "
         "default=str))"], capture_output=True, text=True, env=cluster.env,
        timeout=60).stdout)
    assert info["driver_node_id"] == cluster.second["node_id"]
    # it gave "far" back when it ended
    r = cluster.driver("""
        aray.init(address="auto")
        print("FAR", aray.get(aray.remote(resources={"far": 1})(lambda: "free").remote()))
    """, tmp_path)
    assert "FAR free" in r.stdout
    bad = job(cluster, "submit", "--entrypoint-resources", "[1]", "--", "true", check=False)
    assert bad.returncode == 1 and "entrypoint_resources must map resource names" in bad.stderr
