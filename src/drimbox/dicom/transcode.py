"""Transfer syntax conversion of Part-10 instances and frames, and image rendering.

Owns what the box can produce from the stored bytes and which of it a client gets: the syntax
with the highest product of the client's q-value and the box's own source quality (RFC 2295
§5.3 `qs`; the stored one on ties), among the stored syntax and the lossless re-encodings in
JPEG-LS (pyjpegls), JPEG Lossless SV1
(libjpeg-turbo through imagecodecs; dcmtk `dcmcjpeg` for colour), JPEG 2000 (pylibjpeg-openjpeg)
or Explicit VR Little Endian; lossy JPEG 2000 only when the client names it (never lossy unless
asked). Frame extraction for WADO-RS `/frames`, and JPEG/PNG renderings (`/rendered`,
`/thumbnail`). CPU-bound functions: callers run them off the event loop. It must not fetch
anything nor know who asks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Final

import imagecodecs
import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
)

from drimbox.http.accept import SyntaxAcceptance

# What the box can produce from any decodable instance, most compact first (ties in the client's
# q-values are broken by this order). All lossless: a transcoded image is the stored one.
PRODUCIBLE_SYNTAXES: tuple[str, ...] = (
    JPEGLSLossless,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    ExplicitVRLittleEndian,
)
# Lossy, produced only for a client that names the syntax itself (a wildcard never means lossy).
LOSSY_SYNTAXES: tuple[str, ...] = (JPEG2000,)
# JPEG 2000 lossy: a compression ratio of 10, visually lossless for CT/MR (what archives use).
_J2K_LOSSY_RATIO = 10

_UNCOMPRESSED = frozenset(
    {
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
    }
)
_ENCODERS: dict[str, str] = {JPEGLSLossless: "pyjpegls", JPEG2000Lossless: "pylibjpeg"}

# PS3.18 Table 8.7.3-2/3: the media type of a bare frame in each transfer syntax.
_FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
OCTET_STREAM = "application/octet-stream"


class TranscodeError(Exception):
    """The instance cannot be decoded or re-encoded (unsupported codec, corrupt pixel data)."""


def is_uncompressed(transfer_syntax: str) -> bool:
    return transfer_syntax in _UNCOMPRESSED


def candidate_syntaxes(acceptance: SyntaxAcceptance) -> tuple[str, ...]:
    """What the box may produce for this client: the lossless syntaxes, and the lossy ones it
    names explicitly."""
    lossy = tuple(s for s in LOSSY_SYNTAXES if acceptance.explicit.get(s, 0) > 0)
    return PRODUCIBLE_SYNTAXES + lossy


# The box's source quality of a compressed image re-encoded into another compressed syntax: a
# decode and an encode per image for no fewer bytes (JPEG-LS, what PACS store most, is already
# the most compact lossless syntax). The stored bytes, and re-encodings of uncompressed images
# (what saves bytes on the wire), count 1. So the official DRIM-M list (.70 at 0.9, .80 at 0.8)
# gets JPEG-LS images as stored (0.8 > 0.9 × 0.5) and uncompressed ones in JPEG Lossless.
RECOMPRESSION_QUALITY: Final = 0.5


def source_quality(stored: str, syntax: str) -> float:
    """How much the box itself prefers sending an image stored in `stored` as `syntax`."""
    if syntax == stored or is_uncompressed(stored) or is_uncompressed(syntax):
        return 1.0
    return RECOMPRESSION_QUALITY


def ranked_syntaxes(
    stored: str, acceptance: SyntaxAcceptance, pinned: str | None = None
) -> list[str]:
    """The syntaxes to try for an instance stored in `stored`, best first: the highest q × qs
    (`source_quality`); on ties the stored one (no work), then header order, then compactness.
    `pinned` (the syntax of the response's first part), when the client accepts it, comes
    first whatever it costs: every part of the response then shares it. Empty when the client
    accepts none (406)."""
    ranked: list[tuple[float, int, int, str]] = []
    for index, syntax in enumerate((stored, *candidate_syntaxes(acceptance))):
        q = acceptance.quality(syntax) * source_quality(stored, syntax)
        if q <= 0 or any(r[3] == syntax for r in ranked):
            continue
        if syntax == pinned:
            q = 2.0  # above any q × qs
        first = 0 if syntax == stored else 1
        position = (
            acceptance.order.index(syntax) if syntax in acceptance.order else len(acceptance.order)
        )
        ranked.append((-q, first * (1 + position), index, syntax))
    return [r[3] for r in sorted(ranked)]


def choose_syntax(stored: str, acceptance: SyntaxAcceptance) -> str | None:
    """The syntax an instance stored in `stored` is sent in (if its transcoding works); None
    when nothing fits (406)."""
    ranked = ranked_syntaxes(stored, acceptance)
    return ranked[0] if ranked else None


def uniform_syntax(first_stored: str, acceptance: SyntaxAcceptance) -> str | None:
    """The syntax every part of a response gets when its first instance is stored in
    `first_stored`: that instance's syntax, pinned for the others (see `ranked_syntaxes`), for a
    client that lists the syntaxes it accepts. None for a client that accepts any
    (`transfer-syntax=*`): each instance then goes as stored."""
    if acceptance.wildcard > 0:
        return None
    return choose_syntax(first_stored, acceptance)


def frame_media_type(transfer_syntax: str) -> str:
    return _FRAME_MEDIA_TYPES.get(transfer_syntax, OCTET_STREAM)


def _read(data: bytes) -> Dataset:
    try:
        return dcmread(BytesIO(data))
    except Exception as exc:  # pydicom raises many kinds on corrupt input
        raise TranscodeError(f"instance DICOM illisible : {exc}") from exc


def _encode(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def transcode(data: bytes, target: str) -> bytes:
    """Re-encode a Part-10 instance in `target` (one of PRODUCIBLE_SYNTAXES, or LOSSY_SYNTAXES
    when the client asked for it)."""
    if target not in PRODUCIBLE_SYNTAXES + LOSSY_SYNTAXES:
        raise TranscodeError(f"syntaxe de transfert {target} non produite par la DRIMbox")
    ds = _read(data)
    source = str(ds.file_meta.TransferSyntaxUID)
    if source == target:
        return data
    try:
        if "PixelData" not in ds:
            if target != ExplicitVRLittleEndian:
                raise TranscodeError("instance sans pixels : pas de compression d'image")
            # No image: only the encoding of the attributes changes.
            ds.file_meta.TransferSyntaxUID = UID(ExplicitVRLittleEndian)
            return _encode(ds)
        if not is_uncompressed(source) or source != ExplicitVRLittleEndian:
            # Lossless changes keep the SOP Instance UID (PS3.5 §10): pydicom would mint one.
            ds.decompress(generate_instance_uid=False)  # → Explicit VR LE, native pixels
        if target == JPEGLosslessSV1:
            if _sv1_in_process(ds):
                return _encode(ds)
            return _dcmcjpeg(_encode(ds) if source != ExplicitVRLittleEndian else data)
        if target == JPEG2000:
            # The viewer's references (metadata, KOS) name this instance: its UID is kept,
            # and the image says it was lossy compressed (PS3.3 C.7.6.1.1.5).
            ds.compress(UID(target), encoding_plugin="pylibjpeg", generate_instance_uid=False,
                        j2k_cr=[_J2K_LOSSY_RATIO])  # fmt: skip
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionRatio = _J2K_LOSSY_RATIO
            ds.LossyImageCompressionMethod = "ISO_15444_1"
            return _encode(ds)
        if target != ExplicitVRLittleEndian:
            ds.compress(UID(target), encoding_plugin=_ENCODERS[target], generate_instance_uid=False)
        return _encode(ds)
    except TranscodeError:
        raise
    except Exception as exc:  # codec plugins raise RuntimeError, ValueError, NotImplementedError…
        raise TranscodeError(f"transcodage {source} → {target} impossible : {exc}") from exc


def _sv1_in_process(ds: Dataset) -> bool:
    """Re-encode `ds` (native pixels) in JPEG Lossless SV1 with libjpeg-turbo 3 (imagecodecs
    `jpeg8_encode`, lossless, predictor 1), in this process and without the GIL: ~2× faster
    than a dcmcjpeg process per image. Grayscale only (False: left to dcmcjpeg)."""
    bits = int(ds.BitsStored)
    if int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.BitsAllocated) not in (8, 16):
        return False
    if not 2 <= bits <= 16:
        return False
    count = int(ds.get("NumberOfFrames", 1) or 1)
    native = np.frombuffer(bytes(ds.PixelData), dtype=f"<u{int(ds.BitsAllocated) // 8}")
    frames = native[: count * int(ds.Rows) * int(ds.Columns)].reshape(
        count, int(ds.Rows), int(ds.Columns)
    )
    # JPEG has no sign: the samples are the stored bit patterns, BitsStored wide (PS3.5 §8.2.1;
    # the decoder sign-extends them by PixelRepresentation), bits above BitsStored dropped.
    frames = frames & ((1 << bits) - 1)
    dtype = np.uint8 if bits <= 8 else np.uint16
    encoded = [
        bytes(
            imagecodecs.jpeg8_encode(
                np.ascontiguousarray(frame, dtype=dtype),
                lossless=True,
                predictor=1,
                bitspersample=bits,
            )
        )
        for frame in frames
    ]
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = UID(JPEGLosslessSV1)
    return True


def _dcmcjpeg(data: bytes) -> bytes:
    """JPEG Lossless, Non-Hierarchical, First-Order Prediction (Selection Value 1) by dcmtk's
    `dcmcjpeg` (its default, +e1 true lossless): neither pydicom's encoders nor imagecodecs
    (`ljpeg_encode` writes predictor 6, i.e. .57) produce .70. The SOP Instance UID is kept."""
    dcmcjpeg = shutil.which("dcmcjpeg")
    if dcmcjpeg is None:
        raise TranscodeError("dcmcjpeg (dcmtk) introuvable : JPEG Lossless non produit")
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else None  # memory, not the disk
    with tempfile.TemporaryDirectory(prefix="drimbox-jpeg-", dir=folder) as work:
        source, target = os.path.join(work, "in.dcm"), os.path.join(work, "out.dcm")
        with open(source, "wb") as out:
            out.write(data)
        run = subprocess.run(
            [dcmcjpeg, "+e1", "+un", source, target], capture_output=True, timeout=120, check=False
        )
        if run.returncode != 0:
            error = run.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise TranscodeError(f"dcmcjpeg a échoué : {error[0]}")
        with open(target, "rb") as result:
            return result.read()


@dataclass(frozen=True)
class Frame:
    data: bytes
    transfer_syntax: str
    media_type: str


def _frame_length(ds: Dataset) -> int:
    bits = int(ds.BitsAllocated)
    samples = int(ds.get("SamplesPerPixel", 1))
    return int(ds.Rows) * int(ds.Columns) * samples * bits // 8


def extract_frames(data: bytes, numbers: Sequence[int], *, stored_ok: bool) -> list[Frame]:
    """Frames `numbers` (1-based) of an instance: as stored when `stored_ok` (the client
    accepts the stored syntax), else decoded to native little-endian pixels."""
    ds = _read(data)
    if "PixelData" not in ds:
        raise TranscodeError("cette instance n'a pas de pixels")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    bad = [n for n in numbers if not 1 <= n <= count]
    if bad:
        raise IndexError(f"trame(s) {bad} hors de 1…{count}")
    syntax = str(ds.file_meta.TransferSyntaxUID)
    try:
        if stored_ok and not is_uncompressed(syntax):
            frames = list(generate_frames(ds.PixelData, number_of_frames=count))
            return [Frame(frames[n - 1], syntax, frame_media_type(syntax)) for n in numbers]
        if stored_ok and syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            size = _frame_length(ds)
            raw = bytes(ds.PixelData)
            return [
                Frame(raw[(n - 1) * size : n * size], ExplicitVRLittleEndian, OCTET_STREAM)
                for n in numbers
            ]
        out: list[Frame] = []
        for n in numbers:
            array = pixel_array(ds, index=n - 1)
            little = array.astype(array.dtype.newbyteorder("<"), copy=False)
            out.append(Frame(little.tobytes(), ExplicitVRLittleEndian, OCTET_STREAM))
        return out
    except (IndexError, TranscodeError):
        raise
    except Exception as exc:
        raise TranscodeError(f"trames illisibles : {exc}") from exc


def render(
    data: bytes, *, frame: int = 1, media_type: str = "image/jpeg", max_size: int | None = None
) -> bytes:
    """A display rendering (PS3.18 §8.3.5.1.2): modality LUT, the instance's window (or its full
    range), MONOCHROME1 inverted, 8-bit JPEG or PNG, scaled down to `max_size` pixels."""
    from PIL import Image  # imported lazily: only renderings need Pillow

    ds = _read(data)
    if "PixelData" not in ds:
        raise TranscodeError("cette instance n'a pas de pixels")
    try:
        array: npt.NDArray[Any] = pixel_array(ds, index=frame - 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        if int(ds.get("SamplesPerPixel", 1)) == 1:
            values = apply_modality_lut(array, ds)
            if "WindowCenter" in ds and "WindowWidth" in ds:
                values = apply_voi_lut(values, ds, prefer_lut=False)
            values = np.asarray(values, dtype=np.float64)
            low, high = float(values.min()), float(values.max())
            scaled = (values - low) / (high - low) * 255.0 if high > low else values * 0.0
            image8 = scaled.clip(0, 255).astype(np.uint8)
            if photometric == "MONOCHROME1":
                image8 = 255 - image8
            image = Image.fromarray(image8, mode="L")
        else:
            image = Image.fromarray(array.astype(np.uint8), mode="RGB")
        if max_size is not None:
            image.thumbnail((max_size, max_size))
        out = BytesIO()
        image.save(out, format="PNG" if media_type == "image/png" else "JPEG", quality=90)
        return out.getvalue()
    except Exception as exc:
        raise TranscodeError(f"rendu impossible : {exc}") from exc
