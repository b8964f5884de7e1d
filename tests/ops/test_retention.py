"""Retention: the purge removes what has had its time and keeps what is still needed (the
version in force, work under way, reports waiting for a person), on SQLite and PostgreSQL; the
audit trail is purged only through its owner's path."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from drimbox.cli import app
from drimbox.config import Config, RetentionConfig
from drimbox.db import (
    AuditEvent,
    Database,
    Hl7Message,
    LoginRequestRow,
    Report,
    UserSession,
    utcnow,
)
from drimbox.db import ReportState as S
from drimbox.db.audit_purge import AuditPurgeError, older_than, purge_audit
from drimbox.db.models import ConsoExam, ConsoLaunch, PeriodicJob
from drimbox.metrics import NodeMetrics
from drimbox.ops.retention import PurgeCounts, RetentionPurge, RetentionWorker
from support.postgres import TemporaryPostgres

DAY = timedelta(days=1)


def _message(session: Session, at: datetime, state: str | None, **report: object) -> int:
    """An HL7 message received at `at`, with a report in `state` (None: refused at intake)."""
    message = Hl7Message(received_at=at, size_bytes=3, raw=b"MSH", ack_code="AA")
    session.add(message)
    session.flush()
    if state is not None:
        session.add(
            Report(
                message_id=message.id,
                received_at=at,
                updated_at=report.pop("updated", at),
                kind="publish",
                state=state,
                cda=b"<cda/>",
                kos=b"DICM",
                kos_sop_uid=f"1.2.3.{message.id}",
                dmp_entry_uuid=f"urn:uuid:{message.id}",
                **report,
            )
        )
    return int(message.id)


def _launch(session: Session, name: str, expires_at: datetime, exams: int) -> None:
    session.add(
        ConsoLaunch(
            id=name,
            created_at=expires_at - DAY,
            open_by=expires_at - DAY,
            expires_at=expires_at,
            patient_ins="279035121518989",
        )
    )
    session.flush()
    for position in range(exams):
        session.add(
            ConsoExam(
                launch_id=name,
                position=position,
                study_uid="1.2",
                kos=b"DICM",
                report=b"<cda/>",
                created_at=expires_at - DAY,
            )
        )


def _session(session: Session, name: str, expires_at: datetime, ended: datetime | None) -> None:
    session.add(
        UserSession(
            id_hash=name,
            subject="s",
            subject_name_id="899700367909",
            tokens=b"x",
            access_expires_at=expires_at,
            created_at=expires_at - DAY,
            last_seen_at=expires_at - DAY,
            expires_at=expires_at,
            ended_at=ended,
        )
    )


@pytest.fixture
def stored(database: Database) -> dict[str, int]:
    """A database with something of every kind, on each side of its retention."""
    now = utcnow()
    old, recent = now - 400 * DAY, now - 10 * DAY
    ids: dict[str, int] = {}
    with database.session() as session:
        ids["published_old"] = _message(session, old, S.PUBLISHED.value)
        ids["replaced_old"] = _message(session, old, S.REPLACED.value)
        ids["withdrawn_old"] = _message(session, old, S.WITHDRAWN.value)
        ids["replaced_recent"] = _message(session, old, S.REPLACED.value, updated=recent)
        ids["refused_old"] = _message(session, old, S.REFUSED.value)
        ids["parked_old"] = _message(session, old, S.PARKED.value)
        ids["waiting_old"] = _message(session, old, S.WAITING_IMAGES.value)
        ids["no_report_old"] = _message(session, old, None)
        ids["published_recent"] = _message(session, recent, S.PUBLISHED.value)
        _launch(session, "expired-2-days", now - 2 * DAY, exams=2)
        _launch(session, "expired-1-hour", now - timedelta(hours=1), exams=1)
        _launch(session, "live", now + timedelta(hours=1), exams=3)
        _session(session, "expired", now - 2 * DAY, None)
        _session(session, "ended", now + DAY, now - 2 * DAY)
        _session(session, "active", now + DAY, None)
        session.add(
            LoginRequestRow(
                state="old", nonce="n", browser_hash="b", expires_at=now - timedelta(minutes=1)
            )
        )
        session.add(
            LoginRequestRow(
                state="new", nonce="n", browser_hash="b", expires_at=now + timedelta(minutes=9)
            )
        )
    return ids


EXPECTED = PurgeCounts(
    hl7_messages=5, reports=2, conso_exams=2, conso_launches=1, sessions=2, login_requests=1
)


def _snapshot(db: Database) -> dict[str, object]:
    with db.session() as session:
        return {
            "raw": {r.id: r.raw for r in session.execute(select(Hl7Message.id, Hl7Message.raw))},
            "cda": {
                r.message_id: r.cda for r in session.execute(select(Report.message_id, Report.cda))
            },
            "launches": sorted(session.scalars(select(ConsoLaunch.id))),
            "exams": session.scalar(select(func.count()).select_from(ConsoExam)),
            "sessions": sorted(session.scalars(select(UserSession.id_hash))),
            "logins": sorted(session.scalars(select(LoginRequestRow.state))),
        }


def test_the_purge_removes_what_had_its_time_and_keeps_what_is_needed(
    database: Database, stored: dict[str, int]
) -> None:
    before = _snapshot(database)
    progress: list[tuple[str, int]] = []
    purge = RetentionPurge(
        database, RetentionConfig(batch_rows=2), lambda k, n: progress.append((k, n))
    )
    assert purge.run(dry_run=True) == EXPECTED
    assert _snapshot(database) == before and progress == []  # a dry run changes nothing
    assert purge.run() == EXPECTED
    assert ("hl7_messages", 2) in progress and ("hl7_messages", 5) in progress  # by batches
    after = _snapshot(database)
    raw = after["raw"]
    assert isinstance(raw, dict)
    purged = {k for k, v in stored.items() if raw[v] == b""}
    # Settled reports' messages, and the message refused at intake, lose their content.
    assert purged == {
        "published_old",
        "replaced_old",
        "withdrawn_old",
        "replaced_recent",
        "no_report_old",
    }
    cda = after["cda"]
    assert isinstance(cda, dict)
    assert {k for k, v in stored.items() if v in cda and cda[v] is None} == {
        "replaced_old",
        "withdrawn_old",
    }
    # What a replacement or depublication still needs: the rows and their DMP entries stay.
    with database.session() as session:
        replaced = session.scalars(
            select(Report).where(Report.message_id == stored["replaced_old"])
        ).one()
        assert replaced.kos is None and replaced.kos_sop_uid and replaced.dmp_entry_uuid
        assert replaced.state == S.REPLACED.value
        assert session.scalar(select(func.count()).select_from(Hl7Message)) == len(stored)
    assert after["launches"] == ["expired-1-hour", "live"] and after["exams"] == 4
    assert after["sessions"] == ["active"] and after["logins"] == ["new"]
    assert purge.run() == PurgeCounts()  # nothing left to do


def test_the_node_worker_runs_the_purge_one_node_at_a_time(
    database: Database, stored: dict[str, int]
) -> None:
    def node(name: str, metrics: NodeMetrics) -> RetentionWorker:
        config = Config.model_validate({"node": {"name": name}})
        return RetentionWorker(config, database, cache_purge=lambda: (3, 3000), metrics=metrics)

    metrics_a, metrics_b = NodeMetrics("a"), NodeMetrics("b")
    a, b = node("a", metrics_a), node("b", metrics_b)
    counts = a.run_once()
    assert isinstance(counts, PurgeCounts) and counts.reports == 2 and counts.cache_series == 3
    assert b.run_once() is None and a.run_once() is None  # not due again before the interval
    with database.session() as session:
        job = session.scalars(select(PeriodicJob)).one()
        assert job.last_run_by == "a" and job.leased_by is None
        assert job.last_result["hl7_messages"] == 5
        assert job.next_attempt_at is not None
        job.next_attempt_at = utcnow() - timedelta(seconds=1)  # the interval has passed
    again = b.run_once()
    assert isinstance(again, PurgeCounts) and again.total == 3  # only b's cache this time
    value = metrics_a.registry.get_sample_value(
        "drimbox_retention_purged_total", {"node": "a", "kind": "reports"}
    )
    assert value == 2


def _audit(db: Database, at: datetime, action: str) -> None:
    with db.session() as session:
        session.add(
            AuditEvent(
                at=at,
                actor="899700367909",
                actor_role="user",
                action=action,
                result="ok",
                detail={},
            )
        )


def test_the_audit_trail_is_purged_only_past_its_retention(database: Database) -> None:
    now = utcnow()
    _audit(database, now - 4 * 365 * DAY, "image_retrieve")
    _audit(database, now - 3 * 365 * DAY - DAY, "dmp_query")
    _audit(database, now - 30 * DAY, "dmp_query")
    cut = now - 3 * 365 * DAY
    assert older_than(database, cut) == 2
    assert purge_audit(database, cut, operator="admin", batch_rows=1) == 2
    with database.session() as session:
        rows = session.execute(select(AuditEvent.action, AuditEvent.actor)).all()
    assert sorted(r.action for r in rows) == ["audit_purge", "dmp_query"]
    # The append-only protection is back, for every row.
    with pytest.raises(DBAPIError, match="append-only"), database.session() as session:
        session.execute(text("DELETE FROM audit_events"))


@pytest.mark.postgres
def test_the_node_role_cannot_purge_the_audit_trail(postgres_server: TemporaryPostgres) -> None:
    url = postgres_server.create_database("audit_purge_role")
    owner = Database(url)
    owner.upgrade()
    role = f"drimbox_purge_{os.getpid()}"
    with owner.engine.begin() as connection:
        connection.execute(text(f"CREATE ROLE {role} LOGIN"))
    granted = CliRunner().invoke(
        app, ["db", "grant-node", role], env={"DRIMBOX_STORE__DATABASE_URL": url}
    )
    assert granted.exit_code == 0, granted.output
    _audit(owner, utcnow() - 4 * 365 * DAY, "image_retrieve")
    node = Database(url.replace("postgres@", f"{role}@"))
    try:
        with pytest.raises(AuditPurgeError, match="seul le propriétaire du schéma"):
            purge_audit(node, utcnow(), operator="intrus")
    finally:
        node.dispose()
    assert older_than(owner, utcnow()) == 1  # untouched, trigger still enabled
    with pytest.raises(DBAPIError, match="append-only"), owner.session() as session:
        session.execute(text("DELETE FROM audit_events"))
    owner.dispose()


def test_retention_and_audit_purge_commands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    db = Database(url)
    db.upgrade()
    now = utcnow()
    with db.session() as session:
        _message(session, now - 400 * DAY, S.REPLACED.value)
        _session(session, "expired", now - 2 * DAY, None)
    _audit(db, now - 4 * 365 * DAY, "image_retrieve")
    env = {"DRIMBOX_STORE__DATABASE_URL": url, "DRIMBOX_STORE__CACHE_DIR": str(tmp_path / "c")}
    runner = CliRunner()
    dry = runner.invoke(app, ["retention", "purge", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    text_dry = " ".join(dry.output.split())
    assert "Simulation de la purge de rétention" in text_dry
    assert "messages HL7 (contenu effacé) : 1 à purger" in text_dry
    assert "versions de CR remplacées ou retirées (CDA et KOS effacés) : 1 à purger" in text_dry
    assert "sessions d'utilisateurs supprimées : 1 à purger" in text_dry
    assert "piste d'audit : 1 événement(s)" in text_dry and "drimbox audit purge" in text_dry
    done = runner.invoke(app, ["retention", "purge"], env=env)
    assert done.exit_code == 0, done.output
    assert "Purge de rétention terminée" in done.output
    assert "messages HL7 (contenu effacé) : 1 purgé(s)" in " ".join(done.output.split())
    again = runner.invoke(app, ["retention", "purge"], env=env)
    assert "messages HL7 (contenu effacé) : 0 purgé(s)" in " ".join(again.output.split())
    audit_dry = runner.invoke(app, ["audit", "purge", "--dry-run"], env=env)
    assert audit_dry.exit_code == 0 and "1 événement(s) d'audit" in audit_dry.output
    audit_done = runner.invoke(app, ["audit", "purge", "--operator", "M. Admin"], env=env)
    assert audit_done.exit_code == 0, audit_done.output
    assert "Piste d'audit purgée : 1 événement(s)" in " ".join(audit_done.output.split())
    assert older_than(db, utcnow()) == 1  # the purge's own record
    db.dispose()


def test_a_stopping_node_leaves_the_rest_of_the_purge_due(
    database: Database, stored: dict[str, int]
) -> None:
    stop = asyncio.Event()
    stop.set()  # the node is stopping: not one batch more
    config = Config.model_validate({"node": {"name": "a"}})
    worker = RetentionWorker(config, database, cache_purge=lambda: (1, 1), stop=stop)
    counts = worker.run_once()
    assert counts == PurgeCounts()
    with database.session() as session:
        job = session.scalars(select(PeriodicJob)).one()
        assert job.last_run_at is None and job.leased_by is None
    stop.clear()
    assert worker.run_once() == PurgeCounts(**{**EXPECTED.as_dict(), "cache_series": 1,
                                              "cache_bytes": 1})  # fmt: skip
