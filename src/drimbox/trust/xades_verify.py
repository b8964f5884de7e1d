"""Verification of the whitelist's enveloped XAdES-B signature and of its signer.

Owns `verify_enveloped_xades`: given a parsed document, it checks the one `ds:Signature` child of
the root, the shape of its `SignedInfo` (exc-c14n, RSA with SHA-256 or better, a `URI=""` reference
with the XPath Filter 2.0 "subtract the signature" transform — or the plain enveloped transform —
and a reference to the XAdES `SignedProperties` by Id), the `SigningCertificateV2` binding of the
signer certificate, the signature itself (the `xmlsec` binding, restricted to those transforms),
and the signer: a chain to one of the configured trust anchors, validity now and at the signing
time, key usage, and an optional expected CN/OU. Any refusal is a `WhitelistError` with a reason.

It must not read the list's content (that is `whitelist`'s) nor fetch anything: no network, no
remote reference, no certificate from outside the document and the given anchors.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import xmlsec
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

from drimbox.trust.dn import DistinguishedName
from drimbox.trust.errors import Reason, WhitelistError

if TYPE_CHECKING:
    from xmlsec.constants import __Transform as XmlsecTransform

DS = "http://www.w3.org/2000/09/xmldsig#"
XADES = "http://uri.etsi.org/01903/v1.3.2#"
FILTER2 = "http://www.w3.org/2002/06/xmldsig-filter2"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
ENVELOPED = DS + "enveloped-signature"
SIGNED_PROPERTIES_TYPE = "http://uri.etsi.org/01903#SignedProperties"
SUBTRACT_SIGNATURE = "/descendant::ds:Signature"

RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA1 = DS + "rsa-sha1"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
SHA512 = "http://www.w3.org/2001/04/xmlenc#sha512"


@dataclass(frozen=True)
class _Algorithm:
    hash: type[hashes.HashAlgorithm]
    transform: XmlsecTransform
    weak: bool = False


_SIGNATURE_METHODS: dict[str, _Algorithm] = {
    RSA_SHA256: _Algorithm(hashes.SHA256, xmlsec.constants.TransformRsaSha256),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384": _Algorithm(
        hashes.SHA384, xmlsec.constants.TransformRsaSha384
    ),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512": _Algorithm(
        hashes.SHA512, xmlsec.constants.TransformRsaSha512
    ),
    RSA_SHA1: _Algorithm(hashes.SHA1, xmlsec.constants.TransformRsaSha1, weak=True),
}
_DIGEST_METHODS: dict[str, _Algorithm] = {
    SHA256: _Algorithm(hashes.SHA256, xmlsec.constants.TransformSha256),
    "http://www.w3.org/2001/04/xmldsig-more#sha384": _Algorithm(
        hashes.SHA384, xmlsec.constants.TransformSha384
    ),
    SHA512: _Algorithm(hashes.SHA512, xmlsec.constants.TransformSha512),
    DS + "sha1": _Algorithm(hashes.SHA1, xmlsec.constants.TransformSha1, weak=True),
}
_C14N_METHODS = {EXC_C14N: True, C14N: False}  # algorithm → exclusive
_MAX_CHAIN = 8
_MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class ExpectedSigner:
    """Optional constraints on the signer's subject: regular expressions, full match, any case."""

    common_name: str | None = None
    organizational_unit: str | None = None

    @classmethod
    def ans(cls) -> ExpectedSigner:
        """The ANS signer of the official lists (`CN=Liste Blanche DRIM-M, OU=318751275100020`)."""
        return cls(common_name=r"Liste Blanche DRIM-M", organizational_unit=r"318751275100020")

    def check(self, subject: x509.Name) -> None:
        dn = DistinguishedName.from_name(subject)
        for label, pattern, short in (
            ("CN", self.common_name, "CN"),
            ("OU", self.organizational_unit, "OU"),
        ):
            if pattern is None:
                continue
            if not any(re.fullmatch(pattern, v, re.IGNORECASE) for v in dn.values(short)):
                raise WhitelistError(
                    Reason.UNEXPECTED_SIGNER,
                    f"signer {subject.rfc4514_string()} has no {label} matching {pattern!r}",
                )


@dataclass(frozen=True)
class SignerSummary:
    """Who signed the list, as shown on the status page and by `drimbox whitelist verify`."""

    subject: str
    issuer: str
    serial_number: int
    not_before: datetime
    not_after: datetime
    signing_time: datetime | None
    signature_method: str
    chain: tuple[str, ...]  # subjects, from the signer up to the trust anchor
    certificate: x509.Certificate = field(repr=False, compare=False)
    # The certificates of `chain` (signer first): each is checked against its issuer's CRL.
    path: tuple[x509.Certificate, ...] = field(default=(), repr=False, compare=False)


def _elements(node: etree._Element) -> list[etree._Element]:
    """Element children only: comments and processing instructions are not structure."""
    return [child for child in node if isinstance(child.tag, str)]


def _one(parent: etree._Element, namespace: str, name: str) -> etree._Element:
    found = [c for c in _elements(parent) if c.tag == f"{{{namespace}}}{name}"]
    if len(found) != 1:
        raise WhitelistError(
            Reason.SIGNATURE_STRUCTURE,
            f"expected exactly one {name} in {etree.QName(parent).localname}, found {len(found)}",
        )
    return found[0]


def _text(node: etree._Element) -> str:
    # Joining the text nodes (not `.text`) so that a comment, which exc-c14n ignores and an
    # attacker may therefore insert freely, cannot truncate a value.
    texts = node.xpath("text()")
    return "".join(str(t) for t in texts).strip() if isinstance(texts, list) else ""


def _b64(text: str, what: str, reason: Reason) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WhitelistError(reason, f"{what} is not valid base64") from exc


def embedded_certificates(signature: etree._Element) -> list[x509.Certificate]:
    """The certificates of `ds:KeyInfo/ds:X509Data`, in document order."""
    certificates = []
    for node in signature.iterfind(f"{{{DS}}}KeyInfo/{{{DS}}}X509Data/{{{DS}}}X509Certificate"):
        der = _b64(_text(node), "X509Certificate", Reason.SIGNATURE_STRUCTURE)
        try:
            certificates.append(x509.load_der_x509_certificate(der))
        except (ValueError, x509.InvalidVersion) as exc:
            raise WhitelistError(
                Reason.SIGNATURE_STRUCTURE, "unreadable certificate in KeyInfo"
            ) from exc
    return certificates


def find_signature(root: etree._Element) -> etree._Element:
    """The one enveloped `ds:Signature`, a child of the root, or a refusal."""
    signatures = list(root.iter(f"{{{DS}}}Signature"))
    if not signatures:
        raise WhitelistError(Reason.UNSIGNED, "no ds:Signature element in the document")
    # The XPath filter subtracts *every* ds:Signature from the signed data: a second one could
    # carry unsigned content anywhere (e.g. a Domaine inside a fake Signature), hence exactly one,
    # and only where an enveloped signature belongs.
    if len(signatures) != 1:
        raise WhitelistError(
            Reason.SIGNATURE_STRUCTURE, f"{len(signatures)} ds:Signature elements, expected one"
        )
    if signatures[0].getparent() is not root:
        raise WhitelistError(
            Reason.SIGNATURE_STRUCTURE, "ds:Signature is not a child of the root element"
        )
    return signatures[0]


def _algorithm(
    table: dict[str, _Algorithm], algorithm: str | None, what: str, allow_sha1: bool
) -> _Algorithm:
    found = table.get(algorithm or "")
    if found is None:
        raise WhitelistError(Reason.WEAK_ALGORITHM, f"unsupported {what} {algorithm!r}")
    if found.weak and not allow_sha1:
        raise WhitelistError(Reason.WEAK_ALGORITHM, f"{what} {algorithm} (SHA-1) is refused")
    return found


def _transforms(reference: etree._Element) -> list[etree._Element]:
    nodes = [c for c in _elements(reference) if c.tag == f"{{{DS}}}Transforms"]
    if len(nodes) > 1:
        raise WhitelistError(Reason.SIGNATURE_STRUCTURE, "several Transforms in one Reference")
    if not nodes:
        return []
    transforms = _elements(nodes[0])
    if any(t.tag != f"{{{DS}}}Transform" for t in transforms):
        raise WhitelistError(Reason.SIGNATURE_STRUCTURE, "unexpected element in Transforms")
    return transforms


def _check_document_transforms(reference: etree._Element) -> None:
    """`URI=""` must mean "the whole document minus this signature", and nothing else."""
    transforms = _transforms(reference)
    if not transforms or len(transforms) > 2:
        raise WhitelistError(
            Reason.SIGNATURE_STRUCTURE, f"{len(transforms)} transforms on the document reference"
        )
    first = transforms[0]
    algorithm = first.get("Algorithm")
    if algorithm == FILTER2:
        paths = _elements(first)
        if (
            len(paths) != 1
            or paths[0].tag != f"{{{FILTER2}}}XPath"
            or paths[0].get("Filter") != "subtract"
            or _text(paths[0]) != SUBTRACT_SIGNATURE
            or paths[0].nsmap.get("ds") != DS
        ):
            raise WhitelistError(
                Reason.SIGNATURE_STRUCTURE,
                "the XPath Filter 2.0 transform must only subtract /descendant::ds:Signature",
            )
    elif algorithm != ENVELOPED or _elements(first):
        raise WhitelistError(
            Reason.SIGNATURE_STRUCTURE, f"unexpected transform {algorithm!r} on the document"
        )
    if len(transforms) == 2 and transforms[1].get("Algorithm") not in _C14N_METHODS:
        raise WhitelistError(
            Reason.SIGNATURE_STRUCTURE,
            f"unexpected transform {transforms[1].get('Algorithm')!r} after the filter",
        )


def _check_properties_transforms(reference: etree._Element) -> None:
    transforms = _transforms(reference)
    if len(transforms) > 1 or any(t.get("Algorithm") not in _C14N_METHODS for t in transforms):
        raise WhitelistError(
            Reason.SIGNATURE_STRUCTURE, "only a canonicalization may transform SignedProperties"
        )


def _parse_time(text: str, what: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise WhitelistError(Reason.SIGNATURE_STRUCTURE, f"{what} {text!r} is not a date") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def issuer_serial_v2(certificate: x509.Certificate) -> bytes:
    """DER `IssuerSerial ::= SEQUENCE { issuer GeneralNames, serialNumber INTEGER }` (RFC 5035)."""
    serial = certificate.serial_number
    integer = _tlv(0x02, serial.to_bytes(serial.bit_length() // 8 + 1, "big", signed=True))
    general_names = _tlv(0x30, _tlv(0xA4, certificate.issuer.public_bytes()))
    return _tlv(0x30, general_names + integer)


def _signing_certificate(
    properties: etree._Element, candidates: Sequence[x509.Certificate], allow_sha1: bool
) -> x509.Certificate:
    """The embedded certificate that `SigningCertificateV2` (or v1) designates as the signer's."""
    signed = _one(properties, XADES, "SignedSignatureProperties")
    holders = [
        c
        for c in _elements(signed)
        if c.tag in (f"{{{XADES}}}SigningCertificateV2", f"{{{XADES}}}SigningCertificate")
    ]
    if len(holders) != 1:
        raise WhitelistError(
            Reason.SIGNATURE_STRUCTURE, "XAdES-B needs exactly one SigningCertificateV2"
        )
    certs = [c for c in _elements(holders[0]) if c.tag == f"{{{XADES}}}Cert"]
    if not certs:
        raise WhitelistError(Reason.SIGNATURE_STRUCTURE, "SigningCertificateV2 holds no Cert")
    # ETSI EN 319 132-1: the first Cert is the signing certificate; others are optional extras.
    cert = certs[0]
    digest = _one(cert, XADES, "CertDigest")
    method = _one(digest, DS, "DigestMethod").get("Algorithm")
    algorithm = _algorithm(_DIGEST_METHODS, method, "certificate digest", allow_sha1)
    expected = _b64(
        _text(_one(digest, DS, "DigestValue")), "CertDigest", Reason.SIGNATURE_STRUCTURE
    )
    matching = [c for c in candidates if c.fingerprint(algorithm.hash()) == expected]
    if not matching:
        raise WhitelistError(
            Reason.SIGNER_MISMATCH,
            "no certificate in KeyInfo has the digest given by SigningCertificateV2",
        )
    signer = matching[0]
    for node in _elements(cert):
        if node.tag == f"{{{XADES}}}IssuerSerialV2":
            if _b64(_text(node), "IssuerSerialV2", Reason.SIGNER_MISMATCH) != issuer_serial_v2(
                signer
            ):
                raise WhitelistError(
                    Reason.SIGNER_MISMATCH, "IssuerSerialV2 does not match the signer certificate"
                )
        elif node.tag == f"{{{XADES}}}IssuerSerial":
            serial = _text(_one(node, DS, "X509SerialNumber"))
            if serial != str(signer.serial_number):
                raise WhitelistError(
                    Reason.SIGNER_MISMATCH, "IssuerSerial does not match the signer certificate"
                )
    return signer


ExtensionT = TypeVar("ExtensionT", bound=x509.ExtensionType)


def _extension(certificate: x509.Certificate, kind: type[ExtensionT]) -> ExtensionT | None:
    """One extension, None when absent; cryptography parses extensions lazily, so a damaged one
    surfaces here and is a refusal, not a crash."""
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise WhitelistError(
            Reason.UNTRUSTED_SIGNER,
            f"unreadable extension in {certificate.subject.rfc4514_string()}: {exc}",
        ) from exc


def _is_ca(certificate: x509.Certificate) -> tuple[bool, int | None]:
    constraints = _extension(certificate, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        return False, None
    usage = _extension(certificate, x509.KeyUsage)
    return (usage is None or usage.key_cert_sign), constraints.path_length


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def build_chain(
    signer: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
) -> list[x509.Certificate]:
    """A path signer → … → anchor (the anchor included), each link's signature checked.

    An anchor may be a root or an intermediate CA (or the signer itself, pinned). Only
    `intermediates` — here the other certificates of `KeyInfo` — may fill the gap.
    """
    path = [signer]
    anchor_der = {a.public_bytes(serialization.Encoding.DER) for a in anchors}
    while len(path) <= _MAX_CHAIN:
        current = path[-1]
        if current.public_bytes(serialization.Encoding.DER) in anchor_der:
            return path
        depth = len(path) - 1  # CA certificates already below the next issuer
        for pool, final in ((anchors, True), (intermediates, False)):
            for issuer in pool:
                if issuer in path or not _issued_by(current, issuer):
                    continue
                is_ca, path_length = _is_ca(issuer)
                if not is_ca or (path_length is not None and depth > path_length):
                    continue
                path.append(issuer)
                if final:
                    return path
                break
            else:
                continue
            break
        else:
            break
    raise WhitelistError(
        Reason.UNTRUSTED_SIGNER,
        f"no chain from {signer.subject.rfc4514_string()} "
        f"(issuer {signer.issuer.rfc4514_string()}) to a configured trust anchor",
    )


def _check_validity(path: Sequence[x509.Certificate], at: datetime, when: str) -> None:
    for certificate in path:
        if not certificate.not_valid_before_utc <= at <= certificate.not_valid_after_utc:
            raise WhitelistError(
                Reason.SIGNER_EXPIRED,
                f"{certificate.subject.rfc4514_string()} is valid from "
                f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not {when} "
                f"({at:%Y-%m-%d %H:%M} UTC)",
            )


def _check_signer_usage(signer: x509.Certificate) -> None:
    usage = _extension(signer, x509.KeyUsage)
    if usage is not None and not (usage.digital_signature or usage.content_commitment):
        raise WhitelistError(
            Reason.UNTRUSTED_SIGNER, "the signer certificate's key usage forbids signatures"
        )


def _xmlsec_verify(
    root: etree._Element,
    signature: etree._Element,
    signer: x509.Certificate,
    signature_method: _Algorithm,
    digests: Sequence[_Algorithm],
) -> None:
    xmlsec.tree.add_ids(root, ["Id"])
    context = xmlsec.SignatureContext()
    # Only what the DRIM-M shape needs: no XSLT, no XPointer, no remote or base64 transform.
    for transform in (
        xmlsec.constants.TransformExclC14N,
        xmlsec.constants.TransformInclC14N,
        xmlsec.constants.TransformXPath2,
        xmlsec.constants.TransformEnveloped,
        *(d.transform for d in digests),
    ):
        context.enable_reference_transform(transform)
    for transform in (
        xmlsec.constants.TransformExclC14N,
        xmlsec.constants.TransformInclC14N,
        signature_method.transform,
    ):
        context.enable_signature_transform(transform)
    pem = signer.public_bytes(serialization.Encoding.PEM)
    context.key = xmlsec.Key.from_memory(pem, xmlsec.constants.KeyDataFormatCertPem)
    context.verify(signature)


def _signed_info_is_intact(
    signed_info: etree._Element,
    signature: etree._Element,
    signer: x509.Certificate,
    method: _Algorithm,
    exclusive: bool,
) -> bool:
    """Whether SignatureValue signs SignedInfo: tells "value altered" from "content altered".

    Diagnostic only: acceptance is xmlsec's verdict, never this function's.
    """
    try:
        key = signer.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise WhitelistError(Reason.SIGNER_MISMATCH, "unreadable signer public key") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    value = _b64(_text(_one(signature, DS, "SignatureValue")), "SignatureValue", Reason.MALFORMED)
    try:
        data = etree.tostring(signed_info, method="c14n", exclusive=exclusive, with_comments=False)
        key.verify(value, data, padding.PKCS1v15(), method.hash())
    except (InvalidSignature, etree.C14NError, ValueError):
        return False
    return True


def verify_enveloped_xades(
    root: etree._Element,
    anchors: Sequence[x509.Certificate],
    *,
    now: datetime | None = None,
    expected_signer: ExpectedSigner | None = None,
    allow_sha1: bool = False,
) -> SignerSummary:
    """Check the signature enveloped in `root` and its signer; return who signed.

    `root` is modified (xmlsec registers the `Id` attributes): pass a freshly parsed tree.
    """
    now = now or datetime.now(UTC)
    signature = find_signature(root)
    signed_info = _one(signature, DS, "SignedInfo")
    c14n = _one(signed_info, DS, "CanonicalizationMethod").get("Algorithm")
    if c14n != EXC_C14N:
        raise WhitelistError(Reason.WEAK_ALGORITHM, f"canonicalization {c14n!r}, expected exc-c14n")
    method_uri = _one(signed_info, DS, "SignatureMethod").get("Algorithm")
    method = _algorithm(_SIGNATURE_METHODS, method_uri, "signature method", allow_sha1)

    references = [c for c in _elements(signed_info) if c.tag == f"{{{DS}}}Reference"]
    document = [r for r in references if r.get("URI") == ""]
    properties_refs = [r for r in references if r.get("Type") == SIGNED_PROPERTIES_TYPE]
    if len(references) != 2 or len(document) != 1 or len(properties_refs) != 1:
        raise WhitelistError(
            Reason.SIGNATURE_STRUCTURE,
            'expected two references: URI="" (the list) and the XAdES SignedProperties',
        )
    _check_document_transforms(document[0])
    _check_properties_transforms(properties_refs[0])
    digests = [
        _algorithm(
            _DIGEST_METHODS, _one(r, DS, "DigestMethod").get("Algorithm"), "digest", allow_sha1
        )
        for r in references
    ]

    properties = _signed_properties(root, signature, properties_refs[0].get("URI") or "")
    certificates = embedded_certificates(signature)
    signer = _signing_certificate(properties, certificates, allow_sha1)

    try:
        key = signer.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise WhitelistError(Reason.SIGNER_MISMATCH, "unreadable signer public key") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise WhitelistError(Reason.WEAK_ALGORITHM, "the signer key is not an RSA key")
    if key.key_size < _MIN_RSA_BITS:
        raise WhitelistError(Reason.WEAK_ALGORITHM, "the signer RSA key is shorter than 2048 bits")

    try:
        _xmlsec_verify(root, signature, signer, method, digests)
    except xmlsec.Error as exc:
        if _signed_info_is_intact(signed_info, signature, signer, method, exclusive=True):
            raise WhitelistError(
                Reason.ALTERED_CONTENT, f"a reference digest does not match ({exc})"
            ) from exc
        raise WhitelistError(
            Reason.BAD_SIGNATURE_VALUE, f"SignatureValue does not sign SignedInfo ({exc})"
        ) from exc

    signing_time = _signing_time(properties)  # read once the digests proved it is signed
    intermediates = [c for c in certificates if c != signer]
    path = build_chain(signer, intermediates, anchors)
    _check_validity(path, now, "now")
    if signing_time is not None:
        _check_validity(path[:1], signing_time, "at the signing time")
    _check_signer_usage(signer)
    if expected_signer is not None:
        expected_signer.check(signer.subject)
    return SignerSummary(
        subject=signer.subject.rfc4514_string(),
        issuer=signer.issuer.rfc4514_string(),
        serial_number=signer.serial_number,
        not_before=signer.not_valid_before_utc,
        not_after=signer.not_valid_after_utc,
        signing_time=signing_time,
        signature_method=method_uri or "",
        chain=tuple(c.subject.rfc4514_string() for c in path),
        certificate=signer,
        path=tuple(path),
    )


def _signed_properties(root: etree._Element, signature: etree._Element, uri: str) -> etree._Element:
    if not uri.startswith("#") or len(uri) < 2:
        raise WhitelistError(Reason.SIGNATURE_STRUCTURE, f"SignedProperties URI {uri!r}")
    identifier = uri[1:]
    # xmlsec resolves "#id" through the document's ID table: the Id must be unique, or the digest
    # could cover one element while we read the signer from another.
    holders = root.xpath("//*[@Id=$v]", v=identifier)
    everywhere = list(root.iter(f"{{{XADES}}}SignedProperties"))
    if not isinstance(holders, list) or len(holders) != 1 or len(everywhere) != 1:
        raise WhitelistError(
            Reason.SIGNATURE_STRUCTURE, f"Id {identifier!r} must designate one SignedProperties"
        )
    properties = everywhere[0]
    if holders[0] is not properties:
        raise WhitelistError(
            Reason.SIGNATURE_STRUCTURE, f"Id {identifier!r} is not the SignedProperties"
        )
    qualifying = properties.getparent()
    holder = qualifying.getparent() if qualifying is not None else None
    if (
        qualifying is None
        or qualifying.tag != f"{{{XADES}}}QualifyingProperties"
        or holder is None
        or holder.tag != f"{{{DS}}}Object"
        or holder.getparent() is not signature
    ):
        raise WhitelistError(
            Reason.SIGNATURE_STRUCTURE, "SignedProperties is not in this signature's ds:Object"
        )
    own_id = signature.get("Id")
    target = qualifying.get("Target")
    if own_id and target and target != f"#{own_id}":
        raise WhitelistError(
            Reason.SIGNATURE_STRUCTURE, "QualifyingProperties targets another signature"
        )
    return properties


def _signing_time(properties: etree._Element) -> datetime | None:
    signed = _one(properties, XADES, "SignedSignatureProperties")
    times = [c for c in _elements(signed) if c.tag == f"{{{XADES}}}SigningTime"]
    if len(times) > 1:
        raise WhitelistError(Reason.SIGNATURE_STRUCTURE, "several SigningTime")
    return _parse_time(_text(times[0]), "SigningTime") if times else None
