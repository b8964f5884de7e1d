"""The DMP outbox: publication and deletion jobs, carried out exactly once whatever happens.

A job is written in the same transaction as the state that calls for it (KOS built, withdrawal
received), so nothing is lost on a crash. The worker leases jobs (`db.leases`), and before each
submission asks the DMP whether the KOS is already registered — the KOS UIDs are deterministic, so
a job interrupted after the DMP registered it is recognised and not published twice. Errors the
DMP will never accept park the job with the reason; transport errors are retried with backoff.
One KOS per study stays Approved: a newer version (report update, IOCM) replaces the previous one
with an RPLC association.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from drimbox.cda import parse_report
from drimbox.cda.model import ImagingReport
from drimbox.config import Config
from drimbox.db import Database, DmpJob, JobState, Report, ReportState, utcnow
from drimbox.db.leases import LeasedWorker, backoff
from drimbox.failpoints import failpoint
from drimbox.metrics import NodeMetrics
from drimbox.source.lifecycle import (
    PUBLISHING_KINDS,
    flags_for_publication,
    newer_version,
    next_recheck,
)
from drimbox.trust import audit

log = logging.getLogger(__name__)

PUBLISH, DELETE = "publish", "delete"
DUE = (JobState.QUEUED.value, JobState.RETRYING.value)
PENDING_REPORT_STATES = (
    ReportState.RECEIVED.value,
    ReportState.WAITING_IMAGES.value,
    ReportState.KOS_BUILT.value,
    ReportState.PUBLISHING.value,
)
NOT_CONFIGURED_RETRY_S = 60.0
WAIT_FOR_PREVIOUS_S = 2.0


@dataclass(frozen=True)
class RegisteredEntry:
    entry_uuid: str
    unique_id: str
    status: str  # Approved, Deprecated, Deleted (the last segment of the XDS status URN)


class DmpPortError(Exception):
    """A DMP call failed; `retryable` says whether trying again later may succeed."""

    def __init__(self, message: str, *, retryable: bool, code: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code


class DmpPort(Protocol):
    """What the outbox needs of the DMP (implemented over `drimbox.dmp.client.DmpClient`)."""

    def find(self, report: ImagingReport, kos_uid: str) -> RegisteredEntry | None: ...

    def publish(
        self, report: ImagingReport, kos: bytes, flags: dict[str, bool], replaces: str | None
    ) -> str: ...

    def delete(self, report: ImagingReport, entry: RegisteredEntry) -> None: ...


@dataclass(frozen=True)
class JobResult:
    state: JobState
    message: str | None = None
    retry_in_s: float | None = None


class _Wait(Exception):
    """Not an error: the job depends on another one that is not done yet."""


def enqueue(session: Session, report: Report, action: str) -> None:
    """Add the job for `report` in the caller's transaction (idempotent: one job per action)."""
    exists = session.scalar(
        select(DmpJob.id).where(DmpJob.report_id == report.id, DmpJob.action == action)
    )
    if exists is not None:
        return
    now = utcnow()
    session.add(
        DmpJob(
            report_id=report.id,
            action=action,
            state=JobState.QUEUED.value,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
    )


class DmpPublisher(LeasedWorker):
    name = "DMP outbox"
    model = DmpJob
    due_states = DUE

    def __init__(
        self,
        config: Config,
        db: Database,
        port: DmpPort | None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.owner = config.node.name
        self.lease = timedelta(seconds=config.source.lease_s)
        self.poll_s = config.source.poll_interval_s
        self.port = port
        self.metrics = metrics or NodeMetrics(config.node.name)

    # -- one job ---------------------------------------------------------------------------
    def process(self, job_id: int) -> JobResult:
        with self.db.session() as session:
            job = session.get(DmpJob, job_id)
            if job is None:
                raise LookupError(job_id)
            action, report_id, attempts = job.action, job.report_id, job.attempts
        if self.port is None:
            result = JobResult(
                JobState.QUEUED, "DMP non configuré ([dmp] base_url)", NOT_CONFIGURED_RETRY_S
            )
        else:
            try:
                if action == PUBLISH:
                    result = self._publish(self.port, job_id, report_id)
                else:
                    result = self._withdraw(self.port, job_id, report_id)
            except _Wait as wait:
                result = JobResult(JobState.QUEUED, str(wait), WAIT_FOR_PREVIOUS_S)
            except DmpPortError as exc:
                if exc.retryable:
                    dmp = self.config.dmp
                    delay = backoff(attempts, dmp.retry_initial_s, dmp.retry_max_s)
                    result = JobResult(JobState.RETRYING, str(exc), delay)
                else:
                    result = JobResult(JobState.PARKED, str(exc))
            except Exception as exc:
                log.exception("DMP job %s: unexpected failure", job_id)
                dmp = self.config.dmp
                delay = backoff(attempts, dmp.retry_initial_s, dmp.retry_max_s)
                result = JobResult(JobState.RETRYING, f"Erreur interne : {exc}", delay)
        self._record(job_id, report_id, action, result)
        return result

    def _record(self, job_id: int, report_id: int, action: str, result: JobResult) -> None:
        now = utcnow()
        with self.db.session() as session:
            job = session.get(DmpJob, job_id)
            assert job is not None
            if self.taken_over(job_id, job.leased_by, job.state):
                return  # the DMP is asked again by the node that took the job over
            job.leased_by = None
            job.state = result.state.value
            job.last_error = result.message if result.state != JobState.DONE else None
            job.updated_at = now
            job.next_attempt_at = (
                now + timedelta(seconds=result.retry_in_s) if result.retry_in_s else None
            )
            report = session.get(Report, report_id)
            assert report is not None
            patient, study, received_at = report.patient_ins, report.study_uid, report.received_at
            if result.state == JobState.PARKED:
                report.state = ReportState.PARKED.value
                report.reason = f"Refusé par le DMP : {result.message}"
                report.updated_at = now
            elif result.state in (JobState.RETRYING, JobState.QUEUED) and result.message:
                report.reason = result.message
                report.updated_at = now
        # The DMP's answers and errors may quote the patient's INS: only our own waiting notes
        # are logged, the rest stays in the database (drimbox reports show).
        own = result.state == JobState.QUEUED
        detail = (result.message if own else "(see drimbox reports show)") if result.message else ""
        log.info(
            "DMP job %s (%s of report %s): %s %s",
            job_id,
            action,
            report_id,
            result.state.value,
            detail,
            extra={"report_id": report_id, "study_uid": study, "job_id": job_id},
        )
        self.metrics.published(action, result.state.value, received_at)
        if result.state in (JobState.DONE, JobState.PARKED):
            audit.record(
                self.db,
                actor=audit.SYSTEM,
                role="system",
                action=f"dmp_{action}",
                result="ok" if result.state == JobState.DONE else "refused",
                patient_ins=patient,
                study_uid=study,
                report_id=report_id,
                message=result.message,
            )

    def _publish(self, port: DmpPort, job_id: int, report_id: int) -> JobResult:
        with self.db.session() as session:
            row = session.get(Report, report_id)
            assert row is not None
            if row.kos is None or row.kos_sop_uid is None or row.cda is None:
                return JobResult(JobState.PARKED, "aucun KOS construit pour ce compte rendu")
            newer = newer_version(session, row)
            if newer is not None:
                row.state = ReportState.SUPERSEDED.value
                row.reason = (
                    f"version {row.version_number} dépassée par la version "
                    f"{newer.version_number} (compte rendu n°{newer.id}) : jamais publiée"
                )
                return JobResult(JobState.DONE, row.reason)
            kos, kos_uid, cda, study = row.kos, row.kos_sop_uid, row.cda, row.study_uid
            previous = self._previous_published(session, row)
            before = session.get(Report, previous[0]) if previous else None
            flags = flags_for_publication(row.flags, before.flags if before else None)
        report = parse_report(cda, study or None)
        already = port.find(report, kos_uid)
        if already is not None and already.status == "Approved":
            superseded = previous if previous is not None and previous[1] != kos_uid else None
            self._mark_published(job_id, report_id, already.entry_uuid, superseded)
            return JobResult(JobState.DONE, "déjà enregistré au DMP")
        replaces = None
        if previous is not None:
            previous_entry = port.find(report, previous[1])
            if previous_entry is not None and previous_entry.status == "Approved":
                replaces = previous_entry.entry_uuid
        failpoint("publish:before-send")
        try:
            entry_uuid = port.publish(report, kos, flags, replaces)
        except DmpPortError as exc:
            if exc.code != "XDSDuplicateUniqueIdInRegistry":
                raise
            # Our own earlier submission (lost answer): take what the DMP holds.
            found = port.find(report, kos_uid)
            if found is None:
                raise
            entry_uuid = found.entry_uuid
        failpoint("publish:after-send")
        self._mark_published(job_id, report_id, entry_uuid, previous if replaces else None)
        return JobResult(JobState.DONE)

    def _previous_published(self, session: Session, row: Report) -> tuple[int, str] | None:
        """The KOS this one replaces: the latest other KOS of the same study in the DMP.

        Raises `_Wait` while an older report of the study is still on its way, so that versions
        reach the DMP in order.
        """
        others = session.scalars(
            select(Report)
            .where(Report.study_uid == row.study_uid, Report.id < row.id)
            .where(Report.kind.in_(PUBLISHING_KINDS))
            .order_by(Report.id.desc())
        ).all()
        for other in others:
            if other.state in PENDING_REPORT_STATES:
                raise _Wait(f"attend la publication du compte rendu n°{other.id}")
            if other.state == ReportState.PUBLISHED.value and other.kos_sop_uid:
                return other.id, other.kos_sop_uid
        return None

    def _mark_published(
        self, job_id: int, report_id: int, entry_uuid: str, previous: tuple[int, str] | None
    ) -> None:
        now = utcnow()
        with self.db.session() as session:
            row = session.get(Report, report_id)
            assert row is not None
            row.state = ReportState.PUBLISHED.value
            row.reason = None
            row.dmp_entry_uuid = entry_uuid
            row.published_at = now
            row.updated_at = now
            row.recheck_at = next_recheck(
                self.config.source.images_recheck_s, row.rechecks_done, now
            )
            job = session.get(DmpJob, job_id)
            assert job is not None
            job.entry_uuid = entry_uuid
            if previous is not None:
                # Every report row sharing the replaced KOS (several reports of one exam).
                for old in session.scalars(
                    select(Report).where(
                        Report.kos_sop_uid == previous[1],
                        Report.state == ReportState.PUBLISHED.value,
                        Report.id != report_id,
                    )
                ):
                    old.state = ReportState.REPLACED.value
                    old.reason = f"remplacé par le compte rendu n°{report_id}"
                    old.recheck_at = None
                    old.updated_at = now

    def _withdraw(self, port: DmpPort, job_id: int, report_id: int) -> JobResult:
        with self.db.session() as session:
            withdrawal = session.get(Report, report_id)
            assert withdrawal is not None
            targets = session.scalars(
                select(Report)
                .where(Report.study_uid == withdrawal.study_uid, Report.id < withdrawal.id)
                .where(Report.kind.in_(PUBLISHING_KINDS))
            ).all()
            pending = [t.id for t in targets if t.state in PENDING_REPORT_STATES]
            if pending:
                raise _Wait(f"attend la fin du traitement du compte rendu n°{pending[0]}")
            published = [
                (t.id, t.kos_sop_uid, t.cda, t.study_uid)
                for t in targets
                if t.state == ReportState.PUBLISHED.value and t.kos_sop_uid and t.cda
            ]
        deleted = []
        for target_id, kos_uid, cda, study in published:
            assert kos_uid is not None and cda is not None
            report = parse_report(cda, study or None)
            entry = port.find(report, kos_uid)
            if entry is not None and entry.status != "Deleted":
                failpoint("delete:before-send")
                port.delete(report, entry)
            deleted.append(target_id)
        now = utcnow()
        with self.db.session() as session:
            for target_id in deleted:
                target = session.get(Report, target_id)
                assert target is not None
                target.state = ReportState.WITHDRAWN.value
                target.reason = f"dépublié (message n°{report_id})"
                target.updated_at = now
            withdrawal = session.get(Report, report_id)
            assert withdrawal is not None
            if withdrawal.state == ReportState.NOT_FOR_DMP.value:
                # DESTDMP=N after a publication: the report keeps its own state.
                withdrawal.state = ReportState.NOT_FOR_DMP.value
                withdrawal.reason = "non destiné au DMP (DESTDMP=N) : KOS retiré du DMP"
            else:
                withdrawal.state = ReportState.APPLIED.value
                withdrawal.reason = (
                    None if deleted else "aucun KOS publié pour cet examen : rien à dépublier"
                )
            withdrawal.updated_at = now
        return JobResult(JobState.DONE)
