"""MLLP framing of HL7 v2 messages over TCP: `0x0B` + message + `0x1C 0x0D`.

Owns only the byte-level envelope and the size limit; the asyncio server lives elsewhere.
"""

from __future__ import annotations

__all__ = ["END_BLOCK", "MAX_MESSAGE_BYTES", "START_BLOCK", "frame", "unframe"]

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
# The official samples are ~325 kB (the CDA embeds a PDF); 20 MiB leaves room for big reports
# while bounding what one connection can make the server buffer.
MAX_MESSAGE_BYTES = 20 * 1024 * 1024


def frame(msg: str) -> bytes:
    """Wrap one HL7 message (segments separated by CR) in an MLLP block, UTF-8 encoded."""
    return START_BLOCK + msg.encode("utf-8") + END_BLOCK


def unframe(data: bytes) -> str:
    """Inverse of `frame`, tolerant of a missing trailer or surrounding whitespace."""
    data = data.strip(b"\r\n\t ")
    if data.startswith(START_BLOCK):
        data = data[1:]
    if data.endswith(END_BLOCK):
        data = data[:-2]
    elif data.endswith(b"\x1c"):
        data = data[:-1]
    return data.decode("utf-8")
