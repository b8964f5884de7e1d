"""SOAP 1.2 envelopes for the DMP: WS-Addressing headers, WS-Security, typed responses.

Owns the envelope (`MessageID`, `To`, `Action` mustUnderstand, `ReplyTo` anonymous, the
`wsse:Security` header that carries the VIHF), the table of DMP transactions (action and service
path), the bodies that are not ebRIM metadata (ITI-43 retrieve, TD0.2 `PRPA_IN201307UV02`
"TEST_EXST", TD0.3 `setAuthorization`), and the parsing of what comes back: SOAP Faults,
`RegistryResponse` with its `RegistryErrorList`, `AdhocQueryResponse`,
`RetrieveDocumentSetResponse`, TD0.2/TD0.3 answers. It must not do I/O, sign, or pack MIME parts
(`mtom` does), and never builds XDS metadata (`metadata` does).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lxml import etree

from drimbox.dmp import codes

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)


def q(ns: str, name: str) -> str:
    """Clark notation `{ns}name`."""
    return f"{{{ns}}}{name}"


def default_ns(namespace: str, **prefixed: str) -> dict[str, str]:
    """An lxml nsmap with a default namespace (lxml-stubs do not type the `None` key)."""
    mapping: dict[Any, str] = {None: namespace, **prefixed}
    return mapping


def parse_xml(data: bytes) -> etree._Element:
    """Parse untrusted XML (no entity expansion, no network)."""
    return etree.fromstring(data, _PARSER)


# --- Transactions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transaction:
    """One DMP transaction: its name for logs, its WS-Addressing action, its service path."""

    name: str
    action: str
    service: str  # path under the DMP base URL

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/{self.service}"


ITI41 = Transaction("ITI-41 ProvideAndRegisterDocumentSet-b", codes.ACTION_ITI41, "repository")
ITI18 = Transaction("ITI-18 RegistryStoredQuery", codes.ACTION_ITI18, "registry")
ITI43 = Transaction("ITI-43 RetrieveDocumentSet", codes.ACTION_ITI43, "repository")
ITI57 = Transaction("ITI-57 UpdateDocumentSet", codes.ACTION_ITI57, "registry")
TD02 = Transaction("TD0.2 PRPA_IN201307UV02 TEST_EXST", codes.ACTION_TD02, "patients")
TD03 = Transaction("TD0.3 setAuthorization", codes.ACTION_TD03, "habilitations")


# --- Envelope ------------------------------------------------------------------------------------


def new_message_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def build_envelope(
    *,
    action: str,
    to: str,
    body: etree._Element,
    security: Iterable[etree._Element] = (),
    message_id: str | None = None,
) -> bytes:
    """A SOAP 1.2 envelope with WS-Addressing and (when given) a `wsse:Security` header.

    `security` elements (the signed VIHF) are moved into the header as they are: they are already
    signed with exclusive c14n, so the new ancestors do not change their digest.
    """
    envelope = etree.Element(q(codes.SOAP_NS, "Envelope"), nsmap={"soap": codes.SOAP_NS})
    header = etree.SubElement(envelope, q(codes.SOAP_NS, "Header"))
    wsa = default_ns(codes.WSA_NS)
    etree.SubElement(header, q(codes.WSA_NS, "MessageID"), nsmap=wsa).text = (
        message_id or new_message_id()
    )
    etree.SubElement(header, q(codes.WSA_NS, "To"), nsmap=wsa).text = to
    action_el = etree.SubElement(header, q(codes.WSA_NS, "Action"), nsmap=wsa)
    # SOAP 1.2 only honours the qualified attribute (XDS.xml has an unqualified one, ignored).
    action_el.set(q(codes.SOAP_NS, "mustUnderstand"), "true")
    action_el.text = action
    reply_to = etree.SubElement(header, q(codes.WSA_NS, "ReplyTo"), nsmap=wsa)
    etree.SubElement(reply_to, q(codes.WSA_NS, "Address")).text = codes.WSA_ANONYMOUS
    tokens = list(security)
    if tokens:
        sec = etree.SubElement(header, q(codes.WSSE_NS, "Security"), nsmap={"wsse": codes.WSSE_NS})
        sec.extend(tokens)
    etree.SubElement(envelope, q(codes.SOAP_NS, "Body")).append(body)
    result: bytes = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
    return result


# --- Faults and responses ------------------------------------------------------------------------


class SoapFault(Exception):
    """The DMP answered with a SOAP Fault."""

    def __init__(self, code: str, subcodes: tuple[str, ...], reason: str, detail: str) -> None:
        self.code = code  # e.g. soap:Receiver / soap:Sender (local part)
        self.subcodes = subcodes
        self.reason = reason
        self.detail = detail
        super().__init__(f"SOAP Fault {code} {'/'.join(subcodes)}: {reason}")


class SoapError(Exception):
    """The response is not a SOAP message we can read."""


def _local(tag: object) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def body_of(envelope_bytes: bytes) -> etree._Element:
    """The first element of the SOAP Body.

    Raises `SoapFault` for a Fault, `SoapError` when the message is not readable SOAP.
    """
    try:
        root = parse_xml(envelope_bytes)
    except etree.XMLSyntaxError as exc:
        raise SoapError(f"invalid XML in the SOAP response: {exc}") from exc
    if _local(root.tag) != "Envelope":
        raise SoapError(f"the response is not a SOAP envelope (root <{_local(root.tag)}>)")
    body = next((c for c in root if _local(c.tag) == "Body"), None)
    if body is None:
        raise SoapError("SOAP envelope without a Body")
    content = next((c for c in body if isinstance(c.tag, str)), None)
    if content is None:
        raise SoapError("empty SOAP Body")
    if _local(content.tag) == "Fault":
        raise _fault(content)
    return content


def _text(el: etree._Element | None) -> str:
    return "".join(str(t) for t in el.itertext()).strip() if el is not None else ""


def _fault(fault: etree._Element) -> SoapFault:
    code_el = fault.find(f"{{{codes.SOAP_NS}}}Code")
    code = ""
    subcodes: list[str] = []
    if code_el is not None:
        code = _text(code_el.find(f"{{{codes.SOAP_NS}}}Value")).rpartition(":")[2]
        sub = code_el.find(f"{{{codes.SOAP_NS}}}Subcode")
        while sub is not None:
            subcodes.append(_text(sub.find(f"{{{codes.SOAP_NS}}}Value")).rpartition(":")[2])
            sub = sub.find(f"{{{codes.SOAP_NS}}}Subcode")
    reason = _text(fault.find(f"{{{codes.SOAP_NS}}}Reason"))
    detail_el = fault.find(f"{{{codes.SOAP_NS}}}Detail")
    detail = (
        etree.tostring(detail_el, encoding="unicode", with_tail=False)
        if detail_el is not None
        else ""
    )
    if not code:  # SOAP 1.1 style fault (faultcode/faultstring)
        code = _text(fault.find("faultcode")).rpartition(":")[2]
        reason = reason or _text(fault.find("faultstring"))
    return SoapFault(code or "Unknown", tuple(subcodes), reason, detail)


@dataclass(frozen=True)
class RegistryError:
    code: str  # errorCode, e.g. XDSRegistryBusy
    severity: str  # local part: Error or Warning
    context: str
    location: str = ""


@dataclass(frozen=True)
class RegistryResponse:
    status: str
    errors: tuple[RegistryError, ...] = ()

    @property
    def success(self) -> bool:
        return self.status == codes.RESPONSE_SUCCESS

    @property
    def partial(self) -> bool:
        return self.status == codes.RESPONSE_PARTIAL

    @property
    def failure(self) -> bool:
        return not (self.success or self.partial)


def parse_registry_response(element: etree._Element) -> RegistryResponse:
    """A `RegistryResponse` (or any element carrying `@status` and a `RegistryErrorList`)."""
    status = element.get("status", "")
    errors: list[RegistryError] = []
    for err in element.iter(f"{{{codes.RS_NS}}}RegistryError"):
        errors.append(
            RegistryError(
                code=err.get("errorCode", ""),
                severity=err.get("severity", "").rpartition(":")[2],
                context=err.get("codeContext", "") or _text(err),
                location=err.get("location", ""),
            )
        )
    return RegistryResponse(status=status, errors=tuple(errors))


@dataclass(frozen=True)
class QueryResponse:
    """An `AdhocQueryResponse`: status, errors and the `RegistryObjectList` (metadata parses it)."""

    response: RegistryResponse
    objects: etree._Element | None


def parse_query_response(element: etree._Element) -> QueryResponse:
    if _local(element.tag) != "AdhocQueryResponse":
        raise SoapError(f"expected AdhocQueryResponse, got <{_local(element.tag)}>")
    return QueryResponse(
        response=parse_registry_response(element),
        objects=element.find(f"{{{codes.RIM_NS}}}RegistryObjectList"),
    )


def expect_registry_response(element: etree._Element) -> RegistryResponse:
    if _local(element.tag) != "RegistryResponse":
        raise SoapError(f"expected RegistryResponse, got <{_local(element.tag)}>")
    return parse_registry_response(element)


# --- ITI-43 --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentRequest:
    repository_unique_id: str
    document_unique_id: str
    home_community_id: str | None = None


def build_retrieve_request(requests: Iterable[DocumentRequest]) -> etree._Element:
    root = etree.Element(
        q(codes.XDSB_NS, "RetrieveDocumentSetRequest"), nsmap={"xdsb": codes.XDSB_NS}
    )
    for req in requests:
        item = etree.SubElement(root, q(codes.XDSB_NS, "DocumentRequest"))
        if req.home_community_id:
            etree.SubElement(item, q(codes.XDSB_NS, "HomeCommunityId")).text = req.home_community_id
        etree.SubElement(
            item, q(codes.XDSB_NS, "RepositoryUniqueId")
        ).text = req.repository_unique_id
        etree.SubElement(item, q(codes.XDSB_NS, "DocumentUniqueId")).text = req.document_unique_id
    return root


@dataclass(frozen=True)
class RetrievedDocument:
    repository_unique_id: str
    document_unique_id: str
    mime_type: str
    content: bytes


@dataclass(frozen=True)
class RetrieveResponse:
    response: RegistryResponse
    documents: tuple[RetrievedDocument, ...] = field(default_factory=tuple)


def parse_retrieve_response(
    element: etree._Element, resolve: Callable[[str], bytes]
) -> RetrieveResponse:
    """`resolve(href)` returns the bytes of an `xop:Include` (see `mtom.MtomResponse.resolve`)."""
    if _local(element.tag) != "RetrieveDocumentSetResponse":
        raise SoapError(f"expected RetrieveDocumentSetResponse, got <{_local(element.tag)}>")
    registry = element.find(f"{{{codes.RS_NS}}}RegistryResponse")
    response = (
        parse_registry_response(registry) if registry is not None else RegistryResponse(status="")
    )
    documents: list[RetrievedDocument] = []
    for doc in element.iter(f"{{{codes.XDSB_NS}}}DocumentResponse"):
        content_el = doc.find(f"{{{codes.XDSB_NS}}}Document")
        content = b""
        if content_el is not None:
            include = content_el.find(f"{{{codes.XOP_NS}}}Include")
            if include is not None:
                content = resolve(include.get("href", ""))
            else:  # inline base64 (a non-MTOM server)
                content = base64.b64decode("".join(str(t) for t in content_el.itertext()))
        documents.append(
            RetrievedDocument(
                repository_unique_id=_text(doc.find(f"{{{codes.XDSB_NS}}}RepositoryUniqueId")),
                document_unique_id=_text(doc.find(f"{{{codes.XDSB_NS}}}DocumentUniqueId")),
                mime_type=_text(doc.find(f"{{{codes.XDSB_NS}}}mimeType")),
                content=content,
            )
        )
    return RetrieveResponse(response=response, documents=tuple(documents))


# --- TD0.2: does the patient have a DMP, may this professional access it ------------------------

# Roots of the HL7v3 message ids: under the site's OID (passed in), not a foreign one.
_DMP_DEVICE_ROOT = "1.2.250.1.213.4.1.1.1"
TD02_REASON = ("TEST_EXST", "1.2.250.1.213.1.1.4.11", "Test d'existence de dossier")


def _ii(parent: etree._Element, name: str, root: str, extension: str | None = None) -> None:
    el = etree.SubElement(parent, q(codes.HL7_NS, name), root=root)
    if extension is not None:
        el.set("extension", extension)


def _device(parent: etree._Element, role: str, root: str, name: str) -> None:
    holder = etree.SubElement(
        parent, q(codes.HL7_NS, role), typeCode="RCV" if role == "receiver" else "SND"
    )
    device = etree.SubElement(
        holder, q(codes.HL7_NS, "device"), classCode="DEV", determinerCode="INSTANCE"
    )
    _ii(device, "id", root)
    etree.SubElement(device, q(codes.HL7_NS, "softwareName")).text = name


def build_patient_query(
    *,
    ins: str,
    ins_oid: str,
    sender_root: str,
    sender_name: str,
    now: datetime | None = None,
) -> etree._Element:
    """TD0.2 `PRPA_IN201307UV02` (HL7v3 patient registry query) with reasonCode TEST_EXST."""
    now = now or datetime.now(UTC)
    hl7 = codes.HL7_NS
    msg = etree.Element(q(hl7, "PRPA_IN201307UV02"), nsmap=default_ns(hl7), ITSVersion="XML_1.0")
    _ii(msg, "id", sender_root, str(uuid.uuid4()))
    etree.SubElement(
        msg, q(hl7, "creationTime"), value=now.astimezone(UTC).strftime("%Y%m%d%H%M%S")
    )
    _ii(msg, "interactionId", "2.16.840.1.113883.1.6", "PRPA_IN201307UV02")
    etree.SubElement(msg, q(hl7, "processingCode"), code="P")
    etree.SubElement(msg, q(hl7, "processingModeCode"), code="T")
    etree.SubElement(msg, q(hl7, "acceptAckCode"), code="AL")
    _device(msg, "receiver", _DMP_DEVICE_ROOT, "DMP")
    _device(msg, "sender", sender_root, sender_name)
    control = etree.SubElement(msg, q(hl7, "controlActProcess"), classCode="CACT", moodCode="EVN")
    code, system, display = TD02_REASON
    etree.SubElement(
        control, q(hl7, "reasonCode"), code=code, codeSystem=system, displayName=display
    )
    query = etree.SubElement(control, q(hl7, "queryByParameter"))
    _ii(query, "queryId", sender_root, str(uuid.uuid4()))
    etree.SubElement(query, q(hl7, "statusCode"), code="new")
    params = etree.SubElement(query, q(hl7, "parameterList"))
    patient = etree.SubElement(params, q(hl7, "patientIdentifier"))
    _ii(patient, "value", ins_oid, ins)
    etree.SubElement(patient, q(hl7, "semanticsText")).text = "Patient.id"
    return msg


@dataclass(frozen=True)
class PatientStatus:
    """TD0.2 answer. `observations` maps each coded observation (e.g. AUTORISATION) to its value."""

    query_response_code: str  # OK, NF (not found), AE/QE (error)
    exists: bool
    observations: dict[str, str]
    detail: str = ""

    @property
    def authorization(self) -> str | None:
        """VALIDE, INTERDIT, EXPIREE… as the DMP states it; None when it says nothing."""
        return self.observations.get("AUTORISATION")


def parse_patient_status(element: etree._Element) -> PatientStatus:
    """Read a `PRPA_IN201308UV02` answer leniently: codes anywhere, values next to them."""
    qrc = ""
    for el in element.iter(f"{{{codes.HL7_NS}}}queryResponseCode"):
        qrc = el.get("code", "")
    observations: dict[str, str] = {}
    for el in element.iter():
        if _local(el.tag) != "code" or not el.get("code"):
            continue
        parent = el.getparent()
        if parent is None:
            continue
        value = next((s for s in parent if _local(s.tag) == "value"), None)
        if value is not None:
            observations[el.get("code", "")] = value.get("code") or _text(value)
    has_patient = any(_local(el.tag) == "patient" for el in element.iter())
    details = [
        _text(el)
        for el in element.iter()
        if _local(el.tag) in ("acknowledgementDetail", "text") and _text(el)
    ]
    return PatientStatus(
        query_response_code=qrc,
        exists=qrc == "OK" and (has_patient or bool(observations)),
        observations=observations,
        detail="; ".join(details),
    )


# --- TD0.3: the professional declares a care relationship (authorization) ------------------------


def build_set_authorization(action: str = "AJOUT") -> etree._Element:
    """TD0.3 `setAuthorization`; the patient and the professional are in the VIHF."""
    root = etree.Element(
        q(codes.DMP_HABILITATIONS_NS, "setAuthorization"),
        nsmap=default_ns(codes.DMP_HABILITATIONS_NS),
    )
    etree.SubElement(root, q(codes.DMP_HABILITATIONS_NS, "action")).text = action
    return root


@dataclass(frozen=True)
class AuthorizationResult:
    status: str  # as the DMP says it (e.g. OK); empty when the answer carries none
    detail: str = ""


def parse_set_authorization(element: etree._Element) -> AuthorizationResult:
    status = ""
    for el in element.iter():
        if _local(el.tag) in ("status", "statut", "resultat", "result", "code") and _text(el):
            status = _text(el)
            break
    return AuthorizationResult(status=status or "OK", detail=_text(element))
