"""IOCM: rejection notes sent to the box's SCP update (RPLC) or delete the published KOS."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select, update

from drimbox.db import Database, Report, ReportState
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ris import RisClient
from drimbox.source.iocm import handle_rejection_note
from drimbox.trust import audit
from support.dmp import DmpEnvironment
from support.factories import add_reports
from support.node import RunningNode, node_config
from support.samples import hl7_text, sample_exam
from support.tools import require_tool

KOS = "1.2.840.10008.5.1.4.1.1.88.59"
DONE = {ReportState.PUBLISHED.value, ReportState.APPLIED.value, ReportState.PARKED.value,
        ReportState.REFUSED.value}  # fmt: skip


def rejection_note(
    path: Path,
    study_uid: str,
    rejected: list[Dataset],
    code: tuple[str, str, str] = ("113001", "DCM", "Rejected for Quality Reasons"),
) -> Path:
    """A KOS titled `code` (value, scheme, meaning) naming `rejected`."""
    note = Dataset()
    note.SOPClassUID = KOS
    note.SOPInstanceUID = generate_uid()
    note.StudyInstanceUID = study_uid
    note.SeriesInstanceUID = generate_uid()
    note.Modality = "KO"
    note.PatientID = "279035121518989"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = code
    note.ConceptNameCodeSequence = Sequence([title])
    by_series: dict[str, list[Dataset]] = {}
    for instance in rejected:
        by_series.setdefault(str(instance.SeriesInstanceUID), []).append(instance)
    evidence = Dataset()
    evidence.StudyInstanceUID = study_uid
    series_items = []
    for series_uid, instances in by_series.items():
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        sops = []
        for instance in instances:
            sop = Dataset()
            sop.ReferencedSOPClassUID = instance.SOPClassUID
            sop.ReferencedSOPInstanceUID = instance.SOPInstanceUID
            sops.append(sop)
        series.ReferencedSOPSequence = Sequence(sops)
        series_items.append(series)
    evidence.ReferencedSeriesSequence = Sequence(series_items)
    note.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    note.file_meta = FileMetaDataset()
    note.file_meta.MediaStorageSOPClassUID = KOS
    note.file_meta.MediaStorageSOPInstanceUID = note.SOPInstanceUID
    note.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    note.save_as(path, enforce_file_format=True)
    return path


def send_from_pacs(node: RunningNode, path: Path) -> None:
    storescu = require_tool("storescu", "dcmtk")
    assert node.node.scp is not None
    result = subprocess.run(
        [storescu, "-aet", "ORTHANC", "-aec", node.config.pacs.calling_aet, "127.0.0.1",
         str(node.node.scp.bound_port), str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def delete_from_pacs(pacs: LocalOrthanc, datasets: list[Dataset]) -> None:
    for dataset in datasets:
        found = pacs.client.post("/tools/lookup", content=str(dataset.SOPInstanceUID)).json()
        for item in found:
            pacs.client.delete(item["Path"]).raise_for_status()


def test_rejection_notes_replace_then_delete_the_kos(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    report, files = sample_exam(tmp_path / "study")
    pacs.store_files(files)
    datasets = [dcmread(f, stop_before_pixels=True) for f in files]
    series_b = [d for d in datasets if d.SeriesNumber == datasets[-1].SeriesNumber]
    series_a = [d for d in datasets if d not in series_b]
    study = report.study_instance_uid
    with RunningNode(node_config(tmp_path, pacs, dmp.node_environ())) as node:
        with RisClient("127.0.0.1", node.hl7_port) as ris:
            assert ris.send(hl7_text("CR_C-ORU.hl7")).code == "AA"
        first = node.wait_for_report(node.reports()[0].id, DONE)
        assert first.state == ReportState.PUBLISHED.value and first.kos_instance_count == 5

        # The PACS rejects series b: the KOS is rebuilt from what is left and replaces the old.
        delete_from_pacs(pacs, series_b)
        send_from_pacs(node, rejection_note(tmp_path / "note1.dcm", study, series_b))
        second = node.wait_for_report(node.reports()[-1].id, DONE)
        assert second.kind == "iocm" and second.state == ReportState.PUBLISHED.value
        assert second.kos_instance_count == 3
        node.wait_for_report(first.id, {ReportState.REPLACED.value})

        # Then everything is rejected: the KOS leaves the DMP.
        delete_from_pacs(pacs, series_a)
        send_from_pacs(node, rejection_note(tmp_path / "note2.dcm", study, series_a))
        third = node.wait_for_report(node.reports()[-1].id, DONE)
        assert third.kind == "iocm" and third.state == ReportState.APPLIED.value, third.reason
        node.wait_for_report(second.id, {ReportState.WITHDRAWN.value})
    entries = {
        d["unique_id"]: d["status"]
        for d in dmp.documents()
        if d["mime_type"] == "application/dicom"
    }
    assert entries == {first.kos_sop_uid: "Deprecated", second.kos_sop_uid: "Deleted"}


def test_the_scp_refuses_a_wrong_called_or_calling_ae_title(
    dmp: DmpEnvironment, tmp_path: Path
) -> None:
    """Only the PACS (its AE title) may open an association, and only to the box's AE title: a
    rejection note from anyone else would withdraw a published KOS."""
    echoscu = require_tool("echoscu", "dcmtk")
    storescu = require_tool("storescu", "dcmtk")
    config = node_config(tmp_path, None, dmp.node_environ(), pacs={"called_aet": "THEPACS"})
    note = rejection_note(tmp_path / "note.dcm", "1.2.3.4", [])
    with RunningNode(config) as node:
        assert node.node.scp is not None
        port = str(node.node.scp.bound_port)

        def run(tool: str, calling: str, called: str, *files: str) -> str:
            done = subprocess.run(
                [tool, "-aet", calling, "-aec", called, "127.0.0.1", port, *files],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            return f"{done.returncode}\n{done.stdout}{done.stderr}"

        assert run(echoscu, "THEPACS", "DRIMBOX").startswith("0\n")
        wrong_called = run(echoscu, "THEPACS", "NOTTHEBOX")
        # dcmtk's wording varies between versions ("recognised", "Recognized"): read the reason.
        assert "called ae title not recogni" in wrong_called.lower(), wrong_called
        wrong_calling = run(echoscu, "INTRUDER", "DRIMBOX")
        assert "calling ae title not recogni" in wrong_calling.lower(), wrong_calling
        intruder_note = run(storescu, "INTRUDER", "DRIMBOX", str(note))
        assert not intruder_note.startswith("0\n"), intruder_note
    events = audit.events(Database(config.store.database_url))
    assert [e for e in events if e["action"] == "iocm_rejection"] == []


def published_report(tmp_path: Path, study_uid: str) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.upgrade()
    add_reports(db, 1)
    with db.session() as session:
        published = {"state": ReportState.PUBLISHED.value, "kos_sop_uid": "1.2.3.99"}
        session.execute(update(Report).values(study_uid=study_uid, **published))
    return db


@pytest.mark.parametrize(
    ("code", "meaning"),
    [
        ("113001", "Rejected for Quality Reasons"),
        ("113037", "Rejected for Patient Safety Reasons"),
        ("113038", "Incorrect Modality Worklist Entry"),
        ("113039", "Data Retention Policy Expired"),
    ],
)
def test_every_rejection_code_reopens_the_published_report(
    tmp_path: Path, code: str, meaning: str
) -> None:
    """The four DICOM rejection titles (IHE IOCM), not only 113001, re-open the report."""
    db = published_report(tmp_path, "1.2.3.4")
    title = (code, "DCM", meaning)
    note = dcmread(rejection_note(tmp_path / "note.dcm", "1.2.3.4", [], code=title))
    [reopened] = handle_rejection_note(db, note, sender="THEPACS")
    with db.session() as session:
        row = session.get(Report, reopened)
        assert row is not None
        assert (row.kind, row.state) == ("iocm", ReportState.RECEIVED.value)
        assert row.reason == f"images rejetées par le PACS ({code} {meaning})"
    [event] = [e for e in audit.events(db) if e["action"] == "iocm_rejection"]
    assert event["actor"] == "THEPACS" and event["detail"]["code"] == code
    db.dispose()


@pytest.mark.parametrize(
    "title",
    [
        ("113001", "99LOCAL", "Rejected for Quality Reasons"),  # not the DICOM scheme
        ("113036", "DCM", "Group of Frames for Display"),  # another KOS title of CID 7010
        ("113000", "DCM", "Of Interest"),  # a KOS that rejects nothing
    ],
)
def test_a_kos_with_another_title_changes_nothing(
    tmp_path: Path, title: tuple[str, str, str]
) -> None:
    db = published_report(tmp_path, "1.2.3.4")
    note = dcmread(rejection_note(tmp_path / "note.dcm", "1.2.3.4", [], code=title))
    assert handle_rejection_note(db, note, sender="THEPACS") == []
    with db.session() as session:
        states = list(session.scalars(select(Report.state)))
    assert states == [ReportState.PUBLISHED.value]
    db.dispose()
