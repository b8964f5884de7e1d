"""Typed snapshots of what the PACS holds for a study, as found by C-FIND."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_uid(value: str) -> bool:
    """A DICOM UID (PS3.5 §9.1): dot-separated numbers without leading zeros, at most 64 chars.
    Anything else from the network (a URL, a KOS, a query) is refused, never passed on."""
    return 0 < len(value) <= 64 and _UID_RE.match(value) is not None


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
