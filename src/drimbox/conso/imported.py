"""KOS pre-integrated into the Conso (homologation scenarios, FAQ DRIMbox): `drimbox xdm import`
on a Conso node stores the KOS of an archive (a Source's export, the ANS layout) with their
report, and the history of their patient lists them beside what the DMP returns — and alone,
with a notice, when the DMP cannot be reached. Their images come from the Source named by the
KOS's RetrieveURL, as for any exam of the DMP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from sqlalchemy import select

from drimbox.cda.parser import CdaError, parse_report
from drimbox.conso.archive import audit_import, read_published
from drimbox.conso.common import ConsoError
from drimbox.conso.history import Exam, read_manifest
from drimbox.conso.xdm import XdmError, XdmLimits
from drimbox.db import Database, utcnow
from drimbox.db.models import ConsoImportedKos

IMPORTED_WARNING: Final = "Examen pré-intégré sur cette DRIMbox (archive XDM), hors DMP."


@dataclass
class PreIntegrated:
    imported: list[str] = field(default_factory=list)  # KOS SOP instance UIDs
    already: list[str] = field(default_factory=list)


def import_into_conso(
    db: Database,
    archive: Path | IO[bytes],
    *,
    origin: str = "",
    limits: XdmLimits | None = None,
    actor: str = "",
) -> PreIntegrated:
    """Store every KOS of the archive for the Conso's history (all or nothing). Raises
    `XdmError` (French) for an archive that does not hold or a KOS the Conso cannot use."""
    restored = read_published(archive, limits or XdmLimits())
    for item in restored:
        try:
            manifest = read_manifest(item.kos_bytes)
        except ConsoError as exc:
            raise XdmError(f"Archive refusée : {exc.message}", detail=exc.detail) from exc
        if any(not series.retrieve_url for series in manifest.series):
            raise XdmError(
                f"Archive refusée : le KOS {manifest.sop_instance_uid} n'indique pas où "
                "récupérer les images (RetrieveURL absente) : la Conso ne pourrait pas les "
                "afficher."
            )
    result = PreIntegrated()
    now = utcnow()
    with db.session() as session:
        for item in restored:
            kos_uid = str(item.kos.SOPInstanceUID)
            present = session.scalar(
                select(ConsoImportedKos.id).where(ConsoImportedKos.kos_sop_uid == kos_uid)
            )
            if present is not None:
                result.already.append(kos_uid)
                continue
            session.add(
                ConsoImportedKos(
                    kos_sop_uid=kos_uid,
                    patient_ins=str(item.kos.PatientID),
                    study_uid=str(item.kos.StudyInstanceUID),
                    kos=item.kos_bytes,
                    report=item.reports[0][1],
                    origin=origin[:255],
                    imported_at=now,
                )
            )
            result.imported.append(kos_uid)
    audit_import(db, "xdm_import_conso", actor, len(result.imported), len(result.already))
    return result


def imported_exams(db: Database, ins: str) -> list[Exam]:
    """The pre-integrated exams of the patient `ins`, as history rows."""
    with db.session() as session:
        rows = [
            (row.kos, row.report)
            for row in session.scalars(
                select(ConsoImportedKos)
                .where(ConsoImportedKos.patient_ins == ins)
                .order_by(ConsoImportedKos.id)
            )
        ]
    return [exam_of(kos, report) for kos, report in rows]


def exam_of(kos: bytes, report_bytes: bytes | None) -> Exam:
    """A history row from a stored KOS and its report (both checked at import)."""
    manifest = read_manifest(kos)
    exam = Exam(
        study_uid=manifest.study_uid,
        accession=manifest.accession,
        date=None,
        modalities=(),
        regions=(),
        description=manifest.description,
        site="",
        manifest=manifest,
        report_bytes=report_bytes,
        warnings=[IMPORTED_WARNING],
    )
    if report_bytes is None:
        return exam
    try:
        report = parse_report(report_bytes, manifest.study_uid)
    except CdaError:
        return exam
    exam.report = report
    exam.date = report.service_start or report.effective_time
    exam.modalities = tuple(c.code for c in report.modalities)
    exam.regions = tuple(c.display_name or c.code for c in report.regions)
    if report.act_code is not None and report.act_code.display_name:
        exam.description = report.act_code.display_name
    if report.custodian is not None:
        exam.site = report.custodian.name
    if not exam.accession and report.accession_number is not None:
        exam.accession = report.accession_number.extension
    return exam
