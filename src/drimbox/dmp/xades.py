"""XML signatures for the DMP: the signer shared by the VIHF, and the IHE DSG signature document.

Owns `XmlSigner` (the ORG signing key and certificate, the configured algorithms, xmlsec calls),
the verification of an enveloped signature against trusted certificates (`verify_signature`), and
the IHE DSG signature document: an enveloping XAdES-B signature (exclusive c14n) whose SignedInfo
signs a `ds:Manifest` holding one `Reference URI="urn:oid:<uniqueId>"` with the digest of each
published document (the KOS), and the XAdES `SignedProperties` (SigningTime, SigningCertificateV2,
SignaturePolicyIdentifier, CommitmentTypeIndication "Source"). `verify_signature_document` checks
it and the documents' digests (for tests and the simulator's peers). It must not build XDS
metadata (the `signs` association is `metadata`'s) nor talk to the network.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import xmlsec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from lxml import etree

from drimbox.cda.model import Code
from drimbox.dmp import codes
from drimbox.dmp.soap import parse_xml, q
from drimbox.trust.keys import load_key_pair

SignatureAlgorithm = Literal["rsa-sha256", "rsa-sha512", "rsa-sha1"]
DigestAlgorithm = Literal["sha256", "sha512", "sha1"]

_SIGN_TRANSFORMS: Final = {
    "rsa-sha256": xmlsec.constants.TransformRsaSha256,
    "rsa-sha512": xmlsec.constants.TransformRsaSha512,
    "rsa-sha1": xmlsec.constants.TransformRsaSha1,
}
_DIGEST_TRANSFORMS: Final = {
    "sha256": xmlsec.constants.TransformSha256,
    "sha512": xmlsec.constants.TransformSha512,
    "sha1": xmlsec.constants.TransformSha1,
}
DIGEST_URIS: Final[dict[str, str]] = {
    "sha1": "http://www.w3.org/2000/09/xmldsig#sha1",
    "sha256": "http://www.w3.org/2001/04/xmlenc#sha256",
    "sha512": "http://www.w3.org/2001/04/xmlenc#sha512",
}
_HASH_BY_URI: Final = {uri: name for name, uri in DIGEST_URIS.items()}
MANIFEST_TYPE: Final = "http://www.w3.org/2000/09/xmldsig#Manifest"
SIGNED_PROPERTIES_TYPE: Final = "http://uri.etsi.org/01903#SignedProperties"


class SignatureError(Exception):
    """A signature that cannot be made or does not verify."""


class DigestMismatch(SignatureError):
    """A document does not match the digest its signature document states."""


def subject_dn(certificate: x509.Certificate) -> str:
    """The subject as the DMP expects it in the VIHF Issuer: `CN=…, OU=…, O=…, ST=…, C=FR`."""
    return ", ".join(rdn.rfc4514_string() for rdn in reversed(certificate.subject.rdns))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class XmlSigner:
    """The ORG signing certificate and key with the algorithms the configuration chose."""

    certificate: x509.Certificate
    key_pem: bytes
    signature_algorithm: SignatureAlgorithm = "rsa-sha256"
    digest_algorithm: DigestAlgorithm = "sha256"

    @classmethod
    def from_files(
        cls,
        cert_path: str | Path,
        key_path: str | Path,
        *,
        signature_algorithm: SignatureAlgorithm = "rsa-sha256",
        digest_algorithm: DigestAlgorithm = "sha256",
        passphrase_env: str = "",
    ) -> XmlSigner:
        """The signer of a key file and its certificate (`drimbox.trust.keys`: permissions
        checked, PKCS#12 and encrypted keys read)."""
        pair = load_key_pair(cert_path, key_path, passphrase_env)
        return cls(pair.certificate, pair.key_pem(), signature_algorithm, digest_algorithm)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def cert_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def subject(self) -> str:
        return subject_dn(self.certificate)

    def digest(self, data: bytes) -> str:
        """Base64 digest of `data` with the configured digest algorithm."""
        return _b64(hashlib.new(self.digest_algorithm, data).digest())

    def new_signature(self, parent: etree._Element | None = None) -> etree._Element:
        """An empty `ds:Signature` template (exc-c14n, configured algorithm, X509Certificate)."""
        holder = parent if parent is not None else etree.Element("holder")
        signature = xmlsec.template.create(
            holder,
            xmlsec.constants.TransformExclC14N,
            _SIGN_TRANSFORMS[self.signature_algorithm],
            ns="ds",
        )
        key_info = xmlsec.template.ensure_key_info(signature)
        x509_data = xmlsec.template.add_x509_data(key_info)
        xmlsec.template.x509_data_add_certificate(x509_data)
        if parent is None:  # its own document, so that ids and c14n see it as the root
            standalone: etree._Element = etree.fromstring(etree.tostring(signature))
            return standalone
        return signature

    def add_reference(
        self,
        signature: etree._Element,
        uri: str,
        *,
        enveloped: bool = False,
        type_: str | None = None,
    ) -> etree._Element:
        reference = xmlsec.template.add_reference(
            signature, _DIGEST_TRANSFORMS[self.digest_algorithm], uri=uri, type=type_
        )
        if enveloped:
            xmlsec.template.add_transform(reference, xmlsec.constants.TransformEnveloped)
        xmlsec.template.add_transform(reference, xmlsec.constants.TransformExclC14N)
        return reference

    def sign(
        self,
        signature: etree._Element,
        id_attribute: str,
        documents: Mapping[str, bytes] | None = None,
    ) -> None:
        """Compute the references and the signature value of a template already in its tree.

        `documents` (uniqueId → bytes) feed the `urn:oid:` references of a ds:Manifest.
        """
        key = xmlsec.Key.from_memory(self.key_pem, xmlsec.constants.KeyDataFormatPem)
        key.load_cert_from_memory(self.cert_pem, xmlsec.constants.KeyDataFormatCertPem)
        context = xmlsec.SignatureContext()
        context.key = key
        xmlsec.tree.add_ids(signature.getroottree().getroot(), [id_attribute])
        try:
            with _urn_documents(documents):
                context.sign(signature)
        except xmlsec.Error as exc:
            raise SignatureError(f"xmlsec could not sign: {exc}") from exc


# xmlsec digests the references of a ds:Manifest itself and reads them through its global I/O
# callbacks: serve `urn:oid:<uniqueId>` from memory while a signature is made or checked, and
# nothing else (no file or network access from signed content).
_IO_LOCK = threading.Lock()


@contextmanager
def _urn_documents(documents: Mapping[str, bytes] | None) -> Iterator[None]:
    if documents is None:
        yield
        return
    by_uri = {f"urn:oid:{uid}".encode(): data for uid, data in documents.items()}

    def match(uri: bytes) -> bool:
        return uri in by_uri

    def open_(uri: bytes) -> io.BytesIO:
        return io.BytesIO(by_uri[uri])

    def read(handle: io.BytesIO, buffer: memoryview) -> int:
        return handle.readinto(buffer)

    def close(handle: io.BytesIO) -> None:
        handle.close()

    with _IO_LOCK:
        xmlsec.cleanup_callbacks()
        xmlsec.register_callbacks(match, open_, read, close)
        try:
            yield
        finally:
            xmlsec.cleanup_callbacks()
            xmlsec.register_default_callbacks()


# --- Verification -------------------------------------------------------------------------------


def _trusted(certificate: x509.Certificate, trusted: Sequence[x509.Certificate]) -> bool:
    now = datetime.now(UTC)
    if not (certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc):
        return False
    for anchor in trusted:
        if anchor == certificate:
            return True
        if anchor.subject == certificate.issuer:
            try:
                certificate.verify_directly_issued_by(anchor)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
    return False


@dataclass(frozen=True)
class VerifiedSignature:
    certificate: x509.Certificate
    signature_method: str
    reference_uris: tuple[str, ...]


def verify_signature(
    signature: etree._Element,
    trusted_certs: Sequence[x509.Certificate],
    *,
    id_attribute: str,
    documents: Mapping[str, bytes] | None = None,
) -> VerifiedSignature:
    """Verify `signature` (a `ds:Signature` inside its document) with the certificate of its
    KeyInfo, which must be one of `trusted_certs` or issued by one of them, and valid today."""
    cert_el = signature.find(f".//{{{codes.DS_NS}}}X509Certificate")
    if cert_el is None or not (cert_el.text or "").strip():
        raise SignatureError("no X509Certificate in the signature's KeyInfo")
    try:
        certificate = x509.load_der_x509_certificate(base64.b64decode(cert_el.text or ""))
    except ValueError as exc:
        raise SignatureError(f"unreadable X509Certificate: {exc}") from exc
    if not _trusted(certificate, trusted_certs):
        raise SignatureError(f"signer {subject_dn(certificate)} is not trusted (or expired)")
    key = xmlsec.Key.from_memory(
        certificate.public_bytes(serialization.Encoding.PEM),
        xmlsec.constants.KeyDataFormatCertPem,
    )
    context = xmlsec.SignatureContext()
    context.key = key
    xmlsec.tree.add_ids(signature.getroottree().getroot(), [id_attribute])
    try:
        with _urn_documents(documents):
            context.verify(signature)
    except xmlsec.Error as exc:
        raise SignatureError(f"signature does not verify: {exc}") from exc
    method = signature.find(f"{{{codes.DS_NS}}}SignedInfo/{{{codes.DS_NS}}}SignatureMethod")
    uris = tuple(
        ref.get("URI", "")
        for ref in signature.iterfind(f"{{{codes.DS_NS}}}SignedInfo/{{{codes.DS_NS}}}Reference")
    )
    return VerifiedSignature(
        certificate=certificate,
        signature_method=method.get("Algorithm", "") if method is not None else "",
        reference_uris=uris,
    )


# --- IHE DSG signature document -----------------------------------------------------------------


@dataclass(frozen=True)
class SignedDocument:
    """A document the signature document covers: its XDS uniqueId and its exact bytes."""

    unique_id: str
    data: bytes


@dataclass(frozen=True)
class SignaturePolicy:
    """An explicit signature policy (XAdES SignaturePolicyId); None means SignaturePolicyImplied."""

    identifier: str  # e.g. urn:oid:…
    digest_algorithm: DigestAlgorithm
    digest_value: str  # base64
    description: str = ""


def _x(name: str) -> str:
    return q(codes.XADES_NS, name)


def _ds(name: str) -> str:
    return q(codes.DS_NS, name)


def build_signature_document(
    documents: Sequence[SignedDocument],
    signer: XmlSigner,
    *,
    signing_time: datetime | None = None,
    purpose: Code = codes.SIGNATURE_PURPOSE,
    policy: SignaturePolicy | None = None,
    signature_id: str | None = None,
) -> bytes:
    """The IHE DSG signature document (XAdES-B enveloping signature over a Manifest)."""
    if not documents:
        raise SignatureError("a signature document must cover at least one document")
    signing_time = (signing_time or datetime.now(UTC)).astimezone(UTC)
    sig_id = signature_id or f"sig-{uuid.uuid4()}"
    props_id = f"{sig_id}-SignedProperties"
    manifest_id = f"{sig_id}-Manifest"

    signature = signer.new_signature()
    signature.set("Id", sig_id)
    # SignedInfo: the manifest and the XAdES signed properties, nothing else.
    signer.add_reference(signature, f"#{manifest_id}", type_=MANIFEST_TYPE)
    signer.add_reference(signature, f"#{props_id}", type_=SIGNED_PROPERTIES_TYPE)

    # XAdES qualifying properties.
    qualifying_object = etree.SubElement(signature, _ds("Object"))
    qualifying = etree.SubElement(
        qualifying_object,
        _x("QualifyingProperties"),
        nsmap={"xades": codes.XADES_NS},
        Target=f"#{sig_id}",
    )
    signed_props = etree.SubElement(qualifying, _x("SignedProperties"), Id=props_id)
    ssp = etree.SubElement(signed_props, _x("SignedSignatureProperties"))
    etree.SubElement(ssp, _x("SigningTime")).text = signing_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    cert = etree.SubElement(etree.SubElement(ssp, _x("SigningCertificateV2")), _x("Cert"))
    cert_digest = etree.SubElement(cert, _x("CertDigest"))
    etree.SubElement(
        cert_digest, _ds("DigestMethod"), Algorithm=DIGEST_URIS[signer.digest_algorithm]
    )
    etree.SubElement(cert_digest, _ds("DigestValue")).text = signer.digest(signer.cert_der)
    spi = etree.SubElement(ssp, _x("SignaturePolicyIdentifier"))
    if policy is None:
        etree.SubElement(spi, _x("SignaturePolicyImplied"))
    else:
        spid = etree.SubElement(spi, _x("SignaturePolicyId"))
        sig_policy_id = etree.SubElement(spid, _x("SigPolicyId"))
        etree.SubElement(sig_policy_id, _x("Identifier")).text = policy.identifier
        if policy.description:
            etree.SubElement(sig_policy_id, _x("Description")).text = policy.description
        policy_hash = etree.SubElement(spid, _x("SigPolicyHash"))
        etree.SubElement(
            policy_hash, _ds("DigestMethod"), Algorithm=DIGEST_URIS[policy.digest_algorithm]
        )
        etree.SubElement(policy_hash, _ds("DigestValue")).text = policy.digest_value
    sdop = etree.SubElement(signed_props, _x("SignedDataObjectProperties"))
    commitment = etree.SubElement(sdop, _x("CommitmentTypeIndication"))
    commitment_id = etree.SubElement(commitment, _x("CommitmentTypeId"))
    etree.SubElement(commitment_id, _x("Identifier")).text = f"urn:oid:{purpose.code}"
    etree.SubElement(commitment_id, _x("Description")).text = purpose.display_name
    etree.SubElement(commitment, _x("AllSignedDataObjects"))

    # IHE DSG: purpose of the signature as a SignatureProperty.
    props_object = etree.SubElement(signature, _ds("Object"))
    properties = etree.SubElement(props_object, _ds("SignatureProperties"))
    etree.SubElement(
        properties, _ds("SignatureProperty"), Id=f"{sig_id}-purposeOfSignature", Target=f"#{sig_id}"
    ).text = purpose.code

    # The manifest: one reference per document, digest of its exact bytes (no transform).
    manifest_object = etree.SubElement(signature, _ds("Object"))
    manifest = etree.SubElement(manifest_object, _ds("Manifest"), Id=manifest_id)
    for document in documents:
        reference = etree.SubElement(
            manifest, _ds("Reference"), URI=f"urn:oid:{document.unique_id}"
        )
        etree.SubElement(
            reference, _ds("DigestMethod"), Algorithm=DIGEST_URIS[signer.digest_algorithm]
        )
        etree.SubElement(reference, _ds("DigestValue"))  # xmlsec digests the bytes

    signer.sign(signature, "Id", {d.unique_id: d.data for d in documents})
    result: bytes = etree.tostring(signature, xml_declaration=True, encoding="UTF-8")
    return result


@dataclass(frozen=True)
class SignatureDocumentInfo:
    certificate: x509.Certificate
    signing_time: str
    digests: dict[str, str]  # uniqueId -> base64 digest stated in the manifest
    signature_method: str


def verify_signature_document(
    xml: bytes,
    documents: Mapping[str, bytes],
    trusted_certs: Sequence[x509.Certificate],
) -> SignatureDocumentInfo:
    """Verify a DSG signature document and that each given document (by uniqueId) matches it.

    Raises `DigestMismatch` when a document differs from the digest in the manifest,
    `SignatureError` for anything else (bad signature, untrusted signer, malformed document).
    """
    try:
        root = parse_xml(xml)
    except etree.XMLSyntaxError as exc:
        raise SignatureError(f"invalid XML: {exc}") from exc
    if root.tag != _ds("Signature"):
        raise SignatureError("the signature document's root is not ds:Signature")
    references = {
        (ref.get("URI") or "").removeprefix("urn:oid:")
        for ref in root.iter(_ds("Reference"))
        if (ref.get("URI") or "").startswith("urn:oid:")
    }
    missing = references - set(documents)
    if missing:
        raise SignatureError(f"documents needed to check the signature: {sorted(missing)}")
    verified = verify_signature(root, trusted_certs, id_attribute="Id", documents=documents)
    signed_types = {
        ref.get("Type", ""): ref.get("URI", "")
        for ref in root.iterfind(f"{_ds('SignedInfo')}/{_ds('Reference')}")
    }
    manifest_uri = signed_types.get(MANIFEST_TYPE, "")
    props_uri = signed_types.get(SIGNED_PROPERTIES_TYPE, "")
    manifest = next(
        (m for m in root.iter(_ds("Manifest")) if f"#{m.get('Id')}" == manifest_uri), None
    )
    props = next(
        (p for p in root.iter(_x("SignedProperties")) if f"#{p.get('Id')}" == props_uri), None
    )
    if manifest is None or props is None:
        raise SignatureError("SignedInfo does not sign both the Manifest and SignedProperties")
    cert_digest = props.find(f".//{_x('SigningCertificateV2')}/{_x('Cert')}/{_x('CertDigest')}")
    if cert_digest is None:
        raise SignatureError("no SigningCertificateV2 in SignedProperties")
    _check_digest(
        cert_digest,
        verified.certificate.public_bytes(serialization.Encoding.DER),
        "signing certificate",
    )
    digests: dict[str, str] = {}
    for reference in manifest.iterfind(_ds("Reference")):
        uid = reference.get("URI", "").removeprefix("urn:oid:")
        digests[uid] = (reference.findtext(_ds("DigestValue")) or "").strip()
        if uid in documents:
            _check_digest(reference, documents[uid], f"document {uid}", DigestMismatch)
    uncovered = set(documents) - set(digests)
    if uncovered:
        raise SignatureError(f"documents not covered by the signature: {sorted(uncovered)}")
    return SignatureDocumentInfo(
        certificate=verified.certificate,
        signing_time=props.findtext(f".//{_x('SigningTime')}") or "",
        digests=digests,
        signature_method=verified.signature_method,
    )


def _check_digest(
    holder: etree._Element,
    data: bytes,
    what: str,
    error: type[SignatureError] = SignatureError,
) -> None:
    method = holder.find(_ds("DigestMethod"))
    algorithm = _HASH_BY_URI.get(method.get("Algorithm", "") if method is not None else "")
    if algorithm is None:
        raise SignatureError(f"unsupported digest algorithm for {what}")
    expected = (holder.findtext(_ds("DigestValue")) or "").strip()
    actual = _b64(hashlib.new(algorithm, data).digest())
    if actual != expected:
        raise error(f"digest mismatch for {what}: signed {expected}, computed {actual}")
