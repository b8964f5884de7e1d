"""Lossless transcoding: pixel data identical after every round trip, UIDs kept."""

from __future__ import annotations

import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
)

from drimbox.dicom import transcode as transcoding
from drimbox.dicom.transcode import (
    TranscodeError,
    extract_frames,
    frame_media_type,
    render,
    transcode,
)
from drimbox.sim.studies import SeriesSpec, generate_study
from support.tools import require_tool


def one_instance(tmp_path: Path, syntax: str, modality: str = "CT") -> bytes:
    [path] = generate_study(
        tmp_path / syntax,
        patient_id="P1",
        patient_name="TEST^É",
        birth_date="19800101",
        sex="F",
        study_uid="1.2.826.0.1.3680043.8.498.77.8.1",
        accession="A1",
        series=[SeriesSpec(modality, "x", 1)],
        rows=96,
        columns=80,
        transfer_syntax=syntax,
    )
    return path.read_bytes()


@pytest.mark.parametrize("stored", [ExplicitVRLittleEndian, JPEGLSLossless, JPEG2000Lossless])
@pytest.mark.parametrize("target", [ExplicitVRLittleEndian, JPEGLSLossless, JPEG2000Lossless])
def test_round_trips_are_lossless(tmp_path: Path, stored: str, target: str) -> None:
    data = one_instance(tmp_path, stored)
    original = dcmread(BytesIO(data))
    out = transcode(data, target)
    result = dcmread(BytesIO(out))
    assert result.file_meta.TransferSyntaxUID == target
    assert result.SOPInstanceUID == original.SOPInstanceUID  # lossless: same instance
    assert result.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(result.pixel_array, original.pixel_array)
    back = dcmread(BytesIO(transcode(out, stored)))
    assert np.array_equal(back.pixel_array, original.pixel_array)
    if stored == target:
        assert out == data  # untouched bytes


def signed_instance(tmp_path: Path) -> bytes:
    """A CT stored as most are: signed 12-bit values (PixelRepresentation 1), negatives too."""
    ds = dcmread(BytesIO(one_instance(tmp_path, ExplicitVRLittleEndian)))
    values = ds.pixel_array.astype(np.int16) - 2048  # -2048…2047: BitsStored 12, signed
    ds.PixelRepresentation = 1
    ds.PixelData = values.astype("<i2").tobytes()
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("encoder", ["libjpeg-turbo", "dcmcjpeg"])
@pytest.mark.parametrize(
    "stored", [ExplicitVRLittleEndian, JPEGLSLossless, JPEG2000Lossless, "signed"]
)
def test_jpeg_lossless_sv1_is_real_and_decodes_bit_exact(
    tmp_path: Path, stored: str, encoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """.70 by libjpeg-turbo (imagecodecs, grayscale) or dcmcjpeg (colour): a lossless JPEG with
    selection value 1 (not imagecodecs' `ljpeg_encode`, predictor 6, i.e. .57), read back
    identical by pydicom (pylibjpeg-libjpeg) and by dcmtk, signed values included."""
    if encoder == "dcmcjpeg":
        monkeypatch.setattr(transcoding, "_sv1_in_process", lambda ds: False)
    data = signed_instance(tmp_path) if stored == "signed" else one_instance(tmp_path, stored)
    original = dcmread(BytesIO(data))
    out = transcode(data, JPEGLosslessSV1)
    result = dcmread(BytesIO(out))
    assert result.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    assert result.SOPInstanceUID == original.SOPInstanceUID
    assert "LossyImageCompression" not in result or result.LossyImageCompression == "00"
    [frame] = generate_frames(result.PixelData, number_of_frames=1)
    assert frame[:2] == b"\xff\xd8" and b"\xff\xc3" in frame  # SOF3: lossless process 14
    sos = frame.index(b"\xff\xda")
    components = frame[sos + 4]
    selection_value = frame[sos + 5 + 2 * components]
    assert selection_value == 1  # first-order prediction: SV1 (PS3.5 §A.4.3)
    assert len(out) < len(transcode(data, ExplicitVRLittleEndian)) * 0.8
    assert np.array_equal(result.pixel_array, original.pixel_array)
    encoded, decoded = tmp_path / "sv1.dcm", tmp_path / "plain.dcm"
    encoded.write_bytes(out)
    dcmdjpeg = require_tool("dcmdjpeg", "dcmtk")
    run = subprocess.run([dcmdjpeg, str(encoded), str(decoded)], capture_output=True, check=False)
    assert run.returncode == 0, run.stderr
    assert np.array_equal(dcmread(decoded).pixel_array, original.pixel_array)


def test_lossy_jpeg_2000_says_so(tmp_path: Path) -> None:
    data = one_instance(tmp_path, ExplicitVRLittleEndian)
    result = dcmread(BytesIO(transcode(data, JPEG2000)))
    assert result.file_meta.TransferSyntaxUID == JPEG2000
    assert result.LossyImageCompression == "01"
    assert result.LossyImageCompressionMethod == "ISO_15444_1"
    assert result.pixel_array.shape == dcmread(BytesIO(data)).pixel_array.shape


def test_generated_jpeg_ls_is_really_compressed(tmp_path: Path) -> None:
    plain = one_instance(tmp_path, ExplicitVRLittleEndian)
    jls = one_instance(tmp_path, JPEGLSLossless)
    assert len(jls) < len(plain) * 0.7
    assert np.array_equal(dcmread(BytesIO(jls)).pixel_array, dcmread(BytesIO(plain)).pixel_array)


def test_frames_and_renderings(tmp_path: Path) -> None:
    data = one_instance(tmp_path, JPEGLSLossless)
    [stored] = extract_frames(data, [1], stored_ok=True)
    assert stored.media_type == "image/jls" == frame_media_type(JPEGLSLossless)
    [native] = extract_frames(data, [1], stored_ok=False)
    assert native.transfer_syntax == ExplicitVRLittleEndian
    assert native.data == dcmread(BytesIO(data)).pixel_array.astype("<u2").tobytes()
    with pytest.raises(IndexError):
        extract_frames(data, [2], stored_ok=True)
    assert render(data).startswith(b"\xff\xd8")
    assert render(data, media_type="image/png", max_size=32).startswith(b"\x89PNG")
    with pytest.raises(TranscodeError):
        transcode(b"not dicom", JPEGLSLossless)
    with pytest.raises(TranscodeError):
        transcode(data, "1.2.840.10008.1.2.4.50")
