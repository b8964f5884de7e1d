"""SOAP 1.2 plumbing of the DMP simulator: MTOM/XOP parsing and building, WS-Addressing, faults.

Owns the wire format only (no registry logic). Requests come either as MTOM/XOP
(`multipart/related; type="application/xop+xml"`) — each `xop:Include` is replaced in memory by
the base64 text of the part it points to, so the rest of the simulator sees one plain envelope —
or as a plain `application/soap+xml` envelope with inline base64 documents.
Part of the test/demo simulator: never deploy it as a DMP.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass, field
from urllib.parse import unquote

from lxml import etree

SOAP = "http://www.w3.org/2003/05/soap-envelope"
WSA = "http://www.w3.org/2005/08/addressing"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
XOP = "http://www.w3.org/2004/08/xop/include"
RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
XDSB = "urn:ihe:iti:xds-b:2007"
HL7 = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
HABILITATIONS = "urn:si-dmp-habilitations"
SIM = "urn:drimbox:sim:dmp"

NS = {
    "soap": SOAP,
    "wsa": WSA,
    "wsse": WSSE,
    "saml2": SAML,
    "ds": DS,
    "xop": XOP,
    "rim": RIM,
    "rs": RS,
    "lcm": LCM,
    "query": QUERY,
    "xdsb": XDSB,
    "hl7": HL7,
    "hab": HABILITATIONS,
}

# Hard cap on one request (an ITI-41 carries one KOS and its signature: a few MB at most).
MAX_REQUEST_BYTES = 200 * 1024 * 1024

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, huge_tree=True, remove_blank_text=False
)


def parse_xml(data: bytes) -> etree._Element:
    """Parse untrusted XML: no entity expansion, no network (XXE-safe)."""
    return etree.fromstring(data, parser=_PARSER)


class SoapFault(Exception):
    """Answered as a SOAP 1.2 Fault. `subcode` is a prefixed QName (`wsse:FailedCheck`, …),
    `code` the simulator's DMP-style code put in the Detail, `reason` a French sentence."""

    def __init__(self, code: str, reason: str, *, subcode: str = "", sender: bool = True) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.subcode = subcode
        self.sender = sender


@dataclass
class Attachment:
    content_id: str
    content_type: str
    data: bytes


@dataclass
class SoapRequest:
    """A received envelope with its WS-Addressing headers; `mtom` says how it came."""

    envelope: etree._Element
    mtom: bool
    message_id: str = ""
    to: str = ""
    action: str = ""
    attachments: dict[str, Attachment] = field(default_factory=dict)

    @property
    def header(self) -> etree._Element | None:
        return self.envelope.find(f"{{{SOAP}}}Header")

    @property
    def body(self) -> etree._Element:
        body = self.envelope.find(f"{{{SOAP}}}Body")
        if body is None or len(body) == 0:
            raise SoapFault("DMPRequeteInvalide", "Corps SOAP absent ou vide.")
        return body[0]


# ---------------------------------------------------------------------------------------------
# MIME multipart/related (MTOM)


def _header_params(value: str) -> tuple[str, dict[str, str]]:
    """`multipart/related; boundary="x"; type=…` → ("multipart/related", {boundary: x, …})."""
    parts = re.findall(r'(?:[^;"]|"(?:[^"\\]|\\.)*")+', value)
    main = parts[0].strip().lower() if parts else ""
    params: dict[str, str] = {}
    for part in parts[1:]:
        if "=" in part:
            key, _, raw = part.partition("=")
            raw = raw.strip()
            if raw.startswith('"') and raw.endswith('"'):
                raw = raw[1:-1]
            params[key.strip().lower()] = raw
    return main, params


def _strip_cid(value: str) -> str:
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value


def parse_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart body into (headers, content) without touching the content bytes."""
    delimiter = b"--" + boundary.encode("latin-1")
    # The first delimiter may open the body without a preceding CRLF.
    start = body.find(delimiter)
    if start < 0:
        raise SoapFault("DMPRequeteInvalide", "Délimiteur MIME introuvable dans le message MTOM.")
    parts: list[tuple[dict[str, str], bytes]] = []
    position = start + len(delimiter)
    while True:
        if body[position : position + 2] == b"--":
            break  # closing delimiter
        # Skip transport padding and the CRLF that ends the delimiter line.
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            raise SoapFault("DMPRequeteInvalide", "Message MTOM tronqué.")
        header_end = body.find(b"\r\n\r\n", line_end)
        if header_end < 0:
            raise SoapFault("DMPRequeteInvalide", "En-têtes MIME d'une partie incomplets.")
        headers: dict[str, str] = {}
        for raw in body[line_end + 2 : header_end].split(b"\r\n"):
            if b":" in raw:
                key, _, value = raw.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
        content_start = header_end + 4
        next_delimiter = body.find(b"\r\n" + delimiter, content_start)
        if next_delimiter < 0:
            raise SoapFault(
                "DMPRequeteInvalide", "Partie MIME non terminée (délimiteur final absent)."
            )
        parts.append((headers, body[content_start:next_delimiter]))
        position = next_delimiter + 2 + len(delimiter)
    return parts


def read_soap_request(content_type: str, body: bytes) -> SoapRequest:
    """Parse an HTTP body into a SoapRequest (MTOM or plain), XOP includes resolved."""
    if len(body) > MAX_REQUEST_BYTES:
        raise SoapFault("DMPRequeteInvalide", "Requête trop volumineuse.")
    main, params = _header_params(content_type or "")
    attachments: dict[str, Attachment] = {}
    if main == "multipart/related":
        boundary = params.get("boundary")
        if not boundary:
            raise SoapFault("DMPRequeteInvalide", "Paramètre boundary absent du Content-Type.")
        parts = parse_multipart(body, boundary)
        if not parts:
            raise SoapFault("DMPRequeteInvalide", "Message MTOM sans partie.")
        start = _strip_cid(params.get("start", ""))
        root_index = 0
        for index, (headers, _) in enumerate(parts):
            if start and _strip_cid(headers.get("content-id", "")) == start:
                root_index = index
        root_headers, root = parts[root_index]
        root_type, _ = _header_params(root_headers.get("content-type", ""))
        if root_type not in ("application/xop+xml", "application/soap+xml"):
            raise SoapFault(
                "DMPRequeteInvalide",
                f"Partie racine MTOM de type inattendu « {root_type} ».",
            )
        for index, (headers, data) in enumerate(parts):
            if index == root_index:
                continue
            cid = _strip_cid(headers.get("content-id", ""))
            encoding = headers.get("content-transfer-encoding", "binary").lower()
            if encoding == "base64":
                data = base64.b64decode(data)
            attachments[cid] = Attachment(cid, headers.get("content-type", ""), data)
        envelope = _parse_envelope(root)
        _resolve_xop(envelope, attachments)
        request = SoapRequest(envelope, mtom=True, attachments=attachments)
    elif main in ("application/soap+xml", "text/xml", "application/xml", ""):
        request = SoapRequest(_parse_envelope(body), mtom=False)
    else:
        raise SoapFault("DMPRequeteInvalide", f"Content-Type non supporté : « {main} ».")
    return request


def _parse_envelope(data: bytes) -> etree._Element:
    try:
        envelope = parse_xml(data)
    except etree.XMLSyntaxError as error:
        raise SoapFault("DMPRequeteInvalide", f"XML mal formé : {error}.") from error
    if envelope.tag != f"{{{SOAP}}}Envelope":
        raise SoapFault(
            "DMPVersionSoap",
            "Enveloppe SOAP 1.2 attendue (http://www.w3.org/2003/05/soap-envelope).",
            subcode="soap:VersionMismatch",
        )
    return envelope


def _resolve_xop(envelope: etree._Element, attachments: dict[str, Attachment]) -> None:
    for include in envelope.iter(f"{{{XOP}}}Include"):
        href = include.get("href", "")
        if not href.startswith("cid:"):
            raise SoapFault("DMPRequeteInvalide", f"xop:Include sans référence cid: ({href}).")
        cid = unquote(href[4:])
        attachment = attachments.get(cid)
        if attachment is None:
            raise SoapFault("DMPRequeteInvalide", f"Partie MIME « {cid} » référencée mais absente.")
        parent = include.getparent()
        assert parent is not None
        parent.remove(include)
        parent.text = base64.b64encode(attachment.data).decode("ascii")


# ---------------------------------------------------------------------------------------------
# WS-Addressing


def check_addressing(request: SoapRequest, expected_path: str) -> None:
    """MessageID, To and Action (mustUnderstand) are required, as on the DMP."""
    header = request.header
    if header is None:
        raise SoapFault(
            "DMPAdressageAbsent",
            "En-tête SOAP absent : les en-têtes WS-Addressing sont obligatoires.",
            subcode="wsa:MessageAddressingHeaderRequired",
        )
    values: dict[str, etree._Element] = {}
    for name in ("MessageID", "To", "Action"):
        found = header.findall(f"{{{WSA}}}{name}")
        if not found or not (found[0].text or "").strip():
            raise SoapFault(
                "DMPAdressageAbsent",
                f"En-tête WS-Addressing {name} absent ou vide.",
                subcode="wsa:MessageAddressingHeaderRequired",
            )
        if len(found) > 1:
            raise SoapFault(
                "DMPAdressageInvalide",
                f"En-tête WS-Addressing {name} répété.",
                subcode="wsa:InvalidAddressingHeader",
            )
        values[name] = found[0]
    request.message_id = (values["MessageID"].text or "").strip()
    request.to = (values["To"].text or "").strip()
    request.action = (values["Action"].text or "").strip()
    must = values["Action"].get("mustUnderstand") or values["Action"].get(
        f"{{{SOAP}}}mustUnderstand"
    )
    if (must or "").strip().lower() not in ("true", "1"):
        raise SoapFault(
            "DMPAdressageInvalide",
            'L\'en-tête wsa:Action doit porter mustUnderstand="true".',
            subcode="wsa:InvalidAddressingHeader",
        )
    # The host differs between environments (and behind proxies): the service path must match.
    if not request.to.rstrip("/").endswith(expected_path):
        raise SoapFault(
            "DMPAdressageInvalide",
            f"wsa:To « {request.to} » ne désigne pas le service {expected_path}.",
            subcode="wsa:InvalidAddressingHeader",
        )


# ---------------------------------------------------------------------------------------------
# Responses


@dataclass
class SoapResponse:
    content: bytes
    content_type: str
    status_code: int = 200


def _envelope(action: str, relates_to: str, payload: etree._Element) -> etree._Element:
    envelope = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP, "wsa": WSA})
    header = etree.SubElement(envelope, f"{{{SOAP}}}Header")
    action_element = etree.SubElement(header, f"{{{WSA}}}Action")
    action_element.set(f"{{{SOAP}}}mustUnderstand", "true")
    action_element.text = action
    etree.SubElement(header, f"{{{WSA}}}MessageID").text = f"urn:uuid:{uuid.uuid4()}"
    if relates_to:
        etree.SubElement(header, f"{{{WSA}}}RelatesTo").text = relates_to
    body = etree.SubElement(envelope, f"{{{SOAP}}}Body")
    body.append(payload)
    return envelope


def build_response(
    action: str,
    relates_to: str,
    payload: etree._Element,
    *,
    mtom: bool,
    status_code: int = 200,
) -> SoapResponse:
    """A SOAP 1.2 response; with `mtom`, every `xdsb:Document` is moved to its own MIME part."""
    envelope = _envelope(action, relates_to, payload)
    if not mtom:
        return SoapResponse(
            etree.tostring(envelope, xml_declaration=True, encoding="UTF-8"),
            f'application/soap+xml; charset=UTF-8; action="{action}"',
            status_code,
        )
    boundary = f"MIMEBoundary_{uuid.uuid4().hex}"
    root_id = f"root.message@{uuid.uuid4().hex}.drimbox-sim"
    parts: list[tuple[str, str, bytes]] = []
    for document in envelope.iter(f"{{{XDSB}}}Document"):
        data = base64.b64decode(document.text or "")
        cid = f"{uuid.uuid4().hex}@drimbox-sim"
        document.text = None
        include = etree.SubElement(document, f"{{{XOP}}}Include", nsmap={"xop": XOP})
        include.set("href", f"cid:{cid}")
        mime = document.get(f"{{{SIM}}}mimeType") or "application/octet-stream"
        if f"{{{SIM}}}mimeType" in document.attrib:
            del document.attrib[f"{{{SIM}}}mimeType"]
        parts.append((cid, mime, data))
    etree.cleanup_namespaces(envelope)
    chunks = [
        f"--{boundary}\r\n"
        f'Content-Type: application/xop+xml; charset=UTF-8; type="application/soap+xml"\r\n'
        f"Content-Transfer-Encoding: binary\r\n"
        f"Content-ID: <{root_id}>\r\n\r\n".encode("ascii"),
        etree.tostring(envelope, xml_declaration=True, encoding="UTF-8"),
    ]
    for cid, mime, data in parts:
        chunks.append(
            f"\r\n--{boundary}\r\n"
            f"Content-Type: {mime}\r\n"
            f"Content-Transfer-Encoding: binary\r\n"
            f"Content-ID: <{cid}>\r\n\r\n".encode("ascii")
        )
        chunks.append(data)
    chunks.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    content_type = (
        f'multipart/related; type="application/xop+xml"; boundary="{boundary}"; '
        f'start="<{root_id}>"; start-info="application/soap+xml"; action="{action}"'
    )
    return SoapResponse(b"".join(chunks), content_type, status_code)


def build_fault(fault: SoapFault, relates_to: str = "", *, mtom: bool = False) -> SoapResponse:
    """SOAP 1.2 Fault. HTTP 500 for every fault, as the DMP's SOAP stack (CXF) answers."""
    nsmap = {"soap": SOAP, "wsa": WSA, "wsse": WSSE, "sim": SIM}
    fault_element = etree.Element(f"{{{SOAP}}}Fault", nsmap=nsmap)
    code = etree.SubElement(fault_element, f"{{{SOAP}}}Code")
    value = (
        "soap:VersionMismatch"
        if fault.subcode == "soap:VersionMismatch"
        else ("soap:Sender" if fault.sender else "soap:Receiver")
    )
    etree.SubElement(code, f"{{{SOAP}}}Value").text = value
    if fault.subcode and fault.subcode != "soap:VersionMismatch":
        subcode = etree.SubElement(code, f"{{{SOAP}}}Subcode")
        etree.SubElement(subcode, f"{{{SOAP}}}Value").text = fault.subcode
    reason = etree.SubElement(fault_element, f"{{{SOAP}}}Reason")
    text = etree.SubElement(reason, f"{{{SOAP}}}Text")
    text.set("{http://www.w3.org/XML/1998/namespace}lang", "fr")
    text.text = fault.reason
    detail = etree.SubElement(fault_element, f"{{{SOAP}}}Detail")
    error = etree.SubElement(detail, f"{{{SIM}}}erreur")
    error.set("code", fault.code)
    error.text = fault.reason
    response = build_response(
        "http://www.w3.org/2005/08/addressing/soap/fault", relates_to, fault_element, mtom=False
    )
    response.status_code = 500
    return response
