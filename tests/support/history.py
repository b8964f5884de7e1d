"""A patient with a long imaging history, for the prefetch tests and `bench/prefetch_order.py`.

Real components over real sockets: a Source node whose PACS is a real Orthanc holding N tiny
studies of the patient of exam C (each with a real KOS recorded as published by the node), every
KOS published to the DMP simulator (ITI-41 with the report's modality, region and date), the PSC
simulator with two radiologists, one test PKI and a whitelist signed at test time naming the
Source (`localhost`) and the Conso (`db-b.test.fr`), and a Conso node (role conso) whose users
sign in through the PSC simulator and launch the Conso in context.

The history: exam i (0 = the most recent, one every 100 days) cycles through CT head, MR head,
CT thorax, CR abdomen; the launch names exam `NAMED` (a CT thorax, not the most recent exam),
whose relevant priors are the other CT thorax exams.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from conso.test_history import settings_of
from drimbox.cda.model import Code
from drimbox.config import ExportDestinationConfig
from drimbox.db import Report
from drimbox.dmp.client import DmpClient
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.pki import Issued, TestPki
from drimbox.sim.psc import DEFAULT_USERS, RADIOLOGIST, LocalPsc, PscSimSettings
from drimbox.sim.studies import SeriesSpec
from drimbox.sim.whitelist import build_whitelist, issue_ans_signer, sign_whitelist
from support.dmp import DmpEnvironment, local_dmp
from support.factories import CR_C_INS, CR_C_INS_OID
from support.node import RIS_ORIGIN, RunningNode, network_environ, node_config
from support.source import PublishedStudy, publish_study
from support.trust import domain

DN_SOURCE = "CN=localhost,OU=300000001830001,O=SITE A,ST=Paris (75),C=FR"
DN_CONSO = "CN=db-b.test.fr,OU=300000001830002,O=SITE B,ST=Paris (75),C=FR"
DN_CONSO_2 = "CN=db-c.test.fr,OU=300000001830003,O=SITE C,ST=Paris (75),C=FR"
SECOND_RADIOLOGIST = replace(
    RADIOLOGIST, id="radiologue-2", subject_name_id="899700100022", given_name="Marc"
)
MODALITY = "1.2.840.10008.2.16.4"
SNOMED = "2.16.840.1.113883.6.96"
KINDS = (
    (Code("CT", MODALITY, "Computed Tomography"), Code("69536005", SNOMED, "Head")),
    (Code("MR", MODALITY, "Magnetic Resonance"), Code("69536005", SNOMED, "Head")),
    (Code("CT", MODALITY, "Computed Tomography"), Code("51185008", SNOMED, "Thorax")),
    (Code("CR", MODALITY, "Computed Radiography"), Code("818983003", SNOMED, "Abdomen")),
)
NAMED = 6  # a CT thorax; its priors of the same modality and region: 2, 10, 14, 18…
NEWEST = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)


@dataclass
class HistoryExam:
    index: int
    study: PublishedStudy
    modality: str
    region: str
    when: datetime

    @property
    def study_uid(self) -> str:
        return self.study.study_uid


@dataclass
class HistoryNetwork:
    source: RunningNode
    conso: RunningNode
    second_conso: RunningNode | None
    psc: LocalPsc
    dmp: DmpEnvironment
    exams: list[HistoryExam]
    tmp: Path
    ca_file: Path
    conso_certs: list[Issued]  # the Consos' certificates (db-b, db-c), for raw peer requests

    @property
    def named(self) -> HistoryExam:
        return self.exams[NAMED]

    def same_kind_as_named(self) -> list[HistoryExam]:
        """The named exam's relevant priors, most recent first."""
        named = self.named
        return [
            e
            for e in self.exams
            if e.index != NAMED and (e.modality, e.region) == (named.modality, named.region)
        ]


def _pki(folder: Path) -> tuple[TestPki, Issued, list[Issued], bytes]:
    pki = TestPki()
    source = pki.issue("localhost", usage="server", dns_names=("localhost", "127.0.0.1"),
                       organizational_unit="300000001830001", organization="SITE A",
                       state="Paris (75)").write(folder, "source")  # fmt: skip
    consos = [
        pki.issue(f"db-{site.lower()}.test.fr", usage="server",
                  dns_names=(f"db-{site.lower()}.test.fr", "127.0.0.1"),
                  organizational_unit=f"30000000183000{n}", organization=f"SITE {site}",
                  state="Paris (75)").write(folder, f"conso-{site}")
        for n, site in ((2, "B"), (3, "C"))
    ]  # fmt: skip
    whitelist = sign_whitelist(
        build_whitelist(
            [domain(1, db="localhost", operator_dn=DN_SOURCE),
             domain(2, db="db-b.test.fr", operator_dn=DN_CONSO),
             domain(3, db="db-c.test.fr", operator_dn=DN_CONSO_2)],
            datetime.now(UTC) - timedelta(minutes=1),
        ),
        issue_ans_signer(pki),
        [pki.ca.certificate],
    )  # fmt: skip
    return pki, source, consos, whitelist


@contextmanager
def long_history(
    orthanc: LocalOrthanc,
    tmp: Path,
    *,
    count: int = 40,
    series: tuple[SeriesSpec, ...] = (SeriesSpec("CT", "a", 2), SeriesSpec("CT", "b", 1)),
    size: int = 16,
    conso_environ: dict[str, str] | None = None,
    source_environ: dict[str, str] | None = None,
    second_conso: bool = False,
    export_destinations: Sequence[ExportDestinationConfig] = (),
) -> Iterator[HistoryNetwork]:
    """The network above with `count` exams of `series` (`size`² pixels) in the history; with
    `second_conso`, a second Conso node (another site, `db-c.test.fr`) reads the same Source;
    the Consos offer `export_destinations` besides their PACS."""
    orthanc.delete_all()
    pki, source_cert, conso_certs, whitelist = _pki(tmp / "pki")
    (tmp / "whitelist.xml").write_bytes(whitelist)
    ca = pki.ca.write(tmp / "pki", "ca")
    assert ca.cert_path is not None
    psc_settings = PscSimSettings(users=(*DEFAULT_USERS, SECOND_RADIOLOGIST))
    psc_sim = LocalPsc.with_mtls(tmp / "psc", pki, psc_settings)
    with local_dmp(tmp / "dmp", pki) as dmp, psc_sim as psc:
        common = network_environ(dmp, psc, tmp / "whitelist.xml", ca.cert_path)
        for name in ("a", "b", "c"):
            (tmp / name).mkdir(exist_ok=True)
        source_config = node_config(tmp / "a", orthanc, common | {
            "DRIMBOX_TRUST__STATE_DIR": str(tmp / "a" / "trust"),
            "DRIMBOX_TRUST__TLS_CERT": str(source_cert.cert_path),
            "DRIMBOX_TRUST__TLS_KEY": str(source_cert.key_path),
        } | (source_environ or {}))  # fmt: skip
        consos = [
            node_config(tmp / name, None, common | {
                "DRIMBOX_ROLES__SOURCE": "false",
                "DRIMBOX_ROLES__CONSO": "true",
                "DRIMBOX_TRUST__STATE_DIR": str(tmp / name / "trust"),
                "DRIMBOX_TRUST__TLS_CERT": str(cert.cert_path),
                "DRIMBOX_TRUST__TLS_KEY": str(cert.key_path),
            } | (conso_environ or {})).model_copy(
                update={"export_destinations": list(export_destinations)})
            for name, cert in zip(("b", "c"), conso_certs, strict=True)
        ]  # fmt: skip
        with (
            RunningNode(source_config) as source,
            RunningNode(consos[0]) as conso,
            contextlib.ExitStack() as more,
        ):
            second = more.enter_context(RunningNode(consos[1])) if second_conso else None
            port = urlsplit(source.peer_url).port
            exams = _publish_history(
                source, orthanc, dmp, tmp / "studies", count, series, size, port
            )
            yield HistoryNetwork(
                source, conso, second, psc, dmp, exams, tmp, ca.cert_path, conso_certs
            )
    orthanc.delete_all()


def _publish_history(
    source: RunningNode,
    orthanc: LocalOrthanc,
    dmp: DmpEnvironment,
    folder: Path,
    count: int,
    series: tuple[SeriesSpec, ...],
    size: int,
    port: int | None,
) -> list[HistoryExam]:
    exams: list[HistoryExam] = []
    with DmpClient(settings_of(dmp)) as client:
        for index in range(count):
            modality, region = KINDS[index % len(KINDS)]
            when = NEWEST - timedelta(days=100 * index)
            study = publish_study(
                source.node.db, orthanc, folder,
                [SeriesSpec(modality.code, s.description, s.count) for s in series],
                rows=size, columns=size, public_base_url=f"https://localhost:{port}",
                modalities=(modality,), regions=(region,), act_translations=(),
                service_start=when, service_stop=when + timedelta(minutes=20),
                effective_time=when + timedelta(hours=2),
            )  # fmt: skip
            assert study.report is not None
            with source.node.db.session() as session:
                row = session.get(Report, study.report_id)
                assert row is not None and row.kos is not None
                kos = row.kos
            client.publish_kos(study.report, kos, {})
            exams.append(HistoryExam(index, study, modality.code, region.display_name, when))
    return exams


FROM_RIS = {"Origin": RIS_ORIGIN}


def launch_form(**changes: str) -> dict[str, str]:
    """The RIS/DPI launch form for the patient of exam C (empty values dropped)."""
    fields = {
        "Patient.identifier.value": CR_C_INS,
        "Patient.identifier.system": f"urn:oid:{CR_C_INS_OID}",
        "Patient.name.family": "PAT-TROIS",
        "Patient.name.given": "DOMINIQUE",
        "Patient.gender": "F",
        "Patient.birthDate": "1979-03-28",
        "Address.district": "75056",
        "PatientID": "IPP-B-4242",
        "PatientIDIssuer": "1.2.250.1.999.2.1",
        "InformationEtOppositionConsultation": "true",
    }
    fields.update(changes)
    return {k: v for k, v in fields.items() if v}


@contextmanager
def signed_in_user(
    network: HistoryNetwork, user: str = "radiologue", conso: RunningNode | None = None
) -> Iterator[httpx.Client]:
    """A browser signed in to the Conso (or `conso`) through the PSC simulator as `user`."""
    node = conso or network.conso
    with httpx.Client(base_url=node.viewer_url, follow_redirects=True, timeout=120,
                      headers={"Origin": node.viewer_url}) as browser:  # fmt: skip
        browser.get("/connexion", params={"login_hint": user, "next": "/"})
        yield browser


def launch(browser: httpx.Client, **changes: str) -> tuple[str, httpx.Response]:
    """POST the launch form as the RIS would (from its declared origin); (launch URL, history
    page)."""
    page = browser.post("/lancement", data=launch_form(**changes), headers=FROM_RIS)
    assert page.status_code == 200 and "/consultation/" in str(page.url), page.text[:2000]
    return str(page.url).split("?")[0], page


def wait_prefetch(browser: httpx.Client, launch_url: str, timeout_s: float = 120) -> dict[str, Any]:
    """The `/etat` answer once no image job is waiting or running."""
    deadline = time.monotonic() + timeout_s
    while True:
        state: dict[str, Any] = browser.get(f"{launch_url}/etat").json()
        jobs = state["images"]
        if jobs and all(j["etat"] not in ("en_attente", "en_cours") for j in jobs.values()):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
