"""Operator actions on a report: put a refused or parked report back in the queue, or make
waiting work due now (a lease held by a node that died, a retry delay)."""

from __future__ import annotations

from sqlalchemy import select

from drimbox.db import Database, DmpJob, JobState, Report, ReportState, utcnow
from drimbox.source.lifecycle import not_for_dmp
from drimbox.source.outbox import DUE as JOB_DUE
from drimbox.source.pipeline import DUE_STATES


class RetryError(Exception):
    """The report cannot be retried (message for the operator, in French)."""


class ReportNotFound(RetryError):
    """No report has this id."""


def retry_report(db: Database, report_id: int) -> str:
    """Re-queue what failed for this report; returns what was done, in French."""
    now = utcnow()
    with db.session() as session:
        report = session.get(Report, report_id)
        if report is None:
            raise ReportNotFound(f"aucun compte rendu n°{report_id}")
        parked = session.scalars(
            select(DmpJob).where(
                DmpJob.report_id == report_id, DmpJob.state == JobState.PARKED.value
            )
        ).all()
        if parked:
            for job in parked:
                job.state = JobState.QUEUED.value
                job.attempts = 0
                job.next_attempt_at = now
                job.updated_at = now
            if report.kind in ("withdraw", "withdraw_exam"):
                report.state = ReportState.WITHDRAWAL_RECEIVED.value
            elif not_for_dmp(report.flags):
                report.state = ReportState.NOT_FOR_DMP.value  # its withdrawal job is re-queued
            else:
                report.state = ReportState.PUBLISHING.value
            report.reason = "relancé par l'opérateur"
            report.updated_at = now
            return "envoi au DMP remis en file"
        waiting = session.scalars(
            select(DmpJob).where(DmpJob.report_id == report_id, DmpJob.state.in_(JOB_DUE))
        ).all()
        if report.state in DUE_STATES or waiting:
            # A lease taken over early is safe: a report is rebuilt with the same KOS UIDs, and
            # a job asks the DMP what it holds before sending anything.
            rows: list[Report | DmpJob] = [*waiting]
            if report.state in DUE_STATES:
                rows.append(report)
            held = {row.leased_by for row in rows if row.leased_by}
            for row in rows:
                row.leased_by = None
                row.next_attempt_at = now
            report.updated_at = now
            holder = f" (bail du nœud {', '.join(sorted(held))} libéré)" if held else ""
            return f"travail en attente repris maintenant{holder}"
        if report.state == ReportState.REFUSED.value:
            report.state = ReportState.RECEIVED.value
            report.attempts = 0
            report.next_attempt_at = now
            report.received_at = now  # the images wait starts again
            report.reason = "relancé par l'opérateur"
            report.updated_at = now
            return "nouvelle interrogation du PACS et construction du KOS"
        raise RetryError(
            f"le compte rendu n°{report_id} est dans l'état « {report.state} » : rien à relancer"
        )
