"""Synthetic studies: valid IODs (dciodvfy), plausible geometry, deterministic UIDs, speed."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.studies import HEAD_WEIGHTINGS, SeriesSpec, generate_study
from support.tools import require_tool

PATIENT = {
    "patient_id": "279035121518989",
    "patient_name": "PAT-TROIS^DOMINIQUE",
    "birth_date": "19790328",
    "sex": "F",
    "issuer_of_patient_id": "ASIP-SANTE-INS-NIR",
    "other_patient_ids": [("IPP101", "1.2.250.1.213.4.5.2.4")],
}


def make(out: Path, series: list[SeriesSpec], **kwargs: object) -> list[Path]:
    return generate_study(
        out,
        study_uid="1.2.826.0.1.3680043.8.498.77.9.2",
        accession="ACN1",
        series=series,
        **PATIENT,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("modality", ["CT", "MR", "CR", "DX"])
def test_each_modality_passes_dciodvfy(modality: str, tmp_path: Path) -> None:
    dciodvfy = require_tool("dciodvfy", "dicom3tools")
    [path] = make(tmp_path, [SeriesSpec(modality, "x", 1)], rows=64, columns=64)
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    for line in lines:
        if line.startswith("Warning"):
            print("dciodvfy:", line)
    assert [line for line in lines if line.startswith("Error")] == [], "\n".join(lines)


@pytest.mark.parametrize("weighting", list(HEAD_WEIGHTINGS))
def test_head_series_pass_dciodvfy(weighting: str, tmp_path: Path) -> None:
    dciodvfy = require_tool("dciodvfy", "dicom3tools")
    modality = "CT" if weighting.startswith("CT") else "MR"
    spec = SeriesSpec(modality, weighting, 1, body_part="HEAD", weighting=weighting)
    [path] = make(tmp_path, [spec], rows=64, columns=64)
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    assert [line for line in lines if line.startswith("Error")] == [], "\n".join(lines)


def _head_values(tmp_path: Path, weighting: str) -> np.ndarray:
    """The middle section of a 9-slice head series (the level of the ventricles and of the
    lesion), in HU for CT."""
    modality = "CT" if weighting.startswith("CT") else "MR"
    spec = SeriesSpec(modality, weighting, 9, body_part="HEAD", weighting=weighting)
    paths = make(tmp_path / weighting, [spec], rows=128, columns=128)
    ds = pydicom.dcmread(paths[4])
    values: np.ndarray = ds.pixel_array.astype(float)
    return values * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def test_head_phantom_shows_anatomy_in_each_contrast(tmp_path: Path) -> None:
    """Where a radiologist expects them: a skull around the brain, ventricles darker than
    white matter on CT and T1, brighter on T2, dark on FLAIR; a lesion that enhances."""
    # (row, column) in a 128 x 128 section: a lateral ventricle, white matter, the skull on
    # the midline at the back, the lesion (right frontal: left of the image, at the top).
    ventricle, white, skull, lesion = (61, 58), (70, 93), (122, 70), (35, 38)
    ct, ct_c, bone = (_head_values(tmp_path, w) for w in ("CT", "CT+C", "CT bone"))
    assert ct[ventricle] < 15 and 20 < ct[white] < 36 and ct[skull] > 1000
    assert ct[0, 0] < -900  # air
    assert ct_c[lesion] - ct[lesion] > 30  # enhancement
    assert np.array_equal(ct, bone)  # the same data, another window
    t1, t2, flair, t1_c = (_head_values(tmp_path, w) for w in ("T1", "T2", "FLAIR", "T1+C"))
    assert t1[ventricle] < t1[white] / 2 and t2[ventricle] > t2[white] * 2
    assert flair[ventricle] < flair[white] / 2 and flair[lesion] > flair[white] * 1.5
    assert t1_c[lesion] > t1[lesion] * 2


def test_ct_and_mr_of_the_head_share_one_geometry(tmp_path: Path) -> None:
    ct = make(tmp_path / "ct", [SeriesSpec("CT", "x", 5, weighting="CT")], rows=32, columns=32)
    mr = make(tmp_path / "mr", [SeriesSpec("MR", "x", 5, weighting="T2")], rows=32, columns=32)
    for a, b in zip(ct, mr, strict=True):
        first, second = pydicom.dcmread(a), pydicom.dcmread(b)
        assert first.ImagePositionPatient == second.ImagePositionPatient
        assert first.PixelSpacing == second.PixelSpacing


def test_geometry_content_and_identity(tmp_path: Path) -> None:
    paths = make(tmp_path, [SeriesSpec("CT", "Thorax", 3), SeriesSpec("MR", "Crâne", 2)])
    first, second, third = (pydicom.dcmread(p) for p in paths[:3])
    assert first.ImagePositionPatient[2] - second.ImagePositionPatient[2] == pytest.approx(
        first.SliceThickness
    )
    assert third.InstanceNumber == 3
    assert first.RescaleIntercept == -1024
    pixels = first.pixel_array
    assert pixels.dtype == np.uint16 and pixels.shape == (256, 256)
    assert len(np.unique(pixels)) > 100  # noisy, not flat
    assert first.OtherPatientIDsSequence[0].PatientID == "IPP101"
    assert first.IssuerOfPatientID == "ASIP-SANTE-INS-NIR"
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    mr = pydicom.dcmread(paths[3])
    assert mr.SOPClassUID == pydicom.uid.MRImageStorage
    assert mr.SeriesDescription == "Crâne"
    assert len({pydicom.dcmread(p).SOPInstanceUID for p in paths}) == 5


def test_uids_are_deterministic(tmp_path: Path) -> None:
    a = make(tmp_path / "a", [SeriesSpec("CT", "x", 2)], rows=16, columns=16)
    b = make(tmp_path / "b", [SeriesSpec("CT", "x", 2)], rows=16, columns=16)
    assert [pydicom.dcmread(p).SOPInstanceUID for p in a] == [
        pydicom.dcmread(p).SOPInstanceUID for p in b
    ]
    given = make(tmp_path / "c", [SeriesSpec("CT", "x", 1, series_uid="1.2.3.4")])
    assert pydicom.dcmread(given[0]).SeriesInstanceUID == "1.2.3.4"


def test_large_series_is_fast(tmp_path: Path) -> None:
    start = time.monotonic()
    paths = make(tmp_path, [SeriesSpec("CT", "big", 150)], rows=512, columns=512)
    elapsed = time.monotonic() - start
    assert len(paths) == 150
    # 1300 such instances must take well under a minute: allow 150 in 6 s on slow CI.
    assert elapsed < 6.0, f"{elapsed:.1f} s"


def test_bad_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="modality"):
        make(tmp_path, [SeriesSpec("US", "x", 1)])
    with pytest.raises(ValueError, match="weighting"):
        make(tmp_path, [SeriesSpec("CT", "x", 1, weighting="T2")])
    with pytest.raises(ValueError, match="transfer syntax"):
        make(tmp_path, [SeriesSpec("CT", "x", 1)], transfer_syntax="1.2.840.10008.1.2.4.50")


def test_orthanc_stores_and_counts(orthanc: LocalOrthanc, tmp_path: Path) -> None:
    before = orthanc.statistics()["CountInstances"]
    paths = generate_study(
        tmp_path, patient_id="SIM1", patient_name="SIM^ONE", birth_date="20000101", sex="M",
        study_uid="1.2.826.0.1.3680043.8.498.77.9.3", accession="A1",
        series=[SeriesSpec("DX", "x", 2)], rows=16, columns=16,
    )  # fmt: skip
    assert len(orthanc.store_files(paths)) == 2
    assert orthanc.statistics()["CountInstances"] == before + 2
    response = orthanc.client.get("/dicom-web/studies", params={"PatientID": "SIM1"})
    assert response.status_code == 200 and len(response.json()) == 1


def test_local_orthanc_leaves_nothing_behind(tmp_path: Path) -> None:
    pacs = LocalOrthanc(aet="TMP")
    with pacs:
        process = pacs._process
        assert process is not None and pacs.running
        work_dir = pacs.work_dir
    assert process.poll() is not None
    assert work_dir is not None and not work_dir.exists()
    broken = LocalOrthanc(binary="/bin/false", start_timeout=5)
    with pytest.raises(Exception, match="exited"), broken:
        pass
    assert not broken.running
