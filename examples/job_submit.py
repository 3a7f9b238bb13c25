"""Submit a job to a cluster of two nodes started with the command line.

What it does, as you would by hand in a terminal:

1. `aray start --head --port <a free port> --num-cpus 1` starts the head node, and
   `aray start --address 127.0.0.1:<port> --num-cpus 1 --resources '{"second": 1}'` a
   second node that joins it.
2. It writes a small project into a temporary folder: `train.py`, the job's entrypoint, and
   `model.py`, a module of its own that exists only in that folder.
3. `aray job submit --working-dir <folder> -- python train.py --steps 3` uploads the
   folder to the head, runs `python train.py` there, and prints its output as it runs.
   Inside, `aray.init()` joins the cluster as the job's driver; its tasks run on both
   nodes and import `model` from the uploaded folder (on the second node too, where the
   folder was never copied by hand).
4. `aray job list` shows the job, `aray stop` stops the nodes (in a `finally:` block).

Everything it starts gets `ARAY_SESSION_ROOT` set to a fresh temporary directory, so it
never sees or stops a cluster that something else started. Run it with:

    python examples/job_submit.py
"""

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap

SESSION_ROOT = tempfile.mkdtemp(prefix="aray-ex-")  # short: socket paths have a limit
ENV = {**os.environ, "ARAY_SESSION_ROOT": SESSION_ROOT}

TRAIN = '''
import argparse
import aray
import model

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=2)
steps = parser.parse_args().steps
aray.init()  # ARAY_ADDRESS, set by the job, points at the cluster


@aray.remote
def local_step(i):
    return model.loss(i), aray.get_runtime_context().get_node_id()[:8]


@aray.remote(resources={"second": 1})
def remote_step(i):
    return model.loss(i), aray.get_runtime_context().get_node_id()[:8]


results = aray.get([f.remote(i) for i in range(steps) for f in (local_step, remote_step)])
print("losses", [round(loss, 3) for loss, _ in results])
print("nodes used", len({node for _, node in results}))
'''

MODEL = '''
def loss(step):
    return 1.0 / (1 + step)
'''


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def aray_cli(*args):
    """Run `aray ARGS...` (as `python -m aray`, from this interpreter) and print its output."""
    print(f"$ aray {shlex.join(args)}")
    proc = subprocess.run([sys.executable, "-m", "aray", *args], env=ENV,
                          capture_output=True, text=True, timeout=120)
    print(textwrap.indent((proc.stdout + proc.stderr).rstrip(), "    "))
    proc.check_returncode()
    return proc.stdout


def main():
    port = free_port()
    project = tempfile.mkdtemp(prefix="aray-job-")
    with open(os.path.join(project, "train.py"), "w") as f:
        f.write(TRAIN)
    with open(os.path.join(project, "model.py"), "w") as f:
        f.write(MODEL)
    try:
        aray_cli("start", "--head", "--port", str(port), "--num-cpus", "1")
        aray_cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
                 "--resources", '{"second": 1}')
        out = aray_cli("job", "submit", "--working-dir", project, "--submission-id",
                       "train-1", "--", "python", "train.py", "--steps", "3")
        assert "losses [1.0, 1.0, 0.5, 0.5, 0.333, 0.333]" in out, out
        assert "nodes used 2" in out and "succeeded" in out, out
        assert '"status": "SUCCEEDED"' in aray_cli("job", "list")
    finally:
        aray_cli("stop")
        shutil.rmtree(project, ignore_errors=True)
        shutil.rmtree(SESSION_ROOT, ignore_errors=True)


if __name__ == "__main__":
    main()
