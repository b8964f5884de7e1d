"""Crash soak: reports keep arriving while the node is SIGKILLed and restarted; every report the
box ACKed is published exactly once, and what it did not ACK is re-sent by the RIS and published
once. Reduced size in the suite; full size (1000 reports, 10 kills) with `scripts/soak.sh`.

SIGKILL proves the process-level promise (nothing the box committed depends on its memory); it
does not simulate a power cut, which also loses the kernel's page cache: that part rests on the
database's flushes (SQLite synchronous=FULL, PostgreSQL fsync=on), asserted here too."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from drimbox.db import Database, Hl7Message, Report, ReportState
from drimbox.hl7.message import parse_report_message
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ris import RisClient, fill_placeholders
from drimbox.sim.studies import SeriesSpec, generate_study_for_report
from support.dmp import DmpEnvironment
from support.node import node_config
from support.postgres import TemporaryPostgres
from support.process import NodeProcess, config_environ
from support.samples import hl7_text, report_variant

REPORTS = int(os.environ.get("SOAK_REPORTS", "40"))
KILLS = int(os.environ.get("SOAK_KILLS", "3"))
FINAL = {ReportState.PUBLISHED.value, ReportState.REPLACED.value}


def test_reports_survive_sigkills(
    orthanc: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    orthanc.delete_all()
    base = hl7_text("CR_C-ORU.hl7")
    report = parse_report_message(base).report
    assert report is not None
    orthanc.store_files(generate_study_for_report(
        tmp_path / "study", report, [SeriesSpec("CT", "x", 2)], rows=32, columns=32))  # fmt: skip
    config = node_config(tmp_path, orthanc, dmp.node_environ())
    environ = config_environ(config)
    config_file = tmp_path / "node.toml"
    config_file.write_text("[roles]\nsource = true\n")
    node = NodeProcess(config_file, env=environ).start()
    acked: list[str] = []
    unanswered: list[str] = []
    resent: list[str] = []  # messages that needed more than one attempt
    progress = threading.Condition()
    done = threading.Event()

    def ris() -> None:
        with RisClient("127.0.0.1", node.hl7_port, timeout_s=10, max_attempts=200) as client:
            for index in range(REPORTS):
                result = client.send(report_variant(base, index))
                with progress:
                    (acked if result.code == "AA" else unanswered).append(result.control_id)
                    if result.attempts > 1:
                        resent.append(result.control_id)
                    progress.notify_all()
        done.set()

    sender = threading.Thread(target=ris)
    sender.start()
    rng = random.Random(20261126)
    for _ in range(KILLS):
        # Each kill waits for an ACK from the restarted node, so it hits a node at work and the
        # message it breaks is not one an earlier kill already broke.
        with progress:
            wanted = len(acked) + 1
            assert progress.wait_for(lambda n=wanted: len(acked) >= n, timeout=120), node.log()
        time.sleep(rng.uniform(0.0, 0.5))  # a random point in the work, not a synchronisation
        node.kill()
        node.start()
    sender.join(600)
    assert done.is_set(), "the RIS never finished sending"
    assert unanswered == [], "every message was eventually ACKed (re-sent after the kills)"
    assert len(resent) >= KILLS, resent  # each kill broke a message in flight

    db = Database(config.store.database_url)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with db.session() as session:
            states = [r.state for r in session.scalars(select(Report))]
        if len(states) == REPORTS and all(state in FINAL for state in states):
            break
        time.sleep(0.5)
    node.stop()
    with db.session() as session:
        reports = list(session.scalars(select(Report)))
        messages = {m.control_id for m in session.scalars(select(Hl7Message))}
    db.dispose()
    assert set(acked) <= messages  # nothing ACKed was lost
    assert len(reports) == REPORTS  # one report per version, re-sends not queued twice
    assert all(r.state in FINAL for r in reports), {r.state for r in reports}
    registered = [d["unique_id"] for d in dmp.documents() if d["mime_type"] == "application/dicom"]
    assert sorted(registered) == sorted(r.kos_sop_uid for r in reports)  # each exactly once
    assert dmp.stats().get("ITI-41:Success", 0) == REPORTS


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_sigkill_between_commit_and_ack_the_resent_message_is_stored_once(
    dmp: DmpEnvironment, tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    """The narrowest crash window of the intake: the message is committed, its ACK never left.
    The RIS re-sends it; the box answers AA again and queues the report once."""
    store: dict[str, str] = {}
    if kind == "postgresql":
        server: TemporaryPostgres = request.getfixturevalue("durable_postgres")
        store = {"database_url": server.create_database("intake_after_commit")}
    config = node_config(tmp_path, None, dmp.node_environ(), store=store)
    config_file = tmp_path / "node.toml"
    config_file.write_text("[roles]\nsource = true\n")
    node = NodeProcess(config_file, env=config_environ(config))
    message, control_id = fill_placeholders(hl7_text("CR_C-ORU.hl7"))
    node.start(DRIMBOX_FAILPOINTS="intake:after-commit")
    with RisClient("127.0.0.1", node.hl7_port, timeout_s=10, max_attempts=1) as ris:
        first = ris.send(message, fill=False)
    assert first.code == "", first  # no ACK: the node died after its commit
    assert node.wait_dead(30) == -9, node.log()[-3000:]
    db = Database(config.store.database_url)
    with db.session() as session:
        assert len(list(session.scalars(select(Report)))) == 1  # committed before the kill
    node.start(DRIMBOX_FAILPOINTS="")
    with RisClient("127.0.0.1", node.hl7_port, timeout_s=10, max_attempts=5) as ris:
        second = ris.send(message, fill=False)
    node.stop()
    with db.session() as session:
        reports = list(session.scalars(select(Report)))
        messages = list(session.scalars(select(Hl7Message).order_by(Hl7Message.id)))
    db.dispose()
    assert second.code == "AA", second
    assert [m.control_id for m in messages] == [control_id, control_id]
    assert len(reports) == 1 and reports[0].message_id == messages[0].id
    assert messages[1].error is not None and "doublon" in messages[1].error
