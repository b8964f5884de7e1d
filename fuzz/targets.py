"""Coverage-guided fuzz targets (atheris) for the box's parsers of untrusted input.

Each target feeds fuzzer bytes to one parser and lets through only the parser's own documented
error; anything else (an unexpected exception, a hang caught by atheris) is a finding.

    uv run python fuzz/targets.py TARGET [atheris/libFuzzer options]   # e.g. -runs=1000000

Targets: hl7, cda, kos, soap, whitelist, accept, launch, multipart. The test suite runs each for a
bounded number of executions (tests/reliability/test_fuzz.py); a long run is documented in
docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import atheris

# Only our own code is instrumented: the libraries are not what is under test, and instrumenting
# them makes every run start slowly.
with atheris.instrument_imports(include=["drimbox"]):
    from drimbox.cda import CdaError, parse_report
    from drimbox.conso.common import ConsoError
    from drimbox.conso.history import read_manifest
    from drimbox.conso.launch import InvalidLaunch, parse_launch
    from drimbox.dmp.soap import SoapError, SoapFault, body_of
    from drimbox.hl7.message import HL7Error, parse_report_message
    from drimbox.http.accept import AcceptError, parse_accept
    from drimbox.http.multipart import MultipartError
    from drimbox.http.multipart_client import FetchError, Framing, PartScanner
    from drimbox.trust.whitelist import WhitelistError, verify_whitelist


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def hl7(data: bytes) -> None:
    with contextlib.suppress(HL7Error):
        parse_report_message(_text(data))


def cda(data: bytes) -> None:
    with contextlib.suppress(CdaError):
        parse_report(data)


def kos(data: bytes) -> None:
    with contextlib.suppress(ConsoError):
        read_manifest(data)


def soap(data: bytes) -> None:
    with contextlib.suppress(SoapError, SoapFault):
        body_of(data)


def whitelist(data: bytes) -> None:
    with contextlib.suppress(WhitelistError):
        verify_whitelist(data, [])


def accept(data: bytes) -> None:
    with contextlib.suppress(AcceptError):
        parse_accept(_text(data))


def launch(data: bytes) -> None:
    with contextlib.suppress(InvalidLaunch):
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
    with contextlib.suppress(MultipartError, FetchError):
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


TARGETS: dict[str, Callable[[bytes], None]] = {
    "hl7": hl7,
    "cda": cda,
    "kos": kos,
    "soap": soap,
    "whitelist": whitelist,
    "accept": accept,
    "launch": launch,
    "multipart": multipart,
}

if __name__ == "__main__":
    name = sys.argv[1]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], TARGETS[name])
    atheris.Fuzz()
