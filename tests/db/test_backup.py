"""Backups and upgrades as the site's IT staff run them, on SQLite and PostgreSQL:
`drimbox db backup` while the database is in use, the database wiped, `drimbox db restore`
brings the reports and the audit trail back; a database newer than the code is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from drimbox.db import Database, Report
from drimbox.db.backup import sqlite_path
from drimbox.db.engine import SchemaTooNew
from drimbox.trust import audit
from support.factories import add_reports


def drimbox(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    environ = os.environ | {"DRIMBOX_STORE__DATABASE_URL": url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "drimbox", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def contents(db: Database) -> tuple[list[tuple[Any, ...]], list[dict[str, Any]]]:
    with db.session() as session:
        reports = [
            (r.id, r.document_id, r.state, r.kos, r.flags)
            for r in session.scalars(select(Report).order_by(Report.id))
        ]
    return reports, audit.events(db)


def wipe(db: Database) -> None:
    """What a lost disk or a dropped database leaves: nothing."""
    path = sqlite_path(db.url)
    db.dispose()
    if path is not None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    with db.engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))


def test_backup_wipe_restore(database: Database, tmp_path: Path) -> None:
    add_reports(database, 3)
    with database.session() as session:
        session.scalars(select(Report)).first().kos = bytes(range(256)) * 40  # type: ignore[union-attr]
    for number in range(3):
        audit.record(
            database, actor="899700100011", role="user", action="image_retrieve",
            result="ok", patient_ins=f"27903512151898{number}", study_uid=f"1.2.3.{number}",
            nbytes=1000 + number,
        )  # fmt: skip
    saved = contents(database)
    backup = tmp_path / "sauvegarde.bin"
    # Taken while the node's connections are open, as under a running service.
    done = drimbox(database.url, "db", "backup", "-o", str(backup))
    assert done.returncode == 0, done.stderr
    assert "Sauvegarde écrite" in done.stdout and backup.stat().st_size > 0
    add_reports(database, 1, first=10)  # after the backup: must not come back
    assert len(contents(database)[0]) == 4

    wipe(database)
    empty = drimbox(database.url, "reports", "list", "--json")
    assert empty.returncode == 0 and json.loads(empty.stdout)["reports"] == []

    done = drimbox(database.url, "db", "restore", str(backup), "--yes")
    assert done.returncode == 0, done.stderr
    assert "Base restaurée" in done.stdout
    restored = Database(database.url)
    try:
        assert contents(restored) == saved
        assert [e["bytes"] for e in audit.events(restored)] == [1000, 1001, 1002]
    finally:
        restored.dispose()
    listed = drimbox(database.url, "reports", "list", "--json")
    assert '"1.2.3.0"' in listed.stdout and '"1.2.3.10"' not in listed.stdout


def test_restore_refuses_what_is_not_a_backup(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'drimbox.db'}"
    garbage = tmp_path / "pas-une-sauvegarde.bin"
    garbage.write_bytes(b"ceci n'est pas une base" * 100)
    done = drimbox(url, "db", "restore", str(garbage), "--yes")
    assert done.returncode == 1
    assert "restauration impossible" in done.stderr and "Traceback" not in done.stderr
    missing = drimbox(url, "db", "backup", "-o", str(tmp_path / "absent" / "x.bin"))
    assert missing.returncode == 1 and "n'existe pas" in missing.stderr


def test_a_database_newer_than_the_code_is_refused(database: Database, tmp_path: Path) -> None:
    add_reports(database, 1)
    with database.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
    try:
        database.upgrade()
    except SchemaTooNew as exc:
        assert "0099_future" in str(exc) and "plus récente" in str(exc)
    else:
        raise AssertionError("a newer schema was accepted")
    for command in (["db", "upgrade"], ["serve"]):
        done = drimbox(database.url, *command)
        assert done.returncode == 3, (command, done.stderr)
        assert "plus récente que cette version de la DRIMbox" in done.stderr
        assert "Traceback" not in done.stderr
    # Nothing was touched: the report is still there, the version still the newer one.
    with database.engine.connect() as connection:
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert version == "0099_future"
    with database.session() as session:
        assert session.scalars(select(Report)).one().document_id == "1.2.3.0"
