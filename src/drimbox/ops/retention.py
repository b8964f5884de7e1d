"""The retention purge: what the box stores is kept for its configured period (`[retention]`),
then its documents go; what is still needed stays whatever its age.

What is purged, and what is kept of it:

- HL7 message content (`hl7_messages.raw`): `hl7_days` after reception, once its report is
  settled; kept: date, sender, type, control id, size, ACK.
- CDA and KOS of the report versions no longer in force (replaced, withdrawn, applied
  withdrawals, superseded): `superseded_reports_days` after their last change; kept: the row
  (ids, state, DMP entry, KOS UID: a peer presenting that KOS is told it was replaced).
- The Conso's copies of DMP documents (a launch's history rows, then the launch):
  `conso_documents_h` after the launch expired (the audit trail says who saw what).
- User sessions: `sessions_h` after their end or expiry; unfinished PSC sign-ins at expiry.
- Image cache series (in the node): `[store] cache_ttl_h` after their retrieval.

Never purged: the report version in force (published or kept off the DMP: its CDA and KOS are
what a later update replaces or a depublication deletes), work under way (received, waiting for
images, publishing, withdrawal pending) and reports waiting for a person (refused, parked: `drimbox
reports retry` needs their CDA). The audit trail has its own period and its own path
(`drimbox.db.audit_purge`): the node's database role cannot delete from it.

Every step works in short transactions of `batch_rows` rows, so a first purge of a large
database neither holds locks for long nor loses its progress on a crash; a dry run counts the
same rows and changes nothing. `RetentionWorker` runs the purge in the node every
`purge_interval_h`, leased (`periodic_jobs`) so that one node at a time does it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from drimbox.config import Config, RetentionConfig
from drimbox.db import Database, Hl7Message, LoginRequestRow, Report, ReportState, UserSession
from drimbox.db.engine import utcnow
from drimbox.db.leases import LeasedWorker
from drimbox.db.models import ConsoExam, ConsoLaunch, PeriodicJob
from drimbox.metrics import NodeMetrics

log = logging.getLogger(__name__)

JOB_NAME = "retention"
SCHEDULED = "scheduled"

# Report versions no longer in force: their documents may go after `superseded_reports_days`.
SETTLED_STATES = (
    ReportState.REPLACED.value,
    ReportState.WITHDRAWN.value,
    ReportState.APPLIED.value,
    ReportState.SUPERSEDED.value,
)
# A message whose report is in one of these still matters as received (work under way, or a
# person will look at it).
OPEN_STATES = (
    ReportState.RECEIVED.value,
    ReportState.WAITING_IMAGES.value,
    ReportState.KOS_BUILT.value,
    ReportState.WITHDRAWAL_RECEIVED.value,
    ReportState.PUBLISHING.value,
    ReportState.PARKED.value,
    ReportState.REFUSED.value,
)

# French labels of the counts, in the order `drimbox retention purge` prints them.
LABELS = {
    "hl7_messages": "messages HL7 (contenu effacé)",
    "reports": "versions de CR remplacées ou retirées (CDA et KOS effacés)",
    "conso_exams": "copies Conso de documents du DMP (examens supprimés)",
    "conso_launches": "lancements Conso expirés supprimés",
    "sessions": "sessions d'utilisateurs supprimées",
    "login_requests": "connexions PSC inachevées supprimées",
    "cache_series": "séries du cache d'images effacées",
}


@dataclass
class PurgeCounts:
    """How many rows (or cache series) each step purged — or would purge, in a dry run."""

    hl7_messages: int = 0
    reports: int = 0
    conso_exams: int = 0
    conso_launches: int = 0
    sessions: int = 0
    login_requests: int = 0
    cache_series: int = 0
    cache_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def total(self) -> int:
        return sum(v for k, v in self.as_dict().items() if k != "cache_bytes")


Progress = Callable[[str, int], None]


class RetentionPurge:
    """One run of the purge over the database (the image cache is the node's: see
    `RetentionWorker`)."""

    def __init__(
        self,
        db: Database,
        retention: RetentionConfig,
        progress: Progress | None = None,
        *,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.db = db
        self.retention = retention
        self.progress = progress or (lambda kind, done: None)
        # Checked between batches: a node that stops leaves the rest for the next purge.
        self.stopping = stopping

    def run(self, *, dry_run: bool = False, now: datetime | None = None) -> PurgeCounts:
        now = now or utcnow()
        r = self.retention
        counts = PurgeCounts()
        counts.hl7_messages = self._hl7(now - timedelta(days=r.hl7_days), dry_run)
        counts.reports = self._reports(now - timedelta(days=r.superseded_reports_days), dry_run)
        counts.conso_exams, counts.conso_launches = self._conso(
            now - timedelta(hours=r.conso_documents_h), dry_run
        )
        counts.sessions, counts.login_requests = self._sessions(
            now, now - timedelta(hours=r.sessions_h), dry_run
        )
        return counts

    # -- the steps ------------------------------------------------------------------------------

    def _hl7(self, before: datetime, dry_run: bool) -> int:
        still_open = exists().where(
            Report.message_id == Hl7Message.id, Report.state.in_(OPEN_STATES)
        )
        due = and_(Hl7Message.received_at < before, func.length(Hl7Message.raw) > 0, ~still_open)
        return self._in_batches(
            "hl7_messages",
            Hl7Message,
            due,
            dry_run,
            lambda ids: update(Hl7Message).where(Hl7Message.id.in_(ids)).values(raw=b""),
        )

    def _reports(self, before: datetime, dry_run: bool) -> int:
        due = and_(
            Report.state.in_(SETTLED_STATES),
            Report.updated_at < before,
            or_(Report.cda.is_not(None), Report.kos.is_not(None)),
        )
        return self._in_batches(
            "reports",
            Report,
            due,
            dry_run,
            lambda ids: update(Report).where(Report.id.in_(ids)).values(cda=None, kos=None),
        )

    def _conso(self, before: datetime, dry_run: bool) -> tuple[int, int]:
        expired = ConsoLaunch.expires_at < before
        exams = self._in_batches(
            "conso_exams",
            ConsoExam,
            ConsoExam.launch_id.in_(select(ConsoLaunch.id).where(expired)),
            dry_run,
            lambda ids: delete(ConsoExam).where(ConsoExam.id.in_(ids)),
        )
        launches = self._in_batches(
            "conso_launches",
            ConsoLaunch,
            expired,
            dry_run,
            # Its exams first (SQLite does not cascade without its foreign-keys pragma).
            lambda ids: delete(ConsoLaunch).where(ConsoLaunch.id.in_(ids)),
            before_each=lambda ids: delete(ConsoExam).where(ConsoExam.launch_id.in_(ids)),
        )
        return exams, launches

    def _sessions(self, now: datetime, before: datetime, dry_run: bool) -> tuple[int, int]:
        ended = or_(UserSession.expires_at < before, UserSession.ended_at < before)
        sessions = self._in_batches(
            "sessions",
            UserSession,
            ended,
            dry_run,
            lambda ids: delete(UserSession).where(UserSession.id_hash.in_(ids)),
        )
        logins = self._in_batches(
            "login_requests",
            LoginRequestRow,
            LoginRequestRow.expires_at < now,
            dry_run,
            lambda ids: delete(LoginRequestRow).where(LoginRequestRow.state.in_(ids)),
        )
        return sessions, logins

    # -- batches --------------------------------------------------------------------------------

    def _in_batches(
        self,
        kind: str,
        model: Any,
        due: ColumnElement[bool],
        dry_run: bool,
        statement: Callable[[list[Any]], Any],
        *,
        before_each: Callable[[list[Any]], Any] | None = None,
    ) -> int:
        """Apply `statement` to the due rows of `model`, `batch_rows` at a time, one transaction
        each; how many rows. A dry run only counts them."""
        key = model.__mapper__.primary_key[0]
        if dry_run:
            with self.db.session() as session:
                return int(session.scalar(select(func.count()).select_from(model).where(due)) or 0)
        done = 0
        while not self.stopping():
            with self.db.session() as session:
                ids = list(
                    session.scalars(
                        select(key).where(due).order_by(key).limit(self.retention.batch_rows)
                    )
                )
                if not ids:
                    return done
                if before_each is not None:
                    session.execute(before_each(ids))
                session.execute(statement(ids))
            done += len(ids)
            self.progress(kind, done)
        return done


def purge_message(counts: PurgeCounts, *, dry_run: bool) -> list[str]:
    """The French lines `drimbox retention purge` prints."""
    verb = "à purger" if dry_run else "purgé(s)"
    return [f"{LABELS[kind]} : {getattr(counts, kind)} {verb}" for kind in LABELS]


class RetentionWorker(LeasedWorker):
    """The purge in a running node: due every `purge_interval_h`, leased so that one node of
    the site runs it at a time; the image cache of this node is purged on each of its turns."""

    name = "retention purge"
    model = PeriodicJob
    due_states = (SCHEDULED,)
    count_attempts = False

    def __init__(
        self,
        config: Config,
        db: Database,
        *,
        cache_purge: Callable[[], tuple[int, int]] | None = None,
        metrics: NodeMetrics | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.db = db
        self.owner = config.node.name
        self.retention = config.retention
        self.lease = timedelta(seconds=config.source.lease_s)
        self.poll_s = min(60.0, self.retention.purge_interval_h * 3600.0)
        self.cache_purge = cache_purge
        self.metrics = metrics
        self._scheduled = False
        self.stop = stop

    def _stopping(self) -> bool:
        """The node is stopping (its `stop` event, read from the purge's thread)."""
        return self.stop is not None and self.stop.is_set()

    def claim_next(self) -> int | None:
        if not self._scheduled:
            self._schedule()
        return super().claim_next()

    def _schedule(self) -> None:
        """The job's row, created by the first node that needs it (due at once)."""
        try:
            with self.db.session() as session:
                if session.scalar(select(PeriodicJob.id).where(PeriodicJob.name == JOB_NAME)):
                    self._scheduled = True
                    return
                session.add(PeriodicJob(name=JOB_NAME, state=SCHEDULED, last_result={}))
        except IntegrityError:
            pass  # another node created it meanwhile
        self._scheduled = True

    def process(self, item_id: int) -> PurgeCounts:
        def progress(kind: str, done: int) -> None:
            log.info("retention purge: %s, %d row(s) so far", kind, done)

        counts = RetentionPurge(self.db, self.retention, progress, stopping=self._stopping).run()
        interrupted = self._stopping()
        if self.cache_purge is not None and not interrupted:
            counts.cache_series, counts.cache_bytes = self.cache_purge()
        now = utcnow()
        with self.db.session() as session:
            job = session.get(PeriodicJob, item_id)
            if job is not None and not self.taken_over(item_id, job.leased_by, job.state):
                job.leased_by = None
                if interrupted:  # due again at once, for whichever node is (or comes back) up
                    job.next_attempt_at = now
                else:
                    job.next_attempt_at = now + timedelta(hours=self.retention.purge_interval_h)
                    job.last_run_at, job.last_run_by = now, self.owner
                    job.last_result = counts.as_dict()
        if self.metrics is not None:
            self.metrics.purged(counts.as_dict())
        if counts.total:
            log.info("retention purge: %s", counts.as_dict())
        return counts
