"""ITI-41 (Provide and Register, with RPLC) and ITI-57 (UpdateAvailabilityStatus) of the DMP
simulator: checks against the registry, then storage in one transaction.

Part of the test/demo simulator of the national DMP; never deploy it.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import uuid

from lxml import etree
from sqlalchemy.orm import Session

from drimbox.sim.dmp import ebrim as E
from drimbox.sim.dmp.checks import (
    METADATA,
    Submission,
    check_documents,
    check_entry,
    check_patient_id,
    check_patients,
    check_signature_document,
    check_submission_set,
    check_unique_ids_in_message,
    read_submission,
    submit_objects,
)
from drimbox.sim.dmp.ebrim import RegistryError
from drimbox.sim.dmp.queries import ACCESS_DENIED
from drimbox.sim.dmp.registry import (
    AssociationRow,
    ContentRow,
    EntryRow,
    Registry,
    SubmissionSetRow,
)
from drimbox.sim.dmp.settings import DmpSimSettings
from drimbox.sim.dmp.soap import RIM, XDSB, SoapFault
from drimbox.sim.dmp.vihf import PATIENT_ID, Vihf

REFERENCE_ATTRIBUTES = ("id", "classifiedObject", "registryObject", "sourceObject", "targetObject")


def _require_body(body: etree._Element, tag: str, what: str) -> None:
    if body.tag != tag:
        raise SoapFault(
            "DMPRequeteInvalide", f"{what} attendu dans le corps SOAP, reçu {body.tag}."
        )


def check_associations(submission: Submission, *, update: bool) -> list[RegistryError]:
    """Shape of the associations: HasMember from the set to each entry, RPLC from a new entry,
    signs from the signature entry; UpdateAvailabilityStatus only in ITI-57."""
    errors: list[RegistryError] = []
    set_id = submission.submission_set.id if submission.submission_set else ""
    entry_ids = {e.id for e in submission.entries}
    members: set[str] = set()
    allowed = {E.UPDATE_AVAILABILITY} if update else {E.HAS_MEMBER, E.RPLC, E.SIGNS}
    for association in submission.associations:
        kind = association.get("associationType", "")
        source, target = association.get("sourceObject", ""), association.get("targetObject", "")
        where = association.get("id", "")
        if not where:
            errors.append(RegistryError(METADATA, "Association sans identifiant.", ""))
        if kind not in allowed:
            errors.append(
                RegistryError(
                    METADATA,
                    f"Type d'association non accepté dans cette transaction : {kind}.",
                    where,
                )
            )
            continue
        if kind == E.HAS_MEMBER:
            if source != set_id or target not in entry_ids:
                errors.append(
                    RegistryError(
                        METADATA,
                        "HasMember doit relier le lot de soumission à une fiche de la soumission.",
                        where,
                    )
                )
            elif "Original" not in E.read_slots(association).get("SubmissionSetStatus", []):
                errors.append(
                    RegistryError(
                        METADATA, "HasMember : slot SubmissionSetStatus=Original absent.", where
                    )
                )
            members.add(target)
        elif kind == E.RPLC:
            if source not in entry_ids or not target.startswith("urn:uuid:"):
                errors.append(
                    RegistryError(
                        METADATA,
                        "RPLC doit aller d'une nouvelle fiche vers l'entryUUID (urn:uuid:…) de la "
                        "fiche remplacée.",
                        where,
                    )
                )
        elif kind == E.SIGNS:
            if source not in entry_ids or target != set_id:
                errors.append(
                    RegistryError(
                        METADATA, "signs doit relier la fiche de signature au lot.", where
                    )
                )
        elif kind == E.UPDATE_AVAILABILITY and source != set_id:
            errors.append(
                RegistryError(
                    METADATA, "UpdateAvailabilityStatus doit partir du lot de soumission.", where
                )
            )
    for entry_id in entry_ids - members:
        errors.append(
            RegistryError(
                METADATA,
                f"Fiche {entry_id} non rattachée au lot (association HasMember).",
                entry_id,
            )
        )
    return errors


def owner_check(row: EntryRow, vihf: Vihf, action: str, where: str) -> RegistryError | None:
    """A structure acting in INDIRECTE mode writes only what it published; a professional
    (authorised on the patient, checked before) may act on any entry of the patient."""
    if not vihf.is_publication or row.structure_id == vihf.structure:
        return None
    return RegistryError(
        ACCESS_DENIED,
        f"La structure « {vihf.structure} » ne peut pas {action} la fiche {row.entry_uuid}, "
        f"publiée par la structure « {row.structure_id} » (seuls la structure auteur et les "
        "professionnels autorisés le peuvent).",
        where,
    )


def _new_id(value: str) -> str:
    return value if value.startswith("urn:uuid:") else f"urn:uuid:{uuid.uuid4()}"


def _id_map(submit: etree._Element) -> dict[str, str]:
    """Symbolic ids → entryUUIDs (ids already in urn:uuid form are kept)."""
    mapping: dict[str, str] = {}
    for element in submit.iter():
        if isinstance(element.tag, str) and element.get("id"):
            mapping.setdefault(element.get("id", ""), _new_id(element.get("id", "")))
    return mapping


def _rewrite(element: etree._Element, mapping: dict[str, str]) -> etree._Element:
    result = copy.deepcopy(element)
    for node in result.iter():
        if not isinstance(node.tag, str):
            continue
        for attribute in REFERENCE_ATTRIBUTES:
            value = node.get(attribute)
            if value is not None and value in mapping:
                node.set(attribute, mapping[value])
    return result


def _slot(parent: etree._Element, name: str, value: str) -> None:
    slot = etree.Element(f"{{{RIM}}}Slot", name=name)
    value_list = etree.SubElement(slot, f"{{{RIM}}}ValueList")
    etree.SubElement(value_list, f"{{{RIM}}}Value").text = value
    parent.insert(0, slot)


def _xml(element: etree._Element) -> str:
    return etree.tostring(element, encoding="unicode")


class Publication:
    def __init__(self, settings: DmpSimSettings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry

    # -- ITI-41 ----------------------------------------------------------------------------

    def provide_and_register(
        self, body: etree._Element, vihf: Vihf, now: dt.datetime
    ) -> list[RegistryError]:
        _require_body(
            body,
            f"{{{XDSB}}}ProvideAndRegisterDocumentSetRequest",
            "ProvideAndRegisterDocumentSetRequest",
        )
        submit = submit_objects(body)
        if submit is None:
            return [RegistryError(METADATA, "SubmitObjectsRequest absent.")]
        submission, errors = read_submission(submit, body)
        if submission.submission_set is not None:
            errors += check_submission_set(submission.submission_set)
        if not submission.entries:
            errors.append(RegistryError(METADATA, "Aucune fiche (ExtrinsicObject) à publier."))
        for entry in submission.entries:
            errors += check_entry(entry)
        errors += check_documents(submission)
        errors += check_patients(submission, vihf, self.settings)
        errors += check_unique_ids_in_message(submission)
        errors += check_associations(submission, update=False)
        if self.settings.require_signature_document:
            errors += check_signature_document(submission, self.settings, now, vihf)
        with self.registry.session() as session:
            errors += self._registry_checks(session, submission, vihf)
            if errors:
                return errors
            self._store(session, submit, submission, now, vihf)
        return []

    def _registry_checks(
        self, session: Session, submission: Submission, vihf: Vihf
    ) -> list[RegistryError]:
        errors: list[RegistryError] = []
        if submission.submission_set is not None:
            set_unique_id = submission.submission_set.identifiers.get(E.SS_UNIQUE_ID, "")
            if set_unique_id and self.registry.submission_set_by_unique_id(session, set_unique_id):
                errors.append(
                    RegistryError(
                        "XDSDuplicateUniqueIdInRegistry",
                        f"Le lot de soumission {set_unique_id} est déjà enregistré.",
                        submission.submission_set.id,
                    )
                )
        set_patient = (
            submission.submission_set.identifiers.get(E.SS_PATIENT_ID, "")
            if submission.submission_set
            else ""
        )
        for entry in submission.entries:
            if entry.id.startswith("urn:uuid:") and session.get(EntryRow, entry.id) is not None:
                errors.append(
                    RegistryError(METADATA, f"entryUUID {entry.id} déjà utilisé.", entry.id)
                )
            unique_id = entry.identifiers.get(E.DE_UNIQUE_ID, "")
            existing = self.registry.entry_by_unique_id(session, unique_id) if unique_id else None
            if existing is not None:
                data = submission.documents.get(entry.id)
                sent_hash = (
                    hashlib.sha1(data).hexdigest() if data is not None else entry.slot("hash")
                )
                if sent_hash.lower() == existing.hash.lower():
                    # Same document sent again: the client can recognise its earlier success.
                    errors.append(
                        RegistryError(
                            "XDSDuplicateUniqueIdInRegistry",
                            f"Le document {unique_id} est déjà enregistré (même contenu, "
                            f"entryUUID {existing.entry_uuid}, statut "
                            f"{E.STATUS_NAMES.get(existing.status, existing.status)}).",
                            entry.id,
                        )
                    )
                else:
                    errors.append(
                        RegistryError(
                            "XDSNonIdenticalHash",
                            f"Le uniqueId {unique_id} est déjà enregistré avec un autre contenu "
                            f"(hash {existing.hash.upper()}).",
                            entry.id,
                        )
                    )
        for association in submission.associations:
            if association.get("associationType") != E.RPLC:
                continue
            target = association.get("targetObject", "")
            replaced = session.get(EntryRow, target)
            where = association.get("id", "")
            if replaced is None:
                errors.append(
                    RegistryError(
                        "UnresolvedReferenceException",
                        f"Document remplacé (RPLC) inconnu du DMP : {target}.",
                        where,
                    )
                )
            elif replaced.status != E.APPROVED:
                errors.append(
                    RegistryError(
                        METADATA,
                        f"Le document remplacé {target} n'est pas Approved "
                        f"({E.STATUS_NAMES.get(replaced.status, replaced.status)}).",
                        where,
                    )
                )
            elif set_patient and replaced.patient_id != set_patient:
                errors.append(
                    RegistryError(
                        "XDSPatientIdDoesNotMatch",
                        f"Le document remplacé {target} appartient à un autre patient.",
                        where,
                    )
                )
            elif (denied := owner_check(replaced, vihf, "remplacer", where)) is not None:
                errors.append(denied)
        return errors

    def _store(
        self,
        session: Session,
        submit: etree._Element,
        submission: Submission,
        now: dt.datetime,
        vihf: Vihf,
    ) -> None:
        assert submission.submission_set is not None
        mapping = _id_map(submit)
        set_element = _rewrite(submission.submission_set.element, mapping)
        set_uuid = mapping[submission.submission_set.id]
        set_element.set("lid", set_uuid)
        set_element.set("status", E.APPROVED)
        session.add(
            SubmissionSetRow(
                entry_uuid=set_uuid,
                unique_id=submission.submission_set.identifiers[E.SS_UNIQUE_ID],
                patient_id=submission.submission_set.identifiers[E.SS_PATIENT_ID],
                source_id=submission.submission_set.identifiers.get(E.SS_SOURCE_ID, ""),
                submission_time=now,
                xml=_xml(set_element),
            )
        )
        replaced_by: dict[str, str] = {}
        for association in submission.associations:
            rewritten = _rewrite(association, mapping)
            rewritten.set("status", E.APPROVED)
            session.add(
                AssociationRow(
                    entry_uuid=rewritten.get("id", ""),
                    association_type=rewritten.get("associationType", ""),
                    source=rewritten.get("sourceObject", ""),
                    target=rewritten.get("targetObject", ""),
                    xml=_xml(rewritten),
                )
            )
            if association.get("associationType") == E.RPLC:
                replaced_by[association.get("sourceObject", "")] = association.get(
                    "targetObject", ""
                )
        for entry in submission.entries:
            element = _rewrite(entry.element, mapping)
            entry_uuid = mapping[entry.id]
            element.set("lid", entry_uuid)
            element.set("home", self.settings.home_community_id)
            if "status" in element.attrib:
                del element.attrib["status"]
            _slot(element, "repositoryUniqueId", self.settings.repository_unique_id)
            data = submission.documents[entry.id]
            patient_id = entry.identifiers[E.DE_PATIENT_ID]
            match = PATIENT_ID.match(patient_id)

            def code_of(scheme: str, current: E.RegistryObject = entry) -> str:
                found = current.code(scheme)
                return "" if found is None else found.xds

            authors = [
                person
                for classification in entry.classifications.get(E.DE_AUTHOR, [])
                for person in E.read_slots(classification).get("authorPerson", [])
            ]
            unique_id = entry.identifiers[E.DE_UNIQUE_ID]
            session.add(
                EntryRow(
                    entry_uuid=entry_uuid,
                    unique_id=unique_id,
                    patient_id=patient_id,
                    ins=match.group("ins") if match else "",
                    status=E.APPROVED,
                    mime_type=entry.element.get("mimeType", ""),
                    hash=hashlib.sha1(data).hexdigest().upper(),
                    size=len(data),
                    class_code=code_of(E.DE_CLASS),
                    type_code=code_of(E.DE_TYPE),
                    format_code=code_of(E.DE_FORMAT),
                    event_codes=json.dumps([c.xds for c in entry.codes(E.DE_EVENT)]),
                    confidentiality_codes=json.dumps(
                        [c.xds for c in entry.codes(E.DE_CONFIDENTIALITY)]
                    ),
                    facility_code=code_of(E.DE_FACILITY),
                    practice_code=code_of(E.DE_PRACTICE),
                    reference_ids=json.dumps(
                        entry.slots.get("urn:ihe:iti:xds:2013:referenceIdList", [])
                    ),
                    author_persons=json.dumps(authors),
                    creation_time=entry.slot("creationTime"),
                    service_start_time=entry.slot("serviceStartTime"),
                    service_stop_time=entry.slot("serviceStopTime"),
                    submission_time=now,
                    status_time=now,
                    submission_set_uuid=set_uuid,
                    repository_unique_id=self.settings.repository_unique_id,
                    replaces=replaced_by.get(entry.id),
                    structure_id=vihf.structure,
                    xml=_xml(element),
                )
            )
            session.flush()
            session.add(ContentRow(unique_id=unique_id, data=data))
        for old_uuid in replaced_by.values():
            replaced = session.get(EntryRow, old_uuid)
            if replaced is not None:
                replaced.status = E.DEPRECATED
                replaced.status_time = now

    # -- ITI-57 ----------------------------------------------------------------------------

    def update_document_set(
        self, body: etree._Element, vihf: Vihf, now: dt.datetime
    ) -> list[RegistryError]:
        submit = submit_objects(body)
        if submit is None:
            raise SoapFault("DMPRequeteInvalide", "SubmitObjectsRequest attendu (ITI-57).")
        submission, errors = read_submission(submit, None)
        if submission.entries:
            errors.append(
                RegistryError(
                    METADATA,
                    "Seules les mises à jour de statut (UpdateAvailabilityStatus) sont acceptées.",
                )
            )
        set_patient = ""
        if submission.submission_set is not None:
            errors += check_submission_set(submission.submission_set)
            set_patient = submission.submission_set.identifiers.get(E.SS_PATIENT_ID, "")
            if set_patient:
                errors += check_patient_id(
                    set_patient, "patientId du lot", self.settings, submission.submission_set.id
                )
                if set_patient != vihf.patient_id:
                    errors.append(
                        RegistryError(
                            "XDSPatientIdDoesNotMatch",
                            f"Le patient du VIHF « {vihf.patient_id} » n'est pas celui du lot "
                            f"« {set_patient} ».",
                            submission.submission_set.id,
                        )
                    )
        errors += check_associations(submission, update=True)
        updates = [
            a for a in submission.associations if a.get("associationType") == E.UPDATE_AVAILABILITY
        ]
        if not updates:
            errors.append(RegistryError(METADATA, "Aucune association UpdateAvailabilityStatus."))
        with self.registry.session() as session:
            if submission.submission_set is not None:
                unique_id = submission.submission_set.identifiers.get(E.SS_UNIQUE_ID, "")
                if unique_id and self.registry.submission_set_by_unique_id(session, unique_id):
                    errors.append(
                        RegistryError(
                            "XDSDuplicateUniqueIdInRegistry",
                            f"Le lot de soumission {unique_id} est déjà enregistré.",
                            submission.submission_set.id,
                        )
                    )
            changes: list[tuple[EntryRow, str]] = []
            for association in updates:
                errors += self._check_update(session, association, set_patient, changes, vihf)
            if errors:
                return errors
            assert submission.submission_set is not None
            mapping = _id_map(submit)
            set_element = _rewrite(submission.submission_set.element, mapping)
            set_uuid = mapping[submission.submission_set.id]
            set_element.set("status", E.APPROVED)
            session.add(
                SubmissionSetRow(
                    entry_uuid=set_uuid,
                    unique_id=submission.submission_set.identifiers[E.SS_UNIQUE_ID],
                    patient_id=set_patient,
                    source_id=submission.submission_set.identifiers.get(E.SS_SOURCE_ID, ""),
                    submission_time=now,
                    xml=_xml(set_element),
                )
            )
            for association in updates:
                rewritten = _rewrite(association, mapping)
                session.add(
                    AssociationRow(
                        entry_uuid=rewritten.get("id", ""),
                        association_type=E.UPDATE_AVAILABILITY,
                        source=rewritten.get("sourceObject", ""),
                        target=rewritten.get("targetObject", ""),
                        xml=_xml(rewritten),
                    )
                )
            for row, new_status in changes:
                row.status = new_status
                row.status_time = now
        return []

    def _check_update(
        self,
        session: Session,
        association: etree._Element,
        set_patient: str,
        changes: list[tuple[EntryRow, str]],
        vihf: Vihf,
    ) -> list[RegistryError]:
        where = association.get("id", "")
        target = association.get("targetObject", "")
        slots = E.read_slots(association)
        original = (slots.get("OriginalStatus") or [""])[0]
        new = (slots.get("NewStatus") or [""])[0]
        row = session.get(EntryRow, target)
        if row is None:
            return [
                RegistryError(
                    "UnresolvedReferenceException", f"Fiche inconnue du DMP : {target}.", where
                )
            ]
        if not original or not new:
            return [
                RegistryError(
                    "XDSMetadataUpdateError",
                    "Slots OriginalStatus et NewStatus obligatoires.",
                    where,
                )
            ]
        if new not in (E.DELETED, E.DEPRECATED, E.APPROVED):
            return [
                RegistryError("XDSMetadataUpdateError", f"NewStatus non accepté : {new}.", where)
            ]
        if row.status != original:
            return [
                RegistryError(
                    "XDSMetadataUpdateError",
                    f"OriginalStatus {original} ≠ statut actuel de la fiche "
                    f"({E.STATUS_NAMES.get(row.status, row.status)}).",
                    where,
                )
            ]
        if row.status == E.DELETED:
            return [RegistryError("XDSMetadataUpdateError", "La fiche est déjà supprimée.", where)]
        if set_patient and row.patient_id != set_patient:
            return [
                RegistryError(
                    "XDSPatientIdDoesNotMatch",
                    f"La fiche {target} appartient à un autre patient que celui du lot.",
                    where,
                )
            ]
        denied = owner_check(row, vihf, "modifier", where)
        if denied is not None:
            return [denied]
        changes.append((row, new))
        return []
