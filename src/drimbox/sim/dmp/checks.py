"""Metadata checks of the DMP simulator for ITI-41 (Provide and Register) and ITI-57 (Update).

The mandatory metadata is what the official request accepted by the DMP test environment
(`samples/ans/validators/XDS.xml`) carries: every slot, classification and external identifier
of its submission set, of its KOS entry and of its signature entry. The tables below are that
list (a test compares them with the sample). Checks never stop at the first problem: every error
is reported, as a registry does, and nothing is stored when there is one.
Part of the test/demo simulator of the national DMP; never deploy it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import io
import re
from dataclasses import dataclass, field

import pydicom
from lxml import etree

from drimbox.sim.dmp import ebrim as E
from drimbox.sim.dmp.ebrim import RegistryError, RegistryObject
from drimbox.sim.dmp.settings import INS_OIDS, DmpSimSettings
from drimbox.sim.dmp.soap import DS, LCM, RIM, XDSB, SoapFault, parse_xml
from drimbox.sim.dmp.vihf import (
    PATIENT_ID,
    Vihf,
    certificate_structures,
    check_trusted_certificate,
    keyinfo_certificate,
    load_trusted,
)
from drimbox.sim.dmp.xmldsig import SignatureInvalid, verify_enveloping

# -- what XDS.xml carries, hence mandatory -------------------------------------------------

SUBMISSION_SET_SLOTS: tuple[str, ...] = ("submissionTime",)
SUBMISSION_SET_CLASSIFICATIONS: dict[str, str] = {
    E.SS_AUTHOR: "author",
    E.SS_CONTENT_TYPE: "contentTypeCode",
}
SUBMISSION_SET_IDENTIFIERS: dict[str, str] = {
    E.SS_PATIENT_ID: "XDSSubmissionSet.patientId",
    E.SS_SOURCE_ID: "XDSSubmissionSet.sourceId",
    E.SS_UNIQUE_ID: "XDSSubmissionSet.uniqueId",
}
# Slots of both entries of XDS.xml (the KOS and its signature document).
ENTRY_SLOTS: tuple[str, ...] = (
    "hash",
    "size",
    "URI",
    "creationTime",
    "submissionTime",
    "languageCode",
    "legalAuthenticator",
    "serviceStartTime",
    "serviceStopTime",
    "sourcePatientId",
    "urn:ihe:iti:xds:2013:referenceIdList",
)
# Only the KOS entry of XDS.xml carries the patient's demographics.
KOS_ONLY_SLOTS: tuple[str, ...] = ("sourcePatientInfo",)
ENTRY_CLASSIFICATIONS: dict[str, str] = {
    E.DE_AUTHOR: "author",
    E.DE_CLASS: "classCode",
    E.DE_TYPE: "typeCode",
    E.DE_CONFIDENTIALITY: "confidentialityCode",
    E.DE_FORMAT: "formatCode",
    E.DE_FACILITY: "healthcareFacilityTypeCode",
    E.DE_PRACTICE: "practiceSettingCode",
    E.DE_EVENT: "eventCodeList",
}
ENTRY_IDENTIFIERS: dict[str, str] = {
    E.DE_PATIENT_ID: "XDSDocumentEntry.patientId",
    E.DE_UNIQUE_ID: "XDSDocumentEntry.uniqueId",
}
AUTHOR_SLOTS: tuple[str, ...] = ("authorPerson", "authorInstitution")

DTM = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2})?)?)?)?)?$")
OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
SHA1 = re.compile(r"^[0-9A-Fa-f]{40}$")
STUDY_UID_REF = "urn:ihe:iti:xds:2016:studyInstanceUID"
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"

DIGESTS = {
    "http://www.w3.org/2000/09/xmldsig#sha1": "sha1",
    "http://www.w3.org/2001/04/xmlenc#sha256": "sha256",
    "http://www.w3.org/2001/04/xmlenc#sha512": "sha512",
}

METADATA = "XDSRegistryMetadataError"
REPOSITORY_METADATA = "XDSRepositoryMetadataError"


@dataclass
class Submission:
    """The objects of one SubmitObjectsRequest, symbolic ids as sent."""

    submission_set: RegistryObject | None
    entries: list[RegistryObject]
    associations: list[etree._Element]
    documents: dict[str, bytes] = field(default_factory=dict)
    document_errors: list[RegistryError] = field(default_factory=list)

    def entry(self, symbolic_id: str) -> RegistryObject | None:
        for entry in self.entries:
            if entry.id == symbolic_id:
                return entry
        return None


def is_kos(entry: RegistryObject) -> bool:
    type_code = entry.code(E.DE_TYPE)
    format_code = entry.code(E.DE_FORMAT)
    return (type_code is not None and type_code.code == E.KOS_TYPE_CODE) or (
        format_code is not None and format_code.code == E.KOS_FORMAT_CODE
    )


def is_signature(entry: RegistryObject) -> bool:
    class_code = entry.code(E.DE_CLASS)
    return class_code is not None and class_code.code == E.SIGNATURE_CLASS_CODE


def read_submission(
    submit: etree._Element, request: etree._Element | None
) -> tuple[Submission, list[RegistryError]]:
    """Read a lcm:SubmitObjectsRequest (and the xdsb:Document siblings for ITI-41)."""
    errors: list[RegistryError] = []
    object_list = submit.find(f"{{{RIM}}}RegistryObjectList")
    if object_list is None:
        return Submission(None, [], []), [
            RegistryError(METADATA, "RegistryObjectList absent de SubmitObjectsRequest.")
        ]
    packages = [E.read_object(p) for p in object_list.findall(f"{{{RIM}}}RegistryPackage")]
    entries = [E.read_object(e) for e in object_list.findall(f"{{{RIM}}}ExtrinsicObject")]
    by_id = {o.id: o for o in (*packages, *entries)}
    for classification in object_list.findall(f"{{{RIM}}}Classification"):
        target = by_id.get(classification.get("classifiedObject", ""))
        if target is None:
            errors.append(
                RegistryError(
                    METADATA,
                    "Classification sur un objet absent de la soumission : "
                    f"{classification.get('classifiedObject')}.",
                    classification.get("id", ""),
                )
            )
        else:
            E.add_classification(target, classification)
    submission_sets = [p for p in packages if E.SUBMISSION_SET_NODE in p.classification_nodes]
    for package in packages:
        if package not in submission_sets:
            errors.append(
                RegistryError(
                    METADATA,
                    "Seul le lot de soumission est accepté (pas de classeur / folder).",
                    package.id,
                )
            )
    if len(submission_sets) != 1:
        errors.append(
            RegistryError(
                METADATA,
                "Un et un seul lot de soumission (RegistryPackage classé "
                f"{E.SUBMISSION_SET_NODE}) est attendu ; trouvé(s) : {len(submission_sets)}.",
            )
        )
    submission = Submission(
        submission_sets[0] if submission_sets else None,
        entries,
        object_list.findall(f"{{{RIM}}}Association"),
    )
    if request is not None:
        for document in request.findall(f"{{{XDSB}}}Document"):
            doc_id = document.get("id", "")
            try:
                data = base64.b64decode("".join((document.text or "").split()), validate=True)
            except (binascii.Error, ValueError):
                submission.document_errors.append(
                    RegistryError(REPOSITORY_METADATA, "Document illisible (base64).", doc_id)
                )
                continue
            if doc_id in submission.documents:
                submission.document_errors.append(
                    RegistryError(
                        "XDSRepositoryDuplicateUniqueIdInMessage",
                        f"Document {doc_id} transmis deux fois.",
                        doc_id,
                    )
                )
            submission.documents[doc_id] = data
    return submission, errors


def _missing(
    obj: RegistryObject,
    what: str,
    slots: tuple[str, ...],
    classifications: dict[str, str],
    identifiers: dict[str, str],
) -> list[RegistryError]:
    errors: list[RegistryError] = []
    for slot in slots:
        if not any(v for v in obj.slots.get(slot, [])):
            errors.append(
                RegistryError(METADATA, f"{what} : slot obligatoire « {slot} » absent.", obj.id)
            )
    for scheme, label in classifications.items():
        found = obj.classifications.get(scheme, [])
        if not found:
            errors.append(
                RegistryError(
                    METADATA, f"{what} : classification obligatoire {label} absente.", obj.id
                )
            )
            continue
        for classification in found:
            slots_of = E.read_slots(classification)
            if label == "author":
                for author_slot in AUTHOR_SLOTS:
                    if not any(slots_of.get(author_slot, [])):
                        errors.append(
                            RegistryError(
                                METADATA, f"{what} : {label}.{author_slot} absent.", obj.id
                            )
                        )
            elif not classification.get("nodeRepresentation") or not any(
                slots_of.get("codingScheme", [])
            ):
                errors.append(
                    RegistryError(
                        METADATA,
                        f"{what} : {label} sans code (nodeRepresentation) ou sans codingScheme.",
                        obj.id,
                    )
                )
    for scheme, label in identifiers.items():
        if not obj.identifiers.get(scheme):
            errors.append(
                RegistryError(METADATA, f"{what} : identifiant obligatoire {label} absent.", obj.id)
            )
    if not obj.name:
        errors.append(RegistryError(METADATA, f"{what} : titre (Name) absent.", obj.id))
    return errors


def check_submission_set(submission_set: RegistryObject) -> list[RegistryError]:
    errors = _missing(
        submission_set,
        "Lot de soumission",
        SUBMISSION_SET_SLOTS,
        SUBMISSION_SET_CLASSIFICATIONS,
        SUBMISSION_SET_IDENTIFIERS,
    )
    time = submission_set.slot("submissionTime")
    if time and not DTM.match(time):
        errors.append(
            RegistryError(
                METADATA,
                f"Lot de soumission : submissionTime « {time} » invalide.",
                submission_set.id,
            )
        )
    unique_id = submission_set.identifiers.get(E.SS_UNIQUE_ID, "")
    if unique_id and not OID.match(unique_id):
        errors.append(
            RegistryError(
                METADATA,
                f"Lot de soumission : uniqueId « {unique_id} » n'est pas un OID.",
                submission_set.id,
            )
        )
    return errors


def check_entry(entry: RegistryObject) -> list[RegistryError]:
    what = f"Fiche {entry.id}"
    kos = is_kos(entry)
    errors: list[RegistryError] = []
    object_type = entry.element.get("objectType", "")
    if object_type != E.STABLE_ENTRY:
        errors.append(
            RegistryError(
                METADATA,
                f"{what} : objectType « {object_type} » : seules les fiches stables "
                f"({E.STABLE_ENTRY}) sont acceptées.",
                entry.id,
            )
        )
    mime_type = entry.element.get("mimeType", "")
    if not mime_type:
        errors.append(RegistryError(METADATA, f"{what} : mimeType absent.", entry.id))
    elif kos and mime_type != "application/dicom":
        errors.append(
            RegistryError(
                METADATA,
                f"{what} : un KOS doit avoir le mimeType application/dicom (reçu « {mime_type} »).",
                entry.id,
            )
        )
    slots = ENTRY_SLOTS + (KOS_ONLY_SLOTS if kos else ())
    errors += _missing(entry, what, slots, ENTRY_CLASSIFICATIONS, ENTRY_IDENTIFIERS)
    for name in ("creationTime", "submissionTime", "serviceStartTime", "serviceStopTime"):
        value = entry.slot(name)
        if value and not DTM.match(value):
            errors.append(
                RegistryError(
                    METADATA, f"{what} : {name} « {value} » n'est pas une date DTM.", entry.id
                )
            )
    value = entry.slot("hash")
    if value and not SHA1.match(value):
        errors.append(
            RegistryError(
                METADATA, f"{what} : hash « {value} » n'est pas un SHA-1 hexadécimal.", entry.id
            )
        )
    value = entry.slot("size")
    if value and not value.isdigit():
        errors.append(RegistryError(METADATA, f"{what} : size « {value} » invalide.", entry.id))
    unique_id = entry.identifiers.get(E.DE_UNIQUE_ID, "")
    if unique_id and (
        len(unique_id) > 128 or (kos and (not OID.match(unique_id) or len(unique_id) > 64))
    ):
        errors.append(
            RegistryError(
                METADATA,
                f"{what} : uniqueId « {unique_id} » invalide (OID de 64 caractères au plus pour un "
                "KOS : son SOPInstanceUID).",
                entry.id,
            )
        )
    if kos:
        references = entry.slots.get("urn:ihe:iti:xds:2013:referenceIdList", [])
        if references and not any(r.endswith(f"^{STUDY_UID_REF}") for r in references):
            errors.append(
                RegistryError(
                    METADATA,
                    f"{what} : referenceIdList du KOS sans {STUDY_UID_REF}.",
                    entry.id,
                )
            )
    return errors


def check_patient_id(
    value: str, what: str, settings: DmpSimSettings, location: str
) -> list[RegistryError]:
    match = PATIENT_ID.match(value)
    if match is None:
        return [
            RegistryError(
                METADATA,
                f"{what} « {value} » : format <INS>^^^&<OID>&ISO^NH attendu.",
                location,
            )
        ]
    if match.group("oid") not in INS_OIDS:
        return [
            RegistryError(
                "XDSUnknownPatientId",
                f"{what} « {value} » : l'autorité {match.group('oid')} n'est pas une autorité "
                "d'INS.",
                location,
            )
        ]
    patient = settings.patient(match.group("ins"))
    if patient is None or patient.oid != match.group("oid"):
        return [
            RegistryError(
                "XDSUnknownPatientId", f"{what} « {value} » : patient inconnu du DMP.", location
            )
        ]
    if not patient.has_dmp:
        return [
            RegistryError(
                "XDSUnknownPatientId", f"{what} « {value} » : ce patient n'a pas de DMP.", location
            )
        ]
    return []


def check_patients(
    submission: Submission, vihf: Vihf, settings: DmpSimSettings
) -> list[RegistryError]:
    if submission.submission_set is None:
        return []
    set_patient = submission.submission_set.identifiers.get(E.SS_PATIENT_ID, "")
    if not set_patient:
        return []
    errors = check_patient_id(
        set_patient, "patientId du lot", settings, submission.submission_set.id
    )
    for entry in submission.entries:
        patient = entry.identifiers.get(E.DE_PATIENT_ID, "")
        if patient and patient != set_patient:
            errors.append(
                RegistryError(
                    "XDSPatientIdDoesNotMatch",
                    f"patientId de la fiche {entry.id} « {patient} » différent de celui du lot "
                    f"« {set_patient} ».",
                    entry.id,
                )
            )
    if vihf.patient_id != set_patient:
        errors.append(
            RegistryError(
                "XDSPatientIdDoesNotMatch",
                f"Le patient du VIHF (resource-id « {vihf.patient_id} ») n'est pas celui du lot "
                f"« {set_patient} ».",
                submission.submission_set.id,
            )
        )
    return errors


def check_documents(submission: Submission) -> list[RegistryError]:
    """Each entry has its Document, whose SHA-1 and size match the metadata."""
    errors = list(submission.document_errors)
    entry_ids = {entry.id for entry in submission.entries}
    for doc_id in submission.documents:
        if doc_id not in entry_ids:
            errors.append(
                RegistryError(
                    "XDSMissingDocumentMetadata",
                    f"Document {doc_id} transmis sans fiche (ExtrinsicObject).",
                    doc_id,
                )
            )
    for entry in submission.entries:
        data = submission.documents.get(entry.id)
        if data is None:
            errors.append(
                RegistryError(
                    "XDSMissingDocument", f"Fiche {entry.id} sans document joint.", entry.id
                )
            )
            continue
        declared_hash, declared_size = entry.slot("hash"), entry.slot("size")
        actual_hash = hashlib.sha1(data).hexdigest()
        if SHA1.match(declared_hash) and declared_hash.lower() != actual_hash:
            errors.append(
                RegistryError(
                    REPOSITORY_METADATA,
                    f"Fiche {entry.id} : hash déclaré {declared_hash} ≠ SHA-1 du document "
                    f"{actual_hash.upper()}.",
                    entry.id,
                )
            )
        if declared_size.isdigit() and int(declared_size) != len(data):
            errors.append(
                RegistryError(
                    REPOSITORY_METADATA,
                    f"Fiche {entry.id} : size déclarée {declared_size} ≠ taille du document "
                    f"{len(data)}.",
                    entry.id,
                )
            )
        if entry.element.get("mimeType") == "application/dicom":
            errors += check_kos(entry, data)
    return errors


def _study_reference(entry: RegistryObject) -> str:
    for value in entry.slots.get("urn:ihe:iti:xds:2013:referenceIdList", []):
        if value.endswith(f"^{STUDY_UID_REF}"):
            return value.split("^", 1)[0]
    return ""


def _kos_problems(entry: RegistryObject, data: bytes) -> list[str]:
    """What is wrong with a KOS document, read as DICOM (empty: a KOS of this entry)."""
    if data[128:132] != b"DICM":
        return ["le document n'est pas un fichier DICOM Part 10"]
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        sop_class = str(dataset.get("SOPClassUID", ""))
        sop_instance = str(dataset.get("SOPInstanceUID", ""))
        patient = str(dataset.get("PatientID", ""))
        qualifiers = dataset.get("IssuerOfPatientIDQualifiersSequence") or []
        issuer = str(qualifiers[0].get("UniversalEntityID", "")) if qualifiers else ""
        study = str(dataset.get("StudyInstanceUID", ""))
        evidence = [
            str(item.get("StudyInstanceUID", ""))
            for item in dataset.get("CurrentRequestedProcedureEvidenceSequence") or []
        ]
    # Untrusted bytes: pydicom raises many kinds of errors on garbage; each is a refusal.
    except Exception as error:  # noqa: BLE001
        return [f"le document n'est pas un KOS DICOM lisible ({type(error).__name__})"]
    problems: list[str] = []
    if sop_class != KOS_SOP_CLASS:
        problems.append(f"SOPClassUID « {sop_class} » : un KOS ({KOS_SOP_CLASS}) est attendu")
    unique_id = entry.identifiers.get(E.DE_UNIQUE_ID, "")
    if sop_instance != unique_id:
        problems.append(f"SOPInstanceUID « {sop_instance} » ≠ uniqueId de la fiche « {unique_id} »")
    match = PATIENT_ID.match(entry.identifiers.get(E.DE_PATIENT_ID, ""))
    if match is not None and patient != match.group("ins"):
        problems.append(f"PatientID « {patient} » ≠ INS de la fiche « {match.group('ins')} »")
    if match is not None and issuer and issuer != match.group("oid"):
        problems.append(f"autorité de l'identifiant patient « {issuer} » ≠ {match.group('oid')}")
    if not evidence:
        problems.append("CurrentRequestedProcedureEvidenceSequence vide : aucune image référencée")
    elif any(uid != study for uid in evidence):
        problems.append("les images référencées ne sont pas toutes de l'examen du KOS")
    reference = _study_reference(entry)
    if reference and reference != study:
        problems.append(f"StudyInstanceUID « {study} » ≠ celui de referenceIdList « {reference} »")
    return problems


def check_kos(entry: RegistryObject, data: bytes) -> list[RegistryError]:
    return [
        RegistryError(REPOSITORY_METADATA, f"Fiche {entry.id} : {problem}.", entry.id)
        for problem in _kos_problems(entry, data)
    ]


def check_unique_ids_in_message(submission: Submission) -> list[RegistryError]:
    seen: dict[str, str] = {}
    errors: list[RegistryError] = []
    for entry in submission.entries:
        unique_id = entry.identifiers.get(E.DE_UNIQUE_ID, "")
        if unique_id and unique_id in seen:
            errors.append(
                RegistryError(
                    "XDSRegistryDuplicateUniqueIdInMessage",
                    f"uniqueId {unique_id} porté par {seen[unique_id]} et {entry.id}.",
                    entry.id,
                )
            )
        seen.setdefault(unique_id, entry.id)
    return errors


def check_signature_document(
    submission: Submission, settings: DmpSimSettings, now: dt.datetime, vihf: Vihf
) -> list[RegistryError]:
    """The submission set is signed (IHE DSG): a signature entry `signs` it, its XML signature
    verifies with a trusted certificate, and its manifest digests every other document."""
    if submission.submission_set is None:
        return []
    set_id = submission.submission_set.id
    signatures = [e for e in submission.entries if is_signature(e)]
    signed_by = {
        a.get("sourceObject", "")
        for a in submission.associations
        if a.get("associationType") == E.SIGNS and a.get("targetObject") == set_id
    }
    signers = [s for s in signatures if s.id in signed_by]
    if not signers:
        return [
            RegistryError(
                METADATA,
                "Lot de soumission non signé : une fiche de signature (classCode "
                f"{E.SIGNATURE_CLASS_CODE}) et une association signs vers le lot sont attendues.",
                set_id,
            )
        ]
    if not settings.verify_signature_document:
        return []
    errors: list[RegistryError] = []
    for signer in signers:
        data = submission.documents.get(signer.id)
        if data is None:
            continue  # reported as XDSMissingDocument
        errors += _verify_signature_document(signer, data, submission, settings, now, vihf)
    return errors


def _verify_signature_document(
    signer: RegistryObject,
    data: bytes,
    submission: Submission,
    settings: DmpSimSettings,
    now: dt.datetime,
    vihf: Vihf,
) -> list[RegistryError]:
    code = "DMPSignatureLotInvalide"
    try:
        root = parse_xml(data)
    except etree.XMLSyntaxError:
        return [RegistryError(code, "Document de signature : XML illisible.", signer.id)]
    signature = root if root.tag == f"{{{DS}}}Signature" else root.find(f".//{{{DS}}}Signature")
    if signature is None:
        return [RegistryError(code, "Document de signature sans ds:Signature.", signer.id)]
    try:
        certificate = keyinfo_certificate(signature, what="document de signature")
        if certificate is None:
            return [
                RegistryError(code, "Document de signature sans certificat (KeyInfo).", signer.id)
            ]
        check_trusted_certificate(
            certificate, load_trusted(settings.trusted_vihf_certs), now, what="lot de soumission"
        )
    except SoapFault as fault:
        return [RegistryError(code, fault.reason, signer.id)]
    if vihf.structure not in certificate_structures(certificate):
        return [
            RegistryError(
                code,
                f"Le lot est signé par une autre structure ({certificate.subject.rfc4514_string()})"
                f" que celle du VIHF (« {vihf.structure} »).",
                signer.id,
            )
        ]
    try:
        verify_enveloping(signature, certificate)
    except SignatureInvalid as error:
        return [
            RegistryError(
                code, f"La signature du lot de soumission est invalide : {error}.", signer.id
            )
        ]
    by_unique_id = {
        e.identifiers.get(E.DE_UNIQUE_ID, ""): e for e in submission.entries if e is not signer
    }
    covered: set[str] = set()
    errors: list[RegistryError] = []
    for reference in signature.iterfind(f".//{{{DS}}}Manifest/{{{DS}}}Reference"):
        uri = reference.get("URI", "")
        unique_id = uri.removeprefix("urn:oid:")
        entry = by_unique_id.get(unique_id)
        if entry is None:
            errors.append(
                RegistryError(code, f"Manifeste : référence {uri} hors du lot.", signer.id)
            )
            continue
        method = reference.find(f"{{{DS}}}DigestMethod")
        algorithm = DIGESTS.get("" if method is None else method.get("Algorithm", ""))
        document = submission.documents.get(entry.id)
        if algorithm is None or document is None:
            errors.append(
                RegistryError(code, f"Manifeste : empreinte de {uri} invérifiable.", signer.id)
            )
            continue
        expected = (reference.findtext(f"{{{DS}}}DigestValue") or "").strip()
        actual = base64.b64encode(hashlib.new(algorithm, document).digest()).decode("ascii")
        if expected != actual:
            errors.append(
                RegistryError(
                    code,
                    f"Manifeste : l'empreinte de {uri} ne correspond pas au document transmis.",
                    signer.id,
                )
            )
        covered.add(entry.id)
    for entry in submission.entries:
        if entry is not signer and entry.id not in covered and entry.id in submission.documents:
            errors.append(
                RegistryError(
                    code,
                    f"Manifeste de signature sans référence au document {entry.id}.",
                    signer.id,
                )
            )
    return errors


def submit_objects(body: etree._Element) -> etree._Element | None:
    """The lcm:SubmitObjectsRequest of an ITI-41 (inside xdsb:…Request) or an ITI-57 body."""
    if body.tag == f"{{{LCM}}}SubmitObjectsRequest":
        return body
    return body.find(f"{{{LCM}}}SubmitObjectsRequest")
