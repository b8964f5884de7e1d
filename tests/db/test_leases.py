"""Leases of the work queues on SQLite and PostgreSQL: renewed while the work runs, lapsing when
the node stops renewing them, taken back by a restarted node, released by the operator; and the
/status view of the queues."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import select, text

from drimbox.config import load_config
from drimbox.db import Database, DmpJob, Hl7Message, JobState, Report, ReportState, utcnow
from drimbox.db.engine import MIGRATIONS
from drimbox.db.leases import LeasedWorker, reclaim
from drimbox.source.pipeline import DUE_STATES, ReportPipeline
from drimbox.source.retry import retry_report
from drimbox.web.status import StatusSources, check_work, work_queues
from support.cluster import wait_until

LEASE = timedelta(seconds=0.6)


def add_report(db: Database, state: ReportState = ReportState.RECEIVED, **values: object) -> int:
    now = utcnow()
    with db.session() as session:
        message = Hl7Message(received_at=now, size_bytes=1, raw=b"x", ack_code="AA")
        session.add(message)
        session.flush()
        report = Report(message_id=message.id, received_at=now, updated_at=now, kind="publish",
                        flags={}, state=state.value, attempts=0, next_attempt_at=now)  # fmt: skip
        for key, value in values.items():
            setattr(report, key, value)
        session.add(report)
        session.flush()
        return report.id


class SlowWorker(LeasedWorker):
    """Holds each report for `seconds`, as a slow PACS call would."""

    model = Report
    due_states = DUE_STATES

    def __init__(self, db: Database, owner: str, seconds: float) -> None:
        self.db, self.owner, self.lease, self.seconds = db, owner, LEASE, seconds

    def process(self, item_id: int) -> object:
        time.sleep(self.seconds)
        return item_id


def test_a_slow_item_keeps_its_lease_which_lapses_once_the_node_stops(database: Database) -> None:
    report_id = add_report(database)
    # A 2 s lease renewed every 2/3 s: a beat may come 1.3 s late on a loaded machine and the
    # lease still holds (with 0.6 s, one late beat let node-b in).
    lease = timedelta(seconds=2)
    node_a = SlowWorker(database, "node-a", 3 * lease.total_seconds())
    node_b = SlowWorker(database, "node-b", 0)
    node_a.lease = node_b.lease = lease
    worker = threading.Thread(target=node_a.run_once)
    worker.start()

    def holder() -> str | None:
        with database.session() as session:
            report = session.get(Report, report_id)
            return report.leased_by if report is not None else None

    # node-b starts asking once node-a holds the report (else it may simply come first).
    wait_until(lambda: holder() == "node-a", 30, "node-a holds the report")
    stolen = []
    while worker.is_alive():  # three leases long: only the heartbeat keeps node-b away
        stolen.append(node_b.claim_next())
        time.sleep(0.05)
    worker.join()
    assert set(stolen) == {None}
    assert holder() == "node-a"
    # node-a stopped renewing (as a dead node): its lease lapses and node-b takes the report.
    claimed: list[int | None] = []
    wait_until(lambda: claimed.append(node_b.claim_next()) or claimed[-1], 30, "lease lapsed")
    assert claimed[-1] == report_id


def test_a_restarted_node_takes_its_own_work_back(database: Database) -> None:
    report_id = add_report(database)
    hour = SlowWorker(database, "node-a", 0)
    hour.lease = timedelta(hours=1)
    assert hour.claim_next() == report_id
    other = SlowWorker(database, "node-b", 0)
    assert reclaim(database, Report, "node-b") == 0
    assert other.claim_next() is None
    assert reclaim(database, Report, "node-a") == 1
    assert other.claim_next() == report_id


def test_the_outcome_of_work_taken_over_is_dropped(database: Database) -> None:
    config = load_config(environ={"DRIMBOX_NODE__NAME": "node-a"})
    pipeline = ReportPipeline(config, database)
    mine, lost = add_report(database, cda=None), add_report(database, cda=None)
    assert pipeline.claim_next() == mine and pipeline.claim_next() == lost
    with database.session() as session:
        row = session.get(Report, lost)
        assert row is not None
        row.leased_by = "node-b"  # node-a stalled past its lease: node-b took it over
    pipeline.process(mine)
    pipeline.process(lost)
    with database.session() as session:
        done, taken = session.get(Report, mine), session.get(Report, lost)
        assert done is not None and taken is not None
        assert (done.state, done.leased_by) == (ReportState.REFUSED.value, None)
        assert (taken.state, taken.leased_by) == (ReportState.RECEIVED.value, "node-b")


def test_retry_releases_the_lease_of_a_dead_node(database: Database) -> None:
    later = utcnow() + timedelta(hours=1)
    report_id = add_report(database, leased_by="node-a", next_attempt_at=later)
    message = retry_report(database, report_id)
    assert "node-a" in message
    with database.session() as session:
        report = session.get(Report, report_id)
        assert report is not None and report.leased_by is None
    assert SlowWorker(database, "node-b", 0).claim_next() == report_id


def test_status_counts_the_work_waiting_leased_and_its_age(database: Database) -> None:
    past, later = utcnow() - timedelta(minutes=10), utcnow() + timedelta(minutes=1)
    add_report(database, leased_by="node-a", next_attempt_at=later, received_at=past)
    add_report(database, leased_by="node-b", next_attempt_at=past)  # lapsed: node-b died
    add_report(database, ReportState.WAITING_IMAGES, next_attempt_at=later, received_at=past)
    published = add_report(database, ReportState.PUBLISHING)
    with database.session() as session:
        session.add(DmpJob(report_id=published, action="publish", state=JobState.QUEUED.value,
                           attempts=0, next_attempt_at=utcnow(), created_at=utcnow(),
                           updated_at=utcnow()))  # fmt: skip
    reports, jobs, waiting_images, by_node = work_queues(database)
    assert (reports.waiting, reports.leased, reports.lapsed) == (1, 1, 1)
    assert reports.oldest_s is not None and reports.oldest_s >= 600
    assert (jobs.waiting, jobs.leased, waiting_images, by_node) == (1, 0, 1, {"node-a": 1})
    stale = check_work(StatusSources(load_config(environ={}), database))
    assert stale["ok"] is False and "(seuil 300 s)" in stale["message"]
    relaxed = {"DRIMBOX_SOURCE__STALE_WORK_S": "3600"}
    assert check_work(StatusSources(load_config(environ=relaxed), database))["ok"] is True


def test_upgrade_keeps_duplicates_stored_before_the_version_key(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    alembic = AlembicConfig()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as connection:
        alembic.attributes["connection"] = connection
        command.upgrade(alembic, "0007")
        connection.execute(
            text(
                "INSERT INTO hl7_messages (id, received_at, peer, control_id, message_type, "
                "size_bytes, raw, ack_code) VALUES (1, '2026-01-01', '', '', '', 1, x'00', 'AA')"
            )
        )
        for report_id in (1, 2):  # the same version stored twice by two nodes
            connection.execute(text(
                "INSERT INTO reports (id, message_id, received_at, updated_at, kind, patient_ins, "
                "patient_ins_oid, patient_ipp, study_uid, accession, document_id, set_id, "
                "replaced_document_id, flags, state, attempts) VALUES (:id, 1, '2026-01-01', "
                "'2026-01-01', 'publish', '', '', '', '', '', '1.2.3^4', '', '', '{}', "
                "'published', 0)"), {"id": report_id})  # fmt: skip
    db.upgrade()
    with db.session() as session:
        keys = session.execute(select(Report.id, Report.version_key).order_by(Report.id)).all()
    db.dispose()
    assert [tuple(row) for row in keys] == [(1, "publish|1.2.3^4"), (2, None)]
