"""Image accesses summed into the audit trail: one event per caller, study, action and minute.

A viewer makes one request per image or frame (an OHIF session: dozens to hundreds); one audit
event each would bury the trail. So every successful DICOMweb access (retrieve, metadata,
frames, renderings, thumbnails, QIDO searches) is added to an in-memory tally keyed by (role,
actor, action, study, minute, remote address, channel, PSC client, peer certificate subject),
and the tally becomes one append-only audit event carrying `requests`, `bytes` (also in the
`bytes` column), `instances`, the series seen and the first and last request times. Refusals
and errors are not tallied: the image routes record each one at once, with its reason.

Flushed when a minute has ended (checked every `FLUSH_EVERY_S`) and on shutdown (`close`, called
by the image application's lifespan): a clean stop loses nothing. A kill -9 loses what is not
yet written — at most the current minute and the `FLUSH_EVERY_S` after it; each request is also
in the Source's per-request access log file (`drimbox.source.access`), appended as it ends. A
failed write (database unavailable) keeps the events for the next flush.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select

from drimbox.db import AuditEvent, Database, Report, utcnow
from drimbox.db.models import ConsoExam, ConsoLaunch
from drimbox.trust.audit import Role

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 5.0
MINUTE = timedelta(minutes=1)
MAX_BYTES = 2**31 - 1  # the `bytes` column (PostgreSQL integer): a fuller tally starts another
MAX_UIDS = 64  # series (or studies) listed in one event: more only count


@dataclass(frozen=True)
class AccessKey:
    """What one aggregated event is about."""

    role: Role
    actor: str
    action: str
    study_uid: str
    minute: datetime  # UTC, truncated to the minute
    remote: str = ""
    channel: str = ""  # peer (/dicom-web-rs) or viewer (/dicom-web)
    psc_client: str = ""
    peer_dn: str = ""


@dataclass
class Tally:
    first: datetime
    last: datetime
    requests: int = 0
    bytes: int = 0
    instances: int = 0
    interrupted: int = 0  # answers the client left before their end
    series: set[str] = field(default_factory=set)
    studies: set[str] = field(default_factory=set)  # QIDO /studies: the studies it returned


def patient_of_study(db: Database, study_uid: str) -> str:
    """The INS of a study's patient: from this site's reports (Source), else from the launch
    whose history listed it (Conso); "" when unknown."""
    if not study_uid:
        return ""
    with db.session() as session:
        ins = session.scalar(
            select(Report.patient_ins)
            .where(Report.study_uid == study_uid, Report.patient_ins != "")
            .order_by(Report.id.desc())
            .limit(1)
        )
        if ins:
            return ins
        ins = session.scalar(
            select(ConsoLaunch.patient_ins)
            .join(ConsoExam, ConsoExam.launch_id == ConsoLaunch.id)
            .where(ConsoExam.study_uid == study_uid, ConsoLaunch.patient_ins != "")
            .order_by(ConsoExam.id.desc())
            .limit(1)
        )
    return ins or ""


class AccessTally:
    """The tally of one image application (see the module docstring). `add` is called on the
    event loop, `flush` from a thread: a lock guards the buckets."""

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock
        self._open: dict[AccessKey, Tally] = {}
        self._full: list[tuple[AccessKey, Tally]] = []  # closed early (`MAX_BYTES`) or unwritten
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self.written = 0  # events written so far (tests, figures)

    def add(
        self,
        key: AccessKey,
        *,
        nbytes: int,
        instances: int = 0,
        series_uid: str = "",
        studies: tuple[str, ...] = (),
        interrupted: bool = False,
        at: datetime | None = None,
    ) -> None:
        at = at or self.clock()
        with self._lock:
            tally = self._open.get(key)
            if tally is not None and tally.bytes + nbytes > MAX_BYTES:
                self._full.append((key, self._open.pop(key)))
                tally = None
            if tally is None:
                tally = self._open[key] = Tally(first=at, last=at)
            tally.requests += 1
            tally.bytes += nbytes
            tally.instances += instances
            tally.interrupted += int(interrupted)
            tally.last = max(tally.last, at)
            if series_uid and len(tally.series) < MAX_UIDS:
                tally.series.add(series_uid)
            for uid in studies[: MAX_UIDS - len(tally.studies)]:
                tally.studies.add(uid)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._open) + len(self._full)

    def _take(self, everything: bool) -> list[tuple[AccessKey, Tally]]:
        now = self.clock()
        with self._lock:
            due = [k for k in self._open if everything or k.minute + MINUTE <= now]
            taken = self._full + [(k, self._open.pop(k)) for k in due]
            self._full = []
        return taken

    def flush(self, *, everything: bool = False) -> int:
        """Write the tallies of ended minutes (every tally with `everything`) as audit events,
        in one transaction; returns how many. On failure they are kept for the next call."""
        with self._flushing:
            taken = self._take(everything)
            if not taken:
                return 0
            try:
                patients: dict[str, str] = {}

                def patient(study_uid: str) -> str:
                    if study_uid not in patients:
                        patients[study_uid] = patient_of_study(self.db, study_uid)
                    return patients[study_uid]

                rows = []
                for key, tally in taken:
                    # A search over several studies: their patient, when it is one patient.
                    named = {patient(uid) for uid in tally.studies or {key.study_uid}}
                    rows.append(self._event(key, tally, named.pop() if len(named) == 1 else ""))
                with self.db.session() as session:
                    session.add_all(rows)
            except Exception:
                log.exception("audit: %d image access tally(ies) not written yet", len(taken))
                with self._lock:
                    self._full = taken + self._full
                return 0
            self.written += len(rows)
            return len(rows)

    def _event(self, key: AccessKey, tally: Tally, patient_ins: str) -> AuditEvent:
        detail: dict[str, object] = {
            "aggregated": True,
            "requests": tally.requests,
            "instances": tally.instances,
            "first": tally.first.isoformat(timespec="milliseconds"),
            "last": tally.last.isoformat(timespec="milliseconds"),
            "channel": key.channel,
        }
        if tally.interrupted:
            detail["interrupted"] = tally.interrupted
        if tally.series:
            detail["series_uids"] = sorted(tally.series)
        if tally.studies:
            detail["study_uids"] = sorted(tally.studies)
        if key.psc_client:
            detail["psc_client"] = key.psc_client
        if key.peer_dn:
            detail["peer_dn"] = key.peer_dn
        return AuditEvent(
            at=tally.first,
            actor=key.actor[:255],
            actor_role=key.role,
            action=key.action,
            result="ok",
            patient_ins=patient_ins,
            study_uid=key.study_uid,
            bytes=tally.bytes,
            remote=key.remote[:128],
            node=self.db.node,
            detail=detail,
        )

    async def run(self) -> None:
        """Flush ended minutes until cancelled (the image application's lifespan)."""
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            await asyncio.to_thread(self.flush)

    def close(self) -> None:
        """Everything still counted, written now (clean stop); what cannot be is logged."""
        self.flush(everything=True)
        with self._lock:
            lost = self._full + list(self._open.items())
        for key, tally in lost:
            log.error(
                "AUDIT RECORD LOST: %s %s study %s, %d request(s), %d bytes",
                key.actor, key.action, key.study_uid, tally.requests, tally.bytes,
            )  # fmt: skip


def minute_of(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)
