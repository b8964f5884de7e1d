"""Publication to the DMP end to end: real Orthanc, the DMP simulator over mutual TLS, MLLP.

Report in → KOS registered Approved, retrievable byte for byte; a new version replaces it (RPLC);
a depublication deletes it; an outage is caught up without duplicates.
"""

from __future__ import annotations

from pathlib import Path

from drimbox.db import ReportState
from drimbox.dmp.client import DmpClient, DmpSettings
from drimbox.dmp.vihf import VihfSubject
from drimbox.hl7.message import parse_report_message
from drimbox.sim.orthanc import LocalOrthanc
from support.dmp import DmpEnvironment
from support.node import RunningNode, node_config
from support.publishing import DONE, send, store_study_for
from support.samples import hl7_text, report_variant


def test_report_is_published_and_retrievable(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    store_study_for(pacs, tmp_path, hl7_text("CR_C-ORU.hl7"))
    config = node_config(tmp_path, pacs, dmp.node_environ())
    with RunningNode(config) as node:
        [report_id] = send(node, hl7_text("CR_C-ORU.hl7"))
        report = node.wait_for_report(report_id, DONE)
    assert report.state == ReportState.PUBLISHED.value, report.reason
    [entry] = [d for d in dmp.documents() if d["mime_type"] == "application/dicom"]
    assert entry["status"] == "Approved"
    assert entry["unique_id"] == report.kos_sop_uid
    assert entry["entry_uuid"] == report.dmp_entry_uuid
    assert entry["type_code"].startswith("IMG-KOS")
    references = " ".join(entry["reference_ids"])
    assert "ACN103" in references and "1.2.250.1.213.4.5.2.1.103" in references
    # ITI-43 gives back the KOS byte for byte.
    parsed = parse_report_message(hl7_text("CR_C-ORU.hl7")).report
    assert parsed is not None
    with DmpClient(DmpSettings.from_config(config)) as client:
        subject = VihfSubject.from_report(parsed)
        retrieved = client.retrieve(
            entry["repository_unique_id"],
            entry["unique_id"],
            patient_ins="279035121518989",
            ins_oid="1.2.250.1.213.1.4.10",
            subject=subject,
        )
    assert retrieved == report.kos


def test_update_replaces_and_depublication_deletes(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    store_study_for(pacs, tmp_path, hl7_text("CR_G1-ORU.hl7"))
    with RunningNode(node_config(tmp_path, pacs, dmp.node_environ())) as node:
        [first] = send(node, hl7_text("CR_G1-ORU.hl7"))
        node.wait_for_report(first, DONE)
        send(node, hl7_text("CR_G1_MAJ-MDM.hl7"))
        second = node.reports()[-1].id
        updated = node.wait_for_report(second, DONE)
        assert updated.state == ReportState.PUBLISHED.value, updated.reason
        old = node.wait_for_report(first, {ReportState.REPLACED.value})
    kos_entries = {
        d["unique_id"]: d for d in dmp.documents() if d["mime_type"] == "application/dicom"
    }
    assert kos_entries[old.kos_sop_uid]["status"] == "Deprecated"
    assert kos_entries[updated.kos_sop_uid]["status"] == "Approved"
    assert kos_entries[updated.kos_sop_uid]["replaces"] == old.dmp_entry_uuid


def test_depublication_deletes_the_kos(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    store_study_for(pacs, tmp_path, hl7_text("CR_C-ORU.hl7"))
    with RunningNode(node_config(tmp_path, pacs, dmp.node_environ())) as node:
        [published] = send(node, hl7_text("CR_C-ORU.hl7"))
        node.wait_for_report(published, DONE)
        send(node, hl7_text("CR_C_Depublication-ORU.hl7"))
        withdrawal = node.reports()[-1].id
        applied = node.wait_for_report(withdrawal, DONE)
        gone = node.wait_for_report(published, {ReportState.WITHDRAWN.value})
    assert applied.state == ReportState.APPLIED.value, applied.reason
    [entry] = [d for d in dmp.documents() if d["unique_id"] == gone.kos_sop_uid]
    assert entry["status"] == "Deleted"


def test_dmp_outage_is_caught_up_without_duplicates(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    store_study_for(pacs, tmp_path, hl7_text("CR_C-ORU.hl7"))
    base = hl7_text("CR_C-ORU.hl7")
    dmp.dmp.stop()
    with RunningNode(node_config(tmp_path, pacs, dmp.node_environ())) as node:
        ids = send(node, *(report_variant(base, index) for index in range(20)))
        assert len(ids) == 20
        # While the DMP is down the reports wait, with the reason visible.
        first = node.wait_for_report(ids[0], {ReportState.PUBLISHING.value})
        node.wait_for_report(ids[0], {ReportState.PUBLISHING.value})
        dmp.dmp.start()
        for report_id in ids:
            node.wait_for_report(
                report_id, {ReportState.PUBLISHED.value, ReportState.REPLACED.value}, timeout_s=120
            )
        reports = node.reports()
    assert first.state == ReportState.PUBLISHING.value
    kos_uids = {r.kos_sop_uid for r in reports}
    assert len(kos_uids) == 20
    registered = [d for d in dmp.documents() if d["mime_type"] == "application/dicom"]
    assert sorted(d["unique_id"] for d in registered) == sorted(kos_uids)  # each once
    # Same study: each version replaced the previous one; only the last stays Approved.
    assert [d["status"] for d in registered].count("Approved") == 1
