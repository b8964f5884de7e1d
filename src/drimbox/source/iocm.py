"""IOCM: rejection notes from the PACS keep the published KOS true to what the PACS holds.

A rejection note is a KOS whose title is one of the IHE IOCM rejection codes. For each study it
names that has a KOS in the DMP, the box re-opens the latest published report as an `iocm` report:
the pipeline then re-queries the PACS and either builds a new KOS (instances left: it replaces the
old one in the DMP) or, when nothing is left, queues the deletion of the KOS.
"""

from __future__ import annotations

import logging

from pydicom import Dataset

from drimbox.db import Database
from drimbox.dicom.scp import ReceivedInstance
from drimbox.source.lifecycle import latest_published, reopen
from drimbox.trust import audit

log = logging.getLogger(__name__)

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
# IHE IOCM (RAD TF-3 / CID 7011): rejection reasons that withdraw instances.
REJECTION_CODES = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}


def rejection_reason(dataset: Dataset) -> str | None:
    """The rejection code of a KOS rejection note, or None for any other object."""
    if str(dataset.get("SOPClassUID", "")) != KOS_SOP_CLASS:
        return None
    titles = dataset.get("ConceptNameCodeSequence") or []
    for title in titles:
        code = str(title.get("CodeValue", ""))
        if code in REJECTION_CODES and str(title.get("CodingSchemeDesignator", "")) == "DCM":
            return code
    return None


def rejected_studies(dataset: Dataset) -> list[str]:
    studies = [
        str(item.StudyInstanceUID)
        for item in dataset.get("CurrentRequestedProcedureEvidenceSequence") or []
        if "StudyInstanceUID" in item
    ]
    return studies or ([str(dataset.StudyInstanceUID)] if "StudyInstanceUID" in dataset else [])


def handle_rejection_note(db: Database, dataset: Dataset, *, sender: str = "") -> list[int]:
    """Re-open the published report of every study the note touches; the new report ids.

    Anything that is not a rejection note is ignored (an empty list).
    """
    code = rejection_reason(dataset)
    if code is None:
        return []
    reopened: list[int] = []
    for study_uid in rejected_studies(dataset):
        with db.session() as session:
            latest = latest_published(session, study_uid)
            if latest is None:
                log.info("IOCM %s for study %s: no published KOS, nothing to do", code, study_uid)
                continue
            reason = f"images rejetées par le PACS ({code} {REJECTION_CODES[code]})"
            reopened.append(reopen(session, latest, "iocm", reason).id)
            patient = latest.patient_ins
        audit.record(
            db,
            actor=sender or "PACS",
            role="system",
            action="iocm_rejection",
            result="ok",
            patient_ins=patient,
            study_uid=study_uid,
            code=code,
            report_id=reopened[-1],
        )
    return reopened


class IocmStoreHandler:
    """The SCP handler that takes rejection notes (and only them) from the PACS."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def __call__(self, instance: ReceivedInstance) -> bool:
        if instance.sop_class_uid != KOS_SOP_CLASS:
            return False
        dataset = instance.dataset_header()
        if rejection_reason(dataset) is None:
            return False
        handle_rejection_note(self.db, dataset, sender=instance.calling_aet)
        return True
