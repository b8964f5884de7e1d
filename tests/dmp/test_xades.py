"""The IHE DSG signature document: XAdES-B over a manifest of the published documents' digests."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import pytest
from lxml import etree

from drimbox.dmp import codes
from drimbox.dmp.xades import (
    DigestMismatch,
    SignatureError,
    SignedDocument,
    XmlSigner,
    build_signature_document,
    verify_signature_document,
)
from drimbox.sim.pki import Issued, TestPki

DS = codes.DS_NS
KOS_UID = "1.2.250.1.999.77.1.123456"


def test_manifest_digest_is_the_kos_digest_and_it_verifies(
    signer: XmlSigner, pki: TestPki, kos_bytes: bytes
) -> None:
    xml = build_signature_document(
        [SignedDocument(KOS_UID, kos_bytes)], signer, signing_time=datetime(2024, 3, 1, tzinfo=UTC)
    )
    root = etree.fromstring(xml)
    (reference,) = root.iterfind(f".//{{{DS}}}Manifest/{{{DS}}}Reference")
    assert reference.get("URI") == f"urn:oid:{KOS_UID}"
    expected = base64.b64encode(hashlib.sha256(kos_bytes).digest()).decode()
    assert reference.findtext(f"{{{DS}}}DigestValue") == expected
    info = verify_signature_document(xml, {KOS_UID: kos_bytes}, [pki.ca.certificate])
    assert info.digests == {KOS_UID: expected}
    assert info.signing_time == "2024-03-01T00:00:00Z"
    # XAdES-B: SignedInfo signs the manifest and the signed properties.
    types = {r.get("Type") for r in root.iterfind(f"{{{DS}}}SignedInfo/{{{DS}}}Reference")}
    assert types == {
        "http://www.w3.org/2000/09/xmldsig#Manifest",
        "http://uri.etsi.org/01903#SignedProperties",
    }
    xades = codes.XADES_NS
    for name in ("SigningTime", "SigningCertificateV2", "SignaturePolicyIdentifier"):
        assert root.find(f".//{{{xades}}}{name}") is not None, name
    assert root.findtext(f".//{{{DS}}}SignatureProperty") == "1.2.840.10065.1.12.1.14"


def test_tampered_kos_is_a_digest_mismatch(
    signer: XmlSigner, pki: TestPki, kos_bytes: bytes
) -> None:
    xml = build_signature_document([SignedDocument(KOS_UID, kos_bytes)], signer)
    tampered = kos_bytes[:-1] + bytes([kos_bytes[-1] ^ 0xFF])
    with pytest.raises(DigestMismatch):
        verify_signature_document(xml, {KOS_UID: tampered}, [pki.ca.certificate])


def test_tampered_signature_document_does_not_verify(
    signer: XmlSigner, pki: TestPki, kos_bytes: bytes
) -> None:
    xml = build_signature_document([SignedDocument(KOS_UID, kos_bytes)], signer)
    root = etree.fromstring(xml)
    digest = root.find(f".//{{{DS}}}Manifest/{{{DS}}}Reference/{{{DS}}}DigestValue")
    assert digest is not None
    forged = base64.b64encode(hashlib.sha256(b"another KOS").digest()).decode()
    digest.text = forged  # an attacker restating the digest of another document
    with pytest.raises(SignatureError) as caught:
        verify_signature_document(
            etree.tostring(root), {KOS_UID: b"another KOS"}, [pki.ca.certificate]
        )
    assert not isinstance(caught.value, DigestMismatch)


def test_sha1_and_untrusted_signer(signing: Issued, kos_bytes: bytes, pki: TestPki) -> None:
    sha1 = XmlSigner(signing.certificate, signing.key_pem, "rsa-sha1", "sha1")
    xml = build_signature_document([SignedDocument(KOS_UID, kos_bytes)], sha1)
    info = verify_signature_document(xml, {KOS_UID: kos_bytes}, [pki.ca.certificate])
    assert info.signature_method.endswith("rsa-sha1")
    with pytest.raises(SignatureError, match="not trusted"):
        verify_signature_document(xml, {KOS_UID: kos_bytes}, [TestPki("AUTRE").ca.certificate])
