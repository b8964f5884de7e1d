"""The rules that order a report's versions and decide what reaches the DMP.

- Versions of one report (same CDA `setId`) are ordered by the CDA's own `versionNumber`, then
  its `effectiveTime`, never by arrival: an older version re-sent late after an outage is kept
  (state `superseded`) but never replaces a newer one.
- `DESTDMP=N` (an OBX flag of the RIS): the KOS is built — the report's viewer link serves its
  images — but not sent; if a KOS of the exam was published, it is withdrawn.
- `MODIF_CONF_CODE`: only when it is `Y` do the confidentiality flags of a new version (or of a
  re-sent one) change what the DMP holds; otherwise the published KOS keeps its confidentiality.
- The box re-opens a published report itself (IOCM rejection, exam update from the RIS, late
  images): a copy of the report row that the pipeline processes again and that replaces the KOS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from drimbox.db import Report, ReportState, aware, utcnow
from drimbox.dmp.codes import CONFIDENTIALITY_FLAGS, flag_raised

# Report kinds that carry a KOS to publish (the others withdraw).
PUBLISHING_KINDS = ("publish", "update", "iocm", "exam_update", "recheck", "confidentiality")
DESTDMP, MODIF_CONF_CODE = "DESTDMP", "MODIF_CONF_CODE"
# States in which a report no longer competes for the exam's KOS.
_OUT_OF_RACE = (ReportState.REFUSED.value, ReportState.SUPERSEDED.value)


def not_for_dmp(flags: Mapping[str, Any]) -> bool:
    """DESTDMP=N. An absent flag means the DMP (the RIS sends it on every report)."""
    return flags.get(DESTDMP) is False


def confidentiality_of(flags: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flags.items() if k.upper() in CONFIDENTIALITY_FLAGS}


def effective_confidentiality(session: Session, report: Report) -> frozenset[str]:
    """The confidentiality flags raised on the KOS of `report` as the DMP holds it: the report's
    own when it says MODIF_CONF_CODE=Y or is the first of its exam, else those of the KOS it
    replaces, and so on back (`flags_for_publication`)."""
    current = report
    seen = {current.id}
    while current.flags.get(MODIF_CONF_CODE) is not True:
        previous = session.scalars(
            select(Report)
            .where(Report.study_uid == current.study_uid, Report.id < current.id)
            .where(Report.kind.in_(PUBLISHING_KINDS), Report.state.not_in(_OUT_OF_RACE))
            .where(Report.kos_sop_uid.is_not(None))
            .order_by(Report.id.desc())
            .limit(1)
        ).first()
        if previous is None or previous.id in seen:
            break
        seen.add(previous.id)
        current = previous
    return frozenset(
        k.upper() for k, v in confidentiality_of(current.flags).items() if flag_raised(v)
    )


def flags_for_publication(
    flags: Mapping[str, Any], previous: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The flags a new KOS is published with: without MODIF_CONF_CODE=Y, a replacement keeps
    the confidentiality of the KOS it replaces (CISIS_CDA_HL7_V2: the flag says the
    confidentiality changes)."""
    result = dict(flags)
    if previous is not None and flags.get(MODIF_CONF_CODE) is not True:
        result = {k: v for k, v in result.items() if k.upper() not in CONFIDENTIALITY_FLAGS}
        result |= confidentiality_of(previous)
    return result


def _newer(a: Report, b: Report) -> bool:
    """Whether version `a` of a report is newer than `b` (same setId)."""
    if (a.version_number or 0) != (b.version_number or 0):
        return (a.version_number or 0) > (b.version_number or 0)
    if a.document_time is not None and b.document_time is not None:
        return aware(a.document_time) > aware(b.document_time)
    return False


def newer_version(session: Session, row: Report) -> Report | None:
    """Another received version of the same report (setId) for the same exam that is newer."""
    if not row.set_id or row.kind not in ("publish", "update"):
        return None
    others = session.scalars(
        select(Report)
        .where(Report.set_id == row.set_id, Report.study_uid == row.study_uid)
        .where(Report.id != row.id, Report.kind.in_(("publish", "update")))
        .where(Report.state.not_in(_OUT_OF_RACE))
    ).all()
    newer = [other for other in others if _newer(other, row)]
    return max(newer, key=lambda r: r.id) if newer else None


def reopen(
    session: Session, latest: Report, kind: str, reason: str, *, rechecks_done: int = 0
) -> Report:
    """A new report row re-processing `latest`'s report (its KOS is then replaced)."""
    now = utcnow()
    again = Report(
        message_id=None,
        received_at=now,
        updated_at=now,
        kind=kind,
        patient_ins=latest.patient_ins,
        patient_ins_oid=latest.patient_ins_oid,
        patient_ipp=latest.patient_ipp,
        study_uid=latest.study_uid,
        accession=latest.accession,
        document_id=latest.document_id,
        set_id=latest.set_id,
        version_number=latest.version_number,
        document_time=latest.document_time,
        replaced_document_id=latest.document_id,
        flags=dict(latest.flags),
        cda=latest.cda,
        state=ReportState.RECEIVED.value,
        reason=reason,
        attempts=0,
        next_attempt_at=now,
        rechecks_done=rechecks_done,
    )
    session.add(again)
    session.flush()
    return again


def latest_published(session: Session, study_uid: str) -> Report | None:
    return session.scalars(
        select(Report)
        .where(Report.study_uid == study_uid, Report.state == ReportState.PUBLISHED.value)
        .order_by(Report.id.desc())
        .limit(1)
    ).first()


def next_recheck(delays: Sequence[float], done: int, after: datetime) -> datetime | None:
    """When to compare the PACS with the published KOS again (`delays` are counted from the
    first publication; `done` checks are behind us), or None when the window is over."""
    if done >= len(delays):
        return None
    gap = delays[done] - (delays[done - 1] if done else 0.0)
    return after + timedelta(seconds=gap)
