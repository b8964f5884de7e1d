"""The DMP outbox: several workers on PostgreSQL, and SIGKILL at every step of a publication."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from drimbox.cda import parse_report
from drimbox.db import Database, DmpJob, Hl7Message, JobState, Report, ReportState, utcnow
from drimbox.dicom.kos import KosSite, build_manifest, manifest_to_bytes
from drimbox.samples import ans_file
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ris import RisClient
from drimbox.source.dmp_port import dmp_port
from drimbox.source.outbox import PUBLISH, DmpPublisher, enqueue
from support.dmp import DmpEnvironment
from support.factories import make_snapshot
from support.node import node_config
from support.postgres import TemporaryPostgres
from support.process import NodeProcess, config_environ
from support.samples import hl7_text

SITE = KosSite(uid_root="1.2.250.1.999.77", public_base_url="https://db.a.test",
               institution_name="Site A")  # fmt: skip
CDA_C = ans_file("cda/CR_C.xml").read_bytes()


def cda_variant(index: int) -> bytes:
    """Exam C's CDA for another exam of the same patient (new document id and study UID)."""
    return CDA_C.replace(
        b'<id root="1.2.250.1.213.4.5.4.403"/>',
        f'<id root="1.2.250.1.213.4.5.4.403.{index}"/>'.encode(),
    ).replace(
        b'<id root="1.2.250.1.213.4.5.2.1.103"/>',
        f'<id root="1.2.250.1.213.4.5.2.1.103.{index}"/>'.encode(),
    )


def queue_reports(db: Database, count: int) -> None:
    """Reports whose KOS is built, each with its publication job, as the pipeline leaves them."""
    now = utcnow()
    with db.session() as session:
        for index in range(count):
            cda = cda_variant(index)
            report = parse_report(cda)
            kos = build_manifest(report, make_snapshot(report), SITE)
            message = Hl7Message(received_at=now, size_bytes=1, raw=b"-", ack_code="AA")
            session.add(message)
            session.flush()
            row = Report(
                message_id=message.id, received_at=now, updated_at=now, kind="publish",
                patient_ins=report.patient.ins, patient_ins_oid=report.patient.ins_oid,
                study_uid=report.study_instance_uid, document_id=report.document_id.root,
                flags={"INVISIBLE_PATIENT": True}, cda=cda, state=ReportState.PUBLISHING.value,
                attempts=1, kos=manifest_to_bytes(kos), kos_sop_uid=str(kos.SOPInstanceUID),
            )  # fmt: skip
            session.add(row)
            session.flush()
            enqueue(session, row, PUBLISH)


@pytest.mark.postgres
def test_two_workers_on_postgresql_publish_100_reports_once_each(
    postgres_server: TemporaryPostgres, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    url = postgres_server.create_database("outbox_two_workers")
    setup = Database(url)
    setup.upgrade()
    queue_reports(setup, 100)
    config = node_config(tmp_path, None, dmp.node_environ())
    handled: list[int] = []

    def worker() -> None:
        db = Database(url)  # each worker: its own pool, as two nodes would have
        publisher = DmpPublisher(config, db, dmp_port(config))
        handled.append(publisher.drain())
        db.dispose()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    with setup.session() as session:
        states = [r.state for r in session.scalars(select(Report))]
        jobs = [j.state for j in session.scalars(select(DmpJob))]
    setup.dispose()
    assert states == [ReportState.PUBLISHED.value] * 100
    assert jobs == [JobState.DONE.value] * 100
    assert sum(handled) == 100 and min(handled) > 0, handled  # both workers took part
    kos = [d for d in dmp.documents() if d["mime_type"] == "application/dicom"]
    assert len(kos) == 100 and len({d["unique_id"] for d in kos}) == 100
    assert dmp.stats().get("ITI-41", 0) == 100  # not one submission twice


@pytest.mark.parametrize("kill_point", ["publish:before-send", "publish:after-send"])
def test_sigkill_while_publishing_leaves_exactly_one_kos(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path, kill_point: str
) -> None:
    from drimbox.hl7.message import parse_report_message
    from drimbox.sim.studies import SeriesSpec, generate_study_for_report

    report = parse_report_message(hl7_text("CR_C-ORU.hl7")).report
    assert report is not None
    files = generate_study_for_report(tmp_path / "study", report, [SeriesSpec("CT", "x", 3)],
                                      rows=32, columns=32)  # fmt: skip
    pacs.store_files(files)
    config_file = tmp_path / "node.toml"
    config_file.write_text("[roles]\nsource = true\n")
    config = node_config(tmp_path, pacs, dmp.node_environ())
    environ = config_environ(config)
    node = NodeProcess(config_file, env=environ)
    node.start(DRIMBOX_FAILPOINTS=kill_point)
    with RisClient("127.0.0.1", node.hl7_port) as ris:
        assert ris.send(hl7_text("CR_C-ORU.hl7")).code == "AA"
    assert node.wait_dead(60) == -9, node.log()  # died at the failpoint (SIGKILL)
    before = [d for d in dmp.documents() if d["mime_type"] == "application/dicom"]
    assert len(before) == (1 if kill_point == "publish:after-send" else 0)

    node.start()  # restarted without the failpoint: the job comes back when its lease expires
    db = Database(config.store.database_url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with db.session() as session:
            row = session.scalars(select(Report)).one()
            if row.state == ReportState.PUBLISHED.value:
                break
        time.sleep(0.1)
    node.stop()
    db.dispose()
    assert row.state == ReportState.PUBLISHED.value, (row.state, row.reason, node.log()[-3000:])
    after = [d for d in dmp.documents() if d["mime_type"] == "application/dicom"]
    assert [d["unique_id"] for d in after] == [row.kos_sop_uid]  # exactly one KOS
    assert after[0]["status"] == "Approved"
