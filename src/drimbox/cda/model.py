"""Typed facts extracted from a CDA imaging report; shared by the KOS builder and the DMP client."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

# INS OIDs (ARCHITECTURE §2.1): NIR, NIA and their test counterparts.
INS_OIDS: dict[str, str] = {
    "1.2.250.1.213.1.4.8": "INS-NIR",
    "1.2.250.1.213.1.4.9": "INS-NIA",
    "1.2.250.1.213.1.4.10": "INS-NIR-TEST",
    "1.2.250.1.213.1.4.11": "INS-NIA-TEST",
}
RPPS_OID = "1.2.250.1.71.4.2.1"


@dataclass(frozen=True)
class Identifier:
    """An HL7 v3 II: `root` is an OID (or UUID), `extension` the value within it (may be empty)."""

    root: str
    extension: str = ""


@dataclass(frozen=True)
class Code:
    code: str
    code_system: str
    display_name: str = ""


@dataclass(frozen=True)
class PersonName:
    family: str
    given: tuple[str, ...] = ()
    prefix: str = ""
    suffix: str = ""

    def to_dicom(self) -> str:
        """DICOM PN: family^given^middle^prefix^suffix (extra given names go to middle)."""
        given = self.given[0] if self.given else ""
        middle = " ".join(self.given[1:])
        parts = [self.family, given, middle, self.prefix, self.suffix]
        while parts and not parts[-1]:
            parts.pop()
        return "^".join(parts)


@dataclass(frozen=True)
class Patient:
    ins: str
    ins_oid: str  # one of INS_OIDS
    ipp: Identifier | None  # local patient id, root = issuer OID
    name: PersonName
    birth_date: date | None
    sex: str  # M, F or U (administrativeGenderCode)


@dataclass(frozen=True)
class Organization:
    id: Identifier
    name: str = ""


@dataclass(frozen=True)
class HealthProfessional:
    id: Identifier  # RPPS when root == RPPS_OID
    name: PersonName | None = None
    code: Code | None = None  # profession / specialty
    organization: Organization | None = None
    time: datetime | None = None


@dataclass(frozen=True)
class ImagingReport:
    """What the Source needs of a CDA report. Built only by `drimbox.cda.parse_report`."""

    document_id: Identifier  # ClinicalDocument/id
    set_id: Identifier
    version_number: int
    title: str
    effective_time: datetime | None
    confidentiality: Code
    patient: Patient
    study_instance_uid: str  # documentationOf/serviceEvent/id/@root
    accession_number: Identifier | None  # inFulfillmentOf/order/ps3-20:accessionNumber
    placer_order: Identifier | None  # inFulfillmentOf/order/id
    act_code: Code | None  # serviceEvent/code
    act_translations: tuple[Code, ...]  # CCAM code and others
    modalities: tuple[Code, ...]  # codeSystem 1.2.840.10008.2.16.4 translations
    regions: tuple[Code, ...]  # anatomic region translations
    service_start: datetime | None
    service_stop: datetime | None
    authors: tuple[HealthProfessional, ...]
    legal_authenticator: HealthProfessional | None
    custodian: Organization | None
    healthcare_facility_type: Code | None  # encompassingEncounter/location/healthCareFacility/code
    practice_setting: Code | None  # representedOrganization/standardIndustryClassCode
    replaced_document_id: Identifier | None  # relatedDocument[@typeCode=RPLC]/parentDocument/id
    viewer_url: str | None  # IHEInvokeImageDisplay link (entry template 1.2.250.1.213.1.1.3.157)
    document_code: Code | None = None  # ClinicalDocument/code (LOINC 18748-4)
    encounter_code: Code | None = None  # componentOf/encompassingEncounter/code (AMB, IMP…)
    extra: dict[str, str] = field(default_factory=dict)
    # Every study the report covers (one documentationOf/serviceEvent each), in CDA order.
    study_instance_uids: tuple[str, ...] = ()
