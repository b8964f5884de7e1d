"""Parsers of untrusted input under fuzzing: a bounded coverage-guided run (atheris) per parser,
seeded with the official samples, and property tests (hypothesis) on mutated samples. Only each
parser's expected refusals may come out; a refusal marked `InternalError` (the parser caught its
own bug) is a finding. Each run is shown able to fail: a bug injected into each parser makes its
fuzz target and its property test report it."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from drimbox.cda import CdaError, parse_report
from drimbox.conso.common import ConsoError
from drimbox.conso.history import read_manifest
from drimbox.dicom.cfind import encode_message
from drimbox.dmp.soap import SoapError, SoapFault, body_of
from drimbox.errors import refusals_only
from drimbox.http.multipart import closing, part_header
from drimbox.samples import ans_file
from drimbox.selftest import sample_kos
from support.samples import hl7_text, with_cda

ROOT = Path(__file__).parents[2]
# A two-part body with the fuzz target's boundary: one part with a Content-Length, one without.
MULTIPART_BODY = (
    part_header("b0und", "application/dicom", 4) + b"DICM"
    + b"\r\n" + part_header("b0und", "application/dicom") + b"\r\n--b0un\r\n"
    + closing("b0und")
)  # fmt: skip
# The official CDA with its PDF cut to a few bytes: whole and well-formed, small enough to fuzz.
SMALL_CDA = re.sub(rb'(representation="B64">)[^<]+', rb"\1JVBERi0xLjQK",
                   ans_file("cda/CR_C.xml").read_bytes())  # fmt: skip


def cfind_stream(*, explicit: bool) -> bytes:
    """Two pending C-FIND answers (one with a sequence) and the final Success, as a PACS sends
    them on presentation context 1."""
    stream = b""
    for number in (1, 2, 0):
        response = C_FIND()
        response.MessageIDBeingRespondedTo = 1
        response.AffectedSOPClassUID = StudyRootQueryRetrieveInformationModelFind
        response.Status = 0xFF00 if number else 0x0000
        if number:
            ds = Dataset()
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.SOPInstanceUID, ds.InstanceNumber = f"1.2.3.{number}", number
            ds.PatientName = "LÉGER^ÉLODIE"
            if number == 2:
                ds.OtherPatientIDsSequence = [Dataset()]
                ds.OtherPatientIDsSequence[0].PatientID = "IPP9"
            response.Identifier = BytesIO(encode(ds, not explicit, True))
        stream += encode_message(response, 1, 16384)
    return stream


def cget_stream() -> bytes:
    """A C-GET as a PACS streams it: two C-STORE-RQs on context 3 (explicit VR little endian
    CT), a pending C-GET-RSP between them and the final Success, on context 1."""
    stream = b""
    for number in (1, 2):
        request = C_STORE()
        request.MessageID = number
        request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        request.AffectedSOPInstanceUID = f"1.2.3.{number}"
        request.Priority = 2
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = request.AffectedSOPClassUID, f"1.2.3.{number}"
        ds.PixelData = bytes(64)
        ds["PixelData"].VR = "OB"
        request.DataSet = BytesIO(encode(ds, False, True))
        stream += encode_message(request, 3, 16384)
        response = C_GET()
        response.MessageIDBeingRespondedTo = 1
        response.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.3"
        response.Status = 0xFF00 if number == 1 else 0x0000
        response.NumberOfRemainingSuboperations = 2 - number
        response.NumberOfCompletedSuboperations = number
        response.NumberOfFailedSuboperations = 0
        response.NumberOfWarningSuboperations = 0
        stream += encode_message(response, 1, 16384)
    return stream


SEEDS = {
    "hl7": [with_cda(hl7_text("CR_C-ORU.hl7"), SMALL_CDA).encode(),
            hl7_text("CR_W_Suppression-OMI.hl7").encode()],
    "cda": [SMALL_CDA],
    "kos": [sample_kos()],  # and the official KOS, written by `_seed_corpus`
    "soap": [ans_file("validators/XDS.xml").read_bytes()],
    "whitelist": [ans_file("whitelist/LISTEBLANCHE_DRIM-M_SIGNEE_TEST.xml").read_bytes()],
    "accept": [ans_file("validators/wado-rs-series-request.txt").read_bytes().splitlines()[1]],
    "launch": [b"Patient.identifier.value=279035121518989"
               b"&Patient.identifier.system=urn%3Aoid%3A1.2.250.1.213.1.4.10"],
    # byte 0: framing = byte % 3 (0 length, 1 chunked, 2 close), bit 7 set: socket-like
    # filling; byte 1: piece size - 1; then the stream
    "multipart": [bytes([0, 6]) + MULTIPART_BODY,
                  bytes([129, 40]) + MULTIPART_BODY,
                  bytes([130, 255]) + b"%x;x=y\r\n" % len(MULTIPART_BODY) + MULTIPART_BODY
                  + b"\r\n0\r\nX-T: 1\r\n\r\n",
                  bytes([2, 0]) + MULTIPART_BODY],
    # byte 0: bit 0 explicit VR, the rest the read size; then the PACS's C-FIND-RSP stream
    "cfind": [bytes([1]) + cfind_stream(explicit=True), bytes([64]) + cfind_stream(explicit=False)],
    "cget": [bytes([0]) + cget_stream(), bytes([64]) + cget_stream()],
}  # fmt: skip


RUNS = 1500

OFFICIAL_KOS_DUMP = ans_file("informatif/Manifest_KOS_dump.xml")


def _seed_corpus(target: str, folder: Path) -> Path:
    corpus = folder / "corpus"
    corpus.mkdir()
    for index, seed in enumerate(SEEDS[target]):
        (corpus / f"seed{index}").write_bytes(seed)
    if target == "kos":  # the official KOS, back from its dcm2xml dump to Part-10 bytes
        subprocess.run(["xml2dcm", str(OFFICIAL_KOS_DUMP), str(corpus / "official.dcm")],
                       check=True, capture_output=True)  # fmt: skip
    return corpus


def _fuzz(target: str, folder: Path, inject: str = "") -> subprocess.CompletedProcess[str]:
    """A bounded atheris run of `target`; `inject` is Python run after the import of the targets
    (and of the parsers), before fuzzing: the place to plant a bug."""
    program = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'fuzz')!r}); import targets\n{inject}\n"
        "targets.main(sys.argv)"
    )
    return subprocess.run(
        [sys.executable, "-c", program, target, f"-runs={RUNS}", "-max_len=40000",
         "-timeout=10", "-rss_limit_mb=2048", f"-artifact_prefix={folder}/",
         str(_seed_corpus(target, folder))],
        capture_output=True, text=True, timeout=600, check=False, cwd=folder,
    )  # fmt: skip


@pytest.mark.parametrize("target", sorted(SEEDS))
def test_bounded_coverage_guided_run(target: str, tmp_path: Path) -> None:
    result = _fuzz(target, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert f"Done {RUNS} runs in " in output, output[-2000:]


# Per target, a function of its parser that every seed reaches (module, attribute path).
BUG_SITES = {
    "hl7": ("drimbox.hl7.message", "_get"),
    "cda": ("drimbox.cda.parser", "_patient"),
    "kos": ("drimbox.conso.history", "_manifest"),
    "soap": ("drimbox.dmp.soap", "_local"),
    "whitelist": ("drimbox.trust.whitelist", "_content"),
    "accept": ("drimbox.http.accept", "_media_range"),
    "launch": ("drimbox.conso.launch", "_normalise"),
    "multipart": ("drimbox.http.multipart_client", "PartScanner._part_head"),
    "cfind": ("drimbox.dicom.cfind", "_command_values"),
    "cget": ("drimbox.dicom.cget", "_store_request"),
}
INJECTED = "injected parser bug"


def _buggy(*_args: object, **_kwargs: object) -> None:
    raise IndexError(INJECTED)


@pytest.mark.parametrize("target", sorted(BUG_SITES))
def test_the_fuzz_target_reports_an_injected_bug(target: str, tmp_path: Path) -> None:
    module, path = BUG_SITES[target]
    owner, _, name = path.rpartition(".")
    where = f"importlib.import_module({module!r})" + (f".{owner}" if owner else "")
    inject = (
        "import importlib\n"
        "def buggy(*args, **kwargs):\n"
        f"    raise IndexError({INJECTED!r})\n"
        f"setattr({where}, {name!r}, buggy)"
    )
    result = _fuzz(target, tmp_path, inject)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "Uncaught Python exception" in output, output[-2000:]
    assert INJECTED in output, output[-2000:]
    # The crashing input is kept for the developer, in the test's folder (not the checkout).
    assert list(tmp_path.glob("crash-*")), output[-2000:]


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    buffer = bytearray(data)
    for position, value in edits:
        if buffer:
            buffer[position % len(buffer)] = value
    return bytes(buffer)


EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EDITS)
def test_mutated_cda_only_raises_cda_errors(edits: list[tuple[int, int]]) -> None:
    data = _mutate(SMALL_CDA, edits)
    with refusals_only(CdaError):
        parse_report(data)


KOS = sample_kos()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EDITS)
# Found by this test: a series UID whose first byte became 0x80 was passed on as a UID.
@example(edits=[(KOS.find(b"1.2.250.1.213.4.5.2.1.103.1"), 0x80)])
def test_mutated_kos_only_raises_kos_refusals(edits: list[tuple[int, int]]) -> None:
    data = _mutate(KOS, edits)
    with refusals_only(ConsoError):
        manifest = read_manifest(data)
        # What a damaged KOS still yields is read from it, not invented.
        assert manifest.study_uid.encode() in data
        assert all(series.series_uid.encode() in data for series in manifest.series)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EDITS)
def test_mutated_soap_only_raises_soap_errors(edits: list[tuple[int, int]]) -> None:
    data = _mutate(ans_file("validators/XDS.xml").read_bytes(), edits)
    with refusals_only(SoapError, SoapFault):
        body_of(data)


PROPERTY_TESTS: dict[str, Callable[[], None]] = {
    "cda": test_mutated_cda_only_raises_cda_errors,
    "kos": test_mutated_kos_only_raises_kos_refusals,
    "soap": test_mutated_soap_only_raises_soap_errors,
}  # the whitelist's: tests/trust/test_whitelist_fuzz.py


@pytest.mark.parametrize("target", sorted(PROPERTY_TESTS))
def test_the_property_test_reports_an_injected_bug(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, name = BUG_SITES[target]
    monkeypatch.setattr(f"{module}.{name}", _buggy)
    with pytest.raises(Exception, match=INJECTED):
        PROPERTY_TESTS[target]()
