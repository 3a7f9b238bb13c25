"""``/metrics``: the head's view of the cluster in Prometheus' text format, made at each
scrape from the head's tables and the nodes' last heartbeats (``prometheus_client`` writes
the format)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import views

if TYPE_CHECKING:
    from .server import Head
    from .views import Snapshot

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _HeadCollector:
    def __init__(self, head: Head | Snapshot) -> None:
        self.head = head

    def collect(self):
        head = self.head
        summary = views.summary(head)
        nodes = GaugeMetricFamily("aray_nodes", "Nodes of the cluster, by state.",
                                  labels=["state"])
        nodes.add_metric(["alive"], summary["nodes"]["alive"])
        nodes.add_metric(["dead"], summary["nodes"]["dead"])
        yield nodes
        jobs = GaugeMetricFamily("aray_jobs", "Jobs (drivers that connected), by state.",
                                 labels=["state"])
        jobs.add_metric(["alive"], summary["jobs"]["alive"])
        jobs.add_metric(["finished"], summary["jobs"]["total"] - summary["jobs"]["alive"])
        yield jobs
        tasks = GaugeMetricFamily(
            "aray_tasks", "Tasks the head knows (all that have not ended, the last 100,000 "
            "that have), by name and state.", labels=["name", "state"])
        for name, counts in sorted(summary["tasks"]["by_name"].items()):
            for state, n in sorted(counts.items()):
                tasks.add_metric([name, state], n)
        yield tasks
        actors = GaugeMetricFamily("aray_actors", "Actors, by state.", labels=["state"])
        for state, n in sorted(summary["actors"]["by_state"].items()):
            actors.add_metric([state], n)
        yield actors
        store = {key: GaugeMetricFamily(f"aray_object_store_{key}", text, labels=["node_id"])
                 for key, text in (("used_bytes", "Bytes of objects in the node's store."),
                                   ("capacity_bytes", "The node's object store capacity."),
                                   ("num_objects", "Objects in the node's store."),
                                   ("spilled_bytes", "Bytes of the node's objects spilled "
                                                     "to disk."))}
        total = GaugeMetricFamily("aray_resource_total", "A node's resources.",
                                  labels=["node_id", "resource"])
        available = GaugeMetricFamily("aray_resource_available",
                                      "A node's resources not in use.",
                                      labels=["node_id", "resource"])
        cpu = GaugeMetricFamily("aray_node_cpu_percent", "The node machine's CPU use.",
                                labels=["node_id"])
        mem_used = GaugeMetricFamily("aray_node_memory_used_bytes",
                                     "The node machine's memory in use.", labels=["node_id"])
        mem_total = GaugeMetricFamily("aray_node_memory_total_bytes",
                                      "The node machine's memory.", labels=["node_id"])
        for node in head.nodes.alive():
            for key, family in store.items():
                family.add_metric([node.node_id], node.status.get("store", {}).get(key, 0))
            for resource, value in sorted(node.total.items()):
                total.add_metric([node.node_id, resource], value)
                available.add_metric([node.node_id, resource], node.available.get(resource, 0))
            host = node.status.get("host")
            if host:
                cpu.add_metric([node.node_id], host["cpu_percent"])
                mem_used.add_metric([node.node_id], host["memory_used"])
                mem_total.add_metric([node.node_id], host["memory_total"])
        yield from store.values()
        yield from (total, available, cpu, mem_used, mem_total)


def render(head: Head | Snapshot) -> bytes:
    """The metrics text of one scrape, of the head's tables (or a snapshot of them)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_HeadCollector(head))
    return generate_latest(registry)
