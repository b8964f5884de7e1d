"""PACS adapter against a real Orthanc: echo, C-FIND snapshots and the errors a site's IT sees."""

from __future__ import annotations

import socket
from pathlib import Path

import pydicom
import pytest

from drimbox.dicom.pacs import PacsClient, PacsError, PacsSettings
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ports import free_port
from drimbox.sim.studies import SeriesSpec, generate_study

STUDY_UID = "1.2.826.0.1.3680043.8.498.77.9.1"


@pytest.fixture(scope="module")
def stored_study(orthanc: LocalOrthanc, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    paths = generate_study(
        tmp_path_factory.mktemp("pacs"),
        patient_id="IPP555",
        patient_name="DURAND^ÉLODIE",
        birth_date="19850412",
        sex="F",
        study_uid=STUDY_UID,
        accession="ACN555",
        series=[SeriesSpec("CT", "Thorax", 4), SeriesSpec("CR", "Thorax face", 1)],
        rows=32,
        columns=32,
    )
    orthanc.store_files(paths)
    return paths


def client_for(orthanc: LocalOrthanc, **overrides: object) -> PacsClient:
    settings = {"host": "127.0.0.1", "port": orthanc.dicom_port, "called_aet": orthanc.aet}
    settings.update(overrides)
    return PacsClient(PacsSettings(**settings))  # type: ignore[arg-type]


def test_echo_and_tcp_nodelay(orthanc: LocalOrthanc) -> None:
    client = client_for(orthanc)
    client.echo()
    with client.session() as session:
        assert session.tcp_nodelay


def test_snapshot_lists_every_instance(orthanc: LocalOrthanc, stored_study: list[Path]) -> None:
    snap = client_for(orthanc).snapshot(STUDY_UID)
    assert snap is not None
    assert snap.patient_id == "IPP555"
    assert snap.patient_name == "DURAND^ÉLODIE"  # UTF-8 survives the round trip
    assert (snap.patient_birth_date, snap.patient_sex, snap.accession_number) == (
        "19850412",
        "F",
        "ACN555",
    )
    assert [s.modality for s in snap.series] == ["CT", "CR"]
    assert [len(s.instances) for s in snap.series] == [4, 1]
    assert [i.instance_number for i in snap.series[0].instances] == [1, 2, 3, 4]
    assert snap.instance_count == len(stored_study)
    assert snap.modalities == ("CR", "CT")


def test_snapshot_gives_each_instance_its_sop_class(
    orthanc: LocalOrthanc, stored_study: list[Path], tmp_path: Path
) -> None:
    """Mixed study (CT + CR): classes asked per instance; a one-class study: the class the
    PACS gives for the study (SOPClassesInStudy) is every instance's, without asking each."""
    single_uid = "1.2.826.0.1.3680043.8.498.77.9.2"
    single = generate_study(
        tmp_path, patient_id="IPP556", patient_name="DURAND^LÉA", birth_date="19850412",
        sex="F", study_uid=single_uid, accession="ACN556",
        series=[SeriesSpec("CT", "Thorax", 3), SeriesSpec("CT", "Abdomen", 2)],
        rows=16, columns=16,
    )  # fmt: skip
    orthanc.store_files(single)
    for uid, files in ((STUDY_UID, stored_study), (single_uid, single)):
        expected = {}
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            expected[ds.SOPInstanceUID] = ds.SOPClassUID
        snap = client_for(orthanc).snapshot(uid)
        assert snap is not None
        got = {i.sop_instance_uid: i.sop_class_uid for s in snap.series for i in s.instances}
        assert got == expected
    assert len(set(expected.values())) == 1


def test_finds(orthanc: LocalOrthanc, stored_study: list[Path]) -> None:
    client = client_for(orthanc)
    studies = client.find_studies(PatientID="IPP555")
    assert [d.StudyInstanceUID for d in studies] == [STUDY_UID]
    series = client.find_series(STUDY_UID)
    assert len(series) == 2
    ct = next(s for s in series if s.Modality == "CT")
    assert len(client.find_instances(STUDY_UID, ct.SeriesInstanceUID)) == 4
    with pytest.raises(PacsError, match=r"clé\(s\) DICOM inconnue"):
        client.find_studies(NotAKeyword="x")


def test_unknown_study_gives_none(orthanc: LocalOrthanc) -> None:
    assert client_for(orthanc).snapshot("1.2.3.4.5.6.7.8.9") is None


def test_unreachable_pacs_is_named_in_the_error() -> None:
    port = free_port()
    client = PacsClient(PacsSettings(host="127.0.0.1", port=port, called_aet="PACS"))
    with pytest.raises(PacsError) as excinfo:
        client.echo()
    message = str(excinfo.value)
    assert f"PACS@127.0.0.1:{port}" in message and "injoignable" in message


def test_rejected_association_says_why(orthanc: LocalOrthanc) -> None:
    with pytest.raises(PacsError, match=r"association refusée.*Called AE title"):
        client_for(orthanc, called_aet="NOT_ORTHANC").echo()


def test_silent_peer_times_out() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = PacsClient(
            PacsSettings(host="127.0.0.1", port=port, called_aet="PACS", acse_timeout=1)
        )
        with pytest.raises(PacsError, match=r"pas de réponse à l.association"):
            client.echo()


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="AE title"):
        PacsSettings(host="h", port=104, called_aet="A" * 17)
    with pytest.raises(ValueError, match="port"):
        PacsSettings(host="h", port=0, called_aet="PACS")
