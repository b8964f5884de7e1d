"""Coverage-guided fuzz targets (atheris) for the box's parsers of untrusted input.

Each target feeds fuzzer bytes to one parser and lets through only the parser's own documented
error; anything else (an unexpected exception, a hang caught by atheris) is a finding.

    uv run python fuzz/targets.py TARGET [atheris/libFuzzer options]   # e.g. -runs=1000000

Targets: hl7, cda, kos, soap, whitelist, accept, launch. The test suite runs each for a bounded
number of executions (tests/reliability/test_fuzz.py); a long run is documented in
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
    from drimbox.trust.whitelist import WhitelistError, verify_whitelist
    from drimbox.web.accept import AcceptError, parse_accept


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


TARGETS: dict[str, Callable[[bytes], None]] = {
    "hl7": hl7,
    "cda": cda,
    "kos": kos,
    "soap": soap,
    "whitelist": whitelist,
    "accept": accept,
    "launch": launch,
}

if __name__ == "__main__":
    name = sys.argv[1]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], TARGETS[name])
    atheris.Fuzz()
