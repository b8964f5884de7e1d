"""Two sites of the DRIM-M network in one test, over real sockets with real components.

- Source A: a node with role source, Orthanc A as its PACS; the RIS sends exam C (CR_C) and a
  second exam of the same patient (a variant of CR_C: new study, accession and report ids) —
  both KOS published by A to the DMP simulator. The second exam is "made at another Source" in
  the sense of the brief's second option: the same Source A with a second study.
- Conso B: a node with role conso, Orthanc B as its local PACS, OHIF on its user origin.
- The DMP and PSC simulators, ONE test PKI, a whitelist signed at test time naming A (`db` =
  `localhost`, its certificate's name) and B (its client certificate's DN).
- A third KOS of the same patient points at a Source that is not on the whitelist (127.0.0.1,
  a listening socket that counts connections): it is never contacted and the row says why.

Headless Chromium (Debian's, driven by Playwright) signs in through the PSC simulator's login
page, opens the viewer, compares two exams; export lands in Orthanc B under B's IPP.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
from typer.testing import CliRunner

from conso.helpers import make_study
from conso.test_history import publish_cda, settings_of
from drimbox.cda.model import Code, Identifier
from drimbox.cda.parser import parse_report
from drimbox.cli import app as cli_app
from drimbox.conso.common import FolderStore
from drimbox.conso.xdm import read_xdm
from drimbox.db import ReportState
from drimbox.db.models import ConsoLaunch
from drimbox.dmp.client import DmpClient, DmpSettings
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.pki import TestPki
from drimbox.sim.ports import free_port
from drimbox.sim.psc import LocalPsc
from drimbox.sim.ris import RisClient
from drimbox.sim.studies import SeriesSpec, generate_study_for_report
from drimbox.sim.whitelist import build_whitelist, issue_ans_signer, sign_whitelist
from drimbox.trust import audit
from drimbox.web.conso_routes import TRAITS_DEFAULT, TRAITS_MORE
from support.dmp import local_dmp
from support.factories import CR_C_ACCESSION, make_report
from support.history import launch_form as launch_fields
from support.node import RIS_ORIGIN, RunningNode, network_environ, node_config
from support.samples import cda_of, hl7_text, with_cda
from support.tools import chromium, missing
from support.trust import domain

REPO = Path(__file__).resolve().parents[2]
OHIF_DIR = REPO / "var" / "ohif"
ARTIFACTS = REPO / "test-artifacts"
DN_A = "CN=localhost,OU=300000001830001,O=SITE A,ST=Paris (75),C=FR"
DN_B = "CN=db-b.test.fr,OU=300000001830002,O=SITE B,ST=Paris (75),C=FR"
IPP_B = "IPP-B-4242"
INS = "279035121518989"
STUDY_2 = "1.2.250.1.213.4.5.2.1.104"
STUDY_UNLISTED = "1.2.826.0.1.3680043.8.498.77.9.77"
STUDY_MARKUP = "1.2.826.0.1.3680043.8.498.77.9.78"
RADIOLOGIST_ID = "899700100011"  # the PSC simulator's `radiologue`
# Markup that would run script and draw if a page put it in as HTML.
MARKUP = "<img src=x onerror=window.pwned=1><b>gras</b>"

DRAWN_JS = """(count) => {
    const canvases = Array.from(document.querySelectorAll('canvas.cornerstone-canvas'));
    let drawn = 0;
    for (const canvas of canvases) {
        if (!canvas.width || !canvas.height) continue;
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let lit = 0;
        for (let i = 0; i < data.length; i += 4) {
            if (data[i] || data[i + 1] || data[i + 2]) lit++;
        }
        if (lit / (data.length / 4) > 0.05) drawn++;
    }
    return drawn >= count ? drawn : false;
}"""


class CountingListener:
    """A TCP socket that accepts and counts connections (a Source nobody may call)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@dataclass
class Network:
    source: RunningNode
    conso: RunningNode
    orthanc_b: LocalOrthanc
    unlisted: CountingListener
    study_1: str
    study_2: str
    instances_1: int
    tmp: Path
    dmp_settings: DmpSettings


def _variant(text: str) -> tuple[str, bytes]:
    """CR_C for a second exam of the same patient: new study UID, accession, order, report."""
    cda = cda_of(text)
    for old, new in (
        (b"1.2.250.1.213.4.5.2.1.103", STUDY_2.encode()),
        (b"ACN103", b"ACN104"),
        (b"OPN103", b"OPN104"),
        (b'"1.2.250.1.213.4.5.4.403"', b'"1.2.250.1.213.4.5.4.404"'),
        (b"D52DE737-001D-4031-B571-0A0ED7C42300", b"D52DE737-001D-4031-B571-0A0ED7C42301"),
    ):
        assert old in cda, old
        cda = cda.replace(old, new)
    return with_cda(text.replace("ACN103", "ACN104"), cda), cda


@pytest.fixture(scope="module")
def network(orthanc: LocalOrthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    if not (OHIF_DIR / "index.html").exists():
        missing("OHIF not installed in var/ohif (scripts/install-ohif.sh)")
    tmp = tmp_path_factory.mktemp("two-sites")
    orthanc.delete_all()
    pki = TestPki()
    folder = tmp / "pki"
    box_a = pki.issue("localhost", usage="server", dns_names=("localhost", "127.0.0.1"),
                      organizational_unit="300000001830001", organization="SITE A",
                      state="Paris (75)").write(folder, "box-a")  # fmt: skip
    box_b = pki.issue("db-b.test.fr", usage="server", dns_names=("db-b.test.fr", "127.0.0.1"),
                      organizational_unit="300000001830002", organization="SITE B",
                      state="Paris (75)").write(folder, "box-b")  # fmt: skip
    ans = issue_ans_signer(pki)
    whitelist = sign_whitelist(
        build_whitelist(
            [domain(1, db="localhost", operator_dn=DN_A),
             domain(2, db="db-b.test.fr", operator_dn=DN_B)],
            datetime.now(UTC) - timedelta(minutes=1),
        ),
        ans,
        [pki.ca.certificate],
    )  # fmt: skip
    (tmp / "whitelist.xml").write_bytes(whitelist)
    ca = pki.ca.write(folder, "ca")
    assert ca.cert_path is not None

    # Exam 1 (CR_C) and exam 2 (its variant) in Orthanc A.
    text_1 = hl7_text("CR_C-ORU.hl7")
    text_2, cda_2 = _variant(text_1)
    cda_1 = cda_of(text_1)
    report_1, report_2 = parse_report(cda_1), parse_report(cda_2)
    files_1 = generate_study_for_report(tmp / "s1", report_1, [SeriesSpec("CT", "Crâne", 3)],
                                        rows=128, columns=128)  # fmt: skip
    files_2 = generate_study_for_report(tmp / "s2", report_2, [SeriesSpec("CT", "Contrôle", 2)],
                                        rows=128, columns=128)  # fmt: skip
    orthanc.store_files([*files_1, *files_2])
    unlisted = CountingListener()

    with (
        local_dmp(tmp / "dmp", pki) as dmp,
        LocalPsc.with_mtls(tmp / "psc", pki) as psc,
        LocalOrthanc(aet="ORTHANCB") as orthanc_b,
    ):
        common = network_environ(dmp, psc, tmp / "whitelist.xml", ca.cert_path)
        port_a = free_port()
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        config_a = node_config(tmp / "a", orthanc, common | {
            "DRIMBOX_HTTP__PORT": str(port_a),
            "DRIMBOX_SITE__PUBLIC_BASE_URL": f"https://localhost:{port_a}",
            "DRIMBOX_TRUST__STATE_DIR": str(tmp / "a" / "trust"),
            "DRIMBOX_TRUST__TLS_CERT": str(box_a.cert_path),
            "DRIMBOX_TRUST__TLS_KEY": str(box_a.key_path),
        })  # fmt: skip
        config_b = node_config(tmp / "b", orthanc_b, common | {
            "DRIMBOX_ROLES__SOURCE": "false",
            "DRIMBOX_ROLES__CONSO": "true",
            "DRIMBOX_TRUST__STATE_DIR": str(tmp / "b" / "trust"),
            "DRIMBOX_TRUST__TLS_CERT": str(box_b.cert_path),
            "DRIMBOX_TRUST__TLS_KEY": str(box_b.key_path),
            "DRIMBOX_VIEWER__OHIF_DIR": str(OHIF_DIR),
            "DRIMBOX_ADMIN__USERS": RADIOLOGIST_ID,
        })  # fmt: skip
        with RunningNode(config_a) as source, RunningNode(config_b) as conso:
            with RisClient("127.0.0.1", source.hl7_port) as ris:
                assert ris.send(text_1).code == "AA"
                assert ris.send(text_2).code == "AA"
            settled = {ReportState.PUBLISHED.value, ReportState.PARKED.value}
            for report in source.reports():
                done = source.wait_for_report(report.id, settled)
                assert done.state == ReportState.PUBLISHED.value, done.reason
            # The RIS publishes the CDA itself (exam 1's report); a third exam's KOS points at a
            # Source outside the whitelist.
            with DmpClient(settings_of(dmp)) as client:
                publish_cda(client, report_1, cda_1)
                stray = make_study(tmp / "s3", study_uid=STUDY_UNLISTED, accession="ACN977",
                                   base_url=f"https://127.0.0.1:{unlisted.port}")  # fmt: skip
                client.publish_kos(stray.report, stray.kos, {})
            yield Network(source, conso, orthanc_b, unlisted, report_1.study_instance_uid,
                          STUDY_2, len(files_1), tmp, settings_of(dmp))  # fmt: skip
    unlisted.close()
    orthanc.delete_all()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def post_launch(page: Any, base: str, fields: dict[str, str], *, origin: str = RIS_ORIGIN) -> None:
    """What a RIS does: an auto-submitted form in the user's browser, from a page of the RIS
    (served at `origin` by the browser itself: the box sees that origin, as from a real RIS)."""
    inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
    html = f'<!doctype html><form id="f" method="post" action="{base}/lancement">{inputs}</form>'
    ris_page = f"{origin}/dpi/lancer"
    page.route(ris_page, lambda route: route.fulfill(content_type="text/html", body=html))
    try:
        page.goto(ris_page)
        with page.expect_navigation():
            page.evaluate("document.getElementById('f').submit()")
    finally:
        page.unroute(ris_page)


def wait_jobs(page: Any, launch_url: str, key: str, timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        state = page.request.get(f"{launch_url}/etat").json()
        jobs = state[key]
        if jobs and all(j["etat"] not in ("en_attente", "en_cours") for j in jobs.values()):
            return dict(jobs)
        assert time.monotonic() < deadline, state
        time.sleep(0.3)


def wait_drawn(page: Any, count: int, name: str) -> None:
    drawn = page.wait_for_function(DRAWN_JS, arg=count, timeout=90_000, polling=250)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))
    assert drawn.json_value() >= count


def test_launch_history_viewer_export_and_compare(network: Network, browser: Any) -> None:
    base = network.conso.viewer_url
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        post_launch(page, base, launch_fields())
        # No session yet: the PSC simulator's login page; the tester picks the radiologist.
        page.click("button[value=radiologue]")
        page.wait_for_url("**/consultation/*")
        launch_url = page.url.split("?")[0]
        content = page.content()
        assert "PAT-TROIS DOMINIQUE" in content and "28/03/1979" in content
        # The INS matricule only on the user's choice (INS/va1.36).
        assert "Féminin" in content and "2 79 03 51 215 189 89" not in content
        assert "Voir le compte rendu" in content
        rows = page.locator("tbody tr")
        assert rows.count() == 3

        jobs = wait_jobs(page, launch_url, "images")
        states = sorted(j["etat"] for j in jobs.values())
        assert states == ["refuse", "termine", "termine"], jobs
        refused = next(j for j in jobs.values() if j["etat"] == "refuse")
        assert "liste blanche" in refused["message"]
        assert network.unlisted.connections == 0  # never contacted
        page.reload()
        assert "liste blanche DRIM-M en vigueur" in page.content()

        # The report: the CDA's embedded PDF.
        href = page.locator("a", has_text="Voir le compte rendu").first.get_attribute("href")
        pdf = page.request.get(f"{base}{href}")
        assert pdf.headers["content-type"] == "application/pdf" and pdf.body()[:4] == b"%PDF"

        # Open the exam: OHIF on the same origin, images from B's cache (filled from A).
        page.click(f"a[href$='/ouvrir/{network.study_1}']")
        page.wait_for_url(lambda url: "/viewer?StudyInstanceUIDs=" in url)
        wait_drawn(page, 1, "conso-viewer-first-image.png")
        retrievals = network.conso.node.images
        assert retrievals is not None and retrievals.fetcher.retrievals == 0  # PACS B untouched

        # Export to B's PACS under B's IPP, the INS in OtherPatientIDsSequence.
        page.goto(launch_url)
        page.click(f"button[formaction$='/export/{network.study_1}']")
        exports = wait_jobs(page, launch_url, "exports")
        (export,) = exports.values()
        assert export["etat"] == "termine", export
        assert f"{network.instances_1} image(s) enregistrée(s)" in export["message"]
        page.reload()
        assert "sous l'IPP IPP-B-4242" in page.content()
        orthanc_b = network.orthanc_b.client
        instances = orthanc_b.get("/instances").json()
        assert len(instances) == network.instances_1
        for orthanc_id in instances:
            tags = orthanc_b.get(f"/instances/{orthanc_id}/tags", params={"simplify": ""}).json()
            assert tags["PatientID"] == IPP_B
            assert tags["StudyInstanceUID"] == network.study_1
            assert tags["OtherPatientIDsSequence"][0]["PatientID"] == INS

        # The exam as an XDM archive, read back by the box's own importer.
        archive = page.request.get(f"{launch_url}/xdm/{network.study_1}")
        assert archive.headers["content-type"] == "application/zip"
        imported = read_xdm(io.BytesIO(archive.body()), store=FolderStore(network.tmp / "xdm"))
        assert imported.manifest.study_uid == network.study_1
        assert imported.images == network.instances_1 and len(imported.reports) == 1

        # Compare the two exams side by side.
        page.check(f"input[value='{network.study_1}']")
        page.check(f"input[value='{network.study_2}']")
        page.click("text=Comparer les deux examens sélectionnés")
        page.wait_for_url(lambda url: "/viewer?StudyInstanceUIDs=" in url)
        assert network.study_1 in page.url and network.study_2 in page.url
        wait_drawn(page, 2, "conso-viewer-compare.png")
    finally:
        context.close()

    actions = {e["action"] for e in audit.events(network.conso.node.db, actor="899700100011")}
    assert {"dmp_history", "dmp_retrieve_kos", "dmp_retrieve_cda", "wado_rs_retrieve",
            "export_pacs", "report_view"} <= actions  # fmt: skip


def test_negative_launches(network: Network) -> None:
    base = network.conso.viewer_url
    with httpx.Client(base_url=base, timeout=30, headers={"Origin": RIS_ORIGIN}) as ris:
        missing = ris.post("/lancement", data=launch_fields(**{"Patient.identifier.value": ""}))
        assert missing.status_code == 400
        assert "Lancement refusé" in missing.text and "Patient.identifier.value" in missing.text
        bad_oid = ris.post(
            "/lancement", data=launch_fields(**{"Patient.identifier.system": "urn:oid:1.2.3"})
        )
        assert bad_oid.status_code == 400 and "OID d'INS attendu" in unescape(bad_oid.text)
        accepted = ris.post("/lancement", data=launch_fields())
        assert accepted.status_code == 303
        location = accepted.headers["location"]
        assert location.startswith("/consultation/") and len(location) > 40
    launch_id = location.rsplit("/", 1)[-1]
    with network.conso.node.db.session() as session:
        row = session.get(ConsoLaunch, launch_id)
        assert row is not None
        row.open_by = datetime.now(UTC) - timedelta(minutes=1)
    with httpx.Client(base_url=base, timeout=30, follow_redirects=True) as user:
        anonymous = user.get(location, follow_redirects=False)
        assert anonymous.status_code == 303
        assert anonymous.headers["location"].startswith("/connexion?next=")
        user.get("/connexion", params={"login_hint": "radiologue", "next": "/"})
        expired = user.get(location)
        assert expired.status_code == 410 and "expiré" in expired.text
        unknown = user.get("/consultation/inconnu")
        assert unknown.status_code == 404 and "inconnu" in unknown.text


def sign_in_at_psc(page: Any, user: str, wait_for: str = "**/consultation/*") -> None:
    """On the PSC simulator's login page, the tester picks `user`."""
    page.click(f"button[value={user}]")
    if wait_for:
        page.wait_for_url(wait_for)


def open_history(context: Any, network: Network, user: str = "radiologue") -> tuple[Any, str]:
    page = context.new_page()
    post_launch(page, network.conso.viewer_url, launch_fields())
    sign_in_at_psc(page, user)
    return page, page.url.split("?")[0]


def no_horizontal_overflow(page: Any) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"page {width} px wide"


def test_sign_in_again_returns_to_the_launch_history(network: Network, browser: Any) -> None:
    base = network.conso.viewer_url
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        # After a logout, "Se reconnecter" leads back to the launch's history.
        page, launch_url = open_history(context, network)
        page.click("text=Se déconnecter")
        assert page.locator("h1").inner_text() == "Déconnecté"
        page.click("text=Se reconnecter")
        sign_in_at_psc(page, "radiologue")
        assert page.url.split("?")[0] == launch_url
        assert "PAT-TROIS DOMINIQUE" in page.locator(".banner").inner_text()
        context.clear_cookies()

        # After a refused sign-in (no CPS/e-CPS), the same: the patient is not lost.
        post_launch(page, base, launch_fields())
        sign_in_at_psc(page, "authentification-faible", wait_for="")
        page.wait_for_selector("h1:text('Connexion refusée')")
        page.click("text=Se reconnecter avec Pro Santé Connect")
        sign_in_at_psc(page, "radiologue")
        assert "Historique des examens" in page.locator("h1").inner_text()
        assert "PAT-TROIS DOMINIQUE" in page.locator(".banner").inner_text()
        context.clear_cookies()

        # A professional with no situation d'exercice is refused clearly, not asked to choose
        # among nothing.
        post_launch(page, base, launch_fields())
        sign_in_at_psc(page, "sans-situation", wait_for="")
        page.wait_for_selector("h1:text('Connexion refusée')")
        text = page.locator("main").inner_text()
        assert "aucune situation d'exercice" in text and "Continuer" not in text

        # The origin's root is a French page of its own (not OHIF's English 404), with an icon.
        page.goto(f"{base}/")
        assert page.locator("html").get_attribute("lang") == "fr"
        body = page.locator("body").inner_text()
        assert "lancez la consultation" in body and "find the page" not in body
        icon = page.request.get(f"{base}/favicon.ico")
        assert icon.status == 200 and icon.body()[:4] == b"\x00\x00\x01\x00"
    finally:
        context.close()


def test_a_launch_from_another_site_asks_first(network: Network, browser: Any) -> None:
    """Any page can post the launch form: from an origin the site did not declare, the user
    first sees whom it names; confirming (a form of the box itself) opens the history."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        trap = "http://site-piege.test"
        post_launch(page, network.conso.viewer_url, launch_fields(), origin=trap)
        assert page.locator("h1").inner_text() == "Ouvrir le dossier de ce patient ?"
        text = page.locator("main").inner_text()
        assert "PAT-TROIS" in text and trap in text and "Rien n'a encore été demandé" in text
        page.click("button:has-text('Ouvrir le dossier de ce patient')")
        sign_in_at_psc(page, "radiologue")
        assert "Historique des examens" in page.locator("h1").inner_text()
        assert "PAT-TROIS DOMINIQUE" in page.locator(".banner").inner_text()
    finally:
        context.close()


def test_the_identity_block_shows_the_ins_traits(network: Network, browser: Any) -> None:
    """The five default INS traits, then all ten on the user's choice, kept for them, in the
    same order on the history and on an error page (INS/va1.36)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    labels = ".banner dt"
    page, launch_url = open_history(context, network)
    try:
        everything = [*TRAITS_DEFAULT, *TRAITS_MORE, "IPP"]
        if page.locator(labels).all_inner_texts() == everything:  # an earlier run's choice
            page.click("text=Afficher les traits d'identité par défaut")
        assert page.locator(labels).all_inner_texts() == [*TRAITS_DEFAULT, "IPP"]
        assert page.locator(".banner dd").all_inner_texts()[:5] == [
            "PAT-TROIS", "DOMINIQUE", "28/03/1979", "Féminin", "75056"
        ]  # fmt: skip
        page.click("text=Afficher tous les traits d'identité")
        page.wait_for_selector(".banner dt:text('Matricule INS')")
        assert page.locator(labels).all_inner_texts() == everything
        shown = page.locator(".banner dd").all_inner_texts()
        assert shown[5] == "2 79 03 51 215 189 89" and "INS-NI" in shown[6]
        no_horizontal_overflow(page)
        # Kept for this user: the same block on another page of the Conso.
        page.goto(f"{launch_url}/ouvrir/1.2.3.4.5")
        assert page.locator("h1").inner_text() == "Examen introuvable"
        assert page.locator(labels).all_inner_texts() == everything
        assert page.locator(".banner dd").all_inner_texts() == shown
    finally:
        # Back to the default, for the other tests of this user.
        page.goto(launch_url)
        if page.locator("text=Afficher les traits d'identité par défaut").count():
            page.click("text=Afficher les traits d'identité par défaut")
        context.close()


def test_compare_export_purge_and_console_in_french(network: Network, browser: Any) -> None:
    base = network.conso.viewer_url
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        page, launch_url = open_history(context, network)
        jobs = wait_jobs(page, launch_url, "images")
        assert sorted(j["etat"] for j in jobs.values()) == ["refuse", "termine", "termine"]

        # "Comparer" with one exam: said on the history page, not an HTTP 400 page.
        page.check(f"input[value='{network.study_1}']")
        page.click("text=Comparer les deux examens sélectionnés")
        alert = page.locator("[role=alert]").inner_text()
        assert "vous avez sélectionné 1 examen" in alert and "exactement deux" in alert
        assert page.locator("h1").inner_text() == "Historique des examens"

        # Each row: accession, number of series and images, site.
        row = page.locator("tr", has=page.locator(f"input[value='{network.study_1}']"))
        text = row.inner_text()
        assert "N° d'examen : ACN103" in text
        assert f"1 série, {network.instances_1} images" in text  # one CT series of 3
        site = DmpSettings.from_config(network.source.node.config).structure_name
        assert row.locator("td").nth(5).inner_text() == site  # the site that holds the images

        # After an export the status line wraps: no horizontal scroll at 1400 px.
        page.goto(launch_url)
        page.click(f"button[formaction$='/export/{network.study_1}']")
        wait_jobs(page, launch_url, "exports")
        page.reload()
        assert "sous l'IPP IPP-B-4242" in page.content()
        page.screenshot(path=str(ARTIFACTS / "conso-history-after-export.png"), full_page=True)
        no_horizontal_overflow(page)

        # The viewer speaks French (OHIF's own i18n).
        page.click(f"a[href$='/ouvrir/{network.study_1}']")
        page.wait_for_url(lambda url: "/viewer?StudyInstanceUIDs=" in url)
        wait_drawn(page, 1, "conso-viewer-french.png")
        assert "i18next=fr" in page.evaluate("document.cookie")
        assert page.evaluate("window.localStorage.getItem('i18nextLng')") in (None, "fr")

        # The console of a Conso-only node: no Source tabs, French labels and status.
        page.goto(f"{base}/admin")
        nav = page.locator("nav.sections").inner_text()
        assert "Comptes rendus" not in nav and "Cache" in nav
        status = page.locator("main").inner_text()
        assert "File d'envoi au DMP" not in status
        assert "DMP joignable : le service répond" in status and "HTTP" not in status
        page.goto(f"{base}/admin/audit")
        traces = page.locator("main table").inner_text()
        for label in (
            "consultation de l'historique DMP",
            "professionnel de santé",
            "lecture d'un manifeste d'images (KOS) au DMP",
            "export vers le PACS",
        ):
            assert label in traces, label  # fmt: skip
        for code in ("dmp_retrieve_kos", "image_retrieve", "export_pacs", "\tuser\t"):
            assert code not in traces, code

        # The purge says what it did in French, with units; the history follows the cache.
        page.goto(f"{base}/admin/cache")
        page.click("text=Vider le cache")
        notice = page.locator("p.note").inner_text()
        assert re.fullmatch(r"Cache vidé : \d+ séries? supprimées?, [\d,]+ [kMG]?o libérés\.",
                            notice), notice  # fmt: skip
        page.goto(launch_url)
        states = page.locator("[id^=images-state-]").all_inner_texts()
        assert not any("Images prêtes" in s for s in states), states
        assert sum("à récupérer de nouveau" in s for s in states) == 2, states
        no_horizontal_overflow(page)
    finally:
        context.close()


def test_a_launch_with_filters_names_the_exam_and_filters_the_history(
    network: Network, browser: Any
) -> None:
    """The launch names exam 2 and filters on a modality and a day no exam has: the named exam
    opens at once, drawn in the viewer framed on top, no row below; the page's form then filters
    the stored history (modality, dates); a refused launch is in the console's audit trail with
    its reason."""
    base = network.conso.viewer_url
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        post_launch(page, base, launch_fields(StudyInstanceUID=network.study_2, Modality="mr",
                                              StudyDate="20000101"))  # fmt: skip
        sign_in_at_psc(page, "radiologue")
        named = page.locator("#examen-demande")
        assert "Examen demandé" in named.inner_text()
        # Opened directly: OHIF draws exam 2 in the frame, the history beside it.
        frame = page.frame(name="visionneuse")
        assert frame is not None
        frame.wait_for_function(DRAWN_JS, arg=1, timeout=90_000, polling=250)
        assert "/viewer?StudyInstanceUIDs=" in frame.url and network.study_2 in frame.url
        assert page.url.rstrip("/").rsplit("/", 1)[0].endswith("/consultation")
        assert page.locator("#f-modalite").input_value() == "MR"
        assert page.locator("#f-du").input_value() == "2000-01-01"
        assert page.locator("#f-au").input_value() == "2000-01-01"
        assert page.locator("tbody tr").count() == 0
        assert "Aucun examen ne correspond aux filtres" in page.locator("main").inner_text()
        page.screenshot(path=str(ARTIFACTS / "conso-launch-filters.png"), full_page=True)
        no_horizontal_overflow(page)

        page.click("text=Tout afficher")
        assert page.locator("tbody tr").count() == 3
        cells = page.locator("tbody tr td:nth-child(3)").all_inner_texts()
        row_2 = page.locator("tr", has=page.locator(f"input[value='{network.study_2}']"))
        modality = row_2.locator("td").nth(2).inner_text().split(", ")[0]
        page.select_option("#f-modalite", modality)
        page.click("form.filters button[type=submit]")
        kept = page.locator("tbody tr td:nth-child(3)").all_inner_texts()
        assert len(kept) == sum(modality in c.split(", ") for c in cells) >= 1
        assert all(modality in c.split(", ") for c in kept)
        assert page.locator(f"input[value='{network.study_2}']").count() == 1
        page.fill("#f-du", "2099-01-01")
        page.click("form.filters button[type=submit]")
        assert page.locator("tbody tr").count() == 0
        assert "du=2099-01-01" in page.url and "modalite=" in page.url

        # The named exam opens in the viewer from its block.
        named.locator("a.primary").click()
        page.wait_for_url(lambda url: "/viewer?StudyInstanceUIDs=" in url)
        assert network.study_2 in page.url

        # A refused launch: audited with its reason, shown in the console.
        post_launch(page, base, launch_fields(**{"Patient.identifier.system": "urn:oid:1.2.3"}))
        assert page.locator("h1").inner_text() == "Lancement refusé"
        page.goto(f"{base}/admin/audit")
        traces = page.locator("main table").inner_text()
        assert "lancement contextuel (RIS/DPI)" in traces and "OID d'INS attendu" in traces
    finally:
        context.close()


def test_markup_in_every_field_is_shown_as_text(network: Network, browser: Any) -> None:
    """Patient name, report title, site name and error reasons carrying markup: shown as
    text, never run nor drawn. (Last of the module: it adds an exam to the patient.)"""
    title = f"Scanner {MARKUP}"
    report = make_report(
        study_instance_uid=STUDY_MARKUP,
        accession_number=Identifier(root=CR_C_ACCESSION.root, extension="ACN978"),
        title=title,
        act_code=Code("24727-0", "2.16.840.1.113883.6.1", title),
    )
    unlisted = f"https://127.0.0.1:{network.unlisted.port}"
    study = make_study(network.tmp / "markup", study_uid=STUDY_MARKUP, accession="ACN978",
                       base_url=unlisted, report=report)  # fmt: skip
    # The site shown is the publishing structure's name (authorInstitution).
    publisher = dataclasses.replace(network.dmp_settings, structure_name=f"Site {MARKUP}")
    with DmpClient(publisher) as client:
        client.publish_kos(study.report, study.kos, {})
    base = network.conso.viewer_url
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        page = context.new_page()
        # Error reasons: the refused launch lists the invalid value.
        post_launch(page, base, launch_fields(**{"Patient.identifier.system": MARKUP}))
        assert page.locator("h1").inner_text() == "Lancement refusé"
        assert MARKUP in page.locator("ul.errors").inner_text()
        shown_as_text(page)
        # Patient name, report title, site name.
        post_launch(page, base, launch_fields(**{"Patient.name.family": f"PAT-TROIS{MARKUP}"}))
        sign_in_at_psc(page, "radiologue")
        assert MARKUP.upper() in page.locator(".banner strong").inner_text()  # family name
        row = page.locator("tr", has_text="ACN978").inner_text()
        assert title in row and f"Site {MARKUP}" in row
        shown_as_text(page)
    finally:
        context.close()


def shown_as_text(page: Any) -> None:
    assert page.evaluate("window.pwned") is None
    assert page.locator("img[src=x]").count() == 0
    assert page.locator("main b").count() == 0


@dataclass
class AuditedSession:
    made: list[str]  # the paths of the browser's DICOMweb requests
    finished: list[str]  # those whose answer it received whole
    events: list[dict[str, Any]]  # the session's events in `drimbox audit export`

    @property
    def counted(self) -> int:
        return sum(e["detail"].get("requests", 1) for e in self.events)


def audited_session(node: RunningNode, browser: Any, run: Callable[[Any], None]) -> AuditedSession:
    """`run(context)` in a fresh browser context, its DICOMweb requests counted from
    Playwright's events; then the node's audit trail as `drimbox audit export` gives it (the
    node's count written first, as at a minute's end), the events after those before."""
    node.flush_audit()
    before = max((e["id"] for e in audit.events(node.node.db)), default=0)
    made: list[str] = []
    finished: list[str] = []

    def image_path(request: Any) -> str | None:
        path = urlsplit(request.url).path
        return path if path.startswith("/dicom-web/") or path == "/dicom-web" else None

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.on("request", lambda r: image_path(r) and made.append(image_path(r)))
    context.on("requestfinished", lambda r: image_path(r) and finished.append(image_path(r)))
    try:
        run(context)
    finally:
        context.close()
    node.flush_audit()
    env = {"DRIMBOX_STORE__DATABASE_URL": node.config.store.database_url}
    result = CliRunner().invoke(cli_app, ["audit", "export"], env=env)
    assert result.exit_code == 0, result.output
    exported = [json.loads(line) for line in result.stdout.splitlines()]
    events = [e for e in exported if e["id"] > before and e["detail"].get("channel") == "viewer"]
    return AuditedSession(made, finished, events)


def check_accounted(session: AuditedSession, studies: set[str]) -> None:
    assert any("/frames/" in path for path in session.made), session.made
    assert len(session.finished) <= session.counted <= len(session.made), (
        len(session.made), len(session.finished), session.counted)  # fmt: skip
    frames = sum(
        e["detail"]["requests"] for e in session.events if e["action"] == "image_retrieve_frames"
    )
    assert frames == sum("/frames/" in path for path in session.finished)
    assert all(e["actor"] == RADIOLOGIST_ID and e["patient_ins"] == INS for e in session.events)
    assert {e["study_uid"] for e in session.events} >= studies
    print(f"OHIF session: {len(session.made)} DICOMweb requests → {len(session.events)} audit "
          f"events", dict(Counter(e["action"] for e in session.events)))  # fmt: skip


def test_every_image_request_of_an_ohif_session_is_in_the_audit_export(
    network: Network, browser: Any
) -> None:
    """On both viewers — the Conso's (one exam, then two compared) and the Source's (the
    report's IID link) — the browser's DICOMweb requests (counted from Playwright's events) are
    all accounted for in `drimbox audit export`: the summed events' request counts add up."""

    def conso_session(context: Any) -> None:
        page, launch_url = open_history(context, network)
        wait_jobs(page, launch_url, "images")
        page.click(f"a[href$='/ouvrir/{network.study_1}']")
        page.wait_for_url(lambda url: "/viewer?StudyInstanceUIDs=" in url)
        wait_drawn(page, 1, "audit-session-first-image.png")
        page.wait_for_load_state("networkidle")
        # Then both exams side by side.
        page.goto(launch_url)
        page.check(f"input[value='{network.study_1}']")
        page.check(f"input[value='{network.study_2}']")
        page.click("text=Comparer les deux examens sélectionnés")
        page.wait_for_url(lambda url: "/viewer?StudyInstanceUIDs=" in url)
        wait_drawn(page, 2, "audit-session-compare.png")
        page.wait_for_load_state("networkidle")

    conso = audited_session(network.conso, browser, conso_session)
    check_accounted(conso, {network.study_1, network.study_2})

    def source_session(context: Any) -> None:
        page = context.new_page()
        link = {"requestType": "STUDY", "studyUID": network.study_1,
                "accessionNumber": "ACN103", "idCDA": "1.2.250.1.213.4.5.4.403"}  # fmt: skip
        page.goto(f"{network.source.viewer_url}/IHEInvokeImageDisplay?{urlencode(link)}")
        sign_in_at_psc(page, "radiologue", wait_for="")
        page.wait_for_url(lambda url: "/viewer?StudyInstanceUIDs=" in url)
        wait_drawn(page, 1, "audit-session-source-viewer.png")
        page.wait_for_load_state("networkidle")

    source = audited_session(network.source, browser, source_session)
    check_accounted(source, {network.study_1})
