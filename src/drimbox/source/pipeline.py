"""The report pipeline: from a stored report to a KOS manifest built from what the PACS holds.

A worker claims due reports with a lease (so that a crash mid-way only delays the report, and
several nodes on PostgreSQL never process the same one), reads the study from the PACS, checks
that the PACS and the report describe the same patient and exam, and builds the manifest. Every
outcome is written back with its reason in French for the site staff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from drimbox.cda import CdaError, parse_report
from drimbox.config import Config
from drimbox.db import Database, Report, ReportState, aware, utcnow
from drimbox.db.leases import LeasedWorker, backoff
from drimbox.dicom.kos import (
    IdentityMismatch,
    KosError,
    KosSite,
    build_manifest,
    manifest_from_bytes,
    manifest_to_bytes,
    referenced_instances,
)
from drimbox.dicom.pacs import PacsClient, PacsError, PacsSettings
from drimbox.dicom.retrieve import pacs_tls
from drimbox.source.lifecycle import (
    confidentiality_of,
    latest_published,
    newer_version,
    not_for_dmp,
)
from drimbox.source.outbox import DELETE, PUBLISH, enqueue

log = logging.getLogger(__name__)

DUE_STATES = (ReportState.RECEIVED.value, ReportState.WAITING_IMAGES.value)


@dataclass(frozen=True)
class BuiltKos:
    """A manifest encoded once, with what the pipeline records of it."""

    data: bytes
    sop_instance_uid: str
    instances: frozenset[str]


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
        tls=pacs_tls(config),
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
        # Called once a report's outcome is written (e.g. wake the DMP publisher).
        self.on_processed: Callable[[], None] | None = None

    # -- processing -------------------------------------------------------------------------
    def process(self, report_id: int) -> Outcome:
        with self.db.session() as session:
            report = session.get(Report, report_id)
            if report is None:
                raise LookupError(report_id)
            cda, received_at, attempts = report.cda, report.received_at, report.attempts
            kind, study_uid = report.kind, report.study_uid
            newer = newer_version(session, report)
            superseded = (
                f"version {report.version_number} reçue après la version "
                f"{newer.version_number} (compte rendu n°{newer.id}) : jamais publiée"
                if newer is not None
                else None
            )
        kos: BuiltKos | None = None
        if superseded is not None:
            outcome = Outcome(ReportState.SUPERSEDED, superseded)
        else:
            try:
                variant = f"report-{report_id}" if kind == "confidentiality" else ""
                outcome, kos = self._build(cda, study_uid, received_at, attempts, kind, variant)
            except Exception as exc:
                log.exception("report %s: unexpected failure", report_id)
                outcome = Outcome(
                    ReportState.RECEIVED, f"Erreur interne : {exc}", self._backoff(attempts)
                )
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
                self._built(session, report, kos)
            study = report.study_uid
        if self.on_processed is not None:
            self.on_processed()
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

    def _built(self, session: Session, report: Report, kos: BuiltKos) -> None:
        """Record the KOS and decide, in the same transaction, what the DMP gets."""
        report.kos = kos.data
        report.kos_sop_uid = kos.sop_instance_uid
        instances = kos.instances
        report.kos_instance_count = len(instances)
        published = latest_published(session, report.study_uid)
        if not_for_dmp(report.flags):
            report.state = ReportState.NOT_FOR_DMP.value
            report.reason = "non destiné au DMP (DESTDMP=N)"
            if published is not None:
                # A later DESTDMP=N takes the exam's KOS back out of the DMP.
                enqueue(session, report, DELETE)
            return
        if (
            published is not None
            and published.kos is not None
            and report.kind == "publish"
            and published.set_id != report.set_id
            and referenced_instances(manifest_from_bytes(published.kos)) == instances
            and confidentiality_of(published.flags) == confidentiality_of(report.flags)
        ):
            # Another report of the same exam: the exam keeps its one KOS.
            report.state = ReportState.PUBLISHED.value
            report.reason = f"KOS de l'examen déjà publié (CR n°{published.id}) : conservé"
            report.kos, report.kos_sop_uid = published.kos, published.kos_sop_uid
            report.dmp_entry_uuid = published.dmp_entry_uuid
            report.published_at = utcnow()
            return
        # The publication job is written with the KOS: nothing built is left behind.
        report.state = ReportState.PUBLISHING.value
        enqueue(session, report, PUBLISH)

    def _build(
        self,
        cda: bytes | None,
        study_uid: str,
        received_at: datetime,
        attempts: int,
        kind: str,
        variant: str = "",
    ) -> tuple[Outcome, BuiltKos | None]:
        if not cda:
            return Outcome(ReportState.REFUSED, "Aucun CDA dans le message"), None
        try:
            parsed = parse_report(cda, study_uid or None)
        except CdaError as exc:
            return Outcome(ReportState.REFUSED, f"CDA illisible : {exc}", private=True), None
        try:
            study = self.pacs.snapshot(parsed.study_instance_uid)
        except PacsError as exc:
            return Outcome(
                ReportState.RECEIVED, f"PACS injoignable : {exc}", self._backoff(attempts)
            ), None
        if (study is None or study.instance_count == 0) and kind in ("iocm", "exam_update"):
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
            kos = build_manifest(parsed, study, self.site, variant=variant)
        except IdentityMismatch as exc:
            reasons = "; ".join(exc.reasons)
            reason = f"Identité incohérente PACS/CR : {reasons}"
            return Outcome(ReportState.REFUSED, reason, private=True), None
        except KosError as exc:
            return Outcome(ReportState.REFUSED, f"KOS impossible : {exc}", private=True), None
        # Encoded here, once, outside the database transaction; the references are the
        # snapshot's (reading them back from the manifest would parse 1300 items).
        instances = frozenset(i.sop_instance_uid for s in study.series for i in s.instances)
        built = BuiltKos(manifest_to_bytes(kos), str(kos.SOPInstanceUID), instances)
        return Outcome(ReportState.KOS_BUILT, None), built

    def _backoff(self, attempts: int) -> float:
        return backoff(attempts, self.config.source.retry_initial_s, self.config.source.retry_max_s)
