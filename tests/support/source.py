"""Builders for the image service tests: a published study (real files in a real Orthanc, a real
KOS in the report table), test tokens signed with keys made at run time, and a real HTTP server
on its own event-loop thread."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

from drimbox.auth.tokens import JwtVerifier
from drimbox.cda.model import Identifier, ImagingReport
from drimbox.db import Database, Report
from drimbox.db.engine import utcnow
from drimbox.db.models import Hl7Message, ReportState
from drimbox.dicom.kos import KosSite, build_manifest, manifest_to_bytes
from drimbox.dicom.pacs import PacsClient, PacsSettings
from drimbox.http.server import HttpServer
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.studies import SeriesSpec, generate_study_for_report
from support.factories import CR_C_ACCESSION, make_report
from support.tools import missing

ISSUER = "https://psc.test/auth/realms/esante-wallet"
AUDIENCE = "drimbox-source"
_counter = itertools.count(1)
_RUN = str(int(time.time() * 1000) % 10_000_000)


class Tokens:
    """An RSA key made at run time, its JWKS, and tokens signed with it."""

    def __init__(self, key: RSAKey | None = None) -> None:
        self.key = key or RSAKey.generate_key(2048, auto_kid=True)
        self.jwks = {"keys": [self.key.as_dict(private=False)]}

    def to_env(self) -> dict[str, str]:
        """The private key as an environment entry, for a server in another process."""
        return {"BENCH_TOKEN_KEY": json.dumps(self.key.as_dict(private=True))}

    @classmethod
    def from_env(cls, environ: dict[str, str]) -> Tokens:
        return cls(RSAKey.import_key(json.loads(environ["BENCH_TOKEN_KEY"])))

    def verifier(self) -> JwtVerifier:
        return JwtVerifier(self.jwks, issuer=ISSUER, audience=AUDIENCE)

    def issue(self, subject: str = "899700218896", ttl_s: int = 600, **claims: Any) -> str:
        now = int(time.time())
        payload = {"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + ttl_s}
        payload.update(claims)
        return jwt.encode({"alg": "RS256", "kid": self.key.kid}, payload, self.key)


@dataclass
class PublishedStudy:
    study_uid: str
    accession: str
    document_id: str
    kos_uid: str
    report_id: int
    series_uids: list[str]
    files: list[Path]
    by_series: dict[str, list[Path]] = field(default_factory=dict)
    report: ImagingReport | None = None


def unique_study_uid() -> str:
    return f"1.2.826.0.1.3680043.8.498.77.5.{_RUN}.{next(_counter)}"


def publish_study(
    db: Database,
    orthanc: LocalOrthanc,
    out_dir: Path,
    series: list[SeriesSpec],
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    rows: int = 64,
    columns: int = 64,
    state: str = ReportState.PUBLISHED.value,
    public_base_url: str = "https://db.site-a.test",
    **report_fields: Any,
) -> PublishedStudy:
    """Generate a study, store it in Orthanc, build its KOS and record a published report
    (`report_fields`: the report's modalities, regions, date…)."""
    study_uid = unique_study_uid()
    number = next(_counter)
    accession = f"ACN{number}"
    report = make_report(
        study_instance_uid=study_uid,
        accession_number=Identifier(root=CR_C_ACCESSION.root, extension=accession),
        **report_fields,
    )
    files = generate_study_for_report(
        out_dir / study_uid,
        report,
        series,
        rows=rows,
        columns=columns,
        transfer_syntax=transfer_syntax,
    )
    orthanc.store_files(files)
    kos_uid, report_id = _record_published(
        db, orthanc, report, accession, number, state, public_base_url
    )
    series_uids: list[str] = []
    by_series: dict[str, list[Path]] = {}
    for path in files:
        uid = str(dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
        if uid not in by_series:
            series_uids.append(uid)
        by_series.setdefault(uid, []).append(path)
    return PublishedStudy(
        study_uid=study_uid,
        accession=accession,
        document_id=f"{report.document_id.root}.{number}",
        kos_uid=kos_uid,
        report_id=report_id,
        series_uids=series_uids,
        files=files,
        by_series=by_series,
        report=report,
    )


def publish_existing(db: Database, orthanc: LocalOrthanc, report: ImagingReport) -> tuple[str, str]:
    """Record a published report for a study already in Orthanc: (study UID, KOS UID)."""
    number = next(_counter)
    accession = report.accession_number.extension if report.accession_number else ""
    kos_uid, _ = _record_published(
        db, orthanc, report, accession, number, ReportState.PUBLISHED.value, "https://db.test"
    )
    return report.study_instance_uid, kos_uid


def _record_published(
    db: Database,
    orthanc: LocalOrthanc,
    report: ImagingReport,
    accession: str,
    number: int,
    state: str,
    public_base_url: str,
) -> tuple[str, int]:
    study_uid = report.study_instance_uid
    pacs = PacsClient(
        PacsSettings(host="127.0.0.1", port=orthanc.dicom_port, called_aet=orthanc.aet)
    )
    snapshot = pacs.snapshot(study_uid)
    assert snapshot is not None
    site = KosSite(
        uid_root="1.2.250.1.999.77", public_base_url=public_base_url, institution_name="Site A"
    )
    kos = build_manifest(report, snapshot, site)
    document_id = f"{report.document_id.root}.{number}"
    with db.session() as session:
        message = Hl7Message(
            received_at=utcnow(),
            peer="test",
            control_id=f"T{number}",
            message_type="ORU^R01",
            size_bytes=1,
            raw=b"x",
            ack_code="AA",
        )
        session.add(message)
        session.flush()
        row = Report(
            message_id=message.id,
            received_at=utcnow(),
            updated_at=utcnow(),
            kind="publish",
            patient_ins=report.patient.ins,
            study_uid=study_uid,
            accession=accession,
            document_id=document_id,
            state=state,
            kos_sop_uid=str(kos.SOPInstanceUID),
            kos=manifest_to_bytes(kos),
            kos_instance_count=snapshot.instance_count,
            published_at=utcnow(),
        )
        session.add(row)
        session.flush()
        report_id = row.id
    return str(kos.SOPInstanceUID), report_id


def set_state(db: Database, report_id: int, state: str) -> None:
    with db.session() as session:
        report = session.get(Report, report_id)
        assert report is not None
        report.state = state


class LoopThread:
    """An asyncio loop on its own thread, as the node runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextmanager
def serving(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Run `app` with the node's `HttpServer` on a free port; yields its base URL."""
    loop = LoopThread()
    server = HttpServer(app, host, 0)
    loop.run(server.start())
    try:
        yield server.url
    finally:
        loop.run(server.stop())
        loop.close()


def pacs_environ(pacs: LocalOrthanc, box_aet: str, scp_port: int) -> dict[str, str]:
    """The `[pacs]` settings (as environment) of a box retrieving from `pacs` by every method:
    its AE title `box_aet`, its C-MOVE SCP on `scp_port`, the PACS's DICOMweb, and the dcmtk
    storescp's port when `pacs` knows it (`orthanc_moving_to`)."""
    environ = {
        "DRIMBOX_PACS__HOST": "127.0.0.1",
        "DRIMBOX_PACS__PORT": str(pacs.dicom_port),
        "DRIMBOX_PACS__CALLED_AET": pacs.aet,
        "DRIMBOX_PACS__CALLING_AET": box_aet,
        "DRIMBOX_PACS__SCP_PORT": str(scp_port),
        "DRIMBOX_PACS__DICOMWEB_URL": pacs.dicomweb_url,
    }
    storescp = pacs.modalities.get("drimbox-dcmtk")
    if storescp is not None:
        environ["DRIMBOX_PACS__STORESCP_AET"] = storescp.aet
        environ["DRIMBOX_PACS__STORESCP_PORT"] = str(storescp.port)
    return environ


@contextmanager
def orthanc_moving_to(aet: str, box_aet: str, scp_port: int) -> Iterator[LocalOrthanc]:
    """An Orthanc that knows the box's SCP (`box_aet` on `scp_port`) as a C-MOVE destination,
    and the box's dcmtk storescp (`c-move-dcmtk`, default AE title, a free port) as another."""

    from drimbox.config import PacsConfig
    from drimbox.sim.orthanc import RemoteModality, orthanc_available
    from drimbox.sim.ports import free_port

    if not orthanc_available():
        missing("Orthanc not installed (Debian packages orthanc, orthanc-dicomweb)")
    modalities = {
        "drimbox": RemoteModality(box_aet, "127.0.0.1", scp_port),
        "drimbox-dcmtk": RemoteModality(PacsConfig().storescp_aet, "127.0.0.1", free_port()),
    }
    with LocalOrthanc(aet=aet, modalities=modalities) as orthanc:
        yield orthanc


def store_ct_pair(orthanc: LocalOrthanc, folder: Path, big_study: str, small_study: str) -> None:
    """Stores in `orthanc` the lean DIMSE paths' test studies: `big_study`, 4 uncompressed
    512×512 CT images (each several 64 KiB PDUs), and `small_study`, 6 JPEG-LS 64×64 ones."""
    from drimbox.sim.studies import generate_study

    for study, syntax, size, count in (
        (big_study, ExplicitVRLittleEndian, 512, 4),
        (small_study, JPEGLSLossless, 64, 6),
    ):
        orthanc.store_files(
            generate_study(
                folder / study, patient_id="IPP1818", patient_name="LÉGER^ÉLODIE",
                birth_date="19850412", sex="F", study_uid=study, accession="ACN1818",
                series=[SeriesSpec("CT", "Thorax", count)], rows=size, columns=size,
                transfer_syntax=syntax,
            )
        )  # fmt: skip
