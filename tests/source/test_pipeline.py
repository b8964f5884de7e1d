"""End to end on the Source: RIS → MLLP → stored → C-FIND on a real Orthanc → KOS (dciodvfy)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from typer.testing import CliRunner

from drimbox.cli import app
from drimbox.db import ReportState
from drimbox.hl7.message import parse_report_message
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ris import RisClient
from drimbox.sim.studies import SeriesSpec, generate_study_for_report
from support.node import RunningNode, node_config
from support.samples import hl7_text
from support.tools import require_tool

SERIES = (
    SeriesSpec("CT", "Crâne sans injection", 5, body_part="HEAD"),
    SeriesSpec("CT", "Crâne avec injection", 4, body_part="HEAD"),
    SeriesSpec("MR", "Encéphale T1", 3, body_part="HEAD"),
)
SETTLED = {ReportState.PUBLISHING.value, ReportState.PUBLISHED.value, ReportState.REFUSED.value}


def store_with_storescu(pacs: LocalOrthanc, files: list[Path]) -> None:
    storescu = require_tool("storescu", "dcmtk")
    result = subprocess.run(
        [storescu, "-aet", "MODALITY", "-aec", pacs.aet, "127.0.0.1", str(pacs.dicom_port),
         *map(str, files)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def sample_study(tmp_path: Path, sample: str, **overrides: object) -> list[Path]:
    report = parse_report_message(hl7_text(sample)).report
    assert report is not None
    return generate_study_for_report(tmp_path / "study", report, SERIES, rows=64, columns=64,
                                     **overrides)  # fmt: skip


def test_sample_report_to_kos(pacs: LocalOrthanc, tmp_path: Path) -> None:
    files = sample_study(tmp_path, "CR_C-ORU.hl7")
    store_with_storescu(pacs, files)
    stored = {dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in files}

    config = node_config(tmp_path, pacs)
    with RunningNode(config) as running:
        with RisClient("127.0.0.1", running.hl7_port) as ris:
            ack = ris.send(hl7_text("CR_C-ORU.hl7"))
        assert ack.code == "AA", ack.ack
        [report] = running.reports()
        report = running.wait_for_report(report.id, SETTLED)
    assert report.state == ReportState.PUBLISHING.value, report.reason
    assert report.kos is not None and report.kos_instance_count == len(files)

    kos = dcmread(DicomBytesIO(report.kos))
    assert kos.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113030"
    assert kos.PatientID == "279035121518989"
    assert kos.OtherPatientIDsSequence[0].PatientID == "IPP101"
    assert kos.StudyInstanceUID == "1.2.250.1.213.4.5.2.1.103"
    assert kos.SOPInstanceUID.startswith("1.2.250.1.999.77.")
    evidence = kos.CurrentRequestedProcedureEvidenceSequence[0]
    referenced = {
        sop.ReferencedSOPInstanceUID
        for series in evidence.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert referenced == set(stored)
    for series in evidence.ReferencedSeriesSequence:
        assert series.RetrieveURL == (
            "https://db.site-a.test/dicom-web-rs/studies/1.2.250.1.213.4.5.2.1.103"
            f"/series/{series.SeriesInstanceUID}"
        )

    kos_file = tmp_path / "kos.dcm"
    kos_file.write_bytes(report.kos)
    dciodvfy = require_tool("dciodvfy", "dicom3tools")
    check = subprocess.run([dciodvfy, str(kos_file)], capture_output=True, text=True, check=False)
    errors = [
        line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")
    ]
    assert errors == []

    # What the site's IT person sees.
    runner = CliRunner()
    env = {"DRIMBOX_STORE__DATABASE_URL": config.store.database_url}
    listed = runner.invoke(app, ["reports", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    page = json.loads(listed.stdout)
    assert (page["total"], page["truncated"], page["next_offset"]) == (1, False, None)
    [row] = page["reports"]
    assert row["state"] == "publishing" and row["accession"] == "ACN103"
    assert row["kos_sop_instance_uid"] == kos.SOPInstanceUID
    out = tmp_path / "out.dcm"
    shown = runner.invoke(app, ["reports", "show", str(row["id"]), "--kos-out", str(out)], env=env)
    assert shown.exit_code == 0, shown.output
    assert "RetrieveURL" in shown.output or "dicom-web-rs" in shown.output
    assert out.read_bytes() == report.kos


def test_pacs_patient_differs_from_the_report_nothing_is_built(
    pacs: LocalOrthanc, tmp_path: Path
) -> None:
    files = sample_study(
        tmp_path, "CR_G1-ORU.hl7", patient_id="180127512345678", birth_date="19800127",
        patient_name="AUTRE^PATIENT", other_patient_ids=[],
    )  # fmt: skip
    store_with_storescu(pacs, files)
    with RunningNode(node_config(tmp_path, pacs)) as running:
        with RisClient("127.0.0.1", running.hl7_port) as ris:
            assert ris.send(hl7_text("CR_G1-ORU.hl7")).code == "AA"
        [report] = running.reports()
        report = running.wait_for_report(report.id, SETTLED)
    assert report.state == ReportState.REFUSED.value
    assert report.kos is None and report.kos_sop_uid is None
    assert report.reason is not None and "Identité" in report.reason


def test_a_report_waits_for_its_images_then_is_built(pacs: LocalOrthanc, tmp_path: Path) -> None:
    with RunningNode(node_config(tmp_path, pacs)) as running:
        with RisClient("127.0.0.1", running.hl7_port) as ris:
            assert ris.send(hl7_text("CR_C-ORU.hl7")).code == "AA"
        [report] = running.reports()
        waiting = running.wait_for_report(report.id, {ReportState.WAITING_IMAGES.value})
        assert waiting.reason is not None and "pas encore dans le PACS" in waiting.reason
        store_with_storescu(pacs, sample_study(tmp_path, "CR_C-ORU.hl7"))
        built = running.wait_for_report(report.id, SETTLED)
    assert built.state == ReportState.PUBLISHING.value, built.reason


def test_a_report_whose_images_never_arrive_is_refused_after_the_wait(
    pacs: LocalOrthanc, tmp_path: Path
) -> None:
    """The exam never reaches the PACS: the report waits `images_wait_h` (here 1.8 s), asking
    again and again, then is refused with a French reason — never published, never dropped."""
    config = node_config(tmp_path, pacs, source={"images_wait_h": 0.0005})
    with RunningNode(config) as running:
        with RisClient("127.0.0.1", running.hl7_port) as ris:
            assert ris.send(hl7_text("CR_C-ORU.hl7")).code == "AA"
        [report] = running.reports()
        refused = running.wait_for_report(report.id, {ReportState.REFUSED.value})
    study = parse_report_message(hl7_text("CR_C-ORU.hl7")).report
    assert study is not None
    assert refused.reason == (
        f"Examen {study.study_instance_uid} absent du PACS après 0.0005 h d'attente"
    )
    assert refused.attempts >= 2  # it asked the PACS again before giving up
    assert refused.kos is None


def test_an_unreachable_pacs_is_retried_not_refused(tmp_path: Path) -> None:
    config = node_config(tmp_path, None, pacs={"host": "127.0.0.1", "port": 9, "timeout_s": 1})
    with RunningNode(config) as running:
        with RisClient("127.0.0.1", running.hl7_port) as ris:
            assert ris.send(hl7_text("CR_C-ORU.hl7")).code == "AA"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            [report] = running.reports()
            if report.attempts >= 2 and report.reason:
                break
            time.sleep(0.05)
    assert report.state == ReportState.RECEIVED.value
    assert report.reason is not None and "PACS injoignable" in report.reason
    assert report.attempts >= 2
