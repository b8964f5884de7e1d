"""Publication to the DMP end to end: real Orthanc, the DMP simulator over mutual TLS, MLLP.

Report in → KOS registered Approved, retrievable byte for byte; a new version replaces it (RPLC);
a depublication deletes it; an outage is caught up without duplicates.
"""

from __future__ import annotations

from pathlib import Path

from drimbox.config import StructureConfig
from drimbox.db import ReportState
from drimbox.dmp.client import DmpClient, DmpSettings
from drimbox.dmp.vihf import VihfSubject
from drimbox.hl7.message import parse_report_message
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.pki import TestPki, structure_certificates
from support.dmp import STRUCTURE, DmpEnvironment, local_dmp
from support.node import RunningNode, node_config
from support.publishing import DONE, send, store_study_for
from support.samples import CDA_ID_C, cda_of, hl7_text, report_variant, with_cda


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
    assert kos_entries[updated.kos_sop_uid]["replaces"] == old.dmp_entry_uuid
    # The one approved KOS is the newest version's: built from the MDM's CDA, byte for byte.
    newest = parse_report_message(hl7_text("CR_G1_MAJ-MDM.hl7")).report
    assert newest is not None and newest.version_number is not None
    assert updated.document_id.split("^")[0] == newest.document_id.root != old.document_id
    assert updated.version_number == newest.version_number > (old.version_number or 0)
    approved = [uid for uid, d in kos_entries.items() if d["status"] == "Approved"]
    assert approved == [updated.kos_sop_uid]
    assert dmp.content(updated.kos_sop_uid) == updated.kos
    # The signature document follows its KOS: the old one is replaced too, none is orphaned.
    signatures = [d for d in dmp.documents() if d["mime_type"] == "text/xml"]
    assert sorted(d["status"] for d in signatures) == ["Approved", "Deprecated"]
    [new_signature] = [d for d in signatures if d["status"] == "Approved"]
    assert new_signature["replaces"] in {d["entry_uuid"] for d in signatures}


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
    # Deleted with its KOS: no signature entry stays Approved.
    assert [d["status"] for d in dmp.documents() if d["mime_type"] == "text/xml"] == ["Deleted"]


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
    signatures = [d for d in dmp.documents() if d["mime_type"] == "text/xml"]
    assert [d["status"] for d in signatures].count("Approved") == 1


SECOND_STRUCTURE = "3123456789012345"  # a SIRET structure (IDNST: 3 + SIRET)


def _report_of(sample: str, organization: str, study_uid: str, document_root: str) -> str:
    """The sample report, written for another organisation and another exam."""
    cda = (
        cda_of(hl7_text(sample))
        .replace(b'extension="101235555"', f'extension="{organization}"'.encode())
        .replace(b"1.2.250.1.213.4.5.2.1.103", study_uid.encode())
        .replace(f'<id root="{CDA_ID_C}"/>'.encode(), f'<id root="{document_root}"/>'.encode())
    )
    return with_cda(hl7_text(sample), cda)


def test_each_structure_publishes_with_its_own_certificate_and_identity(
    pacs: LocalOrthanc, tmp_path: Path
) -> None:
    pki = TestPki()
    with local_dmp(tmp_path / "dmp", pki) as dmp:
        second = structure_certificates(tmp_path / "pki-2", pki, SECOND_STRUCTURE, prefix="parc")
        first_message = hl7_text("CR_C-ORU.hl7")
        # The RIS names the second structure by its bare SIRET; the third is not configured.
        second_message = _report_of(
            "CR_C-ORU.hl7", SECOND_STRUCTURE[1:], "1.2.250.1.999.5.2", f"{CDA_ID_C}.2"
        )
        third_message = _report_of(
            "CR_C-ORU.hl7", "999999999", "1.2.250.1.999.5.3", f"{CDA_ID_C}.3"
        )
        for message in (first_message, second_message, third_message):
            store_study_for(pacs, tmp_path, message)
        config = node_config(tmp_path, pacs, dmp.node_environ())
        c = dmp.certs
        structures = [
            StructureConfig(
                id=STRUCTURE, kind="FINESS_EG", name="Centre de radiologie Ambroise",
                tls_cert=str(c.auth.cert_path), tls_key=str(c.auth.key_path),
                signing_cert=str(c.signing.cert_path), signing_key=str(c.signing.key_path),
            ),
            StructureConfig(
                id=SECOND_STRUCTURE, kind="SIRET", name="Cabinet d'imagerie du Parc",
                tls_cert=str(second.auth.cert_path), tls_key=str(second.auth.key_path),
                signing_cert=str(second.signing.cert_path),
                signing_key=str(second.signing.key_path),
            ),
        ]  # fmt: skip
        config = config.model_copy(update={"structures": structures})
        with RunningNode(config) as node:
            ids = send(node, first_message, second_message, third_message)
            reports = [node.wait_for_report(report_id, DONE) for report_id in ids]
        documents = dmp.documents()
    first, second_report, third = reports
    assert first.state == second_report.state == ReportState.PUBLISHED.value, [
        r.reason for r in reports
    ]
    by_uid = {d["unique_id"]: d for d in documents}
    for report, structure, name in (
        (first, STRUCTURE, "Centre de radiologie Ambroise"),
        (second_report, SECOND_STRUCTURE, "Cabinet d'imagerie du Parc"),
    ):
        entry = by_uid[report.kos_sop_uid]
        # The DMP recorded the structure of the TLS certificate, which it checked against the
        # VIHF's Identifiant_Structure and the signing certificate.
        assert entry["structure_id"] == structure
        assert entry["author_institutions"] == [
            f"{name}^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^{structure}"
        ]
    # An organisation without a configured structure: parked, named, nothing sent for it.
    assert third.state == ReportState.PARKED.value
    assert third.reason is not None and "« 999999999 »" in third.reason
    assert third.kos_sop_uid not in by_uid
    assert {d["structure_id"] for d in documents} == {STRUCTURE, SECOND_STRUCTURE}


def test_a_report_goes_through_at_once_not_at_the_next_poll(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    """Polling every 2 minutes (other nodes' work is found so): a report this node receives
    wakes its pipeline, the KOS built wakes its publisher, and a withdrawal too."""
    store_study_for(pacs, tmp_path, hl7_text("CR_C-ORU.hl7"))
    slow = {"poll_interval_s": 120}
    with RunningNode(node_config(tmp_path, pacs, dmp.node_environ(), source=slow)) as node:
        [published] = send(node, hl7_text("CR_C-ORU.hl7"))
        assert node.wait_for_report(published, DONE, timeout_s=30).state == "published"
        send(node, hl7_text("CR_C_Depublication-ORU.hl7"))
        withdrawal = node.reports()[-1].id
        assert node.wait_for_report(withdrawal, DONE, timeout_s=30).state == "applied"
        node.wait_for_report(published, {ReportState.WITHDRAWN.value}, timeout_s=30)
