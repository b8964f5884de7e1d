"""The audit trail's own retention: rows older than `[retention] audit_days` go, through one
sanctioned path that only the schema's owner can take.

The trail is append-only for everyone (triggers of migrations 0003 and 0010 refuse UPDATE,
DELETE and TRUNCATE) and the node's PostgreSQL role has no DELETE on it (`drimbox db
grant-node`): neither the node's code nor whoever holds its credentials can shorten it, and so the
node's periodic purge never touches it. Purging it is an administrator's act, `drimbox audit
purge`, run with the credentials of the schema's owner (those of `drimbox db upgrade`): in each
transaction the owner disables the append-only trigger, deletes a batch of rows older than the
retention — and only those —, enables the trigger again, and the trail records the purge
(`audit_purge`, with the count and the cut-off). A transaction's trigger change is invisible to
other sessions and undone on any failure, so the trail is never left open. Any other role is
refused by PostgreSQL itself (only a table's owner may alter its triggers), with a French
message here. On SQLite (one node, no roles) the triggers are dropped and re-created inside
the transaction.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from drimbox.db.engine import Database, utcnow
from drimbox.db.models import AuditEvent

# As migration 0003 creates it.
_SQLITE_DELETE_TRIGGER = (
    "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit trail is append-only'); END"
)
_PG_TRIGGER = "audit_events_append_only"


class AuditPurgeError(Exception):
    """A refusal shown to the operator (French)."""


def older_than(db: Database, before: datetime) -> int:
    """How many audit events are older than `before` (what a purge would remove)."""
    with db.session() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.at < before)
            )
            or 0
        )


def purge_audit(db: Database, before: datetime, *, operator: str, batch_rows: int = 10_000) -> int:
    """Delete the audit events older than `before`, as the schema's owner; how many. The purge
    itself is recorded in the trail."""
    deleted = 0
    try:
        while True:
            with db.session() as session:
                ids = list(
                    session.scalars(
                        select(AuditEvent.id)
                        .where(AuditEvent.at < before)
                        .order_by(AuditEvent.id)
                        .limit(batch_rows)
                    )
                )
                if not ids:
                    break
                _open(session, db)
                session.execute(delete(AuditEvent).where(AuditEvent.id.in_(ids)))
                _close(session, db)
            deleted += len(ids)
    except DBAPIError as exc:
        raise AuditPurgeError(_refusal(db, exc)) from None
    with db.session() as session:
        session.add(
            AuditEvent(
                at=utcnow(),
                actor=operator,
                actor_role="operator",
                action="audit_purge",
                result="ok",
                node=db.node,
                detail={"deleted": deleted, "before": before.isoformat()},
            )
        )
    return deleted


def _open(session: Session, db: Database) -> None:
    if db.is_sqlite:
        session.execute(text("DROP TRIGGER audit_events_no_delete"))
    else:
        session.execute(text(f"ALTER TABLE audit_events DISABLE TRIGGER {_PG_TRIGGER}"))


def _close(session: Session, db: Database) -> None:
    if db.is_sqlite:
        session.execute(text(_SQLITE_DELETE_TRIGGER))
    else:
        session.execute(text(f"ALTER TABLE audit_events ENABLE TRIGGER {_PG_TRIGGER}"))


def _refusal(db: Database, exc: DBAPIError) -> str:
    if not db.is_sqlite and "owner" in str(exc.orig).lower():
        return (
            "seul le propriétaire du schéma peut purger la piste d'audit (le rôle du nœud ne "
            "le peut pas, par construction) : relancez avec --database-url et le compte de "
            "« drimbox db upgrade »"
        )
    return f"purge de la piste d'audit refusée par la base : {exc.orig}"
