"""Coverage-guided fuzz targets (atheris) for the box's parsers of untrusted input.

Each target feeds fuzzer bytes to one parser and lets through only the parser's own documented
refusal; anything else is a finding: an unexpected exception, a refusal marked `InternalError`
(the parser caught one of its own bugs and refused the input), a hang caught by atheris.

    uv run python fuzz/targets.py TARGET [atheris/libFuzzer options]   # e.g. -runs=1000000

Targets: hl7, cda, kos, soap, whitelist, accept, launch, multipart, cfind, cget. The test suite runs
each for a bounded number of executions (tests/reliability/test_fuzz.py); a long run is
documented in docs/reliability.md.
"""

from __future__ import annotations

import base64
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime

import atheris
from cryptography import x509

# Only our own code is instrumented: the libraries are not what is under test, and instrumenting
# them makes every run start slowly.
with atheris.instrument_imports(include=["drimbox"]):
    from drimbox.cda import CdaError, parse_report
    from drimbox.conso.common import ConsoError
    from drimbox.conso.history import read_manifest
    from drimbox.conso.launch import InvalidLaunch, parse_launch
    from drimbox.dicom import cget as cget_stream
    from drimbox.dicom.cfind import LeanFindFailure, receive
    from drimbox.dmp.soap import SoapError, SoapFault, body_of
    from drimbox.errors import refusals_only
    from drimbox.hl7.message import HL7Error, parse_report_message
    from drimbox.http.accept import AcceptError, parse_accept
    from drimbox.http.multipart import MultipartError
    from drimbox.http.multipart_client import FetchError, Framing, PartScanner
    from drimbox.samples import ans_file
    from drimbox.trust.whitelist import WhitelistError, verify_whitelist


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def hl7(data: bytes) -> None:
    with refusals_only(HL7Error):
        parse_report_message(_text(data))


def cda(data: bytes) -> None:
    with refusals_only(CdaError):
        parse_report(data)


def kos(data: bytes) -> None:
    with refusals_only(ConsoError):
        read_manifest(data)


def soap(data: bytes) -> None:
    with refusals_only(SoapError, SoapFault):
        body_of(data)


def _official_root() -> x509.Certificate:
    """The TEST root the official signed list carries: a valid seed then gets past the signature
    checks into the content checks (verified at a fixed time, inside the signer's validity)."""
    text = ans_file("whitelist/LISTEBLANCHE_DRIM-M_SIGNEE_TEST.xml").read_text("utf-8")
    der = re.findall(r"<ds:X509Certificate>(.*?)</ds:X509Certificate>", text, re.S)[2]
    return x509.load_der_x509_certificate(base64.b64decode(der))


WHITELIST_ANCHORS = [_official_root()]
WHITELIST_TIME = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def whitelist(data: bytes) -> None:
    with refusals_only(WhitelistError):
        verify_whitelist(data, WHITELIST_ANCHORS, now=WHITELIST_TIME)


def accept(data: bytes) -> None:
    with refusals_only(AcceptError):
        parse_accept(_text(data))


def launch(data: bytes) -> None:
    with refusals_only(InvalidLaunch):
        parse_launch(data)


MULTIPART_BOUNDARY = "b0und"  # the seeds in tests/reliability/test_fuzz.py use it too
FRAMINGS: tuple[Framing, ...] = ("length", "chunked", "close")


def multipart(data: bytes) -> None:
    """A streamed WADO-RS body: byte 0 picks the framing (% 3), the filling (bit 7: `feed` or,
    as the socket does, `writable`/`received`) and how many bytes short of the stream the
    Content-Length is (bits 2-3); byte 1 the piece size; the rest is the stream."""
    if len(data) < 2:
        return
    framing = FRAMINGS[data[0] % 3]
    socket_like = bool(data[0] & 0x80)
    cut = 1 + data[1]
    stream = data[2:]
    length = max(0, len(stream) - (data[0] >> 2 & 3)) if framing == "length" else None
    scanner = PartScanner(MULTIPART_BOUNDARY, framing, length, max_part=4096)
    with refusals_only(MultipartError, FetchError):
        for start in range(0, len(stream), cut):
            piece = stream[start : start + cut]
            if socket_like:
                scanner.make_room()
                scanner.writable()[: len(piece)] = piece
                scanner.received(len(piece))
            else:
                scanner.feed(piece)
            _take_parts(scanner)
        scanner.eof()
        _take_parts(scanner)


def _take_parts(scanner: PartScanner) -> None:
    while (part := scanner.next_part()) is not None:
        bytes(part.body)
        _ = part.content_type


class _Replay:
    """A socket replaying `data`, at most `piece` bytes per read."""

    def __init__(self, data: bytes, piece: int) -> None:
        self._data = data
        self._piece = piece
        self._pos = 0

    def recv_into(self, buffer: memoryview, /) -> int:
        chunk = self._data[self._pos : self._pos + min(self._piece, len(buffer))]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


def cfind(data: bytes) -> None:
    """The C-FIND responses a PACS streams on presentation context 1, read by the lean path
    (`drimbox.dicom.cfind`): byte 0 bit 0 picks explicit VR, the other bits the read size; then
    the stream. Every answer's UIDs and number are read."""
    if not data:
        return
    with refusals_only(LeanFindFailure):
        answers, _status, _rest = receive(_Replay(data[1:], 1 + data[0] * 64), 1, bool(data[0] & 1))
        for answer in answers:
            for keyword in ("SOPInstanceUID", "SOPClassUID", "InstanceNumber", "PatientName"):
                answer.text(keyword)
                answer.integer(keyword)


class _Peer(_Replay):
    """A replayed socket that also takes what the box sends back."""

    def sendall(self, data: bytes, /) -> None:
        pass


_CT_CONTEXT = {3: cget_stream.StorageContext("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")}


def cget(data: bytes) -> None:
    """The C-GET stream a PACS sends (C-STORE-RQs on context 3, C-GET-RSPs on context 1), read
    by the lean path (`drimbox.dicom.cget`): byte 0 picks the read size (bit 0: C-MOVE, bit 1:
    the C-STOREs the box's SCP receives, `serve_stores`), the rest is the stream. Each instance
    is handed on whole, and its C-STORE-RSP sent."""
    if not data:
        return
    peer = _Peer(data[1:], 1 + data[0] * 64)

    def store(instance: memoryview) -> int:
        return 0 if bytes(instance[128:132]) == b"DICM" else 0xC000

    with refusals_only(LeanFindFailure):
        if data[0] & 2:
            cget_stream.serve_stores(
                peer,  # type: ignore[arg-type]
                _CT_CONTEXT,
                lambda _request, _context, instance: store(instance),
            )
        else:
            cget_stream.receive(
                peer,  # type: ignore[arg-type]
                1,
                _CT_CONTEXT,
                store,
                move=bool(data[0] & 1),
            )


TARGETS: dict[str, Callable[[bytes], None]] = {
    "hl7": hl7,
    "cda": cda,
    "kos": kos,
    "soap": soap,
    "whitelist": whitelist,
    "accept": accept,
    "launch": launch,
    "multipart": multipart,
    "cfind": cfind,
    "cget": cget,
}


def main(argv: list[str]) -> None:
    """`argv`: program, target name, libFuzzer options and corpus folders."""
    atheris.Setup([argv[0], *argv[2:]], TARGETS[argv[1]])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
