"""ebRIM metadata: our ITI-41 request against the one the DMP test environment accepted."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import uuid
from datetime import UTC, datetime

import pytest
from lxml import etree

from drimbox.cda.model import Code, ImagingReport
from drimbox.dicom.kos import manifest_from_bytes
from drimbox.dmp import codes, metadata
from drimbox.dmp.metadata import (
    DocumentEntry,
    MetadataError,
    PnrRequest,
    PublicationIds,
    SourceSite,
    build_kos_submission,
)
from drimbox.dmp.xades import SignedDocument, XmlSigner, build_signature_document
from drimbox.samples import ANS_DIR
from support.factories import CR_C_INS, CR_C_INS_OID

RIM = codes.RIM_NS
SITE = SourceSite(
    uid_root="1.2.250.1.999.77.1",
    structure_id="101235555",
    structure_name="Centre de radiologie Ambroise",
)
NOW = datetime(2024, 3, 1, 9, 30, tzinfo=UTC)
# Flags raised in the comparison so that the conditional confidentiality codes XDS.xml shows
# (on its signature entry) are produced too.
FLAGS = {"MASQUE_PS": True, "INVISIBLE_PATIENT": True, "INVISIBLE_REP_LEGAUX": False}
# Classifications that exist only when the report asks for them (flags).
CONDITIONAL = {(codes.DE_CONFIDENTIALITY, codes.CONFIDENTIALITY_DMP_SYSTEM)}
# Anatomic regions come in either CI-SIS system, "as the report gives" (ARCHITECTURE §2.4).
REGION_SYSTEMS = {"1.2.250.1.213.2.5", codes.REGION_VALUE_SET}


def _sample() -> etree._Element:
    return etree.fromstring((ANS_DIR / "validators" / "XDS.xml").read_bytes())


def _pnr(
    report: ImagingReport,
    kos: bytes,
    signer: XmlSigner,
    *,
    flags: dict[str, bool] | None = None,
    replaces: str | None = None,
    replaces_signature: str | None = None,
    site: SourceSite = SITE,
) -> PnrRequest:
    uid = str(manifest_from_bytes(kos).SOPInstanceUID)
    ids = PublicationIds.derive(uid, SITE.uid_root)
    signature = build_signature_document([SignedDocument(uid, kos)], signer, signing_time=NOW)
    return build_kos_submission(
        report,
        kos_bytes=kos,
        ids=ids,
        signature_xml=signature,
        site=site,
        flags=FLAGS if flags is None else flags,
        submission_time=NOW,
        signing_time=NOW,
        replaces_entry_uuid=replaces,
        replaces_signature_entry_uuid=replaces_signature,
    )


def _objects(root: etree._Element) -> dict[str, etree._Element]:
    """The submission set and the two document entries, keyed by role."""
    found = {"submission set": root.find(f".//{{{RIM}}}RegistryPackage")}
    for extrinsic in root.iter(f"{{{RIM}}}ExtrinsicObject"):
        role = "KOS" if extrinsic.get("mimeType") == "application/dicom" else "signature"
        found[role] = extrinsic
    assert all(v is not None for v in found.values())
    return found  # type: ignore[return-value]


def _slot_names(obj: etree._Element) -> set[str]:
    return {s.get("name", "") for s in obj.iterfind(f"{{{RIM}}}Slot")}


def _classifications(obj: etree._Element) -> set[tuple[str, str]]:
    result = set()
    for c in obj.iterfind(f"{{{RIM}}}Classification"):
        scheme = c.get("classificationScheme") or c.get("classificationNode") or ""
        coding = c.findtext(
            f"{{{RIM}}}Slot[@name='codingScheme']/{{{RIM}}}ValueList/{{{RIM}}}Value"
        )
        if scheme == codes.DE_EVENT and coding in REGION_SYSTEMS:
            coding = "<region>"
        result.add((scheme, coding or ""))
    return result


def _author_slots(obj: etree._Element) -> set[str]:
    return {
        s.get("name", "")
        for c in obj.iterfind(f"{{{RIM}}}Classification")
        for s in c.iterfind(f"{{{RIM}}}Slot")
        if s.get("name") != "codingScheme"
    }


def _identifiers(obj: etree._Element) -> set[str]:
    return {e.get("identificationScheme", "") for e in obj.iterfind(f"{{{RIM}}}ExternalIdentifier")}


def test_every_slot_classification_and_identifier_of_xds_xml(
    report: ImagingReport, kos_bytes: bytes, signer: XmlSigner
) -> None:
    expected = _objects(_sample())
    ours = _objects(_pnr(report, kos_bytes, signer).body)
    problems: list[str] = []
    for role, sample in expected.items():
        mine = ours[role]
        if missing := _slot_names(sample) - _slot_names(mine):
            problems.append(f"{role}: slots missing {sorted(missing)}")
        if extra := _slot_names(mine) - _slot_names(sample):
            problems.append(f"{role}: slots XDS.xml does not have {sorted(extra)}")
        if missing := _classifications(sample) - _classifications(mine):
            problems.append(f"{role}: classifications missing {sorted(missing)}")
        if extra := _classifications(mine) - _classifications(sample) - CONDITIONAL:
            problems.append(f"{role}: unexpected classifications {sorted(extra)}")
        if missing := _author_slots(sample) - _author_slots(mine):
            problems.append(f"{role}: author slots missing {sorted(missing)}")
        if _identifiers(sample) != _identifiers(mine):
            problems.append(f"{role}: identifiers {_identifiers(sample) ^ _identifiers(mine)}")
        for tag in ("Name", "Description"):
            if (sample.find(f"{{{RIM}}}{tag}") is None) != (mine.find(f"{{{RIM}}}{tag}") is None):
                problems.append(f"{role}: {tag} presence differs")
    assert not problems, "\n".join(problems)


def test_associations_and_documents_as_xds_xml(
    report: ImagingReport, kos_bytes: bytes, signer: XmlSigner
) -> None:
    def shape(root: etree._Element) -> set[tuple[str, str, str, frozenset[str]]]:
        roles = {v.get("id"): k for k, v in _objects(root).items()}
        return {
            (
                a.get("associationType", ""),
                roles.get(a.get("sourceObject"), "?"),
                roles.get(a.get("targetObject"), "?"),
                frozenset(_slot_names(a)),
            )
            for a in root.iter(f"{{{RIM}}}Association")
        }

    sample = _sample()
    request = _pnr(report, kos_bytes, signer)
    assert shape(request.body) == shape(sample)
    ours = request.body.findall(f"{{{codes.XDSB_NS}}}Document")
    theirs = sample.findall(f".//{{{codes.XDSB_NS}}}Document")
    assert len(ours) == len(theirs) == 2
    for document in ours:
        include = document.find(f"{{{codes.XOP_NS}}}Include")
        assert include is not None and include.get("href", "").startswith("cid:")
    assert {d.entry_uuid for d in request.documents} == {d.get("id") for d in ours}


def test_values_come_from_our_data(
    report: ImagingReport, kos_bytes: bytes, signer: XmlSigner
) -> None:
    request = _pnr(report, kos_bytes, signer)
    objects = _objects(request.body)
    kos = objects["KOS"]

    def slot(obj: etree._Element, name: str) -> list[str]:
        return [
            v.text or ""
            for v in obj.iterfind(
                f"{{{RIM}}}Slot[@name='{name}']/{{{RIM}}}ValueList/{{{RIM}}}Value"
            )
        ]

    kos_uid = str(manifest_from_bytes(kos_bytes).SOPInstanceUID)
    ids = {
        e.get("identificationScheme"): e.get("value")
        for e in kos.iter(f"{{{RIM}}}ExternalIdentifier")
    }
    assert ids[codes.DE_UNIQUE_ID] == kos_uid
    assert ids[codes.DE_PATIENT_ID] == f"{CR_C_INS}^^^&{CR_C_INS_OID}&ISO^NH"
    assert slot(kos, "hash") == [hashlib.sha1(kos_bytes).hexdigest()]
    assert slot(kos, "size") == [str(len(kos_bytes))]
    assert slot(kos, "serviceStartTime") == ["20210108090000"]  # 10:00 Paris = 09:00 UTC
    assert slot(kos, "sourcePatientInfo") == [
        "PID-5|PAT-TROIS^DOMINIQUE^^^^^L",
        "PID-7|19790328",
        "PID-8|F",
    ]
    assert slot(kos, "legalAuthenticator") == [
        "801234560801^RADIOLOGUE^PAUL^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"
    ]
    assert slot(kos, codes.REFERENCE_ID_LIST) == [
        "ACN103^^^&1.2.250.1.925.994044785528.27&ISO^urn:ihe:iti:xds:2013:accession",
        "1.2.250.1.213.4.5.2.1.103^^^&1.2.840.10008&ISO^urn:ihe:iti:xds:2016:studyInstanceUID",
        "OPN103^^^&1.2.250.1.213.4.5.2.6&ISO^urn:ihe:iti:xds:2013:order",
    ]
    events = {
        (c.get("nodeRepresentation"), c.findtext(f".//{{{RIM}}}Value"))
        for c in kos.iterfind(f"{{{RIM}}}Classification[@classificationScheme='{codes.DE_EVENT}']")
    }
    assert events == {
        ("ACQH004", codes.CCAM_SYSTEM),
        ("CT", codes.MODALITY_VALUE_SET),
        ("774007", codes.REGION_VALUE_SET),
    }
    confidentiality = {
        c.get("nodeRepresentation")
        for c in kos.iterfind(
            f"{{{RIM}}}Classification[@classificationScheme='{codes.DE_CONFIDENTIALITY}']"
        )
    }
    assert confidentiality == {"N", "MASQUE_PS", "INVISIBLE_PATIENT"}
    package = objects["submission set"]
    ss_ids = {
        e.get("identificationScheme"): e.get("value")
        for e in package.iter(f"{{{RIM}}}ExternalIdentifier")
    }
    assert ss_ids[codes.SS_SOURCE_ID] == SITE.uid_root
    assert ss_ids[codes.SS_UNIQUE_ID] == request.ids.submission_set_unique_id


def test_region_in_a_cisis_system_is_kept(
    kos_bytes: bytes, signer: XmlSigner, report: ImagingReport
) -> None:
    region = Code("63337009", "1.2.250.1.213.2.5", "Abdomen + pelvis")
    request = _pnr(dataclasses.replace(report, regions=(region,)), kos_bytes, signer)
    kos = _objects(request.body)["KOS"]
    systems = {
        c.findtext(f".//{{{RIM}}}Value")
        for c in kos.iterfind(f"{{{RIM}}}Classification[@classificationScheme='{codes.DE_EVENT}']")
        if c.get("nodeRepresentation") == "63337009"
    }
    assert systems == {"1.2.250.1.213.2.5"}


def test_ids_are_deterministic_and_fit_in_64_characters() -> None:
    uid = "1.2.250.1.999.77.1." + "9" * 44
    first, second = (
        PublicationIds.derive(uid, "1.2.250.1.999.77.1"),
        PublicationIds.derive(uid, "1.2.250.1.999.77.1"),
    )
    assert first == second
    assert len(first.submission_set_unique_id) <= 64 and len(first.signature_unique_id) <= 64
    assert first.submission_set_unique_id.startswith("1.2.250.1.999.77.1.7.")
    assert first.kos_entry_uuid.startswith("urn:uuid:")
    assert PublicationIds.derive(uid + "1", "1.2.250.1.999.77.1") != first


def test_replacement_adds_rplc_to_the_old_entry(
    report: ImagingReport, kos_bytes: bytes, signer: XmlSigner
) -> None:
    old = "urn:uuid:0f6a2b9e-1111-4c1e-8c3b-5d2f3a4b5c6d"
    request = _pnr(report, kos_bytes, signer, replaces=old)
    rplc = [
        a
        for a in request.body.iter(f"{{{RIM}}}Association")
        if a.get("associationType") == codes.ASSOC_RPLC
    ]
    assert len(rplc) == 1
    assert rplc[0].get("sourceObject") == request.ids.kos_entry_uuid
    assert rplc[0].get("targetObject") == old


def test_flags_map_to_dmp_confidentiality_codes() -> None:
    normal = codes.CONFIDENTIALITY_NORMAL
    result = metadata.confidentiality_codes(
        normal,
        {
            "INVISIBLE_REP_LEGAUX": True,
            "CONNEXION_SECRETE": "Y",
            "MASQUE_PS": False,
            "DESTDMP": True,
        },
    )
    assert [c.code for c in result] == ["N", "INVISIBLE_REPRESENTANTS_LEGAUX", "CONNEXION_SECRETE"]


def test_report_without_ins_is_refused(
    report: ImagingReport, kos_bytes: bytes, signer: XmlSigner
) -> None:
    patient = dataclasses.replace(report.patient, ins="")
    with pytest.raises(MetadataError, match="INS"):
        _pnr(dataclasses.replace(report, patient=patient), kos_bytes, signer)


def test_find_documents_query_has_the_filters() -> None:
    query = metadata.find_documents_query(
        "123^^^&1.2.250.1.213.1.4.10&ISO^NH",
        class_codes=[codes.KOS_CLASS],
        type_codes=[codes.KOS_TYPE],
        modalities=["CT", "MR"],
        regions=[Code("774007", codes.REGION_VALUE_SET)],
        service_from=datetime(2021, 1, 1, tzinfo=UTC),
        service_to=datetime(2021, 12, 31, tzinfo=UTC),
    )
    adhoc = query.find(f"{{{RIM}}}AdhocQuery")
    assert adhoc is not None and adhoc.get("id") == codes.QUERY_FIND_DOCUMENTS
    slots = [
        (s.get("name"), s.findtext(f".//{{{RIM}}}Value")) for s in adhoc.iterfind(f"{{{RIM}}}Slot")
    ]
    assert ("$XDSDocumentEntryPatientId", "'123^^^&1.2.250.1.213.1.4.10&ISO^NH'") in slots
    assert ("$XDSDocumentEntryStatus", f"('{codes.STATUS_APPROVED}')") in slots
    assert ("$XDSDocumentEntryClassCode", "('31^^1.2.250.1.213.1.1.4.1')") in slots
    events = [v for n, v in slots if n == "$XDSDocumentEntryEventCodeList"]
    assert events == [
        f"('CT^^{codes.MODALITY_VALUE_SET}','MR^^{codes.MODALITY_VALUE_SET}')",
        f"('774007^^{codes.REGION_VALUE_SET}')",
    ]
    assert ("$XDSDocumentEntryServiceStartTimeFrom", "20210101000000") in slots


def _entry(request: PnrRequest) -> DocumentEntry:
    """Our own KOS entry read back as a registry would return it (status, repository)."""
    objects = request.body.find(f".//{{{RIM}}}RegistryObjectList")
    assert objects is not None
    for extrinsic in objects.iter(f"{{{RIM}}}ExtrinsicObject"):
        extrinsic.set("status", codes.STATUS_APPROVED)
        metadata._slot(extrinsic, "repositoryUniqueId", ["1.2.250.1.213.1.1.9.1"])
    entries = metadata.parse_document_entries(objects)
    return next(e for e in entries if e.is_kos)


def test_document_entries_parse_back(
    report: ImagingReport, kos_bytes: bytes, signer: XmlSigner
) -> None:
    request = _pnr(report, kos_bytes, signer)
    entry = _entry(request)
    assert entry.entry_uuid == request.ids.kos_entry_uuid
    assert entry.unique_id == request.ids.kos_unique_id
    assert entry.hash == hashlib.sha1(kos_bytes).hexdigest()
    assert entry.size == len(kos_bytes)
    assert entry.class_code == codes.KOS_CLASS
    assert entry.type_code is not None and entry.type_code.code == "IMG-KOS"
    assert entry.format_code is not None and entry.format_code.code == codes.KOS_FORMAT.code
    assert entry.patient_ins == (CR_C_INS, CR_C_INS_OID)
    assert entry.reference(codes.REF_ACCESSION) == "ACN103"
    assert entry.reference(codes.REF_STUDY_UID) == report.study_instance_uid
    assert entry.service_start == datetime(2021, 1, 8, 9, 0, tzinfo=UTC)
    assert entry.repository_unique_id == "1.2.250.1.213.1.1.9.1"
    assert entry.title == codes.KOS_TITLE
    assert entry.author_person.startswith("801234560801^RADIOLOGUE")
    assert {c.code for c in entry.confidentiality} == {"N", "MASQUE_PS", "INVISIBLE_PATIENT"}


def test_availability_update_shape(
    report: ImagingReport, kos_bytes: bytes, signer: XmlSigner
) -> None:
    entry = _entry(_pnr(report, kos_bytes, signer))
    body = metadata.build_availability_update(entry, site=SITE, submission_time=NOW)
    assert body.tag == f"{{{codes.LCM_NS}}}SubmitObjectsRequest"
    (association,) = body.iter(f"{{{RIM}}}Association")
    assert association.get("associationType") == codes.ASSOC_UPDATE_AVAILABILITY
    assert association.get("targetObject") == entry.entry_uuid
    package = body.find(f".//{{{RIM}}}RegistryPackage")
    assert package is not None and association.get("sourceObject") == package.get("id")
    slots = {
        s.get("name"): s.findtext(f".//{{{RIM}}}Value")
        for s in association.iterfind(f"{{{RIM}}}Slot")
    }
    assert slots == {"OriginalStatus": codes.STATUS_APPROVED, "NewStatus": codes.STATUS_DELETED}
    assert _identifiers(package) == {codes.SS_PATIENT_ID, codes.SS_SOURCE_ID, codes.SS_UNIQUE_ID}


# -- values and code systems, slot by slot against XDS.xml (issue 18 §5, issue 13 §2) --------


def _codes(obj: etree._Element, scheme: str) -> list[tuple[str, str]]:
    return [
        (
            c.get("nodeRepresentation", ""),
            c.findtext(f"{{{RIM}}}Slot[@name='codingScheme']/{{{RIM}}}ValueList/{{{RIM}}}Value")
            or "",
        )
        for c in obj.iterfind(f"{{{RIM}}}Classification[@classificationScheme='{scheme}']")
    ]


def _slot_values(obj: etree._Element, name: str) -> list[str]:
    return [
        v.text or ""
        for v in obj.iterfind(f".//{{{RIM}}}Slot[@name='{name}']/{{{RIM}}}ValueList/{{{RIM}}}Value")
    ]


def _cx_shape(value: str) -> tuple[int, str, str]:
    """A CX reduced to what is not a value of ours: its component count, its CX.4 form
    (`&<OID>&ISO` → "&OID&ISO") and its CX.5 type."""
    parts = value.split("^")
    authority = re.sub(r"^&[0-9.]+&ISO$", "&OID&ISO", parts[3]) if len(parts) > 3 else ""
    return len(parts), authority, parts[-1]


def test_values_and_code_systems_are_those_of_xds_xml(
    report: ImagingReport, kos_bytes: bytes, signer: XmlSigner
) -> None:
    sample, ours = _objects(_sample()), _objects(_pnr(report, kos_bytes, signer).body)
    # Codes that are not ours (document kind, format, signature purpose): same value and system.
    for role in ("KOS", "signature"):
        for scheme in (codes.DE_CLASS, codes.DE_TYPE, codes.DE_FORMAT):
            assert _codes(ours[role], scheme) == _codes(sample[role], scheme), (role, scheme)
    assert _codes(ours["signature"], codes.DE_EVENT) == _codes(sample["signature"], codes.DE_EVENT)
    # Codes that are ours: XDS.xml's code systems. The CCAM act first, then the modality (the
    # region, absent from XDS.xml, follows).
    ours_events = _codes(ours["KOS"], codes.DE_EVENT)
    sample_events = _codes(sample["KOS"], codes.DE_EVENT)
    assert [system for _, system in sample_events] == [codes.CCAM_SYSTEM, codes.MODALITY_VALUE_SET]
    assert ours_events[:2] == [("ACQH004", codes.CCAM_SYSTEM), ("CT", codes.MODALITY_VALUE_SET)]
    for scheme in (codes.DE_CONFIDENTIALITY, codes.DE_FACILITY_TYPE, codes.DE_PRACTICE_SETTING):
        sample_systems = {system for _, system in _codes(sample["KOS"], scheme)}
        assert {system for _, system in _codes(ours["KOS"], scheme)} <= sample_systems | {
            codes.CONFIDENTIALITY_DMP_SYSTEM
        }, scheme
    # contentTypeCode: TRE_R209 as XDS.xml; an outpatient (AMB) exam is no "04 Hospitalisation
    # de jour" but "07 Consultation Soins Externes".
    [(sample_code, sample_system)] = _codes(sample["submission set"], codes.SS_CONTENT_TYPE)
    assert (sample_code, sample_system) == ("04", codes.CONTENT_TYPE_SYSTEM)
    assert _codes(ours["submission set"], codes.SS_CONTENT_TYPE) == [
        ("07", codes.CONTENT_TYPE_SYSTEM)
    ]
    # referenceIdList: the same three references, each with its assigning authority (CX.4).
    for role in ("KOS", "signature"):
        mine = [_cx_shape(v) for v in _slot_values(ours[role], codes.REFERENCE_ID_LIST)]
        theirs = [_cx_shape(v) for v in _slot_values(sample[role], codes.REFERENCE_ID_LIST)]
        assert mine == theirs, role
    study = next(v for v in _slot_values(ours["KOS"], codes.REFERENCE_ID_LIST) if v.endswith("UID"))
    assert study == f"{report.study_instance_uid}^^^&1.2.840.10008&ISO^{codes.REF_STUDY_UID}"
    # Patient ids and the institution: XDS.xml's forms (authority OIDs, types).
    for role in ("KOS", "signature", "submission set"):
        mine = {e.get("value", "") for e in ours[role].iter(f"{{{RIM}}}ExternalIdentifier")}
        theirs = {e.get("value", "") for e in sample[role].iter(f"{{{RIM}}}ExternalIdentifier")}
        assert {_cx_shape(v) for v in mine if "^" in v} == {
            _cx_shape(v) for v in theirs if "^" in v
        }, role
        [institution] = _slot_values(ours[role], "authorInstitution")
        [sample_institution] = _slot_values(sample[role], "authorInstitution")
        assert institution.split("^")[1:] == [
            *sample_institution.split("^")[1:-1],
            SITE.structure_id,
        ]
    assert _slot_values(ours["KOS"], "authorSpecialty") == [
        "G15_10/SM44^Médecin - Radio-diagnostic (SM)^1.2.250.1.213.1.1.4.5"
    ]


def test_a_structure_default_content_type_when_the_encounter_says_nothing(
    report: ImagingReport, kos_bytes: bytes, signer: XmlSigner
) -> None:
    default = Code("SA08", "1.2.250.1.71.4.2.4", "Cabinet de groupe")
    site = dataclasses.replace(SITE, content_type=default)
    emergency = Code("EMER", "2.16.840.1.113883.5.4", "urgences")
    for encounter, expected in ((None, default), (emergency, default)):
        request = _pnr(
            dataclasses.replace(report, encounter_code=encounter), kos_bytes, signer, site=site
        )
        package = _objects(request.body)["submission set"]
        assert _codes(package, codes.SS_CONTENT_TYPE) == [(expected.code, expected.code_system)]


def test_the_signature_document_is_replaced_with_its_kos(
    report: ImagingReport, kos_bytes: bytes, signer: XmlSigner
) -> None:
    old_kos, old_signature = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    request = _pnr(report, kos_bytes, signer, replaces=old_kos, replaces_signature=old_signature)
    objects = _objects(request.body)
    rplc = {
        (a.get("sourceObject"), a.get("targetObject"))
        for a in request.body.iter(f"{{{RIM}}}Association")
        if a.get("associationType") == codes.ASSOC_RPLC
    }
    assert rplc == {
        (objects["KOS"].get("id"), old_kos),
        (objects["signature"].get("id"), old_signature),
    }
