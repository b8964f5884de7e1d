"""The Prometheus endpoint of a node: `/metrics` on its own port (`[metrics]`), readable only
from the networks of `[metrics] allow`, and the middleware that measures DICOMweb served.

Owns what is read at scrape time — reports by state, outbox depth and age of its oldest job,
cache use, whitelist age, certificate days to expiry, DMP and PACS reachability (probed at most
every `probe_interval_s`, reusing the `/status` checks) — and the access rule of the endpoint.
The counters moved by the work itself live in `drimbox.metrics`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Receive, Scope, Send

from drimbox import __version__
from drimbox.config import Config
from drimbox.db import DmpJob, JobState, Report, ReportState, aware
from drimbox.db.models import PeriodicJob
from drimbox.http.accesslog import measured
from drimbox.metrics import NodeMetrics
from drimbox.ops.retention import JOB_NAME as RETENTION_JOB
from drimbox.trust.keys import load_certificate
from drimbox.web.status import StatusSources, allowed, check_dmp, check_pacs, work_queues

WAITING_JOBS = (JobState.QUEUED.value, JobState.RETRYING.value)


def certificate_files(config: Config) -> dict[str, tuple[str, str]]:
    """The certificates whose expiry is watched, by role: (file, passphrase variable of a
    PKCS#12 file)."""
    trust, dmp = config.trust, config.dmp
    files = {
        "peer_tls": (trust.tls_cert, trust.key_passphrase_env),
        "dmp_tls": (dmp.tls_cert, dmp.key_passphrase_env),
        "dmp_signing": (dmp.signing_cert, dmp.key_passphrase_env),
    }
    return {name: file for name, file in files.items() if file[0]}


def days_to_expiry(path: str, now: datetime, passphrase_env: str = "") -> float | None:
    """Days left on the certificate of a PEM or PKCS#12 file; None when unreadable."""
    try:
        certificate = load_certificate(path, passphrase_env)
    except (OSError, ValueError):
        return None
    return (certificate.not_valid_after_utc - now).total_seconds() / 86400


class _Probe:
    """A reachability check run at most every `interval_s`; scrapes in between reuse it."""

    def __init__(self, check: Callable[[], dict[str, Any]], interval_s: float) -> None:
        self.check = check
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._up: bool | None = None

    def up(self) -> bool | None:
        with self._lock:
            if time.monotonic() - self._at >= self.interval_s:
                self._up = self.check().get("ok")
                self._at = time.monotonic()
            return self._up


class NodeStateCollector(Collector):
    """The node's state, read at each scrape."""

    def __init__(self, metrics: NodeMetrics, sources: StatusSources) -> None:
        self.node = metrics.node
        self.sources = sources
        config = sources.config
        interval = config.metrics.probe_interval_s
        self.probes = {
            "dmp": _Probe(lambda: check_dmp(sources), interval),
            "pacs": _Probe(lambda: check_pacs(sources), interval),
        }

    def _gauge(self, name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, documentation, labels=["node", *labels])

    def collect(self) -> Iterator[Metric]:
        node, config, now = self.node, self.sources.config, datetime.now(UTC)
        roles = ",".join(name for name, on in config.roles.model_dump().items() if on)
        info = self._gauge(
            "drimbox_node_info", "The node: version and roles.", ["version", "roles"]
        )
        info.add_metric([node, __version__, roles], 1)
        yield info
        yield from self._database(node, now)
        yield from self._cache(node)
        yield from self._whitelist(node, now)
        expiry = self._gauge(
            "drimbox_certificate_expiry_days",
            "Days until the certificate expires (negative: expired).",
            ["certificate"],
        )
        for name, (path, passphrase_env) in certificate_files(config).items():
            days = days_to_expiry(path, now, passphrase_env)
            if days is not None:
                expiry.add_metric([node, name], round(days, 3))
        yield expiry
        up = self._gauge(
            "drimbox_dependency_up",
            "1 when the dependency answered its last check (DMP over the site's TLS, PACS by "
            "C-ECHO), 0 when it did not; absent when not used by this node.",
            ["dependency"],
        )
        for name, probe in self.probes.items():
            state = probe.up()
            if state is not None:
                up.add_metric([node, name], 1 if state else 0)
        yield up

    def _database(self, node: str, now: datetime) -> Iterator[Metric]:
        with self.sources.db.session() as session:
            reports = dict(
                session.execute(select(Report.state, func.count()).group_by(Report.state)).all()
            )
            jobs = dict(
                session.execute(select(DmpJob.state, func.count()).group_by(DmpJob.state)).all()
            )
            oldest = session.scalar(
                select(func.min(DmpJob.created_at)).where(DmpJob.state.in_(WAITING_JOBS))
            )
        by_state = self._gauge("drimbox_reports", "Reports received, by state.", ["state"])
        for state in ReportState:
            by_state.add_metric([node, state.value], reports.get(state.value, 0))
        yield by_state
        outbox = self._gauge("drimbox_outbox_jobs", "DMP outbox jobs, by state.", ["state"])
        for job_state in JobState:
            outbox.add_metric([node, job_state.value], jobs.get(job_state.value, 0))
        yield outbox
        age = self._gauge(
            "drimbox_outbox_oldest_job_age_seconds",
            "Age of the oldest DMP job still waiting (queued or retrying); 0 when none.",
            [],
        )
        age.add_metric([node], (now - aware(oldest)).total_seconds() if oldest else 0.0)
        yield age
        yield from self._work(node)
        yield self._retention(node, now)

    def _retention(self, node: str, now: datetime) -> Metric:
        """Since when the site's last retention purge ran (whichever node ran it)."""
        with self.sources.db.session() as session:
            last = session.scalar(
                select(PeriodicJob.last_run_at).where(PeriodicJob.name == RETENTION_JOB)
            )
        gauge = self._gauge(
            "drimbox_retention_last_purge_age_seconds",
            "Time since the site's last retention purge ended (absent before the first).",
            [],
        )
        if last is not None:
            gauge.add_metric([node], (now - aware(last)).total_seconds())
        return gauge

    def _work(self, node: str) -> Iterator[Metric]:
        """The work queues as /status shows them: waiting, leased, leases lapsed, the oldest."""
        reports, jobs, _, by_holder = work_queues(self.sources.db)
        items = self._gauge(
            "drimbox_work_items",
            "Reports and DMP jobs due: waiting for a node, leased by one, or leased by a node "
            "that stopped renewing (lapsed).",
            ["queue", "status"],
        )
        oldest = self._gauge(
            "drimbox_work_oldest_age_seconds",
            "Age of the oldest report (since reception) or DMP job (since creation) still to "
            "do, waiting or leased; 0 when none. Reports waiting for their images are not counted.",
            ["queue"],
        )
        for queue, counts in (("reports", reports), ("jobs", jobs)):
            for status in ("waiting", "leased", "lapsed"):
                items.add_metric([node, queue, status], getattr(counts, status))
            oldest.add_metric([node, queue], counts.oldest_s or 0.0)
        yield items
        yield oldest
        holders = self._gauge(
            "drimbox_work_leased_by",
            "Reports and DMP jobs leased by each node of the site (holder: the node's name).",
            ["holder"],
        )
        for holder, count in by_holder.items():
            holders.add_metric([node, holder], count)
        yield holders

    def _cache(self, node: str) -> Iterator[Metric]:
        cache = self.sources.cache
        if cache is None:
            return
        usage = cache.usage()
        for name, documentation, value in (
            ("drimbox_cache_bytes", "Bytes held by the image cache.", usage.bytes),
            (
                "drimbox_cache_max_bytes",
                "Image cache limit ([store] cache_max_bytes).",
                usage.max_bytes,
            ),
            ("drimbox_cache_series", "Series held by the image cache.", usage.series),
        ):
            gauge = self._gauge(name, documentation, [])
            gauge.add_metric([node], value)
            yield gauge

    def _whitelist(self, node: str, now: datetime) -> Iterator[Metric]:
        store = self.sources.whitelist
        if store is None:
            return
        valid = self._gauge(
            "drimbox_whitelist_valid", "1 when a valid signed whitelist is in force.", []
        )
        valid.add_metric([node], 1 if store.current() is not None else 0)
        yield valid
        age = store.age(now)
        if age is not None:
            gauge = self._gauge(
                "drimbox_whitelist_age_seconds",
                "Age of the whitelist in force (from its generation time).",
                [],
            )
            gauge.add_metric([node], age.total_seconds())
            yield gauge


def create_metrics_app(config: Config, metrics: NodeMetrics, sources: StatusSources) -> FastAPI:
    """The application of the `[metrics]` port: `/metrics` only."""
    metrics.registry.register(NodeStateCollector(metrics, sources))
    networks = [ipaddress.ip_network(n, strict=False) for n in config.metrics.allow]
    app = FastAPI(title="DRIMbox — métriques", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/metrics")
    async def scrape(request: Request) -> Response:
        client = request.client.host if request.client else None
        if not allowed(client, networks):
            message = f"accès refusé : {client} n'est pas dans [metrics] allow"
            return JSONResponse({"status": 403, "erreur": message}, status_code=403)
        body = await asyncio.to_thread(generate_latest, metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app


class ServedMetricsMiddleware:
    """Counts the DICOMweb requests under `prefix`, the bytes of their answers (including those
    written through the raw-body extension) and their time to the end of the answer."""

    def __init__(self, app: ASGIApp, *, metrics: NodeMetrics, prefix: str, channel: str) -> None:
        self.app = app
        self.metrics = metrics
        self.prefix = prefix
        self.channel = channel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix + "/"):
            await self.app(scope, receive, send)
            return

        def done(status: int, sent: int, seconds: float) -> None:
            self.metrics.served(self.channel, status, sent, seconds)

        await measured(self.app, scope, receive, send, done)
