"""Every access to patient data leaves a trace, on a running Source (real Orthanc, DMP and PSC
simulators, mutual TLS): each DICOMweb request of a signed-in viewer user and of a whitelisted
peer — searches, metadata, frames, renderings, thumbnails, retrieves — is counted in the audit
trail (summed per caller, study, action and minute, with request and byte counts, written at the
node's clean stop), refusals one by one with their reason, the console's patient lists too; and
each request has its line in the service log, without query strings."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import pytest

from drimbox.db import Database
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.trust import audit
from support.node import signed_in
from support.site import official_headers, peer_client, series_url, source_site

RADIOLOGIST = "899700100011"  # the PSC simulator's `radiologue`
JSON = {"Accept": "application/dicom+json"}
FRAMES = {"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}
IID = {"requestType": "STUDY", "accessionNumber": "ACN103", "idCDA": "1.2.250.1.213.4.5.4.403"}


def test_every_image_access_is_counted_in_the_audit_trail(
    orthanc: LocalOrthanc, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="drimbox.access")
    served: dict[tuple[str, str], list[int]] = defaultdict(list)  # (role, action) → sizes
    environ = {"DRIMBOX_ADMIN__USERS": RADIOLOGIST}
    with source_site(orthanc, tmp_path, environ_extra=environ) as site:
        base, study = site.node.viewer_url, site.study_uid
        root = f"{base}/dicom-web/studies/{study}"
        user = signed_in(site.node, "radiologue")
        try:
            opened = user.get(f"{base}/IHEInvokeImageDisplay", params=IID | {"studyUID": study},
                              follow_redirects=False)  # fmt: skip
            assert opened.status_code == 303

            def get(
                action: str, url: str, headers: dict[str, str], **params: str
            ) -> httpx.Response:
                response = user.get(url, headers=headers, params=params)
                assert response.status_code == 200, (url, response.text)
                served["user", action].append(len(response.content))
                return response

            # What OHIF asks, in its order: the study, its series, their metadata, the pixels.
            get("image_search_studies", f"{base}/dicom-web/studies", JSON, StudyInstanceUID=study)
            get("image_search_series", f"{root}/series", JSON)
            for series_uid in site.series_uids:
                series = f"{root}/series/{series_uid}"
                items = get("image_retrieve_metadata", f"{series}/metadata", JSON).json()
                get("image_search_instances", f"{series}/instances", JSON)
                for item in items:
                    sop = item["00080018"]["Value"][0]
                    get("image_retrieve_frames", f"{series}/instances/{sop}/frames/1", FRAMES)
                get("image_retrieve_thumbnail", f"{series}/thumbnail", {"Accept": "image/jpeg"})
                get("image_retrieve_rendered", f"{series}/instances/{sop}/rendered",
                    {"Accept": "image/png"})  # fmt: skip
            # A series the KOS does not hold: refused, named and explained.
            stray = user.get(f"{root}/series/1.2.250.1.9.9/metadata", headers=JSON)
            assert stray.status_code == 404
            # The console's patient lists are looked at too.
            assert user.get(f"{base}/admin/comptes-rendus").status_code == 200
            assert user.get(f"{base}/admin/audit", params={"patient": "279035121518989"}).is_success
        finally:
            user.close()

        token = site.psc.mint_access_token("radiologue")
        with peer_client(site, site.trusted_peer) as peer:
            for _ in range(3):  # a Conso prefetching, then a retry
                answer = peer.get(series_url(site), headers=official_headers(site, token))
                assert answer.status_code == 200
                served["peer", "image_retrieve_series"].append(len(answer.content))
            found = peer.get(f"{site.node.peer_url}/dicom-web-rs/studies/{study}/series",
                             headers=official_headers(site, token) | JSON)  # fmt: skip
            assert found.status_code == 200
            served["peer", "image_search_series"].append(len(found.content))
        written_before_stop = sum(
            e["detail"]["requests"]
            for e in audit.events(site.node.node.db)
            if e["action"].startswith("image_") and e["result"] == "ok"
        )
        url = site.node.config.store.database_url
        psc_client = site.psc.client.client_id
    # The node has stopped cleanly: whatever it had counted is in the trail now.
    db = Database(url)
    try:
        events = audit.events(db)
    finally:
        db.dispose()

    images = [e for e in events if e["action"].startswith("image_") and e["result"] == "ok"]
    requests: Counter[tuple[str, str]] = Counter()
    sizes: Counter[tuple[str, str]] = Counter()
    for event in images:
        requests[event["role"], event["action"]] += event["detail"]["requests"]
        sizes[event["role"], event["action"]] += event["bytes"]
        assert event["study_uid"] == study and event["patient_ins"] == "279035121518989"
        if event["role"] == "peer":
            assert "CN=db2.test.fr" in event["detail"]["peer_dn"]
            assert event["detail"]["psc_client"] == psc_client
        else:
            assert event["actor"] == RADIOLOGIST
    assert dict(requests) == {k: len(v) for k, v in served.items()}, "every request is counted"
    assert dict(sizes) == {k: sum(v) for k, v in served.items()}, "and every byte"
    # Summed, not one event per request: at most two per action (a minute may end mid-test).
    assert len(images) <= 2 * len(served) < sum(requests.values())
    # Counted in memory until the minute ends or the node stops, not written request by request
    # (the last requests at least were still counted when the node was asked to stop).
    assert written_before_stop < sum(requests.values())

    (refused,) = [e for e in events if e["result"] == "refused"]
    assert refused["action"] == "image_retrieve_metadata" and refused["actor"] == RADIOLOGIST
    assert refused["detail"]["http_status"] == 404
    assert "série absente du KOS" in refused["detail"]["reason"]
    console = {e["action"]: e for e in events if e["role"] == "operator"}
    assert console["admin_reports_view"]["actor"] == RADIOLOGIST
    assert console["admin_audit_view"]["patient_ins"] == "279035121518989"

    # One service log line per request: origin, method, path without its query, status, bytes,
    # duration and who.
    lines = [r.getMessage() for r in caplog.records if r.name == "drimbox.access"]
    frame_lines = [line for line in lines if "/frames/1 " in line]
    assert len(frame_lines) == len(served["user", "image_retrieve_frames"])
    assert all(
        line.startswith("viewer GET /dicom-web/studies/") and " 200 " in line
        and line.endswith(RADIOLOGIST) for line in frame_lines
    )  # fmt: skip
    (search,) = [line for line in lines if line.startswith("viewer GET /dicom-web/studies?")]
    assert search.startswith("viewer GET /dicom-web/studies?… 200 ") and study not in search
    peer_lines = [line for line in lines if line.startswith("peer GET /dicom-web-rs/")]
    assert len(peer_lines) == 4 and all(line.endswith(RADIOLOGIST) for line in peer_lines)
    assert any(line.startswith("viewer GET /admin/comptes-rendus 200") for line in lines)
