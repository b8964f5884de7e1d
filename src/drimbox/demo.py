"""`drimbox demo`: a whole local DRIM-M network on the embedded defaults, for evaluation and
training.

Two sites and the national services, on this machine:
- site A (Source): Orthanc A holding exams generated to match the official ANS sample reports, a
  RIS simulator that sends those reports, and DRIMbox A, which publishes their KOS to the DMP and
  serves the images to peers;
- site B (Conso): Orthanc B (its local PACS) and DRIMbox B, where a user launched from the RIS/DPI
  sees the patient's exams, opens them in the viewer and exports them;
- the DMP and Pro Santé Connect simulators, a test PKI shaped like IGC-Santé and a whitelist signed
  by a test "ANS", all made at start (no key is kept outside the demo folder).

Owns the demo folder layout (one folder, reused by a second run, reset by `--fresh`), the ports,
the start-up sequence with progress, and what is printed for the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import http.server
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from sqlalchemy import select

from drimbox.cda.model import ImagingReport
from drimbox.config import Config, load_config
from drimbox.db import Report, ReportState
from drimbox.dmp.client import DmpClient, DmpSettings
from drimbox.hl7.message import parse_report_message
from drimbox.node import Node
from drimbox.samples import ans_file
from drimbox.sim.dmp.server import LocalDmp
from drimbox.sim.dmp.settings import DmpSimSettings
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.pki import (
    Issued,
    SiteCertificates,
    StructureCertificates,
    TestPki,
    site_certificates,
    structure_certificates,
)
from drimbox.sim.ports import free_port, is_free
from drimbox.sim.psc import DEFAULT_USERS, RADIOLOGIST, LocalPsc
from drimbox.sim.ris import RisClient, publish_report_to_dmp, with_cda
from drimbox.sim.studies import SeriesSpec, generate_study_for_report
from drimbox.sim.whitelist import build_whitelist, issue_ans_signer, sign_whitelist
from drimbox.trust.whitelist import Domain


@dataclass(frozen=True)
class DemoExam:
    """One exam of the demo's patient: an official ANS sample message, the edits (regular
    expression, replacement) that make its CDA this exam's report, and the series generated
    for it in PACS A from the head phantom."""

    sample: str
    edits: tuple[tuple[bytes, bytes], ...]
    series: tuple[SeriesSpec, ...]


def _head(modality: str, description: str, weighting: str, count: int) -> SeriesSpec:
    return SeriesSpec(modality, description, count, body_part="HEAD", weighting=weighting)


# A patient followed for a right frontal extra-axial mass: a head CT (the ANS sample CR_C, in
# January 2021), then a brain MR (made from CR_G1: another date, act, modality and title).
DEMO_EXAMS: tuple[DemoExam, ...] = (
    DemoExam(
        "hl7/CR_C-ORU.hl7",
        (
            (
                rb"<title>[^<]*</title>",
                "<title>Scanner cérébral sans et avec injection</title>".encode(),
            ),
            # The act as the history shows it: in French (LOINC's display is English).
            (
                rb'displayName="CT Head W contrast IV"',
                'displayName="Scanner cérébral sans et avec injection"'.encode(),
            ),
        ),
        (
            _head("CT", "Crâne sans injection", "CT", 24),
            _head("CT", "Crâne après injection IV", "CT+C", 24),
            _head("CT", "Crâne, fenêtre osseuse", "CT bone", 24),
        ),
    ),
    DemoExam(
        "hl7/CR_G1-ORU.hl7",
        (
            (
                rb"<title>[^<]*</title>",
                "<title>IRM cérébrale sans et avec gadolinium</title>".encode(),
            ),
            (
                rb'code="24727-0"\s+displayName="CT Head W contrast IV"',
                'code="24590-2" displayName="IRM cérébrale sans et avec gadolinium"'.encode(),
            ),
            (rb'<translation code="ACQH004".*?/>', b""),  # CCAM [0..1]: not a CT act any more
            (
                rb'code="CT" displayName="Tomodensitom\xc3\xa9trie"',
                'code="MR" displayName="Imagerie par résonance magnétique"'.encode(),
            ),
            (rb"20210108(\d{6})", rb"20251118\1"),
        ),
        (
            _head("MR", "Axial T1", "T1", 20),
            _head("MR", "Axial T2", "T2", 20),
            _head("MR", "Axial FLAIR", "FLAIR", 20),
            _head("MR", "Axial T1 après gadolinium", "T1+C", 20),
        ),
    ),
)
SETTLED = {ReportState.PUBLISHED.value, ReportState.PARKED.value, ReportState.REFUSED.value}
STATE_TEXT = {
    ReportState.PUBLISHED.value: "publié au DMP",
    ReportState.PARKED.value: "refusé par le DMP",
    ReportState.REFUSED.value: "refusé",
}
# Installed by scripts/setup.sh; the demo is run from the project folder.
OHIF_DIR = Path("var/ohif").resolve()
ADMIN_USER = RADIOLOGIST.subject_name_id
DN_A = "CN=localhost,OU=300000001830001,O=SITE A DEMO,ST=Paris (75),C=FR"
DN_B = "CN=drimbox-b.demo,OU=300000001830002,O=SITE B DEMO,ST=Paris (75),C=FR"
IPP_B = "IPP-B-0001"
# DMP structures: site A is the organisation of the sample reports (CR_C.xml's legal
# authenticator), site B its own; each has its ORG AUTH and ORG SIGN certificates.
SOURCE_STRUCTURE = "101235555"
CONSO_STRUCTURE = "300000001830002"


@dataclass(frozen=True)
class DemoPorts:
    hl7: int
    a_peer: int
    a_viewer: int
    b_peer: int
    b_viewer: int
    pacs_a: int
    pacs_a_http: int
    pacs_b: int
    pacs_b_http: int
    dmp: int
    psc: int
    scp_a: int
    scp_b: int
    ris: int  # the page of site B's RIS that posts the contextual launch


def _port_or_free(port: int) -> int:
    return port if is_free(port) else free_port()


def demo_ports() -> DemoPorts:
    wanted = {
        "hl7": 2575, "a_peer": 8080, "a_viewer": 8081, "b_peer": 8082, "b_viewer": 8083,
        "pacs_a": 4242, "pacs_a_http": 8042, "pacs_b": 4243, "pacs_b_http": 8043,
        "dmp": 8090, "psc": 8091, "scp_a": 11112, "scp_b": 11113, "ris": 8084,
    }  # fmt: skip
    return DemoPorts(**{name: _port_or_free(port) for name, port in wanted.items()})


@dataclass(frozen=True)
class Trust:
    certs: SiteCertificates  # the DMP's TLS and site A's ORG certificates
    conso_org: StructureCertificates  # site B's ORG certificates (its DMP consultations)
    box_a: Issued
    box_b: Issued
    whitelist: Path
    pki: TestPki  # issues more certificates (tests: an expired one)


def make_trust(folder: Path) -> Trust:
    """A test PKI, both boxes' certificates and a whitelist naming them, signed by a test ANS."""
    pki = TestPki()
    # Site A publishes for the organisation of the sample reports' legal authenticator.
    certs = site_certificates(folder, pki, structure_id=SOURCE_STRUCTURE)
    conso_org = structure_certificates(
        folder, pki, CONSO_STRUCTURE, organization="SITE B DEMO", prefix="org-b"
    )
    box_a = pki.issue(
        "localhost", usage="server", dns_names=("localhost", "127.0.0.1"),
        organizational_unit="300000001830001", organization="SITE A DEMO", state="Paris (75)",
    ).write(folder, "box-a")  # fmt: skip
    box_b = pki.issue(
        "drimbox-b.demo", usage="server", dns_names=("drimbox-b.demo", "127.0.0.1"),
        organizational_unit="300000001830002", organization="SITE B DEMO", state="Paris (75)",
    ).write(folder, "box-b")  # fmt: skip
    now = datetime.now(UTC)
    domains = [
        Domain(identifier="1", db="localhost", vi="localhost", name="Site A (démo)",
               operator_dn=DN_A, support_contact="it@site-a.demo", updated_at=now),
        Domain(identifier="2", db="drimbox-b.demo", vi="drimbox-b.demo", name="Site B (démo)",
               operator_dn=DN_B, support_contact="it@site-b.demo", updated_at=now),
    ]  # fmt: skip
    signed = sign_whitelist(
        build_whitelist(domains, now - timedelta(minutes=1)),
        issue_ans_signer(pki),
        [pki.ca.certificate],
    )
    whitelist = folder / "liste-blanche.xml"
    whitelist.write_bytes(signed)
    return Trust(certs, conso_org, box_a, box_b, whitelist, pki)


def site_config(
    folder: Path,
    *,
    role: str,
    ports: DemoPorts,
    trust: Trust,
    psc: LocalPsc,
    hl7_port: int,
    peer_port: int,
    viewer_port: int,
    pacs_port: int,
    scp_port: int,
    box: Issued,
    name: str,
) -> Config:
    """One site's configuration, written to `<folder>/drimbox.toml` for the CLI."""
    c = trust.certs
    org = (
        trust.conso_org
        if role == "conso"
        else StructureCertificates(SOURCE_STRUCTURE, c.auth, c.signing)
    )
    psc_cert = psc.box_certificate
    assert psc_cert is not None, "the demo's PSC registers the boxes by certificate"
    text = f"""# Written by `drimbox demo`: {name}.
[roles]
source = {"true" if role == "source" else "false"}
conso = {"true" if role == "conso" else "false"}

[site]
name = "{name}"
structure_id = "{SOURCE_STRUCTURE if role == "source" else CONSO_STRUCTURE}"
uid_root = "1.2.250.1.999.{"1" if role == "source" else "2"}"
public_base_url = "https://localhost:{peer_port}"

[http]
host = "127.0.0.1"
port = {peer_port}

[viewer]
# Two host names, so that the browser keeps one session cookie per site on this one machine.
host = "127.0.0.1"
port = {viewer_port}
public_url = "http://{"localhost" if role == "source" else "127.0.0.1"}:{viewer_port}"
ohif_dir = "{OHIF_DIR}"

[hl7]
host = "127.0.0.1"
port = {hl7_port}

[pacs]
host = "127.0.0.1"
port = {pacs_port}
called_aet = "{"ORTHANCA" if role == "source" else "ORTHANCB"}"
calling_aet = "DRIMBOX{"A" if role == "source" else "B"}"
scp_port = {scp_port}
retrieve = "c-get"
timeout_s = 10

[source]
poll_interval_s = 0.2
retry_initial_s = 2
lease_s = 60

[conso]
# The RIS/DPI page that posts launches (served by the demo); from elsewhere: confirmation first.
launch_origins = ["{ris_origin(ports)}"]

[dmp]
base_url = "https://127.0.0.1:{ports.dmp}"
tls_cert = "{org.auth.cert_path}"
tls_key = "{org.auth.key_path}"
tls_ca = "{c.ca.cert_path}"
signing_cert = "{org.signing.cert_path}"
signing_key = "{org.signing.key_path}"
lps_id = "DRIMBOX-DEMO"
lps_homologation_id = "DEMO"
retry_initial_s = 2
retry_max_s = 30

[psc]
# Mutual TLS (tls_client_auth): the demo operator's ORG AUTH CLI certificate, CN = client_id.
client_id = "{psc.client.client_id}"
tls_cert = "{psc_cert.cert_path}"
tls_key = "{psc_cert.key_path}"
ca_file = "{psc.ca_file}"
discovery_url = "{psc.discovery_url}"
# Both demo sites sign in with the simulator's one client: the trust space's only DRIMbox client.
peer_clients = ["{psc.client.client_id}"]

[admin]
users = ["{ADMIN_USER}"]

[trust]
whitelist_source = "{trust.whitelist}"
anchors = ["{c.ca.cert_path}"]
state_dir = "trust"
tls_cert = "{box.cert_path}"
tls_key = "{box.key_path}"
tls_ca = "{c.ca.cert_path}"

[store]
database_url = "sqlite:///drimbox.db"
cache_dir = "cache"
secret_key_file = "secret.key"
"""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "drimbox.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ={})


def demo_report(exam: DemoExam) -> tuple[str, bytes, ImagingReport]:
    """The HL7 message the demo's RIS sends for `exam`, its CDA and the report read from it."""
    text = ans_file(exam.sample).read_bytes().decode("utf-8")
    cda = parse_report_message(text).cda_xml
    if cda is None:
        raise RuntimeError(f"{exam.sample}: no CDA")
    for pattern, replacement in exam.edits:
        cda, count = re.subn(pattern, replacement, cda, flags=re.DOTALL)
        if not count:
            raise RuntimeError(f"{exam.sample}: {pattern!r} not found in its CDA")
    text = with_cda(text, cda)
    message = parse_report_message(text)
    if message.report is None:
        raise RuntimeError(f"{exam.sample}: no CDA")
    return text, cda, message.report


def generate_demo_studies(folder: Path) -> list[Path]:
    files: list[Path] = []
    for exam in DEMO_EXAMS:
        _, _, report = demo_report(exam)
        files += generate_study_for_report(
            folder / report.study_instance_uid,
            report,
            exam.series,
            institution_name="Centre de radiologie Ambroise",
        )
    return files


def ris_origin(ports: DemoPorts) -> str:
    return f"http://127.0.0.1:{ports.ris}"


class _RisPage(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # quiet: the demo prints its own
        pass


@contextlib.contextmanager
def serving_ris_page(folder: Path, origin: str) -> Iterator[None]:
    """Site B's RIS page, served over HTTP at `origin` as a real RIS/DPI would (the launch's
    `Origin` is then a declared one); only the page's own folder is served."""
    port = int(origin.rsplit(":", 1)[1])
    handler = functools.partial(_RisPage, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def launch_page(folder: Path, conso_viewer: str, report: ImagingReport) -> Path:
    """What the RIS/DPI of site B does: a form posted to DRIMbox B with the patient's INS."""
    patient = report.patient
    fields = {
        "Patient.identifier.value": patient.ins,
        "Patient.identifier.system": f"urn:oid:{patient.ins_oid}",
        "Patient.name.family": patient.name.family,
        "Patient.name.given": patient.name.given[0] if patient.name.given else "",
        "Patient.gender": patient.sex,
        "Patient.birthDate": patient.birth_date.isoformat() if patient.birth_date else "",
        "Address.district": "75056",
        "PatientID": IPP_B,
        "PatientIDIssuer": "1.2.250.1.999.2.1",
        "InformationEtOppositionConsultation": "true",
    }
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
    )
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / "lancement.html"
    page.write_text(
        f"""<!doctype html><html lang="fr"><head><meta charset="utf-8">
<title>RIS du site B (démo) — lancement DRIM-M</title></head>
<body style="font-family:sans-serif;max-width:40rem;margin:3rem auto">
<h1>RIS du site B (démonstration)</h1>
<p>Patient : {html.escape(patient.name.to_dicom())}, INS {html.escape(patient.ins)}</p>
<form method="post" action="{conso_viewer}/lancement">{inputs}
<button type="submit" id="lancer">Voir les examens antérieurs (DRIM-M)</button></form>
</body></html>""",
        encoding="utf-8",
    )
    return page


def run_demo(folder: Path, *, fresh: bool, exit_after: bool, console: Console) -> int:
    """Start the demo network; returns the process exit code."""
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ports = demo_ports()
    console.print(f"[bold]DRIMbox — réseau DRIM-M de démonstration[/] (dossier {folder})",
                  highlight=False)  # fmt: skip
    trust = make_trust(folder / "pki")
    console.print("  [green]✓[/] IGC de test, certificats des DRIMbox, liste blanche signée")
    with contextlib.ExitStack() as stack:
        with console.status("Démarrage des PACS Orthanc A et B…"):
            pacs_a = stack.enter_context(LocalOrthanc(
                aet="ORTHANCA", http_port=ports.pacs_a_http, dicom_port=ports.pacs_a,
                work_dir=folder / "orthanc-a"))  # fmt: skip
            pacs_b = stack.enter_context(LocalOrthanc(
                aet="ORTHANCB", http_port=ports.pacs_b_http, dicom_port=ports.pacs_b,
                work_dir=folder / "orthanc-b"))  # fmt: skip
        console.print(f"  [green]✓[/] PACS A {pacs_a.url}, PACS B {pacs_b.url}")
        if pacs_a.statistics().get("CountInstances", 0) == 0:
            with console.status("Génération des examens de démonstration…"):
                files = generate_demo_studies(folder / "studies")
                pacs_a.store_files(files)
            console.print(f"  [green]✓[/] {len(files)} images chargées dans le PACS A")
        else:
            console.print("  [green]✓[/] examens déjà présents dans le PACS A (dossier réutilisé)")
        c = trust.certs
        assert c.server.cert_path and c.server.key_path and c.ca.cert_path
        with console.status("Démarrage des simulateurs du DMP et de Pro Santé Connect…"):
            dmp = stack.enter_context(LocalDmp(DmpSimSettings(
                database_path=folder / "dmp.db", trusted_vihf_certs=[c.ca.cert_pem],
                tls_cert=c.server.cert_path, tls_key=c.server.key_path,
                client_ca=c.ca.cert_path), port=ports.dmp))  # fmt: skip
            psc = stack.enter_context(LocalPsc.with_mtls(folder / "pki", trust.pki, port=ports.psc))
        console.print(f"  [green]✓[/] DMP (simulateur, TLS mutuel) {dmp.url}")
        console.print(f"  [green]✓[/] Pro Santé Connect (simulateur) {psc.url}, "
                      f"TLS mutuel {psc.mtls_url}")  # fmt: skip
        config_a = site_config(
            folder / "site-a", role="source", hl7_port=ports.hl7, peer_port=ports.a_peer,
            viewer_port=ports.a_viewer, pacs_port=ports.pacs_a, scp_port=ports.scp_a,
            box=trust.box_a, name="Centre de radiologie Ambroise (site A, démo)", ports=ports,
            trust=trust, psc=psc,
        )  # fmt: skip
        config_b = site_config(
            folder / "site-b", role="conso", hl7_port=0, peer_port=ports.b_peer,
            viewer_port=ports.b_viewer, pacs_port=ports.pacs_b, scp_port=ports.scp_b,
            box=trust.box_b, name="Hôpital de démonstration (site B)", ports=ports, trust=trust,
            psc=psc,
        )  # fmt: skip
        return asyncio.run(
            _run_network(folder, config_a, config_b, exit_after=exit_after, console=console)
        )


async def _run_network(
    folder: Path, config_a: Config, config_b: Config, *, exit_after: bool, console: Console
) -> int:
    node_a, node_b = Node(config_a), Node(config_b)
    await node_a.start()
    await node_b.start()
    stack = contextlib.ExitStack()  # the RIS page's server, once written
    try:
        assert node_a.web is not None and node_b.web is not None and node_a.mllp is not None
        site_a, site_b = config_a.viewer.public_url, config_b.viewer.public_url
        console.print(f"  [green]✓[/] DRIMbox A (Source) : {site_a} — "
                      f"pairs {node_a.web.peer.url}, MLLP {node_a.mllp.port}")  # fmt: skip
        console.print(f"  [green]✓[/] DRIMbox B (Conso) : {site_b}")
        console.print(
            "    (les deux sites sont sur cette machine : A sous le nom localhost, B sous "
            "127.0.0.1, pour que le navigateur les traite comme deux sites distincts — ses "
            "cookies ne distinguent pas les ports — chacun avec sa propre session)",
            highlight=False,
        )
        results = await asyncio.to_thread(_send_reports, node_a.mllp.port, config_a)
        for name, code, detail in results:
            colour = "green" if code == "AA" else "red"
            console.print(f"  [{colour}]{code or '—'}[/] RIS A → {name} {detail}", highlight=False)
        with console.status("Construction et publication des KOS au DMP…"):
            reports = await asyncio.to_thread(_wait_settled, node_a, 180.0)
        for report in reports:
            text = STATE_TEXT.get(report.state, report.state)
            console.print(f"  [green]✓[/] examen {report.accession} : KOS {text}", highlight=False)
        _, _, report_c = demo_report(DEMO_EXAMS[0])
        page = launch_page(folder / "ris", site_b, report_c)
        ris = config_b.conso.launch_origins[0]
        stack.enter_context(serving_ris_page(page.parent, ris))
        iid = (
            f"{site_a}/IHEInvokeImageDisplay?requestType=STUDY"
            f"&studyUID={report_c.study_instance_uid}&accessionNumber=ACN103"
            f"&idCDA={report_c.document_id.root}"
        )
        console.print("\n[bold]Prête.[/] À ouvrir dans un navigateur :")
        links = (
            ("Lancement contextuel (RIS du site B)", f"{ris}/{page.name}"),
            ("Lien du compte rendu (visionneuse du site A)", iid),
            ("Console d'administration A", f"{site_a}/admin"),
            ("Console d'administration B", f"{site_b}/admin"),
        )
        for label, url in links:
            console.print(f"  {label} : {url}", highlight=False, soft_wrap=True)
        console.print("  Utilisateurs de test (page de connexion Pro Santé Connect simulée) :")
        for user in DEFAULT_USERS:
            admin = (
                " ; administrateur des deux DRIMbox" if user.subject_name_id == ADMIN_USER else ""
            )
            console.print(f"    - {user.given_name} {user.family_name} ({user.subject_name_id}) : "
                          f"{user.summary()}{admin}", highlight=False)  # fmt: skip
        console.print(
            f"  En ligne de commande : uv run drimbox reports list --config "
            f"{folder / 'site-a' / 'drimbox.toml'}",
            highlight=False,
        )
        failed = any(r.state != ReportState.PUBLISHED.value for r in reports)
        if exit_after:
            return 1 if failed else 0
        console.print("Ctrl-C pour arrêter.")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        stack.close()
        await node_b.stop()
        await node_a.stop()
        console.print("Démonstration arrêtée.")


def _send_reports(port: int, config: Config) -> list[tuple[str, str, str]]:
    """The RIS of site A: each report to DRIMbox A (MLLP), and the CDA itself to the DMP."""
    results = []
    with RisClient("127.0.0.1", port) as ris, DmpClient(DmpSettings.from_config(config)) as dmp:
        for exam in DEMO_EXAMS:
            text, cda, report = demo_report(exam)
            result = ris.send(text)
            results.append((Path(exam.sample).name, result.code, result.text))
            # A second run finds the report already in the DMP.
            with contextlib.suppress(RuntimeError):
                publish_report_to_dmp(dmp, report, cda)
    return results


def _wait_settled(node: Node, timeout_s: float) -> list[Report]:
    deadline = time.monotonic() + timeout_s
    while True:
        with node.db.session() as session:
            reports = list(
                session.scalars(select(Report).where(Report.kind == "publish").order_by(Report.id))
            )
        if (reports and all(r.state in SETTLED for r in reports)) or time.monotonic() > deadline:
            return reports
        time.sleep(0.2)
