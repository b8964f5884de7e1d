"""ebRIM 3.0 / XDS.b vocabulary of the DMP simulator: UUIDs, element readers, registry errors.

Part of the test/demo simulator of the national DMP; never deploy it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from drimbox.sim.dmp.soap import RIM, RS

# Object types and classification schemes (IHE ITI TF-3 §4.2.5).
STABLE_ENTRY = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
ON_DEMAND_ENTRY = "urn:uuid:34268e47-fdf5-41a6-ba33-82133c465248"
SUBMISSION_SET_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
FOLDER_NODE = "urn:uuid:d9d542f3-6cc4-48b6-8870-ea235fbc94c2"

SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"

DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_TYPE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_FORMAT = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_FACILITY = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_EVENT = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"

HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
SIGNS = "urn:ihe:iti:2007:AssociationType:signs"
UPDATE_AVAILABILITY = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"

APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
DELETED = "urn:asip:ci-sis:2010:StatusType:Deleted"
STATUS_NAMES = {APPROVED: "Approved", DEPRECATED: "Deprecated", DELETED: "Deleted"}

# IHE DSG signature document: classCode and the KOS markers.
SIGNATURE_CLASS_CODE = "urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1"
KOS_TYPE_CODE = "IMG-KOS"
KOS_FORMAT_CODE = "1.2.840.10008.5.1.4.1.1.88.59"

SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
PARTIAL_SUCCESS = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
SEVERITY_ERROR = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"


@dataclass(frozen=True)
class RegistryError:
    """One `rs:RegistryError` (errorCode, codeContext, location)."""

    code: str
    context: str
    location: str = ""


@dataclass(frozen=True)
class Code:
    code: str
    scheme: str
    display: str = ""

    @property
    def xds(self) -> str:
        """The stored-query form `code^^scheme`."""
        return f"{self.code}^^{self.scheme}"


@dataclass
class RegistryObject:
    """An ExtrinsicObject or RegistryPackage with what its checks need, by classification
    scheme / identification scheme. Classifications given at the top level of the
    RegistryObjectList (`classifiedObject=…`) are merged in."""

    element: etree._Element
    id: str
    slots: dict[str, list[str]]
    classifications: dict[str, list[etree._Element]] = field(default_factory=dict)
    identifiers: dict[str, str] = field(default_factory=dict)
    classification_nodes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        node = self.element.find(f"{{{RIM}}}Name/{{{RIM}}}LocalizedString")
        return "" if node is None else node.get("value", "")

    def slot(self, name: str) -> str:
        values = self.slots.get(name) or [""]
        return values[0]

    def codes(self, scheme: str) -> list[Code]:
        result = []
        for classification in self.classifications.get(scheme, []):
            node = classification.get("nodeRepresentation", "")
            slots = read_slots(classification)
            coding = (slots.get("codingScheme") or [""])[0]
            name = classification.find(f"{{{RIM}}}Name/{{{RIM}}}LocalizedString")
            result.append(Code(node, coding, "" if name is None else name.get("value", "")))
        return result

    def code(self, scheme: str) -> Code | None:
        codes = self.codes(scheme)
        return codes[0] if codes else None


def read_slots(element: etree._Element) -> dict[str, list[str]]:
    slots: dict[str, list[str]] = {}
    for slot in element.findall(f"{{{RIM}}}Slot"):
        values = [
            (value.text or "").strip()
            for value in slot.iterfind(f"{{{RIM}}}ValueList/{{{RIM}}}Value")
        ]
        slots.setdefault(slot.get("name", ""), []).extend(values)
    return slots


def read_object(element: etree._Element) -> RegistryObject:
    obj = RegistryObject(element, element.get("id", ""), read_slots(element))
    for classification in element.findall(f"{{{RIM}}}Classification"):
        add_classification(obj, classification)
    for identifier in element.findall(f"{{{RIM}}}ExternalIdentifier"):
        obj.identifiers[identifier.get("identificationScheme", "")] = identifier.get("value", "")
    return obj


def add_classification(obj: RegistryObject, classification: etree._Element) -> None:
    scheme = classification.get("classificationScheme")
    if scheme:
        obj.classifications.setdefault(scheme, []).append(classification)
    node = classification.get("classificationNode")
    if node:
        obj.classification_nodes.append(node)


def registry_response(errors: list[RegistryError], *, partial: bool = False) -> etree._Element:
    status = SUCCESS if not errors else (PARTIAL_SUCCESS if partial else FAILURE)
    response = etree.Element(f"{{{RS}}}RegistryResponse", nsmap={"rs": RS}, status=status)
    append_errors(response, errors)
    return response


def append_errors(parent: etree._Element, errors: list[RegistryError]) -> None:
    if not errors:
        return
    error_list = etree.SubElement(parent, f"{{{RS}}}RegistryErrorList")
    error_list.set("highestSeverity", SEVERITY_ERROR)
    for error in errors:
        node = etree.SubElement(error_list, f"{{{RS}}}RegistryError")
        node.set("errorCode", error.code)
        node.set("codeContext", error.context)
        node.set("severity", SEVERITY_ERROR)
        node.set("location", error.location)
