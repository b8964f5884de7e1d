"""Report intake: every inbound HL7 block is stored durably, then answered.

The promise to the RIS: an `AA` means the message is committed to the database (an SQLite file
with synchronous=FULL, or PostgreSQL). Bad messages are stored too, with the reason and the NAK
they got, so that nothing is dropped silently. A re-sent report version (same CDA id) is
acknowledged again but not queued twice — also when two nodes receive it at the same moment:
the report version's unique key makes the second insert fail, and that node then answers it as
a re-send.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from drimbox.db import Database, Hl7Message, Report, ReportState, utcnow
from drimbox.failpoints import failpoint
from drimbox.hl7.message import HL7Error, ReportMessage, build_ack, parse_report_message
from drimbox.source.lifecycle import (
    MODIF_CONF_CODE,
    PUBLISHING_KINDS,
    confidentiality_of,
    latest_published,
    reopen,
)
from drimbox.source.outbox import DELETE, enqueue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IntakeResult:
    ack: str
    ack_code: str
    message_id: int | None
    report_id: int | None
    duplicate_of: int | None = None


def decode_block(block: bytes) -> str:
    """MSH-18 announces UTF-8; a RIS that sends Latin-1 anyway is read, not refused."""
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        return block.decode("cp1252", errors="replace")


class ReportIntake:
    def __init__(self, db: Database, on_stored: Callable[[], None] | None = None) -> None:
        self.db = db
        self.on_stored = on_stored  # e.g. wake the report pipeline: no polling delay

    async def handle_async(self, block: bytes, peer: str) -> str:
        result = await asyncio.to_thread(self.handle, block, peer)
        if result.report_id is not None and self.on_stored is not None:
            self.on_stored()
        return result.ack

    def handle(self, block: bytes, peer: str) -> IntakeResult:
        text = decode_block(block)
        try:
            message = parse_report_message(text)
        except HL7Error as error:
            ack = build_ack(text, error.code, str(error), error=error)
            message_id = self._store_rejected(block, text, peer, error)
            # The error may quote a field's value (a name, a date): it is stored, not logged.
            log.warning(
                "HL7 message %s from %s refused (%s)",
                message_id,
                peer,
                error.code,
                extra={"peer": peer},
            )
            return IntakeResult(ack, error.code, message_id, None)
        try:
            message_id, report_id, duplicate_of = self._store_accepted(block, message, peer)
        except Exception as exc:
            log.exception("could not store HL7 message from %s", peer)
            storage_error = HL7Error(
                "AE",
                f"storage failure: {exc.__class__.__name__}",
                segment=None,
                field=None,
                hl7_error_code="207",
                user_message="Message non enregistré (erreur interne de la DRIMbox) : "
                "renvoyez-le plus tard",
            )
            ack = build_ack(text, "AE", str(storage_error), error=storage_error)
            return IntakeResult(ack, "AE", None, None)
        # Committed, not yet answered: a crash here makes the RIS re-send a stored message.
        failpoint("intake:after-commit")
        ack = build_ack(text, "AA", "Message enregistré")
        log.info(
            "HL7 %s from %s stored: report %s%s",
            message.message_type,
            peer,
            report_id,
            f" (duplicate of report {duplicate_of})" if duplicate_of else "",
            extra={
                "report_id": report_id,
                "study_uid": message.study_instance_uid or "",
                "peer": peer,
            },
        )
        return IntakeResult(ack, "AA", message_id, report_id, duplicate_of)

    def _store_rejected(self, block: bytes, text: str, peer: str, error: HL7Error) -> int | None:
        try:
            with self.db.session() as session:
                row = Hl7Message(
                    received_at=utcnow(),
                    peer=peer,
                    control_id=_msh_field(text, 10),
                    message_type=_msh_field(text, 9),
                    size_bytes=len(block),
                    raw=block,
                    ack_code=error.code,
                    error=str(error),
                )
                session.add(row)
                session.flush()
                return row.id
        except Exception:
            log.exception("could not record a refused HL7 message from %s", peer)
            return None

    def _store_accepted(
        self, block: bytes, message: ReportMessage, peer: str
    ) -> tuple[int, int | None, int | None]:
        try:
            return self._store_once(block, message, peer)
        except IntegrityError:
            # Another node stored the same version between our check and our insert: the second
            # try finds it and answers as a re-send.
            log.info("HL7 from %s: report version stored meanwhile by another node", peer)
            return self._store_once(block, message, peer)

    def _store_once(
        self, block: bytes, message: ReportMessage, peer: str
    ) -> tuple[int, int | None, int | None]:
        now = utcnow()
        report = message.report
        document_id = _document_id(message)
        version_key = f"{message.kind}|{document_id}"[:160] if document_id else None
        with self.db.session() as session:
            row = Hl7Message(
                received_at=now,
                peer=peer,
                control_id=message.control_id,
                message_type=message.message_type,
                size_bytes=len(block),
                raw=block,
                ack_code="AA",
            )
            session.add(row)
            session.flush()
            duplicate_of = None
            if version_key:
                duplicate_of = session.scalar(
                    select(Report.id).where(Report.version_key == version_key)
                )
            if duplicate_of is not None:
                row.error = _resent(session, message, document_id, duplicate_of)
                return row.id, None, duplicate_of
            state = (
                ReportState.WITHDRAWAL_RECEIVED
                if message.kind in ("withdraw", "withdraw_exam")
                else ReportState.RECEIVED
            )
            accession = (
                report.accession_number.extension if report and report.accession_number else ""
            )
            studies = (
                (report.study_instance_uids or (report.study_instance_uid,))
                if report
                else (message.study_instance_uid or "",)
            )
            entries: list[Report] = []
            # A report covering several studies gives one row — hence one KOS — per study.
            for study_uid in studies:
                entry = Report(
                    message_id=row.id,
                    received_at=now,
                    updated_at=now,
                    kind=message.kind,
                    patient_ins=message.patient_ins or (report.patient.ins if report else ""),
                    patient_ins_oid=message.patient_ins_oid
                    or (report.patient.ins_oid if report else ""),
                    patient_ipp=message.patient_ipp or "",
                    study_uid=study_uid,
                    accession=accession or (message.accession_number or ""),
                    document_id=document_id,
                    version_key=_study_key(version_key, len(entries)),
                    set_id=identifier_text(report.set_id) if report else "",
                    version_number=report.version_number if report else None,
                    document_time=report.effective_time if report else None,
                    replaced_document_id=(
                        identifier_text(report.replaced_document_id)
                        if report and report.replaced_document_id
                        else (message.replaced_document_id or "")
                    ),
                    flags=dict(message.flags),
                    cda=message.cda_xml,
                    state=state.value,
                    attempts=0,
                    next_attempt_at=now,
                )
                session.add(entry)
                session.flush()
                entries.append(entry)
                if state == ReportState.WITHDRAWAL_RECEIVED:
                    enqueue(session, entry, DELETE)
                if message.kind == "exam_update":
                    _exam_update(session, entry)
            return row.id, entries[0].id, None


def _study_key(version_key: str | None, index: int) -> str | None:
    """The unique key of the row of a report version's `index`-th study: the version's own key
    for the first (so that a re-send on another node collides with it), suffixed for the next."""
    if version_key is None or index == 0:
        return version_key
    return f"{version_key[:150]}#{index}"


def _resent(session: Session, message: ReportMessage, document_id: str, first: int) -> str:
    """A report version received again: not queued twice — unless MODIF_CONF_CODE=Y changes its
    confidentiality, which re-issues its KOS with the new flags (RPLC of the published one)."""
    rows = session.scalars(
        select(Report)
        .where(Report.document_id == document_id, Report.kind.in_(PUBLISHING_KINDS))
        .order_by(Report.id.desc())
    ).all()
    latest: dict[str, Report] = {}
    for candidate in rows:
        latest.setdefault(candidate.study_uid, candidate)
    changed = [
        r
        for r in latest.values()
        if confidentiality_of(r.flags) != confidentiality_of(message.flags)
    ]
    if message.flags.get(MODIF_CONF_CODE) is not True or not changed:
        return f"doublon du compte rendu n°{first} : non remis en file"
    for previous in changed:
        again = reopen(
            session, previous, "confidentiality", "confidentialité modifiée (MODIF_CONF_CODE=Y)"
        )
        again.flags = dict(message.flags)
    return f"confidentialité du compte rendu n°{first} modifiée : KOS republié"


def _exam_update(session: Session, entry: Report) -> None:
    """OMI^O23 exam update: the exam's published KOS is rebuilt from what the PACS holds now."""
    entry.state = ReportState.APPLIED.value
    latest = latest_published(session, entry.study_uid) if entry.study_uid else None
    if latest is None and entry.accession:
        latest = session.scalars(
            select(Report)
            .where(Report.accession == entry.accession)
            .where(Report.state == ReportState.PUBLISHED.value)
            .order_by(Report.id.desc())
            .limit(1)
        ).first()
    if latest is None:
        entry.reason = "aucun KOS publié pour cet examen : rien à mettre à jour"
        return
    again = reopen(session, latest, "exam_update", f"examen modifié (message n°{entry.id})")
    entry.study_uid = latest.study_uid
    entry.reason = f"examen relu dans le PACS : compte rendu n°{again.id}"


def identifier_text(identifier: object) -> str:
    root = getattr(identifier, "root", "")
    extension = getattr(identifier, "extension", "")
    return f"{root}^{extension}" if extension else str(root)


def _document_id(message: ReportMessage) -> str:
    if message.report is not None:
        return identifier_text(message.report.document_id)
    return message.document_id or ""


def _msh_field(text: str, number: int) -> str:
    """Best effort read of MSH-n for the trace of a refused message (it may not parse)."""
    first = text.lstrip("\x0b").split("\r", 1)[0].split("\n", 1)[0]
    if not first.startswith("MSH") or len(first) < 4:
        return ""
    fields = first.split(first[3])
    value = fields[number - 1] if len(fields) > number - 1 else ""
    return value[:199]
