"""The exact ITI-41 and ITI-57 requests of one report version, written instead of sent.

The ANS validators (and the homologation) read the SOAP envelope a Source sends: WS-Addressing,
the signed VIHF and the XDS metadata, the documents being XOP references to MIME parts. This
builds them with the very code the outbox publishes with — the report's structure (its
certificates and identity), the flags a replacement is published with, the KOS it replaces — and
nothing is sent. The ITI-57 request deletes the KOS as this ITI-41 registers it (or as the DMP
registered it, when the report was published) together with its signature document.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import select

from drimbox.cda import CdaError, parse_report
from drimbox.config import Config
from drimbox.db import Database, Report, ReportState, aware
from drimbox.dmp import codes
from drimbox.dmp.client import DmpError, Replacement
from drimbox.dmp.metadata import PublicationIds, parse_document_entries
from drimbox.dmp.mtom import Attachment
from drimbox.dmp.vihf import VihfError, VihfSubject
from drimbox.source.dmp_port import ClientDmpPort
from drimbox.source.lifecycle import PUBLISHING_KINDS, flags_for_publication
from drimbox.source.outbox import DmpPortError

# The KOS a version replaced: it was published then (it may have been replaced since).
_REPLACEABLE = (ReportState.PUBLISHED.value, ReportState.REPLACED.value)


class EnvelopeError(Exception):
    """Why the requests cannot be written (French, for the operator)."""


@dataclass(frozen=True)
class Envelopes:
    iti41: bytes
    parts: list[Attachment]  # the MIME parts the ITI-41 envelope's xop:Include point to
    iti57: bytes


def report_envelopes(config: Config, db: Database, report_id: int) -> Envelopes:
    """The ITI-41 the box sends (or would send) for this report version, and the ITI-57 that
    deletes what it registers."""
    with db.session() as session:
        row = session.get(Report, report_id)
        if row is None:
            raise EnvelopeError(f"aucun compte rendu n°{report_id}")
        if row.kos is None or row.cda is None:
            raise EnvelopeError(
                f"le compte rendu n°{report_id} n'a pas de KOS construit : aucune requête au DMP"
            )
        previous = session.scalars(
            select(Report)
            .where(Report.study_uid == row.study_uid, Report.id < row.id)
            .where(Report.kind.in_(PUBLISHING_KINDS), Report.state.in_(_REPLACEABLE))
            .where(Report.kos_sop_uid != row.kos_sop_uid)
            .order_by(Report.id.desc())
            .limit(1)
        ).first()
        flags = flags_for_publication(row.flags, previous.flags if previous else None)
        kos, cda, study, entry_uuid = row.kos, row.cda, row.study_uid, row.dmp_entry_uuid
        sent_at = aware(row.published_at) if row.published_at else None
        replaced = (previous.kos_sop_uid, previous.dmp_entry_uuid) if previous else None
    try:
        report = parse_report(cda, study or None)
    except CdaError as exc:
        raise EnvelopeError(f"compte rendu illisible : {exc}") from exc
    port = ClientDmpPort(config)
    try:
        client = port.client(report)
        replaces = None
        if replaced is not None and replaced[1]:
            own = PublicationIds.derive(replaced[0] or "", client.settings.uid_root)
            # Our own publication: its signature entry's id derives from its KOS's.
            own_kos = own.kos_entry_uuid == replaced[1]
            replaces = Replacement(replaced[1], own.signature_entry_uuid if own_kos else None)
        now = sent_at or datetime.now().astimezone()
        request = client.kos_request(report, kos, flags, replaces=replaces, now=now)
        entries = parse_document_entries(
            request.body.find(f".//{{{codes.RIM_NS}}}RegistryObjectList")
        )
        iti41, parts = client.iti41_envelope(report, request)
        # As the DMP holds them once registered: Approved, the KOS under the entry id it kept.
        entries = [replace(e, status=codes.STATUS_APPROVED) for e in entries]
        kos_entry = next(e for e in entries if e.mime_type == codes.KOS_MIME_TYPE)
        if entry_uuid:
            kos_entry = replace(kos_entry, entry_uuid=entry_uuid)
        also = [e for e in entries if e.mime_type != codes.KOS_MIME_TYPE]
        iti57 = client.iti57_envelope(kos_entry, subject=VihfSubject.from_report(report), also=also)
    except (DmpError, DmpPortError, VihfError) as exc:
        raise EnvelopeError(str(exc)) from exc
    finally:
        port.close()
    return Envelopes(iti41, parts, iti57)
