"""Backups of a node's database, and their restore (`drimbox db backup` / `db restore`).

SQLite: SQLite's online backup API, a consistent copy taken while the node runs (the WAL
included), written next to the target then renamed, so that a half-written file never bears
the backup's name. PostgreSQL: `pg_dump --format=custom` of the database (PostgreSQL's own tool,
from the Debian package `postgresql-client`), restored with `pg_restore --clean`.

Owns the French messages of what can go wrong; the caller shows them.
"""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

from drimbox.db.engine import normalise_url

PG_TIMEOUT_S = 3600


class BackupError(Exception):
    """A backup or a restore failed; the message says why, in French."""


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///` URL; None for another database."""
    url = normalise_url(url)
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///")
    if not path or path == ":memory:":
        raise BackupError("une base SQLite en mémoire ne se sauvegarde pas")
    return Path(path)


def libpq_url(url: str) -> str:
    """The database URL as PostgreSQL's own tools read it (no SQLAlchemy driver suffix)."""
    return "postgresql://" + normalise_url(url).removeprefix("postgresql+psycopg://")


def postgres_tool(name: str) -> str:
    """Path of a PostgreSQL client program (the newest installed version)."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        candidate = Path(folder, name)
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} introuvable : installez le paquet Debian postgresql-client")
    return found


def _run(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PG_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackupError(f"{what} impossible : {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise BackupError(f"{what} en échec : {' / '.join(detail[-3:]) or done.returncode}")


def _sqlite_copy(source: sqlite3.Connection, target: Path) -> None:
    with closing(sqlite3.connect(target)) as destination:
        source.backup(destination)


def backup(url: str, target: Path) -> None:
    """Write a consistent copy of the database at `url` to `target` (replaced if present)."""
    target = target.resolve()
    if not target.parent.is_dir():
        raise BackupError(f"le dossier {target.parent} n'existe pas")
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    path = sqlite_path(url)
    try:
        if path is not None:
            if not path.exists():
                raise BackupError(f"la base {path} n'existe pas")
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as source:
                _sqlite_copy(source, partial)
        else:
            command = [postgres_tool("pg_dump"), "--format=custom", "--no-owner"]
            _run([*command, "--file", str(partial), libpq_url(url)], "pg_dump")
        os.replace(partial, target)
    except sqlite3.Error as exc:
        raise BackupError(f"sauvegarde SQLite impossible : {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)


def _check_sqlite_backup(source: Path) -> None:
    try:
        with closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as db:
            [integrity] = db.execute("PRAGMA integrity_check").fetchone()
            versions = db.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error as exc:
        raise BackupError(f"{source} n'est pas une sauvegarde SQLite de DRIMbox : {exc}") from exc
    if integrity != "ok" or not versions:
        raise BackupError(f"{source} est endommagée ({integrity}) : restauration refusée")


def restore(url: str, source: Path) -> None:
    """Replace the whole database at `url` by the backup `source`. The node must be stopped."""
    if not source.is_file():
        raise BackupError(f"la sauvegarde {source} n'existe pas")
    path = sqlite_path(url)
    if path is None:
        command = [postgres_tool("pg_restore"), "--clean", "--if-exists", "--no-owner"]
        _run([*command, "--single-transaction", "-d", libpq_url(url), str(source)], "pg_restore")
        return
    _check_sqlite_backup(source)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as backup_db:
            # The backup API replaces every page of the target, its WAL included.
            _sqlite_copy(backup_db, path)
    except sqlite3.Error as exc:
        raise BackupError(f"restauration SQLite impossible : {exc}") from exc
