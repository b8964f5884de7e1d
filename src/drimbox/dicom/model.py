"""Typed snapshots of what the PACS holds for a study, as found by C-FIND."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceRef:
    sop_class_uid: str
    sop_instance_uid: str
    instance_number: int | None = None


@dataclass(frozen=True)
class SeriesSnapshot:
    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    instances: tuple[InstanceRef, ...]


@dataclass(frozen=True)
class StudySnapshot:
    """A study as the PACS holds it (C-FIND study, series and image levels)."""

    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    other_patient_ids: tuple[str, ...]
    patient_name: str
    patient_birth_date: str  # DICOM DA, may be empty
    patient_sex: str
    accession_number: str
    study_date: str
    study_time: str
    study_description: str
    study_id: str
    referring_physician_name: str
    series: tuple[SeriesSnapshot, ...]

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(sorted({s.modality for s in self.series if s.modality}))
