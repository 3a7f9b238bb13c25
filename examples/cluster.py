"""A cluster of two nodes started with the command line, and a program that uses both.

What it does, as you would by hand in a terminal:

1. `aray start --head --port <a free port> --num-cpus 1` starts the head node of a cluster,
   which runs in the background until `aray stop`.
2. `aray start --address 127.0.0.1:<port> --num-cpus 1 --resources '{"second": 1}'` starts
   a second node that joins it. Here both nodes run on this machine; on another machine,
   the same command (with the head's address, and `--token`) adds that machine.
3. This script connects with `aray.init(address="127.0.0.1:<port>")`, lists the nodes, and
   runs tasks on each: a plain task runs on the driver's node, and a task that asks for the
   custom resource "second" runs on the node that has it.
4. A task on the second node makes an 8 MB numpy array; `aray.get` on the driver copies
   it from the second node's object store to the store of the driver's node.
5. `aray status` shows both nodes, and `aray stop` stops them, in a `finally:` block so
   that it always runs.

Everything it starts gets `ARAY_SESSION_ROOT` set to a fresh temporary directory: the
commands and `aray.init(address=...)` find nodes through that directory, so this script
never sees, joins or stops a cluster that something else started.

Run it with:

    python examples/cluster.py
"""

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap

# short: the unix sockets of the nodes live under it, and their paths have a length limit
SESSION_ROOT = tempfile.mkdtemp(prefix="aray-ex-")
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
    print(f"$ aray {shlex.join(args)}")
    proc = subprocess.run([sys.executable, "-m", "aray", *args], env=ENV,
                          capture_output=True, text=True, timeout=60)
    print(textwrap.indent((proc.stdout + proc.stderr).rstrip(), "    "))
    proc.check_returncode()
    return proc.stdout


def node_id():
    return aray.get_runtime_context().get_node_id()[:8]


@aray.remote
def where():
    """The node this task runs on."""
    return node_id()


@aray.remote(resources={"second": 1})
def make_array(n):
    """An array made on the node that has the resource "second"."""
    return node_id(), np.arange(n, dtype=np.float64)


def main():
    port = free_port()
    aray_cli("start", "--head", "--port", str(port), "--num-cpus", "1")
    aray_cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
             "--resources", '{"second": 1}')

    aray.init(address=f"127.0.0.1:{port}")
    print("the driver runs on node", node_id())
    for node in aray.nodes():
        custom = {k: v for k, v in node["Resources"].items()
                  if k not in ("CPU", "memory", "object_store_memory")
                  and not k.startswith("node:")}
        print(f"node {node['NodeID'][:8]}: alive={node['Alive']}, "
              f"{node['Resources']['CPU']:g} CPU, other resources {custom}")
    print("cluster CPUs:", aray.cluster_resources()["CPU"])

    # A plain task fits on the driver's node, so it runs there; one that asks for
    # "second" runs on the node that has it.
    print("a plain task ran on node", aray.get(where.remote()))
    print('tasks that need "second" ran on nodes',
          aray.get([where.options(resources={"second": 1}).remote() for _ in range(3)]))

    # The array is stored on the second node (it is larger than 100 KiB); reading it here
    # pulls a copy into the object store of the driver's node.
    made_on, array = aray.get(make_array.remote(1_000_000))
    print(f"an array of {array.nbytes:,} bytes made on node {made_on}, "
          f"read on node {node_id()}: sum = {array.sum():.0f}")
    aray.shutdown()  # the driver leaves; the nodes keep running

    aray_cli("status")


if __name__ == "__main__":
    try:
        main()
    finally:
        if aray.is_initialized():
            aray.shutdown()
        aray_cli("stop")  # stops both nodes and their workers
        shutil.rmtree(SESSION_ROOT, ignore_errors=True)
