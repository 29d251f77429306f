"""Prometheus metrics of one daemon (`join --metrics-port P`): what an operator scrapes to see that a node
trains, serves, verifies and talks to its swarm. Most values are read from the daemon's status snapshot at
scrape time (a collector, node.status); the few that are events (checkpoint publications) are recorded as they
happen."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from node.status import NodeStatus
from protocol.errors import ParisError

log = logging.getLogger("node.metrics")

PUBLISH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class NodeMetrics:
    """The registry of one daemon, its event metrics, and the HTTP server that exposes it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.publish_seconds = Histogram("paris_checkpoint_publish_seconds", "Time to put a checkpoint into the "
                                         "content store and announce it", ["slot"], registry=self.registry,
                                         buckets=PUBLISH_BUCKETS)
        self.published_bytes = Counter("paris_checkpoint_published_bytes", "Bytes of checkpoints this node "
                                       "published", ["slot"], registry=self.registry)
        self.val_loss: dict[str, float] = {}  # slot → validation loss of our newest published checkpoint
        self.gossip: dict | None = None  # the gossip worker's newest stats reply
        self._server = None
        self._lock = threading.Lock()

    def observe_publish(self, slot: str, seconds: float, size: int, val_loss: float | None) -> None:
        self.publish_seconds.labels(slot).observe(seconds)
        self.published_bytes.labels(slot).inc(size)
        if val_loss is not None and np.isfinite(val_loss):
            with self._lock:
                self.val_loss[slot] = float(val_loss)

    def watch(self, snapshot: Callable[[], NodeStatus]) -> None:
        """Serve the status that `snapshot` returns at each scrape."""
        self.registry.register(DaemonCollector(snapshot, self))

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint (a daemon thread); returns the bound port. One-line error if it is taken."""
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise ParisError(f"--metrics-port {port}: cannot listen on {host}:{port} ({e.strerror or e})") from None
        bound = self._server.server_address[1]
        log.info("metrics at http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.shutdown()
                self._server.server_close()
            self._server = None


class DaemonCollector(Collector):
    """Reads the daemon's status snapshot (node.status) at each scrape: every lane, never the daemon itself."""

    def __init__(self, snapshot: Callable[[], NodeStatus], metrics: NodeMetrics) -> None:
        self.snapshot, self.m = snapshot, metrics

    def collect(self):
        st = self.snapshot()
        info = GaugeMetricFamily("paris_node_info", "This node (value 1)", labels=["peer_id", "run_id", "role"])
        info.add_metric([st.peer_id, st.run_id, st.role], 1)
        yield info
        cluster = GaugeMetricFamily("paris_cluster", "The cluster each lane (device) holds the lease of (-1: none)",
                                    labels=["lane"])
        for lane in st.lanes:
            cluster.add_metric([str(lane.index)], -1 if lane.cluster is None else lane.cluster)
        yield cluster

        step = GaugeMetricFamily("paris_training_step", "Training step of each slot this node trains", labels=["slot"])
        target = GaugeMetricFamily("paris_training_target_steps", "Target step of that slot", labels=["slot"])
        sps = GaugeMetricFamily("paris_training_samples_per_second", "Training throughput", labels=["slot"])
        loss = GaugeMetricFamily("paris_training_loss", "Training loss (EMA)", labels=["slot"])
        for lane in st.lanes:
            if lane.slot is None or lane.step is None:
                continue
            step.add_metric([lane.slot], lane.step)
            target.add_metric([lane.slot], lane.target)
            if lane.samples_per_s is not None:
                sps.add_metric([lane.slot], lane.samples_per_s)
            if lane.loss is not None:
                loss.add_metric([lane.slot], lane.loss)
        yield from (step, target, sps, loss)
        val = GaugeMetricFamily("paris_validation_loss", "Validation loss of this node's newest published "
                                "checkpoint of the slot", labels=["slot"])
        with self.m._lock:
            for s, v in sorted(self.m.val_loss.items()):
                val.add_metric([s], v)
        yield val

        yield _counter("paris_content_served_bytes", "Bytes this node's content store sent to peers",
                       st.served_bytes)
        yield _counter("paris_content_fetched_bytes", "Chunk bytes this node fetched from peers", st.fetched_bytes)
        if st.store_bytes is not None:
            held = GaugeMetricFamily("paris_content_store_bytes", "Bytes held in the content store")
            held.add_metric([], st.store_bytes)
            yield held
        peers = GaugeMetricFamily("paris_peers", "Members of the run seen in the newest read of its records")
        peers.add_metric([], st.peers_seen)
        yield peers

        verdicts = CounterMetricFamily("paris_verifications", "Checkpoints this node attested, by verdict",
                                       labels=["verdict"])
        for verdict in ("accept", "reject"):
            verdicts.add_metric([verdict], st.verdicts.get(verdict, 0))
        yield verdicts

        g = self.m.gossip
        if g is not None:
            gp = GaugeMetricFamily("paris_gossip_peers", "Peers connected to the gossip process")
            gp.add_metric([], g.get("peers", 0))
            yield gp
            msgs = CounterMetricFamily("paris_gossip_messages", "Gossip messages", labels=["direction"])
            msgs.add_metric(["in"], g.get("delivered", 0))
            msgs.add_metric(["out"], g.get("published", 0))
            yield msgs
            dropped = CounterMetricFamily("paris_gossip_dropped", "Gossip messages dropped", labels=["reason"])
            for reason, n in sorted((g.get("dropped") or {}).items()):
                dropped.add_metric([reason], n)
            yield dropped


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc)
    c.add_metric([], value)
    return c
