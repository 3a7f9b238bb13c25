"""`aray microbenchmark`, the workload script that benchmarks/compare.py runs, and the soak."""

import json
import os
import subprocess
import sys

import pytest

import aray._perf as perf


def run_quick(tmp_path, name: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``benchmarks/NAME.py --quick`` in ``tmp_path``; its process and its JSON figures."""
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", f"{name}.py")
    figures = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, script, "--quick", "--json", str(figures)],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads(figures.read_text())


def test_microbenchmark_cli_prints_rays_names(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "aray", "microbenchmark", "--filter", "tasks sync",
         "--scale", "0.02", "--rounds", "2", "--num-cpus", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("single client tasks sync per second ") and " +- " in line
               for line in lines), proc.stdout
    results = json.loads(out.read_text())
    assert len(results["single client tasks sync"]) == 2
    assert all(v > 0 for v in results["single client tasks sync"])
    bad = subprocess.run([sys.executable, "-m", "aray", "microbenchmark", "--filter", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "no workload matches 'nope'" in bad.stderr


def test_the_workload_script_runs_standalone(tmp_path):
    # as compare.py runs it on either runtime: by path, with -P, one workload per process
    proc = subprocess.run(
        [sys.executable, "-P", perf.__file__, "aray", "get_containing_10k_refs", "2", "1", "1"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["runtime"] == "aray"
    assert result["results"]["single client get object containing 10k refs"][0] > 0
    assert result["pids"], "it reports the runtime's processes for the leak check"


@pytest.mark.parametrize("floor", ["pool", "dask"])
def test_the_task_workloads_run_on_the_floor_runtimes(tmp_path, floor):
    # compare.py's third and fourth columns: a plain process pool, and Dask where installed
    if floor == "dask":
        pytest.importorskip("distributed", reason="Dask runs from compare.py's own venv")
    proc = subprocess.run(
        [sys.executable, "-P", perf.__file__, floor, "tasks_async", "50", "1", "1"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["results"]["single client tasks async"][0] > 0
    assert result["pids"], "its worker processes are reported for the leak check"
    refused = subprocess.run([sys.executable, "-P", perf.__file__, floor, "actor_sync", "5",
                              "1", "1"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "runs only the workloads tasks_sync" in refused.stderr


def test_the_transfer_benchmark_runs_quick(tmp_path):
    _, result = run_quick(tmp_path, "bench_transfer", 240)
    for key in ("socket_gb_s", "transfer_gb_s", "one_reader_s", "many_readers_s"):
        assert result[key] > 0, key


def test_the_store_benchmark_runs_small(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_store.py")
    proc = subprocess.run([sys.executable, script, "--gib", "0.05", "--churn", "200"],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in ("memcpy (touched pages)", "copy into fresh shm", "populated first",
                "pages allocated before", "first put", "churn: 200"):
        assert row in proc.stdout, proc.stdout
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(
        "aray-bench-fresh-")], "the fresh-copy file was left behind"


def test_the_numpy_benchmark_runs_quick(tmp_path):
    _, result = run_quick(tmp_path, "bench_numpy", 600)
    for key in ("serial_s", "aray_s", "aray_thread_per_core_s"):
        assert result[key] > 0, key


def test_every_workload_reports_under_its_name():
    names = [label for _, _, label in perf.WORKLOADS.values()]
    assert len(set(names)) == len(names)
    for ray_name in ("single client get calls", "single client put gigabytes",
                     "single client get object containing 10k refs",
                     "multi client tasks async", "n:n actor calls async",
                     "n:n async-actor calls async", "1:n async-actor calls async"):
        assert ray_name in names
    assert os.path.basename(perf.__file__) == "_perf.py"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_soak_survives_a_node_loss(tmp_path):
    # a short soak: a 2-node cluster of its own, a mixed verified workload, the second node
    # SIGKILLed at half time and replaced; the soak exits 1 on any error or leftover
    soak = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "soak.py")
    figures = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, soak, "--minutes", "0.3", "--json", str(figures)],
        capture_output=True, text=True, timeout=280, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "=== soak summary ===" in proc.stdout and "errors: 0" in proc.stdout, out
    assert "verdict: PASS" in proc.stdout, out
    report = json.loads(figures.read_text())
    assert report["errors"] == 0 and report["leftovers"] == []
    assert report["kill"]["killed_node_marked_dead"] is True
    assert all(kind["done"] > 0 for kind in report["operations"].values()), report


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_scale_quick_runs(tmp_path):
    # every row in a process (and cluster) of its own; the figures are not judged here (a
    # MISS is a finding, not a failure), only that each row measured something
    proc, report = run_quick(tmp_path, "bench_scale", 240)
    out = proc.stdout + proc.stderr
    assert proc.stdout.startswith("aray scale benchmark (quick)\nmachine: "), out
    assert set(report["rows"]) == {"put_inline", "put_shm", "tasks", "returns", "actors",
                                   "task_table", "store_accounts", "arena"}
    for name, row in report["rows"].items():
        assert not row["error"] and not row["leaks"] and not row["shutdown_error"], (name, row)
        assert row["figures"], name
        for metric, fig in row["figures"].items():
            assert len(fig["values"]) == len(row["sizes"]), (name, metric, fig)
            assert all(v > 0 for v in fig["values"].values()), (name, metric, fig)
            assert fig["status"] in ("ok", "MISS"), (name, metric, fig)
    tasks = report["rows"]["tasks"]
    assert {m["process"] for m in tasks["memory"]} == {"driver", "node", "workers"}


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_sim_cluster_quick_runs(tmp_path):
    # the real head in a process of its own against 10 and 100 simulated node agents
    import psutil

    proc, figures = run_quick(tmp_path, "sim_cluster", 180)
    out = proc.stdout + proc.stderr
    assert "idle head CPU %" in proc.stdout, out
    rows = figures["sizes"]
    assert [row["nodes"] for row in rows] == [10, 100]
    for row in rows:
        assert "incomplete" not in row, row
        assert row["joined"] == row["nodes"] and row["actors"] == 2000
        for key in ("join_s", "join_bytes", "place_per_s", "place_bytes_per_s",
                    "place_head_cpu_ms_per_actor", "rss_joined_mb", "rss_placed_mb",
                    "dead_socket_notice_s", "dead_socket_replace_s",
                    "dead_heartbeat_notice_s", "dead_heartbeat_replace_s"):
            assert row[key] > 0, (key, row)
        # an idle cluster may cost the head (nearly) nothing: present, never negative
        assert row["idle_head_cpu_pct"] >= 0 and row["idle_bytes_per_s"] >= 0, row
        assert row["dead_socket_actors"] > 0 and row["dead_heartbeat_actors"] > 0, row
        # a node that stops heartbeating is dead after the head's node timeout, not before
        assert row["dead_heartbeat_notice_s"] >= row["node_timeout_s"] - 1.0, row
        assert row["head_exit_code"] == 0 and row["head_exited"], row
        assert not psutil.pid_exists(row["head_pid"]), row


def test_the_hops_benchmark_runs_quick(tmp_path):
    _, figures = run_quick(tmp_path, "bench_hops", 240)
    rows = figures["rows"]
    assert set(rows) == {"process pool", "pipe", "websocket, loop to loop", "+ caller thread",
                         "+ caller thread, + worker thread", "aray tasks sync"}
    assert all(rate > 0 for rate in rows.values()), rows
