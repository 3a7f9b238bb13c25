"""GPU detection at node start (a fake nvidia-smi on PATH), CUDA_VISIBLE_DEVICES as the
node's set of devices, and the devices each task is given."""

import json
import os
import stat
import sys

from conftest import PRELUDE

from aray.node.accelerators import detect, model_of


def fake_nvidia_smi(folder, names) -> dict:
    """An ``nvidia-smi`` that lists ``names`` as GPUs 0..n-1; returns a PATH with it."""
    script = folder / "nvidia-smi"
    rows = "\n".join(f"{i}, {name}" for i, name in enumerate(names))
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{rows}\nEOF\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_detection_reads_nvidia_smi_and_honours_cuda_visible_devices(tmp_path):
    env = fake_nvidia_smi(tmp_path, ["NVIDIA H100 80GB HBM3"] * 4)
    assert detect(env) == (4, "H100")
    assert detect({**env, "CUDA_VISIBLE_DEVICES": "1,3"}) == (2, "H100")
    assert detect({**env, "CUDA_VISIBLE_DEVICES": ""}) == (0, "")  # none to use
    assert detect({"PATH": str(tmp_path / "none")}) == (0, "")
    mixed = fake_nvidia_smi(tmp_path, ["NVIDIA A100-SXM4-40GB", "Tesla T4"])
    assert detect(mixed) == (2, "")  # two models: no single accelerator type
    assert model_of("NVIDIA A100-SXM4-40GB") == "A100"


def test_a_node_offers_its_detected_gpus_and_tasks_get_their_own(run_script, tmp_path):
    env = fake_nvidia_smi(tmp_path, ["NVIDIA H100 80GB HBM3"] * 4)
    code = PRELUDE + """
aray.init(num_cpus=4)

@aray.remote(num_gpus=1)
def device(delay):
    time.sleep(delay)
    return [os.environ["CUDA_VISIBLE_DEVICES"], aray.get_gpu_ids(),
            aray.get_runtime_context().get_accelerator_ids()["GPU"]]

@aray.remote(accelerator_type="H100")
def on_h100():
    return "h100"

@aray.remote(accelerator_type="A100")
def on_a100():
    return "a100"

together = aray.get([device.remote(1.0), device.remote(1.0)])
ready, _ = aray.wait([on_a100.remote()], timeout=1)  # no node has one: it waits
out = [aray.cluster_resources().get("GPU"), aray.cluster_resources().get("accelerator_type:H100"),
       together, aray.get(on_h100.remote()), len(ready)]
sys.stdout.write("OUT " + json.dumps(out) + "\\n")
report_pids()
"""
    import subprocess
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path,
                          env={**os.environ, **env, "CUDA_VISIBLE_DEVICES": "3,1"})
    assert proc.returncode == 0, proc.stderr
    gpus, kind, together, h100, a100_ready = json.loads(
        proc.stdout.split("OUT ", 1)[1].splitlines()[0])
    assert (gpus, kind, h100, a100_ready) == (2.0, 1.0, "h100", 0)
    # each of the two at once got one of the node's devices, its own, as CUDA names it
    assert sorted(t[0] for t in together) == ["1", "3"]
    assert sorted(t[1] for t in together) == [[1], [3]]
    assert all(t[2] == [str(t[1][0])] for t in together)  # (strings, as in Ray)
    pids = json.loads(proc.stdout.split("PIDS ", 1)[1].splitlines()[0])
    from conftest import wait_gone
    assert wait_gone(pids) == []
