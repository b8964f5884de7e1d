"""The DMP simulator over real sockets: ITI-41 (MTOM and inline), ITI-43, ITI-18, ITI-57, TD0.2,
TD0.3, and the checks the national DMP makes (WS-Addressing, VIHF, metadata, hashes, patients,
duplicates, replacement). Requests are built from XDS.xml by `test_dmp_requests`, never by the
box's own client.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from lxml import etree
from test_dmp_requests import (
    APPROVED,
    DELETED,
    DEPRECATED,
    FIND_BY_REFERENCE_ID,
    GET_ASSOCIATIONS,
    GET_DOCUMENTS,
    INS,
    ITI18,
    ITI43,
    ITI57,
    KOS_SOP_CLASS,
    NS,
    PATIENT_ID,
    RIM,
    STRUCTURE,
    TD02,
    TD03,
    USER_ID,
    Answer,
    Publication,
    VihfSpec,
    envelope,
    find_documents,
    kos_bytes,
    make_publication,
    make_vihf,
    new_uid,
    post,
    retrieve_request,
    stored_query,
    td02_request,
    td03_request,
    tls_client,
    update_status_request,
)

from drimbox.sim.dmp import DmpSimSettings, KnownPatient, LocalDmp
from drimbox.sim.pki import Issued, StructureCertificates, TestPki, structure_certificates
from drimbox.sim.ports import free_port

SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
OTHER_STRUCTURE = "300000001830002"


@dataclass
class Keys:
    pki: TestPki
    ca_path: Path
    server: Issued  # the simulated DMP's TLS certificate
    auth: Issued  # the structure's ORG AUTH (TLS client)
    signer: Issued  # the structure's ORG SIGN (VIHF, signature document)
    stranger: Issued  # same subject, another CA
    other: StructureCertificates  # another structure, same CA


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("sim-pki")
    pki = TestPki()
    own = structure_certificates(folder, pki, STRUCTURE)
    other = structure_certificates(folder, pki, OTHER_STRUCTURE, prefix="other")
    stranger = TestPki("AC PIRATE").issue(
        "DRIMbox",
        usage="sign",
        organizational_unit=STRUCTURE,
        organization="CABINET M DOC0036790",
        state="Paris (75)",
    )
    server = pki.issue("dmp.test", usage="server", dns_names=("127.0.0.1",)).write(folder, "srv")
    return Keys(
        pki, pki.ca.write(folder, "ca").cert_path or folder, server, own.auth, own.signing,
        stranger, other,
    )  # fmt: skip


def settings_for(tmp_path: Path, keys: Keys, **changes: object) -> DmpSimSettings:
    return DmpSimSettings(
        database_path=tmp_path / "dmp.db",
        trusted_vihf_certs=[keys.pki.ca.cert_pem],
        tls_cert=keys.server.cert_path,
        tls_key=keys.server.key_path,
        client_ca=keys.ca_path,
        extra_patients=(
            KnownPatient("180000000000001", has_dmp=False),
            KnownPatient("180000000000002", blocked=frozenset({USER_ID})),
        ),
        **changes,  # type: ignore[arg-type]
    )


@pytest.fixture
def dmp(tmp_path: Path, keys: Keys) -> Iterator[LocalDmp]:
    with LocalDmp(settings_for(tmp_path, keys)) as simulator:
        yield simulator


@pytest.fixture
def client(dmp: LocalDmp, keys: Keys) -> Iterator[httpx.Client]:
    with tls_client(dmp.url, keys.ca_path, keys.auth) as http:
        yield http


def publish(
    client: httpx.Client, keys: Keys, publication: Publication, *, mtom: bool = True
) -> Answer:
    return post(client, "repository", publication.envelope(make_vihf(keys.signer)), mtom=mtom)


def view(client: httpx.Client, ins: str = INS) -> list[dict[str, object]]:
    response = client.get("/sim/registry/documents", params={"patient_id": ins})
    assert response.status_code == 200
    documents: list[dict[str, object]] = response.json()
    return documents


def by_unique_id(client: httpx.Client, unique_id: str) -> dict[str, object]:
    matches = [d for d in view(client) if d["unique_id"] == unique_id]
    assert len(matches) == 1, matches
    return matches[0]


def consult_vihf(keys: Keys, **kwargs: object) -> etree._Element:
    """A PSC-authenticated professional's VIHF (reinforced indirect mode unless `mode`)."""
    fields: dict[str, object] = {"name_id": USER_ID, "mode": "INDIRECTE_RENFORCEE", **kwargs}
    return make_vihf(keys.signer, VihfSpec(**fields))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Publication and retrieval


def test_valid_mtom_publication_is_registered_approved_and_retrievable(
    client: httpx.Client, keys: Keys
) -> None:
    publication = make_publication(keys.signer)
    answer = publish(client, keys, publication)
    assert answer.status_code == 200
    assert answer.status == "Success", answer.error_contexts
    assert answer.content_type.startswith("multipart/related")  # MTOM in, MTOM out

    kos = by_unique_id(client, publication.kos_uid)
    assert kos["status"] == "Approved"
    assert kos["mime_type"] == "application/dicom"
    assert kos["type_code"] == "IMG-KOS^^1.2.250.1.213.1.1.4.12"
    assert kos["class_code"] == "31^^1.2.250.1.213.1.1.4.1"
    assert kos["hash"] == hashlib.sha1(publication.kos).hexdigest().upper()
    assert kos["size"] == len(publication.kos)
    assert any(str(r).endswith("studyInstanceUID") for r in kos["reference_ids"])  # type: ignore[attr-defined]
    assert client.get(str(kos["content_url"])).content == publication.kos
    assert by_unique_id(client, publication.signature_uid)["mime_type"] == "text/xml"

    retrieved = post(
        client,
        "repository",
        envelope(
            ITI43, "repository", retrieve_request(publication.kos_uid), make_vihf(keys.signer)
        ),
    )
    assert retrieved.status == "Success"
    assert retrieved.content_type.startswith("multipart/related")
    response = retrieved.body.find("xdsb:DocumentResponse", NS)
    assert response is not None
    assert response.findtext("xdsb:mimeType", namespaces=NS) == "application/dicom"
    include = response.find("xdsb:Document/{http://www.w3.org/2004/08/xop/include}Include", NS)
    assert include is not None
    cid = include.get("href", "").removeprefix("cid:")
    assert retrieved.attachments[cid] == publication.kos  # byte for byte

    stats = client.get("/sim/stats").json()
    assert stats["ITI-41:Success"] == 1
    assert stats["ITI-43:Success"] == 1


def test_inline_base64_publication_is_accepted(client: httpx.Client, keys: Keys) -> None:
    publication = make_publication(keys.signer)
    answer = publish(client, keys, publication, mtom=False)
    assert answer.status == "Success", answer.error_contexts
    assert answer.content_type.startswith("application/soap+xml")
    assert by_unique_id(client, publication.kos_uid)["status"] == "Approved"


def test_the_health_and_the_empty_view(client: httpx.Client) -> None:
    assert client.get("/sim/health").json() == {"status": "ok"}
    assert view(client) == []
    assert client.get("/sim/registry/documents/1.2.3/content").status_code == 404


# ---------------------------------------------------------------------------------------------
# WS-Addressing and VIHF


def test_missing_action_is_a_fault(client: httpx.Client, keys: Keys) -> None:
    publication = make_publication(keys.signer)
    root = envelope(None, "repository", publication.request, make_vihf(keys.signer))
    answer = post(client, "repository", root)
    assert answer.status_code == 500
    assert answer.body.tag == "{http://www.w3.org/2003/05/soap-envelope}Fault"
    assert answer.fault_code == "DMPAdressageAbsent"
    assert answer.fault_subcode == "wsa:MessageAddressingHeaderRequired"
    assert view(client) == []


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"must_understand": False}, "DMPAdressageInvalide"),
        ({"to": "https://dmp.test/si-dmp-server/v2/services/registry"}, "DMPAdressageInvalide"),
    ],
)
def test_invalid_addressing_is_a_fault(
    client: httpx.Client, keys: Keys, kwargs: dict[str, object], code: str
) -> None:
    answer = post(
        client,
        "repository",
        make_publication(keys.signer).envelope(make_vihf(keys.signer), **kwargs),
    )
    assert answer.fault_code == code


def test_an_action_of_another_service_is_refused(client: httpx.Client, keys: Keys) -> None:
    root = envelope(ITI18, "repository", find_documents(), make_vihf(keys.signer))
    assert post(client, "repository", root).fault_code == "DMPActionNonSupportee"


def _tamper(assertion: etree._Element) -> None:
    for attribute in assertion.iterfind(f"{{{SAML}}}AttributeStatement/{{{SAML}}}Attribute"):
        if attribute.get("Name") == "Identifiant_Structure":
            value = attribute.find(f"{{{SAML}}}AttributeValue")
            assert value is not None
            value.text = "999999999999999"


@pytest.mark.parametrize(
    ("case", "code", "subcode"),
    [
        ("absent", "DMPVihfAbsent", "wsse:InvalidSecurity"),
        ("unsigned", "DMPVihfNonSigne", "wsse:InvalidSecurity"),
        ("tampered", "DMPVihfSignatureInvalide", "wsse:FailedCheck"),
        ("untrusted", "DMPVihfCertificatNonReconnu", "wsse:FailedAuthentication"),
        ("expired-certificate", "DMPVihfCertificatExpire", "wsse:FailedAuthentication"),
        ("old", "DMPVihfExpire", "wsse:MessageExpired"),
        ("missing-attribute", "DMPVihfAttributManquant", "wsse:InvalidSecurityToken"),
        ("wrong-issuer", "DMPVihfEmetteurIncoherent", "wsse:InvalidSecurityToken"),
        ("bad-resource", "DMPVihfAttributInvalide", "wsse:InvalidSecurityToken"),
    ],
)
def test_vihf_problems_are_faults(
    client: httpx.Client, keys: Keys, case: str, code: str, subcode: str
) -> None:
    vihf: etree._Element | None
    if case == "absent":
        vihf = None
    elif case == "unsigned":
        vihf = make_vihf(keys.signer, VihfSpec(sign=False))
    elif case == "tampered":
        vihf = make_vihf(keys.signer, VihfSpec(after_signing=_tamper))
    elif case == "untrusted":
        vihf = make_vihf(keys.stranger)
    elif case == "expired-certificate":
        expired = keys.pki.issue(
            "DRIMbox",
            usage="sign",
            organizational_unit="499700367909006",
            not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=400),
            days=30,
        )
        vihf = make_vihf(expired)
    elif case == "old":
        vihf = make_vihf(
            keys.signer, VihfSpec(issued=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3))
        )
    elif case == "missing-attribute":
        vihf = make_vihf(keys.signer, VihfSpec(drop=("LPS_Nom",)))
    elif case == "wrong-issuer":
        vihf = make_vihf(keys.signer, VihfSpec(issuer="CN=Autre, OU=1, C=FR"))
    else:
        vihf = make_vihf(keys.signer, VihfSpec(patient_id=f"{INS}^^^&1.2.3&ISO^NH"))
    answer = post(client, "repository", make_publication(keys.signer).envelope(vihf), mtom=True)
    assert answer.status_code == 500
    assert (answer.fault_code, answer.fault_subcode) == (code, subcode)
    if case == "missing-attribute":
        assert "LPS_Nom" in answer.body.findtext("soap:Reason/soap:Text", namespaces=NS)  # type: ignore[operator]
    assert view(client) == []


@pytest.mark.parametrize("algorithm", ["rsa-sha1", "rsa-sha256", "rsa-sha512"])
def test_vihf_signature_algorithms(client: httpx.Client, keys: Keys, algorithm: str) -> None:
    vihf = make_vihf(keys.signer, VihfSpec(algorithm=algorithm))
    assert (
        post(client, "repository", make_publication(keys.signer).envelope(vihf)).status == "Success"
    )


# ---------------------------------------------------------------------------------------------
# Metadata


@pytest.mark.parametrize(
    "slot",
    [
        "creationTime",
        "sourcePatientId",
        "hash",
        "size",
        "serviceStartTime",
        "sourcePatientInfo",
        "languageCode",
    ],
)
def test_missing_mandatory_slot_is_a_metadata_error(
    client: httpx.Client, keys: Keys, slot: str
) -> None:
    publication = make_publication(keys.signer)
    publication.remove_slot(slot)
    answer = publish(client, keys, publication)
    assert answer.status == "Failure"
    assert "XDSRegistryMetadataError" in answer.error_codes
    assert f"« {slot} »" in answer.error_contexts
    assert view(client) == []


def test_missing_classification_and_identifier_are_named(client: httpx.Client, keys: Keys) -> None:
    publication = make_publication(keys.signer)
    entry = publication.entry()
    for node in entry.findall("rim:Classification", NS):
        if node.get("classificationScheme") == "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983":
            entry.remove(node)
    package = publication.request.find(".//rim:RegistryPackage", NS)
    assert package is not None
    for node in package.findall("rim:ExternalIdentifier", NS):
        if node.get("identificationScheme") == "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832":
            package.remove(node)
    answer = publish(client, keys, publication)
    assert answer.status == "Failure"
    assert "typeCode" in answer.error_contexts
    assert "XDSSubmissionSet.sourceId" in answer.error_contexts


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ("hash", "XDSRepositoryMetadataError"),
        ("size", "XDSRepositoryMetadataError"),
        ("unknown-oid", "XDSUnknownPatientId"),
        ("unknown-ins", "XDSUnknownPatientId"),
        ("no-dmp", "XDSUnknownPatientId"),
        ("entry-patient", "XDSPatientIdDoesNotMatch"),
        ("missing-document", "XDSMissingDocument"),
        ("kos-mime", "XDSRegistryMetadataError"),
        ("not-dicom", "XDSRepositoryMetadataError"),
        ("bad-time", "XDSRegistryMetadataError"),
        ("no-signature", "XDSRegistryMetadataError"),
        ("manifest", "DMPSignatureLotInvalide"),
        ("signature-untrusted", "DMPSignatureLotInvalide"),
        ("not-member", "XDSRegistryMetadataError"),
    ],
)
def test_metadata_problems_are_refused_with_their_code(
    client: httpx.Client, keys: Keys, change: str, code: str
) -> None:
    patient_id = PATIENT_ID
    if change == "unknown-oid":
        patient_id = f"{INS}^^^&1.2.250.1.999&ISO^NH"
    elif change == "unknown-ins":
        patient_id = "299999999999999^^^&1.2.250.1.213.1.4.10&ISO^NH"
    elif change == "no-dmp":
        patient_id = "180000000000001^^^&1.2.250.1.213.1.4.10&ISO^NH"
    kos = b"not a dicom file at all" * 10 if change == "not-dicom" else None
    document_signer = keys.stranger if change == "signature-untrusted" else None
    publication = make_publication(
        keys.signer, patient_id=patient_id, kos=kos, document_signer=document_signer
    )
    # An unknown INS authority in the VIHF is a Fault of its own: keep the VIHF's valid.
    vihf_patient = PATIENT_ID if change == "unknown-oid" else patient_id
    vihf = make_vihf(keys.signer, VihfSpec(patient_id=vihf_patient))
    if change == "hash":
        publication.set_slot("hash", "0" * 40)
    elif change == "size":
        publication.set_slot("size", str(len(publication.kos) + 1))
    elif change == "entry-patient":
        for node in publication.entry().iterfind("rim:ExternalIdentifier", NS):
            if node.get("value", "").endswith("^NH"):
                node.set("value", "162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH")
    elif change == "missing-document":
        publication.request.remove(publication.document("DocumentKOS"))
    elif change == "kos-mime":
        publication.entry().set("mimeType", "text/xml")
    elif change == "bad-time":
        publication.set_slot("creationTime", "2023-11-03")
    elif change == "no-signature":
        object_list = publication.request.find(".//rim:RegistryObjectList", NS)
        assert object_list is not None
        for association in object_list.findall("rim:Association", NS):
            if association.get("associationType", "").endswith(":signs"):
                object_list.remove(association)
    elif change == "manifest":
        other = make_publication(keys.signer)  # its signature covers another KOS
        publication.set_slot("hash", hashlib.sha1(other.signature).hexdigest(), "Signature01")
        publication.set_slot("size", str(len(other.signature)), "Signature01")
        publication.document("Signature01").text = base64.b64encode(other.signature).decode()
    elif change == "not-member":
        object_list = publication.request.find(".//rim:RegistryObjectList", NS)
        assert object_list is not None
        for association in object_list.findall("rim:Association", NS):
            if association.get("targetObject") == "DocumentKOS":
                object_list.remove(association)
    answer = post(client, "repository", publication.envelope(vihf), mtom=True)
    assert answer.status == "Failure"
    assert code in answer.error_codes, answer.error_contexts
    assert view(client) == []
    assert view(client, "180000000000001") == []


def test_vihf_patient_must_be_the_submission_patient(client: httpx.Client, keys: Keys) -> None:
    publication = make_publication(keys.signer)
    vihf = make_vihf(
        keys.signer, VihfSpec(patient_id="162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH")
    )
    answer = post(client, "repository", publication.envelope(vihf))
    assert answer.error_codes == ["XDSPatientIdDoesNotMatch"]


# ---------------------------------------------------------------------------------------------
# Duplicates, replacement, deletion


def test_resubmission_and_uid_reuse(client: httpx.Client, keys: Keys) -> None:
    publication = make_publication(keys.signer)
    assert publish(client, keys, publication).status == "Success"
    again = publish(client, keys, publication)
    assert again.status == "Failure"
    assert "XDSDuplicateUniqueIdInRegistry" in again.error_codes
    assert set(again.error_codes) == {"XDSDuplicateUniqueIdInRegistry"}

    other_content = make_publication(keys.signer, kos_uid=publication.kos_uid)
    answer = publish(client, keys, other_content)
    assert answer.error_codes == ["XDSNonIdenticalHash"]
    assert len(view(client)) == 2  # the KOS and its signature, once


def _entry_uuid(client: httpx.Client, keys: Keys, unique_id: str) -> str:
    query = stored_query(
        GET_DOCUMENTS, {"$XDSDocumentEntryUniqueId": [f"('{unique_id}')"]}, "ObjectRef"
    )
    answer = post(client, "registry", envelope(ITI18, "registry", query, make_vihf(keys.signer)))
    assert answer.status == "Success"
    refs = answer.body.findall("rim:RegistryObjectList/rim:ObjectRef", NS)
    assert len(refs) == 1
    return refs[0].get("id", "")


def test_replacement_deprecates_the_old_entry(client: httpx.Client, keys: Keys) -> None:
    first = make_publication(keys.signer)
    assert publish(client, keys, first).status == "Success"
    old_uuid = _entry_uuid(client, keys, first.kos_uid)
    assert old_uuid == by_unique_id(client, first.kos_uid)["entry_uuid"]

    second = make_publication(keys.signer)
    second.add_rplc(old_uuid)
    assert publish(client, keys, second).status == "Success"
    assert by_unique_id(client, first.kos_uid)["status"] == "Deprecated"
    new = by_unique_id(client, second.kos_uid)
    assert new["status"] == "Approved"
    assert new["replaces"] == old_uuid

    approved = post(
        client, "registry", envelope(ITI18, "registry", find_documents(), make_vihf(keys.signer))
    )
    values = {
        i.get("value")
        for e in approved.body.iterfind("rim:RegistryObjectList/rim:ExtrinsicObject", NS)
        for i in e.iterfind("rim:ExternalIdentifier", NS)
    }
    assert second.kos_uid in values and first.kos_uid not in values

    # Replacing the deprecated entry again is refused; so is an unknown target.
    third = make_publication(keys.signer)
    third.add_rplc(old_uuid)
    assert "XDSRegistryMetadataError" in publish(client, keys, third).error_codes
    fourth = make_publication(keys.signer)
    fourth.add_rplc("urn:uuid:00000000-0000-0000-0000-000000000000")
    assert publish(client, keys, fourth).error_codes == ["UnresolvedReferenceException"]


def test_deletion_hides_the_entry(client: httpx.Client, keys: Keys) -> None:
    publication = make_publication(keys.signer)
    assert publish(client, keys, publication).status == "Success"
    entry_uuid = _entry_uuid(client, keys, publication.kos_uid)

    delete = envelope(ITI57, "registry", update_status_request(entry_uuid), make_vihf(keys.signer))
    answer = post(client, "registry", delete)
    assert answer.status == "Success", answer.error_contexts
    assert by_unique_id(client, publication.kos_uid)["status"] == "Deleted"

    found = post(
        client, "registry", envelope(ITI18, "registry", find_documents(), make_vihf(keys.signer))
    )
    ids = [
        e.get("id") for e in found.body.iterfind("rim:RegistryObjectList/rim:ExtrinsicObject", NS)
    ]
    assert entry_uuid not in ids
    deleted = post(
        client,
        "registry",
        envelope(ITI18, "registry", find_documents(statuses=(DELETED,)), make_vihf(keys.signer)),
    )
    objects = deleted.body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS)
    assert [(o.get("id"), o.get("status")) for o in objects] == [(entry_uuid, DELETED)]

    retrieve = envelope(
        ITI43, "repository", retrieve_request(publication.kos_uid), make_vihf(keys.signer)
    )
    answer = post(client, "repository", retrieve)
    assert answer.status == "Failure"
    assert answer.error_codes == ["XDSDocumentUniqueIdError"]

    again = post(
        client,
        "registry",
        envelope(ITI57, "registry", update_status_request(entry_uuid), make_vihf(keys.signer)),
    )
    assert again.error_codes == ["XDSMetadataUpdateError"]
    unknown = update_status_request("urn:uuid:00000000-0000-0000-0000-000000000000")
    answer = post(client, "registry", envelope(ITI57, "registry", unknown, make_vihf(keys.signer)))
    assert answer.error_codes == ["UnresolvedReferenceException"]


def test_deprecation_by_update(client: httpx.Client, keys: Keys) -> None:
    publication = make_publication(keys.signer)
    assert publish(client, keys, publication).status == "Success"
    entry_uuid = _entry_uuid(client, keys, publication.kos_uid)
    request = update_status_request(entry_uuid, new_status=DEPRECATED)
    assert (
        post(
            client, "registry", envelope(ITI57, "registry", request, make_vihf(keys.signer))
        ).status
        == "Success"
    )
    assert by_unique_id(client, publication.kos_uid)["status"] == "Deprecated"


# ---------------------------------------------------------------------------------------------
# Queries


def test_find_by_reference_id_and_associations(client: httpx.Client, keys: Keys) -> None:
    study = "1.2.250.1.213.4.5.2.1.103"
    publication = make_publication(keys.signer, study_uid=study)
    assert publish(client, keys, publication).status == "Success"
    assert publish(client, keys, make_publication(keys.signer)).status == "Success"
    reference = f"{study}^^^&1.2.3.4.5.6&ISO^urn:ihe:iti:xds:2016:studyInstanceUID"
    query = stored_query(
        FIND_BY_REFERENCE_ID,
        {
            "$XDSDocumentEntryPatientId": [f"'{PATIENT_ID}'"],
            "$XDSDocumentEntryStatus": [f"('{APPROVED}')"],
            "$XDSDocumentEntryReferenceIdList": [f"('{reference}')"],
            "$XDSDocumentEntryTypeCode": ["('IMG-KOS^^1.2.250.1.213.1.1.4.12')"],
        },
    )
    answer = post(client, "registry", envelope(ITI18, "registry", query, make_vihf(keys.signer)))
    objects = answer.body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS)
    assert len(objects) == 1
    kos = objects[0]
    assert kos.get("status") == APPROVED
    assert kos.get("mimeType") == "application/dicom"
    # Symbolic ids became entryUUIDs everywhere, and the repository is named.
    assert kos.get("id", "").startswith("urn:uuid:")
    assert {c.get("classifiedObject") for c in kos.iterfind("rim:Classification", NS)} == {
        kos.get("id")
    }
    assert kos.findtext(
        "rim:Slot[@name='repositoryUniqueId']/rim:ValueList/rim:Value", namespaces=NS
    )

    associations = stored_query(GET_ASSOCIATIONS, {"$uuid": [f"('{kos.get('id')}')"]})
    answer = post(
        client, "registry", envelope(ITI18, "registry", associations, make_vihf(keys.signer))
    )
    found = answer.body.findall("rim:RegistryObjectList/rim:Association", NS)
    assert [a.get("associationType", "").rsplit(":", 1)[-1] for a in found] == ["HasMember"]

    modality = find_documents(
        **{"$XDSDocumentEntryEventCodeList": ["('CT^^1.2.250.1.213.1.1.5.618')"]}
    )
    answer = post(client, "registry", envelope(ITI18, "registry", modality, make_vihf(keys.signer)))
    assert answer.body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS) == []

    missing = stored_query("urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d", {})
    answer = post(client, "registry", envelope(ITI18, "registry", missing, make_vihf(keys.signer)))
    assert answer.error_codes == ["XDSStoredQueryMissingParam"]
    unknown = stored_query("urn:uuid:00000000-0000-0000-0000-000000000000", {})
    answer = post(client, "registry", envelope(ITI18, "registry", unknown, make_vihf(keys.signer)))
    assert answer.error_codes == ["XDSUnknownStoredQuery"]


# ---------------------------------------------------------------------------------------------
# TD0.2 / TD0.3 and consultation rights


def _authorisation(answer: Answer) -> tuple[str, str]:
    code = answer.body.findtext(
        "hl7:controlActProcess/hl7:queryAck/hl7:queryResponseCode", namespaces=NS
    )
    node = answer.body.find("hl7:controlActProcess/hl7:queryAck/hl7:queryResponseCode", NS)
    assert node is not None
    value = answer.body.find(".//hl7:administrativeObservation/hl7:value", NS)
    return node.get("code", "") or (code or ""), "" if value is None else value.get("code", "")


def test_td02_td03_and_consultation(client: httpx.Client, keys: Keys) -> None:
    publication = make_publication(keys.signer)
    assert publish(client, keys, publication).status == "Success"

    check = envelope(TD02, "patients", td02_request(), consult_vihf(keys))
    assert _authorisation(post(client, "patients", check)) == ("OK", "NON_AUTORISE")
    denied = post(
        client, "registry", envelope(ITI18, "registry", find_documents(), consult_vihf(keys))
    )
    assert denied.error_codes == ["DMPAccesRefuse"]

    granted = post(
        client, "habilitations", envelope(TD03, "habilitations", td03_request(), consult_vihf(keys))
    )
    assert granted.body.findtext("hab:status", namespaces=NS) == "OK"
    check = envelope(TD02, "patients", td02_request(), consult_vihf(keys))
    assert _authorisation(post(client, "patients", check)) == ("OK", "VALIDE")

    found = post(
        client, "registry", envelope(ITI18, "registry", find_documents(), consult_vihf(keys))
    )
    # XDS.xml's signature entry is masked to professionals (MASQUE_PS): only the KOS is seen.
    objects = found.body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS)
    assert [o.get("mimeType") for o in objects] == ["application/dicom"]
    retrieved = post(
        client,
        "repository",
        envelope(ITI43, "repository", retrieve_request(publication.kos_uid), consult_vihf(keys)),
    )
    assert list(retrieved.attachments.values()) == [publication.kos]


def test_td02_without_dmp_and_blocked_professional(client: httpx.Client, keys: Keys) -> None:
    no_dmp = "180000000000001"
    vihf = consult_vihf(keys, patient_id=f"{no_dmp}^^^&1.2.250.1.213.1.4.10&ISO^NH")
    answer = post(client, "patients", envelope(TD02, "patients", td02_request(no_dmp), vihf))
    assert _authorisation(answer) == ("NF", "")

    blocked = "180000000000002"
    vihf = consult_vihf(keys, patient_id=f"{blocked}^^^&1.2.250.1.213.1.4.10&ISO^NH")
    answer = post(client, "patients", envelope(TD02, "patients", td02_request(blocked), vihf))
    assert _authorisation(answer) == ("OK", "INTERDIT")
    vihf = consult_vihf(keys, patient_id=f"{blocked}^^^&1.2.250.1.213.1.4.10&ISO^NH")
    refused = post(client, "habilitations", envelope(TD03, "habilitations", td03_request(), vihf))
    assert refused.body.findtext("hab:status", namespaces=NS) == "ERREUR"


def test_masked_documents_are_hidden_from_other_professionals(
    client: httpx.Client, keys: Keys
) -> None:
    publication = make_publication(keys.signer)
    entry = publication.entry()
    masked = etree.SubElement(
        entry,
        f"{{{RIM}}}Classification",
        classificationScheme="urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f",
        classifiedObject="DocumentKOS",
        id="claMasque",
        nodeRepresentation="MASQUE_PS",
    )
    slot = etree.SubElement(masked, f"{{{RIM}}}Slot", name="codingScheme")
    etree.SubElement(
        etree.SubElement(slot, f"{{{RIM}}}ValueList"), f"{{{RIM}}}Value"
    ).text = "1.2.250.1.213.1.1.4.13"
    # Classifications come before ExternalIdentifiers in ebRIM; order does not matter here.
    assert publish(client, keys, publication).status == "Success"
    post(
        client, "habilitations", envelope(TD03, "habilitations", td03_request(), consult_vihf(keys))
    )
    found = post(
        client, "registry", envelope(ITI18, "registry", find_documents(), consult_vihf(keys))
    )
    # Both entries are masked now (XDS.xml masks its signature entry): nothing is seen.
    assert found.status == "Success"
    assert found.body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS) == []
    # The author's structure still sees it.
    own = post(
        client, "registry", envelope(ITI18, "registry", find_documents(), make_vihf(keys.signer))
    )
    assert len(own.body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS)) == 2


# ---------------------------------------------------------------------------------------------
# Outage


def test_stop_and_restart_keep_the_registry(tmp_path: Path, keys: Keys) -> None:
    simulator = LocalDmp(settings_for(tmp_path, keys)).start()
    try:
        publication = make_publication(keys.signer)
        with tls_client(simulator.url, keys.ca_path, keys.auth) as http:
            assert publish(http, keys, publication).status == "Success"
        simulator.stop()
        with (
            tls_client(simulator.url, keys.ca_path, keys.auth, timeout=5) as http,
            pytest.raises(httpx.ConnectError),
        ):
            http.get("/sim/health")
        simulator.start()
        with tls_client(simulator.url, keys.ca_path, keys.auth) as http:
            assert by_unique_id(http, publication.kos_uid)["status"] == "Approved"
            assert http.get("/sim/stats").json()["ITI-41:Success"] == 1
            again = publish(http, keys, publication)
            assert "XDSDuplicateUniqueIdInRegistry" in again.error_codes
    finally:
        simulator.stop()


def test_kos_bytes_helper_is_a_kos_of_the_patient() -> None:
    dataset = pydicom.dcmread(io.BytesIO(kos_bytes("1.2.3.4", "1.2.3.5")))
    assert dataset.SOPClassUID == KOS_SOP_CLASS
    assert (dataset.SOPInstanceUID, dataset.StudyInstanceUID) == ("1.2.3.4", "1.2.3.5")
    assert dataset.PatientID == INS


def test_a_user_publishing_directly_needs_an_authorisation(
    client: httpx.Client, keys: Keys
) -> None:
    publication = make_publication(keys.signer)
    answer = post(client, "repository", publication.envelope(consult_vihf(keys)), mtom=True)
    assert answer.error_codes == ["DMPAccesRefuse"]
    td03 = envelope(TD03, "habilitations", td03_request(), consult_vihf(keys))
    post(client, "habilitations", td03)
    answer = post(client, "repository", publication.envelope(consult_vihf(keys)), mtom=True)
    assert answer.status == "Success", answer.error_contexts


def test_the_cli_hook_serves_until_stopped(tmp_path: Path, keys: Keys) -> None:
    cert = keys.ca_path
    port = free_port()
    code = (
        "from pathlib import Path; from drimbox.sim.dmp import run_dmp_simulator; "
        f"run_dmp_simulator('127.0.0.1', {port}, Path({str(tmp_path / 'cli.db')!r}), "
        f"[Path({str(cert)!r})], Path({str(keys.server.cert_path)!r}), "
        f"Path({str(keys.server.key_path)!r}), Path({str(cert)!r}))"
    )
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        with tls_client(f"https://127.0.0.1:{port}", cert, keys.auth, timeout=5) as http:
            while True:
                try:
                    if http.get("/sim/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, "the simulator exited"
                assert time.monotonic() < deadline, "the simulator did not start"
                time.sleep(0.1)
            publication = make_publication(keys.signer)
            assert publish(http, keys, publication).status == "Success"
    finally:
        process.terminate()
        process.wait(timeout=15)
    assert (tmp_path / "cli.db").exists()


# ---------------------------------------------------------------------------------------------
# What the DMP refuses (issue 18 §1): each probe that once got "Success"


def _fault(client: httpx.Client, vihf: etree._Element, keys: Keys) -> tuple[str, str]:
    answer = post(client, "repository", make_publication(keys.signer).envelope(vihf), mtom=True)
    assert answer.status_code == 500
    return answer.fault_code, answer.fault_subcode


def _other_vihf(keys: Keys, **kwargs: object) -> etree._Element:
    spec = VihfSpec(overrides={"Identifiant_Structure": OTHER_STRUCTURE}, **kwargs)  # type: ignore[arg-type]
    return make_vihf(keys.other.signing, spec)


@pytest.mark.parametrize("signer", ["tls-auth", "dmp-server"])
def test_a_vihf_signed_by_a_certificate_that_is_no_signing_certificate_is_refused(
    client: httpx.Client, keys: Keys, signer: str
) -> None:
    certificate = keys.auth if signer == "tls-auth" else keys.server
    vihf = make_vihf(certificate)
    assert _fault(client, vihf, keys) == ("DMPVihfCertificatUsage", "wsse:FailedAuthentication")
    assert view(client) == []


def test_a_signature_document_signed_by_the_tls_certificate_is_refused(
    client: httpx.Client, keys: Keys
) -> None:
    publication = make_publication(keys.signer, document_signer=keys.auth)
    answer = publish(client, keys, publication)
    assert answer.error_codes == ["DMPSignatureLotInvalide"]
    assert "nonRepudiation" in answer.error_contexts
    assert view(client) == []


def test_a_vihf_structure_other_than_the_tls_certificate_is_refused(
    client: httpx.Client, keys: Keys
) -> None:
    vihf = make_vihf(keys.signer, VihfSpec(overrides={"Identifiant_Structure": OTHER_STRUCTURE}))
    assert _fault(client, vihf, keys) == ("DMPStructureIncoherente", "wsse:InvalidSecurityToken")
    assert view(client) == []


def test_a_vihf_signed_by_another_structure_than_the_tls_client_is_refused(
    dmp: LocalDmp, keys: Keys
) -> None:
    # The other structure's TLS certificate, the VIHF naming it, but signed by ours.
    vihf = make_vihf(keys.signer, VihfSpec(overrides={"Identifiant_Structure": OTHER_STRUCTURE}))
    with tls_client(dmp.url, keys.ca_path, keys.other.auth) as other:
        assert _fault(other, vihf, keys) == (
            "DMPStructureIncoherente",
            "wsse:InvalidSecurityToken",
        )


def test_only_an_authentication_certificate_opens_the_tls_connection(
    dmp: LocalDmp, keys: Keys
) -> None:
    # A signing certificate (no digitalSignature) fails the handshake itself.
    with (
        tls_client(dmp.url, keys.ca_path, keys.signer) as wrong,
        pytest.raises(httpx.TransportError),
    ):
        wrong.get("/sim/health")
    # The DMP's own server certificate authenticates no structure.
    with tls_client(dmp.url, keys.ca_path, keys.server) as server:
        assert _fault(server, make_vihf(keys.signer), keys) == (
            "DMPStructureIncoherente",
            "wsse:InvalidSecurityToken",
        )


def test_an_unknown_vihf_version_is_refused(client: httpx.Client, keys: Keys) -> None:
    vihf = make_vihf(keys.signer, VihfSpec(overrides={"VIHF_Version": "99"}))
    assert _fault(client, vihf, keys) == (
        "DMPVihfVersionNonSupportee",
        "wsse:InvalidSecurityToken",
    )


@pytest.mark.parametrize(
    ("case", "phrase"),
    [
        ("random", "KOS"),  # unreadable, or read as no KOS
        ("other-patient", "PatientID « 180000000000002 »"),
        ("other-study", "StudyInstanceUID"),
        ("other-uid", "SOPInstanceUID"),
    ],
)
def test_a_kos_that_is_not_the_patients_kos_is_refused(
    client: httpx.Client, keys: Keys, case: str, phrase: str
) -> None:
    uid = new_uid()
    kos = {
        "random": b"\0" * 128 + b"DICM" + os.urandom(4000),
        "other-patient": kos_bytes(uid, ins="180000000000002"),
        "other-study": kos_bytes(uid),  # its own study, not the one in referenceIdList
        "other-uid": kos_bytes(new_uid()),
    }[case]
    publication = make_publication(keys.signer, kos=kos, kos_uid=uid)
    answer = publish(client, keys, publication)
    assert "XDSRepositoryMetadataError" in answer.error_codes
    assert phrase in answer.error_contexts
    assert view(client) == []


def test_only_the_owner_structure_deletes_or_replaces(
    dmp: LocalDmp, client: httpx.Client, keys: Keys
) -> None:
    publication = make_publication(keys.signer)
    assert publish(client, keys, publication).status == "Success"
    entry_uuid = _entry_uuid(client, keys, publication.kos_uid)
    with tls_client(dmp.url, keys.ca_path, keys.other.auth) as other:
        delete = envelope(ITI57, "registry", update_status_request(entry_uuid), _other_vihf(keys))
        answer = post(other, "registry", delete)
        assert answer.error_codes == ["DMPAccesRefuse"]
        assert OTHER_STRUCTURE in answer.error_contexts
        replacement = make_publication(keys.other.signing)
        replacement.add_rplc(entry_uuid)
        answer = post(other, "repository", replacement.envelope(_other_vihf(keys)), mtom=True)
        assert answer.error_codes == ["DMPAccesRefuse"]
    assert by_unique_id(client, publication.kos_uid)["status"] == "Approved"
    # The owner may.
    delete = envelope(ITI57, "registry", update_status_request(entry_uuid), make_vihf(keys.signer))
    assert post(client, "registry", delete).status == "Success"


def test_another_structure_without_authorisation_sees_nothing(
    dmp: LocalDmp, client: httpx.Client, keys: Keys
) -> None:
    publication = make_publication(keys.signer)
    assert publish(client, keys, publication).status == "Success"
    query = envelope(ITI18, "registry", find_documents(), make_vihf(keys.signer))
    own = post(client, "registry", query)
    assert len(own.body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS)) == 2
    with tls_client(dmp.url, keys.ca_path, keys.other.auth) as other:
        query = envelope(ITI18, "registry", find_documents(), _other_vihf(keys))
        found = post(other, "registry", query)
        assert found.status == "Success"
        assert found.body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS) == []
        retrieve = envelope(
            ITI43, "repository", retrieve_request(publication.kos_uid), _other_vihf(keys)
        )
        assert post(other, "repository", retrieve).error_codes == ["XDSDocumentUniqueIdError"]


# ---------------------------------------------------------------------------------------------
# Authentification_Mode against the request (issue 14 §2)


def _consult_fault(client: httpx.Client, vihf: etree._Element) -> tuple[str, str, str]:
    answer = post(client, "registry", envelope(ITI18, "registry", find_documents(), vihf))
    assert answer.status_code == 500
    return answer.fault_code, answer.fault_subcode, answer.fault_reason


def test_a_consultation_in_directe_without_a_card_is_refused(
    client: httpx.Client, keys: Keys
) -> None:
    """DIRECTE is a CPS card read by the workstation: over a structure's ORG AUTH connection,
    the DMP refuses it (a PSC-authenticated professional consults INDIRECTE_RENFORCEE)."""
    for service, action, body in (
        ("registry", ITI18, find_documents()),
        ("patients", TD02, td02_request()),
    ):
        vihf = consult_vihf(keys, mode="DIRECTE")
        answer = post(client, service, envelope(action, service, body, vihf))
        assert answer.status_code == 500, service
        assert (answer.fault_code, answer.fault_subcode) == (
            "DMPModeAuthentificationInvalide",
            "wsse:FailedAuthentication",
        ), service
        assert "INDIRECTE_RENFORCEE" in answer.fault_reason
    # The same consultation in the reinforced indirect mode is answered.
    check = envelope(TD02, "patients", td02_request(), consult_vihf(keys))
    assert _authorisation(post(client, "patients", check))[0] == "OK"


def test_directe_with_the_professionals_card_certificate_passes_the_mode_check(
    dmp: LocalDmp, keys: Keys, tmp_path: Path
) -> None:
    # A personal authentication certificate (CN = the professional's national id) from the CA.
    card = keys.pki.issue(USER_ID, usage="auth", organizational_unit=STRUCTURE).write(
        tmp_path, "cps"
    )
    with tls_client(dmp.url, keys.ca_path, card) as with_card:
        check = envelope(TD02, "patients", td02_request(), consult_vihf(keys, mode="DIRECTE"))
        assert _authorisation(post(with_card, "patients", check))[0] == "OK"


@pytest.mark.parametrize(
    ("mode", "decl", "words"),
    [
        ("INDIRECTE_RENFORCEE", "", "APP_BROWSER_AUTH"),
        ("INDIRECTE_RENFORCEE", "AUTRE_CHOSE", "APP_BROWSER_AUTH"),
        ("AIR", None, "inconnu"),
    ],
)
def test_a_reinforced_indirect_vihf_needs_its_authn_context_decl(
    client: httpx.Client, keys: Keys, mode: str, decl: str | None, words: str
) -> None:
    code, subcode, reason = _consult_fault(client, consult_vihf(keys, mode=mode, authn_decl=decl))
    assert (code, subcode) == ("DMPVihfAttributInvalide", "wsse:InvalidSecurityToken")
    assert words in reason
