"""Parsers of untrusted input under fuzzing: a bounded coverage-guided run (atheris) per parser,
seeded with the official samples, and property tests (hypothesis) on mutated samples. Only each
parser's own error may come out."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drimbox.cda import CdaError, parse_report
from drimbox.conso.common import ConsoError
from drimbox.conso.history import read_manifest
from drimbox.dmp.soap import SoapError, SoapFault, body_of
from drimbox.http.multipart import closing, part_header
from drimbox.samples import ans_file
from support.samples import cda_of, hl7_text

ROOT = Path(__file__).parents[2]
# A two-part body with the fuzz target's boundary: one part with a Content-Length, one without.
MULTIPART_BODY = (
    part_header("b0und", "application/dicom", 4) + b"DICM"
    + b"\r\n" + part_header("b0und", "application/dicom") + b"\r\n--b0un\r\n"
    + closing("b0und")
)  # fmt: skip
SEEDS = {
    "hl7": [hl7_text("CR_C-ORU.hl7").encode()[:4000],
            hl7_text("CR_W_Suppression-OMI.hl7").encode()],
    "cda": [ans_file("cda/CR_C.xml").read_bytes()[:20000]],
    "kos": [],
    "soap": [ans_file("validators/XDS.xml").read_bytes()[:8000]],
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
}  # fmt: skip


@pytest.mark.parametrize("target", sorted(SEEDS))
def test_bounded_coverage_guided_run(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, seed in enumerate(SEEDS[target]):
        (corpus / f"seed{index}").write_bytes(seed)
    result = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "targets.py"), target, "-runs=1500",
         "-max_len=20000", "-timeout=10", "-rss_limit_mb=2048", str(corpus)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Done 1500 runs" in output or "DONE" in output.upper(), output[-2000:]


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
    data = _mutate(cda_of(hl7_text("CR_C-ORU.hl7"))[:30000], edits)
    with contextlib.suppress(CdaError):
        parse_report(data)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_as_a_kos_only_raise_conso_errors(data: bytes) -> None:
    with pytest.raises(ConsoError):
        read_manifest(b"\0" * 128 + b"DICM" + data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EDITS)
def test_mutated_soap_only_raises_soap_errors(edits: list[tuple[int, int]]) -> None:
    data = _mutate(ans_file("validators/XDS.xml").read_bytes(), edits)
    with contextlib.suppress(SoapError, SoapFault):
        body_of(data)
