"""Access control matrix on a running Source: every cell is refused, and audited.

Peers (WADO-RS over mutual TLS): no token, expired token, forged token (another signing key),
a PSC refresh token or ID token as the bearer, an access token issued to a PSC client that is not
a DRIMbox of the trust space, peer not on the whitelist, a certificate holding a listed peer's
attributes with its RDNs reversed or in another case, the listed peer's former certificate that
its CA revoked (served CRL), no client certificate, KOS UID of another
study, series not in the KOS; the accepted token's PSC client is in the audit. Users (viewer
origin): a study opened through an IID link by one user is not visible to another user's session."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.pki import Issued, subject_name
from drimbox.trust import audit
from support.site import Site, official_headers, peer_client, series_url, source_site


@pytest.fixture
def site(orthanc: LocalOrthanc, tmp_path: Path) -> Iterator[Site]:
    with source_site(orthanc, tmp_path) as running:
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
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        refused = [e for e in audit.events(site.node.node.db) if e["result"] == "refused"]
        if len(refused) >= len(cells) + 1:
            break
        time.sleep(0.1)
    assert len(refused) >= len(cells) + 1, "every refused cell is in the audit trail"
    assert any("appli-tierce" in str(e["detail"]) for e in refused), "the refused client"
    # The calling box is named by its certificate, not only its IP.
    assert any("CN=db9.test.fr" in e["detail"].get("peer_dn", "") for e in refused)
    with peer_client(site, site.trusted_peer) as client:
        served = client.get(series_url(site), headers=official_headers(site, good))
        assert served.status_code == 200
        # The peer origin serves data, never pages; it is HTTPS: HSTS.
        assert served.headers["content-security-policy"].startswith("default-src 'none'")
        assert served.headers["strict-transport-security"].startswith("max-age=")
        assert served.headers["x-content-type-options"] == "nosniff"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ok = [
            e
            for e in audit.events(site.node.node.db)
            if e["result"] == "ok" and e["role"] == "peer"
        ]
        if ok:
            break
        time.sleep(0.1)
    assert ok and all(e["detail"].get("psc_client") == site.psc.client.client_id for e in ok), (
        "every peer access names the token's PSC client"
    )
    assert all("CN=db2.test.fr" in e["detail"]["peer_dn"] for e in ok), "and the calling box"


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
