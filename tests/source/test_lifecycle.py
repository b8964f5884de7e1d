"""The RIS's flags and the report's own versions decide what reaches the DMP; the exam's KOS
stays complete (late images, several studies, several reports, OMI exam updates).

Real sockets throughout: the RIS over MLLP, Orthanc over DICOM, the DMP simulator over mutual TLS.
"""

from __future__ import annotations

import time
from pathlib import Path

from drimbox.db import ReportState
from drimbox.hl7.message import parse_report_message
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ris import RisClient
from drimbox.sim.studies import SeriesSpec
from drimbox.source.grants import Grants
from support.dmp import DmpEnvironment
from support.node import RunningNode, node_config
from support.process import config_environ
from support.publishing import DONE, cli, node_that_sent, send, store_study_for
from support.samples import cda_version, hl7_text, with_flags, with_pid32

CR_C = hl7_text("CR_C-ORU.hl7")
STUDY_C = "1.2.250.1.213.4.5.2.1.103"
DOC_C = "1.2.250.1.213.4.5.4.403"
LATE_ROOT = "1.2.826.0.1.3680043.8.498.78"  # images stored after the publication


def kos_entries(dmp: DmpEnvironment) -> dict[str, dict[str, object]]:
    return {d["unique_id"]: d for d in dmp.documents() if d["mime_type"] == "application/dicom"}


def last_report(node: RunningNode) -> int:
    return node.reports()[-1].id


def test_destdmp_n_stays_off_the_dmp_then_y_publishes_then_n_withdraws(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    store_study_for(pacs, tmp_path, CR_C)
    with RunningNode(node_config(tmp_path, pacs, dmp.node_environ())) as node:
        [first] = send(node, with_flags(CR_C, DESTDMP=False))
        kept = node.wait_for_report(first, DONE)
        assert kept.state == ReportState.NOT_FOR_DMP.value, kept.reason
        assert kept.reason == "non destiné au DMP (DESTDMP=N)"
        assert kept.kos is not None and kept.kos_instance_count == 7
        # Its images still serve the report's viewer link (IHE IID).
        assert Grants(node.node.db).iid_report_published(STUDY_C, "ACN103", DOC_C)
        assert Grants(node.node.db).for_study(STUDY_C) is not None
        assert kos_entries(dmp) == {}
        assert not dmp.stats().get("ITI-41")
        listed = cli(config_environ(node.config) | {"COLUMNS": "250"}, "reports", "list",
                     "--config", "-")  # fmt: skip
        assert listed.count("non destiné au DMP") == 2  # its own state (and its reason), in French

        send(node, with_flags(cda_version(CR_C, "2", 2), DESTDMP=True))
        published = node.wait_for_report(last_report(node), DONE)
        assert published.state == ReportState.PUBLISHED.value, published.reason
        assert kos_entries(dmp)[published.kos_sop_uid or ""]["status"] == "Approved"

        send(node, with_flags(cda_version(CR_C, "3", 3), DESTDMP=False))
        node.wait_for_report(published.id, {ReportState.WITHDRAWN.value})
        withdrawn_by = node.wait_for_report(last_report(node), DONE)
        assert withdrawn_by.state == ReportState.NOT_FOR_DMP.value
        assert "retiré" in (withdrawn_by.reason or "")
    entries = kos_entries(dmp)
    assert entries[published.kos_sop_uid or ""]["status"] == "Deleted"
    assert withdrawn_by.kos_sop_uid not in entries and kept.kos_sop_uid not in entries


def test_unreliable_identity_is_refused_and_nothing_published(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    store_study_for(pacs, tmp_path, CR_C)
    with RunningNode(node_config(tmp_path, pacs, dmp.node_environ())) as node:
        with RisClient("127.0.0.1", node.hl7_port) as ris:
            for code, words in (
                ("PROV", "provisoire"),
                ("DOUTE", "douteuse"),
                ("FICTI", "fictive"),
            ):
                ack = ris.send(with_pid32(CR_C, code))
                assert ack.code == "AE"
                assert words in ack.ack and f"PID-32 {code}" in ack.ack
            assert node.reports() == []
            assert ris.send(with_pid32(CR_C, "VALI")).code == "AA"
        node.wait_for_report(last_report(node), DONE)
    assert len(kos_entries(dmp)) == 1


def test_late_resent_older_version_never_replaces_a_newer_one(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    store_study_for(pacs, tmp_path, CR_C)
    version_2 = cda_version(CR_C, "2", 2, effective="20210109090000+0100")
    version_1 = cda_version(CR_C, "1", 1)
    with RunningNode(node_config(tmp_path, pacs, dmp.node_environ())) as node:
        [newer] = send(node, version_2)
        published = node.wait_for_report(newer, DONE)
        assert published.state == ReportState.PUBLISHED.value, published.reason
        send(node, version_1)  # after an outage, the RIS re-sends what it had queued
        late = node.wait_for_report(last_report(node), DONE)
        assert late.state == ReportState.SUPERSEDED.value
        assert "version 1" in (late.reason or "") and "version 2" in (late.reason or "")
        assert node.wait_for_report(newer, DONE).state == ReportState.PUBLISHED.value
    entries = kos_entries(dmp)
    assert list(entries) == [published.kos_sop_uid]
    assert entries[published.kos_sop_uid or ""]["status"] == "Approved"


def test_same_version_is_ordered_by_effective_time(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    store_study_for(pacs, tmp_path, CR_C)
    later = cda_version(CR_C, "b", 1, effective="20210108120000+0100")
    earlier = cda_version(CR_C, "a", 1, effective="20210108100000+0100")
    with RunningNode(node_config(tmp_path, pacs, dmp.node_environ())) as node:
        [first] = send(node, later)
        assert node.wait_for_report(first, DONE).state == ReportState.PUBLISHED.value
        send(node, earlier)
        assert node.wait_for_report(last_report(node), DONE).state == "superseded"


def test_modif_conf_code_updates_the_published_confidentiality(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    store_study_for(pacs, tmp_path, CR_C)  # CR_C carries INVISIBLE_PATIENT=Y
    with RunningNode(node_config(tmp_path, pacs, dmp.node_environ())) as node:
        [first] = send(node, CR_C)
        original = node.wait_for_report(first, DONE)
        # A new version without MODIF_CONF_CODE keeps the published confidentiality.
        send(node, with_flags(cda_version(CR_C, "2", 2), INVISIBLE_PATIENT=False))
        kept = node.wait_for_report(last_report(node), DONE)
        # The same version re-sent with MODIF_CONF_CODE=Y changes it (RPLC of a re-issued KOS).
        changed_flags = {"INVISIBLE_PATIENT": False, "MASQUE_PS": True, "MODIF_CONF_CODE": True}
        send(node, with_flags(cda_version(CR_C, "2", 2), **changed_flags))
        reissued = node.wait_for_report(last_report(node), DONE)
        node.wait_for_report(kept.id, {ReportState.REPLACED.value})
    assert reissued.kind == "confidentiality" and reissued.state == "published"
    entries = kos_entries(dmp)

    def codes(report_uid: str | None) -> set[str]:
        return {str(c).split("^")[0] for c in entries[report_uid or ""]["confidentiality_codes"]}

    assert "INVISIBLE_PATIENT" in codes(original.kos_sop_uid)
    assert "INVISIBLE_PATIENT" in codes(kept.kos_sop_uid)
    assert codes(reissued.kos_sop_uid) >= {"MASQUE_PS"}
    assert "INVISIBLE_PATIENT" not in codes(reissued.kos_sop_uid)
    assert entries[reissued.kos_sop_uid or ""]["status"] == "Approved"
    assert entries[reissued.kos_sop_uid or ""]["replaces"] == kept.dmp_entry_uuid


def test_late_images_replace_the_kos(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    rechecks = {"images_recheck_s": "1,2"}
    with node_that_sent(pacs, dmp, tmp_path, CR_C, source=rechecks) as (node, published):
        first = published.id
        assert published.kos_instance_count == 7
        # A reconstruction reaches the PACS after the report was published.
        store_study_for(pacs, tmp_path, CR_C, (SeriesSpec("CT", "MPR", 2),), uid_root=LATE_ROOT)
        node.wait_for_report(first, {ReportState.REPLACED.value}, timeout_s=90)
        recheck = node.reports()[-1]
        recheck = node.wait_for_report(recheck.id, DONE)
    assert recheck.kind == "recheck" and recheck.state == ReportState.PUBLISHED.value
    assert recheck.kos_instance_count == 9
    entries = kos_entries(dmp)
    assert entries[published.kos_sop_uid or ""]["status"] == "Deprecated"
    assert entries[recheck.kos_sop_uid or ""]["status"] == "Approved"
    assert entries[recheck.kos_sop_uid or ""]["replaces"] == published.dmp_entry_uuid


def test_unchanged_pacs_keeps_the_kos_over_the_window(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    with node_that_sent(pacs, dmp, tmp_path, CR_C, source={"images_recheck_s": "1,2"}) as (
        node,
        _,
    ):
        deadline = time.monotonic() + 30
        while node.reports()[0].recheck_at is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        final = node.reports()
    assert [r.state for r in final] == [ReportState.PUBLISHED.value]
    assert final[0].rechecks_done == 2 and final[0].recheck_at is None
    assert len(kos_entries(dmp)) == 1


def test_report_of_two_studies_gives_one_kos_per_study(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    second_study = "1.2.250.1.213.4.5.2.1.999"
    message = cda_version(CR_C, "2", 1, extra_study=second_study)
    store_study_for(pacs, tmp_path, message)
    store_study_for(pacs, tmp_path, message, (SeriesSpec("MR", "Crâne", 2),), second_study)
    with RunningNode(node_config(tmp_path, pacs, dmp.node_environ())) as node:
        ids = send(node, message)
        assert len(ids) == 2
        rows = [node.wait_for_report(i, DONE) for i in ids]
    assert {r.study_uid for r in rows} == {STUDY_C, second_study}
    assert [r.state for r in rows] == [ReportState.PUBLISHED.value] * 2
    by_study = {r.study_uid: r for r in rows}
    assert by_study[STUDY_C].kos_instance_count == 7
    assert by_study[second_study].kos_instance_count == 2
    entries = kos_entries(dmp)
    assert {e["status"] for e in entries.values()} == {"Approved"} and len(entries) == 2
    references = {r.study_uid: str(entries[r.kos_sop_uid or ""]["reference_ids"]) for r in rows}
    assert second_study in references[second_study] and STUDY_C not in references[second_study]


def test_second_report_of_an_exam_keeps_its_kos(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    store_study_for(pacs, tmp_path, CR_C)
    addendum = cda_version(CR_C, "9", 1, set_id="7F1E55C2-0000-4000-8000-000000000009")
    with RunningNode(node_config(tmp_path, pacs, dmp.node_environ())) as node:
        [first] = send(node, CR_C)
        published = node.wait_for_report(first, DONE)
        send(node, addendum)
        second = node.wait_for_report(last_report(node), DONE)
        assert Grants(node.node.db).iid_report_published(STUDY_C, "ACN103", f"{DOC_C}.9")
    assert second.state == ReportState.PUBLISHED.value
    assert second.kos_sop_uid == published.kos_sop_uid
    assert list(kos_entries(dmp)) == [published.kos_sop_uid]


def test_omi_exam_update_rereads_the_pacs_and_replaces_the_kos(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    store_study_for(pacs, tmp_path, CR_C)
    omi = (
        hl7_text("CR_W_Suppression-OMI.hl7")
        .replace("ORC|CA|", "ORC|XO|")
        .replace(
            "IPC|ACN124|PACS_SOURCE|1.2.250.1.213.4.5.2.1.124|",
            f"IPC|ACN103|PACS_SOURCE|{STUDY_C}|",
        )
    )
    assert parse_report_message(omi).kind == "exam_update"
    with RunningNode(node_config(tmp_path, pacs, dmp.node_environ())) as node:
        [first] = send(node, CR_C)
        published = node.wait_for_report(first, DONE)
        store_study_for(pacs, tmp_path, CR_C, (SeriesSpec("CT", "Ajout", 1),), uid_root=LATE_ROOT)
        send(node, omi)
        update = node.reports()[-2]
        assert update.kind == "exam_update" and update.state == ReportState.APPLIED.value
        rebuilt = node.wait_for_report(last_report(node), DONE)
        node.wait_for_report(first, {ReportState.REPLACED.value})
    assert rebuilt.kind == "exam_update" and rebuilt.state == ReportState.PUBLISHED.value
    assert rebuilt.kos_instance_count == 8
    entries = kos_entries(dmp)
    assert entries[rebuilt.kos_sop_uid or ""]["replaces"] == published.dmp_entry_uuid
