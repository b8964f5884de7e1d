"""Synthetic DICOM studies: real Part-10 image files for the demo, the tests and the benchmarks.

Owns the writing of CT / MR / CR / DX instances whose Type 1 and Type 2 attributes are present
(dciodvfy-clean) and whose pixels look like a body phantom (ellipses + noise, HU-like values) so
that compression codecs and transfer benchmarks see realistic data, or like a head (a 3D
Shepp–Logan-style phantom of tissues: scalp, skull, grey and white matter, ventricles, a
lesion) in the contrasts a radiologist reads (CT brain/bone windows, with or without contrast;
MR T1, T2, FLAIR, T1 after gadolinium), for the demo. It writes files only: it must
not talk to a PACS (see `drimbox.sim.orthanc`) and is never used by the production code paths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    generate_uid,
)

from drimbox.cda.model import ImagingReport
from drimbox.dicom.kos import INS_ISSUERS

# A demo root: fine for synthetic data, never for a site's real objects (those use the site root).
DEFAULT_UID_ROOT = "1.2.826.0.1.3680043.8.498.77"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.77.0.1"

_SOP_CLASSES: dict[str, UID] = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "CR": ComputedRadiographyImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
}
# Uncompressed, or lossless compressed as PACS commonly store CT/MR (JPEG-LS: ~3.5:1 on the
# phantom, which is what makes transfer benchmarks realistic).
SUPPORTED_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    {ExplicitVRLittleEndian, JPEGLSLossless, JPEG2000Lossless}
)


@dataclass(frozen=True)
class SeriesSpec:
    """One series to generate: `count` instances of `modality` (CT, MR, CR or DX).

    `weighting` asks for the head phantom (CT or MR, `body_part` HEAD), in one of
    `HEAD_WEIGHTINGS`; empty, the body phantom."""

    modality: str
    description: str
    count: int
    series_uid: str | None = None
    body_part: str = ""
    weighting: str = ""


@dataclass(frozen=True)
class _Weighting:
    """What one head series looks like: the value of each tissue (CT: HU), its window, and
    for MR the sequence written in the header."""

    values: Mapping[str, float]
    window: tuple[float, float]  # centre, width
    sequence: tuple[str, float, float] = ("", 0.0, 0.0)  # scanning sequence, TR, TE (ms)
    inversion_ms: float = 0.0
    contrast_agent: str = ""


# Tissues: air, scalp, skull, grey matter, white matter, CSF, lesion (an extra-axial mass that
# enhances, as a meningioma does), vessels (sinuses: they enhance too).
_TISSUES = ("air", "scalp", "skull", "grey", "white", "csf", "lesion", "vessel")


def _values(*values: float) -> dict[str, float]:
    """Each tissue's value, in the order of `_TISSUES`."""
    return dict(zip(_TISSUES, values, strict=True))


_CT = _values(-1000, 30, 1800, 38, 28, 6, 45, 45)  # HU
_T1 = _values(0, 1700, 80, 700, 950, 250, 680, 300)
HEAD_WEIGHTINGS: dict[str, _Weighting] = {
    "CT": _Weighting(_CT, (40, 80)),
    "CT+C": _Weighting({**_CT, "lesion": 95, "vessel": 160}, (40, 80), contrast_agent="Iohexol"),
    "CT bone": _Weighting(_CT, (600, 2800)),
    "T1": _Weighting(_T1, (700, 1400), ("SE", 500, 12)),
    "T2": _Weighting(
        _values(0, 900, 60, 1100, 750, 2300, 1300, 150), (1100, 2200), ("SE", 4500, 100)
    ),
    "FLAIR": _Weighting(
        _values(0, 800, 60, 1050, 800, 120, 1600, 120),
        (950, 1700),
        ("IR", 9000, 110),
        inversion_ms=2500,
    ),
    "T1+C": _Weighting(
        {**_T1, "lesion": 1900, "vessel": 1600},
        (900, 1800),
        ("SE", 500, 12),
        contrast_agent="Gadotérate de méglumine",
    ),
}
# (tissue, semi-axes a b c, centre x y z, rotation about z in degrees), painted in order: the
# first two and the ventricles follow the 3D Shepp–Logan phantom (x: left-right, y: anterior at
# the top of the image, z: towards the vertex, in half-fields of view).
_HEAD: tuple[tuple[str, float, float, float, float, float, float, float], ...] = (
    ("scalp", 0.74, 0.97, 0.86, 0, 0, 0, 0),
    ("skull", 0.70, 0.93, 0.82, 0, 0, 0, 0),
    ("csf", 0.645, 0.865, 0.77, 0, -0.0184, 0, 0),  # the subarachnoid space
    ("cortex", 0.635, 0.852, 0.76, 0, -0.0184, 0, 0),  # grey matter, with sulci
    ("white", 0.585, 0.80, 0.70, 0, -0.0184, 0, 0),  # with gyri
    ("grey", 0.08, 0.13, 0.15, 0.25, 0.0, 0.05, 0),  # deep grey nuclei
    ("grey", 0.08, 0.13, 0.15, -0.25, 0.0, 0.05, 0),
    ("csf", 0.09, 0.31, 0.22, 0.1, -0.05, 0.12, -10),  # lateral ventricles
    ("csf", 0.09, 0.31, 0.22, -0.1, -0.05, 0.12, 10),
    ("csf", 0.015, 0.06, 0.1, 0, 0.1, 0.03, 0),  # third ventricle
    ("scalp", 0.2, 0.14, 0.13, 0.3, -0.8, -0.32, 0),  # orbits (fat) and eyes
    ("scalp", 0.2, 0.14, 0.13, -0.3, -0.8, -0.32, 0),
    ("csf", 0.11, 0.11, 0.11, 0.3, -0.83, -0.32, 0),
    ("csf", 0.11, 0.11, 0.11, -0.3, -0.83, -0.32, 0),
    ("vessel", 0.035, 0.035, 0.6, 0, 0.86, 0.1, 0),  # superior sagittal sinus
    ("lesion", 0.15, 0.13, 0.16, -0.4, -0.45, 0.2, 0),  # right frontal (left of the image)
)
# The midline fissure (CSF) between the hemispheres, |x| under this, in front and behind.
_FISSURE = 0.012
_GYRI = 18  # folds around the brain's circumference


def _uid(root: str, *parts: str) -> str:
    """Deterministic UID under `root`: the same inputs always give the same study on disk."""
    return str(generate_uid(prefix=root + ".", entropy_srcs=list(parts)))


class _Phantom:
    """Cheap slice generator: coordinate grids and a small noise bank are computed once."""

    def __init__(self, rows: int, columns: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
        self.y = (y - rows / 2) / (rows / 2)
        self.x = (x - columns / 2) / (columns / 2)
        # Integer noise frames, rolled per slice: realistic entropy without a RNG call per image.
        self.noise = rng.normal(0.0, 12.0, size=(4, rows, columns)).astype(np.int16)
        self._sections: dict[float, npt.NDArray[np.uint8]] = {}

    def head_slice(self, z: float, weighting: _Weighting, offset: float) -> npt.NDArray[np.uint16]:
        """An axial section of the head at height `z` (half-fields of view, towards the
        vertex): each tissue at its value in `weighting`, edges softened as partial volume
        does, plus noise."""
        lut = np.array([weighting.values[t] for t in _TISSUES], dtype=np.float32)
        img = lut[self._head_tissues(z)]
        # Partial volume: a 3x3 box blur of the sharp tissue map.
        padded = np.pad(img, 1, mode="edge")
        rows, columns = img.shape
        blurred = np.zeros_like(img)
        for i in range(3):
            for j in range(3):
                blurred += padded[i : i + rows, j : j + columns]
        ct = not weighting.sequence[0]
        return self._finish(blurred / 9.0 + offset, z, 4095, noise_scale=0.3 if ct else 1.0)

    def _head_tissues(self, z: float) -> npt.NDArray[np.uint8]:
        """The section's tissue map (indices in `_TISSUES`), kept: the series of a study
        (plain, injected, bone window; T1, T2…) cut the same sections."""
        cached = self._sections.get(z)
        if cached is not None:
            return cached
        x, y = self.x, self.y
        index = {tissue: i for i, tissue in enumerate(_TISSUES)}
        tissues = np.zeros(x.shape, dtype=np.uint8)  # air
        brain = np.zeros(x.shape, dtype=bool)
        for tissue, a, b, c, x0, y0, z0, angle in _HEAD:
            dz = (z - z0) / c
            if dz * dz >= 1.0:
                continue
            cos, sin = np.cos(np.radians(angle)), np.sin(np.radians(angle))
            u, v = ((x - x0) * cos + (y - y0) * sin) / a, ((y - y0) * cos - (x - x0) * sin) / b
            radius = np.sqrt(u * u + v * v + dz * dz)
            inside = radius <= 1.0
            if tissue in ("cortex", "white"):
                # Folds, irregular and shifting from slice to slice: g = 1 on a gyrus' crown,
                # -1 at the depth of a sulcus; depths measured in this section's own ellipse.
                theta = np.arctan2(v, u)
                g = np.cos(_GYRI * theta + 2.5 * np.sin(5.0 * theta + 3.0 * z) + 6.0 * z)
                in_plane = np.sqrt(u * u + v * v) / np.sqrt(1.0 - dz * dz)
                if tissue == "white":
                    inside &= in_plane <= 1.0 - 0.14 * (1.0 - g) / 2.0
                else:
                    brain = inside
            tissues[inside] = index["grey" if tissue == "cortex" else tissue]
            if tissue == "cortex":
                tissues[inside & (g < -0.8) & (in_plane > 0.86)] = index["csf"]  # sulci
            if tissue == "white":  # the fissure between the hemispheres
                fissure = brain & (np.abs(x) < _FISSURE) & ((y < -0.3) | (y > 0.42))
                tissues[fissure] = index["csf"]
        self._sections[z] = tissues
        return tissues

    def ct_slice(self, z: float) -> npt.NDArray[np.uint16]:
        """HU + 1024 (RescaleIntercept -1024): air, soft tissue body, lungs, a spine-like bone."""
        x, y = self.x, self.y
        hu = np.full(x.shape, -1000.0, dtype=np.float32)
        squash = 1.0 - 0.25 * z * z  # the body narrows towards both ends of the volume
        body = (x / (0.85 * squash)) ** 2 + (y / (0.6 * squash)) ** 2 <= 1.0
        hu[body] = 40.0
        for cx in (-0.38, 0.38):
            lung = ((x - cx) / 0.28) ** 2 + ((y + 0.05) / (0.42 * squash)) ** 2 <= 1.0
            hu[lung & body] = -850.0
        bone = (x / 0.1) ** 2 + ((y - 0.42) / 0.1) ** 2 <= 1.0
        hu[bone] = 700.0 + 200.0 * z
        return self._finish(hu + 1024.0, z, 4095)

    def mr_slice(self, z: float) -> npt.NDArray[np.uint16]:
        x, y = self.x, self.y
        sig = np.zeros(x.shape, dtype=np.float32)
        r = 0.8 * (1.0 - 0.3 * z * z)
        head = (x / r) ** 2 + (y / (1.15 * r)) ** 2 <= 1.0
        sig[head] = 900.0
        brain = (x / (0.88 * r)) ** 2 + (y / (1.0 * r)) ** 2 <= 1.0
        sig[brain] = 600.0
        ventricles = (np.abs(x) - 0.12) ** 2 / 0.01 + (y / (0.3 * r)) ** 2 <= 1.0
        sig[ventricles & brain] = 1800.0
        return self._finish(sig, z, 4095)

    def projection(self, z: float) -> npt.NDArray[np.uint16]:
        """A radiograph-like image: soft tissue gradient and denser structures."""
        x, y = self.x, self.y
        img = 300.0 + 600.0 * np.exp(-(x * x) * 1.5).astype(np.float32)
        for cx in (-0.4, 0.4):
            img += 1200.0 * (((x - cx) / 0.3) ** 2 + (y / 0.6) ** 2 <= 1.0)
        img += 1500.0 * ((x / 0.07) ** 2 <= 1.0)
        return self._finish(img, z, 4095)

    def _finish(
        self,
        img: npt.NDArray[np.floating[Any]],
        z: float,
        max_value: int,
        noise_scale: float = 1.0,  # CT of the brain: ~4 HU, not the body's 12
    ) -> npt.NDArray[np.uint16]:
        k = int(abs(z) * 1000)
        noise = np.roll(self.noise[k % len(self.noise)], shift=k % 97, axis=1)
        if noise_scale != 1.0:
            noise = (noise * noise_scale).astype(np.int16)
        out = img.astype(np.int32) + noise
        clipped: npt.NDArray[np.uint16] = np.clip(out, 0, max_value).astype(np.uint16)
        return clipped


def _encode_pixels(ds: Dataset, pixels: npt.NDArray[np.uint16], transfer_syntax: str) -> None:
    """Set PixelData (and the encapsulation attributes) in `transfer_syntax`."""
    if transfer_syntax == ExplicitVRLittleEndian:
        ds.PixelData = pixels.astype("<u2").tobytes()
        return
    if transfer_syntax == JPEGLSLossless:
        ds.compress(JPEGLSLossless, pixels, encoding_plugin="pyjpegls", generate_instance_uid=False)
        return
    if transfer_syntax == JPEG2000Lossless:
        ds.compress(
            JPEG2000Lossless, pixels, encoding_plugin="pylibjpeg", generate_instance_uid=False
        )
        return
    raise ValueError(f"transfer syntax {transfer_syntax} is not supported yet")


def generate_study(
    out_dir: Path,
    *,
    patient_id: str,
    patient_name: str,
    birth_date: str,
    sex: str,
    study_uid: str,
    accession: str,
    series: Sequence[SeriesSpec],
    issuer_of_patient_id: str = "",
    other_patient_ids: Sequence[tuple[str, str]] = (),
    study_date: str = "20240115",
    study_time: str = "093000",
    study_description: str = "",
    rows: int = 256,
    columns: int = 256,
    uid_root: str = DEFAULT_UID_ROOT,
    transfer_syntax: str = ExplicitVRLittleEndian,
    institution_name: str = "DRIMbox demo site",
) -> list[Path]:
    """Write one Part-10 file per instance under `out_dir/<series n>/` and return their paths.

    `other_patient_ids` holds `(id, issuer)` pairs written to OtherPatientIDsSequence (e.g. the
    IPP next to an INS PatientID). UIDs not given are derived deterministically from
    `uid_root`, the study UID and the series/instance position, so regenerating gives the
    same study. Pixels are 16-bit allocated, 12-bit stored monochrome.
    """
    if transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise ValueError(f"transfer syntax {transfer_syntax} is not supported yet")
    for spec in series:
        if spec.modality not in _SOP_CLASSES:
            raise ValueError(
                f"modality {spec.modality!r} is not supported "
                f"(choose among {', '.join(sorted(_SOP_CLASSES))})"
            )
        if spec.count < 1:
            raise ValueError(f"series {spec.description!r} needs at least one instance")
        if spec.weighting and (
            spec.weighting not in HEAD_WEIGHTINGS
            or (spec.modality == "CT") != spec.weighting.startswith("CT")
        ):
            raise ValueError(
                f"weighting {spec.weighting!r} does not fit a {spec.modality} series "
                f"(choose among {', '.join(HEAD_WEIGHTINGS)})"
            )

    out_dir.mkdir(parents=True, exist_ok=True)
    phantom = _Phantom(rows, columns, seed=len(study_uid))
    paths: list[Path] = []
    for series_index, spec in enumerate(series, start=1):
        series_uid = spec.series_uid or _uid(uid_root, study_uid, "series", str(series_index))
        frame_uid = _uid(uid_root, series_uid, "frame")
        series_dir = out_dir / f"S{series_index:03d}"
        series_dir.mkdir(exist_ok=True)
        common = _common_dataset(
            patient_id=patient_id,
            patient_name=patient_name,
            birth_date=birth_date,
            sex=sex,
            issuer_of_patient_id=issuer_of_patient_id,
            other_patient_ids=other_patient_ids,
            study_uid=study_uid,
            accession=accession,
            study_date=study_date,
            study_time=study_time,
            study_description=study_description,
            institution_name=institution_name,
        )
        for i in range(spec.count):
            sop_uid = _uid(uid_root, series_uid, "instance", str(i + 1))
            ds = Dataset()
            ds.update(common)
            ds.SOPClassUID = _SOP_CLASSES[spec.modality]
            ds.SOPInstanceUID = sop_uid
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = series_index
            ds.SeriesDescription = spec.description
            ds.SeriesDate = study_date
            ds.SeriesTime = study_time
            ds.Modality = spec.modality
            ds.InstanceNumber = i + 1
            ds.ContentDate = study_date
            ds.ContentTime = study_time
            ds.AcquisitionNumber = 1
            if spec.body_part:
                ds.BodyPartExamined = spec.body_part
            pixels = _add_modality_attributes(ds, spec, i, phantom, frame_uid, rows, columns)
            ds.Rows = rows
            ds.Columns = columns
            ds.SamplesPerPixel = 1
            ds.BitsAllocated = 16
            ds.BitsStored = 12
            ds.HighBit = 11
            ds.PixelRepresentation = 0
            _encode_pixels(ds, pixels, transfer_syntax)

            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = UID(sop_uid)
            meta.TransferSyntaxUID = UID(transfer_syntax)
            meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
            meta.ImplementationVersionName = "DRIMBOX_SIM"
            ds.file_meta = meta
            path = series_dir / f"I{i + 1:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def _common_dataset(
    *,
    patient_id: str,
    patient_name: str,
    birth_date: str,
    sex: str,
    issuer_of_patient_id: str,
    other_patient_ids: Sequence[tuple[str, str]],
    study_uid: str,
    accession: str,
    study_date: str,
    study_time: str,
    study_description: str,
    institution_name: str,
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: French names carry accents
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    if issuer_of_patient_id:
        ds.IssuerOfPatientID = issuer_of_patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    if other_patient_ids:
        items = []
        for other_id, issuer in other_patient_ids:
            item = Dataset()
            item.PatientID = other_id
            item.IssuerOfPatientID = issuer
            item.TypeOfPatientID = "TEXT"
            items.append(item)
        ds.OtherPatientIDsSequence = items
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.StudyDescription = study_description
    ds.StudyID = "1"
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "DRIMbox simulator"
    ds.InstitutionName = institution_name
    return ds


def _add_modality_attributes(
    ds: Dataset,
    spec: SeriesSpec,
    index: int,
    phantom: _Phantom,
    frame_uid: str,
    rows: int,
    columns: int,
) -> npt.NDArray[np.uint16]:
    """Add the modality-specific module attributes and return the pixel array."""
    count = spec.count
    # z in [-1, 1] along the volume: drives the phantom's shape so slices differ.
    z = 0.0 if count == 1 else 2.0 * index / (count - 1) - 1.0
    if spec.weighting:
        return _head_attributes(ds, spec, z, phantom, frame_uid, rows, columns)
    if spec.modality in ("CT", "MR"):
        thickness = 1.25 if spec.modality == "CT" else 4.0
        spacing = 350.0 / columns if spec.modality == "CT" else 230.0 / columns
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        ds.Laterality = ""  # Type 2C; dciodvfy errors when absent, only warns when empty
        ds.SliceThickness = thickness
        ds.PixelSpacing = [round(spacing, 6), round(spacing, 6)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [
            round(-spacing * columns / 2, 3),
            round(-spacing * rows / 2, 3),
            round(-index * thickness, 3),
        ]
        ds.SliceLocation = round(-index * thickness, 3)
        ds.PhotometricInterpretation = "MONOCHROME2"
        if spec.modality == "CT":
            ds.KVP = 120
            ds.RescaleIntercept = -1024
            ds.RescaleSlope = 1
            ds.RescaleType = "HU"
            ds.WindowCenter = 40
            ds.WindowWidth = 400
            return phantom.ct_slice(z)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = 500
        ds.EchoTime = 15
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = 1.5
        ds.WindowCenter = 900
        ds.WindowWidth = 1800
        return phantom.mr_slice(z)

    # Projection radiography: no image plane, hence PatientOrientation (Type 2C) is required.
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ["L", "F"]
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.ViewPosition = "PA"
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    if "BodyPartExamined" not in ds:
        ds.BodyPartExamined = "CHEST"
    if spec.modality == "CR":
        ds.ImagerPixelSpacing = [0.2, 0.2]
        return phantom.projection(z)
    # DX For Presentation (PS3.3 A.26): its mandatory modules' Type 1 attributes.
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.PositionerType = ""
    ds.AcquisitionContextSequence = []
    view = Dataset()
    view.CodeValue = "399348003"
    view.CodingSchemeDesignator = "SCT"
    view.CodeMeaning = "postero-anterior"
    ds.ViewCodeSequence = [view]
    ds.ImageLaterality = "U"
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    anatomy = Dataset()
    anatomy.CodeValue = "51185008"
    anatomy.CodingSchemeDesignator = "SCT"
    anatomy.CodeMeaning = "Thorax"
    ds.AnatomicRegionSequence = [anatomy]
    return phantom.projection(z)


# The head stack, from the skull base to the vertex (half-fields of view, see `_HEAD`).
_HEAD_Z = (-0.45, 0.62)
_HEAD_FOV_MM = 220.0


def _head_attributes(
    ds: Dataset,
    spec: SeriesSpec,
    z: float,
    phantom: _Phantom,
    frame_uid: str,
    rows: int,
    columns: int,
) -> npt.NDArray[np.uint16]:
    """An axial section of the head phantom, with the geometry and the acquisition attributes
    of its weighting; CT and MR of one patient share one anatomy (same phantom, same field)."""
    weighting = HEAD_WEIGHTINGS[spec.weighting]
    level = _HEAD_Z[1] - (z + 1.0) / 2.0 * (_HEAD_Z[1] - _HEAD_Z[0])  # from the vertex down
    half_fov = _HEAD_FOV_MM / 2.0
    thickness = (_HEAD_Z[1] - _HEAD_Z[0]) * half_fov / max(spec.count - 1, 1)
    spacing = _HEAD_FOV_MM / columns
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = spec.body_part or "HEAD"  # unpaired: no Laterality
    ds.SliceThickness = round(thickness, 3)
    ds.PixelSpacing = [round(spacing, 6), round(spacing, 6)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    height = round(level * half_fov, 3)  # patient z (LPS): towards the head is positive
    ds.ImagePositionPatient = [round(-spacing * columns / 2, 3), round(-spacing * rows / 2, 3),
                               height]  # fmt: skip
    ds.SliceLocation = height
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth = weighting.window
    if weighting.contrast_agent:
        ds.ContrastBolusAgent = weighting.contrast_agent
    if spec.modality == "CT":
        ds.KVP = 120
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        if spec.weighting == "CT bone":
            ds.ConvolutionKernel = "BONE"
        return phantom.head_slice(level, weighting, 1024.0)
    sequence, repetition, echo = weighting.sequence
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence = sequence
    ds.SequenceVariant = "SK" if sequence == "IR" else "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = repetition
    ds.EchoTime = echo
    if weighting.inversion_ms:
        ds.InversionTime = weighting.inversion_ms
    ds.EchoTrainLength = 1 if sequence == "SE" and repetition < 1000 else 16
    ds.MagneticFieldStrength = 1.5
    return phantom.head_slice(level, weighting, 0.0)


def generate_study_for_report(
    out_dir: Path,
    report: ImagingReport,
    series: Sequence[SeriesSpec],
    **overrides: Any,
) -> list[Path]:
    """A study that matches a CDA report (patient, study UID, accession), as the PACS would hold
    it for that report; `overrides` change any `generate_study` argument (e.g. to make a study
    whose patient does not match)."""
    patient = report.patient
    arguments: dict[str, Any] = {
        "patient_id": patient.ins,
        "patient_name": patient.name.to_dicom(),
        "birth_date": patient.birth_date.strftime("%Y%m%d") if patient.birth_date else "",
        "sex": patient.sex if patient.sex in ("M", "F") else "O",
        "study_uid": report.study_instance_uid,
        "accession": report.accession_number.extension if report.accession_number else "",
        "issuer_of_patient_id": INS_ISSUERS.get(patient.ins_oid, ""),
        "other_patient_ids": [(patient.ipp.extension, patient.ipp.root)] if patient.ipp else [],
        "study_description": report.act_code.display_name if report.act_code else "",
    }
    if report.service_start is not None:
        arguments["study_date"] = report.service_start.strftime("%Y%m%d")
        arguments["study_time"] = report.service_start.strftime("%H%M%S")
    arguments.update(overrides)
    return generate_study(out_dir, series=series, **arguments)
