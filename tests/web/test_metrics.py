"""`/metrics` after real activity: a report published through MLLP, PACS and DMP, then a series
served to a whitelisted peer; its access rule; unreachable dependencies reported as down; every
metric documented in docs/monitoring.md, and nothing documented that is not served."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from drimbox.db import JobState, ReportState
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ports import free_port
from support.metrics import families, scrape, wait_for_metrics
from support.node import RunningNode, node_config
from support.site import Site, official_headers, peer_client, series_url, source_site

NODE = "noeud-a1"
DOCS = Path(__file__).resolve().parents[2] / "docs/monitoring.md"
METRICS_ON = {"DRIMBOX_METRICS__ENABLED": "true", "DRIMBOX_NODE__NAME": NODE}


@pytest.fixture
def site(orthanc: LocalOrthanc, tmp_path: Path) -> Iterator[Site]:
    with source_site(orthanc, tmp_path, environ_extra=METRICS_ON) as running:
        yield running


def days_left(path: str) -> float:
    with open(path, "rb") as handle:
        certificate = x509.load_pem_x509_certificate(handle.read())
    return (certificate.not_valid_after_utc - datetime.now(UTC)).total_seconds() / 86400


def documented_metrics() -> set[str]:
    """The families listed in the first column of docs/monitoring.md's table of metrics."""
    rows = [line.split("|")[1] for line in DOCS.read_text().splitlines() if line.startswith("| `")]
    names = {name for row in rows for name in re.findall(r"`(drimbox_\w+)`", row)}
    return {name.removesuffix("_total") for name in names}


def test_every_metric_is_documented(site: Site) -> None:
    # The site has every source of figures: database, cache, whitelist, certificates, DMP, PACS.
    assert families(site.node.metrics_url) == documented_metrics()


def test_metrics_follow_a_publication_and_a_retrieval(site: Site) -> None:
    url = site.node.metrics_url
    before = scrape(url)
    assert before.value("drimbox_node_info", node=NODE, roles="source") == 1
    # The report published by the site's set-up, and nothing else.
    for state in ReportState:
        expected = 1 if state == ReportState.PUBLISHED else 0
        assert before.value("drimbox_reports", node=NODE, state=state.value) == expected
    for job_state in JobState:
        expected = 1 if job_state == JobState.DONE else 0
        assert before.value("drimbox_outbox_jobs", node=NODE, state=job_state.value) == expected
    assert before.value("drimbox_outbox_oldest_job_age_seconds", node=NODE) == 0
    assert before.value("drimbox_dmp_jobs_total", action="publish", result="done") == 1
    assert before.value("drimbox_publication_latency_seconds_count", node=NODE) == 1
    assert before.value("drimbox_publication_latency_seconds_sum", node=NODE) > 0
    # Whitelist signed a moment ago, certificates as issued by the test PKI.
    assert before.value("drimbox_whitelist_valid", node=NODE) == 1
    assert 0 <= before.value("drimbox_whitelist_age_seconds", node=NODE) < 3600
    config = site.node.config
    for name, path in (("peer_tls", config.trust.tls_cert), ("dmp_tls", config.dmp.tls_cert)):
        reported = before.value("drimbox_certificate_expiry_days", certificate=name)
        assert reported == pytest.approx(days_left(path), abs=0.01)
    assert before.value("drimbox_dependency_up", dependency="dmp") == 1
    assert before.value("drimbox_dependency_up", dependency="pacs") == 1
    assert before.value("drimbox_wado_served_requests_total", channel="peer") == 0
    assert before.value("drimbox_cache_bytes") == 0
    # The node ran its retention purge when it started (nothing was old enough to go).
    purged = wait_for_metrics(
        url,
        lambda s: s.get_value("drimbox_retention_last_purge_age_seconds", node=NODE) is not None,
    )
    assert 0 <= purged.value("drimbox_retention_last_purge_age_seconds", node=NODE) < 600
    assert purged.value("drimbox_retention_purged_total", kind="reports") == 0

    token = site.psc.mint_access_token("radiologue")
    with peer_client(site, site.trusted_peer) as client:
        served = client.get(series_url(site), headers=official_headers(site, token))
    assert served.status_code == 200
    with peer_client(site, site.unknown_peer) as client:
        refused = client.get(series_url(site), headers=official_headers(site, token))
    assert refused.status_code == 403

    def both_counted(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> bool:
        return any(
            name == "drimbox_wado_served_requests_total" and ("status", "403") in labels
            for name, labels in samples
        ) and any(
            name == "drimbox_wado_served_requests_total" and ("status", "200") in labels
            for name, labels in samples
        )

    after = wait_for_metrics(url, both_counted)
    peer = {"node": NODE, "channel": "peer"}
    assert after.value("drimbox_wado_served_requests_total", status="200", **peer) == 1
    assert after.value("drimbox_wado_served_requests_total", status="403", **peer) == 1
    # Every body byte, those of the multipart stream (written raw) and of the refusal.
    assert after.value("drimbox_wado_served_bytes_total", **peer) == len(served.content) + len(
        refused.content
    )
    assert after.value("drimbox_wado_served_duration_seconds_count", **peer) == 2
    # The series came from the PACS into the cache for that request.
    method = config.pacs.retrieve
    pacs = {"node": NODE, "origin": "pacs", "method": method}
    assert after.value("drimbox_retrievals_total", result="ok", **pacs) == 1
    assert after.value("drimbox_retrievals_total", result="error", **pacs) == 0
    retrieved = after.value("drimbox_retrieved_bytes_total", **pacs)
    assert retrieved > 0
    assert after.value("drimbox_cache_bytes", node=NODE) == retrieved
    assert after.value("drimbox_cache_series", node=NODE) == 1
    assert after.value("drimbox_cache_max_bytes") == config.store.cache_max_bytes


def test_metrics_port_refuses_other_networks_and_reports_dependencies_down(
    tmp_path: Path,
) -> None:
    dead_pacs = free_port()
    environ = METRICS_ON | {"DRIMBOX_PACS__PORT": str(dead_pacs)}
    refused = environ | {"DRIMBOX_METRICS__ALLOW": "192.0.2.0/24"}
    with RunningNode(node_config(tmp_path / "closed", None, refused)) as node:
        response = httpx.get(node.metrics_url, timeout=10)
    assert response.status_code == 403
    assert "n'est pas dans [metrics] allow" in response.json()["erreur"]
    with RunningNode(node_config(tmp_path / "open", None, environ)) as node:
        samples = scrape(node.metrics_url)
    assert samples.value("drimbox_dependency_up", dependency="pacs") == 0
    # No DMP configured on this node: no reachability series for it, and no whitelist.
    assert samples.get_value("drimbox_dependency_up", node=NODE, dependency="dmp") is None
    assert "drimbox_whitelist_valid" not in samples.names()
    assert samples.value("drimbox_outbox_jobs", state="queued") == 0
