"""VIHF checks of the DMP simulator: the signed SAML 2.0 assertion every DMP request carries.

Checks, in this order (the first failure is answered as a SOAP Fault, see `ERROR CODES` in
`drimbox.sim.dmp`): presence in `wsse:Security`; an enveloped XML signature whose algorithms are
the accepted ones and whose single Reference designates the assertion itself (no signature
wrapping); the certificate in KeyInfo is trusted (one of the configured certificates, or issued
by one of them) and valid today; the signature verifies (xmlsec); the assertion is not expired;
the Issuer is the certificate's DN; NameID and the mandatory attributes are present and sound.
Part of the test/demo simulator of the national DMP; never deploy it.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

import xmlsec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lxml import etree

from drimbox.sim.dmp.settings import INS_OIDS, DmpSimSettings
from drimbox.sim.dmp.soap import DS, HL7, SAML, WSSE, SoapFault, SoapRequest

EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
SIGNATURE_METHODS = frozenset(
    {
        "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
    }
)
DIGEST_METHODS = frozenset(
    {
        "http://www.w3.org/2000/09/xmldsig#sha1",
        "http://www.w3.org/2001/04/xmlenc#sha256",
        "http://www.w3.org/2001/04/xmlenc#sha512",
    }
)

SAFE_TRANSFORMS = (
    xmlsec.constants.TransformExclC14N,
    xmlsec.constants.TransformExclC14NWithComments,
    xmlsec.constants.TransformInclC14N,
    xmlsec.constants.TransformInclC14NWithComments,
    xmlsec.constants.TransformInclC14N11,
    xmlsec.constants.TransformEnveloped,
    xmlsec.constants.TransformXPath2,
    # Digest methods are transforms for xmlsec: they must be enabled too.
    xmlsec.constants.TransformSha1,
    xmlsec.constants.TransformSha256,
    xmlsec.constants.TransformSha512,
)

SUBJECT_ID = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
PURPOSE_OF_USE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"
SUBJECT_ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
PROFESSION_OID = "1.2.250.1.71.1.2.7"

# Mandatory attributes (ARCHITECTURE §2.4; LPS_ID_HOMOLOGATION_DMP is optional here).
MANDATORY_ATTRIBUTES = (
    "VIHF_Version",
    "Identifiant_Structure",
    "Secteur_Activite",
    "Ressource_URN",
    SUBJECT_ID,
    RESOURCE_ID,
    "Authentification_Mode",
    "LPS_ID",
    "LPS_Nom",
    "LPS_Version",
    PURPOSE_OF_USE,
    SUBJECT_ROLE,
)

# Authentification_Mode values the DMP knows: a structure acting itself; a professional
# authenticated by Pro Santé Connect through the structure's software (reinforced indirect, with
# the AuthnContextDecl the ANS demonstrator sends); a CPS card read by the workstation.
MODE_INDIRECT = "INDIRECTE"
MODE_REINFORCED = "INDIRECTE_RENFORCEE"
MODE_DIRECT = "DIRECTE"
REINFORCED_AUTHN_DECL = "APP_BROWSER_AUTH"

PATIENT_ID = re.compile(r"^(?P<ins>[0-9A-Za-z]+)\^\^\^&(?P<oid>[0-9.]+)&ISO\^NH$")


@dataclass
class Vihf:
    """What the simulator keeps of a verified VIHF."""

    name_id: str
    attributes: dict[str, list[str]]
    roles: list[tuple[str, str]]
    certificate: x509.Certificate
    purpose_of_use: str = ""
    authn_context_decl: str = ""

    def first(self, name: str) -> str:
        values = self.attributes.get(name) or [""]
        return values[0]

    @property
    def patient_id(self) -> str:
        return self.first(RESOURCE_ID)

    @property
    def ins(self) -> str:
        match = PATIENT_ID.match(self.patient_id)
        return match.group("ins") if match else ""

    @property
    def mode(self) -> str:
        return self.first("Authentification_Mode")

    @property
    def is_publication(self) -> bool:
        return self.mode == MODE_INDIRECT

    @property
    def structure(self) -> str:
        return self.first("Identifiant_Structure")


def _fault(code: str, reason: str, subcode: str) -> SoapFault:
    return SoapFault(code, reason, subcode=subcode)


def _parse_time(value: str) -> dt.datetime:
    text = value.strip().replace("Z", "+00:00")
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def _dn_pairs(dn: str) -> list[tuple[str, str]]:
    """`CN=a, OU=b` → sorted [(CN, a), (OU, b)], tolerant of spacing, order and `\\,`."""
    pairs = []
    for part in re.split(r"(?<!\\),", dn):
        if "=" not in part:
            continue
        key, _, value = part.partition("=")
        pairs.append((key.strip().upper(), value.strip().replace("\\,", ",")))
    return sorted(pairs)


def _certificate_name_pairs(certificate: x509.Certificate) -> list[tuple[str, str]]:
    return _dn_pairs(certificate.subject.rfc4514_string())


def load_trusted(pems: Sequence[bytes]) -> list[x509.Certificate]:
    certificates: list[x509.Certificate] = []
    for pem in pems:
        certificates.extend(x509.load_pem_x509_certificates(pem))
    return certificates


def certificate_structures(certificate: x509.Certificate) -> list[str]:
    """The structure ids an IGC-Santé ORG certificate names (its subject OU)."""
    return [
        str(attribute.value)
        for attribute in certificate.subject.get_attributes_for_oid(
            NameOID.ORGANIZATIONAL_UNIT_NAME
        )
    ]


def _key_usage(certificate: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def is_signing_certificate(certificate: x509.Certificate) -> bool:
    """An IGC-Santé signing certificate (ORG SIGN): key usage nonRepudiation. Authentication
    and server certificates (digitalSignature for TLS) may not sign a VIHF or a document."""
    usage = _key_usage(certificate)
    return usage is not None and usage.content_commitment


def is_authentication_certificate(certificate: x509.Certificate) -> bool:
    """An IGC-Santé authentication certificate (ORG AUTH): digitalSignature and clientAuth."""
    usage = _key_usage(certificate)
    if usage is None or not usage.digital_signature:
        return False
    try:
        purposes = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in purposes


def check_trusted_certificate(
    certificate: x509.Certificate,
    trusted: Sequence[x509.Certificate],
    now: dt.datetime,
    *,
    what: str = "VIHF",
) -> None:
    """One of the trusted certificates, or directly issued by one of them; valid today; a
    signing certificate (nonRepudiation)."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    accepted = False
    for anchor in trusted:
        if anchor.public_bytes(serialization.Encoding.DER) == der:
            accepted = True
            break
        if anchor.subject == certificate.issuer:
            try:
                certificate.verify_directly_issued_by(anchor)
            except (ValueError, TypeError, InvalidSignature):
                continue
            accepted = True
            break
    if not accepted:
        raise _fault(
            "DMPVihfCertificatNonReconnu",
            f"Le certificat de signature du {what} ({certificate.subject.rfc4514_string()}) "
            "n'est pas reconnu par le DMP.",
            "wsse:FailedAuthentication",
        )
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise _fault(
            "DMPVihfCertificatExpire",
            f"Le certificat de signature du {what} n'est pas valide à cette date "
            f"(validité {certificate.not_valid_before_utc:%Y-%m-%d} – "
            f"{certificate.not_valid_after_utc:%Y-%m-%d}).",
            "wsse:FailedAuthentication",
        )
    if not is_signing_certificate(certificate):
        raise _fault(
            "DMPVihfCertificatUsage",
            f"Le certificat qui signe le {what} ({certificate.subject.rfc4514_string()}) n'est "
            "pas un certificat de signature (usage nonRepudiation attendu : certificat ORG "
            "SIGN, pas un certificat d'authentification ni de serveur).",
            "wsse:FailedAuthentication",
        )


def check_client_certificate(client: x509.Certificate | None, vihf: Vihf) -> None:
    """The TLS client certificate authenticates the structure that acts: an ORG AUTH
    certificate of the same structure (OU) as the VIHF's signing certificate and, in INDIRECTE
    mode, as the VIHF's Identifiant_Structure. (Chain and validity: the TLS handshake, against
    the client CA.)"""
    if client is None:
        raise _fault(
            "DMPCertificatClientAbsent",
            "Aucun certificat client TLS : le DMP n'accepte que des connexions en TLS mutuel "
            "avec le certificat d'authentification (ORG AUTH) de la structure.",
            "wsse:FailedAuthentication",
        )
    subject = client.subject.rfc4514_string()
    check_authentication_mode(client, vihf)
    if not is_authentication_certificate(client):
        raise _fault(
            "DMPCertificatClientInvalide",
            f"Le certificat client TLS ({subject}) n'est pas un certificat d'authentification "
            "(digitalSignature et clientAuth attendus : certificat ORG AUTH).",
            "wsse:FailedAuthentication",
        )
    tls_structures = certificate_structures(client)
    # A structure acting itself (INDIRECTE: publication, its own reads and deletions) is the
    # one of its certificate. A professional authenticated by PSC (INDIRECTE_RENFORCEE…) names
    # the structure of their own activity, which the box operator's certificate need not be.
    if vihf.is_publication and vihf.structure not in tls_structures:
        raise _fault(
            "DMPStructureIncoherente",
            f"La structure du VIHF (Identifiant_Structure « {vihf.structure} ») n'est pas celle "
            f"du certificat d'authentification TLS (OU « {', '.join(tls_structures)} »).",
            "wsse:InvalidSecurityToken",
        )
    signer_structures = certificate_structures(vihf.certificate)
    if not set(signer_structures) & set(tls_structures):
        raise _fault(
            "DMPStructureIncoherente",
            f"Le VIHF est signé par une autre structure (OU « {', '.join(signer_structures)} ») "
            f"que celle du certificat d'authentification TLS (OU « {', '.join(tls_structures)} »).",
            "wsse:InvalidSecurityToken",
        )


def check_authentication_mode(client: x509.Certificate, vihf: Vihf) -> None:
    """The VIHF's Authentification_Mode must fit how the request is authenticated: DIRECTE
    only with the professional's own card certificate (a personal certificate whose CN is the
    VIHF's NameID) on the TLS connection, not a structure's; INDIRECTE_RENFORCEE with its
    AuthnContextDecl."""
    mode = vihf.mode
    if mode not in (MODE_INDIRECT, MODE_REINFORCED, MODE_DIRECT):
        raise _fault(
            "DMPVihfAttributInvalide",
            f"Authentification_Mode « {mode} » inconnu (INDIRECTE, INDIRECTE_RENFORCEE ou "
            "DIRECTE attendu).",
            "wsse:InvalidSecurityToken",
        )
    if mode == MODE_REINFORCED and vihf.authn_context_decl != REINFORCED_AUTHN_DECL:
        raise _fault(
            "DMPVihfAttributInvalide",
            "Mode INDIRECTE_RENFORCEE : AuthnContextDecl « APP_BROWSER_AUTH » attendu dans "
            f"l'AuthnStatement (reçu : « {vihf.authn_context_decl} »).",
            "wsse:InvalidSecurityToken",
        )
    if mode == MODE_DIRECT:
        names = [str(a.value) for a in client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if vihf.name_id not in names:
            raise _fault(
                "DMPModeAuthentificationInvalide",
                "Mode DIRECTE sans carte CPS : le certificat TLS "
                f"({client.subject.rfc4514_string()}) n'est pas celui de la carte du "
                f"professionnel « {vihf.name_id} ». Un professionnel authentifié par Pro Santé "
                "Connect consulte en mode INDIRECTE_RENFORCEE.",
                "wsse:FailedAuthentication",
            )


def keyinfo_certificate(signature: etree._Element, *, what: str) -> x509.Certificate | None:
    node = signature.find(f"{{{DS}}}KeyInfo/{{{DS}}}X509Data/{{{DS}}}X509Certificate")
    if node is None:
        return None
    try:
        return x509.load_der_x509_certificate(base64.b64decode("".join((node.text or "").split())))
    except ValueError as error:
        raise _fault(
            "DMPVihfCertificatInvalide",
            f"Certificat X509 illisible dans la signature du {what}.",
            "wsse:InvalidSecurityToken",
        ) from error


def verify_with_xmlsec(
    signature: etree._Element, certificate: x509.Certificate, id_holders: Sequence[etree._Element]
) -> bool:
    """True when the XML signature verifies with the certificate's public key."""
    for element in id_holders:
        for attribute in ("ID", "Id", "id"):
            if element.get(attribute) is not None:
                xmlsec.tree.add_ids(element, [attribute])
    context = xmlsec.SignatureContext()
    # Only harmless reference transforms (no XSLT, no external retrieval).
    for transform in SAFE_TRANSFORMS:
        context.enable_reference_transform(transform)
    context.key = xmlsec.Key.from_memory(
        certificate.public_bytes(serialization.Encoding.PEM),
        xmlsec.constants.KeyDataFormatCertPem,
    )
    try:
        context.verify(signature)
    except xmlsec.Error:
        return False
    return True


def check_vihf(request: SoapRequest, settings: DmpSimSettings, now: dt.datetime) -> Vihf:
    header = request.header
    security = None if header is None else header.find(f"{{{WSSE}}}Security")
    assertion = None if security is None else security.find(f"{{{SAML}}}Assertion")
    if assertion is None:
        raise _fault(
            "DMPVihfAbsent",
            "Jeton VIHF absent : une assertion SAML 2.0 est attendue dans wsse:Security.",
            "wsse:InvalidSecurity",
        )
    assertion_id = assertion.get("ID", "")
    if not assertion_id or assertion.get("Version") != "2.0" or not assertion.get("IssueInstant"):
        raise _fault(
            "DMPVihfInvalide",
            'Assertion VIHF incomplète (ID, Version="2.0" et IssueInstant sont requis).',
            "wsse:InvalidSecurityToken",
        )
    signature = assertion.find(f"{{{DS}}}Signature")
    if signature is None:
        raise _fault(
            "DMPVihfNonSigne",
            "Le VIHF n'est pas signé (ds:Signature absente).",
            "wsse:InvalidSecurity",
        )
    _check_signature_shape(signature, assertion_id)
    trusted = load_trusted(settings.trusted_vihf_certs)
    certificate = keyinfo_certificate(signature, what="VIHF")
    if certificate is None:
        # Without KeyInfo, only a configured leaf certificate can verify it.
        for candidate in trusted:
            if verify_with_xmlsec(signature, candidate, [assertion]):
                certificate = candidate
                break
        if certificate is None:
            raise _fault(
                "DMPVihfCertificatNonReconnu",
                "Signature du VIHF sans certificat (KeyInfo) et non vérifiable par les "
                "certificats reconnus.",
                "wsse:FailedAuthentication",
            )
    check_trusted_certificate(certificate, trusted, now)
    if not verify_with_xmlsec(signature, certificate, [assertion]):
        raise _fault(
            "DMPVihfSignatureInvalide",
            "La signature du VIHF est invalide (assertion modifiée après signature ?).",
            "wsse:FailedCheck",
        )
    _check_times(assertion, settings, now)
    issuer = (assertion.findtext(f"{{{SAML}}}Issuer") or "").strip()
    if _dn_pairs(issuer) != _certificate_name_pairs(certificate):
        raise _fault(
            "DMPVihfEmetteurIncoherent",
            f"L'émetteur du VIHF « {issuer} » n'est pas le DN du certificat de signature "
            f"« {certificate.subject.rfc4514_string()} ».",
            "wsse:InvalidSecurityToken",
        )
    return _read_attributes(assertion, certificate, settings)


def _check_signature_shape(signature: etree._Element, assertion_id: str) -> None:
    signed_info = signature.find(f"{{{DS}}}SignedInfo")
    if signed_info is None:
        raise _fault("DMPVihfSignatureInvalide", "ds:SignedInfo absent.", "wsse:FailedCheck")
    c14n = signed_info.find(f"{{{DS}}}CanonicalizationMethod")
    method = signed_info.find(f"{{{DS}}}SignatureMethod")
    if c14n is None or c14n.get("Algorithm") != EXC_C14N:
        raise _fault(
            "DMPVihfAlgorithmeNonSupporte",
            "Canonicalisation exclusive (xml-exc-c14n#) attendue pour la signature du VIHF.",
            "wsse:UnsupportedAlgorithm",
        )
    if method is None or method.get("Algorithm") not in SIGNATURE_METHODS:
        raise _fault(
            "DMPVihfAlgorithmeNonSupporte",
            f"Algorithme de signature non supporté : "
            f"{None if method is None else method.get('Algorithm')}.",
            "wsse:UnsupportedAlgorithm",
        )
    references = signed_info.findall(f"{{{DS}}}Reference")
    if len(references) != 1 or references[0].get("URI") != f"#{assertion_id}":
        raise _fault(
            "DMPVihfSignatureInvalide",
            "La signature du VIHF doit porter une seule référence, vers l'assertion elle-même "
            f'(URI="#{assertion_id}").',
            "wsse:FailedCheck",
        )
    reference = references[0]
    transforms = [
        t.get("Algorithm") for t in reference.iterfind(f"{{{DS}}}Transforms/{{{DS}}}Transform")
    ]
    if ENVELOPED not in transforms or any(t not in (ENVELOPED, EXC_C14N) for t in transforms):
        raise _fault(
            "DMPVihfAlgorithmeNonSupporte",
            "Transformations attendues : enveloped-signature puis xml-exc-c14n#.",
            "wsse:UnsupportedAlgorithm",
        )
    digest = reference.find(f"{{{DS}}}DigestMethod")
    if digest is None or digest.get("Algorithm") not in DIGEST_METHODS:
        raise _fault(
            "DMPVihfAlgorithmeNonSupporte",
            "Algorithme d'empreinte non supporté pour le VIHF.",
            "wsse:UnsupportedAlgorithm",
        )


def _check_times(assertion: etree._Element, settings: DmpSimSettings, now: dt.datetime) -> None:
    skew = dt.timedelta(seconds=settings.clock_skew_seconds)
    try:
        issued = _parse_time(assertion.get("IssueInstant", ""))
        conditions = assertion.find(f"{{{SAML}}}Conditions")
        not_before = not_after = None
        if conditions is not None:
            if conditions.get("NotBefore"):
                not_before = _parse_time(conditions.get("NotBefore", ""))
            if conditions.get("NotOnOrAfter"):
                not_after = _parse_time(conditions.get("NotOnOrAfter", ""))
    except ValueError as error:
        raise _fault(
            "DMPVihfInvalide", "Date illisible dans le VIHF.", "wsse:InvalidSecurityToken"
        ) from error
    if issued > now + skew or (not_before is not None and not_before > now + skew):
        raise _fault("DMPVihfExpire", "Le VIHF n'est pas encore valide.", "wsse:MessageExpired")
    if not_after is not None:
        expired = now - skew >= not_after
    else:
        expired = now - issued > dt.timedelta(seconds=settings.vihf_max_age_seconds) + skew
    if expired:
        raise _fault(
            "DMPVihfExpire",
            f"Le VIHF a expiré (émis le {issued:%Y-%m-%d %H:%M:%S} UTC).",
            "wsse:MessageExpired",
        )


def _read_attributes(
    assertion: etree._Element, certificate: x509.Certificate, settings: DmpSimSettings
) -> Vihf:
    name_id = (assertion.findtext(f"{{{SAML}}}Subject/{{{SAML}}}NameID") or "").strip()
    if not name_id:
        raise _fault(
            "DMPVihfAttributManquant",
            "NameID absent du VIHF (identifiant de l'auteur ou de l'utilisateur).",
            "wsse:InvalidSecurityToken",
        )
    attributes: dict[str, list[str]] = {}
    roles: list[tuple[str, str]] = []
    purpose = ""
    for attribute in assertion.iterfind(f"{{{SAML}}}AttributeStatement/{{{SAML}}}Attribute"):
        name = attribute.get("Name", "")
        values = attribute.findall(f"{{{SAML}}}AttributeValue")
        texts = [(v.text or "").strip() for v in values if (v.text or "").strip()]
        for value in values:
            for role in value.iterfind(f"{{{HL7}}}Role"):
                roles.append((role.get("code", ""), role.get("codeSystem", "")))
                texts.append(role.get("code", ""))
            for use in value.iterfind(f"{{{HL7}}}PurposeOfUse"):
                purpose = use.get("code", "")
                texts.append(purpose)
        attributes.setdefault(name, []).extend(t for t in texts if t)
    missing = [name for name in MANDATORY_ATTRIBUTES if not attributes.get(name)]
    if missing:
        raise _fault(
            "DMPVihfAttributManquant",
            "Attribut(s) obligatoire(s) absent(s) ou vide(s) du VIHF : " + ", ".join(missing) + ".",
            "wsse:InvalidSecurityToken",
        )
    decl = assertion.findtext(
        f"{{{SAML}}}AuthnStatement/{{{SAML}}}AuthnContext/{{{SAML}}}AuthnContextDecl"
    )
    vihf = Vihf(name_id, attributes, roles, certificate, purpose, (decl or "").strip())
    version = vihf.first("VIHF_Version")
    if version not in settings.vihf_versions:
        raise _fault(
            "DMPVihfVersionNonSupportee",
            f"VIHF_Version « {version} » non supportée (attendue : "
            f"{', '.join(settings.vihf_versions)}).",
            "wsse:InvalidSecurityToken",
        )
    if vihf.first("Ressource_URN") != "urn:dmp":
        raise _fault(
            "DMPVihfAttributInvalide",
            f"Ressource_URN « {vihf.first('Ressource_URN')} » : « urn:dmp » attendu.",
            "wsse:InvalidSecurityToken",
        )
    match = PATIENT_ID.match(vihf.patient_id)
    if match is None or match.group("oid") not in INS_OIDS:
        raise _fault(
            "DMPVihfAttributInvalide",
            f"resource-id « {vihf.patient_id} » : INS attendu au format <INS>^^^&<OID INS>&ISO^NH.",
            "wsse:InvalidSecurityToken",
        )
    if not any(system == PROFESSION_OID for _, system in roles):
        raise _fault(
            "DMPVihfAttributInvalide",
            f"subject:role doit contenir la profession (codeSystem {PROFESSION_OID}).",
            "wsse:InvalidSecurityToken",
        )
    return vihf
