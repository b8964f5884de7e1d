"""SOAP envelopes and the typed reading of the DMP's answers."""

from __future__ import annotations

import pytest
from lxml import etree

from drimbox.dmp import codes, soap

ENV = codes.SOAP_NS


def test_envelope_has_ws_addressing_and_security() -> None:
    token = etree.Element("{urn:oasis:names:tc:SAML:2.0:assertion}Assertion")
    data = soap.build_envelope(
        action=codes.ACTION_ITI41,
        to="https://dmp.example/repository",
        body=etree.Element("{urn:x}Request"),
        security=[token],
        message_id="urn:uuid:1",
    )
    root = etree.fromstring(data)
    wsa = codes.WSA_NS
    header = root.find(f"{{{ENV}}}Header")
    assert header is not None
    assert header.findtext(f"{{{wsa}}}MessageID") == "urn:uuid:1"
    assert header.findtext(f"{{{wsa}}}To") == "https://dmp.example/repository"
    action = header.find(f"{{{wsa}}}Action")
    assert action is not None and action.text == codes.ACTION_ITI41
    assert action.get(f"{{{ENV}}}mustUnderstand") == "true"
    assert header.findtext(f"{{{wsa}}}ReplyTo/{{{wsa}}}Address") == codes.WSA_ANONYMOUS
    assert header.find(f"{{{codes.WSSE_NS}}}Security/{{{codes.SAML_NS}}}Assertion") is not None


def test_transactions_target_their_services() -> None:
    base = "https://dmp.example/si-dmp-server/v2/services/"
    assert soap.ITI41.url(base) == base + "repository"
    assert soap.ITI18.url(base) == base + "registry"
    assert soap.ITI43.url(base) == base + "repository"
    assert soap.ITI57.url(base) == base + "registry"
    assert soap.TD02.url(base) == base + "patients"
    assert soap.TD03.url(base) == base + "habilitations"


def _wrap(body: str) -> bytes:
    return f'<s:Envelope xmlns:s="{ENV}"><s:Body>{body}</s:Body></s:Envelope>'.encode()


def test_registry_failure_is_parsed() -> None:
    element = soap.body_of(
        _wrap(
            f'<rs:RegistryResponse xmlns:rs="{codes.RS_NS}" status="{codes.RESPONSE_FAILURE}">'
            '<rs:RegistryErrorList><rs:RegistryError errorCode="XDSRegistryBusy" '
            'codeContext="try later" '
            'severity="urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"/>'
            "</rs:RegistryErrorList></rs:RegistryResponse>"
        )
    )
    response = soap.expect_registry_response(element)
    assert response.failure
    assert response.errors == (soap.RegistryError("XDSRegistryBusy", "Error", "try later"),)


def test_fault_is_raised() -> None:
    fault = (
        "<s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>x:InvalidSecurity</s:Value>"
        "</s:Subcode></s:Code>"
        '<s:Reason><s:Text xml:lang="fr">VIHF invalide</s:Text></s:Reason></s:Fault>'
    )
    with pytest.raises(soap.SoapFault) as caught:
        soap.body_of(_wrap(fault))
    assert caught.value.code == "Sender"
    assert caught.value.subcodes == ("InvalidSecurity",)
    assert caught.value.reason == "VIHF invalide"


def test_retrieve_response_resolves_xop() -> None:
    xdsb = codes.XDSB_NS
    element = soap.body_of(
        _wrap(
            f'<xdsb:RetrieveDocumentSetResponse xmlns:xdsb="{xdsb}" xmlns:rs="{codes.RS_NS}">'
            f'<rs:RegistryResponse status="{codes.RESPONSE_SUCCESS}"/>'
            "<xdsb:DocumentResponse><xdsb:RepositoryUniqueId>1.2</xdsb:RepositoryUniqueId>"
            "<xdsb:DocumentUniqueId>1.3</xdsb:DocumentUniqueId>"
            "<xdsb:mimeType>application/dicom</xdsb:mimeType><xdsb:Document>"
            f'<xop:Include xmlns:xop="{codes.XOP_NS}" href="cid:doc1"/></xdsb:Document>'
            "</xdsb:DocumentResponse></xdsb:RetrieveDocumentSetResponse>"
        )
    )
    result = soap.parse_retrieve_response(element, {"cid:doc1": b"\x00DICM"}.__getitem__)
    assert result.response.success
    (document,) = result.documents
    assert (document.document_unique_id, document.mime_type, document.content) == (
        "1.3",
        "application/dicom",
        b"\x00DICM",
    )


def test_patient_query_and_its_answer() -> None:
    query = soap.build_patient_query(
        ins="279035121518989",
        ins_oid="1.2.250.1.213.1.4.10",
        sender_root="1.2.250.1.999.77",
        sender_name="DRIMbox",
    )
    hl7 = codes.HL7_NS
    reason = query.find(f".//{{{hl7}}}reasonCode")
    assert reason is not None and reason.get("code") == "TEST_EXST"
    value = query.find(f".//{{{hl7}}}patientIdentifier/{{{hl7}}}value")
    assert value is not None and value.get("extension") == "279035121518989"
    answer = etree.fromstring(
        f'<PRPA_IN201308UV02 xmlns="{hl7}"><controlActProcess><subject><registrationEvent>'
        '<subject1><patient><id root="1.2.250.1.213.1.4.10" extension="279035121518989"/>'
        '<subjectOf><observation><code code="AUTORISATION"/><value code="VALIDE"/>'
        "</observation></subjectOf></patient></subject1></registrationEvent></subject>"
        '<queryAck><queryResponseCode code="OK"/></queryAck></controlActProcess>'
        "</PRPA_IN201308UV02>"
    )
    status = soap.parse_patient_status(answer)
    assert status.exists and status.authorization == "VALIDE"


def test_set_authorization_body() -> None:
    body = soap.build_set_authorization()
    assert body.tag == f"{{{codes.DMP_HABILITATIONS_NS}}}setAuthorization"
    assert body.findtext(f"{{{codes.DMP_HABILITATIONS_NS}}}action") == "AJOUT"
