"""MTOM/XOP packing and parsing, byte for byte."""

from __future__ import annotations

import pytest

from drimbox.dmp import mtom
from drimbox.dmp.mtom import Attachment, MtomError

ENVELOPE = b'<?xml version="1.0"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"/>'
# CRLFs, what looks like a MIME delimiter, a NUL and every byte value.
TRICKY = (
    b"\r\n--MIMEBoundary_\r\n\r\n--\x00\r\nContent-ID: <x>\r\n\r\n" + bytes(range(256)) + b"\r\n"
)


def test_round_trip_byte_for_byte() -> None:
    attachments = [
        Attachment("kos@drimbox", TRICKY * 50, "application/dicom"),
        Attachment("sig@drimbox", b"<ds:Signature/>\r\n", "text/xml"),
        Attachment("empty@drimbox", b"", "application/octet-stream"),
    ]
    packed = mtom.pack(ENVELOPE, attachments, action="urn:ihe:iti:2007:RetrieveDocumentSet")
    assert packed.content_type.startswith('multipart/related; type="application/xop+xml"')
    assert 'start-info="application/soap+xml"' in packed.content_type
    body = b"".join(packed)
    assert len(body) == packed.length
    parsed = mtom.parse(packed.content_type, body)
    assert parsed.root == ENVELOPE
    assert {cid: a.data for cid, a in parsed.attachments.items()} == {
        a.content_id: a.data for a in attachments
    }
    assert parsed.attachments["kos@drimbox"].content_type == "application/dicom"
    assert parsed.resolve("cid:kos%40drimbox") == TRICKY * 50


def test_payloads_are_not_copied_into_chunks() -> None:
    data = bytes(1_000_000)
    packed = mtom.pack(ENVELOPE, [Attachment("big@x", data)])
    assert any(chunk is data for chunk in packed.chunks)


def test_boundary_inside_a_payload_is_refused() -> None:
    with pytest.raises(MtomError):
        mtom.pack(ENVELOPE, [Attachment("a@x", b"--fixed\r\n")], boundary="fixed")


def test_plain_soap_response_is_accepted() -> None:
    parsed = mtom.parse('application/soap+xml; charset=utf-8; action="x"', ENVELOPE)
    assert parsed.root == ENVELOPE and not parsed.attachments


def test_root_found_by_start_parameter_and_preamble() -> None:
    body = (
        b"preamble\r\n--b\r\nContent-ID: <att>\r\n\r\nDATA\r\n"
        b"--b\r\nContent-ID: <root>\r\nContent-Type: application/xop+xml\r\n\r\n"
        + ENVELOPE
        + b"\r\n--b--\r\n"
    )
    parsed = mtom.parse('multipart/related; boundary=b; start="<root>"', body)
    assert parsed.root == ENVELOPE
    assert parsed.resolve("cid:att") == b"DATA"
    with pytest.raises(MtomError):
        parsed.resolve("cid:missing")
