"""A cluster started with the command line, two drivers, and a detached actor between them.

What it does, as you would by hand in a terminal:

1. `aray start --head --port <a free port> --num-cpus 2` starts a cluster that runs in
   the background until `aray stop`.
2. This script joins it with `aray.init(address="auto", namespace="demo")`, runs tasks, and
   creates a detached named actor, which outlives the driver that created it. Then it
   disconnects; the cluster keeps running.
3. A second driver (another Python process) joins, finds the actor by its name, and uses it.
4. `aray status` and `aray memory` show the cluster's nodes, resources and object store.
5. `aray stop` stops the cluster, in a `finally:` block so that it always runs.

Everything it starts gets `ARAY_SESSION_ROOT` set to a fresh temporary directory: the
commands and `aray.init(address="auto")` find clusters through that directory, so this
script never sees, joins or stops a cluster that something else started.

One node only: the task this example comes from asks for a 2-node local cluster, but in
this version of aray a cluster runs on one machine with one node (`aray start --address`,
which would join a second node, does not exist yet). So it is a 1-node cluster.

Run it with:

    python examples/cluster.py
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap

SESSION_ROOT = tempfile.mkdtemp(prefix="aray-example-cluster-")
os.environ["ARAY_SESSION_ROOT"] = SESSION_ROOT  # for this process, and all it starts
ENV = dict(os.environ)

import numpy as np  # noqa: E402

import aray  # noqa: E402


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def aray_cli(*args):
    """Run `aray ARGS...` (as `python -m aray`, from this interpreter) and print its output."""
    print(f"$ aray {' '.join(args)}")
    proc = subprocess.run([sys.executable, "-m", "aray", *args], env=ENV,
                          capture_output=True, text=True, timeout=60)
    print(textwrap.indent((proc.stdout + proc.stderr).rstrip(), "    "))
    proc.check_returncode()
    return proc.stdout


@aray.remote
def square(x):
    return x * x


@aray.remote
class Guestbook:
    """A detached actor: it lives on after its driver leaves, until killed or `aray stop`."""

    def __init__(self):
        self.names = []
        # An object owned by the actor stays in the store as long as the actor lives.
        self.table = aray.put(np.arange(1_000_000))  # 8 MB

    def sign(self, name):
        self.names.append(name)
        return list(self.names)


SECOND_DRIVER = """
import aray
aray.init(address="auto", namespace="demo")
guestbook = aray.get_actor("guestbook")  # created by the first driver, which has left
print("second driver: the guestbook holds", aray.get(guestbook.sign.remote("second driver")))
aray.shutdown()
"""


def main():
    port = free_port()
    aray_cli("start", "--head", "--port", str(port), "--num-cpus", "2")

    # The first driver: this process.
    aray.init(address="auto", namespace="demo")
    print("first driver: the cluster has", aray.cluster_resources()["CPU"], "CPUs;",
          "squares:", aray.get([square.remote(i) for i in range(8)]))
    guestbook = Guestbook.options(name="guestbook", lifetime="detached").remote()
    print("first driver: the guestbook holds", aray.get(guestbook.sign.remote("first driver")))
    aray.shutdown()  # leaves the cluster running, and the detached actor in it
    print("first driver: disconnected")

    # The second driver: another process, with the same session root and namespace.
    second = subprocess.run([sys.executable, "-c", SECOND_DRIVER], env=ENV,
                            capture_output=True, text=True, timeout=60)
    print(second.stdout.rstrip())
    if second.returncode != 0:
        sys.exit(f"the second driver failed:\n{second.stderr}")

    aray_cli("status")
    aray_cli("memory")


if __name__ == "__main__":
    try:
        main()
    finally:
        if aray.is_initialized():
            aray.shutdown()
        aray_cli("stop")  # stops the cluster, its workers and the detached actor
        shutil.rmtree(SESSION_ROOT, ignore_errors=True)
