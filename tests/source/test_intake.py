"""Report intake: stored before the ACK, bad input stored and refused, re-sends not queued twice."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from drimbox.db import Database, Hl7Message, Report
from drimbox.sim.ris import parse_ack
from drimbox.source.intake import ReportIntake
from support.samples import hl7_text, with_cda

SAMPLES = {
    "CR_C-ORU.hl7": ("publish", "1.2.250.1.213.4.5.2.1.103", "ACN103"),
    "CR_G1-ORU.hl7": ("publish", "1.2.250.1.213.4.5.2.1.108", "ACN108"),
    "CR_G1_MAJ-MDM.hl7": ("update", "1.2.250.1.213.4.5.2.1.108", "ACN108"),
    "CR_C_Depublication-ORU.hl7": ("withdraw", "1.2.250.1.213.4.5.2.1.103", "ACN103"),
    "CR_C_Depublication-MDM.hl7": ("withdraw", "1.2.250.1.213.4.5.2.1.103", "ACN103"),
    "CR_W_Suppression-OMI.hl7": ("withdraw_exam", "1.2.250.1.213.4.5.2.1.124", "ACN124"),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_sample_is_stored_then_acknowledged(database: Database, name: str) -> None:
    kind, study, accession = SAMPLES[name]
    result = ReportIntake(database).handle(hl7_text(name).encode(), "127.0.0.1:1")
    assert result.ack_code == "AA", result.ack
    assert parse_ack(result.ack)[0] == "AA"
    with database.session() as session:
        report = session.get(Report, result.report_id)
        assert report is not None
        assert (report.kind, report.study_uid, report.accession) == (kind, study, accession)
        assert report.patient_ins == "279035121518989"
        message = session.get(Hl7Message, report.message_id)
        assert message is not None and message.raw == hl7_text(name).encode()


def test_a_resent_report_version_is_acknowledged_but_not_queued_twice(database: Database) -> None:
    intake = ReportIntake(database)
    first = intake.handle(hl7_text("CR_C-ORU.hl7").encode(), "ris")
    again = intake.handle(hl7_text("CR_C-ORU.hl7").encode(), "ris")
    assert (first.ack_code, again.ack_code) == ("AA", "AA")
    assert again.report_id is None and again.duplicate_of == first.report_id
    with database.session() as session:
        assert len(session.scalars(select(Report)).all()) == 1
        assert len(session.scalars(select(Hl7Message)).all()) == 2


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"PID|||123\r", "AR"),  # no MSH
        (hl7_text("CR_C-ORU.hl7").replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01").encode(), "AR"),
        (with_cda(hl7_text("CR_C-ORU.hl7"), b"<ClinicalDocument><unclosed>").encode(), "AE"),
    ],
    ids=["no-msh", "unsupported-type", "cda-not-xml"],
)
def test_bad_messages_are_refused_and_kept(database: Database, raw: bytes, code: str) -> None:
    result = ReportIntake(database).handle(raw, "ris")
    assert result.ack_code == code
    ack_code, detail = parse_ack(result.ack)
    assert ack_code == code and detail
    assert "ERR|" in result.ack
    with database.session() as session:
        message = session.get(Hl7Message, result.message_id)
        assert message is not None and message.ack_code == code and message.error
        assert session.scalars(select(Report)).all() == []


def test_no_aa_when_the_message_cannot_be_stored(database: Database) -> None:
    with database.session() as session:
        session.execute(text("DROP TABLE dmp_jobs"))
        session.execute(text("DROP TABLE reports"))
    result = ReportIntake(database).handle(hl7_text("CR_C-ORU.hl7").encode(), "ris")
    assert result.ack_code == "AE"
    assert "207" in result.ack
