"""Access control matrix on a running Source: every cell is refused, and audited.

Peers (WADO-RS over mutual TLS): no token, expired token, forged token (another signing key),
a PSC refresh token or ID token as the bearer, an access token issued to a PSC client that is not
a DRIMbox of the trust space, peer not on the whitelist, a certificate holding a listed peer's
attributes with its RDNs reversed or in another case, the listed peer's former certificate that
its CA revoked (served CRL), no client certificate, a client offering only CBC suites, KOS UID
of another study, series not in the KOS; the accepted token's PSC client is in the audit. Users
(viewer origin): a study opened through an IID link by one user is not visible to another user's
session; the report's viewer link opens for médecins (of any structure: the requesting physician
reads the report in the DMP) and refuses a pharmacist, a nurse, a doctor with no structure, an
account with no situation d'exercice, and everyone but the authors' structure when the report is
masked to professionals (MASQUE_PS) — each refusal audited with its reason."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from drimbox.db import ReportState
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.pki import Issued, subject_name
from drimbox.sim.ris import RisClient
from drimbox.trust import audit
from support.samples import cda_version, hl7_text, with_flags
from support.site import Site, official_headers, peer_client, series_url, source_site

IID_LINK = {
    "requestType": "STUDY",
    "accessionNumber": "ACN103",
    "idCDA": "1.2.250.1.213.4.5.4.403",
}


@pytest.fixture
def site(orthanc: LocalOrthanc, tmp_path: Path) -> Iterator[Site]:
    # /status: no local network allowed, so that this loopback test sees the peers' rule.
    with source_site(
        orthanc, tmp_path, environ_extra={"DRIMBOX_HTTP__STATUS_ALLOW": "192.0.2.0/24"}
    ) as running:
        yield running


def look_alikes(site: Site, folder: Path) -> dict[str, Issued]:
    """Certificates holding the trusted peer's attributes, written otherwise than the list does:
    RDNs in the reverse order, and a value in another case."""
    listed = site.trusted_peer.certificate.subject
    upper = subject_name("DB2.TEST.FR", organizational_unit="300000001830002",
                         organization="SITE B", state="Paris (75)")  # fmt: skip
    return {
        "reversed-DN certificate": site.pki.issue(
            "db2.test.fr", usage="auth", subject=x509.Name(list(reversed(list(listed))))
        ).write(folder, "reversed"),
        "changed-case certificate": site.pki.issue("", usage="auth", subject=upper).write(
            folder, "upper"
        ),
    }


def crl_held(site: Site) -> None:
    """Wait until the node fetched the CA's CRL (its first refresh runs as the node starts)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with peer_client(site, site.trusted_peer) as client:
            status = client.get(f"{site.node.peer_url}/status").json()
        if any(row["revoked"] for row in status["checks"]["revocation"].get("crls", [])):
            return
        time.sleep(0.2)
    raise AssertionError(f"no CRL fetched: {status['checks']['revocation']}")


def test_peer_matrix(site: Site, tmp_path: Path) -> None:
    crl_held(site)
    good = site.psc.mint_access_token("radiologue")
    forged = site.psc.mint_access_token("radiologue", key=site.psc.foreign_key())
    expired = site.psc.mint_access_token("radiologue", lifetime_s=-60)
    login = site.psc.issue_tokens("radiologue")
    other_app = site.psc.mint_access_token("radiologue", client_id="appli-tierce")
    cells = {
        "no token": (site.trusted_peer, {"KOS-SOPInstanceUID": site.kos_uid}, 0, 401),
        "expired token": (site.trusted_peer, official_headers(site, expired), 0, 401),
        "forged token": (site.trusted_peer, official_headers(site, forged), 0, 401),
        "refresh token": (
            site.trusted_peer,
            official_headers(site, login["refresh_token"]),
            0,
            401,
        ),
        "ID token": (site.trusted_peer, official_headers(site, login["id_token"]), 0, 401),
        "token of another PSC client": (
            site.trusted_peer,
            official_headers(site, other_app),
            0,
            401,
        ),
        "peer not on the whitelist": (site.unknown_peer, official_headers(site, good), 0, 403),
        **{
            name: (certificate, official_headers(site, good), 0, 403)
            for name, certificate in look_alikes(site, tmp_path / "look-alikes").items()
        },
        "revoked certificate (listed DN, on the CA's CRL)": (
            site.revoked_peer,
            official_headers(site, good),
            0,
            403,
        ),
        "KOS of another study": (
            site.trusted_peer,
            official_headers(site, good) | {"KOS-SOPInstanceUID": "1.2.250.1.999.1.2.3"},
            0,
            404,
        ),
    }
    for name, (peer, headers, series, expected) in cells.items():
        with peer_client(site, peer) as client:
            response = client.get(series_url(site, series), headers=headers)
        assert response.status_code == expected, f"{name}: {response.status_code}"
        assert response.headers["content-type"].startswith("application/json"), name
    # A series that is not in the KOS (well-formed UID, same study).
    with peer_client(site, site.trusted_peer) as client:
        foreign = client.get(
            f"{site.node.peer_url}/dicom-web-rs/studies/{site.study_uid}/series/1.2.250.1.9.9",
            headers=official_headers(site, good),
        )
    assert foreign.status_code == 404
    context = ssl.create_default_context(cafile=str(site.ca_file))
    with pytest.raises(httpx.HTTPError), httpx.Client(verify=context) as anonymous:
        anonymous.get(series_url(site), headers=official_headers(site, good))
    # The whitelisted peer's certificate, but a client that offers only CBC suites (TLS 1.2):
    # refused at the handshake.
    cbc = ssl.create_default_context(cafile=str(site.ca_file))
    assert site.trusted_peer.cert_path and site.trusted_peer.key_path
    cbc.load_cert_chain(str(site.trusted_peer.cert_path), str(site.trusted_peer.key_path))
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384:AES128-SHA256")
    with pytest.raises(httpx.ConnectError), httpx.Client(verify=cbc) as old_client:
        old_client.get(series_url(site), headers=official_headers(site, good))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        refused = [e for e in audit.events(site.node.node.db) if e["result"] == "refused"]
        if len(refused) >= len(cells) + 1:
            break
        time.sleep(0.1)
    assert len(refused) >= len(cells) + 1, "every refused cell is in the audit trail"
    assert any("appli-tierce" in str(e["detail"]) for e in refused), "the refused client"
    # Named by what was asked (a series retrieve), with the French reason the caller got.
    assert {e["action"] for e in refused} == {"image_retrieve_series"}
    assert all(e["detail"]["reason"] and e["detail"]["http_status"] >= 400 for e in refused)
    # A valid token refused for what it asks (another study's KOS): its client is named too.
    (other_kos,) = [e for e in refused if "KOS inconnu" in e["detail"]["reason"]]
    assert other_kos["detail"]["psc_client"] == site.psc.client.client_id
    # The calling box is named by its certificate, not only its IP.
    assert any("CN=db9.test.fr" in e["detail"].get("peer_dn", "") for e in refused)
    with peer_client(site, site.trusted_peer) as client:
        served = client.get(series_url(site), headers=official_headers(site, good))
        assert served.status_code == 200
        # The peer origin serves data, never pages; it is HTTPS: HSTS.
        assert served.headers["content-security-policy"].startswith("default-src 'none'")
        assert served.headers["strict-transport-security"].startswith("max-age=")
        assert served.headers["x-content-type-options"] == "nosniff"
    site.node.flush_audit()  # served accesses are summed per minute: as at a minute's end
    ok = [e for e in audit.events(site.node.node.db) if e["result"] == "ok" and e["role"] == "peer"]
    assert ok and all(e["detail"].get("psc_client") == site.psc.client.client_id for e in ok), (
        "every peer access names the token's PSC client"
    )
    assert all("CN=db2.test.fr" in e["detail"]["peer_dn"] for e in ok), "and the calling box"


def test_status_answers_only_whitelisted_peers(site: Site, tmp_path: Path) -> None:
    crl_held(site)
    refused = {"non-whitelisted certificate": site.unknown_peer,
               "revoked certificate": site.revoked_peer,
               **look_alikes(site, tmp_path / "look-alikes")}  # fmt: skip
    for name, certificate in refused.items():
        with peer_client(site, certificate) as client:
            status = client.get(f"{site.node.peer_url}/status")
            health = client.get(f"{site.node.peer_url}/health")
        assert status.status_code == 403, f"{name}: {status.status_code}"
        assert "checks" not in status.text and status.json()["erreur"], name
        assert health.json() == {"status": "ok"}, name  # says nothing else, to anyone
    with peer_client(site, site.trusted_peer) as client:
        assert "revocation" in client.get(f"{site.node.peer_url}/status").json()["checks"]


def sign_in(site: Site, user: str) -> httpx.Client:
    browser = httpx.Client(follow_redirects=True, timeout=30)
    browser.get(f"{site.node.viewer_url}/connexion", params={"login_hint": user})
    return browser


def test_a_user_never_sees_another_users_study(site: Site) -> None:
    base = site.node.viewer_url
    iid = {
        "requestType": "STUDY",
        "studyUID": site.study_uid,
        "accessionNumber": "ACN103",
        "idCDA": "1.2.250.1.213.4.5.4.403",
    }
    series = f"{base}/dicom-web/studies/{site.study_uid}/series"
    owner, other = sign_in(site, "radiologue"), sign_in(site, "medecin-deux-situations")
    try:
        opened = owner.get(f"{base}/IHEInvokeImageDisplay", params=iid, follow_redirects=False)
        assert opened.status_code in (302, 303) and "/viewer" in opened.headers["location"]
        assert owner.get(series, headers={"Accept": "application/dicom+json"}).status_code == 200
        assert other.get(series, headers={"Accept": "application/dicom+json"}).status_code == 404
        # A wrong report id in the link grants nothing.
        wrong = other.get(f"{base}/IHEInvokeImageDisplay", params=iid | {"idCDA": "1.2.3"},
                          follow_redirects=False)  # fmt: skip
        assert wrong.status_code in (403, 404)
        assert other.get(series, headers={"Accept": "application/dicom+json"}).status_code == 404
    finally:
        owner.close()
        other.close()
    with httpx.Client() as anonymous:
        assert anonymous.get(series).status_code == 401


def test_report_link_opens_for_doctors_only(site: Site) -> None:
    """The access matrix of the report's viewer link (IHE IID) on a running node, through the
    PSC simulator: who opens the images, who gets the French refusal, and the audit of each."""
    base = site.node.viewer_url
    link = IID_LINK | {"studyUID": site.study_uid}
    series = f"{base}/dicom-web/studies/{site.study_uid}/series"
    cells = {
        "radiologue": 303,
        "medecin-autre-structure": 303,  # the requesting physician, elsewhere: the link's use
        "pharmacien": 403,
        "infirmier": 403,
        "medecin-sans-structure": 403,
    }
    for user, expected in cells.items():
        with closing(sign_in(site, user)) as browser:
            opened = browser.get(f"{base}/IHEInvokeImageDisplay", params=link,
                                 follow_redirects=False)  # fmt: skip
            assert opened.status_code == expected, f"{user}: {opened.status_code}"
            listed = browser.get(series, headers={"Accept": "application/dicom+json"})
            if expected == 303:
                assert "/viewer" in opened.headers["location"], user
                assert listed.status_code == 200, user
            else:
                assert "Accès aux images refusé" in opened.text, user
                assert "text/html" in opened.headers["content-type"], user
                assert listed.status_code == 404, f"{user}: nothing granted"
    assert "Pharmacien" in refusal_page(site, "pharmacien", link)
    assert "Infirmier" in refusal_page(site, "infirmier", link)
    assert "aucune structure" in refusal_page(site, "medecin-sans-structure", link)
    # An account with no situation d'exercice never gets a session: the link asks to sign in.
    with closing(sign_in(site, "sans-situation")) as browser:
        refused = browser.get(f"{base}/IHEInvokeImageDisplay", params=link,
                              follow_redirects=False)  # fmt: skip
        assert refused.status_code == 303 and "/connexion" in refused.headers["location"]
    events = [e for e in audit.events(site.node.node.db) if e["action"] == "iid_open"]
    reasons = {(e["actor"], e["result"], e["detail"]["reason"]) for e in events}
    assert ("899700100055", "refused", "profession_non_autorisee:21") in reasons
    assert ("899700100066", "refused", "profession_non_autorisee:60") in reasons
    assert ("899700100077", "refused", "sans_structure") in reasons
    assert ("899700100011", "ok", "lien du compte rendu") in reasons
    assert all(e["patient_ins"] == "279035121518989" for e in events)


def test_report_masked_to_professionals_is_refused(site: Site) -> None:
    """A new version of the report with MASQUE_PS=Y (and MODIF_CONF_CODE=Y): its link no longer
    opens for a doctor outside the authors' structure, even one the plain report opened for."""
    masked = with_flags(cda_version(hl7_text("CR_C-ORU.hl7"), "2", 2), MASQUE_PS=True,
                        MODIF_CONF_CODE=True)  # fmt: skip
    with RisClient("127.0.0.1", site.node.hl7_port) as ris:
        assert ris.send(masked).code == "AA"
    settled = {ReportState.PUBLISHED.value, ReportState.PARKED.value}
    latest = site.node.wait_for_report(site.node.reports()[-1].id, settled)
    assert latest.state == ReportState.PUBLISHED.value, latest.reason
    assert latest.flags.get("MASQUE_PS") is True
    link = IID_LINK | {"studyUID": site.study_uid, "idCDA": latest.document_id}
    base = site.node.viewer_url
    for user in ("radiologue", "medecin-autre-structure"):
        with closing(sign_in(site, user)) as browser:
            refused = browser.get(f"{base}/IHEInvokeImageDisplay", params=link,
                                  follow_redirects=False)  # fmt: skip
            assert refused.status_code == 403, user
            assert "masqué aux professionnels de santé" in refused.text, user
            series = f"{base}/dicom-web/studies/{site.study_uid}/series"
            assert browser.get(series).status_code == 404, user
    reasons = [e["detail"]["reason"] for e in audit.events(site.node.node.db)
               if e["action"] == "iid_open" and e["result"] == "refused"]  # fmt: skip
    assert reasons.count("masque_aux_professionnels") == 2


def refusal_page(site: Site, user: str, link: dict[str, str]) -> str:
    with closing(sign_in(site, user)) as browser:
        return browser.get(f"{site.node.viewer_url}/IHEInvokeImageDisplay", params=link).text
