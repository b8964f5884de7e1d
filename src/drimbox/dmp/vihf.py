"""The VIHF: the signed SAML 2.0 assertion that identifies who acts on the DMP, and for whom.

Owns `VihfSubject` (the professional: publication uses the report's author in INDIRECTE mode,
consultation the Pro Santé Connect user), `VihfContext` (the site and software identity from
the configuration), `build_vihf` (the assertion of XDS.xml: Issuer = signing certificate DN,
NameID, AuthnStatement, the attributes of ARCHITECTURE §2.4, enveloped XMLDSig, exc-c14n) and
`verify_vihf` for our own tests. It must not choose a subject (the client does), read the
configuration, or talk to the network. The DMP simulator has its own, independent verifier.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from lxml import etree

from drimbox.cda.model import Code, HealthProfessional, ImagingReport
from drimbox.dmp import codes
from drimbox.dmp.soap import default_ns, parse_xml, q
from drimbox.dmp.xades import SignatureError, XmlSigner, verify_signature

ATTR_VIHF_VERSION = "VIHF_Version"
ATTR_SECTOR = "Secteur_Activite"
ATTR_RESOURCE_URN = "Ressource_URN"
ATTR_SUBJECT_ID = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
ATTR_STRUCTURE = "Identifiant_Structure"
ATTR_LPS_ID = "LPS_ID"
ATTR_LPS_NAME = "LPS_Nom"
ATTR_LPS_HOMOLOGATION = "LPS_ID_HOMOLOGATION_DMP"
ATTR_LPS_VERSION = "LPS_Version"
ATTR_RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
ATTR_AUTH_MODE = "Authentification_Mode"
ATTR_PURPOSE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"
ATTR_ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"

# Every attribute the DMP requires (ARCHITECTURE §2.4), in XDS.xml's order.
MANDATORY_ATTRIBUTES: tuple[str, ...] = (
    ATTR_VIHF_VERSION,
    ATTR_SECTOR,
    ATTR_RESOURCE_URN,
    ATTR_SUBJECT_ID,
    ATTR_STRUCTURE,
    ATTR_LPS_ID,
    ATTR_LPS_NAME,
    ATTR_LPS_HOMOLOGATION,
    ATTR_LPS_VERSION,
    ATTR_RESOURCE_ID,
    ATTR_AUTH_MODE,
    ATTR_PURPOSE,
    ATTR_ROLE,
)

# Authentification_Mode: a structure acting itself (publication by the author's structure);
# a professional authenticated by Pro Santé Connect (CPS or e-CPS, the box authenticating to
# the DMP with its structure's certificate: the DMP's reinforced indirect mode); a CPS card read
# by the workstation, whose certificate authenticates to the DMP (never the case of a DRIMbox).
AUTH_INDIRECT = "INDIRECTE"
AUTH_REINFORCED_INDIRECT = "INDIRECTE_RENFORCEE"
AUTH_DIRECT = "DIRECTE"
# The AuthnContextDecl of a reinforced indirect VIHF, as the ANS DRIMbox demonstrator sends it.
PSC_AUTHN_CONTEXT_DECL = "APP_BROWSER_AUTH"
TLS_CLIENT_CONTEXT = "urn:oasis:names:tc:SAML:2.0:ac:classes:TLSClient"
X509_SUBJECT_FORMAT = "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"

# "G15_10/SM44": profession 10 (TRE_G15) and specialty SM44 (TRE_R38), as CDA authors carry them.
_PROFESSION_SPECIALTY = re.compile(r"^G15_(?P<profession>[^/]+)(?:/(?P<specialty>.+))?$")


class VihfError(Exception):
    """A VIHF that cannot be built (missing identity) or does not verify."""


@dataclass(frozen=True)
class VihfSubject:
    """The professional the DMP will hold responsible for the request."""

    name_id: str  # RPPS (publication) or PSC SubjectNameID (consultation)
    display_name: str  # "Prénom NOM", the subject-id attribute
    profession: Code  # code system 1.2.250.1.71.1.2.7
    specialty: Code | None = None  # code system 1.2.250.1.71.4.2.5
    authentication_mode: str = AUTH_INDIRECT
    structure_id: str | None = None  # None: the site's
    activity_sector: str | None = None  # "SA07^1.2.250.1.71.4.2.4"; None: the site's
    purpose_of_use: Code = codes.PURPOSE_NORMAL

    @classmethod
    def from_professional(
        cls, professional: HealthProfessional, *, activity_sector: str | None = None
    ) -> VihfSubject:
        """The subject of a publication: a report author (RPPS), authenticated INDIRECTE."""
        if not professional.id.extension:
            raise VihfError("the report's author has no identifier (RPPS) for the VIHF")
        name = professional.name
        display = " ".join([*(name.given if name else ()), name.family if name else ""]).strip()
        profession, specialty = _profession_and_specialty(professional.code)
        return cls(
            name_id=professional.id.extension,
            display_name=display or professional.id.extension,
            profession=profession,
            specialty=specialty,
            # The structure is the publishing one (its certificates): the context's, chosen from
            # the report's organisation by `structures.choose_structure`.
            structure_id=None,
            activity_sector=activity_sector,
        )

    @classmethod
    def from_report(cls, report: ImagingReport) -> VihfSubject:
        """Publication: the legal authenticator (as XDS.xml's NameID), else the first author."""
        professional = report.legal_authenticator or (report.authors[0] if report.authors else None)
        if professional is None:
            raise VihfError("the report has neither legal authenticator nor author")
        sector = None
        if report.healthcare_facility_type:
            facility = report.healthcare_facility_type
            sector = f"{facility.code}^{facility.code_system}"
        return cls.from_professional(professional, activity_sector=sector)


def _profession_and_specialty(code: Code | None) -> tuple[Code, Code | None]:
    """Split a CDA author code into the VIHF's profession and specialty roles."""
    if code is None:
        return Code("10", codes.PROFESSION_SYSTEM, codes.PROFESSION_DISPLAY["10"]), None
    if code.code_system == codes.PROFESSION_SYSTEM:
        return code, None
    match = _PROFESSION_SPECIALTY.match(code.code)
    if not match:
        return Code("10", codes.PROFESSION_SYSTEM, codes.PROFESSION_DISPLAY["10"]), None
    profession_code = match["profession"]
    profession_display, _, specialty_display = code.display_name.partition(" - ")
    profession = Code(
        profession_code,
        codes.PROFESSION_SYSTEM,
        codes.PROFESSION_DISPLAY.get(profession_code, profession_display.strip()),
    )
    specialty = None
    if match["specialty"]:
        specialty = Code(match["specialty"], codes.SPECIALTY_SYSTEM, specialty_display.strip())
    return profession, specialty


@dataclass(frozen=True)
class VihfContext:
    """What the site and the software contribute to every VIHF (from `[dmp]` and `[site]`)."""

    structure_id: str
    activity_sector: str  # code^system
    lps_id: str
    lps_name: str
    lps_version: str
    lps_homologation_id: str
    vihf_version: str = "3.0"


def patient_resource_id(ins: str, ins_oid: str) -> str:
    """`<INS>^^^&<OID>&ISO^NH`, the VIHF resource-id and the XDS patientId."""
    return f"{ins}^^^&{ins_oid}&ISO^NH"


def _saml(name: str) -> str:
    return q(codes.SAML_NS, name)


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{moment.microsecond // 1000:03d}Z"
    )


def _attribute(statement: etree._Element, name: str, *values: str) -> etree._Element:
    attribute = etree.SubElement(statement, _saml("Attribute"), Name=name)
    for value in values:
        etree.SubElement(attribute, _saml("AttributeValue")).text = value
    return attribute


def _ce(attribute: etree._Element, tag: str, code: Code, system_name: str = "") -> None:
    holder = etree.SubElement(attribute, _saml("AttributeValue"))
    element = etree.SubElement(
        holder,
        q(codes.HL7_NS, tag),
        nsmap=default_ns(codes.HL7_NS, xsi=codes.XSI_NS),
        code=code.code,
        codeSystem=code.code_system,
        codeSystemName=system_name,
        displayName=code.display_name,
    )
    element.set(q(codes.XSI_NS, "type"), "CE")


def build_vihf(
    subject: VihfSubject,
    *,
    patient_ins: str,
    patient_ins_oid: str,
    context: VihfContext,
    signer: XmlSigner,
    now: datetime | None = None,
    assertion_id: str | None = None,
) -> etree._Element:
    """The signed VIHF assertion, ready to go into `wsse:Security`."""
    structure = subject.structure_id or context.structure_id
    sector = subject.activity_sector or context.activity_sector
    missing = [
        name
        for name, value in (
            ("Identifiant_Structure", structure),
            ("Secteur_Activite", sector),
            ("LPS_ID", context.lps_id),
            ("LPS_ID_HOMOLOGATION_DMP", context.lps_homologation_id),
            ("NameID", subject.name_id),
            ("INS", patient_ins),
        )
        if not value
    ]
    if missing:
        raise VihfError(f"VIHF incomplete, missing: {', '.join(missing)}")
    now = now or datetime.now(UTC)
    # SAML IDs are xs:ID (NCName): XDS.xml's bare UUID starts with a digit, so prefix it.
    assertion_id = assertion_id or f"_{uuid.uuid4()}"
    instant = _instant(now)
    assertion = etree.Element(
        _saml("Assertion"),
        nsmap={"saml2": codes.SAML_NS, "xsi": codes.XSI_NS},
        ID=assertion_id,
        IssueInstant=instant,
        Version="2.0",
    )
    issuer = etree.SubElement(assertion, _saml("Issuer"), Format=X509_SUBJECT_FORMAT)
    issuer.text = signer.subject
    signature = signer.new_signature(assertion)
    assertion.append(signature)  # SAML order: Issuer, Signature, Subject…
    signer.add_reference(signature, f"#{assertion_id}", enveloped=True)

    subject_el = etree.SubElement(assertion, _saml("Subject"))
    etree.SubElement(subject_el, _saml("NameID")).text = subject.name_id
    authn = etree.SubElement(assertion, _saml("AuthnStatement"), AuthnInstant=instant)
    authn_context = etree.SubElement(authn, _saml("AuthnContext"))
    etree.SubElement(authn_context, _saml("AuthnContextClassRef")).text = TLS_CLIENT_CONTEXT
    if subject.authentication_mode == AUTH_REINFORCED_INDIRECT:
        etree.SubElement(authn_context, _saml("AuthnContextDecl")).text = PSC_AUTHN_CONTEXT_DECL

    statement = etree.SubElement(assertion, _saml("AttributeStatement"))
    _attribute(statement, ATTR_VIHF_VERSION, context.vihf_version)
    _attribute(statement, ATTR_SECTOR, sector)
    _attribute(statement, ATTR_RESOURCE_URN, "urn:dmp")
    _attribute(statement, ATTR_SUBJECT_ID, subject.display_name)
    _attribute(statement, ATTR_STRUCTURE, structure)
    _attribute(statement, ATTR_LPS_ID, context.lps_id)
    _attribute(statement, ATTR_LPS_NAME, context.lps_name)
    _attribute(statement, ATTR_LPS_HOMOLOGATION, context.lps_homologation_id)
    _attribute(statement, ATTR_LPS_VERSION, context.lps_version)
    _attribute(statement, ATTR_RESOURCE_ID, patient_resource_id(patient_ins, patient_ins_oid))
    _attribute(statement, ATTR_AUTH_MODE, subject.authentication_mode)
    purpose = _attribute(statement, ATTR_PURPOSE)
    _ce(purpose, "PurposeOfUse", subject.purpose_of_use, codes.PURPOSE_SYSTEM_NAME)
    role = _attribute(statement, ATTR_ROLE)
    _ce(role, "Role", subject.profession)
    if subject.specialty is not None:
        _ce(role, "Role", subject.specialty)

    signer.sign(signature, "ID")
    return assertion


def vihf_bytes(assertion: etree._Element) -> bytes:
    data: bytes = etree.tostring(assertion, encoding="UTF-8")
    return data


@dataclass(frozen=True)
class VihfClaims:
    """What a verified VIHF says."""

    assertion_id: str
    issuer: str
    name_id: str
    signer: x509.Certificate
    signature_method: str
    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    roles: tuple[Code, ...] = ()
    purpose_of_use: Code | None = None
    authn_context_decl: str = ""

    def get(self, name: str) -> str:
        values = self.attributes.get(name, ())
        return values[0] if values else ""

    @property
    def authentication_mode(self) -> str:
        return self.get(ATTR_AUTH_MODE)

    @property
    def resource_id(self) -> str:
        return self.get(ATTR_RESOURCE_ID)


def verify_vihf(
    xml: bytes | etree._Element, trusted_certs: Sequence[x509.Certificate]
) -> VihfClaims:
    """Verify a VIHF (alone or inside an envelope) and return its claims.

    Checks the signature (xmlsec) with the embedded certificate, which must be trusted; that the
    signature covers the whole assertion; that every mandatory attribute is present.
    """
    root = parse_xml(xml) if isinstance(xml, bytes) else xml
    assertion = root if root.tag == _saml("Assertion") else root.find(f".//{_saml('Assertion')}")
    if assertion is None:
        raise VihfError("no SAML assertion")
    signature = assertion.find(q(codes.DS_NS, "Signature"))
    if signature is None:
        raise VihfError("the VIHF is not signed")
    try:
        verified = verify_signature(signature, trusted_certs, id_attribute="ID")
    except SignatureError as exc:
        raise VihfError(str(exc)) from exc
    assertion_id = assertion.get("ID", "")
    # Signature wrapping: the only reference must be the assertion itself.
    if verified.reference_uris != (f"#{assertion_id}",):
        raise VihfError("the VIHF signature does not cover the assertion")
    attributes: dict[str, tuple[str, ...]] = {}
    roles: list[Code] = []
    purpose: Code | None = None
    for attribute in assertion.iter(_saml("Attribute")):
        name = attribute.get("Name", "")
        values: list[str] = []
        for value in attribute.iterfind(_saml("AttributeValue")):
            coded = next((c for c in value if isinstance(c.tag, str)), None)
            if coded is not None:
                code = Code(
                    coded.get("code", ""), coded.get("codeSystem", ""), coded.get("displayName", "")
                )
                values.append(f"{code.code}^{code.code_system}")
                if name == ATTR_ROLE:
                    roles.append(code)
                elif name == ATTR_PURPOSE:
                    purpose = code
            else:
                values.append((value.text or "").strip())
        attributes[name] = tuple(values)
    missing = [name for name in MANDATORY_ATTRIBUTES if not any(attributes.get(name, ()))]
    if missing:
        raise VihfError(f"VIHF attributes missing: {', '.join(missing)}")
    return VihfClaims(
        assertion_id=assertion_id,
        issuer=(assertion.findtext(_saml("Issuer")) or "").strip(),
        name_id=(assertion.findtext(f"{_saml('Subject')}/{_saml('NameID')}") or "").strip(),
        signer=verified.certificate,
        signature_method=verified.signature_method,
        attributes=attributes,
        roles=tuple(roles),
        purpose_of_use=purpose,
        authn_context_decl=(
            assertion.findtext(
                f"{_saml('AuthnStatement')}/{_saml('AuthnContext')}/{_saml('AuthnContextDecl')}"
            )
            or ""
        ).strip(),
    )
