"""Operator commands: exit codes and French messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from drimbox.cli import _since, app
from drimbox.db import Database, Hl7Message, Report, ReportState, utcnow
from drimbox.samples import ans_file


def test_whitelist_verify_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    signed = ans_file("whitelist/LISTEBLANCHE_DRIM-M_SIGNEE_TEST.xml")
    # A fixed clock: the official signer is valid 2026-09 → 2029-09, the test is not.
    at = ["--at", "2026-11-26T12:00:00Z"]
    ok = runner.invoke(app, ["whitelist", "verify", str(signed), *at])
    assert ok.exit_code == 0, ok.output
    assert "VALIDE" in ok.output and "17" in ok.output
    expired = runner.invoke(app, ["whitelist", "verify", str(signed), "--at", "2029-09-15T00:00"])
    assert expired.exit_code == 1 and "REFUSÉE" in expired.output
    bad_date = runner.invoke(app, ["whitelist", "verify", str(signed), "--at", "demain"])
    assert bad_date.exit_code == 1 and "date invalide pour --at" in bad_date.output
    unsigned = ans_file("whitelist/LISTEBLANCHE_DRIM-M_NONSIGNEE_TEST.xml")
    refused = runner.invoke(app, ["whitelist", "verify", str(unsigned), *at])
    assert refused.exit_code == 1 and "pas signée" in refused.output
    missing = runner.invoke(app, ["whitelist", "verify", str(tmp_path / "none.xml")])
    assert missing.exit_code == 2


def database_with_reports(tmp_path: Path, *reports: dict[str, Any]) -> tuple[str, Database]:
    """A node database holding one HL7 message and a report per `reports` (its columns)."""
    url = f"sqlite:///{tmp_path / 'node.db'}"
    db = Database(url)
    db.upgrade()
    now = utcnow()
    with db.session() as session:
        message = Hl7Message(received_at=now, size_bytes=1, raw=b"x", ack_code="AA")
        session.add(message)
        session.flush()
        for columns in reports:
            session.add(Report(message_id=message.id, received_at=now, updated_at=now,
                               kind="publish", **columns))  # fmt: skip
    return url, db


def test_reports_retry(tmp_path: Path) -> None:
    url, db = database_with_reports(tmp_path, *(
        {"flags": {}, "state": state.value, "attempts": 3, "reason": "Identité incohérente"}
        for state in (ReportState.REFUSED, ReportState.PUBLISHED)
    ))  # fmt: skip
    runner = CliRunner()
    env = {"DRIMBOX_STORE__DATABASE_URL": url}
    retried = runner.invoke(app, ["reports", "retry", "1"], env=env)
    assert retried.exit_code == 0, retried.output
    with db.session() as session:
        report = session.get(Report, 1)
        assert report is not None and report.state == ReportState.RECEIVED.value
    nothing = runner.invoke(app, ["reports", "retry", "2"], env=env)
    assert nothing.exit_code == 1 and "rien à relancer" in nothing.output
    unknown = runner.invoke(app, ["reports", "retry", "9"], env=env)
    assert unknown.exit_code == 1 and "aucun compte rendu" in unknown.output


def test_reports_list_says_when_it_truncates_and_pages(tmp_path: Path) -> None:
    url, db = database_with_reports(tmp_path, *({} for _ in range(5)))
    db.dispose()
    runner = CliRunner()
    env = {"DRIMBOX_STORE__DATABASE_URL": url}

    def listed(*options: str) -> dict[str, Any]:
        result = runner.invoke(app, ["reports", "list", "--json", *options], env=env)
        assert result.exit_code == 0, result.output
        page: dict[str, Any] = json.loads(result.stdout)
        return page

    first = listed("--limit", "2")
    assert [r["id"] for r in first["reports"]] == [5, 4]
    assert (first["total"], first["truncated"], first["next_offset"]) == (5, True, 2)
    last = listed("--limit", "2", "--offset", "4")
    assert [r["id"] for r in last["reports"]] == [1] and last["truncated"] is False
    assert len(listed("--limit", "0")["reports"]) == 5
    table = runner.invoke(app, ["reports", "list", "--limit", "2"], env=env)
    assert "2 sur 5" in table.output and "--offset 2" in table.output


def test_db_upgrade_creates_then_migrates_the_schema_keeping_the_data(database_url: str) -> None:
    """`drimbox db upgrade` on an empty database and on one left at an older revision (0007,
    before the report version key): both end at the head, the old rows kept and migrated."""
    from alembic import command
    from alembic.script import ScriptDirectory
    from sqlalchemy import inspect, select, text

    from drimbox.db.engine import _alembic_config

    runner = CliRunner()
    env = {"DRIMBOX_STORE__DATABASE_URL": database_url}
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    db = Database(database_url)
    try:
        alembic_config = _alembic_config()
        with db.engine.begin() as connection:
            alembic_config.attributes["connection"] = connection
            command.upgrade(alembic_config, "0007")
            connection.execute(text(
                "INSERT INTO hl7_messages (received_at, peer, control_id, message_type, "
                "size_bytes, raw, ack_code) VALUES (:at, 'ris', 'MSG1', 'ORU^R01', 1, :raw, 'AA')"
            ), {"at": utcnow(), "raw": b"x"})  # fmt: skip
            message_id = connection.execute(text("SELECT id FROM hl7_messages")).scalar()
            connection.execute(text(
                "INSERT INTO reports (message_id, received_at, updated_at, kind, patient_ins, "
                "patient_ins_oid, patient_ipp, study_uid, accession, document_id, set_id, "
                "replaced_document_id, flags, state, attempts) VALUES (:m, :at, :at, 'publish', "
                "'1', '1.2', '', '1.2.3', 'A1', '1.2.3.4', '', '', '{}', 'published', 1)"
            ), {"m": message_id, "at": utcnow()})  # fmt: skip
        assert "version_key" not in {c["name"] for c in inspect(db.engine).get_columns("reports")}
        for _ in range(2):  # the second run finds nothing to do
            result = runner.invoke(app, ["db", "upgrade"], env=env)
            assert result.exit_code == 0, result.output
            assert "Schéma à jour" in result.output
        with db.engine.connect() as connection:
            version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert version == head
        with db.session() as session:
            report = session.scalars(select(Report)).one()
        assert report.document_id == "1.2.3.4" and report.version_key == "publish|1.2.3.4"
    finally:
        db.dispose()


def test_pacs_echo_answers_in_french(orthanc: Any, tmp_path: Path) -> None:
    """C-ECHO to the real Orthanc; then to a port nobody listens on: exit 1, a French reason."""
    from drimbox.sim.ports import free_port

    runner = CliRunner()
    env = {
        "DRIMBOX_PACS__HOST": "127.0.0.1",
        "DRIMBOX_PACS__PORT": str(orthanc.dicom_port),
        "DRIMBOX_PACS__CALLED_AET": orthanc.aet,
        "DRIMBOX_PACS__TIMEOUT_S": "5",
        "COLUMNS": "200",
    }
    ok = runner.invoke(app, ["pacs", "echo"], env=env)
    assert ok.exit_code == 0, ok.output
    assert "PACS joignable" in ok.output and orthanc.aet in ok.output
    down = runner.invoke(app, ["pacs", "echo"], env=env | {"DRIMBOX_PACS__PORT": str(free_port())})
    assert down.exit_code == 1, down.output
    assert "injoignable" in down.output and "aucune connexion TCP" in down.output
    assert "Traceback" not in down.output
    wrong_aet = runner.invoke(app, ["pacs", "echo"], env=env | {"DRIMBOX_PACS__CALLED_AET": "NOPE"})
    assert wrong_aet.exit_code == 1, wrong_aet.output
    assert "PACS NOPE@" in wrong_aet.output and "PACS joignable" not in wrong_aet.output


def test_reports_in_paris_time_and_french_figures(tmp_path: Path) -> None:
    """The CLI shows the zone the web shows (Paris), with its offset, and French numbers."""
    url = f"sqlite:///{tmp_path / 'node.db'}"
    db = Database(url)
    db.upgrade()
    winter = datetime(2026, 1, 15, 12, 30, tzinfo=UTC)
    summer = datetime(2026, 7, 15, 12, 30, tzinfo=UTC)
    with db.session() as session:
        message = Hl7Message(received_at=winter, size_bytes=1, raw=b"x", ack_code="AA")
        session.add(message)
        session.flush()
        for moment in (winter, summer):
            session.add(Report(message_id=message.id, received_at=moment, updated_at=moment,
                               kind="publish", flags={}, state=ReportState.PUBLISHED.value,
                               kos_instance_count=12345, published_at=moment))  # fmt: skip
    db.dispose()
    runner = CliRunner()
    env = {"DRIMBOX_STORE__DATABASE_URL": url, "COLUMNS": "200", "TZ": "UTC"}
    table = runner.invoke(app, ["reports", "list"], env=env)
    assert table.exit_code == 0, table.output
    assert "15/01/2026 13:30 (UTC+01:00)" in table.output
    assert "15/07/2026 14:30 (UTC+02:00)" in table.output
    assert "12\u202f345 images" in table.output and "publié au DMP" in table.output
    shown = runner.invoke(app, ["reports", "show", "1"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "Reçu le : 15/01/2026 13:30 (UTC+01:00)" in shown.output
    assert "Publié le : 15/01/2026 13:30 (UTC+01:00)" in shown.output
    assert "Type : CR" in shown.output and "État : publié au DMP" in shown.output
    assert "received_at" not in shown.output and "published" not in shown.output
    # The JSON keeps machine values (ISO 8601 with its zone, codes).
    listed = json.loads(runner.invoke(app, ["reports", "list", "--json"], env=env).stdout)
    assert listed["reports"][1]["state"] == "published"
    assert datetime.fromisoformat(listed["reports"][1]["received_at"]) == winter
    # A --since without a zone is read in the same Paris time.
    assert _since("2026-01-15T13:30") == winter and _since("2026-07-15T14:30") == summer
    backup = runner.invoke(app, ["db", "backup", "-o", str(tmp_path / "b.db")], env=env)
    assert backup.exit_code == 0, backup.output
    assert " ko)" in backup.output or " Mo)" in backup.output
    assert "." not in backup.output.split("(")[-1]  # decimal comma
