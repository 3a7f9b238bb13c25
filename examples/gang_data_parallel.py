"""Gang-schedule a small data-parallel job over two nodes with a placement group.

Data-parallel training needs all of its workers at once: a worker that starts while the
others wait for room holds its resources for nothing, and two such jobs can each hold half
of the cluster forever. A placement group reserves every worker's bundle together, or
none, and then the workers start in their bundles.

As examples/cluster.py does, this starts a head node and a second node with the command
line (`aray start`), two CPUs each, in a session directory of its own. It reserves one
bundle per node (STRICT_SPREAD), starts one worker actor in each, and trains a linear model
on the workers' shards of the data: each step, every worker computes the gradient of its
shard, the driver averages them (an all-reduce by hand) and sends the new weights back.

Run it with::

    python examples/gang_data_parallel.py
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile

import numpy as np

SESSION_ROOT = tempfile.mkdtemp(prefix="aray-ex-")  # short: unix socket paths are limited
os.environ["ARAY_SESSION_ROOT"] = SESSION_ROOT
ENV = dict(os.environ)

import aray  # noqa: E402  (after ARAY_SESSION_ROOT is set)
from aray.util import placement_group, placement_group_table, remove_placement_group  # noqa: E402
from aray.util.scheduling_strategies import PlacementGroupSchedulingStrategy  # noqa: E402

WORKERS = 2
STEPS = 60


@aray.remote(num_cpus=1)
class Worker:
    """One data-parallel worker: a shard of the data, the gradient of the loss on it."""

    def __init__(self, rank: int, world: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(4_000, 8))
        true_w = np.arange(1.0, 9.0)
        y = x @ true_w + rng.normal(scale=0.1, size=len(x))
        self.x, self.y = x[rank::world], y[rank::world]  # this worker's shard
        self.rank = rank

    def node(self) -> str:
        return aray.get_runtime_context().get_node_id()[:8]

    def gradient(self, w: np.ndarray) -> np.ndarray:
        error = self.x @ w - self.y
        return self.x.T @ error / len(self.y)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def aray_cli(*args):
    """Run `aray ARGS...` (as `python -m aray`, from this interpreter)."""
    print("$ aray", " ".join(args))
    subprocess.run([sys.executable, "-m", "aray", *args], env=ENV, check=True,
                   capture_output=True, text=True, timeout=60)


def main():
    port = free_port()
    aray_cli("start", "--head", "--port", str(port), "--num-cpus", "2")
    aray_cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "2")
    aray.init(address=f"127.0.0.1:{port}")

    # one bundle per worker, each on a node of its own: all of them, or the job waits
    pg = placement_group([{"CPU": 1}] * WORKERS, strategy="STRICT_SPREAD", name="train")
    aray.get(pg.ready(), timeout=60)
    print("bundles on nodes:", {i: n[:8] for i, n in
                                placement_group_table(pg)["bundles_to_node_id"].items()})
    workers = [Worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        pg, placement_group_bundle_index=rank)).remote(rank, WORKERS) for rank in range(WORKERS)]
    nodes = aray.get([w.node.remote() for w in workers])
    print("workers on nodes:", nodes)

    w = np.zeros(8)
    for step in range(STEPS):
        w_ref = aray.put(w)  # one copy for every worker
        grads = aray.get([worker.gradient.remote(w_ref) for worker in workers])
        w = w - 0.1 * np.mean(grads, axis=0)  # the all-reduce
        if step % 20 == 0 or step == STEPS - 1:
            print(f"step {step:3d}: |w - w*| = {np.linalg.norm(w - np.arange(1.0, 9.0)):.4f}")

    remove_placement_group(pg)  # the workers end with their group
    assert len(set(nodes)) == WORKERS, "each worker ran on a node of its own"
    assert np.allclose(w, np.arange(1.0, 9.0), atol=0.05)
    print("learned weights:", np.round(w, 2))
    aray.shutdown()


if __name__ == "__main__":
    try:
        main()
    finally:
        if aray.is_initialized():
            aray.shutdown()
        aray_cli("stop")
        shutil.rmtree(SESSION_ROOT, ignore_errors=True)
