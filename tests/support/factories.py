"""Builders of real domain objects for tests, with the values of the official exam C (CR_C.xml)."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timedelta, timezone
from typing import Any

from drimbox.cda.model import (
    Code,
    HealthProfessional,
    Identifier,
    ImagingReport,
    Organization,
    Patient,
    PersonName,
)
from drimbox.db import Database, Hl7Message, Report, ReportState, utcnow
from drimbox.dicom.model import InstanceRef, SeriesSnapshot, StudySnapshot

CR_C_STUDY_UID = "1.2.250.1.213.4.5.2.1.103"
CR_C_INS = "279035121518989"
CR_C_INS_OID = "1.2.250.1.213.1.4.10"
CR_C_IPP = Identifier(root="1.2.250.1.213.4.5.2.4", extension="IPP101")
CR_C_ACCESSION = Identifier(root="1.2.250.1.925.994044785528.27", extension="ACN103")
CR_C_ORDER = Identifier(root="1.2.250.1.213.4.5.2.6", extension="OPN103")

_PARIS = timezone(timedelta(hours=1))


def make_patient(**overrides: Any) -> Patient:
    patient = Patient(
        ins=CR_C_INS,
        ins_oid=CR_C_INS_OID,
        ipp=CR_C_IPP,
        name=PersonName(family="PAT-TROIS", given=("DOMINIQUE",)),
        birth_date=date(1979, 3, 28),
        sex="F",
    )
    return dataclasses.replace(patient, **overrides)


def make_report(**overrides: Any) -> ImagingReport:
    """The ImagingReport the CDA parser yields for CR_C.xml; any field can be overridden."""
    structure = Organization(
        id=Identifier(root="1.2.250.1.71.4.2.2", extension="101235555"),
        name="Centre de radiologie Ambroise",
    )
    author = HealthProfessional(
        id=Identifier(root="1.2.250.1.71.4.2.1", extension="801234560801"),
        name=PersonName(family="RADIOLOGUE", given=("PAUL",)),
        code=Code("G15_10/SM44", "1.2.250.1.213.1.1.4.5", "Médecin - Radio-diagnostic (SM)"),
        organization=structure,
        time=datetime(2021, 1, 8, 11, 17, tzinfo=_PARIS),
    )
    report = ImagingReport(
        document_id=Identifier(root="1.2.250.1.213.4.5.4.403"),
        set_id=Identifier(root="D52DE737-001D-4031-B571-0A0ED7C42300"),
        version_number=1,
        title="CR d’imagerie médicale",
        effective_time=datetime(2021, 1, 8, 11, 17, tzinfo=_PARIS),
        confidentiality=Code("N", "2.16.840.1.113883.5.25", "Normal"),
        patient=make_patient(),
        study_instance_uid=CR_C_STUDY_UID,
        accession_number=CR_C_ACCESSION,
        placer_order=CR_C_ORDER,
        act_code=Code("24727-0", "2.16.840.1.113883.6.1", "CT Head W contrast IV"),
        act_translations=(
            Code("ACQH004", "1.2.250.1.213.2.5", "Scanographie du crâne avec injection"),
        ),
        modalities=(Code("CT", "1.2.840.10008.2.16.4", "Computed Tomography"),),
        regions=(Code("774007", "2.16.840.1.113883.6.96", "Head and Neck"),),
        service_start=datetime(2021, 1, 8, 10, 0, tzinfo=_PARIS),
        service_stop=datetime(2021, 1, 8, 10, 30, tzinfo=_PARIS),
        authors=(author,),
        legal_authenticator=author,
        custodian=structure,
        healthcare_facility_type=None,
        practice_setting=None,
        replaced_document_id=None,
        viewer_url=None,
        document_code=Code("18748-4", "2.16.840.1.113883.6.1", "CR d'imagerie médicale"),
        encounter_code=Code("AMB", "2.16.840.1.113883.5.4", "ambulatoire (hors établissement)"),
    )
    return dataclasses.replace(report, **overrides)


CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def make_snapshot(report: ImagingReport, instances: int = 3) -> StudySnapshot:
    """The study as a PACS holding exactly what `report` describes would return it."""
    study_uid = report.study_instance_uid
    series = SeriesSnapshot(
        series_instance_uid=f"{study_uid}.1",
        modality="CT",
        series_number=1,
        series_description="Crâne",
        instances=tuple(
            InstanceRef(CT_IMAGE_STORAGE, f"{study_uid}.1.{n}", n) for n in range(1, instances + 1)
        ),
    )
    patient = report.patient
    return StudySnapshot(
        study_instance_uid=study_uid,
        patient_id=patient.ins,
        issuer_of_patient_id="ASIP-SANTE-INS-NIR",
        other_patient_ids=(),
        patient_name=patient.name.to_dicom(),
        patient_birth_date=patient.birth_date.strftime("%Y%m%d") if patient.birth_date else "",
        patient_sex=patient.sex,
        accession_number=report.accession_number.extension if report.accession_number else "",
        study_date="20210108",
        study_time="100000",
        study_description="TDM cérébrale",
        study_id="1",
        referring_physician_name="",
        series=(series,),
    )


def add_reports(db: Database, count: int, first: int = 0) -> None:
    """`count` received reports, numbered from `first` (document ids 1.2.3.N)."""
    now = utcnow()
    with db.session() as session:
        for index in range(first, first + count):
            message = Hl7Message(received_at=now, size_bytes=1, raw=b"x", ack_code="AA")
            session.add(message)
            session.flush()
            session.add(
                Report(
                    message_id=message.id,
                    received_at=now,
                    updated_at=now,
                    kind="publish",
                    document_id=f"1.2.3.{index}",
                    flags={"MASQUE_PS": False},
                    state=ReportState.RECEIVED.value,
                    attempts=0,
                    next_attempt_at=now,
                )
            )
