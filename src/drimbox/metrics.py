"""A node's Prometheus metrics: the counters and histograms its work moves.

Owns the metric names, their labels and the registry of one node (a registry per node, so that
two nodes in one process, as in the tests and the demo, never mix their figures; every series
carries the `node` label so that the nodes behind one balancer can be told apart). What is read
from the database or the environment at scrape time (reports by state, outbox, cache, whitelist,
certificates, reachability) is collected by `drimbox.web.metrics_app`.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram

from drimbox.db.engine import aware

# Publication: from the report's reception to the DMP's answer (images may come hours later).
PUBLICATION_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600)
# Image requests: a thumbnail in milliseconds, a CT series over a slow link in minutes.
TRANSFER_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def node_name(configured: str) -> str:
    """The `node` label: the configured name, else the host name."""
    return configured or socket.gethostname()


class NodeMetrics:
    def __init__(self, node: str = "") -> None:
        self.node = node_name(node)
        self.registry = CollectorRegistry()
        self.publication_latency = self._histogram(
            "drimbox_publication_latency_seconds",
            "Time from the report's reception to its KOS registered in the DMP.",
            [],
            PUBLICATION_BUCKETS,
        )
        self.dmp_jobs = self._counter(
            "drimbox_dmp_jobs_total",
            "DMP outbox job attempts by action (publish, delete) and result (done, retrying, "
            "parked, queued).",
            ["action", "result"],
        )
        self.served_requests = self._counter(
            "drimbox_wado_served_requests_total",
            "DICOMweb requests served, by channel (peer: WADO-RS of DRIM-M peers; viewer: OHIF) "
            "and HTTP status.",
            ["channel", "status"],
        )
        self.served_bytes = self._counter(
            "drimbox_wado_served_bytes_total",
            "Body bytes of the DICOMweb answers served.",
            ["channel"],
        )
        self.served_duration = self._histogram(
            "drimbox_wado_served_duration_seconds",
            "DICOMweb requests served: time to the end of the answer.",
            ["channel"],
            TRANSFER_BUCKETS,
        )
        self.retrievals = self._counter(
            "drimbox_retrievals_total",
            "Series retrieved into the cache, by origin (pacs, source: another DRIMbox by "
            "WADO-RS), method (wado-rs, c-get, c-move, c-move-dcmtk) and result (ok, error).",
            ["origin", "method", "result"],
        )
        self.retrieved_bytes = self._counter(
            "drimbox_retrieved_bytes_total",
            "DICOM bytes retrieved into the cache.",
            ["origin", "method"],
        )
        self.retrieval_duration = self._histogram(
            "drimbox_retrieval_duration_seconds",
            "Series retrievals: time from the request to the last instance.",
            ["origin", "method"],
            TRANSFER_BUCKETS,
        )

        self.retention_purged = self._counter(
            "drimbox_retention_purged_total",
            "Rows (and image cache series) purged by this node's retention purges, by kind "
            "(hl7_messages, reports, conso_exams, conso_launches, sessions, login_requests, "
            "cache_series).",
            ["kind"],
        )

        self.storescp_events = self._counter(
            "drimbox_storescp_events_total",
            "dcmtk storescp of retrieve = c-move-dcmtk: restarted (it had died), discarded (a "
            "received file no retrieval expected, or one cut short).",
            ["event"],
        )

    def storescp_event(self, event: str) -> None:
        self.storescp_events.labels(self.node, event).inc()

    def _counter(self, name: str, documentation: str, labels: list[str]) -> Counter:
        return Counter(name, documentation, ["node", *labels], registry=self.registry)

    def _histogram(
        self, name: str, documentation: str, labels: list[str], buckets: tuple[float, ...]
    ) -> Histogram:
        return Histogram(
            name, documentation, ["node", *labels], buckets=buckets, registry=self.registry
        )

    def published(self, action: str, result: str, received_at: datetime | None) -> None:
        """An outbox job finished one attempt; a publication's latency when it is done."""
        self.dmp_jobs.labels(self.node, action, result).inc()
        if received_at is not None and action == "publish" and result == "done":
            latency = (datetime.now(UTC) - aware(received_at)).total_seconds()
            self.publication_latency.labels(self.node).observe(max(latency, 0.0))

    def served(self, channel: str, status: int, size: int, seconds: float) -> None:
        self.served_requests.labels(self.node, channel, str(status)).inc()
        self.served_bytes.labels(self.node, channel).inc(size)
        self.served_duration.labels(self.node, channel).observe(seconds)

    def purged(self, counts: Mapping[str, int]) -> None:
        """A retention purge's counts (bytes are not a row count: left out)."""
        for kind, count in counts.items():
            if kind != "cache_bytes" and count:
                self.retention_purged.labels(self.node, kind).inc(count)

    def retrieved(self, origin: str, method: str, size: int, seconds: float, ok: bool) -> None:
        self.retrievals.labels(self.node, origin, method, "ok" if ok else "error").inc()
        self.retrieved_bytes.labels(self.node, origin, method).inc(size)
        self.retrieval_duration.labels(self.node, origin, method).observe(seconds)
