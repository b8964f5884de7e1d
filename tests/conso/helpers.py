"""Builders of the Conso tests: a test IGC-Santé with a signed whitelist naming a Source box
(db1), the Conso's own mutual-TLS certificate, and a generated study with its real KOS."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydicom import dcmread

from drimbox.cda.model import Identifier, ImagingReport
from drimbox.conso.history import Manifest, read_manifest
from drimbox.dicom.kos import KosSite, build_manifest, manifest_to_bytes
from drimbox.dicom.model import InstanceRef, SeriesSnapshot, StudySnapshot
from drimbox.sim.pki import Issued, TestPki
from drimbox.sim.studies import SeriesSpec, generate_study_for_report
from drimbox.sim.whitelist import issue_ans_signer
from drimbox.trust.whitelist import Domain, Whitelist, verify_whitelist
from support.factories import CR_C_ACCESSION, make_report
from support.trust import Ans, domain

SOURCE_HOST = "db1.test.mesimagesmedicales.fr"
UNLISTED_HOST = "db9.test.mesimagesmedicales.fr"
UID_ROOT = "1.2.250.1.999.77"


@dataclass
class Trust:
    whitelist: Whitelist
    ca_file: Path
    source: Issued  # the Source's server certificate: DN of db1, SAN db1
    impostor: Issued  # SAN of db1, DN of an unlisted box
    conso: Issued  # the Conso's client certificate (db2, listed)
    source_domain: Domain


def _issue(pki: TestPki, entry: Domain, folder: Path, name: str, **kwargs: object) -> Issued:
    dn = {k: v for k, _, v in (p.partition("=") for p in entry.operator_dn.split(","))}
    issued = pki.issue(
        dn["CN"],
        organizational_unit=dn["OU"],
        organization=dn["O"],
        state=dn["ST"],
        **kwargs,  # type: ignore[arg-type]
    )
    return issued.write(folder, name)


def build_trust(folder: Path) -> Trust:
    root = TestPki("TEST AC RACINE IGC-SANTE ELEMENTAIRE")
    intermediate = root.intermediate("TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS")
    ans = Ans(root, intermediate, issue_ans_signer(intermediate))
    db1, db2, db9 = domain(1), domain(2), domain(9)
    xml = ans.signed_list([db1, db2], datetime.now(UTC) - timedelta(minutes=1))
    pki = TestPki("AC IGC-SANTE TEST")
    sans = (SOURCE_HOST, UNLISTED_HOST, "127.0.0.1")
    ca = pki.ca.write(folder, "ca")
    assert ca.cert_path is not None
    return Trust(
        whitelist=verify_whitelist(xml, [root.root]),
        ca_file=ca.cert_path,
        source=_issue(pki, db1, folder, "source", usage="server", dns_names=sans),
        impostor=_issue(pki, db9, folder, "impostor", usage="server", dns_names=sans),
        conso=_issue(pki, db2, folder, "conso", usage="auth"),
        source_domain=db1,
    )


@dataclass
class Study:
    report: ImagingReport
    files: list[Path]
    by_sop: dict[str, Path]
    by_series: dict[str, list[Path]]
    kos: bytes
    manifest: Manifest


def snapshot_of(report: ImagingReport, files: list[Path]) -> StudySnapshot:
    """What a PACS holding `files` would answer to C-FIND (no PACS needed to build the KOS)."""
    series: dict[str, list[InstanceRef]] = {}
    first = dcmread(files[0], stop_before_pixels=True)
    modality: dict[str, str] = {}
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        series.setdefault(str(ds.SeriesInstanceUID), []).append(
            InstanceRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID), int(ds.InstanceNumber))
        )
        modality[str(ds.SeriesInstanceUID)] = str(ds.Modality)
    return StudySnapshot(
        study_instance_uid=report.study_instance_uid,
        patient_id=str(first.PatientID),
        issuer_of_patient_id=str(first.get("IssuerOfPatientID", "")),
        other_patient_ids=(),
        patient_name=str(first.PatientName),
        patient_birth_date=str(first.PatientBirthDate),
        patient_sex=str(first.PatientSex),
        accession_number=str(first.AccessionNumber),
        study_date=str(first.StudyDate),
        study_time=str(first.StudyTime),
        study_description=str(first.get("StudyDescription", "")),
        study_id="1",
        referring_physician_name="",
        series=tuple(
            SeriesSnapshot(uid, modality[uid], n, "", tuple(refs))
            for n, (uid, refs) in enumerate(series.items(), start=1)
        ),
    )


def make_study(
    folder: Path,
    *,
    study_uid: str = "1.2.826.0.1.3680043.8.498.77.9.1",
    accession: str = "ACN901",
    base_url: str = f"https://{SOURCE_HOST}",
    series: tuple[SeriesSpec, ...] = (SeriesSpec("CT", "Crâne", 3), SeriesSpec("CT", "Injecté", 2)),
    report: ImagingReport | None = None,
) -> Study:
    """A study of exam C's patient (or of `report`), its files and its KOS."""
    report = report or make_report(
        study_instance_uid=study_uid,
        accession_number=Identifier(root=CR_C_ACCESSION.root, extension=accession),
    )
    files = generate_study_for_report(folder, report, series, rows=32, columns=32)
    site = KosSite(uid_root=UID_ROOT, public_base_url=base_url, institution_name="Site A")
    kos = manifest_to_bytes(build_manifest(report, snapshot_of(report, files), site))
    by_sop: dict[str, Path] = {}
    by_series: dict[str, list[Path]] = {}
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        by_sop[str(ds.SOPInstanceUID)] = path
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(path)
    return Study(report, files, by_sop, by_series, kos, read_manifest(kos))
