"""Storage of the DMP simulator: its own SQLite tables (SQLAlchemy), created at start.

Holds document entries (with the full ebRIM XML of each, as registered), document bytes,
submission sets, associations, authorisations (TD0.3) and a request counter per endpoint.
The file survives a stop/start of the simulator, which is how tests simulate an outage.
Part of the test/demo simulator of the national DMP; never deploy it.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from drimbox.sim.dmp.soap import RIM, parse_xml


class Base(DeclarativeBase):
    """Tables of the simulator only (never mixed with the box's schema)."""


class EntryRow(Base):
    __tablename__ = "dmp_sim_entry"

    entry_uuid: Mapped[str] = mapped_column(String(80), primary_key=True)
    unique_id: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    patient_id: Mapped[str] = mapped_column(String(128), index=True)
    ins: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(80))
    mime_type: Mapped[str] = mapped_column(String(128))
    hash: Mapped[str] = mapped_column(String(40))
    size: Mapped[int] = mapped_column(Integer)
    class_code: Mapped[str] = mapped_column(String(128), default="")
    type_code: Mapped[str] = mapped_column(String(128), default="")
    format_code: Mapped[str] = mapped_column(String(128), default="")
    # JSON lists: "code^^scheme" for codes, CX values for reference ids.
    event_codes: Mapped[str] = mapped_column(Text, default="[]")
    confidentiality_codes: Mapped[str] = mapped_column(Text, default="[]")
    facility_code: Mapped[str] = mapped_column(String(128), default="")
    practice_code: Mapped[str] = mapped_column(String(128), default="")
    reference_ids: Mapped[str] = mapped_column(Text, default="[]")
    author_persons: Mapped[str] = mapped_column(Text, default="[]")
    creation_time: Mapped[str] = mapped_column(String(14), default="")
    service_start_time: Mapped[str] = mapped_column(String(14), default="")
    service_stop_time: Mapped[str] = mapped_column(String(14), default="")
    submission_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    status_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    submission_set_uuid: Mapped[str] = mapped_column(String(80))
    repository_unique_id: Mapped[str] = mapped_column(String(128))
    replaces: Mapped[str | None] = mapped_column(String(80), nullable=True)
    # The structure that published it (VIHF Identifiant_Structure): the owner of the entry.
    structure_id: Mapped[str] = mapped_column(String(64), default="")
    xml: Mapped[str] = mapped_column(Text)


class ContentRow(Base):
    __tablename__ = "dmp_sim_content"

    unique_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("dmp_sim_entry.unique_id"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)


class SubmissionSetRow(Base):
    __tablename__ = "dmp_sim_submission_set"

    entry_uuid: Mapped[str] = mapped_column(String(80), primary_key=True)
    unique_id: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    patient_id: Mapped[str] = mapped_column(String(128))
    source_id: Mapped[str] = mapped_column(String(128))
    submission_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    xml: Mapped[str] = mapped_column(Text)


class AssociationRow(Base):
    __tablename__ = "dmp_sim_association"

    entry_uuid: Mapped[str] = mapped_column(String(80), primary_key=True)
    association_type: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(80), index=True)
    target: Mapped[str] = mapped_column(String(80), index=True)
    xml: Mapped[str] = mapped_column(Text)


class AuthorisationRow(Base):
    __tablename__ = "dmp_sim_authorisation"

    ins: Mapped[str] = mapped_column(String(32), primary_key=True)
    professional: Mapped[str] = mapped_column(String(64), primary_key=True)
    granted_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class CounterRow(Base):
    __tablename__ = "dmp_sim_counter"

    name: Mapped[str] = mapped_column(String(160), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


def _utc(value: dt.datetime) -> dt.datetime:
    # SQLite gives naive datetimes back; everything is stored in UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


class Registry:
    """The simulator's database. Writers are serialised by `lock` (one SQLite file)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(
            f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 30}
        )

        @event.listens_for(self.engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        Base.metadata.create_all(self.engine)
        # A database of an earlier simulator (the demo keeps its folder) lacks the owner column.
        if "structure_id" not in {
            c["name"] for c in inspect(self.engine).get_columns("dmp_sim_entry")
        }:
            with self.engine.begin() as connection:
                connection.execute(
                    text("ALTER TABLE dmp_sim_entry ADD COLUMN structure_id VARCHAR(64) DEFAULT ''")
                )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.lock = threading.RLock()

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.lock, self._sessions() as session, session.begin():
            yield session

    # -- reads -----------------------------------------------------------------------------

    def entry_by_unique_id(self, session: Session, unique_id: str) -> EntryRow | None:
        return session.scalar(select(EntryRow).where(EntryRow.unique_id == unique_id))

    def submission_set_by_unique_id(
        self, session: Session, unique_id: str
    ) -> SubmissionSetRow | None:
        return session.scalar(
            select(SubmissionSetRow).where(SubmissionSetRow.unique_id == unique_id)
        )

    def entries(
        self,
        session: Session,
        *,
        patient_id: str | None = None,
        ins: str | None = None,
        statuses: Sequence[str] = (),
    ) -> list[EntryRow]:
        query = select(EntryRow)
        if patient_id is not None:
            query = query.where(EntryRow.patient_id == patient_id)
        if ins is not None:
            query = query.where(EntryRow.ins == ins)
        if statuses:
            query = query.where(EntryRow.status.in_(list(statuses)))
        return list(session.scalars(query.order_by(EntryRow.submission_time, EntryRow.unique_id)))

    def associations_of(self, session: Session, uuids: Sequence[str]) -> list[AssociationRow]:
        query = select(AssociationRow).where(
            AssociationRow.source.in_(list(uuids)) | AssociationRow.target.in_(list(uuids))
        )
        return list(session.scalars(query))

    def content(self, session: Session, unique_id: str) -> bytes | None:
        row = session.get(ContentRow, unique_id)
        return None if row is None else row.data

    # -- authorisations (TD0.2 / TD0.3) ---------------------------------------------------

    def is_authorised(self, session: Session, ins: str, professional: str) -> bool:
        return session.get(AuthorisationRow, (ins, professional)) is not None

    def grant(self, session: Session, ins: str, professional: str) -> None:
        if session.get(AuthorisationRow, (ins, professional)) is None:
            session.add(AuthorisationRow(ins=ins, professional=professional, granted_at=now()))

    def revoke(self, session: Session, ins: str, professional: str) -> None:
        row = session.get(AuthorisationRow, (ins, professional))
        if row is not None:
            session.delete(row)

    # -- counters ---------------------------------------------------------------------------

    def count(self, name: str) -> None:
        with self.session() as session:
            row = session.get(CounterRow, name)
            if row is None:
                session.add(CounterRow(name=name, count=1))
            else:
                row.count += 1

    def counters(self) -> dict[str, int]:
        with self.session() as session:
            return {row.name: row.count for row in session.scalars(select(CounterRow))}


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def entry_view(row: EntryRow, content_url: str) -> dict[str, Any]:
    """The JSON view of one entry (`GET /sim/registry/documents`)."""
    return {
        "entry_uuid": row.entry_uuid,
        "unique_id": row.unique_id,
        "patient_id": row.patient_id,
        "status": row.status.rsplit(":", 1)[-1],
        "mime_type": row.mime_type,
        "class_code": row.class_code,
        "type_code": row.type_code,
        "format_code": row.format_code,
        "event_codes": json.loads(row.event_codes),
        "confidentiality_codes": json.loads(row.confidentiality_codes),
        "reference_ids": json.loads(row.reference_ids),
        "hash": row.hash,
        "size": row.size,
        "creation_time": row.creation_time,
        "submission_time": _utc(row.submission_time).isoformat(),
        "status_time": _utc(row.status_time).isoformat(),
        "submission_set_uuid": row.submission_set_uuid,
        "repository_unique_id": row.repository_unique_id,
        "replaces": row.replaces,
        "structure_id": row.structure_id,
        "author_institutions": _slot_values(row.xml, "authorInstitution"),
        "content_url": content_url,
    }


def _slot_values(xml: str, name: str) -> list[str]:
    """The values of a slot anywhere in a stored entry (e.g. its author's institution)."""
    root = parse_xml(xml.encode("utf-8"))
    return [
        value.text or ""
        for value in root.iterfind(
            f".//{{{RIM}}}Slot[@name='{name}']/{{{RIM}}}ValueList/{{{RIM}}}Value"
        )
    ]
