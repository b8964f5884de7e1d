"""Engine and session factory, and schema upgrades through Alembic at start-up."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer DRIMbox: this one must not touch it."""


def utcnow() -> datetime:
    return datetime.now(UTC)


MAX_ROW_ID = 2**31 - 1  # PostgreSQL's INTEGER; SQLite overflows past 2**63 - 1


def row_id(text: str) -> int | None:
    """The row id a URL segment names, None when it cannot be one (not digits, 0, or past the
    databases' integer range: such ids answer 404 without reaching the database)."""
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        return None
    value = int(text)
    return value if 1 <= value <= MAX_ROW_ID else None


def aware(moment: datetime) -> datetime:
    """SQLite gives back naive datetimes for what was stored as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def normalise_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (psycopg2 is not a dependency)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's implicit transactions start lazily, so a unit of work that reads then writes
    # can fail with SQLITE_BUSY under concurrency; we issue BEGIN IMMEDIATE ourselves instead.
    dbapi_connection.isolation_level = None
    # WAL lets the HTTP side read while the MLLP side writes; FULL sync: an ACKed message
    # survives a power cut, which is the promise made to the RIS.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _alembic_config() -> AlembicConfig:
    alembic_config = AlembicConfig()
    alembic_config.set_main_option("script_location", str(MIGRATIONS))
    return alembic_config


class Database:
    """A node's database: `session()` is one unit of work, committed on success. `node` is the
    name of the node using it, written with what it records (audit trail)."""

    def __init__(self, url: str, node: str = "") -> None:
        self.url = normalise_url(url)
        self.node = node
        if self.url.startswith("sqlite:///") and not self.url.endswith(":memory:"):
            Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(self.url, pool_pre_ping=True)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin_immediate)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def upgrade(self) -> None:
        """Bring the schema to the latest revision (idempotent). Raises `SchemaTooNew` on a
        database migrated by a newer version (a rollback without restoring the backup)."""
        alembic_config = _alembic_config()
        script = ScriptDirectory.from_config(alembic_config)
        known = {revision.revision for revision in script.walk_revisions()}
        with self.engine.begin() as connection:
            current = MigrationContext.configure(connection).get_current_heads()
            unknown = [revision for revision in current if revision not in known]
            if unknown:
                raise SchemaTooNew(
                    f"la base de données est à la révision de schéma {', '.join(unknown)}, "
                    "plus récente que cette version de la DRIMbox (dernière révision connue : "
                    f"{script.get_current_head()}) : elle a été mise à jour par une version "
                    "plus récente. Réinstallez cette version, ou restaurez la sauvegarde faite "
                    "avant la mise à jour (docs/deploy.md, « Upgrades and rollback »)."
                )
            alembic_config.attributes["connection"] = connection
            command.upgrade(alembic_config, "head")

    def schema_revisions(self) -> tuple[set[str], set[str]]:
        """(revisions the database is at, head revisions of this software), without changing
        anything: empty first set = a database never upgraded."""
        heads = set(ScriptDirectory.from_config(_alembic_config()).get_heads())
        with self.engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
        return current, heads

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
