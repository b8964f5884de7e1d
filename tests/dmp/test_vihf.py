"""VIHF: built as XDS.xml's, signed with the ORG signing certificate, verified with xmlsec."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from lxml import etree

from drimbox.cda.model import Code, ImagingReport
from drimbox.dmp import codes
from drimbox.dmp.soap import build_envelope
from drimbox.dmp.vihf import (
    ATTR_AUTH_MODE,
    ATTR_RESOURCE_ID,
    ATTR_SECTOR,
    ATTR_SUBJECT_ID,
    AUTH_REINFORCED_INDIRECT,
    MANDATORY_ATTRIBUTES,
    PSC_AUTHN_CONTEXT_DECL,
    VihfContext,
    VihfError,
    VihfSubject,
    build_vihf,
    verify_vihf,
    vihf_bytes,
)
from drimbox.dmp.xades import XmlSigner
from drimbox.samples import ANS_DIR
from drimbox.sim.pki import Issued, TestPki

CONTEXT = VihfContext(
    structure_id="499700367909006",
    activity_sector="SA25^1.2.250.1.71.4.2.4",
    lps_id="DRIMBOX-TEST",
    lps_name="DRIMbox",
    lps_version="0.1.0",
    lps_homologation_id="HOMOL-TEST",
)
SUBJECT = VihfSubject(
    name_id="899700367909",
    display_name="KIT DOC0036790",
    profession=Code("10", codes.PROFESSION_SYSTEM, "Medecin"),
    specialty=Code("SM26", codes.SPECIALTY_SYSTEM, "Qualifie en Medecine Generale (SM)"),
)
SAML = codes.SAML_NS


def _vihf(signer: XmlSigner, subject: VihfSubject = SUBJECT) -> bytes:
    assertion = build_vihf(
        subject,
        patient_ins="162018885045327",
        patient_ins_oid="1.2.250.1.213.1.4.10",
        context=CONTEXT,
        signer=signer,
        now=datetime(2023, 11, 3, 15, 17, 24, 87000, tzinfo=UTC),
    )
    return vihf_bytes(assertion)


def test_signed_vihf_verifies_against_the_ca(signer: XmlSigner, pki: TestPki) -> None:
    claims = verify_vihf(_vihf(signer), [pki.ca.certificate])
    assert claims.name_id == "899700367909"
    assert (
        claims.issuer
        == "CN=DRIMbox, OU=499700367909006, O=CABINET M DOC0036790, ST=Paris (75), C=FR"
    )
    assert claims.signature_method.endswith("rsa-sha256")
    assert claims.resource_id == "162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH"
    assert claims.authentication_mode == "INDIRECTE"
    assert claims.get(ATTR_SECTOR) == "SA25^1.2.250.1.71.4.2.4"
    assert [r.code for r in claims.roles] == ["10", "SM26"]
    assert claims.purpose_of_use == codes.PURPOSE_NORMAL


def test_vihf_has_every_attribute_of_xds_xml(signer: XmlSigner) -> None:
    sample = etree.fromstring((ANS_DIR / "validators" / "XDS.xml").read_bytes())
    expected = {a.get("Name") for a in sample.iter(f"{{{SAML}}}Attribute")}
    ours = etree.fromstring(_vihf(signer))
    names = {a.get("Name") for a in ours.iter(f"{{{SAML}}}Attribute")}
    assert expected == names == set(MANDATORY_ATTRIBUTES)
    # Same skeleton: Issuer (X509SubjectName), Signature, Subject/NameID, AuthnStatement.
    children = [etree.QName(c).localname for c in ours]
    assert children == ["Issuer", "Signature", "Subject", "AuthnStatement", "AttributeStatement"]
    role = ours.find(f".//{{{codes.HL7_NS}}}Role")
    assert role is not None and role.get(f"{{{codes.XSI_NS}}}type") == "CE"


def test_tampered_attribute_breaks_the_signature(signer: XmlSigner, pki: TestPki) -> None:
    tampered = _vihf(signer).replace(b"INDIRECTE", b"DIRECTE")
    with pytest.raises(VihfError, match="does not verify"):
        verify_vihf(tampered, [pki.ca.certificate])


def test_signer_from_another_ca_is_refused(signer: XmlSigner) -> None:
    with pytest.raises(VihfError, match="not trusted"):
        verify_vihf(_vihf(signer), [TestPki("AUTRE AC").ca.certificate])


def test_rsa_sha1_option(signing: Issued, pki: TestPki) -> None:
    sha1 = XmlSigner(signing.certificate, signing.key_pem, "rsa-sha1", "sha1")
    xml = _vihf(sha1)
    assert b"xmldsig#rsa-sha1" in xml and b"xmldsig#sha1" in xml
    assert verify_vihf(xml, [pki.ca.certificate]).signature_method.endswith("rsa-sha1")


def test_vihf_still_verifies_inside_the_soap_envelope(signer: XmlSigner, pki: TestPki) -> None:
    assertion = build_vihf(
        SUBJECT,
        patient_ins="162018885045327",
        patient_ins_oid="1.2.250.1.213.1.4.10",
        context=CONTEXT,
        signer=signer,
    )
    envelope = build_envelope(
        action=codes.ACTION_ITI18,
        to="https://dmp.example/registry",
        body=etree.Element("{urn:x}Body"),
        security=[assertion],
    )
    claims = verify_vihf(envelope, [pki.ca.certificate])
    assert claims.get(ATTR_SUBJECT_ID) == "KIT DOC0036790"


def test_missing_identity_is_refused(signer: XmlSigner) -> None:
    with pytest.raises(VihfError, match="LPS_ID"):
        build_vihf(
            SUBJECT,
            patient_ins="1",
            patient_ins_oid="1.2.250.1.213.1.4.10",
            context=dataclasses.replace(CONTEXT, lps_id=""),
            signer=signer,
        )


def test_publication_subject_from_the_report(report: ImagingReport) -> None:
    subject = VihfSubject.from_report(report)
    assert subject.name_id == "801234560801"
    assert subject.display_name == "PAUL RADIOLOGUE"
    assert subject.profession == Code("10", codes.PROFESSION_SYSTEM, "Médecin")
    assert subject.specialty == Code("SM44", codes.SPECIALTY_SYSTEM, "Radio-diagnostic (SM)")
    assert subject.authentication_mode == "INDIRECTE"
    # The structure is the publishing one (the configured structure chosen for the report).
    assert subject.structure_id is None


def test_consultation_subject_mode_is_carried(signer: XmlSigner, pki: TestPki) -> None:
    """A PSC user consults in the reinforced indirect mode, with the AuthnContextDecl the ANS
    demonstrator sends; other modes carry no AuthnContextDecl."""
    user = dataclasses.replace(
        SUBJECT, name_id="ANS-PSC-USER", authentication_mode=AUTH_REINFORCED_INDIRECT
    )
    claims = verify_vihf(_vihf(signer, user), [pki.ca.certificate])
    assert claims.name_id == "ANS-PSC-USER"
    assert claims.get(ATTR_AUTH_MODE) == "INDIRECTE_RENFORCEE"
    assert claims.authn_context_decl == PSC_AUTHN_CONTEXT_DECL == "APP_BROWSER_AUTH"
    assert verify_vihf(_vihf(signer), [pki.ca.certificate]).authn_context_decl == ""
    assert claims.get(ATTR_RESOURCE_ID).endswith("^NH")
