"""The KOS manifest builder (DICOM Key Object Selection Document, IHE XDS-I.b / DRIM-M).

Owns the identity check between a CDA report and what the PACS holds (`check_identity`), the
building of the manifest from an `ImagingReport` and a `StudySnapshot` (`build_manifest`, via
highdicom's `KeyObjectSelectionDocument`), its Part-10 encoding and a readable summary. Every
attribute is set while building, including each series' RetrieveURL: callers never patch the
result. It must not query the PACS, sign or publish anything (the DMP client does), and it never
builds a manifest whose patient/study/accession disagree with the report (identity safety).
"""

from __future__ import annotations

import re
import struct
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO

import highdicom as hd
from pydicom import dcmread
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import drimbox
from drimbox.cda.model import ImagingReport, Patient
from drimbox.dicom.model import InstanceRef, SeriesSnapshot, StudySnapshot, is_uid

KOS_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.59"
MANIFEST_TITLE = ("113030", "DCM", "Manifest")

# IssuerOfPatientID for each INS OID. The DRIM-M homologation data (HL7 PID-3 and the reference
# KOS) use the national namespace names for the test OIDs too.
INS_ISSUERS: dict[str, str] = {
    "1.2.250.1.213.1.4.8": "ASIP-SANTE-INS-NIR",
    "1.2.250.1.213.1.4.9": "ASIP-SANTE-INS-NIA",
    "1.2.250.1.213.1.4.10": "ASIP-SANTE-INS-NIR",
    "1.2.250.1.213.1.4.11": "ASIP-SANTE-INS-NIA",
}

# SOP classes that are not images: referenced as COMPOSITE (not IMAGE) content items, like the
# reference DRIM-M KOS does for a KO instance. Prefix match on the SOP Class UID.
_NON_IMAGE_SOP_CLASS_PREFIXES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, KOS
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF / CDA / STL…
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, registrations, segmentations' surfaces
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT structure set
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT plan
)

# Room left for the hash digits after the root: 64 - 44 = 20 digits (~66 bits), plenty to keep
# UIDs derived from different inputs apart.
_MAX_UID_ROOT_LENGTH = 43
_UID_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def _default_software_version() -> str:
    return str(getattr(drimbox, "__version__", "0.1.0"))


class KosError(Exception):
    """The manifest cannot be built (bad site settings, empty study…)."""


class IdentityMismatch(KosError):
    """The PACS study and the report disagree: the manifest must not be built nor published."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = list(reasons)
        super().__init__("PACS images and report disagree: " + "; ".join(self.reasons))


@dataclass(frozen=True)
class KosSite:
    """What the site contributes to its manifests.

    - `uid_root`: the site's registered OID root; the KOS series and instance UIDs are derived
      under it (at most 43 characters, so that 20 hash digits fit in a 64-character UID).
    - `public_base_url`: the Source's public base URL; each series' RetrieveURL is
      `<public_base_url>/dicom-web-rs/studies/<study>/series/<series>`.
    - `retrieve_location_uid`: optional UID naming the site as a retrieve location.
    """

    uid_root: str
    public_base_url: str
    institution_name: str
    retrieve_location_uid: str | None = None
    manufacturer: str = "DRIMbox"
    software_version: str = _default_software_version()
    series_number: int = 1
    instance_number: int = 1
    series_description: str = "DRIM-M manifest"

    def __post_init__(self) -> None:
        if not _UID_ROOT_RE.match(self.uid_root):
            raise KosError(f"uid_root {self.uid_root!r} is not a valid OID (digits and dots)")
        if len(self.uid_root) > _MAX_UID_ROOT_LENGTH:
            raise KosError(
                f"uid_root {self.uid_root!r} is {len(self.uid_root)} characters long; at most "
                f"{_MAX_UID_ROOT_LENGTH} leave room for the generated part of 64-character UIDs"
            )
        if not self.public_base_url.startswith(("https://", "http://")):
            raise KosError(f"public_base_url {self.public_base_url!r} must be an http(s) URL")
        if self.retrieve_location_uid is not None and not _UID_ROOT_RE.match(
            self.retrieve_location_uid
        ):
            raise KosError(f"retrieve_location_uid {self.retrieve_location_uid!r} is not a UID")
        if self.series_number < 1 or self.instance_number < 1:
            raise KosError("series_number and instance_number must be positive")

    def retrieve_url(self, study_uid: str, series_uid: str) -> str:
        base = self.public_base_url.rstrip("/")
        return f"{base}/dicom-web-rs/studies/{study_uid}/series/{series_uid}"


# ---------------------------------------------------------------------------------------------
# Identity check


def _fold(text: str) -> str:
    """Case-, accent- and separator-insensitive form of a family name."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.split(r"[\s\-'’]+", stripped.casefold())).strip()


def _pacs_family_name(dicom_name: str) -> str:
    # PN may carry ideographic/phonetic groups after '='; the family name is the first component.
    return dicom_name.split("=", 1)[0].split("^", 1)[0].strip()


def _dicom_sex(sex: str) -> str:
    return {"M": "M", "F": "F", "U": "O"}.get(sex.upper(), "")


def check_identity(report: ImagingReport, study: StudySnapshot) -> list[str]:
    """Reasons why the PACS study may not be the report's study (empty list: consistent).

    Checked: study UID; accession (when both have one); the PACS PatientID (or one of its other
    ids) is the INS or the IPP; birth date, sex (M/F) and family name when the PACS has them.
    """
    reasons: list[str] = []
    if report.study_instance_uid != study.study_instance_uid:
        reasons.append(
            f"StudyInstanceUID differs: report {report.study_instance_uid}, "
            f"PACS {study.study_instance_uid}"
        )
    report_accession = report.accession_number.extension if report.accession_number else ""
    if report_accession and study.accession_number and report_accession != study.accession_number:
        reasons.append(
            f"accession number differs: report {report_accession}, PACS {study.accession_number}"
        )

    patient = report.patient
    report_ids = {patient.ins} | ({patient.ipp.extension} if patient.ipp else set())
    report_ids.discard("")
    pacs_ids = {study.patient_id, *study.other_patient_ids}
    pacs_ids.discard("")
    if not report_ids & pacs_ids:
        reasons.append(
            f"patient differs: PACS PatientID {study.patient_id or '(empty)'}"
            + (
                f" (other ids {', '.join(study.other_patient_ids)})"
                if study.other_patient_ids
                else ""
            )
            + f" is neither the INS {patient.ins}"
            + (f" nor the IPP {patient.ipp.extension}" if patient.ipp else "")
        )
    if study.patient_birth_date and patient.birth_date:
        report_birth = patient.birth_date.strftime("%Y%m%d")
        if study.patient_birth_date != report_birth:
            reasons.append(
                f"birth date differs: report {report_birth}, PACS {study.patient_birth_date}"
            )
    report_sex = patient.sex.upper()
    pacs_sex = study.patient_sex.upper()
    if report_sex in ("M", "F") and pacs_sex in ("M", "F") and report_sex != pacs_sex:
        reasons.append(f"sex differs: report {report_sex}, PACS {pacs_sex}")
    pacs_family = _pacs_family_name(study.patient_name)
    if pacs_family and patient.name.family and _fold(pacs_family) != _fold(patient.name.family):
        reasons.append(f"family name differs: report {patient.name.family}, PACS {pacs_family}")
    return reasons


# ---------------------------------------------------------------------------------------------
# Building


def _is_image(ref: InstanceRef) -> bool:
    return not ref.sop_class_uid.startswith(_NON_IMAGE_SOP_CLASS_PREFIXES)


def _derived_uid(
    site: KosSite, role: str, report: ImagingReport, study: StudySnapshot, variant: str = ""
) -> str:
    """Same report version + same PACS content → same UID; anything else → a new one.
    `variant` tells apart a KOS re-issued for the same content (a confidentiality change)."""
    instances = sorted(i.sop_instance_uid for s in study.series for i in s.instances)
    sources = [
        "drimbox-kos",
        role,
        report.document_id.root,
        report.document_id.extension,
        study.study_instance_uid,
        *instances,
        *([variant] if variant else []),
    ]
    return str(generate_uid(prefix=site.uid_root + ".", entropy_srcs=sources))


def _entity_id(oid: str) -> Dataset:
    item = Dataset()
    item.UniversalEntityID = oid
    item.UniversalEntityIDType = "ISO"
    return item


def _ins_issuer(patient: Patient) -> str:
    try:
        return INS_ISSUERS[patient.ins_oid]
    except KeyError:
        raise KosError(
            f"INS OID {patient.ins_oid!r} is not an INS namespace "
            f"(expected one of {', '.join(INS_ISSUERS)})"
        ) from None


def _evidence(
    report: ImagingReport, study: StudySnapshot, series: SeriesSnapshot, ref: InstanceRef
) -> Dataset:
    """Minimal dataset standing for one PACS instance, as highdicom wants evidence.

    Patient attributes come from the report (the identity of record, already checked against
    the PACS); highdicom copies them from the first evidence item into the KOS.
    """
    patient = report.patient
    ds = Dataset()
    ds.PatientID = patient.ins
    ds.PatientName = patient.name.to_dicom()
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d") if patient.birth_date else ""
    ds.PatientSex = _dicom_sex(patient.sex)
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyID = study.study_id
    start = report.service_start
    ds.StudyDate = study.study_date or (start.strftime("%Y%m%d") if start else "")
    ds.StudyTime = study.study_time or (start.strftime("%H%M%S") if start else "")
    accession = report.accession_number.extension if report.accession_number else ""
    ds.AccessionNumber = accession or study.accession_number
    ds.ReferringPhysicianName = study.referring_physician_name
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.SOPClassUID = ref.sop_class_uid
    ds.SOPInstanceUID = ref.sop_instance_uid
    if _is_image(ref):
        # highdicom references an item as IMAGE (not COMPOSITE) when Rows/Columns are present;
        # their values are not copied into the KOS.
        ds.Rows = 1
        ds.Columns = 1
    return ds


_REFERENCE_TYPES = ("IMAGE", "COMPOSITE", "WAVEFORM")
_ITEM_TAG = b"\xfe\xff\x00\xe0"


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element with a 16-bit length (UI, CS)."""
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr + struct.pack("<H", len(value)) + value


def _item(body: bytes) -> bytes:
    return _ITEM_TAG + struct.pack("<I", len(body)) + body


def _sequence(tag: int, items: bytes) -> bytes:
    return (
        struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        + b"SQ\0\0"
        + struct.pack("<I", len(items))
        + items
    )


_CONTAINS = _element(0x0040A010, b"CS", b"CONTAINS")
_IMAGE = _element(0x0040A040, b"CS", b"IMAGE ")
_COMPOSITE = _element(0x0040A040, b"CS", b"COMPOSITE ")


def _uid_bytes(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _sop_item(ref: InstanceRef) -> bytes:
    return _item(
        _element(0x00081150, b"UI", _uid_bytes(ref.sop_class_uid))
        + _element(0x00081155, b"UI", _uid_bytes(ref.sop_instance_uid))
    )


def _raw_sequence(tag: int, items: list[bytes]) -> RawDataElement:
    """A sequence already encoded (Explicit VR Little Endian, defined lengths, as pydicom writes
    it): written as is, parsed only if read."""
    value = b"".join(items)
    return RawDataElement(Tag(tag), "SQ", len(value), value, 0, False, True)


def _instance_uids(series: SeriesSnapshot) -> Iterator[str]:
    for ref in series.instances:
        yield ref.sop_class_uid
        yield ref.sop_instance_uid


def _reference_every_instance(kos: Dataset, study: StudySnapshot) -> None:
    """The content items and evidence lists highdicom writes for every instance of `study`
    (TID 2010 unnamed references, evidence without duplicates), in the snapshot's order.

    1300 references are 4000 small datasets: built and encoded by pydicom they cost ~0.6 s,
    so they are encoded here directly, byte for byte what pydicom writes for them."""
    references: list[bytes] = []
    per_series: dict[str, list[bytes]] = {}
    seen: set[str] = set()
    for series in study.series:
        listed = per_series.setdefault(series.series_instance_uid, [])
        for ref in series.instances:
            sop = _sop_item(ref)
            references.append(
                _item(
                    _sequence(0x00081199, sop)
                    + _CONTAINS
                    + (_IMAGE if _is_image(ref) else _COMPOSITE)
                )
            )
            if ref.sop_instance_uid not in seen:
                seen.add(ref.sop_instance_uid)
                listed.append(sop)
    head = [
        _item(_encoded(item, kos.SpecificCharacterSet))  # the description
        for item in kos.ContentSequence
        if item.ValueType not in _REFERENCE_TYPES
    ]
    kos[0x0040A730] = _raw_sequence(0x0040A730, head + references)
    _written_as_is(kos)
    for study_item in kos.CurrentRequestedProcedureEvidenceSequence:
        _written_as_is(study_item)
        for series_item in study_item.ReferencedSeriesSequence:
            _written_as_is(series_item)
            tag = 0x00081199
            series_item[tag] = _raw_sequence(tag, per_series[series_item.SeriesInstanceUID])


def _encoded(item: Dataset, character_set: str) -> bytes:
    with BytesIO() as buffer:
        out = DicomFileLike(buffer)
        out.is_little_endian, out.is_implicit_VR = True, False
        write_dataset(out, item, character_set)
        return buffer.getvalue()


def _written_as_is(ds: Dataset) -> None:
    """Declare `ds` already in Explicit VR Little Endian (it has no ambiguous VR): pydicom then
    writes the raw sequences inside as they are instead of parsing them first."""
    charset = ds.get("SpecificCharacterSet")
    ds.set_original_encoding(False, True, convert_encodings(charset) if charset else "iso8859")


def _requested_procedure(report: ImagingReport, study: StudySnapshot) -> Dataset:
    """ReferencedRequestSequence item (PS3.3 C.17.6.2.1), attributes as in the DRIM-M KOS."""
    item = Dataset()
    item.StudyInstanceUID = study.study_instance_uid
    item.ReferencedStudySequence = []
    if report.accession_number and report.accession_number.extension:
        item.AccessionNumber = report.accession_number.extension
        item.IssuerOfAccessionNumberSequence = [_entity_id(report.accession_number.root)]
    else:
        item.AccessionNumber = study.accession_number
    description = report.act_code.display_name if report.act_code else ""
    item.RequestedProcedureDescription = description[:64]
    item.RequestedProcedureCodeSequence = []
    item.RequestedProcedureID = ""
    if report.placer_order and report.placer_order.extension:
        item.PlacerOrderNumberImagingServiceRequest = report.placer_order.extension
        item.OrderPlacerIdentifierSequence = [_entity_id(report.placer_order.root)]
    else:
        item.PlacerOrderNumberImagingServiceRequest = ""
    item.FillerOrderNumberImagingServiceRequest = ""
    return item


def build_manifest(
    report: ImagingReport,
    study: StudySnapshot,
    site: KosSite,
    *,
    created: datetime | None = None,
    variant: str = "",
    validate_every_item: bool = False,
) -> Dataset:
    """Build the KOS manifest referencing every PACS instance of the study.

    Raises `IdentityMismatch` (nothing built) when `check_identity` finds a disagreement, and
    `KosError` for other problems (e.g. a study without instances). `created` fixes the
    content date/time (default: now); UIDs do not depend on it. `validate_every_item` has
    highdicom build and check every reference (slow: what the fast path is tested against).
    """
    reasons = check_identity(report, study)
    if reasons:
        raise IdentityMismatch(reasons)
    if study.instance_count == 0:
        raise KosError(f"study {study.study_instance_uid} has no instance in the PACS")
    ins_issuer = _ins_issuer(report.patient)
    for series in study.series:
        for uid in (series.series_instance_uid, *_instance_uids(series)):
            if not is_uid(uid):
                raise KosError(f"the PACS gave an invalid UID {uid!r}")

    if validate_every_item:
        evidence = [_evidence(report, study, s, ref) for s in study.series for ref in s.instances]
    else:
        # highdicom validates each reference and re-parses the whole content tree: ~1.5 ms an
        # instance, 2 s for a 1300-image CT. It builds the document from one instance per
        # series; `_reference_every_instance` then lists them all with the same plain items.
        evidence = [
            _evidence(report, study, s, s.instances[0]) for s in study.series if s.instances
        ]
    title = hd.sr.CodedConcept(
        value=MANIFEST_TITLE[0], scheme_designator=MANIFEST_TITLE[1], meaning=MANIFEST_TITLE[2]
    )
    description = study.study_description or (
        report.act_code.display_name if report.act_code else ""
    )
    content = hd.ko.KeyObjectSelection(
        document_title=title,
        referenced_objects=evidence,
        description=description or None,
    )
    # The items are independent references (TID 2010, and the DRIM-M reference KOS); highdicom's
    # container defaults to CONTINUOUS and has no argument for it.
    content[0].ContinuityOfContent = "SEPARATE"
    when = created or datetime.now()
    try:
        kos = hd.ko.KeyObjectSelectionDocument(
            evidence=evidence,
            content=content,
            series_instance_uid=_derived_uid(site, "series", report, study, variant),
            series_number=site.series_number,
            sop_instance_uid=_derived_uid(site, "instance", report, study, variant),
            instance_number=site.instance_number,
            manufacturer=site.manufacturer,
            institution_name=site.institution_name,
            requested_procedures=[_requested_procedure(report, study)],
            transfer_syntax_uid=ExplicitVRLittleEndian,
            software_versions=site.software_version,
            series_description=site.series_description,
            content_date=when.date(),
            content_time=when.time(),
            series_date=when.date(),
            series_time=when.time(),
        )
    except (ValueError, TypeError) as exc:
        raise KosError(
            f"cannot build the manifest of study {study.study_instance_uid}: {exc}"
        ) from exc

    if validate_every_item:
        # TID 2010 gives the references no concept name and the DRIM-M reference KOS has none;
        # highdicom names them (SCT 260753009 "Source"): removed, as in the reference.
        for item in kos.ContentSequence:
            if item.ValueType in _REFERENCE_TYPES and "ConceptNameCodeSequence" in item:
                del item.ConceptNameCodeSequence
    else:
        _reference_every_instance(kos, study)

    if study.study_description:  # the PACS's, as the reference KOS carries it
        kos.StudyDescription = study.study_description

    # Patient identification (ARCHITECTURE §2.3): INS with its issuer, the IPP as another id.
    patient = report.patient
    kos.IssuerOfPatientID = ins_issuer
    kos.IssuerOfPatientIDQualifiersSequence = [_entity_id(patient.ins_oid)]
    if patient.ipp and patient.ipp.extension:
        other = Dataset()
        other.PatientID = patient.ipp.extension
        other.IssuerOfPatientID = patient.ipp.root
        other.TypeOfPatientID = "TEXT"
        other.IssuerOfPatientIDQualifiersSequence = [_entity_id(patient.ipp.root)]
        kos.OtherPatientIDsSequence = [other]
    if report.accession_number and report.accession_number.extension:
        kos.IssuerOfAccessionNumberSequence = [_entity_id(report.accession_number.root)]

    # XDS-I.b: each series says where a consumer retrieves it (WADO-RS on this Source).
    for study_item in kos.CurrentRequestedProcedureEvidenceSequence:
        for series_item in study_item.ReferencedSeriesSequence:
            series_item.RetrieveURL = site.retrieve_url(
                study_item.StudyInstanceUID, series_item.SeriesInstanceUID
            )
            if site.retrieve_location_uid:
                series_item.RetrieveLocationUID = site.retrieve_location_uid
    result: Dataset = kos
    return result


# ---------------------------------------------------------------------------------------------
# Encoding and display


def manifest_to_bytes(ds: Dataset) -> bytes:
    """Part-10 file bytes (preamble, file meta, Explicit VR Little Endian)."""
    if getattr(ds, "file_meta", None) is None or "TransferSyntaxUID" not in ds.file_meta:
        raise KosError("the manifest has no file meta information; build it with build_manifest")
    if ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
        raise KosError("the manifest must be encoded in Explicit VR Little Endian")
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def manifest_from_bytes(data: bytes) -> Dataset:
    return dcmread(BytesIO(data))


def describe_manifest(ds: Dataset) -> str:
    """A readable multi-line summary of a manifest (for the CLI and logs)."""
    lines = [
        f"KOS {ds.get('SOPInstanceUID', '?')} (series {ds.get('SeriesInstanceUID', '?')})",
        f"  Patient:   {ds.get('PatientName', '')}  ID {ds.get('PatientID', '')}"
        f" ({ds.get('IssuerOfPatientID', '')})"
        f"  born {ds.get('PatientBirthDate', '')}  sex {ds.get('PatientSex', '')}",
    ]
    for other in ds.get("OtherPatientIDsSequence", []):
        lines.append(
            f"  Other ID:  {other.get('PatientID', '')} ({other.get('IssuerOfPatientID', '')})"
        )
    lines.append(f"  Study:     {ds.get('StudyInstanceUID', '')}  date {ds.get('StudyDate', '')}")
    for request in ds.get("ReferencedRequestSequence", []):
        lines.append(
            f"  Accession: {request.get('AccessionNumber', '')}"
            f"  order {request.get('PlacerOrderNumberImagingServiceRequest', '')}"
        )
    series_items = [
        series
        for study_item in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study_item.get("ReferencedSeriesSequence", [])
    ]
    total = sum(len(s.get("ReferencedSOPSequence", [])) for s in series_items)
    lines.append(f"  Content:   {len(series_items)} series, {total} instances")
    for series in series_items:
        lines.append(
            f"    {series.SeriesInstanceUID}: {len(series.get('ReferencedSOPSequence', []))}"
            f" instances  {series.get('RetrieveURL', '(no RetrieveURL)')}"
        )
    return "\n".join(lines)


def referenced_instances(ds: Dataset) -> frozenset[str]:
    """The SOP instance UIDs a manifest references (to tell whether the PACS content changed)."""
    return frozenset(
        str(sop.ReferencedSOPInstanceUID)
        for evidence in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in evidence.get("ReferencedSeriesSequence", [])
        for sop in series.get("ReferencedSOPSequence", [])
    )
