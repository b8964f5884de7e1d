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
    ok = runner.invoke(app, ["whitelist", "verify", str(signed)])
    assert ok.exit_code == 0, ok.output
    assert "VALIDE" in ok.output and "17" in ok.output
    unsigned = ans_file("whitelist/LISTEBLANCHE_DRIM-M_NONSIGNEE_TEST.xml")
    refused = runner.invoke(app, ["whitelist", "verify", str(unsigned)])
    assert refused.exit_code == 1 and "pas signée" in refused.output
    missing = runner.invoke(app, ["whitelist", "verify", str(tmp_path / "none.xml")])
    assert missing.exit_code == 2


def test_reports_retry(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    db = Database(url)
    db.upgrade()
    now = utcnow()
    with db.session() as session:
        message = Hl7Message(received_at=now, size_bytes=1, raw=b"x", ack_code="AA")
        session.add(message)
        session.flush()
        for state in (ReportState.REFUSED, ReportState.PUBLISHED):
            session.add(Report(message_id=message.id, received_at=now, updated_at=now,
                               kind="publish", flags={}, state=state.value, attempts=3,
                               reason="Identité incohérente"))  # fmt: skip
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
    url = f"sqlite:///{tmp_path / 'node.db'}"
    db = Database(url)
    db.upgrade()
    now = utcnow()
    with db.session() as session:
        message = Hl7Message(received_at=now, size_bytes=1, raw=b"x", ack_code="AA")
        session.add(message)
        session.flush()
        for _ in range(5):
            row = Report(message_id=message.id, received_at=now, updated_at=now, kind="publish")
            session.add(row)
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
