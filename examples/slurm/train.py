"""What examples/slurm/aray.sbatch runs: tasks spread over the nodes of the allocation.

``aray symmetric-run`` runs it on the head node with ARAY_ADDRESS set, so ``aray.init()``
joins the cluster of the job. Run alone (``python train.py``), it starts a cluster of its
own on this machine and does the same.
"""

import socket
import time

import aray
from aray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@aray.remote(num_cpus=1)
def shard(index: int) -> tuple[int, str, int]:
    """One piece of the work: the sum of the squares of its slice of the numbers."""
    numbers = range(index * 100_000, (index + 1) * 100_000)
    return index, aray.get_runtime_context().get_node_id(), sum(n * n for n in numbers)


def main() -> None:
    aray.init()
    nodes = [node for node in aray.nodes() if node["Alive"]]
    print(f"nodes: {len(nodes)} ({socket.gethostname()} runs the driver)", flush=True)
    started = time.perf_counter()
    # one shard pinned to each node, so that every node works; then as many as fit anywhere
    pinned = [shard.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        node["NodeID"], soft=False)).remote(i) for i, node in enumerate(nodes)]
    spread = [shard.remote(i) for i in range(len(nodes), 4 * len(nodes))]
    results = aray.get(pinned + spread)
    total = sum(value for _, _, value in results)
    used = {node_id for _, node_id, _ in results}
    print(f"shards: {len(results)} on {len(used)} nodes, total {total}, "
          f"{time.perf_counter() - started:.2f} s", flush=True)
    aray.shutdown()


if __name__ == "__main__":
    main()
