"""Requests for the DMP simulator, built by hand from the official accepted request (XDS.xml).

Independent of `drimbox.dmp` (the box's client) on purpose: the simulator must be tested with
requests a test writes itself — the sample with our own KOS, patient, ids and a fresh VIHF signed
with a TestPki certificate. Also holds the tests that the simulator's mandatory-metadata tables
are exactly what XDS.xml carries.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import io
import re
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import xmlsec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from lxml import etree
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from drimbox.samples import ANS_DIR
from drimbox.sim.dmp import checks
from drimbox.sim.pki import Issued, TestPki

XDS_XML = ANS_DIR / "validators" / "XDS.xml"

SOAP = "http://www.w3.org/2003/05/soap-envelope"
WSA = "http://www.w3.org/2005/08/addressing"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
XDSB = "urn:ihe:iti:xds-b:2007"
XOP = "http://www.w3.org/2004/08/xop/include"
HL7 = "urn:hl7-org:v3"
HAB = "urn:si-dmp-habilitations"
SIM = "urn:drimbox:sim:dmp"
NS = {
    "soap": SOAP,
    "wsa": WSA,
    "wsse": WSSE,
    "saml2": SAML,
    "ds": DS,
    "rim": RIM,
    "rs": RS,
    "lcm": LCM,
    "query": QUERY,
    "xdsb": XDSB,
    "hl7": HL7,
    "hab": HAB,
    "sim": SIM,
}

SAMPLE_PATIENT = "162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH"
SAMPLE_INS = "162018885045327"
INS = "279035121518989"
INS_OID = "1.2.250.1.213.1.4.10"
PATIENT_ID = f"{INS}^^^&{INS_OID}&ISO^NH"
AUTHOR_RPPS = "899700367909"
USER_ID = "899700367910"

ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ITI43 = "urn:ihe:iti:2007:RetrieveDocumentSet"
ITI18 = "urn:ihe:iti:2007:RegistryStoredQuery"
ITI57 = "urn:ihe:iti:2010:UpdateDocumentSet"
TD02 = "urn:hl7-org:v3:PRPA_IN201307UV02"
TD03 = "urn:si-dmp-habilitations:HabilitationsEndPoint:setAuthorization"
FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
FIND_BY_REFERENCE_ID = "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
GET_ASSOCIATIONS = "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
DELETED = "urn:asip:ci-sis:2010:StatusType:Deleted"
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"

SIGN_METHODS = {
    "rsa-sha1": (xmlsec.constants.TransformRsaSha1, xmlsec.constants.TransformSha1),
    "rsa-sha256": (xmlsec.constants.TransformRsaSha256, xmlsec.constants.TransformSha256),
    "rsa-sha512": (xmlsec.constants.TransformRsaSha512, xmlsec.constants.TransformSha512),
}


STRUCTURE = "499700367909006"  # XDS.xml's structure (its certificate's OU)


def tls_client(
    base_url: str, ca: Path, auth: Issued | None, *, timeout: float = 30
) -> httpx.Client:
    """A client of the simulator over mutual TLS with a structure's ORG AUTH certificate."""
    context = ssl.create_default_context(cafile=str(ca))
    if auth is not None:
        assert auth.cert_path is not None and auth.key_path is not None
        context.load_cert_chain(str(auth.cert_path), str(auth.key_path))
    return httpx.Client(base_url=base_url, verify=context, timeout=timeout)


def sample() -> etree._Element:
    return etree.parse(str(XDS_XML)).getroot()


def issuer_dn(certificate: Issued) -> str:
    """The certificate DN in the sample's Issuer style: `CN=…, OU=…, O=…, ST=…, C=FR`."""
    return ", ".join(re.split(r"(?<!\\),", certificate.subject))


def new_uid() -> str:
    return f"1.2.826.0.1.3680043.8.498.{uuid.uuid4().int % 10**20}"


def kos_bytes(
    sop_instance_uid: str | None = None,
    study_uid: str | None = None,
    ins: str = INS,
    ins_oid: str = INS_OID,
) -> bytes:
    """A Key Object Selection document (Part 10) of the patient, built here with pydicom (not by
    the box): the simulator reads its class, instance, patient and study."""
    study_uid = study_uid or new_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = KOS_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_instance_uid or new_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = KOS_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = ins
    issuer = Dataset()
    issuer.UniversalEntityID = ins_oid
    issuer.UniversalEntityIDType = "ISO"
    ds.IssuerOfPatientIDQualifiersSequence = [issuer]
    ds.PatientName = "PAT-TROIS^DOMINIQUE"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = new_uid()
    ds.Modality = "KO"
    instance = Dataset()
    instance.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    instance.ReferencedSOPInstanceUID = new_uid()
    series = Dataset()
    series.SeriesInstanceUID = new_uid()
    series.ReferencedSOPSequence = [instance]
    evidence = Dataset()
    evidence.StudyInstanceUID = study_uid
    evidence.ReferencedSeriesSequence = [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# VIHF


def sign_enveloped(
    element: etree._Element, signer: Issued, *, algorithm: str = "rsa-sha256", index: int = 1
) -> None:
    """An enveloped XMLDSig of `element` (Reference to its ID), KeyInfo with the certificate."""
    method, digest = SIGN_METHODS[algorithm]
    template = xmlsec.template.create(element, xmlsec.constants.TransformExclC14N, method)
    element.insert(index, template)
    reference = xmlsec.template.add_reference(template, digest, uri=f"#{element.get('ID')}")
    xmlsec.template.add_transform(reference, xmlsec.constants.TransformEnveloped)
    xmlsec.template.add_transform(reference, xmlsec.constants.TransformExclC14N)
    key_info = xmlsec.template.ensure_key_info(template)
    xmlsec.template.add_x509_data(key_info)
    context = xmlsec.SignatureContext()
    key = xmlsec.Key.from_memory(signer.key_pem, xmlsec.constants.KeyDataFormatPem)
    key.load_cert_from_memory(signer.cert_pem, xmlsec.constants.KeyDataFormatCertPem)
    context.key = key
    xmlsec.tree.add_ids(element, ["ID"])
    context.sign(template)


@dataclass
class VihfSpec:
    patient_id: str = PATIENT_ID
    name_id: str = AUTHOR_RPPS
    mode: str = "INDIRECTE"
    # The AuthnStatement's AuthnContextDecl; None: what the mode calls for (APP_BROWSER_AUTH in
    # INDIRECTE_RENFORCEE, nothing otherwise).
    authn_decl: str | None = None
    issued: dt.datetime | None = None
    drop: tuple[str, ...] = ()
    overrides: dict[str, str] = field(default_factory=dict)
    sign: bool = True
    algorithm: str = "rsa-sha256"
    issuer: str | None = None
    # Applied after signing (tampering).
    after_signing: Callable[[etree._Element], None] | None = None


def make_vihf(signer: Issued, spec: VihfSpec | None = None) -> etree._Element:
    """The sample's VIHF with our values, re-signed by `signer`."""
    spec = spec or VihfSpec()
    assertion = copy.deepcopy(sample().find(".//saml2:Assertion", NS))
    assert assertion is not None
    old = assertion.find("ds:Signature", NS)
    assert old is not None
    assertion.remove(old)
    issued = (spec.issued or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assertion.set("ID", f"_{uuid.uuid4()}")
    assertion.set("IssueInstant", issued)
    authn = assertion.find("saml2:AuthnStatement", NS)
    assert authn is not None
    authn.set("AuthnInstant", issued)
    decl = spec.authn_decl
    if decl is None and spec.mode == "INDIRECTE_RENFORCEE":
        decl = "APP_BROWSER_AUTH"
    context = authn.find("saml2:AuthnContext", NS)
    assert context is not None
    for old_decl in context.findall("saml2:AuthnContextDecl", NS):
        context.remove(old_decl)
    if decl:
        etree.SubElement(context, f"{{{NS['saml2']}}}AuthnContextDecl").text = decl
    issuer = assertion.find("saml2:Issuer", NS)
    assert issuer is not None
    issuer.text = spec.issuer if spec.issuer is not None else issuer_dn(signer)
    name_id = assertion.find("saml2:Subject/saml2:NameID", NS)
    assert name_id is not None
    name_id.text = spec.name_id
    values = {
        "Identifiant_Structure": STRUCTURE,
        "LPS_ID": "DRIMBOX-TEST",
        "LPS_Nom": "DRIMbox",
        "LPS_Version": "0.1.0",
        "LPS_ID_HOMOLOGATION_DMP": "TEST-0001",
        "Authentification_Mode": spec.mode,
        "urn:oasis:names:tc:xacml:2.0:resource:resource-id": spec.patient_id,
        **spec.overrides,
    }
    for attribute in assertion.iterfind("saml2:AttributeStatement/saml2:Attribute", NS):
        name = attribute.get("Name", "")
        if name in spec.drop:
            parent = attribute.getparent()
            assert parent is not None
            parent.remove(attribute)
        elif name in values:
            value = attribute.find("saml2:AttributeValue", NS)
            assert value is not None
            value.text = values[name]
    if spec.sign:
        sign_enveloped(assertion, signer, algorithm=spec.algorithm)
    if spec.after_signing is not None:
        spec.after_signing(assertion)
    return assertion


# ---------------------------------------------------------------------------------------------
# Envelopes and MTOM


def envelope(
    action: str | None,
    service: str,
    payload: etree._Element,
    vihf: etree._Element | None,
    *,
    must_understand: bool = True,
    to: str | None = None,
) -> etree._Element:
    """An envelope shaped like XDS.xml's: MessageID, To, Action (mustUnderstand), VIHF."""
    root = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP})
    header = etree.SubElement(root, f"{{{SOAP}}}Header")
    etree.SubElement(header, f"{{{WSA}}}MessageID", nsmap={None: WSA}).text = (  # type: ignore[dict-item]
        f"urn:uuid:{uuid.uuid4()}"
    )
    etree.SubElement(header, f"{{{WSA}}}To", nsmap={None: WSA}).text = (  # type: ignore[dict-item]
        to if to is not None else f"https://dmp.test/si-dmp-server/v2/services/{service}"
    )
    if action is not None:
        action_element = etree.SubElement(header, f"{{{WSA}}}Action", nsmap={None: WSA})  # type: ignore[dict-item]
        if must_understand:
            action_element.set("mustUnderstand", "true")
        action_element.text = action
    if vihf is not None:
        security = etree.SubElement(header, f"{{{WSSE}}}Security", nsmap={"wsse": WSSE})
        security.append(vihf)
    body = etree.SubElement(root, f"{{{SOAP}}}Body")
    body.append(payload)
    return root


def to_mtom(root: etree._Element) -> tuple[bytes, str]:
    """MTOM/XOP packaging: every xdsb:Document's base64 text moves to its own binary part."""
    root = copy.deepcopy(root)
    boundary = f"uuid:{uuid.uuid4()}"
    parts: list[tuple[str, bytes]] = []
    for index, document in enumerate(root.iter(f"{{{XDSB}}}Document")):
        cid = f"{index + 2}.{uuid.uuid4().hex}@drimbox.test"
        parts.append((cid, base64.b64decode(document.text or "")))
        document.text = None
        etree.SubElement(document, f"{{{XOP}}}Include", nsmap={"xop": XOP}, href=f"cid:{cid}")
    chunks = [
        f"--{boundary}\r\n"
        'Content-Type: application/xop+xml; charset=UTF-8; type="application/soap+xml"\r\n'
        "Content-Transfer-Encoding: binary\r\n"
        "Content-ID: <root.message@cxf.apache.org>\r\n\r\n".encode(),
        etree.tostring(root, xml_declaration=True, encoding="UTF-8"),
    ]
    for cid, data in parts:
        chunks.append(
            f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Transfer-Encoding: binary\r\nContent-ID: <{cid}>\r\n\r\n".encode()
        )
        chunks.append(data)
    chunks.append(f"\r\n--{boundary}--".encode())
    content_type = (
        f'multipart/related; type="application/xop+xml"; boundary="{boundary}"; '
        'start="<root.message@cxf.apache.org>"; start-info="application/soap+xml"'
    )
    return b"".join(chunks), content_type


def split_multipart(content: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match, content_type
    delimiter = b"--" + match.group(1).encode()
    parts = []
    for chunk in content.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        headers = {}
        for line in head.strip().split(b"\r\n"):
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        parts.append((headers, data.removesuffix(b"\r\n")))
    return parts


@dataclass
class Answer:
    status_code: int
    root: etree._Element
    attachments: dict[str, bytes]
    content_type: str

    @property
    def body(self) -> etree._Element:
        body = self.root.find("soap:Body", NS)
        assert body is not None and len(body)
        return body[0]

    @property
    def fault_code(self) -> str:
        code = self.body.find("soap:Detail/sim:erreur", NS)
        assert code is not None, etree.tostring(self.root)[:2000]
        return code.get("code", "")

    @property
    def fault_subcode(self) -> str:
        return self.body.findtext("soap:Code/soap:Subcode/soap:Value", namespaces=NS) or ""

    @property
    def fault_reason(self) -> str:
        return self.body.findtext("soap:Reason/soap:Text", namespaces=NS) or ""

    def registry_response(self) -> etree._Element:
        body = self.body
        if body.tag == f"{{{RS}}}RegistryResponse":
            return body
        inner = body.find("rs:RegistryResponse", NS)
        return inner if inner is not None else body

    @property
    def status(self) -> str:
        return self.registry_response().get("status", "").rsplit(":", 1)[-1]

    @property
    def error_codes(self) -> list[str]:
        return [
            e.get("errorCode", "")
            for e in self.registry_response().iterfind("rs:RegistryErrorList/rs:RegistryError", NS)
        ]

    @property
    def error_contexts(self) -> str:
        return " | ".join(
            e.get("codeContext", "")
            for e in self.registry_response().iterfind("rs:RegistryErrorList/rs:RegistryError", NS)
        )


def read_answer(response: httpx.Response) -> Answer:
    content_type = response.headers.get("content-type", "")
    attachments: dict[str, bytes] = {}
    if content_type.startswith("multipart/related"):
        parts = split_multipart(response.content, content_type)
        root = etree.fromstring(parts[0][1])
        for headers, data in parts[1:]:
            attachments[headers["content-id"].strip("<>")] = data
    else:
        root = etree.fromstring(response.content)
    return Answer(response.status_code, root, attachments, content_type)


def post(client: httpx.Client, service: str, root: etree._Element, *, mtom: bool = False) -> Answer:
    if mtom:
        content, content_type = to_mtom(root)
    else:
        content = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
        content_type = "application/soap+xml; charset=UTF-8"
    return read_answer(
        client.post(f"/{service}", content=content, headers={"Content-Type": content_type})
    )


# ---------------------------------------------------------------------------------------------
# ITI-41 from XDS.xml


def signature_document(signer: Issued, documents: dict[str, bytes]) -> bytes:
    """An IHE DSG signature: SignedInfo signs a Manifest of SHA-256 digests of the documents
    (`urn:oid:<uniqueId>`); enveloping, exc-c14n, rsa-sha256, certificate in KeyInfo."""
    signature = etree.Element(f"{{{DS}}}Signature", nsmap={"ds": DS}, Id="IHESignature")
    signed_info = etree.SubElement(signature, f"{{{DS}}}SignedInfo")
    etree.SubElement(
        signed_info,
        f"{{{DS}}}CanonicalizationMethod",
        Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#",
    )
    etree.SubElement(
        signed_info,
        f"{{{DS}}}SignatureMethod",
        Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    )
    reference = etree.SubElement(
        signed_info,
        f"{{{DS}}}Reference",
        URI="#IHEManifest",
        Type="http://www.w3.org/2000/09/xmldsig#Manifest",
    )
    transforms = etree.SubElement(reference, f"{{{DS}}}Transforms")
    etree.SubElement(
        transforms, f"{{{DS}}}Transform", Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"
    )
    etree.SubElement(
        reference, f"{{{DS}}}DigestMethod", Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"
    )
    etree.SubElement(reference, f"{{{DS}}}DigestValue")
    etree.SubElement(signature, f"{{{DS}}}SignatureValue")
    key_info = etree.SubElement(signature, f"{{{DS}}}KeyInfo")
    x509 = etree.SubElement(key_info, f"{{{DS}}}X509Data")
    etree.SubElement(x509, f"{{{DS}}}X509Certificate").text = "".join(
        signer.cert_pem.decode().splitlines()[1:-1]
    )
    obj = etree.SubElement(signature, f"{{{DS}}}Object")
    manifest = etree.SubElement(obj, f"{{{DS}}}Manifest", Id="IHEManifest")
    for unique_id, data in documents.items():
        item = etree.SubElement(manifest, f"{{{DS}}}Reference", URI=f"urn:oid:{unique_id}")
        etree.SubElement(
            item, f"{{{DS}}}DigestMethod", Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"
        )
        etree.SubElement(item, f"{{{DS}}}DigestValue").text = base64.b64encode(
            hashlib.sha256(data).digest()
        ).decode()
    # Signed by hand (lxml c14n + cryptography): xmlsec would try to fetch the urn:oid: URIs.
    reference.find(f"{{{DS}}}DigestValue").text = base64.b64encode(  # type: ignore[union-attr]
        hashlib.sha256(etree.tostring(manifest, method="c14n", exclusive=True)).digest()
    ).decode()
    signed = etree.tostring(signed_info, method="c14n", exclusive=True)
    value = signer.key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    signature.find(f"{{{DS}}}SignatureValue").text = base64.b64encode(value).decode()  # type: ignore[union-attr]
    return etree.tostring(signature, xml_declaration=True, encoding="UTF-8")


@dataclass
class Publication:
    """An ITI-41 built from XDS.xml; mutate `request` (the ProvideAndRegister element) at will,
    then `envelope()`."""

    request: etree._Element
    kos: bytes
    kos_uid: str
    signature_uid: str
    set_uid: str
    signature: bytes

    def entry(self, symbolic_id: str = "DocumentKOS") -> etree._Element:
        found = self.request.find(f".//rim:ExtrinsicObject[@id='{symbolic_id}']", NS)
        assert found is not None
        return found

    def remove_slot(self, name: str, symbolic_id: str = "DocumentKOS") -> None:
        entry = self.entry(symbolic_id)
        slot = entry.find(f"rim:Slot[@name='{name}']", NS)
        assert slot is not None, name
        entry.remove(slot)

    def set_slot(self, name: str, value: str, symbolic_id: str = "DocumentKOS") -> None:
        node = self.entry(symbolic_id).find(f"rim:Slot[@name='{name}']/rim:ValueList/rim:Value", NS)
        assert node is not None
        node.text = value

    def document(self, symbolic_id: str) -> etree._Element:
        found = self.request.find(f"xdsb:Document[@id='{symbolic_id}']", NS)
        assert found is not None
        return found

    def add_rplc(self, old_entry_uuid: str) -> None:
        object_list = self.request.find(".//rim:RegistryObjectList", NS)
        assert object_list is not None
        etree.SubElement(
            object_list,
            f"{{{RIM}}}Association",
            associationType="urn:ihe:iti:2007:AssociationType:RPLC",
            id=f"urn:uuid:{uuid.uuid4()}",
            sourceObject="DocumentKOS",
            targetObject=old_entry_uuid,
        )

    def envelope(self, vihf: etree._Element | None, **kwargs: object) -> etree._Element:
        return envelope(ITI41, "repository", copy.deepcopy(self.request), vihf, **kwargs)  # type: ignore[arg-type]


def _set_document(request: etree._Element, symbolic_id: str, data: bytes) -> None:
    entry = request.find(f".//rim:ExtrinsicObject[@id='{symbolic_id}']", NS)
    assert entry is not None
    for name, value in (("hash", hashlib.sha1(data).hexdigest().upper()), ("size", str(len(data)))):
        node = entry.find(f"rim:Slot[@name='{name}']/rim:ValueList/rim:Value", NS)
        assert node is not None
        node.text = value
    document = request.find(f"xdsb:Document[@id='{symbolic_id}']", NS)
    assert document is not None
    for child in list(document):
        document.remove(child)
    document.text = base64.b64encode(data).decode()


def _set_identifier(request: etree._Element, scheme: str, owner: str, value: str) -> None:
    node = request.find(
        f".//rim:ExternalIdentifier[@identificationScheme='{scheme}'][@registryObject='{owner}']",
        NS,
    )
    assert node is not None
    node.set("value", value)


def make_publication(
    signer: Issued,
    *,
    patient_id: str = PATIENT_ID,
    kos: bytes | None = None,
    kos_uid: str | None = None,
    study_uid: str | None = None,
    document_signer: Issued | None = None,
) -> Publication:
    """XDS.xml's ProvideAndRegister with our patient, KOS, uniqueIds and signature document."""
    root = sample()
    request = root.find("soap:Body/xdsb:ProvideAndRegisterDocumentSetRequest", NS)
    assert request is not None
    request = copy.deepcopy(request)
    for element in request.iter():
        for attribute, value in element.attrib.items():
            if SAMPLE_INS in value:
                element.set(attribute, value.replace(SAMPLE_INS, patient_id.split("^")[0]))
        if element.text and SAMPLE_INS in element.text:
            element.text = element.text.replace(SAMPLE_INS, patient_id.split("^")[0])
    for element in request.iter(f"{{{RIM}}}ExternalIdentifier"):
        if element.get("value", "").endswith("^NH"):
            element.set("value", patient_id)
    kos_uid = kos_uid or new_uid()
    study_uid = study_uid or new_uid()
    kos = kos if kos is not None else kos_bytes(kos_uid, study_uid, patient_id.split("^")[0])
    signature_uid, set_uid = new_uid(), new_uid()
    _set_identifier(
        request, "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab", "DocumentKOS", kos_uid
    )
    _set_identifier(
        request, "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab", "Signature01", signature_uid
    )
    _set_identifier(
        request, "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8", "SubmissionSet01", set_uid
    )
    for value in request.iterfind(
        ".//rim:Slot[@name='urn:ihe:iti:xds:2013:referenceIdList']/rim:ValueList/rim:Value",
        NS,
    ):
        if (value.text or "").endswith("studyInstanceUID"):
            value.text = f"{study_uid}^^^&1.2.3.4.5.6&ISO^urn:ihe:iti:xds:2016:studyInstanceUID"
    signature = signature_document(document_signer or signer, {kos_uid: kos})
    _set_document(request, "DocumentKOS", kos)
    _set_document(request, "Signature01", signature)
    return Publication(request, kos, kos_uid, signature_uid, set_uid, signature)


# ---------------------------------------------------------------------------------------------
# ITI-18, ITI-43, ITI-57, TD0.2, TD0.3


def stored_query(
    query_id: str, parameters: dict[str, list[str]], return_type: str = "LeafClass"
) -> etree._Element:
    request = etree.Element(f"{{{QUERY}}}AdhocQueryRequest", nsmap={"query": QUERY, "rim": RIM})
    etree.SubElement(
        request, f"{{{QUERY}}}ResponseOption", returnComposedObjects="true", returnType=return_type
    )
    query = etree.SubElement(request, f"{{{RIM}}}AdhocQuery", id=query_id)
    for name, values in parameters.items():
        slot = etree.SubElement(query, f"{{{RIM}}}Slot", name=name)
        value_list = etree.SubElement(slot, f"{{{RIM}}}ValueList")
        for value in values:
            etree.SubElement(value_list, f"{{{RIM}}}Value").text = value
    return request


def find_documents(
    patient_id: str = PATIENT_ID, statuses: tuple[str, ...] = (APPROVED,), **extra: list[str]
) -> etree._Element:
    parameters = {
        "$XDSDocumentEntryPatientId": [f"'{patient_id}'"],
        "$XDSDocumentEntryStatus": ["(" + ",".join(f"'{s}'" for s in statuses) + ")"],
        **extra,
    }
    return stored_query(FIND_DOCUMENTS, parameters)


def retrieve_request(unique_id: str, repository: str = "1.2.250.1.213.4.1.1.1") -> etree._Element:
    request = etree.Element(f"{{{XDSB}}}RetrieveDocumentSetRequest", nsmap={"xdsb": XDSB})
    item = etree.SubElement(request, f"{{{XDSB}}}DocumentRequest")
    etree.SubElement(item, f"{{{XDSB}}}RepositoryUniqueId").text = repository
    etree.SubElement(item, f"{{{XDSB}}}DocumentUniqueId").text = unique_id
    return request


def update_status_request(
    entry_uuid: str,
    *,
    new_status: str = DELETED,
    original_status: str = APPROVED,
    patient_id: str = PATIENT_ID,
) -> etree._Element:
    """ITI-57: the sample's submission set + an UpdateAvailabilityStatus association."""
    submit = etree.Element(f"{{{LCM}}}SubmitObjectsRequest", nsmap={"lcm": LCM, None: RIM})  # type: ignore[dict-item]
    object_list = etree.SubElement(submit, f"{{{RIM}}}RegistryObjectList")
    package = sample().find(".//rim:RegistryPackage", NS)
    assert package is not None
    package = copy.deepcopy(package)
    for identifier in package.iterfind("rim:ExternalIdentifier", NS):
        if identifier.get("value", "").endswith("^NH"):
            identifier.set("value", patient_id)
        elif (
            identifier.get("identificationScheme")
            == "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
        ):
            identifier.set("value", new_uid())
    object_list.append(package)
    association = etree.SubElement(
        object_list,
        f"{{{RIM}}}Association",
        associationType="urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus",
        id=f"urn:uuid:{uuid.uuid4()}",
        sourceObject="SubmissionSet01",
        targetObject=entry_uuid,
    )
    for name, value in (("OriginalStatus", original_status), ("NewStatus", new_status)):
        slot = etree.SubElement(association, f"{{{RIM}}}Slot", name=name)
        etree.SubElement(
            etree.SubElement(slot, f"{{{RIM}}}ValueList"), f"{{{RIM}}}Value"
        ).text = value
    return submit


def td02_request(ins: str = INS, oid: str = INS_OID) -> etree._Element:
    """PRPA_IN201307UV02 TEST_EXST, as the published DRIMbox demonstrator shapes it."""

    def h(parent: etree._Element, name: str, **attributes: str) -> etree._Element:
        return etree.SubElement(parent, f"{{{HL7}}}{name}", attrib=attributes)

    root = etree.Element(f"{{{HL7}}}PRPA_IN201307UV02", nsmap={None: HL7}, ITSVersion="XML_1.0")  # type: ignore[dict-item]
    h(root, "id", root="1.2.250.1.999.1", extension=str(uuid.uuid4()))
    h(root, "creationTime", value=dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S"))
    h(root, "interactionId", root="2.16.840.1.113883.1.6", extension="PRPA_IN201307UV02")
    h(root, "processingCode", code="D")
    h(root, "processingModeCode", code="T")
    h(root, "acceptAckCode", code="AL")
    device = h(
        h(root, "receiver", typeCode="RCV"), "device", classCode="DEV", determinerCode="INSTANCE"
    )
    h(device, "id", root="1.2.250.1.213.4.1.1.1")
    device = h(
        h(root, "sender", typeCode="SND"), "device", classCode="DEV", determinerCode="INSTANCE"
    )
    h(device, "id", root="1.2.250.1.999.1")
    control = h(root, "controlActProcess", classCode="CACT", moodCode="EVN")
    h(control, "reasonCode", code="TEST_EXST", codeSystem="1.2.250.1.213.1.1.4.11")
    query = h(control, "queryByParameter")
    h(query, "queryId", root="1.2.250.1.999.2", extension=str(uuid.uuid4()))
    h(query, "statusCode", code="new")
    identifier = h(h(query, "parameterList"), "patientIdentifier")
    h(identifier, "value", root=oid, extension=ins)
    h(identifier, "semanticsText").text = "Patient.id"
    return root


def td03_request(action: str = "AJOUT") -> etree._Element:
    root = etree.Element(f"{{{HAB}}}setAuthorization", nsmap={None: HAB})  # type: ignore[dict-item]
    etree.SubElement(root, f"{{{HAB}}}action").text = action
    return root


# ---------------------------------------------------------------------------------------------
# Tests of the simulator's tables against XDS.xml


def _sample_objects() -> dict[str, etree._Element]:
    root = sample()
    return {
        "set": root.find(".//rim:RegistryPackage", NS),  # type: ignore[dict-item]
        "kos": root.find(".//rim:ExtrinsicObject[@id='DocumentKOS']", NS),  # type: ignore[dict-item]
        "signature": root.find(".//rim:ExtrinsicObject[@id='Signature01']", NS),  # type: ignore[dict-item]
    }


def _carried(element: etree._Element) -> tuple[set[str], set[str], set[str]]:
    slots = {s.get("name", "") for s in element.iterfind("rim:Slot", NS)}
    schemes = {
        c.get("classificationScheme", "")
        for c in element.iterfind("rim:Classification", NS)
        if c.get("classificationScheme")
    }
    identifiers = {
        i.get("identificationScheme", "") for i in element.iterfind("rim:ExternalIdentifier", NS)
    }
    return slots, schemes, identifiers


def test_mandatory_tables_are_what_the_accepted_sample_carries() -> None:
    objects = _sample_objects()
    slots, schemes, identifiers = _carried(objects["set"])
    assert set(checks.SUBMISSION_SET_SLOTS) == slots
    assert set(checks.SUBMISSION_SET_CLASSIFICATIONS) == schemes
    assert set(checks.SUBMISSION_SET_IDENTIFIERS) == identifiers
    kos_slots, kos_schemes, kos_identifiers = _carried(objects["kos"])
    signature_slots, signature_schemes, signature_identifiers = _carried(objects["signature"])
    assert set(checks.ENTRY_SLOTS) | set(checks.KOS_ONLY_SLOTS) == kos_slots
    assert set(checks.ENTRY_SLOTS) == signature_slots
    assert set(checks.ENTRY_CLASSIFICATIONS) == kos_schemes == signature_schemes
    assert set(checks.ENTRY_IDENTIFIERS) == kos_identifiers == signature_identifiers


def test_sample_request_is_untouched_by_the_builders() -> None:
    before = XDS_XML.read_bytes()
    pki = TestPki()
    signer = pki.issue("DRIMbox", usage="sign", organizational_unit="499700367909006")
    make_publication(signer).envelope(make_vihf(signer))
    assert XDS_XML.read_bytes() == before
