"""The audit trail is append-only in the database itself, and exports as JSON lines."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from drimbox.cli import app
from drimbox.db import Database, utcnow
from drimbox.trust import audit


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
