"""Verification of the IHE DSG signature document (an enveloping XMLDSig / XAdES-B signature).

Why not xmlsec here: xmlsec also digests the references of a `ds:Manifest` found in a
`ds:Object` and fetches their `urn:oid:<uniqueId>` URIs through its process-wide I/O callbacks;
serving them would mean global state shared with the box's client in the same test process.
So the SignedInfo is checked here with lxml's canonicalisation (libxml2, as xmlsec) and
`cryptography`: each same-document Reference (`#Id`) is canonicalised and digested, then the
SignatureValue is verified over the canonical SignedInfo. The manifest digests themselves are
compared with the documents by `checks`.
Part of the test/demo simulator of the national DMP; never deploy it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

from drimbox.sim.dmp.soap import DS

C14N_METHODS: dict[str, tuple[bool, bool]] = {
    # algorithm → (exclusive, with comments)
    "http://www.w3.org/2001/10/xml-exc-c14n#": (True, False),
    "http://www.w3.org/2001/10/xml-exc-c14n#WithComments": (True, True),
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315": (False, False),
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments": (False, True),
}
DIGESTS = {
    "http://www.w3.org/2000/09/xmldsig#sha1": "sha1",
    "http://www.w3.org/2001/04/xmlenc#sha256": "sha256",
    "http://www.w3.org/2001/04/xmlenc#sha512": "sha512",
}
SIGNATURES: dict[str, hashes.HashAlgorithm] = {
    "http://www.w3.org/2000/09/xmldsig#rsa-sha1": hashes.SHA1(),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256": hashes.SHA256(),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512": hashes.SHA512(),
}


class SignatureInvalid(Exception):
    """Why the signature does not verify (French, shown in the RegistryError)."""


def canonical(element: etree._Element, algorithm: str) -> bytes:
    if algorithm not in C14N_METHODS:
        raise SignatureInvalid(f"canonicalisation non supportée : {algorithm}")
    exclusive, comments = C14N_METHODS[algorithm]
    return etree.tostring(element, method="c14n", exclusive=exclusive, with_comments=comments)


def _by_id(root: etree._Element, identifier: str) -> etree._Element | None:
    for element in root.iter():
        if isinstance(element.tag, str) and identifier in (
            element.get("Id"),
            element.get("ID"),
            element.get("id"),
        ):
            return element
    return None


def verify_enveloping(signature: etree._Element, certificate: x509.Certificate) -> None:
    """Raise SignatureInvalid unless every SignedInfo reference and the SignatureValue verify."""
    signed_info = signature.find(f"{{{DS}}}SignedInfo")
    if signed_info is None:
        raise SignatureInvalid("ds:SignedInfo absent")
    c14n = signed_info.find(f"{{{DS}}}CanonicalizationMethod")
    method = signed_info.find(f"{{{DS}}}SignatureMethod")
    c14n_algorithm = "" if c14n is None else c14n.get("Algorithm", "")
    hash_algorithm = SIGNATURES.get("" if method is None else method.get("Algorithm", ""))
    if hash_algorithm is None:
        raise SignatureInvalid("algorithme de signature non supporté")
    root = signature.getroottree().getroot()
    references = signed_info.findall(f"{{{DS}}}Reference")
    if not references:
        raise SignatureInvalid("SignedInfo sans référence")
    for reference in references:
        uri = reference.get("URI", "")
        if not uri.startswith("#"):
            raise SignatureInvalid(f"référence non interne au document : « {uri} »")
        target = _by_id(root, uri[1:])
        if target is None:
            raise SignatureInvalid(f"référence {uri} introuvable")
        transforms = [
            t.get("Algorithm", "")
            for t in reference.iterfind(f"{{{DS}}}Transforms/{{{DS}}}Transform")
        ]
        if len(transforms) > 1:
            raise SignatureInvalid(f"transformations non supportées pour {uri}")
        # Without a transform, a same-document reference is canonicalised with inclusive C14N.
        data = canonical(
            target,
            transforms[0] if transforms else "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
        )
        digest_method = reference.find(f"{{{DS}}}DigestMethod")
        digest = DIGESTS.get("" if digest_method is None else digest_method.get("Algorithm", ""))
        if digest is None:
            raise SignatureInvalid(f"algorithme d'empreinte non supporté pour {uri}")
        expected = (reference.findtext(f"{{{DS}}}DigestValue") or "").strip()
        if base64.b64encode(hashlib.new(digest, data).digest()).decode("ascii") != expected:
            raise SignatureInvalid(f"l'empreinte de {uri} ne correspond pas (contenu modifié)")
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise SignatureInvalid("clé du certificat non RSA")
    try:
        value = base64.b64decode(
            "".join((signature.findtext(f"{{{DS}}}SignatureValue") or "").split())
        )
        public_key.verify(
            value, canonical(signed_info, c14n_algorithm), padding.PKCS1v15(), hash_algorithm
        )
    except (InvalidSignature, binascii.Error) as error:
        raise SignatureInvalid("SignatureValue invalide") from error
