"""RIS simulator: sends report messages over MLLP the way a RIS does, and reads the ACKs.

Fills the homologation templates' placeholders (`{{idMessage}}` …) unless told to send the text as
is, re-sends a message whose ACK did not come (a real RIS's behaviour after a timeout), and never
sends the next message before the previous one is acknowledged on the same connection.
"""

from __future__ import annotations

import base64
import re
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from drimbox.cda.model import ImagingReport
from drimbox.dmp import codes, metadata, mtom
from drimbox.dmp.client import DmpClient
from drimbox.dmp.metadata import PublicationIds
from drimbox.dmp.vihf import VihfSubject
from drimbox.dmp.xades import SignedDocument, XmlSigner, build_signature_document
from drimbox.hl7.mllp import frame

START, END = b"\x0b", b"\x1c\x0d"
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@dataclass(frozen=True)
class AckResult:
    control_id: str
    ack: str
    code: str  # MSA-1: AA, AE, AR, or "" when no ACK came
    text: str  # MSA-3 and ERR-8, for display
    attempts: int
    seconds: float


def fill_placeholders(message: str, control_id: str | None = None) -> tuple[str, str]:
    """Replace `{{…}}` placeholders as the homologation tool does; returns (message, control id)."""
    control_id = control_id or uuid.uuid4().hex[:20].upper()
    values = {
        "idMessage": control_id,
        "applicationSupplier": "RIS_SIM",
        "facilitySupplier": "SITE_SIM",
        "applicationReceiver": "DRIMBOX",
        "facilityReceiver": "SITE_SIM",
        "dateMessage": datetime.now().strftime("%Y%m%d%H%M%S"),
    }
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), message), control_id


def normalise_segments(message: str) -> str:
    """HL7 wants CR between segments; files often hold CRLF or LF."""
    return "\r".join(s for s in re.split(r"\r\n|\n|\r", message) if s) + "\r"


def parse_ack(ack: str) -> tuple[str, str]:
    code, texts = "", []
    for segment in re.split(r"[\r\n]+", ack):
        fields = segment.split("|")
        if fields[0] == "MSA" and len(fields) > 1:
            code = fields[1]
            if len(fields) > 3 and fields[3]:
                texts.append(fields[3])
        elif fields[0] == "ERR" and len(fields) > 8 and fields[8]:
            texts.append(fields[8])
    return code, " — ".join(texts)


class RisClient:
    """One MLLP connection to a DRIMbox, reopened when it breaks."""

    def __init__(
        self, host: str, port: int, *, timeout_s: float = 30.0, max_attempts: int = 5
    ) -> None:
        self.host, self.port = host, port
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self._sock: socket.socket | None = None
        self._buffer = b""

    def __enter__(self) -> RisClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer = b""

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._sock

    def send_raw(self, data: bytes) -> str:
        """Send bytes as they are and wait for one framed answer (used to test bad framing)."""
        sock = self._connect()
        sock.sendall(data)
        return self._read_block(sock)

    def _read_block(self, sock: socket.socket) -> str:
        while END not in self._buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the DRIMbox before the ACK")
            self._buffer += chunk
        block, _, self._buffer = self._buffer.partition(END)
        return block.removeprefix(START).decode("utf-8", errors="replace")

    def send(self, message: str, *, fill: bool = True) -> AckResult:
        text = normalise_segments(message)
        control_id = ""
        if fill:
            text, control_id = fill_placeholders(text)
        started = time.monotonic()
        last_error = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                ack = self.send_raw(frame(text))
                code, detail = parse_ack(ack)
                return AckResult(control_id, ack, code, detail, attempt, time.monotonic() - started)
            except OSError as exc:
                last_error = str(exc) or exc.__class__.__name__
                self.close()
                time.sleep(min(2.0, 0.2 * attempt))
        return AckResult(
            control_id, "", "", last_error, self.max_attempts, time.monotonic() - started
        )

    def send_all(self, messages: Iterable[str], *, fill: bool = True) -> list[AckResult]:
        return [self.send(m, fill=fill) for m in messages]


def with_obx5_data(text: str, data: str) -> str:
    """The same HL7 message with OBX-5.5 (the base64 CDA) replaced by `data`."""
    out = []
    for segment in re.split(r"\r\n|\n|\r", text):
        if not segment:
            continue
        fields = segment.split("|")
        if fields[0] == "OBX" and len(fields) > 5 and fields[2] == "ED":
            components = fields[5].split("^")
            components[4] = data
            fields[5] = "^".join(components)
            segment = "|".join(fields)
        out.append(segment)
    return "\r".join(out) + "\r"


def with_cda(text: str, cda: bytes) -> str:
    """The same HL7 message carrying another CDA in OBX-5 (variants of the ANS samples)."""
    return with_obx5_data(text, base64.b64encode(cda).decode("ascii"))


def publish_report_to_dmp(client: DmpClient, report: ImagingReport, cda: bytes) -> None:
    """ITI-41 of the CDA report itself, as the RIS does next to the box's KOS (the Conso pairs
    them through their reference ids). Built from the KOS submission of `drimbox.dmp.metadata`
    with the report's own class, type and format codes."""
    uid = report.document_id.root
    ids = PublicationIds.derive(uid, client.settings.uid_root)
    now = datetime.now(UTC)
    signer = XmlSigner.from_files(client.settings.signing_cert, client.settings.signing_key)
    signature = build_signature_document([SignedDocument(uid, cda)], signer, signing_time=now)
    request = metadata.build_kos_submission(
        report, kos_bytes=cda, ids=ids, signature_xml=signature, site=client.settings.site,
        flags={}, submission_time=now, signing_time=now,
    )  # fmt: skip
    entry = next(
        element
        for element in request.body.iter(f"{{{codes.RIM_NS}}}ExtrinsicObject")
        if element.get("id") == ids.kos_entry_uuid
    )
    entry.set("mimeType", "text/xml")
    report_codes = {
        codes.DE_CLASS: ("10", "1.2.250.1.213.1.1.4.1"),
        codes.DE_TYPE: ("18748-4", "2.16.840.1.113883.6.1"),
        codes.DE_FORMAT: (
            "urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013",
            "1.3.6.1.4.1.19376.1.2.3",
        ),
    }
    for classification in entry.iterfind(f"{{{codes.RIM_NS}}}Classification"):
        scheme = classification.get("classificationScheme", "")
        if scheme in report_codes:
            code, system = report_codes[scheme]
            classification.set("nodeRepresentation", code)
            for value in classification.iter(f"{{{codes.RIM_NS}}}Value"):
                value.text = system
    for slot in entry.iterfind(f"{{{codes.RIM_NS}}}Slot"):
        if slot.get("name") == "URI":
            next(slot.iter(f"{{{codes.RIM_NS}}}Value")).text = "CR.XML"
    title = entry.find(f"{{{codes.RIM_NS}}}Name/{{{codes.RIM_NS}}}LocalizedString")
    if title is not None:
        title.set("value", report.title)
    attachments = [
        mtom.Attachment(
            d.content_id, d.data, "text/xml" if d.entry_uuid == ids.kos_entry_uuid else d.mime_type
        )
        for d in request.documents
    ]
    response = client.provide_and_register(
        request.body,
        attachments,
        patient=(report.patient.ins, report.patient.ins_oid),
        subject=VihfSubject.from_report(report),
    )
    if response.failure:
        raise RuntimeError(f"the DMP refused the report: {response.errors}")
