"""The audit trail is append-only in the database itself, and exports as JSON lines."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from drimbox.cli import app
from drimbox.db import Database, utcnow
from drimbox.french import PARIS
from drimbox.trust import audit
from support.factories import add_reports
from support.postgres import TemporaryPostgres


def test_records_are_exported_and_filtered(database: Database) -> None:
    audit.record(database, actor="899700367909", role="user", action="dmp_query",
                 result="ok", patient_ins="279035121518989", remote="10.0.0.1",
                 query="FindDocuments")  # fmt: skip
    audit.record(database, actor="CN=db3,OU=1", role="peer", action="image_retrieve",
                 result="refused", study_uid="1.2.3", nbytes=0)  # fmt: skip
    everything = audit.events(database)
    assert [e["action"] for e in everything] == ["dmp_query", "image_retrieve"]
    assert everything[0]["detail"] == {"query": "FindDocuments"}
    assert [e["actor"] for e in audit.events(database, patient_ins="279035121518989")] == [
        "899700367909"
    ]
    assert audit.events(database, since=utcnow() + timedelta(minutes=1)) == []
    # A Paris time (the console's and the CLI's), one UTC+1/+2 hours ahead in its digits.
    half_an_hour_ago = (utcnow() - timedelta(minutes=30)).astimezone(PARIS)
    assert len(audit.events(database, since=half_an_hour_ago)) == 2
    lines = [json.loads(line) for line in audit.export_json_lines(database)]
    assert lines[1]["result"] == "refused" and lines[1]["role"] == "peer"


@pytest.mark.parametrize(
    "statement", ["UPDATE audit_events SET result = 'ok'", "DELETE FROM audit_events"]
)
def test_the_database_refuses_to_rewrite_history(database: Database, statement: str) -> None:
    audit.record(database, actor="x", role="system", action="dmp_publish", result="refused")
    with pytest.raises(DBAPIError, match="append-only"), database.session() as session:
        session.execute(text(statement))
    assert audit.events(database)[0]["result"] == "refused"


@pytest.mark.postgres
def test_postgresql_refuses_truncate(postgres_server: TemporaryPostgres) -> None:
    """Row triggers do not fire on TRUNCATE; the statement trigger does (even for the owner)."""
    db = Database(postgres_server.create_database("audit_truncate"))
    db.upgrade()
    try:
        audit.record(db, actor="x", role="system", action="dmp_publish", result="ok")
        with pytest.raises(DBAPIError, match="append-only"), db.session() as session:
            session.execute(text("TRUNCATE audit_events"))
        assert len(audit.events(db)) == 1
    finally:
        db.dispose()


@pytest.mark.postgres
def test_the_node_role_cannot_remove_the_audit_trail_s_protection(
    postgres_server: TemporaryPostgres,
) -> None:
    """The node runs as a role set up by `drimbox db grant-node`: it does its work (reports,
    audit records) but cannot drop, disable or go round the triggers, nor empty the table."""
    url = postgres_server.create_database("audit_node_role")
    owner = Database(url)
    owner.upgrade()
    role = f"drimbox_node_{os.getpid()}"
    with owner.engine.begin() as connection:
        connection.execute(text(f"CREATE ROLE {role} LOGIN"))
    runner = CliRunner()
    env = {"DRIMBOX_STORE__DATABASE_URL": url}
    granted = runner.invoke(app, ["db", "grant-node", role], env=env)
    assert granted.exit_code == 0, granted.output
    as_owner = runner.invoke(app, ["db", "grant-node", "postgres"], env=env)
    assert as_owner.exit_code == 1 and "possède les tables" in as_owner.output
    node = Database(url.replace("postgres@", f"{role}@"))
    try:
        node.upgrade()  # up to date: a node started with this role starts
        add_reports(node, 1)
        with node.session() as session:
            session.execute(text("UPDATE reports SET state = 'parked'"))
        audit.record(node, actor="x", role="system", action="dmp_publish", result="ok")
        for statement in (
            "DROP TRIGGER audit_events_append_only ON audit_events",
            "DROP TRIGGER audit_events_no_truncate ON audit_events",
            "ALTER TABLE audit_events DISABLE TRIGGER ALL",
            "DROP FUNCTION audit_events_append_only() CASCADE",
            "DROP TABLE audit_events",
            "TRUNCATE audit_events",
            "DELETE FROM audit_events",
            "UPDATE audit_events SET result = 'refused'",
            "SET session_replication_role = replica",  # would silence the triggers
        ):
            with (
                pytest.raises(DBAPIError, match=r"must be owner|permission denied"),
                node.session() as session,
            ):
                session.execute(text(statement))
    finally:
        node.dispose()
    assert [e["result"] for e in audit.events(owner)] == ["ok"]
    owner.dispose()


def test_grant_node_explains_sqlite_has_no_roles(tmp_path: Path) -> None:
    env = {"DRIMBOX_STORE__DATABASE_URL": f"sqlite:///{tmp_path / 'node.db'}"}
    result = CliRunner().invoke(app, ["db", "grant-node", "drimbox"], env=env)
    assert result.exit_code == 1 and "SQLite n'a pas de rôles" in result.output


def test_audit_export_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    db = Database(url)
    db.upgrade()
    audit.record(db, actor="system", role="system", action="dmp_publish", result="ok")
    runner = CliRunner()
    env = {"DRIMBOX_STORE__DATABASE_URL": url}
    result = runner.invoke(app, ["audit", "export", "--since", "2020-01-01"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["action"] == "dmp_publish"
    bad = runner.invoke(app, ["audit", "export", "--since", "hier"], env=env)
    assert bad.exit_code == 1 and "date invalide" in bad.output
