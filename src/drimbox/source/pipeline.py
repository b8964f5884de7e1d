"""The report pipeline: from a stored report to a KOS manifest built from what the PACS holds.

A worker claims due reports with a lease (so that a crash mid-way only delays the report, and
several nodes on PostgreSQL never process the same one), reads the study from the PACS, checks
that the PACS and the report describe the same patient and exam, and builds the manifest. Every
outcome is written back with its reason in French for the site staff.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydicom import Dataset

from drimbox.cda import CdaError, parse_report
from drimbox.config import Config
from drimbox.db import Database, Report, ReportState, aware, utcnow
from drimbox.db.leases import LeasedWorker, backoff
from drimbox.dicom.kos import IdentityMismatch, KosError, KosSite, build_manifest, manifest_to_bytes
from drimbox.dicom.pacs import PacsClient, PacsError, PacsSettings
from drimbox.source.outbox import DELETE, PUBLISH, enqueue

log = logging.getLogger(__name__)

DUE_STATES = (ReportState.RECEIVED.value, ReportState.WAITING_IMAGES.value)


@dataclass(frozen=True)
class Outcome:
    state: ReportState
    reason: str | None = None
    retry_in_s: float | None = None
    private: bool = False  # the reason quotes the patient's identity: kept out of the logs


def pacs_settings(config: Config) -> PacsSettings:
    pacs = config.pacs
    return PacsSettings(
        host=pacs.host,
        port=pacs.port,
        called_aet=pacs.called_aet,
        calling_aet=pacs.calling_aet,
        acse_timeout=pacs.timeout_s,
        dimse_timeout=pacs.timeout_s,
        network_timeout=pacs.timeout_s,
        max_pdu=pacs.max_pdu,
    )


def kos_site(config: Config) -> KosSite:
    return KosSite(
        uid_root=config.site.uid_root,
        public_base_url=config.site.public_base_url,
        institution_name=config.site.name,
    )


class ReportPipeline(LeasedWorker):
    name = "report pipeline"
    model = Report
    due_states = DUE_STATES

    def __init__(self, config: Config, db: Database, pacs: PacsClient | None = None) -> None:
        self.config = config
        self.db = db
        self.owner = config.node.name
        self.lease = timedelta(seconds=config.source.lease_s)
        self.poll_s = config.source.poll_interval_s
        self.pacs = pacs or PacsClient(pacs_settings(config))
        self.site = kos_site(config)

    # -- processing -------------------------------------------------------------------------
    def process(self, report_id: int) -> Outcome:
        with self.db.session() as session:
            report = session.get(Report, report_id)
            if report is None:
                raise LookupError(report_id)
            cda, received_at, attempts = report.cda, report.received_at, report.attempts
            kind = report.kind
        kos: Dataset | None
        try:
            outcome, kos = self._build(cda, received_at, attempts, kind)
        except Exception as exc:
            log.exception("report %s: unexpected failure", report_id)
            outcome = Outcome(
                ReportState.RECEIVED, f"Erreur interne : {exc}", self._backoff(attempts)
            )
            kos = None
        now = utcnow()
        with self.db.session() as session:
            report = session.get(Report, report_id)
            assert report is not None
            if self.taken_over(report_id, report.leased_by, report.state):
                return outcome
            report.leased_by = None
            report.state = outcome.state.value
            report.reason = outcome.reason
            report.updated_at = now
            report.next_attempt_at = (
                now + timedelta(seconds=outcome.retry_in_s) if outcome.retry_in_s else None
            )
            if outcome.state == ReportState.WITHDRAWAL_RECEIVED:
                enqueue(session, report, DELETE)
            if kos is not None:
                # The publication job is written with the KOS: nothing built is left behind.
                report.state = ReportState.PUBLISHING.value
                enqueue(session, report, PUBLISH)
                report.kos = manifest_to_bytes(kos)
                report.kos_sop_uid = str(kos.SOPInstanceUID)
                report.kos_instance_count = sum(
                    len(series.ReferencedSOPSequence)
                    for evidence in kos.CurrentRequestedProcedureEvidenceSequence
                    for series in evidence.ReferencedSeriesSequence
                )
            study = report.study_uid
        # A reason quoting the patient's identity stays in the database (drimbox reports show).
        reason = "(see drimbox reports show)" if outcome.private else outcome.reason or ""
        log.info(
            "report %s: %s %s",
            report_id,
            outcome.state.value,
            reason,
            extra={"report_id": report_id, "study_uid": study},
        )
        return outcome

    def _build(
        self, cda: bytes | None, received_at: datetime, attempts: int, kind: str
    ) -> tuple[Outcome, Dataset | None]:
        if not cda:
            return Outcome(ReportState.REFUSED, "Aucun CDA dans le message"), None
        try:
            parsed = parse_report(cda)
        except CdaError as exc:
            return Outcome(ReportState.REFUSED, f"CDA illisible : {exc}", private=True), None
        try:
            study = self.pacs.snapshot(parsed.study_instance_uid)
        except PacsError as exc:
            return Outcome(
                ReportState.RECEIVED, f"PACS injoignable : {exc}", self._backoff(attempts)
            ), None
        if (study is None or study.instance_count == 0) and kind == "iocm":
            # Every image of the exam was rejected in the PACS: its KOS must leave the DMP.
            return Outcome(
                ReportState.WITHDRAWAL_RECEIVED, "plus aucune image dans le PACS : dépublication"
            ), None
        if study is None or study.instance_count == 0:
            waited = utcnow() - aware(received_at)
            limit = timedelta(hours=self.config.source.images_wait_h)
            if waited >= limit:
                return Outcome(
                    ReportState.REFUSED,
                    f"Examen {parsed.study_instance_uid} absent du PACS après "
                    f"{self.config.source.images_wait_h:g} h d'attente",
                ), None
            return Outcome(
                ReportState.WAITING_IMAGES,
                f"Examen {parsed.study_instance_uid} pas encore dans le PACS",
                self._backoff(attempts),
            ), None
        try:
            kos = build_manifest(parsed, study, self.site)
        except IdentityMismatch as exc:
            reasons = "; ".join(exc.reasons)
            reason = f"Identité incohérente PACS/CR : {reasons}"
            return Outcome(ReportState.REFUSED, reason, private=True), None
        except KosError as exc:
            return Outcome(ReportState.REFUSED, f"KOS impossible : {exc}", private=True), None
        return Outcome(ReportState.KOS_BUILT, None), kos

    def _backoff(self, attempts: int) -> float:
        return backoff(attempts, self.config.source.retry_initial_s, self.config.source.retry_max_s)
