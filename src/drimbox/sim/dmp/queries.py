"""ITI-18 stored queries and ITI-43 retrieve of the DMP simulator.

Stored queries: FindDocuments, FindDocumentsByReferenceId, GetDocuments, GetAssociations, with
the XDS parameter syntax (`('a','b')` lists, `code^^scheme` codes, DTM time ranges: From
inclusive, To exclusive). Answers carry the ExtrinsicObjects as registered (LeafClass) or
ObjectRefs. A consultation (any mode but INDIRECTE) sees only patients it is authorised on and
never the entries masked to professionals (MASQUE_PS) unless it authored them; a structure
acting in INDIRECTE mode (no authorised professional) sees only the entries it published.
Part of the test/demo simulator of the national DMP; never deploy it.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass

from lxml import etree
from sqlalchemy.orm import Session

from drimbox.sim.dmp import ebrim as E
from drimbox.sim.dmp.ebrim import RegistryError
from drimbox.sim.dmp.registry import AssociationRow, EntryRow, Registry
from drimbox.sim.dmp.settings import DmpSimSettings
from drimbox.sim.dmp.soap import QUERY, RIM, RS, SIM, XDSB, SoapFault, parse_xml
from drimbox.sim.dmp.vihf import Vihf

FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
FIND_BY_REFERENCE_ID = "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
GET_ASSOCIATIONS = "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155"
QUERY_NAMES = {
    FIND_DOCUMENTS: "FindDocuments",
    FIND_BY_REFERENCE_ID: "FindDocumentsByReferenceId",
    GET_DOCUMENTS: "GetDocuments",
    GET_ASSOCIATIONS: "GetAssociations",
}
MASKED_TO_PROFESSIONALS = "MASQUE_PS"
ACCESS_DENIED = "DMPAccesRefuse"

CODE_PARAMETERS = {
    "$XDSDocumentEntryClassCode": "class_code",
    "$XDSDocumentEntryTypeCode": "type_code",
    "$XDSDocumentEntryFormatCode": "format_code",
    "$XDSDocumentEntryPracticeSettingCode": "practice_code",
    "$XDSDocumentEntryHealthcareFacilityTypeCode": "facility_code",
}
TIME_PARAMETERS = {
    "$XDSDocumentEntryCreationTime": "creation_time",
    "$XDSDocumentEntryServiceStartTime": "service_start_time",
    "$XDSDocumentEntryServiceStopTime": "service_stop_time",
}


class QueryError(Exception):
    def __init__(self, error: RegistryError) -> None:
        super().__init__(error.context)
        self.error = error


def parse_values(text: str) -> list[str]:
    """`('a','b')` / `'a'` / `a` → ["a", "b"] (commas inside quotes kept)."""
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    values = re.findall(r"'((?:[^']|'')*)'|([^,\s][^,]*)", text)
    return [(quoted or bare).replace("''", "'").strip() for quoted, bare in values]


@dataclass
class Parameters:
    slots: dict[str, list[list[str]]]

    @classmethod
    def read(cls, query: etree._Element) -> Parameters:
        slots: dict[str, list[list[str]]] = {}
        for slot in query.findall(f"{{{RIM}}}Slot"):
            values: list[str] = []
            for value in slot.iterfind(f"{{{RIM}}}ValueList/{{{RIM}}}Value"):
                values.extend(parse_values(value.text or ""))
            slots.setdefault(slot.get("name", ""), []).append(values)
        return cls(slots)

    def one_of(self, name: str) -> list[str]:
        """All values of a parameter (ORed), across repeated slots."""
        return [v for group in self.slots.get(name, []) for v in group]

    def groups(self, name: str) -> list[list[str]]:
        """Repeated slots: AND of ORs (eventCodeList)."""
        return self.slots.get(name, [])

    def single(self, name: str) -> str:
        values = self.one_of(name)
        if len(values) > 1:
            raise QueryError(
                RegistryError("XDSStoredQueryParamNumber", f"{name} n'accepte qu'une valeur.")
            )
        return values[0] if values else ""

    def required(self, name: str) -> list[str]:
        values = self.one_of(name)
        if not values:
            raise QueryError(
                RegistryError("XDSStoredQueryMissingParam", f"Paramètre obligatoire {name} absent.")
            )
        return values


def _dtm(value: str) -> str:
    return (value + "00000000000000")[:14]


def _matches_codes(value: str, wanted: list[str]) -> bool:
    return value in wanted


def _visible(row: EntryRow, vihf: Vihf) -> bool:
    # A structure (INDIRECTE, no professional authorised) sees only what it published.
    if vihf.is_publication:
        return row.structure_id == vihf.structure
    codes = json.loads(row.confidentiality_codes)
    if not any(c.split("^^")[0] == MASKED_TO_PROFESSIONALS for c in codes):
        return True
    authors = json.loads(row.author_persons)
    return any(a.split("^")[0] == vihf.name_id for a in authors)


class Consultation:
    def __init__(self, settings: DmpSimSettings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry

    def check_access(self, session: Session, vihf: Vihf) -> RegistryError | None:
        """Consultation needs an authorisation on the patient (TD0.3); publication does not."""
        patient = self.settings.patient(vihf.ins)
        if patient is None or not patient.has_dmp:
            return RegistryError(
                "XDSUnknownPatientId", f"Patient {vihf.patient_id} inconnu ou sans DMP."
            )
        if vihf.is_publication or not self.settings.require_authorisation:
            return None
        if vihf.name_id in patient.blocked:
            return RegistryError(
                ACCESS_DENIED, "Le patient a interdit l'accès de ce professionnel à son DMP."
            )
        if not self.registry.is_authorised(session, vihf.ins, vihf.name_id):
            return RegistryError(
                ACCESS_DENIED,
                f"Le professionnel {vihf.name_id} n'est pas autorisé sur le DMP de ce patient "
                "(TD0.3 setAuthorization requis).",
            )
        return None

    # -- ITI-18 ----------------------------------------------------------------------------

    def stored_query(self, body: etree._Element, vihf: Vihf) -> etree._Element:
        if body.tag != f"{{{QUERY}}}AdhocQueryRequest":
            raise SoapFault("DMPRequeteInvalide", "AdhocQueryRequest attendu (ITI-18).")
        option = body.find(f"{{{QUERY}}}ResponseOption")
        return_type = "LeafClass" if option is None else option.get("returnType", "LeafClass")
        query = body.find(f"{{{RIM}}}AdhocQuery")
        query_id = "" if query is None else query.get("id", "")
        response = etree.Element(
            f"{{{QUERY}}}AdhocQueryResponse", nsmap={"query": QUERY, "rim": RIM, "rs": RS}
        )
        objects: list[etree._Element] = []
        try:
            if query is None or query_id not in QUERY_NAMES:
                raise QueryError(
                    RegistryError(
                        "XDSUnknownStoredQuery", f"Requête stockée inconnue : {query_id}."
                    )
                )
            if return_type not in ("LeafClass", "ObjectRef"):
                raise QueryError(
                    RegistryError("XDSRegistryError", f"returnType non supporté : {return_type}.")
                )
            parameters = Parameters.read(query)
            with self.registry.session() as session:
                denied = self.check_access(session, vihf)
                if denied is not None:
                    raise QueryError(denied)
                if query_id == GET_ASSOCIATIONS:
                    objects = self._associations(session, parameters, vihf, return_type)
                else:
                    rows = self._entries(session, query_id, parameters, vihf)
                    objects = [self._leaf(row, return_type) for row in rows]
        except QueryError as error:
            response.set("status", E.FAILURE)
            E.append_errors(response, [error.error])
            etree.SubElement(response, f"{{{RIM}}}RegistryObjectList")
            return response
        response.set("status", E.SUCCESS)
        object_list = etree.SubElement(response, f"{{{RIM}}}RegistryObjectList")
        for obj in objects:
            object_list.append(obj)
        return response

    def _leaf(self, row: EntryRow, return_type: str) -> etree._Element:
        if return_type == "ObjectRef":
            return etree.Element(f"{{{RIM}}}ObjectRef", id=row.entry_uuid)
        element = parse_xml(row.xml.encode("utf-8"))
        element.set("status", row.status)
        return element

    def _entries(
        self, session: Session, query_id: str, parameters: Parameters, vihf: Vihf
    ) -> list[EntryRow]:
        if query_id == GET_DOCUMENTS:
            uuids = parameters.one_of("$XDSDocumentEntryEntryUUID")
            unique_ids = parameters.one_of("$XDSDocumentEntryUniqueId")
            if bool(uuids) == bool(unique_ids):
                raise QueryError(
                    RegistryError(
                        "XDSStoredQueryParamNumber",
                        "GetDocuments : $XDSDocumentEntryEntryUUID ou $XDSDocumentEntryUniqueId "
                        "(l'un des deux) est attendu.",
                    )
                )
            rows = [
                row
                for row in self.registry.entries(session, patient_id=vihf.patient_id)
                if row.entry_uuid in uuids or row.unique_id in unique_ids
            ]
            return [row for row in rows if _visible(row, vihf)]
        patient_id = parameters.required("$XDSDocumentEntryPatientId")
        if len(patient_id) != 1:
            raise QueryError(
                RegistryError(
                    "XDSStoredQueryParamNumber", "$XDSDocumentEntryPatientId : une seule valeur."
                )
            )
        if patient_id[0] != vihf.patient_id:
            raise QueryError(
                RegistryError(
                    "XDSPatientIdDoesNotMatch",
                    f"Le patient recherché « {patient_id[0]} » n'est pas celui du VIHF "
                    f"« {vihf.patient_id} ».",
                )
            )
        statuses = parameters.required("$XDSDocumentEntryStatus")
        rows = self.registry.entries(session, patient_id=patient_id[0], statuses=statuses)
        if query_id == FIND_BY_REFERENCE_ID:
            wanted = parameters.required("$XDSDocumentEntryReferenceIdList")
            rows = [r for r in rows if set(json.loads(r.reference_ids)) & set(wanted)]
        for name, column in CODE_PARAMETERS.items():
            values = parameters.one_of(name)
            if values:
                rows = [r for r in rows if _matches_codes(getattr(r, column), values)]
        for group in parameters.groups("$XDSDocumentEntryEventCodeList"):
            rows = [r for r in rows if set(json.loads(r.event_codes)) & set(group)]
        for group in parameters.groups("$XDSDocumentEntryConfidentialityCode"):
            rows = [r for r in rows if set(json.loads(r.confidentiality_codes)) & set(group)]
        for name, column in TIME_PARAMETERS.items():
            low, high = parameters.single(f"{name}From"), parameters.single(f"{name}To")
            if low:
                rows = [
                    r for r in rows if getattr(r, column) and _dtm(getattr(r, column)) >= _dtm(low)
                ]
            if high:
                rows = [
                    r for r in rows if getattr(r, column) and _dtm(getattr(r, column)) < _dtm(high)
                ]
        authors = parameters.one_of("$XDSDocumentEntryAuthorPerson")
        if authors:
            patterns = [
                re.compile(re.escape(a).replace("%", ".*").replace("_", ".") + "$") for a in authors
            ]
            rows = [
                r
                for r in rows
                if any(p.match(person) for p in patterns for person in json.loads(r.author_persons))
            ]
        return [row for row in rows if _visible(row, vihf)]

    def _associations(
        self, session: Session, parameters: Parameters, vihf: Vihf, return_type: str
    ) -> list[etree._Element]:
        uuids = parameters.required("$uuid")
        own = {
            row.entry_uuid
            for row in self.registry.entries(session, patient_id=vihf.patient_id)
            if _visible(row, vihf)
        }
        rows: list[AssociationRow] = [
            a for a in self.registry.associations_of(session, [u for u in uuids if u in own])
        ]
        if return_type == "ObjectRef":
            return [etree.Element(f"{{{RIM}}}ObjectRef", id=a.entry_uuid) for a in rows]
        return [parse_xml(a.xml.encode("utf-8")) for a in rows]

    # -- ITI-43 ----------------------------------------------------------------------------

    def retrieve(self, body: etree._Element, vihf: Vihf) -> etree._Element:
        if body.tag != f"{{{XDSB}}}RetrieveDocumentSetRequest":
            raise SoapFault("DMPRequeteInvalide", "RetrieveDocumentSetRequest attendu (ITI-43).")
        requests = body.findall(f"{{{XDSB}}}DocumentRequest")
        response = etree.Element(
            f"{{{XDSB}}}RetrieveDocumentSetResponse", nsmap={"xdsb": XDSB, "rs": RS, "sim": SIM}
        )
        registry_response = etree.SubElement(response, f"{{{RS}}}RegistryResponse")
        errors: list[RegistryError] = []
        found: list[tuple[EntryRow, bytes]] = []
        with self.registry.session() as session:
            denied = self.check_access(session, vihf)
            if denied is not None:
                errors.append(denied)
                requests = []
            if not requests and denied is None:
                errors.append(RegistryError("XDSRegistryError", "Aucun DocumentRequest."))
            for request in requests:
                repository = (request.findtext(f"{{{XDSB}}}RepositoryUniqueId") or "").strip()
                unique_id = (request.findtext(f"{{{XDSB}}}DocumentUniqueId") or "").strip()
                if repository != self.settings.repository_unique_id:
                    errors.append(
                        RegistryError(
                            "XDSUnknownRepositoryId",
                            f"Entrepôt inconnu : {repository}.",
                            unique_id,
                        )
                    )
                    continue
                row = self.registry.entry_by_unique_id(session, unique_id)
                data = None if row is None else self.registry.content(session, unique_id)
                if (
                    row is None
                    or data is None
                    or row.status == E.DELETED
                    or row.patient_id != vihf.patient_id
                    or not _visible(row, vihf)
                ):
                    errors.append(
                        RegistryError(
                            "XDSDocumentUniqueIdError",
                            f"Document {unique_id} introuvable pour ce patient.",
                            unique_id,
                        )
                    )
                    continue
                found.append((row, data))
        if not errors:
            status = E.SUCCESS
        elif found:
            status = E.PARTIAL_SUCCESS
        else:
            status = E.FAILURE
        registry_response.set("status", status)
        E.append_errors(registry_response, errors)
        for row, data in found:
            document_response = etree.SubElement(response, f"{{{XDSB}}}DocumentResponse")
            etree.SubElement(
                document_response, f"{{{XDSB}}}RepositoryUniqueId"
            ).text = row.repository_unique_id
            etree.SubElement(document_response, f"{{{XDSB}}}DocumentUniqueId").text = row.unique_id
            etree.SubElement(document_response, f"{{{XDSB}}}mimeType").text = row.mime_type
            document = etree.SubElement(document_response, f"{{{XDSB}}}Document")
            # soap.build_response moves it to a MIME part of this type.
            document.set(f"{{{SIM}}}mimeType", row.mime_type)
            document.text = base64.b64encode(data).decode("ascii")
        return response
