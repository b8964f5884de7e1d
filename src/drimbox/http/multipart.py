"""`multipart/related` bodies (RFC 2387) as DICOMweb uses them: an incremental reader for the
responses the box receives (the PACS's WADO-RS, later the peers'), and the writer's framing.

The reader is fed network chunks and yields each part as soon as its closing delimiter is in,
so callers can store an instance while the next one is still on the wire. Bodies are kept
as-is (no charset, no transfer encoding: DICOMweb parts are binary). It does no I/O itself.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

_BOUNDARY_RE = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^\s;,]+))', re.IGNORECASE)
MAX_HEADER_BYTES = 16 * 1024


class MultipartError(ValueError):
    """The body is not a well-formed multipart/related body."""


def boundary_of(content_type: str) -> str:
    """The `boundary` parameter of a multipart Content-Type header."""
    match = _BOUNDARY_RE.search(content_type)
    if match is None:
        raise MultipartError(f"no boundary in Content-Type {content_type!r}")
    return match.group(1) or match.group(2)


def new_boundary() -> str:
    return f"drimbox-{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Part:
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


class MultipartReader:
    """Incremental parser: `feed(chunk)` yields the parts completed by that chunk; `close()`
    checks that the closing delimiter was seen."""

    def __init__(self, boundary: str) -> None:
        self._delimiter = b"--" + boundary.encode("ascii")
        self._next = b"\r\n" + self._delimiter
        self._buffer = bytearray()
        self._started = False  # the first delimiter was seen
        self._finished = False
        self._scan_from = 0

    @property
    def finished(self) -> bool:
        return self._finished

    def feed(self, chunk: bytes) -> Iterator[Part]:
        if self._finished:
            return
        self._buffer += chunk
        if not self._started:
            # Preamble: anything before the first delimiter (usually nothing).
            index = self._buffer.find(self._delimiter)
            if index < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    raise MultipartError("no multipart delimiter at the start of the body")
                return
            del self._buffer[: index + len(self._delimiter)]
            self._started = True
            self._scan_from = 0
        while True:
            # After a delimiter: "--" ends the body, else the rest of the line then headers.
            if len(self._buffer) < 2:
                return
            if self._buffer[:2] == b"--":
                self._finished = True
                self._buffer.clear()
                return
            end = self._buffer.find(self._next, max(self._scan_from, 0))
            if end < 0:
                # Resume the search where a delimiter could still start.
                self._scan_from = max(0, len(self._buffer) - len(self._next))
                return
            yield self._part(bytes(self._buffer[:end]))
            del self._buffer[: end + len(self._next)]
            self._scan_from = 0

    def _part(self, raw: bytes) -> Part:
        # raw = transport padding, CRLF, headers, CRLF CRLF, body
        line_end = raw.find(b"\r\n")
        if line_end < 0:
            raise MultipartError("malformed part (no line break after the delimiter)")
        head_end = raw.find(b"\r\n\r\n", line_end)
        if head_end < 0:
            raise MultipartError("malformed part (headers not terminated)")
        if head_end == line_end:
            return Part({}, raw[line_end + 4 :])
        return Part(parse_part_headers(raw[line_end + 2 : head_end]), raw[head_end + 4 :])

    def close(self) -> None:
        if not self._finished:
            raise MultipartError("the multipart body ended before its closing delimiter")


def parse_part_headers(block: bytes) -> dict[str, str]:
    """A part's header lines (without the final empty line), names in lower case."""
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            raise MultipartError(f"malformed part header {line[:80]!r}")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return headers


def part_header(boundary: str, content_type: str, length: int | None = None) -> bytes:
    """The delimiter and headers that open a part (preceded by CRLF except for the first)."""
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def part_open(boundary: str, content_type: str, length: int, *, first: bool) -> bytes:
    """The start of a part in a body whose parts each end with the next delimiter
    (`part_end`), so that a reader knows a part is complete as soon as it has it: the first
    part opens with the delimiter line, later ones follow the previous part's delimiter."""
    header = part_header(boundary, content_type, length)
    return header if first else header[len(boundary) + 2 :]


def part_end(boundary: str) -> bytes:
    return f"\r\n--{boundary}".encode("ascii")


BODY_END = b"--\r\n"  # after the last `part_end`: turns it into the closing delimiter


def closing(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode("ascii")
