"""Constants of the DMP wire formats: XML namespaces, XDS/ebRIM UUIDs, SOAP actions, code systems.

Owns the names and fixed codes that several DMP modules share, so that each appears once. It holds
no logic and must not grow any: builders live in `metadata`, `vihf`, `xades` and `soap`.
Values marked "XDS.xml" come from the request the DMP test environment accepted
(`drimbox/samples/ans/validators/XDS.xml`).
"""

from __future__ import annotations

from typing import Final

from drimbox.cda.model import Code

# --- XML namespaces -----------------------------------------------------------------------------
SOAP_NS: Final = "http://www.w3.org/2003/05/soap-envelope"
WSA_NS: Final = "http://www.w3.org/2005/08/addressing"
WSSE_NS: Final = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
SAML_NS: Final = "urn:oasis:names:tc:SAML:2.0:assertion"
DS_NS: Final = "http://www.w3.org/2000/09/xmldsig#"
XADES_NS: Final = "http://uri.etsi.org/01903/v1.3.2#"
XSI_NS: Final = "http://www.w3.org/2001/XMLSchema-instance"
HL7_NS: Final = "urn:hl7-org:v3"
RIM_NS: Final = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
RS_NS: Final = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
LCM_NS: Final = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
QUERY_NS: Final = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
XDSB_NS: Final = "urn:ihe:iti:xds-b:2007"
XOP_NS: Final = "http://www.w3.org/2004/08/xop/include"
XML_NS: Final = "http://www.w3.org/XML/1998/namespace"
DMP_HABILITATIONS_NS: Final = "urn:si-dmp-habilitations"

WSA_ANONYMOUS: Final = "http://www.w3.org/2005/08/addressing/anonymous"

# --- SOAP actions (WS-Addressing) and the DMP service each one is sent to -----------------------
ACTION_ITI41: Final = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ACTION_ITI18: Final = "urn:ihe:iti:2007:RegistryStoredQuery"
ACTION_ITI43: Final = "urn:ihe:iti:2007:RetrieveDocumentSet"
ACTION_ITI57: Final = "urn:ihe:iti:2010:UpdateDocumentSet"
ACTION_TD02: Final = "urn:hl7-org:v3:PRPA_IN201307UV02"
ACTION_TD03: Final = "urn:si-dmp-habilitations:HabilitationsEndPoint:setAuthorization"

# --- ebRIM object types, classification schemes, identification schemes (XDS.b, ITI TF-3 4.2) ---
DOCUMENT_ENTRY_STABLE: Final = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
SUBMISSION_SET_NODE: Final = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"

SS_AUTHOR: Final = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE: Final = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_PATIENT_ID: Final = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_SOURCE_ID: Final = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_UNIQUE_ID: Final = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"

DE_AUTHOR: Final = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS: Final = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_TYPE: Final = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_CONFIDENTIALITY: Final = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_FORMAT: Final = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_FACILITY_TYPE: Final = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE_SETTING: Final = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_EVENT: Final = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
DE_PATIENT_ID: Final = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID: Final = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"

ASSOC_HAS_MEMBER: Final = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
ASSOC_RPLC: Final = "urn:ihe:iti:2007:AssociationType:RPLC"
ASSOC_SIGNS: Final = "urn:ihe:iti:2007:AssociationType:signs"
ASSOC_UPDATE_AVAILABILITY: Final = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"

STATUS_APPROVED: Final = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
STATUS_DEPRECATED: Final = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
STATUS_DELETED: Final = "urn:asip:ci-sis:2010:StatusType:Deleted"  # DMP extension (CI-SIS)

RESPONSE_SUCCESS: Final = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
RESPONSE_FAILURE: Final = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
RESPONSE_PARTIAL: Final = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"

# --- Registry stored queries (ITI-18) -----------------------------------------------------------
QUERY_FIND_DOCUMENTS: Final = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
QUERY_FIND_DOCUMENTS_BY_REFERENCE_ID: Final = "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492"
QUERY_GET_DOCUMENTS: Final = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
QUERY_GET_ASSOCIATIONS: Final = "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155"

# --- referenceIdList types (ITI TF-3 4.2.3.2.28) ------------------------------------------------
REF_ACCESSION: Final = "urn:ihe:iti:xds:2013:accession"
REF_ORDER: Final = "urn:ihe:iti:xds:2013:order"
REF_STUDY_UID: Final = "urn:ihe:iti:xds:2016:studyInstanceUID"
# Assigning authority of the study UID in referenceIdList (CX.4 `&OID&ISO`, as XDS.xml carries
# one): DICOM's UID root, the namespace every study UID lives in (XDS.xml's 1.2.3.4.5.6 is a
# placeholder). The Conso finds study references with any CX.4, or none.
STUDY_UID_AUTHORITY: Final = "1.2.840.10008"
# The authorities a Conso tries first when it searches a study UID (ours, XDS.xml's).
STUDY_UID_AUTHORITIES: Final = (STUDY_UID_AUTHORITY, "1.2.3.4.5.6")
CCAM_SYSTEM: Final = "1.2.250.1.213.2.5"
# The CDA author code system (TRE_G15 profession / TRE_R38 specialty, "G15_10/SM44").
AUTHOR_SPECIALTY_SYSTEM: Final = "1.2.250.1.213.1.1.4.5"
REFERENCE_ID_LIST: Final = "urn:ihe:iti:xds:2013:referenceIdList"

# --- Identifier authorities ---------------------------------------------------------------------
RPPS_OID: Final = "1.2.250.1.71.4.2.1"
STRUCTURE_OID: Final = "1.2.250.1.71.4.2.2"
PROFESSION_SYSTEM: Final = "1.2.250.1.71.1.2.7"  # TRE_G15-ProfessionSante
SPECIALTY_SYSTEM: Final = "1.2.250.1.71.4.2.5"  # TRE_R38-SpecialiteOrdinale
ACTIVITY_SECTOR_SYSTEM: Final = "1.2.250.1.71.4.2.4"  # TRE_R02-SecteurActivite
SNOMED_CT: Final = "2.16.840.1.113883.6.96"
DICOM_DCM: Final = "1.2.840.10008.2.16.4"

# --- DocumentEntry codes (XDS.xml) --------------------------------------------------------------
KOS_MIME_TYPE: Final = "application/dicom"
KOS_TITLE: Final = "Reference d'Objets d'un Examen d'Imagerie"
KOS_CLASS: Final = Code("31", "1.2.250.1.213.1.1.4.1", "Imagerie médicale")
KOS_TYPE: Final = Code(
    "IMG-KOS", "1.2.250.1.213.1.1.4.12", "Reference d'objets d'un examen d'imagerie"
)
KOS_FORMAT: Final = Code(
    "1.2.840.10008.5.1.4.1.1.88.59",
    "1.2.840.10008.2.6.1",
    "Document de Références d'objets d'imagerie selon profil IHE RAD XDS-I",
)
CONFIDENTIALITY_NORMAL: Final = Code("N", "2.16.840.1.113883.5.25", "Normal")
CONFIDENTIALITY_DMP_SYSTEM: Final = "1.2.250.1.213.1.1.4.13"
MODALITY_VALUE_SET: Final = "1.2.250.1.213.1.1.5.618"  # JDV_ModaliteAcquisition_CISIS
REGION_VALUE_SET: Final = "1.2.250.1.213.1.1.5.695"  # JDV_RegionAnatomique_CISIS
REGION_SYSTEMS_KEPT: Final = frozenset({"1.2.250.1.213.2.5", REGION_VALUE_SET})

SIGNATURE_MIME_TYPE: Final = "text/xml"
SIGNATURE_TITLE: Final = "Source"
SIGNATURE_CLASS: Final = Code("urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", "URN", "Digital Signature")
SIGNATURE_TYPE: Final = Code("E1762", "ASTM", "Full Document")
SIGNATURE_FORMAT: Final = Code(
    "http://www.w3.org/2000/09/xmldsig#", "URN", "Default Signature Style"
)
SIGNATURE_PURPOSE: Final = Code("1.2.840.10065.1.12.1.14", "1.2.840.10065.1.12", "Source")
SIGNATURE_LANGUAGE: Final = "art"  # IHE DSG: "artificial" language

# Submission set contentTypeCode: TRE_R209-TypeActivite (1.2.250.1.213.2.2). XDS.xml's value
# (04) is the fallback; a structure may configure its own default.
CONTENT_TYPE_SYSTEM: Final = "1.2.250.1.213.2.2"
DEFAULT_CONTENT_TYPE: Final = Code("04", CONTENT_TYPE_SYSTEM, "Hospitalisation de jour")
# The report's encounter (CDA encompassingEncounter/code, HL7 v3 ActEncounterCode) → the
# TRE_R209 type of activity. Codes without a sure match (EMER, FLD, HH, VR…) are left out: the
# structure's default applies (docs/conformance.md, "contentTypeCode").
ENCOUNTER_CONTENT_TYPES: Final[dict[str, Code]] = {
    "AMB": Code("07", CONTENT_TYPE_SYSTEM, "Consultation Soins Externes"),
    "IMP": Code("03", CONTENT_TYPE_SYSTEM, "Hospitalisation complète"),
    "ACUTE": Code("03", CONTENT_TYPE_SYSTEM, "Hospitalisation complète"),
    "NONAC": Code("03", CONTENT_TYPE_SYSTEM, "Hospitalisation complète"),
    "SS": Code("04", CONTENT_TYPE_SYSTEM, "Hospitalisation de jour"),
}
ENCOUNTER_SYSTEM: Final = "2.16.840.1.113883.5.4"  # HL7 v3 ActCode
DEFAULT_PRACTICE_SETTING: Final = Code("AMBULATOIRE", "1.2.250.1.213.1.1.4.9", "Ambulatoire")


def flag_raised(value: object) -> bool:
    """An OBX flag set: `True` as the intake stores it, or the HL7 text "Y" / "O"."""
    return value is True or (isinstance(value, str) and value.strip().upper() in ("Y", "O"))


# OBX flags of the report (keys as the HL7 intake yields them) → DMP confidentiality codes.
CONFIDENTIALITY_FLAGS: Final[dict[str, Code]] = {
    "MASQUE_PS": Code(
        "MASQUE_PS", CONFIDENTIALITY_DMP_SYSTEM, "Masqué aux professionnels de santé"
    ),
    "INVISIBLE_PATIENT": Code(
        "INVISIBLE_PATIENT", CONFIDENTIALITY_DMP_SYSTEM, "Non visible par le patient"
    ),
    "INVISIBLE_REP_LEGAUX": Code(
        "INVISIBLE_REPRESENTANTS_LEGAUX",
        CONFIDENTIALITY_DMP_SYSTEM,
        "Non visible par les représentants légaux du patient",
    ),
    "INVISIBLE_REPRESENTANTS_LEGAUX": Code(
        "INVISIBLE_REPRESENTANTS_LEGAUX",
        CONFIDENTIALITY_DMP_SYSTEM,
        "Non visible par les représentants légaux du patient",
    ),
    "CONNEXION_SECRETE": Code("CONNEXION_SECRETE", CONFIDENTIALITY_DMP_SYSTEM, "Connexion secrète"),
}

# Displays of a few activity sectors (healthcareFacilityTypeCode when the CDA has none).
ACTIVITY_SECTOR_DISPLAY: Final[dict[str, str]] = {
    "SA01": "Etablissement public de santé",
    "SA07": "Cabinet individuel",
    "SA08": "Cabinet de groupe",
    "SA25": "Laboratoire de biologie médicale",
}

# Displays of the usual professions (VIHF role).
PROFESSION_DISPLAY: Final[dict[str, str]] = {
    "10": "Médecin",
    "21": "Pharmacien",
    "40": "Chirurgien-dentiste",
    "50": "Sage-femme",
    "60": "Infirmier",
    "80": "Manipulateur ERM",
}

# VIHF purposeofuse (XDS.xml)
PURPOSE_NORMAL: Final = Code("normal", "1.2.250.1.213.1.1.4.248", "Acces normal")
PURPOSE_SYSTEM_NAME: Final = "mode acces VIHF 1.0"
