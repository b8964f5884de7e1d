"""Whitelist simulator: a test "ANS" that writes and signs DRIM-M lists, and serves them over HTTP.

Owns `build_whitelist` (the XML of a list, shaped like the official one), `sign_whitelist` (an
enveloped XAdES-B signature with the very structure of the official list: exc-c14n, rsa-sha256,
`Reference URI=""` with the XPath Filter 2.0 transform subtracting the signature, a reference to
`SignedProperties` holding `SigningTime` and `SigningCertificateV2`, the signer and its CA chain in
`KeyInfo`), `issue_ans_signer` (the signer certificate from a `TestPki`) and `LocalWhitelistServer`
(loopback HTTP serving whatever bytes the test sets). For tests, the demo and `drimbox sim`; never
used to sign a list a production node would trust.
"""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import cast

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from lxml import etree

from drimbox.sim.pki import Issued, TestPki
from drimbox.trust.whitelist import Domain
from drimbox.trust.xades_verify import (
    DS,
    EXC_C14N,
    FILTER2,
    RSA_SHA256,
    SHA256,
    SHA512,
    SIGNED_PROPERTIES_TYPE,
    SUBTRACT_SIGNATURE,
    XADES,
    issuer_serial_v2,
)

NAMESPACE = "https://github.com/ansforge/DRIM-M_DATA"
ANS_OU = "318751275100020"


def _z(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_whitelist(
    domains: Sequence[Domain],
    generated_at: datetime,
    *,
    namespace: str | None = NAMESPACE,
    version_format: str = "1.0.0",
) -> bytes:
    """The unsigned XML of a list (`namespace=None` writes it without namespace)."""
    ns = f"{{{namespace}}}" if namespace else ""
    # lxml accepts None (the default namespace) as a prefix; its stubs only know str keys.
    nsmap = cast("dict[str, str]", {None: namespace} if namespace else {})
    root = etree.Element(f"{ns}ListeBlancheDRIM-M", nsmap=nsmap, versionFormat=version_format)
    root.text = "\n    "
    etree.SubElement(root, f"{ns}DateDeGeneration").text = _z(generated_at)
    listing = etree.SubElement(root, f"{ns}ListeDomaines")
    for domain in domains:
        entry = etree.SubElement(listing, f"{ns}Domaine")
        for name, value in (
            ("Identifiant", domain.identifier),
            ("db", domain.db),
            ("vi", domain.vi),
            ("Denomination", domain.name),
            ("DNCertificatOperateur", domain.operator_dn),
            ("SupportContact", domain.support_contact),
            ("DateMAJ", _z(domain.updated_at) if domain.updated_at else ""),
        ):
            etree.SubElement(entry, f"{ns}{name}").text = value
    etree.indent(root, space="    ")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def issue_ans_signer(
    pki: TestPki, *, days: int = 365, not_before: datetime | None = None
) -> Issued:
    """A signing certificate with the official signer's subject (`CN=Liste Blanche DRIM-M`…)."""
    return pki.issue(
        "Liste Blanche DRIM-M",
        usage="sign",
        organizational_unit=ANS_OU,
        organization="AGENCE DU NUMERIQUE EN SANTE",
        state="Paris (75)",
        days=days,
        not_before=not_before,
    )


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    node = etree.SubElement(parent, tag, attrs)
    if text is not None:
        node.text = text
    return node


def sign_whitelist(
    xml: bytes,
    signer: Issued,
    chain: Sequence[x509.Certificate] = (),
    *,
    signing_time: datetime | None = None,
    signature_method: str = RSA_SHA256,
    digest_method: str = SHA256,
) -> bytes:
    """Sign `xml` the way the ANS signs the official list; `chain` goes into KeyInfo after the
    signer (the official list carries the intermediate CA and the root). The algorithms can be
    changed to make lists a verifier must refuse (rsa-sha1)."""
    root = etree.fromstring(xml, etree.XMLParser(resolve_entities=False, no_network=True))
    sid = "id-" + uuid.uuid4().hex
    d = f"{{{DS}}}"
    x = f"{{{XADES}}}"
    signature = etree.SubElement(root, f"{d}Signature", {"Id": sid}, nsmap={"ds": DS})
    signed_info = _sub(signature, f"{d}SignedInfo")
    _sub(signed_info, f"{d}CanonicalizationMethod", Algorithm=EXC_C14N)
    _sub(signed_info, f"{d}SignatureMethod", Algorithm=signature_method)
    reference = _sub(signed_info, f"{d}Reference", Id=f"r-{sid}-1", URI="")
    transforms = _sub(reference, f"{d}Transforms")
    xpath = _sub(transforms, f"{d}Transform", Algorithm=FILTER2)
    filter_node = etree.SubElement(
        xpath, f"{{{FILTER2}}}XPath", {"Filter": "subtract"}, nsmap={"dsig-filter2": FILTER2}
    )
    filter_node.text = SUBTRACT_SIGNATURE
    _sub(transforms, f"{d}Transform", Algorithm=EXC_C14N)
    _sub(reference, f"{d}DigestMethod", Algorithm=digest_method)
    _sub(reference, f"{d}DigestValue", "")
    properties_ref = _sub(
        signed_info, f"{d}Reference", Type=SIGNED_PROPERTIES_TYPE, URI=f"#xades-{sid}"
    )
    _sub(_sub(properties_ref, f"{d}Transforms"), f"{d}Transform", Algorithm=EXC_C14N)
    _sub(properties_ref, f"{d}DigestMethod", Algorithm=digest_method)
    _sub(properties_ref, f"{d}DigestValue", "")
    _sub(signature, f"{d}SignatureValue", "", Id=f"value-{sid}")
    x509_data = _sub(_sub(signature, f"{d}KeyInfo"), f"{d}X509Data")
    for certificate in (signer.certificate, *chain):
        der = certificate.public_bytes(serialization.Encoding.DER)
        _sub(x509_data, f"{d}X509Certificate", base64.b64encode(der).decode("ascii"))
    qualifying = etree.SubElement(
        _sub(signature, f"{d}Object"),
        f"{x}QualifyingProperties",
        {"Target": f"#{sid}"},
        nsmap={"xades": XADES},
    )
    properties = _sub(qualifying, f"{x}SignedProperties", Id=f"xades-{sid}")
    signed_signature = _sub(properties, f"{x}SignedSignatureProperties")
    _sub(signed_signature, f"{x}SigningTime", _z(signing_time or datetime.now(UTC)))
    cert = _sub(_sub(signed_signature, f"{x}SigningCertificateV2"), f"{x}Cert")
    digest = _sub(cert, f"{x}CertDigest")
    _sub(digest, f"{d}DigestMethod", Algorithm=SHA512)
    fingerprint = signer.certificate.fingerprint(hashes.SHA512())
    _sub(digest, f"{d}DigestValue", base64.b64encode(fingerprint).decode("ascii"))
    serial = issuer_serial_v2(signer.certificate)
    _sub(cert, f"{x}IssuerSerialV2", base64.b64encode(serial).decode("ascii"))
    data_format = _sub(
        _sub(properties, f"{x}SignedDataObjectProperties"),
        f"{x}DataObjectFormat",
        ObjectReference=f"#r-{sid}-1",
    )
    _sub(data_format, f"{x}MimeType", "text/xml")

    xmlsec.tree.add_ids(root, ["Id"])
    context = xmlsec.SignatureContext()
    context.key = xmlsec.Key.from_memory(signer.key_pem, xmlsec.constants.KeyDataFormatPem)
    context.sign(signature)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", standalone=False)


class LocalWhitelistServer:
    """Loopback HTTP server answering every GET with the bytes last given to `publish` (a
    whitelist, or a CA's CRL: `url_for("ca.crl")`)."""

    def __init__(self) -> None:
        self.body = b""
        self.status = 200
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, format: str, *args: object) -> None:
                return  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return self.url_for("liste-blanche.xml")

    def url_for(self, name: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/{name}"

    def publish(self, body: bytes, *, status: int = 200) -> None:
        self.body, self.status = body, status

    def start(self) -> LocalWhitelistServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LocalWhitelistServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
