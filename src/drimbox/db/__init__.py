"""Persistence: the SQLAlchemy models, the engine/session factory and the Alembic migrations.

Runs on SQLite (the single-node default) and on PostgreSQL (several nodes). Owns the schema and
how a unit of work is committed; the domain packages say what to store, not how.
"""

from drimbox.db.engine import MAX_ROW_ID, Database, aware, row_id, utcnow
from drimbox.db.models import (
    AuditEvent,
    Base,
    DmpJob,
    Hl7Message,
    JobState,
    LoginRequestRow,
    Report,
    ReportState,
    SpeedTest,
    UserSession,
)

__all__ = [
    "MAX_ROW_ID",
    "AuditEvent",
    "Base",
    "Database",
    "DmpJob",
    "Hl7Message",
    "JobState",
    "LoginRequestRow",
    "Report",
    "ReportState",
    "SpeedTest",
    "UserSession",
    "aware",
    "row_id",
    "utcnow",
]
