"""The audit trail: every access to patient data, written append-only, exportable.

Owns what an audit record holds (actor, role, patient INS, study, action, result, bytes, time) and
its export as JSON lines. Callers say what happened; they never update or delete records (the
database refuses it too).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select

from drimbox.db import AuditEvent, Database, aware, utcnow
from drimbox.logs import ref

log = logging.getLogger(__name__)

Role = Literal["user", "peer", "system", "operator"]
Result = Literal["ok", "refused", "error"]
SYSTEM = "système"


def record(
    db: Database,
    *,
    actor: str,
    role: Role,
    action: str,
    result: Result,
    patient_ins: str = "",
    study_uid: str = "",
    nbytes: int | None = None,
    remote: str = "",
    **detail: Any,
) -> None:
    """Append one event. An audit failure is logged loudly but never hides the action's own
    outcome from its caller."""
    try:
        with db.session() as session:
            session.add(
                AuditEvent(
                    at=utcnow(),
                    actor=actor[:255],
                    actor_role=role,
                    action=action,
                    result=result,
                    patient_ins=patient_ins,
                    study_uid=study_uid,
                    bytes=nbytes,
                    remote=remote,
                    node=db.node,
                    detail=detail,
                )
            )
    except Exception:
        log.exception(
            "AUDIT RECORD LOST: %s %s patient %s %s", actor, action, ref(patient_ins), result
        )


def events(
    db: Database,
    *,
    since: datetime | None = None,
    patient_ins: str | None = None,
    actor: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    query = select(AuditEvent).order_by(AuditEvent.id)
    if since is not None:  # in UTC, as stored: SQLite keeps a datetime's digits, not its zone
        query = query.where(AuditEvent.at >= aware(since).astimezone(UTC))
    if patient_ins:
        query = query.where(AuditEvent.patient_ins == patient_ins)
    if actor:
        query = query.where(AuditEvent.actor == actor)
    if limit:
        query = query.limit(limit)
    with db.session() as session:
        return [_as_dict(event) for event in session.scalars(query)]


def export_json_lines(db: Database, *, since: datetime | None = None) -> Iterator[str]:
    for event in events(db, since=since):
        yield json.dumps(event, ensure_ascii=False, sort_keys=True)


def _as_dict(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "actor": event.actor,
        "role": event.actor_role,
        "action": event.action,
        "result": event.result,
        "patient_ins": event.patient_ins,
        "study_uid": event.study_uid,
        "bytes": event.bytes,
        "remote": event.remote,
        "node": event.node,
        "detail": event.detail,
    }
