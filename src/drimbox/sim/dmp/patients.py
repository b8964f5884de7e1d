"""TD0.2 (does the patient have a DMP, is this professional authorised) and TD0.3
(setAuthorization AJOUT/SUPPRESSION) of the DMP simulator.

TD0.2 answers a PRPA_IN201306UV02: `queryAck/queryResponseCode` OK (the DMP exists) or NF (no
DMP), and for an existing DMP the patient with an administrative observation `AUTORISATION`
whose value is VALIDE (authorised), NON_AUTORISE (TD0.3 may add the authorisation) or INTERDIT
(the patient blocked this professional). TD0.3 answers `setAuthorizationResponse` with
`status` OK or ERREUR and a `context` sentence. The professional is the VIHF NameID, the patient
its resource-id. The DMP's exact codes for these values are not public here: these are the
simulator's choice.
Part of the test/demo simulator of the national DMP; never deploy it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import cast

from lxml import etree

from drimbox.sim.dmp.registry import Registry
from drimbox.sim.dmp.settings import INS_OIDS, DmpSimSettings
from drimbox.sim.dmp.soap import HABILITATIONS, HL7, XSI, SoapFault
from drimbox.sim.dmp.vihf import Vihf

DMP_DEVICE_ROOT = "1.2.250.1.213.4.1.1.1"
AUTHORISED, NOT_AUTHORISED, FORBIDDEN = "VALIDE", "NON_AUTORISE", "INTERDIT"


def _nsmap(mapping: dict[str | None, str]) -> dict[str, str]:
    # lxml accepts None for the default namespace; its stubs do not.
    return cast(dict[str, str], mapping)


def _h(parent: etree._Element, name: str, **attributes: str) -> etree._Element:
    return etree.SubElement(parent, f"{{{HL7}}}{name}", attrib=attributes)


class PatientServices:
    def __init__(self, settings: DmpSimSettings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry

    def authorisation_state(self, ins: str, professional: str) -> str:
        patient = self.settings.patient(ins)
        if patient is not None and professional in patient.blocked:
            return FORBIDDEN
        with self.registry.session() as session:
            if self.registry.is_authorised(session, ins, professional):
                return AUTHORISED
        return NOT_AUTHORISED

    # -- TD0.2 -----------------------------------------------------------------------------

    def test_existence(self, body: etree._Element, vihf: Vihf, now: dt.datetime) -> etree._Element:
        if body.tag != f"{{{HL7}}}PRPA_IN201307UV02":
            raise SoapFault("DMPRequeteInvalide", "PRPA_IN201307UV02 attendu (TD0.2).")
        reason = body.find(f"{{{HL7}}}controlActProcess/{{{HL7}}}reasonCode")
        if reason is None or reason.get("code") != "TEST_EXST":
            raise SoapFault(
                "DMPRequeteInvalide", "reasonCode TEST_EXST attendu dans controlActProcess."
            )
        value = body.find(
            f"{{{HL7}}}controlActProcess/{{{HL7}}}queryByParameter/{{{HL7}}}parameterList/"
            f"{{{HL7}}}patientIdentifier/{{{HL7}}}value"
        )
        if value is None or not value.get("extension") or value.get("root") not in INS_OIDS:
            raise SoapFault(
                "DMPRequeteInvalide",
                "patientIdentifier/value : INS (extension) et OID d'INS (root) attendus.",
            )
        ins, oid = value.get("extension", ""), value.get("root", "")
        if ins != vihf.ins:
            raise SoapFault(
                "DMPVihfPatientIncoherent",
                f"Le patient du VIHF ({vihf.patient_id}) n'est pas le patient demandé ({ins}).",
                subcode="wsse:InvalidSecurityToken",
            )
        patient = self.settings.patient(ins)
        exists = patient is not None and patient.oid == oid and patient.has_dmp
        state = self.authorisation_state(ins, vihf.name_id) if exists else ""

        response = etree.Element(
            f"{{{HL7}}}PRPA_IN201306UV02",
            nsmap=_nsmap({None: HL7, "xsi": XSI}),
            ITSVersion="XML_1.0",
        )
        _h(response, "id", root=DMP_DEVICE_ROOT, extension=str(uuid.uuid4()))
        _h(response, "creationTime", value=now.strftime("%Y%m%d%H%M%S"))
        _h(response, "interactionId", root="2.16.840.1.113883.1.6", extension="PRPA_IN201306UV02")
        _h(response, "processingCode", code="P")
        _h(response, "processingModeCode", code="T")
        _h(response, "acceptAckCode", code="NE")
        sender_id = body.find(f"{{{HL7}}}sender/{{{HL7}}}device/{{{HL7}}}id")
        receiver = _h(response, "receiver", typeCode="RCV")
        device = _h(receiver, "device", classCode="DEV", determinerCode="INSTANCE")
        _h(device, "id", root="" if sender_id is None else sender_id.get("root", ""))
        sender = _h(response, "sender", typeCode="SND")
        device = _h(sender, "device", classCode="DEV", determinerCode="INSTANCE")
        _h(device, "id", root=DMP_DEVICE_ROOT)
        _h(device, "softwareName").text = "DMP"
        acknowledgement = _h(response, "acknowledgement")
        _h(acknowledgement, "typeCode", code="AA")
        request_id = body.find(f"{{{HL7}}}id")
        target = _h(acknowledgement, "targetMessage")
        _h(
            target,
            "id",
            root="" if request_id is None else request_id.get("root", ""),
            extension="" if request_id is None else request_id.get("extension", ""),
        )
        control = _h(response, "controlActProcess", classCode="CACT", moodCode="EVN")
        _h(control, "code", code="PRPA_TE201306UV02", codeSystem="2.16.840.1.113883.1.6")
        if exists and patient is not None:
            subject = _h(control, "subject", typeCode="SUBJ")
            event = _h(subject, "registrationEvent", classCode="REG", moodCode="EVN")
            _h(event, "statusCode", code="active")
            subject1 = _h(event, "subject1", typeCode="SBJ")
            patient_element = _h(subject1, "patient", classCode="PAT")
            _h(patient_element, "id", root=oid, extension=ins)
            _h(patient_element, "statusCode", code="active")
            person = _h(
                patient_element, "patientPerson", classCode="PSN", determinerCode="INSTANCE"
            )
            name = _h(person, "name")
            _h(name, "family").text = patient.family_name
            _h(name, "given").text = patient.given_name
            observation_holder = _h(patient_element, "subjectOf2", typeCode="SBJ")
            observation = _h(
                observation_holder, "administrativeObservation", classCode="VERIF", moodCode="EVN"
            )
            _h(observation, "code", code="AUTORISATION", displayName="Autorisation d'accès")
            value_element = _h(observation, "value", code=state)
            value_element.set(f"{{{XSI}}}type", "CD")
        query_ack = _h(control, "queryAck")
        query_id = body.find(
            f"{{{HL7}}}controlActProcess/{{{HL7}}}queryByParameter/{{{HL7}}}queryId"
        )
        if query_id is not None:
            _h(
                query_ack,
                "queryId",
                root=query_id.get("root", ""),
                extension=query_id.get("extension", ""),
            )
        _h(query_ack, "queryResponseCode", code="OK" if exists else "NF")
        _h(query_ack, "resultTotalQuantity", value="1" if exists else "0")
        return response

    # -- TD0.3 -----------------------------------------------------------------------------

    def set_authorization(self, body: etree._Element, vihf: Vihf) -> etree._Element:
        if body.tag != f"{{{HABILITATIONS}}}setAuthorization":
            raise SoapFault("DMPRequeteInvalide", "setAuthorization attendu (TD0.3).")
        action = (body.findtext(f"{{{HABILITATIONS}}}action") or "").strip()
        response = etree.Element(
            f"{{{HABILITATIONS}}}setAuthorizationResponse", nsmap=_nsmap({None: HABILITATIONS})
        )
        status = etree.SubElement(response, f"{{{HABILITATIONS}}}status")
        context = etree.SubElement(response, f"{{{HABILITATIONS}}}context")
        patient = self.settings.patient(vihf.ins)
        if action not in ("AJOUT", "SUPPRESSION"):
            status.text, context.text = (
                "ERREUR",
                f"Action « {action} » inconnue (AJOUT, SUPPRESSION).",
            )
        elif patient is None or not patient.has_dmp:
            status.text, context.text = "ERREUR", "Le patient n'a pas de DMP."
        elif action == "AJOUT" and vihf.name_id in patient.blocked:
            status.text = "ERREUR"
            context.text = "Le patient a interdit l'accès de ce professionnel à son DMP."
        else:
            with self.registry.session() as session:
                if action == "AJOUT":
                    self.registry.grant(session, vihf.ins, vihf.name_id)
                else:
                    self.registry.revoke(session, vihf.ins, vihf.name_id)
            status.text = "OK"
            context.text = (
                "Autorisation ajoutée." if action == "AJOUT" else "Autorisation supprimée."
            )
        return response
