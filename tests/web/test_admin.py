"""The administration console: administrators only; reports with retry, whitelist, audit
trail, status and cache pages, over a real node and the PSC simulator."""

from __future__ import annotations

from collections.abc import Iterator
from html import unescape
from pathlib import Path

import httpx
import pytest

from drimbox.db import Hl7Message, Report, ReportState, utcnow
from drimbox.sim.pki import TestPki
from drimbox.sim.psc import LocalPsc
from drimbox.trust import audit
from drimbox.web.admin_routes import CHECK_LABELS
from drimbox.web.status import CHECKS
from support.node import RunningNode, node_config, signed_in

ADMIN = "899700100011"  # the simulator's `radiologue`


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningNode]:
    with LocalPsc() as psc:
        config = node_config(tmp_path, None, {
            **psc.node_environ(),
            "DRIMBOX_ADMIN__USERS": ADMIN,
            "DRIMBOX_PACS__PORT": "9",
            "DRIMBOX_PACS__TIMEOUT_S": "1",
        })  # fmt: skip
        with RunningNode(config) as running:
            now = utcnow()
            with running.node.db.session() as session:
                message = Hl7Message(received_at=now, size_bytes=1, raw=b"x", ack_code="AA")
                session.add(message)
                session.flush()
                session.add(Report(
                    message_id=message.id, received_at=now, updated_at=now, kind="publish",
                    patient_ins="279035121518989", accession="ACN103", flags={},
                    state=ReportState.REFUSED.value, attempts=1,
                    reason="Identité incohérente PACS/CR : date de naissance",
                ))  # fmt: skip
            yield running


def test_console_for_an_administrator(node: RunningNode) -> None:
    base = node.viewer_url
    browser = signed_in(node, "radiologue")
    try:
        status = browser.get(f"{base}/admin")
        assert status.status_code == 200 and "État de la DRIMbox" in status.text
        assert "envoi au DMP" in status.text and "Travail en cours" in status.text
        reports = browser.get(f"{base}/admin/comptes-rendus")
        assert "Identité incohérente" in reports.text and "Relancer" in reports.text
        # Another site's page cannot make the administrator's browser act.
        forged = browser.post(f"{base}/admin/comptes-rendus/1/relancer",
                              headers={"Origin": "https://attaque.test"})  # fmt: skip
        assert forged.status_code == 403 and "Action refusée" in forged.text
        assert "report_retry" not in {e["action"] for e in audit.events(node.node.db)}
        retried = browser.post(f"{base}/admin/comptes-rendus/1/relancer")
        assert "nouvelle interrogation du PACS" in retried.text
        # A report that does not exist: 404, and an error in the audit trail (not "ok").
        missing = browser.post(f"{base}/admin/comptes-rendus/999/relancer")
        assert missing.status_code == 404 and "Compte rendu introuvable" in missing.text
        assert "Aucune liste blanche configurée" in browser.get(f"{base}/admin/liste-blanche").text
        # An image access event sums requests: the page says how many.
        audit.record(node.node.db, actor=ADMIN, role="user", action="image_retrieve_frames",
                     result="ok", nbytes=4096, requests=37, aggregated=True)  # fmt: skip
        traces = browser.get(f"{base}/admin/audit", params={"utilisateur": ADMIN})
        assert "images servies (trames)" in traces.text and "(37 requêtes)" in traces.text
        # French labels for people; the codes stay in the JSON export (below).
        assert "relance d'un compte rendu" in unescape(traces.text) and "connexion" in traces.text
        assert "administrateur" in traces.text and "report_retry" not in traces.text
        assert ">publication<" in reports.text and ">publish<" not in reports.text
        cache = browser.get(f"{base}/admin/cache").text
        assert ("utilisés sur" in cache and " Mo" in cache) or "octet" in cache
        purged = browser.post(f"{base}/admin/cache/purger")
        assert "Cache vidé" in purged.text and "PurgeResult" not in purged.text
    finally:
        browser.close()
    retries = [e for e in audit.events(node.node.db, actor=ADMIN) if e["action"] == "report_retry"]
    assert {(e["detail"]["report_id"], e["result"]) for e in retries} == {(1, "ok"), (999, "error")}


def test_every_status_check_has_a_french_label() -> None:
    assert set(CHECK_LABELS) == set(CHECKS)


def test_console_refuses_others(node: RunningNode) -> None:
    base = node.viewer_url
    with httpx.Client(follow_redirects=False) as anonymous:
        first = anonymous.get(f"{base}/admin/comptes-rendus")
        assert first.status_code == 303 and first.headers["location"].startswith("/connexion")
    browser = signed_in(node, "medecin-deux-situations")
    try:
        page = browser.get(f"{base}/admin/comptes-rendus")
        assert page.status_code == 403 and "réservée aux administrateurs" in page.text
        assert browser.post(f"{base}/admin/comptes-rendus/1/relancer").status_code == 403
    finally:
        browser.close()


def test_status_page_keeps_the_last_speed_tests(node: RunningNode) -> None:
    from datetime import timedelta

    from drimbox.ops.speedtest import SpeedResult, failed, record

    db = node.node.db
    earlier = utcnow() - timedelta(days=2)
    record(db, SpeedResult("pacs", "PACS@pacs:104", "c-get", "1.2.3", at=earlier, images=300,
                           bytes=150_000_000, seconds=2.0, first_image_s=0.04))  # fmt: skip
    record(db, SpeedResult("pacs", "PACS@pacs:104", "c-get", "1.2.3", images=300,
                           bytes=150_000_000, seconds=10.0, first_image_s=0.05))  # fmt: skip
    record(db, failed("peer", "db7.exemple.fr", "wado-rs", "", "DRIMbox injoignable"))
    browser = signed_in(node, "radiologue")
    try:
        page = browser.get(f"{node.viewer_url}/admin").text
    finally:
        browser.close()
    assert "Derniers tests de débit" in page
    assert "PACS@pacs:104" in page and "300 images, 150,0 Mo, 15,0 Mo/s" in page
    assert "EN BAISSE" in page and "75,0 Mo/s" in page  # the previous run, with its date
    assert "db7.exemple.fr" in page and "ÉCHEC" in page and "DRIMbox injoignable" in page


def test_certificates_expiring_soon_are_shown(tmp_path: Path) -> None:
    """30 days ahead by default: on /status (a warning, not a failure) and on the console."""
    pki = TestPki()
    folder = tmp_path / "pki"
    soon = pki.issue("DRIMbox", usage="sign", organizational_unit="499700367909006",
                     days=10).write(folder, "sign")  # fmt: skip
    later = pki.issue("DRIMbox", usage="auth", organizational_unit="499700367909006",
                      days=200).write(folder, "auth")  # fmt: skip
    with LocalPsc() as psc:
        config = node_config(tmp_path, None, {
            **psc.node_environ(),
            "DRIMBOX_ADMIN__USERS": ADMIN,
            "DRIMBOX_PACS__PORT": "9",
            "DRIMBOX_PACS__TIMEOUT_S": "1",
            "DRIMBOX_DMP__SIGNING_CERT": str(soon.cert_path),
            "DRIMBOX_DMP__SIGNING_KEY": str(soon.key_path),
            "DRIMBOX_DMP__TLS_CERT": str(later.cert_path),
            "DRIMBOX_DMP__TLS_KEY": str(later.key_path),
        })  # fmt: skip
        with RunningNode(config) as running:
            status = httpx.get(f"{running.peer_url}/status", timeout=30).json()
            browser = signed_in(running, "radiologue")
            try:
                console = unescape(browser.get(f"{running.viewer_url}/admin").text)
            finally:
                browser.close()
    check = status["checks"]["certificates"]
    assert check["ok"] is True and check["warning"] is True and "certificates" in status["warnings"]
    assert "[dmp] signing_cert expire le" in check["message"] and "tls_cert" not in check["message"]
    assert {row["certificate"] for row in check["certificates"]} == {
        "[dmp] tls_cert", "[dmp] signing_cert"}  # fmt: skip
    assert "ATTENTION" in console and "[dmp] signing_cert expire le" in console
