"""The schema and the claiming of work behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import inspect, select, text

from drimbox.config import load_config
from drimbox.db import Database, Report
from drimbox.source.pipeline import ReportPipeline
from support.factories import add_reports


def test_upgrade_creates_the_schema_and_is_idempotent(database: Database) -> None:
    database.upgrade()  # a second upgrade on an up-to-date schema changes nothing
    tables = set(inspect(database.engine).get_table_names())
    assert {"hl7_messages", "reports", "alembic_version"} <= tables


def test_report_round_trip_keeps_binary_and_json(database: Database) -> None:
    add_reports(database, 1)
    with database.session() as session:
        report = session.scalars(select(Report)).one()
        report.kos = bytes(range(256)) * 10
    with database.session() as session:
        report = session.scalars(select(Report)).one()
        assert report.kos == bytes(range(256)) * 10
        assert report.flags == {"MASQUE_PS": False}
        assert report.received_at.tzinfo is not None or database.is_sqlite


def test_concurrent_workers_never_claim_the_same_report(database: Database) -> None:
    add_reports(database, 40)
    config = load_config(environ={})
    claimed: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        pipeline = ReportPipeline(config, database)
        while (report_id := pipeline.claim_next()) is not None:
            with lock:
                claimed.append(report_id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(claimed) == sorted(set(claimed)), "a report was claimed twice"
    assert len(claimed) == 40
    # Claimed reports are leased: nothing is due any more.
    assert ReportPipeline(config, database).claim_next() is None


def test_sqlite_connections_are_durable_wal_with_full_sync(tmp_path: Path) -> None:
    """The AA promise rests on these: every connection the node opens (pooled or new) runs in
    WAL mode with synchronous=FULL, so a committed transaction is on disk before the ACK."""
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.upgrade()
    try:
        for _ in range(2):  # a pooled connection and a fresh one
            with db.engine.connect() as connection:
                assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
                assert connection.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
            db.engine.dispose()
        with db.session() as session:
            assert session.execute(text("PRAGMA synchronous")).scalar() == 2
    finally:
        db.dispose()
