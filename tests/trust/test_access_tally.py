"""Image accesses summed into the audit trail: one event per caller, study, action and minute,
written when the minute has ended or at close, kept when the database refuses the write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from drimbox.db import Database, Report
from drimbox.trust import audit, tally
from drimbox.trust.tally import MAX_BYTES, AccessKey, AccessTally, minute_of
from support.factories import add_reports

START = datetime(2026, 12, 7, 15, 20, 10, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def key(
    actor: str = "899700100011", action: str = "image_retrieve_frames", **more: str
) -> AccessKey:
    fields = {"study_uid": "1.2.3", "remote": "10.0.0.1", "channel": "viewer"} | more
    return AccessKey(role="user", actor=actor, action=action, minute=minute_of(START), **fields)


def test_one_event_per_caller_study_action_and_minute(database: Database) -> None:
    clock = Clock()
    counted = AccessTally(database, clock=clock)
    for n in range(40):  # a viewer's frames: 40 requests
        counted.add(key(), nbytes=1000 + n, instances=1, series_uid=f"1.2.3.{n % 2}")
    counted.add(key(action="image_search_series"), nbytes=300)
    counted.add(key(actor="CN=db2.test.fr,O=SITE B", peer_dn="CN=db2.test.fr,O=SITE B",
                    psc_client="drimbox-b", channel="peer"), nbytes=10)  # fmt: skip
    clock.now = START + timedelta(seconds=30)  # the minute is not over: nothing written yet
    assert counted.flush() == 0 and audit.events(database) == []
    clock.now = START + timedelta(seconds=51)  # 15:21:01
    assert counted.flush() == 3
    events = {(e["actor"], e["action"]): e for e in audit.events(database)}
    frames = events["899700100011", "image_retrieve_frames"]
    assert frames["bytes"] == sum(1000 + n for n in range(40))
    assert frames["result"] == "ok" and frames["role"] == "user"
    assert frames["detail"]["requests"] == 40 and frames["detail"]["instances"] == 40
    assert frames["detail"]["series_uids"] == ["1.2.3.0", "1.2.3.1"]
    assert frames["detail"]["aggregated"] is True
    peer = events["CN=db2.test.fr,O=SITE B", "image_retrieve_frames"]
    assert peer["detail"]["peer_dn"] == "CN=db2.test.fr,O=SITE B"
    assert peer["detail"]["psc_client"] == "drimbox-b"
    assert counted.flush(everything=True) == 0  # written once


def test_close_writes_the_current_minute(database: Database) -> None:
    counted = AccessTally(database, clock=Clock())
    counted.add(key(), nbytes=5)
    counted.close()  # a clean stop, mid-minute
    (event,) = audit.events(database)
    assert event["detail"]["requests"] == 1 and event["bytes"] == 5


def test_the_patient_is_named_from_the_study(database: Database) -> None:
    add_reports(database, 1)
    with database.session() as session:
        report = session.scalars(select(Report)).one()
        report.study_uid, report.patient_ins = "1.2.250.1.7", "279035121518989"
    counted = AccessTally(database, clock=Clock())
    counted.add(key(study_uid="1.2.250.1.7"), nbytes=5)
    counted.add(key(study_uid="9.9.9"), nbytes=5)
    # QIDO /studies listing two studies of one patient: that patient.
    counted.add(key(study_uid="", action="image_search_studies"), nbytes=5,
                studies=("1.2.250.1.7", "1.2.250.1.7"))  # fmt: skip
    counted.close()
    patients = {e["study_uid"]: e["patient_ins"] for e in audit.events(database)}
    assert patients == {"1.2.250.1.7": "279035121518989", "9.9.9": "", "": "279035121518989"}


def test_a_tally_past_the_column_s_size_starts_another_event(database: Database) -> None:
    counted = AccessTally(database, clock=Clock())
    counted.add(key(), nbytes=MAX_BYTES - 10)
    counted.add(key(), nbytes=100)
    counted.close()
    assert [e["bytes"] for e in audit.events(database)] == [MAX_BYTES - 10, 100]


def test_a_failed_write_keeps_the_events_for_the_next_flush(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = AccessTally(database, clock=Clock())
    counted.add(key(), nbytes=5)

    def unavailable(_db: Database, _study: str) -> str:
        raise OSError("base de données indisponible")

    monkeypatch.setattr(tally, "patient_of_study", unavailable)
    assert counted.flush(everything=True) == 0 and counted.pending == 1
    monkeypatch.undo()
    counted.add(key(), nbytes=7)  # the same minute, counted apart: both are written
    assert counted.flush(everything=True) == 2
    assert sum(e["detail"]["requests"] for e in audit.events(database)) == 2
    assert counted.pending == 0
