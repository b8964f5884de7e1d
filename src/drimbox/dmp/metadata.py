"""XDS.b ebRIM metadata for the DMP: what the Source publishes, and what queries ask and return.

Owns the ProvideAndRegisterDocumentSetRequest of a KOS publication (submission set, KOS
DocumentEntry with every slot, classification and external identifier of the accepted request
`samples/ans/validators/XDS.xml`, the IHE DSG signature DocumentEntry, HasMember, `signs` and
RPLC associations), the deterministic ids that make a retried publication recognisable, the
ITI-18 stored queries, the ITI-57 availability-status update, and the parsing of query results
into `DocumentEntry`. HL7v2 data types (XCN, XON, CX, DTM) are formatted here. It must not sign
(`xades`), build envelopes (`soap`) or do I/O.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from lxml import etree

from drimbox.cda.model import Code, HealthProfessional, Identifier, ImagingReport
from drimbox.dmp import codes
from drimbox.dmp.soap import default_ns, q

_PARIS = ZoneInfo("Europe/Paris")
_ID_NAMESPACE = uuid.UUID("5b0f8e1e-4a57-4d0c-9d5e-6f1f0d8c2a11")  # drimbox DMP entry ids
LANG = "FR"  # XDS.xml's LocalizedString xml:lang
CHARSET = "UTF8"  # XDS.xml's LocalizedString charset


class MetadataError(Exception):
    """The report lacks something the DMP requires (said in French for site staff)."""


# --- HL7 v2 data types ---------------------------------------------------------------------------


def hl7_escape(text: str) -> str:
    """Escape HL7 v2 delimiters inside one component."""
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )


def dtm(moment: datetime) -> str:
    """XDS DTM: UTC, YYYYMMDDhhmmss. Naive datetimes are French local time."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_PARIS)
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def parse_dtm(value: str) -> datetime | None:
    value = value.strip()
    formats = {
        4: "%Y",
        6: "%Y%m",
        8: "%Y%m%d",
        10: "%Y%m%d%H",
        12: "%Y%m%d%H%M",
        14: "%Y%m%d%H%M%S",
    }
    fmt = formats.get(len(value))
    if fmt is None:
        return None
    try:
        return datetime.strptime(value, fmt).replace(tzinfo=UTC)
    except ValueError:
        return None


def cx(value: str, authority_oid: str, type_code: str = "NH") -> str:
    """`<id>^^^&<OID>&ISO^<type>`: NH for the INS patientId, PI for a source's id."""
    return f"{hl7_escape(value)}^^^&{authority_oid}&ISO^{type_code}"


def parse_cx(value: str) -> tuple[str, str]:
    """(id, assigning authority OID) of a CX."""
    parts = value.split("^")
    authority = parts[3].split("&") if len(parts) > 3 else []
    return parts[0], authority[1] if len(authority) > 1 else ""


def xcn(professional: HealthProfessional) -> str:
    """An author/legal authenticator: `RPPS^FAMILY^Given^^^^^^&OID&ISO^D^^^IDNPS`."""
    ident = professional.id
    if not ident.extension:
        raise MetadataError("un auteur du compte rendu n'a pas d'identifiant (RPPS)")
    name = professional.name
    family = hl7_escape(name.family) if name else ""
    given = hl7_escape(name.given[0]) if name and name.given else ""
    # RPPS: a person identified nationally (IDNPS, name type D); other ids are plain EI.
    kind = ("D", "IDNPS") if ident.root == codes.RPPS_OID else ("U", "EI")
    return (
        f"{hl7_escape(ident.extension)}^{family}^{given}^^^^^^&{ident.root}&ISO"
        f"^{kind[0]}^^^{kind[1]}"
    )


def xon(name: str, structure_id: str, authority_oid: str = codes.STRUCTURE_OID) -> str:
    """An institution: `NAME^^^^^&OID&ISO^IDNST^^^<structure id>`."""
    return f"{hl7_escape(name)}^^^^^&{authority_oid}&ISO^IDNST^^^{hl7_escape(structure_id)}"


def reference_id(value: str, authority_oid: str | None, id_type: str) -> str:
    """A CXi of referenceIdList: `value^^^&OID&ISO^type` (no CX.4 when no authority)."""
    authority = f"&{authority_oid}&ISO" if authority_oid else ""
    return f"{hl7_escape(value)}^^^{authority}^{id_type}"


# --- Deterministic ids ---------------------------------------------------------------------------


def _digits(seed: str, count: int) -> str:
    number = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:16], "big")
    return str(number)[: max(count, 1)]


def derived_uid(root: str, arc: str, seed: str) -> str:
    """`<root>.<arc>.<digits>` of at most 64 characters, a pure function of `seed`."""
    prefix = f"{root}.{arc}."
    room = 64 - len(prefix)
    if room < 8:
        raise MetadataError(f"racine d'OID trop longue pour dériver des identifiants : {root}")
    return prefix + _digits(seed, min(room, 30))


def derived_uuid(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_ID_NAMESPACE, '|'.join(parts))}"


@dataclass(frozen=True)
class PublicationIds:
    """Ids of one KOS publication. All derive from the KOS uid, so a retry sends the same ones
    and the DMP recognises it (XDSDuplicateUniqueIdInRegistry) instead of storing it twice."""

    kos_unique_id: str
    submission_set_unique_id: str
    signature_unique_id: str
    submission_set_uuid: str
    kos_entry_uuid: str
    signature_entry_uuid: str

    @classmethod
    def derive(cls, kos_unique_id: str, uid_root: str) -> PublicationIds:
        # Arcs .7 and .4 under the site root, as XDS.xml's submission set and signature uids.
        return cls(
            kos_unique_id=kos_unique_id,
            submission_set_unique_id=derived_uid(uid_root, "7", f"ss|{kos_unique_id}"),
            signature_unique_id=derived_uid(uid_root, "4", f"sig|{kos_unique_id}"),
            submission_set_uuid=derived_uuid("ss", kos_unique_id),
            kos_entry_uuid=derived_uuid("kos", kos_unique_id),
            signature_entry_uuid=derived_uuid("sig", kos_unique_id),
        )


# --- ebRIM element helpers -----------------------------------------------------------------------


def _rim(name: str) -> str:
    return q(codes.RIM_NS, name)


def _new_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _slot(parent: etree._Element, name: str, values: Iterable[str]) -> etree._Element:
    slot = etree.SubElement(parent, _rim("Slot"), name=name)
    value_list = etree.SubElement(slot, _rim("ValueList"))
    for value in values:
        etree.SubElement(value_list, _rim("Value")).text = value
    return slot


def _localized(parent: etree._Element, tag: str, text: str) -> None:
    holder = etree.SubElement(parent, _rim(tag))
    string = etree.SubElement(holder, _rim("LocalizedString"), charset=CHARSET, value=text)
    string.set(q(codes.XML_NS, "lang"), LANG)


def _classification(
    parent: etree._Element, scheme: str, object_id: str, code: Code
) -> etree._Element:
    element = etree.SubElement(
        parent,
        _rim("Classification"),
        classificationScheme=scheme,
        classifiedObject=object_id,
        id=_new_id(),
        nodeRepresentation=code.code,
    )
    _slot(element, "codingScheme", [code.code_system])
    _localized(element, "Name", code.display_name or code.code)
    return element


def _author(
    parent: etree._Element,
    scheme: str,
    object_id: str,
    person: str,
    institutions: Sequence[str],
    specialty: str = "",
) -> None:
    element = etree.SubElement(
        parent,
        _rim("Classification"),
        classificationScheme=scheme,
        classifiedObject=object_id,
        id=_new_id(),
        nodeRepresentation="",
    )
    _slot(element, "authorPerson", [person])
    if institutions:
        _slot(element, "authorInstitution", institutions)
    if specialty:
        _slot(element, "authorSpecialty", [specialty])


def _external_id(
    parent: etree._Element, scheme: str, object_id: str, value: str, name: str
) -> None:
    element = etree.SubElement(
        parent,
        _rim("ExternalIdentifier"),
        id=_new_id(),
        identificationScheme=scheme,
        registryObject=object_id,
        value=value,
    )
    _localized(element, "Name", name)


def _association(
    parent: etree._Element,
    kind: str,
    source: str,
    target: str,
    *,
    association_id: str | None = None,
    slots: Mapping[str, Sequence[str]] | None = None,
) -> etree._Element:
    element = etree.SubElement(
        parent,
        _rim("Association"),
        associationType=kind,
        id=association_id or _new_id(),
        sourceObject=source,
        targetObject=target,
    )
    for name, values in (slots or {}).items():
        _slot(element, name, values)
    return element


# --- The KOS publication -------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSite:
    """What the publishing site contributes to the metadata."""

    uid_root: str  # XDSSubmissionSet.sourceId and root of the derived uids
    structure_id: str  # national structure id (authorInstitution, VIHF)
    structure_name: str
    activity_sector: str = "SA07^1.2.250.1.71.4.2.4"  # fallback healthcareFacilityTypeCode
    content_type: Code = codes.DEFAULT_CONTENT_TYPE
    practice_setting: Code = codes.DEFAULT_PRACTICE_SETTING


@dataclass(frozen=True)
class PnrDocument:
    """A document of the request: its entryUUID, MIME part id and bytes."""

    entry_uuid: str
    content_id: str
    mime_type: str
    data: bytes


@dataclass(frozen=True)
class PnrRequest:
    body: etree._Element  # xdsb:ProvideAndRegisterDocumentSetRequest
    ids: PublicationIds
    documents: tuple[PnrDocument, ...]


def confidentiality_codes(base: Code, flags: Mapping[str, bool | str]) -> list[Code]:
    """The report's confidentiality code plus one DMP code per raised OBX flag."""
    result = [base]
    for key, value in flags.items():
        code = codes.CONFIDENTIALITY_FLAGS.get(key.upper())
        if codes.flag_raised(value) and code is not None and code not in result:
            result.append(code)
    return result


def event_codes(report: ImagingReport) -> list[Code]:
    """CCAM act codes (1.2.250.1.213.2.5), modalities (JDV 1.2.250.1.213.1.1.5.618), then
    anatomic regions — XDS.xml carries the act code and the modality.

    The CDA carries DICOM modality codes and SNOMED CT regions; the DMP wants the CI-SIS value
    set OIDs as coding schemes. Region codes already in a CI-SIS system stay as they are.
    """
    result = [
        Code(t.code, codes.CCAM_SYSTEM, t.display_name)
        for t in report.act_translations
        if t.code_system == codes.CCAM_SYSTEM and t.code
    ]
    result += [Code(m.code, codes.MODALITY_VALUE_SET, m.display_name) for m in report.modalities]
    for region in report.regions:
        system = (
            region.code_system
            if region.code_system in codes.REGION_SYSTEMS_KEPT
            else codes.REGION_VALUE_SET
        )
        if Code(region.code, system, region.display_name) not in result:
            result.append(Code(region.code, system, region.display_name))
    if not report.modalities:
        raise MetadataError("le compte rendu n'indique aucune modalité d'acquisition")
    return result


def _facility_code(report: ImagingReport, site: SourceSite) -> Code:
    if report.healthcare_facility_type is not None:
        return report.healthcare_facility_type
    code, _, system = site.activity_sector.partition("^")
    return Code(
        code, system or codes.ACTIVITY_SECTOR_SYSTEM, codes.ACTIVITY_SECTOR_DISPLAY.get(code, code)
    )


def _institution(site: SourceSite) -> str:
    """The publishing structure: the one whose certificates sign and carry the request (the
    report's organisation, chosen by `structures.choose_structure`)."""
    return xon(site.structure_name, site.structure_id)


def content_type(report: ImagingReport, site: SourceSite) -> Code:
    """contentTypeCode: the report's encounter mapped to TRE_R209 (codes.ENCOUNTER_CONTENT_TYPES),
    else the structure's default (configured, else XDS.xml's)."""
    encounter = report.encounter_code
    if encounter is not None and encounter.code_system in ("", codes.ENCOUNTER_SYSTEM):
        mapped = codes.ENCOUNTER_CONTENT_TYPES.get(encounter.code.upper())
        if mapped is not None:
            return mapped
    return site.content_type


def author_specialty(professional: HealthProfessional) -> str:
    """authorSpecialty `code^display^system` from the CDA author code (e.g. G15_10/SM44)."""
    code = professional.code
    if code is None or not code.code:
        return ""
    system = code.code_system or codes.AUTHOR_SPECIALTY_SYSTEM
    return f"{hl7_escape(code.code)}^{hl7_escape(code.display_name)}^{system}"


def _reference_ids(report: ImagingReport) -> list[str]:
    values: list[str] = []
    accession = report.accession_number
    if accession and accession.extension:
        values.append(reference_id(accession.extension, accession.root, codes.REF_ACCESSION))
    values.append(
        reference_id(report.study_instance_uid, codes.STUDY_UID_AUTHORITY, codes.REF_STUDY_UID)
    )
    order: Identifier | None = report.placer_order
    if order and order.extension:
        values.append(reference_id(order.extension, order.root, codes.REF_ORDER))
    return values


def _patient_info(report: ImagingReport) -> list[str]:
    patient = report.patient
    name = patient.name
    given = name.given[0] if name.given else ""
    info = [f"PID-5|{hl7_escape(name.family)}^{hl7_escape(given)}^^^^^L"]
    if patient.birth_date:
        info.append(f"PID-7|{patient.birth_date:%Y%m%d}")
    info.append(f"PID-8|{patient.sex or 'U'}")
    return info


def build_kos_submission(
    report: ImagingReport,
    *,
    kos_bytes: bytes,
    ids: PublicationIds,
    signature_xml: bytes,
    site: SourceSite,
    flags: Mapping[str, bool | str],
    submission_time: datetime,
    signing_time: datetime,
    kos_creation_time: datetime | None = None,
    replaces_entry_uuid: str | None = None,
    replaces_signature_entry_uuid: str | None = None,
) -> PnrRequest:
    """The ITI-41 body of a KOS publication (and of its replacement when `replaces_entry_uuid`)."""
    patient = report.patient
    if not patient.ins or not patient.ins_oid:
        raise MetadataError("le patient n'a pas d'INS qualifié : publication au DMP impossible")
    author = report.authors[0] if report.authors else report.legal_authenticator
    if author is None:
        raise MetadataError("le compte rendu n'a pas d'auteur")
    legal = report.legal_authenticator or author
    author_person = xcn(author)
    institutions = [_institution(site)]
    patient_id = cx(patient.ins, patient.ins_oid, "NH")
    submitted = dtm(submission_time)
    signed = dtm(signing_time)
    confidentiality = confidentiality_codes(report.confidentiality, flags)
    facility = _facility_code(report, site)
    practice = report.practice_setting or site.practice_setting
    references = _reference_ids(report)
    events = event_codes(report)
    if report.service_start is None:
        raise MetadataError("le compte rendu n'indique pas la date de l'examen (serviceEvent)")
    kos_part = f"kos-{uuid.uuid4().hex}@drimbox"
    sig_part = f"signature-{uuid.uuid4().hex}@drimbox"

    root = etree.Element(
        q(codes.XDSB_NS, "ProvideAndRegisterDocumentSetRequest"),
        nsmap=default_ns(codes.RIM_NS, lcm=codes.LCM_NS, xdsb=codes.XDSB_NS, rs=codes.RS_NS),
    )
    submit = etree.SubElement(root, q(codes.LCM_NS, "SubmitObjectsRequest"))
    objects = etree.SubElement(submit, _rim("RegistryObjectList"))

    # Submission set.
    ss_id = ids.submission_set_uuid
    package = etree.SubElement(objects, _rim("RegistryPackage"), id=ss_id)
    _slot(package, "submissionTime", [submitted])
    _localized(package, "Name", "Publication DRIMbox")
    _localized(package, "Description", report.title or "KOS")
    _author(package, codes.SS_AUTHOR, ss_id, author_person, institutions)
    _classification(package, codes.SS_CONTENT_TYPE, ss_id, content_type(report, site))
    etree.SubElement(
        package,
        _rim("Classification"),
        classificationNode=codes.SUBMISSION_SET_NODE,
        classifiedObject=ss_id,
        id=_new_id(),
    )
    _external_id(package, codes.SS_PATIENT_ID, ss_id, patient_id, "XDSSubmissionSet.patientId")
    _external_id(package, codes.SS_SOURCE_ID, ss_id, site.uid_root, "XDSSubmissionSet.sourceId")
    _external_id(
        package,
        codes.SS_UNIQUE_ID,
        ss_id,
        ids.submission_set_unique_id,
        "XDSSubmissionSet.uniqueId",
    )

    # The KOS.
    kos_id = ids.kos_entry_uuid
    kos = etree.SubElement(
        objects,
        _rim("ExtrinsicObject"),
        id=kos_id,
        mimeType=codes.KOS_MIME_TYPE,
        objectType=codes.DOCUMENT_ENTRY_STABLE,
    )
    _slot(kos, "hash", [hashlib.sha1(kos_bytes).hexdigest()])  # XDS mandates SHA-1
    _slot(kos, "size", [str(len(kos_bytes))])
    _slot(kos, "URI", ["KOS.DCM"])
    _slot(kos, "creationTime", [dtm(kos_creation_time or submission_time)])
    _slot(kos, "submissionTime", [submitted])
    _slot(kos, "languageCode", ["fr-FR"])
    _slot(kos, "legalAuthenticator", [xcn(legal)])
    _slot(kos, "serviceStartTime", [dtm(report.service_start)])
    _slot(kos, "serviceStopTime", [dtm(report.service_stop or report.service_start)])
    _slot(kos, "sourcePatientId", [cx(patient.ins, patient.ins_oid, "PI")])
    _slot(kos, "sourcePatientInfo", _patient_info(report))
    _slot(kos, codes.REFERENCE_ID_LIST, references)
    _localized(kos, "Name", codes.KOS_TITLE)
    _localized(kos, "Description", "KOS")
    _author(kos, codes.DE_AUTHOR, kos_id, author_person, institutions, author_specialty(author))
    _classification(kos, codes.DE_CLASS, kos_id, codes.KOS_CLASS)
    _classification(kos, codes.DE_TYPE, kos_id, codes.KOS_TYPE)
    for code in confidentiality:
        _classification(kos, codes.DE_CONFIDENTIALITY, kos_id, code)
    _classification(kos, codes.DE_FORMAT, kos_id, codes.KOS_FORMAT)
    _classification(kos, codes.DE_FACILITY_TYPE, kos_id, facility)
    _classification(kos, codes.DE_PRACTICE_SETTING, kos_id, practice)
    for code in events:
        _classification(kos, codes.DE_EVENT, kos_id, code)
    _external_id(kos, codes.DE_PATIENT_ID, kos_id, patient_id, "XDSDocumentEntry.patientId")
    _external_id(kos, codes.DE_UNIQUE_ID, kos_id, ids.kos_unique_id, "XDSDocumentEntry.uniqueId")

    # The signature document (IHE DSG), with the same patient, confidentiality and references.
    sig_id = ids.signature_entry_uuid
    sig = etree.SubElement(
        objects,
        _rim("ExtrinsicObject"),
        id=sig_id,
        mimeType=codes.SIGNATURE_MIME_TYPE,
        objectType=codes.DOCUMENT_ENTRY_STABLE,
    )
    _slot(sig, "hash", [hashlib.sha1(signature_xml).hexdigest()])
    _slot(sig, "size", [str(len(signature_xml))])
    _slot(sig, "URI", ["SIGNATURE.XML"])
    _slot(sig, "creationTime", [signed])
    _slot(sig, "submissionTime", [submitted])
    _slot(sig, "languageCode", [codes.SIGNATURE_LANGUAGE])
    _slot(sig, "legalAuthenticator", [xcn(legal)])
    _slot(sig, "serviceStartTime", [signed])
    _slot(sig, "serviceStopTime", [signed])
    _slot(sig, "sourcePatientId", [patient_id])
    _slot(sig, codes.REFERENCE_ID_LIST, references)
    _localized(sig, "Name", codes.SIGNATURE_TITLE)
    _localized(sig, "Description", "")
    _author(sig, codes.DE_AUTHOR, sig_id, xcn(legal), institutions, author_specialty(legal))
    _classification(sig, codes.DE_CLASS, sig_id, codes.SIGNATURE_CLASS)
    _classification(sig, codes.DE_TYPE, sig_id, codes.SIGNATURE_TYPE)
    for code in confidentiality:
        _classification(sig, codes.DE_CONFIDENTIALITY, sig_id, code)
    _classification(sig, codes.DE_FORMAT, sig_id, codes.SIGNATURE_FORMAT)
    _classification(sig, codes.DE_FACILITY_TYPE, sig_id, facility)
    _classification(sig, codes.DE_PRACTICE_SETTING, sig_id, practice)
    _classification(sig, codes.DE_EVENT, sig_id, codes.SIGNATURE_PURPOSE)
    _external_id(sig, codes.DE_PATIENT_ID, sig_id, patient_id, "XDSDocumentEntry.patientId")
    _external_id(
        sig, codes.DE_UNIQUE_ID, sig_id, ids.signature_unique_id, "XDSDocumentEntry.uniqueId"
    )

    # Associations.
    original = {"SubmissionSetStatus": ["Original"]}
    _association(
        objects,
        codes.ASSOC_HAS_MEMBER,
        ss_id,
        kos_id,
        association_id=derived_uuid("member-kos", ids.kos_unique_id),
        slots=original,
    )
    _association(
        objects,
        codes.ASSOC_HAS_MEMBER,
        ss_id,
        sig_id,
        association_id=derived_uuid("member-sig", ids.kos_unique_id),
        slots=original,
    )
    # XDS.xml gives the `signs` association a SubmissionSetStatus slot too; kept as accepted.
    _association(
        objects,
        codes.ASSOC_SIGNS,
        sig_id,
        ss_id,
        association_id=derived_uuid("signs", ids.kos_unique_id),
        slots=original,
    )
    if replaces_entry_uuid:
        _association(
            objects,
            codes.ASSOC_RPLC,
            kos_id,
            replaces_entry_uuid,
            association_id=derived_uuid("rplc", ids.kos_unique_id, replaces_entry_uuid),
        )
    if replaces_signature_entry_uuid:
        # The signature document follows its KOS: replaced with it.
        _association(
            objects,
            codes.ASSOC_RPLC,
            sig_id,
            replaces_signature_entry_uuid,
            association_id=derived_uuid(
                "rplc-sig", ids.kos_unique_id, replaces_signature_entry_uuid
            ),
        )

    documents = (
        PnrDocument(kos_id, kos_part, codes.KOS_MIME_TYPE, kos_bytes),
        PnrDocument(sig_id, sig_part, codes.SIGNATURE_MIME_TYPE, signature_xml),
    )
    for document in documents:
        holder = etree.SubElement(root, q(codes.XDSB_NS, "Document"), id=document.entry_uuid)
        etree.SubElement(
            holder,
            q(codes.XOP_NS, "Include"),
            nsmap={"xop": codes.XOP_NS},
            href=f"cid:{document.content_id}",
        )
    return PnrRequest(body=root, ids=ids, documents=documents)


# --- ITI-18 stored queries -----------------------------------------------------------------------


def _quoted(values: Iterable[str]) -> str:
    return "(" + ",".join("'" + v.replace("'", "''") + "'" for v in values) + ")"


def _coded(values: Iterable[Code]) -> str:
    return _quoted(f"{c.code}^^{c.code_system}" for c in values)


def _query(query_id: str, slots: Sequence[tuple[str, str]], return_type: str) -> etree._Element:
    root = etree.Element(
        q(codes.QUERY_NS, "AdhocQueryRequest"),
        nsmap={"query": codes.QUERY_NS, "rim": codes.RIM_NS},
    )
    etree.SubElement(
        root,
        q(codes.QUERY_NS, "ResponseOption"),
        returnComposedObjects="true",
        returnType=return_type,
    )
    query = etree.SubElement(root, _rim("AdhocQuery"), id=query_id)
    for name, value in slots:
        _slot(query, name, [value])
    return root


def find_documents_query(
    patient_id: str,
    *,
    statuses: Sequence[str] = (codes.STATUS_APPROVED,),
    class_codes: Sequence[Code] = (),
    type_codes: Sequence[Code] = (),
    modalities: Sequence[str] = (),
    regions: Sequence[Code] = (),
    service_from: datetime | None = None,
    service_to: datetime | None = None,
    return_type: str = "LeafClass",
) -> etree._Element:
    """FindDocuments. Modalities and regions are two event-code slots: AND between, OR within."""
    slots: list[tuple[str, str]] = [
        ("$XDSDocumentEntryPatientId", f"'{patient_id}'"),
        ("$XDSDocumentEntryStatus", _quoted(statuses)),
    ]
    if class_codes:
        slots.append(("$XDSDocumentEntryClassCode", _coded(class_codes)))
    if type_codes:
        slots.append(("$XDSDocumentEntryTypeCode", _coded(type_codes)))
    if modalities:
        slots.append(
            (
                "$XDSDocumentEntryEventCodeList",
                _coded(Code(m, codes.MODALITY_VALUE_SET) for m in modalities),
            )
        )
    if regions:
        slots.append(("$XDSDocumentEntryEventCodeList", _coded(regions)))
    if service_from is not None:
        slots.append(("$XDSDocumentEntryServiceStartTimeFrom", dtm(service_from)))
    if service_to is not None:
        slots.append(("$XDSDocumentEntryServiceStartTimeTo", dtm(service_to)))
    return _query(codes.QUERY_FIND_DOCUMENTS, slots, return_type)


def find_by_reference_id_query(
    patient_id: str,
    reference_ids: Sequence[str],
    *,
    statuses: Sequence[str] = (codes.STATUS_APPROVED,),
    class_codes: Sequence[Code] = (),
    type_codes: Sequence[Code] = (),
) -> etree._Element:
    """FindDocumentsByReferenceId: `reference_ids` are CXi values (see `reference_id`)."""
    slots: list[tuple[str, str]] = [
        ("$XDSDocumentEntryPatientId", f"'{patient_id}'"),
        ("$XDSDocumentEntryStatus", _quoted(statuses)),
        ("$XDSDocumentEntryReferenceIdList", _quoted(reference_ids)),
    ]
    if class_codes:
        slots.append(("$XDSDocumentEntryClassCode", _coded(class_codes)))
    if type_codes:
        slots.append(("$XDSDocumentEntryTypeCode", _coded(type_codes)))
    return _query(codes.QUERY_FIND_DOCUMENTS_BY_REFERENCE_ID, slots, "LeafClass")


def get_documents_query(
    *, unique_ids: Sequence[str] = (), entry_uuids: Sequence[str] = ()
) -> etree._Element:
    if bool(unique_ids) == bool(entry_uuids):
        raise ValueError("GetDocuments takes either unique ids or entry UUIDs")
    slots = (
        [("$XDSDocumentEntryUniqueId", _quoted(unique_ids))]
        if unique_ids
        else [("$XDSDocumentEntryEntryUUID", _quoted(entry_uuids))]
    )
    return _query(codes.QUERY_GET_DOCUMENTS, slots, "LeafClass")


def get_associations_query(uuids: Sequence[str]) -> etree._Element:
    return _query(codes.QUERY_GET_ASSOCIATIONS, [("$uuid", _quoted(uuids))], "LeafClass")


# --- ITI-57: availability status update ----------------------------------------------------------


def build_availability_update(
    entry: DocumentEntry,
    *,
    site: SourceSite,
    new_status: str = codes.STATUS_DELETED,
    submission_time: datetime,
    author_person: str | None = None,
    also: Sequence[DocumentEntry] = (),
) -> etree._Element:
    """ITI-57 SubmitObjectsRequest: a submission set and one UpdateAvailabilityStatus
    association from it to the entry, and to each of `also` (XDS Metadata Update, ITI TF-3
    4.2.3.2)."""
    root = etree.Element(
        q(codes.LCM_NS, "SubmitObjectsRequest"), nsmap=default_ns(codes.RIM_NS, lcm=codes.LCM_NS)
    )
    objects = etree.SubElement(root, _rim("RegistryObjectList"))
    ss_id = derived_uuid("update-ss", entry.entry_uuid, new_status)
    package = etree.SubElement(objects, _rim("RegistryPackage"), id=ss_id)
    _slot(package, "submissionTime", [dtm(submission_time)])
    _localized(package, "Name", "Mise à jour du statut")
    person = author_person or entry.author_person
    if not person:
        raise MetadataError("aucun auteur pour la mise à jour du statut du document")
    institutions = list(entry.author_institutions) or [xon(site.structure_name, site.structure_id)]
    _author(package, codes.SS_AUTHOR, ss_id, person, institutions)
    _classification(package, codes.SS_CONTENT_TYPE, ss_id, site.content_type)
    etree.SubElement(
        package,
        _rim("Classification"),
        classificationNode=codes.SUBMISSION_SET_NODE,
        classifiedObject=ss_id,
        id=_new_id(),
    )
    _external_id(
        package, codes.SS_PATIENT_ID, ss_id, entry.patient_id, "XDSSubmissionSet.patientId"
    )
    _external_id(package, codes.SS_SOURCE_ID, ss_id, site.uid_root, "XDSSubmissionSet.sourceId")
    _external_id(
        package,
        codes.SS_UNIQUE_ID,
        ss_id,
        derived_uid(site.uid_root, "7", f"update|{entry.entry_uuid}|{new_status}"),
        "XDSSubmissionSet.uniqueId",
    )
    for target in (entry, *also):
        _association(
            objects,
            codes.ASSOC_UPDATE_AVAILABILITY,
            ss_id,
            target.entry_uuid,
            slots={"OriginalStatus": [target.status], "NewStatus": [new_status]},
        )
    return root


# --- Query results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentEntry:
    """One XDSDocumentEntry as a query returns it."""

    entry_uuid: str
    unique_id: str
    status: str
    mime_type: str
    patient_id: str  # CX: <INS>^^^&<OID>&ISO^NH
    class_code: Code | None
    type_code: Code | None
    format_code: Code | None
    healthcare_facility_type: Code | None
    practice_setting: Code | None
    confidentiality: tuple[Code, ...]
    event_codes: tuple[Code, ...]
    hash: str
    size: int | None
    repository_unique_id: str
    creation_time: datetime | None
    service_start: datetime | None
    service_stop: datetime | None
    reference_ids: tuple[str, ...]
    title: str
    author_person: str
    author_institutions: tuple[str, ...]
    legal_authenticator: str
    source_patient_id: str
    home_community_id: str

    @property
    def patient_ins(self) -> tuple[str, str]:
        """(INS, OID) of the patient."""
        return parse_cx(self.patient_id)

    def reference(self, id_type: str) -> str | None:
        """The id of a referenceIdList type (e.g. `codes.REF_ACCESSION`), without authority."""
        for value in self.reference_ids:
            if value.endswith(f"^{id_type}"):
                return value.split("^", 1)[0]
        return None

    @property
    def is_kos(self) -> bool:
        return self.mime_type == codes.KOS_MIME_TYPE


def _slots(element: etree._Element) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for slot in element.iterfind(_rim("Slot")):
        values = [
            (v.text or "").strip() for v in slot.iterfind(f"{_rim('ValueList')}/{_rim('Value')}")
        ]
        result.setdefault(slot.get("name", ""), []).extend(values)
    return result


def _code_of(classification: etree._Element) -> Code:
    scheme = _slots(classification).get("codingScheme", [""])
    name = classification.find(f"{_rim('Name')}/{_rim('LocalizedString')}")
    return Code(
        classification.get("nodeRepresentation", ""),
        scheme[0] if scheme else "",
        name.get("value", "") if name is not None else "",
    )


def parse_document_entries(objects: etree._Element | None) -> list[DocumentEntry]:
    """The ExtrinsicObjects of a `RegistryObjectList` (LeafClass) as `DocumentEntry`."""
    if objects is None:
        return []
    entries: list[DocumentEntry] = []
    for extrinsic in objects.iter(_rim("ExtrinsicObject")):
        entry_id = extrinsic.get("id", "")
        slots = _slots(extrinsic)
        by_scheme: dict[str, list[etree._Element]] = {}
        for classification in extrinsic.iterfind(_rim("Classification")):
            by_scheme.setdefault(classification.get("classificationScheme", ""), []).append(
                classification
            )
        identifiers = {
            e.get("identificationScheme", ""): e.get("value", "")
            for e in extrinsic.iterfind(_rim("ExternalIdentifier"))
        }

        def one(scheme: str, _by: dict[str, list[etree._Element]] = by_scheme) -> Code | None:
            found = _by.get(scheme)
            return _code_of(found[0]) if found else None

        def first(name: str, _slots: dict[str, list[str]] = slots) -> str:
            values = _slots.get(name)
            return values[0] if values else ""

        author_person = ""
        institutions: tuple[str, ...] = ()
        for author in by_scheme.get(codes.DE_AUTHOR, [])[:1]:
            author_slots = _slots(author)
            author_person = (author_slots.get("authorPerson") or [""])[0]
            institutions = tuple(author_slots.get("authorInstitution", []))
        title_el = extrinsic.find(f"{_rim('Name')}/{_rim('LocalizedString')}")
        size = first("size")
        entries.append(
            DocumentEntry(
                entry_uuid=entry_id,
                unique_id=identifiers.get(codes.DE_UNIQUE_ID, ""),
                status=extrinsic.get("status", ""),
                mime_type=extrinsic.get("mimeType", ""),
                patient_id=identifiers.get(codes.DE_PATIENT_ID, ""),
                class_code=one(codes.DE_CLASS),
                type_code=one(codes.DE_TYPE),
                format_code=one(codes.DE_FORMAT),
                healthcare_facility_type=one(codes.DE_FACILITY_TYPE),
                practice_setting=one(codes.DE_PRACTICE_SETTING),
                confidentiality=tuple(
                    _code_of(c) for c in by_scheme.get(codes.DE_CONFIDENTIALITY, [])
                ),
                event_codes=tuple(_code_of(c) for c in by_scheme.get(codes.DE_EVENT, [])),
                hash=first("hash").lower(),
                size=int(size) if size.isdigit() else None,
                repository_unique_id=first("repositoryUniqueId"),
                creation_time=parse_dtm(first("creationTime")),
                service_start=parse_dtm(first("serviceStartTime")),
                service_stop=parse_dtm(first("serviceStopTime")),
                reference_ids=tuple(slots.get(codes.REFERENCE_ID_LIST, [])),
                title=title_el.get("value", "") if title_el is not None else "",
                author_person=author_person,
                author_institutions=institutions,
                legal_authenticator=first("legalAuthenticator"),
                source_patient_id=first("sourcePatientId"),
                home_community_id=extrinsic.get("home", ""),
            )
        )
    return entries


@dataclass(frozen=True)
class AssociationInfo:
    id: str
    association_type: str
    source: str
    target: str


def parse_associations(objects: etree._Element | None) -> list[AssociationInfo]:
    if objects is None:
        return []
    return [
        AssociationInfo(
            a.get("id", ""),
            a.get("associationType", ""),
            a.get("sourceObject", ""),
            a.get("targetObject", ""),
        )
        for a in objects.iter(_rim("Association"))
    ]
