"""A whole Source node as its peers see it: mutual TLS with a whitelist signed at test time, PSC
tokens checked by introspection, the official WADO-RS request, `/status`, and the audit trail."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO

from drimbox.http.multipart import MultipartReader, boundary_of
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.trust import audit
from support.site import Site, official_headers, peer_client, series_url, source_site


@pytest.fixture
def site(orthanc: LocalOrthanc, tmp_path: Path) -> Iterator[Site]:
    with source_site(orthanc, tmp_path) as running:
        yield running


def test_official_request_from_a_whitelisted_peer(site: Site) -> None:
    token = site.psc.mint_access_token("radiologue")
    with peer_client(site, site.trusted_peer) as client:
        response = client.get(series_url(site), headers=official_headers(site, token))
    assert response.status_code == 200, response.text
    parts = list(
        MultipartReader(boundary_of(response.headers["content-type"])).feed(response.content)
    )
    datasets = [dcmread(DicomBytesIO(part.body)) for part in parts]
    assert len(datasets) == 4
    assert {d.SeriesInstanceUID for d in datasets} == {site.series_uids[0]}
    # Served accesses are summed per minute: written at its end, here as a stop would.
    site.node.flush_audit()
    events = audit.events(site.node.node.db, actor="899700100011")
    (served,) = [e for e in events if e["action"] == "image_retrieve_series"]
    assert served["result"] == "ok" and served["detail"]["requests"] == 1


def test_refusals(site: Site) -> None:
    token = site.psc.mint_access_token("radiologue")
    # A peer whose certificate DN is not on the list: 403, whatever its token.
    with peer_client(site, site.unknown_peer) as client:
        refused = client.get(series_url(site), headers=official_headers(site, token))
    assert refused.status_code == 403 and "liste blanche" in refused.text.lower()
    with peer_client(site, site.trusted_peer) as client:
        no_token = client.get(series_url(site), headers={"KOS-SOPInstanceUID": site.kos_uid})
        expired = client.get(
            series_url(site),
            headers=official_headers(
                site, site.psc.mint_access_token("radiologue", lifetime_s=-60)
            ),
        )
        other_kos = client.get(
            series_url(site),
            headers=official_headers(site, token) | {"KOS-SOPInstanceUID": "1.2.3"},
        )
    assert no_token.status_code == 401
    assert expired.status_code == 401
    assert other_kos.status_code == 404
    # No client certificate at all: refused at the TLS handshake.
    context = ssl.create_default_context(cafile=str(site.ca_file))
    with pytest.raises(httpx.HTTPError), httpx.Client(verify=context) as anonymous:
        anonymous.get(series_url(site), headers=official_headers(site, token))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        refusals = [e for e in audit.events(site.node.node.db) if e["result"] == "refused"]
        if len(refusals) >= 3:
            break
        time.sleep(0.05)
    assert len(refusals) >= 3


def test_status_reports_each_dependency(site: Site) -> None:
    with peer_client(site, site.trusted_peer) as client:
        health = client.get(f"{site.node.peer_url}/health")
        status = client.get(f"{site.node.peer_url}/status").json()
    assert health.json() == {"status": "ok"}
    checks = status["checks"]
    assert checks["pacs"]["ok"] is True
    assert checks["dmp"]["ok"] is True
    assert checks["whitelist"]["ok"] is True and "1 DRIMbox" in checks["whitelist"]["message"]
    assert checks["outbox"]["waiting"] == 0
    assert status["roles"] == ["source"]


def test_status_warns_of_a_stale_crl(site: Site) -> None:
    revocation = site.node.node.whitelist.revocation  # type: ignore[union-attr]
    assert revocation is not None
    revocation.refresh()  # the CA's CRL, found through the certificates' distribution point
    with peer_client(site, site.trusted_peer) as client:
        fresh = client.get(f"{site.node.peer_url}/status").json()
    crls = fresh["checks"]["revocation"]
    assert crls["ok"] is True and not crls["warning"] and "revocation" not in fresh["warnings"]
    assert [row["revoked"] for row in crls["crls"]] == [1]
    now = datetime.now(UTC)
    site.crl.publish(site.pki.crl_der(last_update=now - timedelta(minutes=2),
                                      next_update=now - timedelta(minutes=1)))  # fmt: skip
    revocation.refresh()
    with peer_client(site, site.trusted_peer) as client:
        stale = client.get(f"{site.node.peer_url}/status").json()
    crls = stale["checks"]["revocation"]
    assert crls["warning"] and "périmée" in crls["message"] and stale["warnings"] == ["revocation"]
    assert stale["status"] == "ok"  # a warning, not a failure: peers are still served
