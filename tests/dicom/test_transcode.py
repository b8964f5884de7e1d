"""Lossless transcoding: pixel data identical after every round trip, UIDs kept."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless

from drimbox.dicom.transcode import (
    TranscodeError,
    extract_frames,
    frame_media_type,
    render,
    transcode,
)
from drimbox.sim.studies import SeriesSpec, generate_study


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
