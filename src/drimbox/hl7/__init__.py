"""HL7 v2 report intake: MLLP framing, parsing of ORU/MDM/OMI report messages, ACKs."""

from drimbox.hl7.message import (
    AckCode,
    HL7Error,
    ReportKind,
    ReportMessage,
    build_ack,
    escape_text,
    parse_report_message,
)
from drimbox.hl7.mllp import MAX_MESSAGE_BYTES, frame, unframe

__all__ = [
    "MAX_MESSAGE_BYTES",
    "AckCode",
    "HL7Error",
    "ReportKind",
    "ReportMessage",
    "build_ack",
    "escape_text",
    "frame",
    "parse_report_message",
    "unframe",
]
