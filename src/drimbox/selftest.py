"""`drimbox selftest`: the box's parsers and builders run against the official ANS samples.

The first thing an editor runs before homologation: each check reads one bundled sample (or a
copy given with `--samples`), runs the product code on it and compares with what the ANS data
says. A corrupted or altered sample fails its check, naming the file.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lxml import etree

from drimbox.cda import parse_report
from drimbox.dicom.kos import KosSite, build_manifest, manifest_from_bytes, manifest_to_bytes
from drimbox.dicom.model import InstanceRef, SeriesSnapshot, StudySnapshot
from drimbox.dmp.metadata import parse_document_entries
from drimbox.hl7.message import parse_report_message
from drimbox.http.accept import parse_accept, syntax_acceptance
from drimbox.samples import ANS_DIR
from drimbox.trust.whitelist import WhitelistError, verify_whitelist

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"

# Sample → (kind, study UID, accession) as the ANS datasets define them.
HL7_EXPECTED = {
    "hl7/CR_C-ORU.hl7": ("publish", "1.2.250.1.213.4.5.2.1.103", "ACN103"),
    "hl7/CR_G1-ORU.hl7": ("publish", "1.2.250.1.213.4.5.2.1.108", "ACN108"),
    "hl7/CR_G1_MAJ-MDM.hl7": ("update", "1.2.250.1.213.4.5.2.1.108", "ACN108"),
    "hl7/CR_C_Depublication-ORU.hl7": ("withdraw", "1.2.250.1.213.4.5.2.1.103", "ACN103"),
    "hl7/CR_C_Depublication-MDM.hl7": ("withdraw", "1.2.250.1.213.4.5.2.1.103", "ACN103"),
    "hl7/CR_W_Suppression-OMI.hl7": ("withdraw_exam", "1.2.250.1.213.4.5.2.1.124", "ACN124"),
}


@dataclass(frozen=True)
class CheckResult:
    name: str
    file: str
    ok: bool
    detail: str


class CheckFailed(Exception):
    pass


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def check_hl7(folder: Path, relative: str) -> str:
    kind, study, accession = HL7_EXPECTED[relative]
    message = parse_report_message((folder / relative).read_bytes().decode("utf-8"))
    _expect(message.kind == kind, f"type {message.kind} au lieu de {kind}")
    _expect(message.patient_ins == "279035121518989", f"INS lu : {message.patient_ins}")
    found_study = (
        message.report.study_instance_uid if message.report else message.study_instance_uid
    )
    _expect(found_study == study, f"StudyInstanceUID lu : {found_study}")
    found_accession = (
        message.report.accession_number.extension
        if message.report and message.report.accession_number
        else message.accession_number
    )
    _expect(found_accession == accession, f"numéro d'accès lu : {found_accession}")
    return f"{message.message_type}, {kind}, INS et examen conformes"


def check_cda(folder: Path) -> str:
    report = parse_report((folder / "cda/CR_C.xml").read_bytes())
    _expect(report.document_id.root == "1.2.250.1.213.4.5.4.403", "identifiant du document")
    _expect(report.patient.ins == "279035121518989", "INS du patient")
    _expect(report.study_instance_uid == "1.2.250.1.213.4.5.2.1.103", "StudyInstanceUID")
    _expect(bool(report.modalities), "modalité absente")
    return f"CR {report.document_id.root}, {report.patient.name.to_dicom()}"


def sample_kos(folder: Path = ANS_DIR) -> bytes:
    """The Part-10 KOS the box builds for the official exam C (one CT instance)."""
    report = parse_report((folder / "cda/CR_C.xml").read_bytes())
    uid = report.study_instance_uid
    study = StudySnapshot(
        study_instance_uid=uid, patient_id=report.patient.ins,
        issuer_of_patient_id="ASIP-SANTE-INS-NIR", other_patient_ids=(),
        patient_name=report.patient.name.to_dicom(),
        patient_birth_date=report.patient.birth_date.strftime("%Y%m%d")
        if report.patient.birth_date else "",
        patient_sex=report.patient.sex,
        accession_number=report.accession_number.extension if report.accession_number else "",
        study_date="", study_time="", study_description="Examen C", study_id="",
        referring_physician_name="",
        series=(SeriesSnapshot(f"{uid}.1", "CT", 1, "", (
            InstanceRef("1.2.840.10008.5.1.4.1.1.2", f"{uid}.1.1", 1),)),),
    )  # fmt: skip
    site = KosSite(uid_root="1.2.250.1.999.9", public_base_url="https://db.exemple.fr",
                   institution_name="Autotest")  # fmt: skip
    return manifest_to_bytes(build_manifest(report, study, site))


# Paths (keywords joined by ">") of the official dump that the box's KOS leaves out on purpose.
KOS_DUMP_ONLY = (
    # Optional (type 3) attributes the box has no source for.
    "OtherPatientNames",
    "PatientComments",
    "TimezoneOffsetFromUTC",
    # Outside the standard's reference macros (SOP Instance / Series Reference): the dump adds
    # instance and series numbers there, and even a second KOS inside a SOP reference.
    "ContentSequence>ReferencedSOPSequence>InstanceNumber",
    "CurrentRequestedProcedureEvidenceSequence>ReferencedSeriesSequence>SeriesNumber",
    "CurrentRequestedProcedureEvidenceSequence>ReferencedSeriesSequence>ReferencedSOPSequence>",
)
# Values that are DRIM-M's (codes, code systems, identifier types), not the site's: equal in the
# box's KOS and in the dump.
KOS_SAME_VALUES = (
    "SOPClassUID",
    "Modality",
    "ValueType",
    "ContinuityOfContent",
    "ConceptNameCodeSequence>CodeValue",
    "ConceptNameCodeSequence>CodingSchemeDesignator",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence>UniversalEntityID",
    "IssuerOfPatientIDQualifiersSequence>UniversalEntityIDType",
    "OtherPatientIDsSequence>TypeOfPatientID",
    "ReferencedRequestSequence>IssuerOfAccessionNumberSequence>UniversalEntityIDType",
    "ContentSequence>RelationshipType",
    "ContentSequence>ConceptNameCodeSequence>CodeValue",
    "ContentSequence>ConceptNameCodeSequence>CodingSchemeDesignator",
)


def _dump_structure(node: etree._Element, prefix: str = "") -> dict[str, set[str]]:
    """Every path of a dcm2xml dump with the values found there."""
    found: dict[str, set[str]] = {}
    for child in node:
        if child.tag not in ("element", "sequence"):
            continue
        path = f"{prefix}{child.get('name')}"
        found.setdefault(path, set())
        if child.tag == "element":
            found[path].add((child.text or "").strip())
        for item in child.iterfind("item"):
            for sub, values in _dump_structure(item, f"{path}>").items():
                found.setdefault(sub, set()).update(values)
    return found


def _kos_structure(dataset: Any, prefix: str = "") -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for element in dataset:
        path = f"{prefix}{element.keyword or element.tag}"
        found.setdefault(path, set())
        if element.VR == "SQ":
            for item in element.value:
                for sub, values in _kos_structure(item, f"{path}>").items():
                    found.setdefault(sub, set()).update(values)
        else:
            found[path].add(str(element.value).strip())
    return found


def kos_differences(built: Any, dump: etree._Element) -> list[str]:
    """How the box's KOS departs from the official dump's structure (modules, sequences and
    their attributes) and DRIM-M values (codes, code systems); empty when it does not."""
    ours, theirs = _kos_structure(built), _dump_structure(dump)
    missing = sorted(
        path for path in theirs
        if path not in ours and not any(path.startswith(skip) for skip in KOS_DUMP_ONLY)
    )  # fmt: skip
    problems = [f"absent du KOS construit : {path}" for path in missing]
    for path in KOS_SAME_VALUES:
        if path in theirs and ours.get(path, set()) - theirs[path]:
            problems.append(
                f"{path} : {sorted(ours.get(path, set()))} au lieu de {sorted(theirs[path])}"
            )
    return problems


def check_kos(folder: Path) -> str:
    """A KOS built by the box for exam C round-trips, carries what DRIM-M requires and has the
    structure and codes of the official dump (informatif/Manifest_KOS_dump.xml)."""
    kos = manifest_from_bytes(sample_kos(folder))
    _expect(kos.SOPClassUID == KOS_CLASS, "classe SOP")
    _expect(kos.ConceptNameCodeSequence[0].CodeValue == "113030", "titre 113030 Manifest")
    series = kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    _expect(str(series.RetrieveURL).startswith("https://db.exemple.fr/dicom-web-rs/"), "URL")
    dump = etree.parse(str(folder / "informatif/Manifest_KOS_dump.xml")).find("data-set")
    _expect(dump is not None, "dump dcm2xml illisible (pas de data-set)")
    assert dump is not None
    differences = kos_differences(kos, dump)
    _expect(not differences, "KOS différent du KOS de référence : " + " ; ".join(differences))
    return "KOS construit et relu (113030, RetrieveURL), structure et codes du KOS de référence"


def check_xds(folder: Path) -> str:
    tree = etree.parse(str(folder / "validators/XDS.xml"))
    lists = tree.findall(f".//{{{RIM}}}RegistryObjectList")
    _expect(len(lists) == 1, "RegistryObjectList absente")
    entries = parse_document_entries(lists[0])
    kinds = sorted(entry.mime_type for entry in entries)
    _expect(kinds == ["application/dicom", "text/xml"], f"documents : {kinds}")
    kos = next(entry for entry in entries if entry.mime_type == "application/dicom")
    _expect(kos.patient_id.endswith("&1.2.250.1.213.1.4.10&ISO^NH"), "patientId")
    _expect(kos.type_code is not None and kos.type_code.code == "IMG-KOS", "typeCode IMG-KOS")
    return f"{len(entries)} documents (KOS + signature), métadonnées lues"


def check_xdm_source(folder: Path) -> str:
    """The Source's XDM archive of exam C (its KOS and report) is read back by the import's
    checks: hashes, sizes, patient ids, KOS of the report's study."""
    import io
    import zipfile

    from drimbox.conso.archive import read_published
    from drimbox.conso.xdm import XdmLimits
    from drimbox.db import Report
    from drimbox.source.xdm import write_subset

    cda = (folder / "cda/CR_C.xml").read_bytes()
    kos, now = sample_kos(folder), datetime.now(UTC)
    report = parse_report(cda)
    row = Report(
        kind="publish", cda=cda, kos=kos, kos_sop_uid=str(manifest_from_bytes(kos).SOPInstanceUID),
        study_uid=report.study_instance_uid, document_id=report.document_id.root,
        flags={"MASQUE_PS": False}, dmp_entry_uuid="urn:uuid:0b5e1f0c-1e5a-4c1f-9e4e-000000000001",
        published_at=now,
    )  # fmt: skip
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        write_subset(zf, "KA202601/IHE_XDM/SS000001", 1, [row], None, "1.2.250.1.999.9", now)
    [restored] = read_published(io.BytesIO(buffer.getvalue()), XdmLimits())
    _expect(restored.kos_bytes == kos, "KOS relu différent")
    _expect(restored.entry_uuid == row.dmp_entry_uuid, "identifiant d'entrée DMP perdu")
    _expect(len(restored.reports) == 1, "compte rendu absent")
    return "KOS et CR écrits (KAaaaamm/IHE_XDM/SS000001) et relus par les contrôles d'import"


def _signing_time(data: bytes) -> datetime | None:
    """An official sample is a fixed file: it is checked as of its own signing time, so that the
    selftest proves the verifier, not the calendar (its signer expires in 2029)."""
    found = re.search(rb"<xades:SigningTime>\s*([0-9T:Z+.-]+)\s*<", data)
    if found is None:
        return None
    try:
        return datetime.fromisoformat(found.group(1).decode("ascii"))
    except ValueError:
        return None


def check_whitelist(folder: Path, relative: str, signed: bool) -> str:
    data = (folder / relative).read_bytes()
    from cryptography import x509

    anchors: list[x509.Certificate] = []
    if signed:
        root = etree.fromstring(data)
        for element in root.iter("{http://www.w3.org/2000/09/xmldsig#}X509Certificate"):
            import base64

            anchors.append(x509.load_der_x509_certificate(base64.b64decode(element.text or "")))
    try:
        whitelist = verify_whitelist(data, anchors, now=_signing_time(data))
    except WhitelistError as exc:
        _expect(not signed, f"liste refusée : {exc.message}")
        return f"liste non signée refusée comme attendu ({exc.message})"
    _expect(signed, "une liste non signée a été acceptée")
    return f"signature valide, {len(whitelist.domains)} domaines"


def check_wado_request(folder: Path) -> str:
    lines = (folder / "validators/wado-rs-series-request.txt").read_text().splitlines()
    accept = next(line for line in lines if line.lower().startswith("accept:"))
    ranges = parse_accept(accept.split(":", 1)[1])
    acceptance = syntax_acceptance(ranges)
    _expect(acceptance.accepts(JPEG_LS_LOSSLESS), "JPEG-LS sans perte non accepté")
    headers = {line.split(":", 1)[0].strip().lower() for line in lines[1:] if ":" in line}
    _expect({"authorization", "kos-sopinstanceuid"} <= headers, "en-têtes DRIM-M absents")
    return f"{len(ranges)} types acceptés, en-têtes Authorization et KOS-SOPInstanceUID"


def checks(folder: Path) -> list[tuple[str, str, Callable[[], str]]]:
    def hl7_check(relative: str) -> Callable[[], str]:
        return lambda: check_hl7(folder, relative)

    found: list[tuple[str, str, Callable[[], str]]] = [
        ("Message HL7 v2", relative, hl7_check(relative)) for relative in HL7_EXPECTED
    ]
    found += [
        ("CR CDA R2 N1", "cda/CR_C.xml", lambda: check_cda(folder)),
        ("Manifeste KOS", "informatif/Manifest_KOS_dump.xml", lambda: check_kos(folder)),
        ("Métadonnées XDS (ITI-41)", "validators/XDS.xml", lambda: check_xds(folder)),
        ("Liste blanche signée", "whitelist/LISTEBLANCHE_DRIM-M_SIGNEE_TEST.xml",
         lambda: check_whitelist(folder, "whitelist/LISTEBLANCHE_DRIM-M_SIGNEE_TEST.xml", True)),
        ("Liste blanche non signée", "whitelist/LISTEBLANCHE_DRIM-M_NONSIGNEE_TEST.xml",
         lambda: check_whitelist(folder, "whitelist/LISTEBLANCHE_DRIM-M_NONSIGNEE_TEST.xml",
                                 False)),
        ("Requête WADO-RS", "validators/wado-rs-series-request.txt",
         lambda: check_wado_request(folder)),
        ("Archive XDM de la Source", "cda/CR_C.xml", lambda: check_xdm_source(folder)),
    ]  # fmt: skip
    return found


def run_selftest(folder: Path = ANS_DIR) -> list[CheckResult]:
    results = []
    for name, relative, check in checks(folder):
        try:
            detail = check()
            results.append(CheckResult(name, relative, True, detail))
        except CheckFailed as exc:
            results.append(CheckResult(name, relative, False, str(exc)))
        except FileNotFoundError:
            results.append(CheckResult(name, relative, False, "fichier absent"))
        except Exception as exc:  # noqa: BLE001 - any parser error is a failed check, named
            last = traceback.format_exception_only(exc)[-1].strip()
            results.append(CheckResult(name, relative, False, last[:300]))
    return results
