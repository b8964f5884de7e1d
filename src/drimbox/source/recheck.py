"""Late images: after a KOS is published, the PACS is read again over a configured window.

Modalities and post-processing stations keep sending images after the report is signed
(reconstructions, secondary captures, a forgotten series). At each delay of
`[source] images_recheck_s` (counted from the first publication) the worker compares the study's
instances in the PACS with those the published KOS references; when they differ the report is
re-opened (kind `recheck`) and its new KOS replaces the old one in the DMP (RPLC). A study that has
lost all its images is left to IOCM and the RIS: a PACS purge alone never depublishes.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from drimbox.config import Config
from drimbox.db import Database, Report, ReportState, utcnow
from drimbox.db.leases import LeasedWorker
from drimbox.dicom.kos import manifest_from_bytes, referenced_instances
from drimbox.dicom.pacs import PacsClient, PacsError
from drimbox.source.lifecycle import next_recheck, reopen

log = logging.getLogger(__name__)


class LateImagesWorker(LeasedWorker):
    name = "late images"
    model = Report
    due_states = (ReportState.PUBLISHED.value,)
    # The recheck time is the lease: a published report's retry columns are not this worker's.
    lease_column = "recheck_at"
    count_attempts = False

    def __init__(self, config: Config, db: Database, pacs: PacsClient) -> None:
        self.config = config
        self.db = db
        self.pacs = pacs
        self.poll_s = max(config.source.poll_interval_s, 1.0)
        self.owner = config.node.name
        self.lease = timedelta(seconds=config.source.lease_s)

    def process(self, report_id: int) -> str:
        """Compare one published KOS with the PACS; what was done (for logs and tests)."""
        with self.db.session() as session:
            row = session.get(Report, report_id)
            if row is None:
                raise LookupError(report_id)
            study_uid, kos, done = row.study_uid, row.kos, row.rechecks_done
        if kos is None:
            return self._schedule(report_id, None, "pas de KOS")
        try:
            snapshot = self.pacs.snapshot(study_uid)
        except PacsError as exc:
            retry = utcnow() + timedelta(seconds=self.config.source.retry_max_s)
            return self._schedule(report_id, retry, f"PACS injoignable : {exc}", done=done)
        published = referenced_instances(manifest_from_bytes(kos))
        now_in_pacs = (
            frozenset(i.sop_instance_uid for s in snapshot.series for i in s.instances)
            if snapshot is not None
            else frozenset()
        )
        if not now_in_pacs or now_in_pacs == published:
            # Unchanged (or emptied, which is IOCM's or the RIS's call): next check of the window.
            delays = self.config.source.images_recheck_s
            return self._schedule(
                report_id, next_recheck(delays, done + 1, utcnow()), "inchangé", done=done + 1
            )
        with self.db.session() as session:
            row = session.get(Report, report_id)
            assert row is not None
            added, gone = len(now_in_pacs - published), len(published - now_in_pacs)
            again = reopen(
                session,
                row,
                "recheck",
                f"instances modifiées dans le PACS après la publication (+{added}, -{gone}) : "
                "KOS remplacé",
                rechecks_done=done + 1,
            )
            row.recheck_at = None
            row.rechecks_done = done + 1
            row.leased_by = None
            log.info(
                "report %s: PACS changed (+%d -%d), re-opened as %s",
                report_id,
                added,
                gone,
                again.id,
            )
            return f"rouvert {again.id}"

    def _schedule(
        self, report_id: int, when: datetime | None, what: str, *, done: int | None = None
    ) -> str:
        with self.db.session() as session:
            row = session.get(Report, report_id)
            assert row is not None
            row.recheck_at = when
            row.leased_by = None
            if done is not None:
                row.rechecks_done = done
        return what
