"""MTOM/XOP packaging of SOAP 1.2 messages (W3C SOAP MTOM, XOP; IHE ITI TF-2x V.3.5).

Owns the `multipart/related; type="application/xop+xml"` framing: packing an envelope and binary
attachments into parts that can be streamed (no base64, no copy of the attachments), and parsing
such a response back into the root envelope and its attachments by Content-ID. A plain
`application/soap+xml` response is accepted too. It knows nothing of XDS or of what the envelope
says (`soap` builds and reads envelopes), and does no I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from urllib.parse import unquote

CRLF = b"\r\n"
SOAP_CONTENT_TYPE = "application/soap+xml"
XOP_CONTENT_TYPE = "application/xop+xml"


class MtomError(Exception):
    """A multipart message that cannot be read (bad framing, missing part)."""


@dataclass(frozen=True)
class Attachment:
    """One binary part. `content_id` is bare (no `<>`, no `cid:`)."""

    content_id: str
    data: bytes
    content_type: str = "application/octet-stream"

    @property
    def href(self) -> str:
        """The value of `xop:Include/@href` that points to this part."""
        return f"cid:{self.content_id}"


@dataclass(frozen=True)
class MtomRequest:
    """A packed message: the HTTP Content-Type and the body as chunks (memory is not copied)."""

    content_type: str
    chunks: tuple[bytes, ...]

    @property
    def length(self) -> int:
        return sum(len(c) for c in self.chunks)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def body(self) -> bytes:
        return b"".join(self.chunks)


@dataclass(frozen=True)
class MtomResponse:
    """A parsed message: the root part (the SOAP envelope) and the attachments by Content-ID."""

    root: bytes
    attachments: Mapping[str, Attachment] = field(default_factory=dict)

    def resolve(self, href: str) -> bytes:
        """The bytes an `xop:Include/@href` (`cid:…`, URL-encoded per RFC 2392) designates."""
        cid = unquote(href.removeprefix("cid:")).strip("<>")
        try:
            return self.attachments[cid].data
        except KeyError:
            raise MtomError(f"no MIME part with Content-ID <{cid}>") from None


def new_content_id(label: str = "part") -> str:
    return f"{label}-{uuid.uuid4().hex}@drimbox"


def pack(
    envelope: bytes,
    attachments: Sequence[Attachment] = (),
    *,
    action: str | None = None,
    boundary: str | None = None,
    root_id: str | None = None,
) -> MtomRequest:
    """Pack `envelope` (whose xop:Include elements point to `attachments`) as MTOM.

    The boundary is checked against every payload, so binary content can never end a part early.
    """
    root_id = root_id or new_content_id("root")
    boundary = boundary or f"MIMEBoundary_{uuid.uuid4().hex}"
    marker = b"--" + boundary.encode("ascii")
    if any(marker in payload for payload in (envelope, *(a.data for a in attachments))):
        raise MtomError(f"boundary {boundary!r} occurs in a payload; choose another one")
    chunks: list[bytes] = [
        marker + CRLF,
        _headers(
            f'{XOP_CONTENT_TYPE}; charset=UTF-8; type="{SOAP_CONTENT_TYPE}"',
            root_id,
        ),
        envelope,
    ]
    for attachment in attachments:
        chunks += [CRLF + marker + CRLF, _headers(attachment.content_type, attachment.content_id)]
        chunks.append(attachment.data)
    chunks.append(CRLF + marker + b"--" + CRLF)
    content_type = (
        f'multipart/related; type="{XOP_CONTENT_TYPE}"; boundary="{boundary}"; '
        f'start="<{root_id}>"; start-info="{SOAP_CONTENT_TYPE}"'
    )
    if action:  # SOAP 1.2 carries the action as a media type parameter
        content_type += f'; action="{action}"'
    return MtomRequest(content_type=content_type, chunks=tuple(chunks))


def _headers(content_type: str, content_id: str) -> bytes:
    return (
        f"Content-Type: {content_type}\r\n"
        "Content-Transfer-Encoding: binary\r\n"
        f"Content-ID: <{content_id}>\r\n\r\n"
    ).encode("ascii")


def _parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    message = Message()
    message["Content-Type"] = value
    params = {k.lower(): v for k, v in message.get_params(failobj=[])[1:]}
    return message.get_content_type(), params


def parse(content_type: str, body: bytes) -> MtomResponse:
    """Split an HTTP response body into its root part and attachments.

    A non-multipart body (`application/soap+xml`, `text/xml`) is returned as the root as is.
    """
    media_type, params = _parse_content_type(content_type or SOAP_CONTENT_TYPE)
    if not media_type.startswith("multipart/"):
        return MtomResponse(root=body)
    boundary = params.get("boundary")
    if not boundary:
        raise MtomError("multipart response without a boundary parameter")
    marker = b"--" + boundary.encode("ascii")
    delimiter = CRLF + marker
    # The first delimiter may start the body (no preamble) or follow a preamble line.
    if body.startswith(marker):
        position = len(marker)
    else:
        index = body.find(delimiter)
        if index < 0:
            raise MtomError("multipart response without its first boundary")
        position = index + len(delimiter)
    parts: list[tuple[dict[str, str], bytes]] = []
    while True:
        if body.startswith(b"--", position):
            break  # close delimiter
        line_end = body.find(CRLF, position)
        if line_end < 0:
            raise MtomError("truncated multipart response")
        start = line_end + 2
        end = body.find(delimiter, start)
        if end < 0:
            raise MtomError("multipart response without its closing boundary")
        parts.append(_split_part(body[start:end]))
        position = end + len(delimiter)
    if not parts:
        raise MtomError("multipart response without any part")
    start_id = params.get("start", "").strip().strip("<>")
    root_index = 0
    attachments: dict[str, Attachment] = {}
    for index, (headers, content) in enumerate(parts):
        cid = headers.get("content-id", "").strip().strip("<>")
        if start_id and cid == start_id:
            root_index = index
        if cid:
            attachments[cid] = Attachment(
                cid, content, headers.get("content-type", "application/octet-stream")
            )
    root_headers, root = parts[root_index]
    root_cid = root_headers.get("content-id", "").strip().strip("<>")
    attachments.pop(root_cid, None)
    return MtomResponse(root=root, attachments=attachments)


def _split_part(raw: bytes) -> tuple[dict[str, str], bytes]:
    head_end = raw.find(CRLF + CRLF)
    if head_end < 0:
        if raw.startswith(CRLF):  # a part without headers
            return {}, raw[2:]
        raise MtomError("MIME part without a blank line after its headers")
    headers: dict[str, str] = {}
    for line in raw[:head_end].decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers, raw[head_end + 4 :]
