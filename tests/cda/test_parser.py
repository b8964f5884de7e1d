"""CDA parser on the official ANS report (exam C) and on variants of it built in memory."""

from __future__ import annotations

import base64
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from drimbox.cda import CdaError, parse_report
from drimbox.cda.model import RPPS_OID, Code, Identifier
from drimbox.cda.parser import fix_mojibake, is_valid_dicom_uid, is_valid_ins, parse_hl7_ts
from drimbox.samples import ANS_DIR

FIXTURES = ANS_DIR
CR_C = FIXTURES / "cda" / "CR_C.xml"
CET = timezone(timedelta(hours=1))

STUDY_ID = b'<id root="1.2.250.1.213.4.5.2.1.103"/>'
DOC_ID = b'<id root="1.2.250.1.213.4.5.4.403"/>'
INS_ID = b'<id extension="279035121518989" root="1.2.250.1.213.1.4.10"/>'


def cda_c() -> bytes:
    return CR_C.read_bytes()


def cda_in_message(name: str) -> bytes:
    """The CDA carried base64 in OBX-5.5 of a sample HL7 message."""
    text = (FIXTURES / "hl7" / name).read_bytes().decode("utf-8")
    for segment in re.split(r"\r\n|\n|\r", text):
        fields = segment.split("|")
        if fields[0] == "OBX" and fields[2] == "ED":
            return base64.b64decode(fields[5].split("^")[4])
    raise AssertionError(f"no CDA in {name}")


def replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, old
    return data.replace(old, new)


def sub_once(pattern: bytes, new: bytes, data: bytes) -> bytes:
    out, n = re.subn(pattern, new, data, count=1, flags=re.S)
    assert n == 1, pattern
    return out


def with_body(data: bytes, body: bytes) -> bytes:
    """Swap the embedded-PDF body for another one (e.g. a structured body with entries)."""
    return sub_once(rb"<component>\s*<nonXMLBody>.*?</nonXMLBody>\s*</component>", body, data)


# ------------------------------------------------------------------------------------------
# The official report, field by field
# ------------------------------------------------------------------------------------------


def test_cr_c_document_header() -> None:
    r = parse_report(cda_c())
    assert r.document_id == Identifier("1.2.250.1.213.4.5.4.403")
    assert r.set_id == Identifier("D52DE737-001D-4031-B571-0A0ED7C42300")
    assert r.version_number == 1
    assert r.title == "CR d’imagerie médicale"
    assert r.effective_time == datetime(2021, 1, 8, 11, 17, tzinfo=CET)
    assert r.confidentiality == Code("N", "2.16.840.1.113883.5.25", "Normal")
    assert r.document_code == Code("18748-4", "2.16.840.1.113883.6.1", "CR d'imagerie médicale")
    assert r.replaced_document_id is None
    assert r.viewer_url is None


def test_cr_c_patient() -> None:
    p = parse_report(cda_c()).patient
    assert p.ins == "279035121518989"
    assert p.ins_oid == "1.2.250.1.213.1.4.10"
    assert p.ipp == Identifier("1.2.250.1.213.4.5.2.4", "IPP101")
    assert p.name.family == "PAT-TROIS"
    assert p.name.given == ("DOMINIQUE",)
    assert p.name.to_dicom() == "PAT-TROIS^DOMINIQUE"
    assert p.birth_date == date(1979, 3, 28)
    assert p.sex == "F"


def test_cr_c_study_order_and_codes() -> None:
    r = parse_report(cda_c())
    assert r.study_instance_uid == "1.2.250.1.213.4.5.2.1.103"
    assert r.accession_number == Identifier("1.2.250.1.925.994044785528.27", "ACN103")
    assert r.placer_order == Identifier("1.2.250.1.213.4.5.2.6", "OPN103")
    assert r.act_code == Code("24727-0", "2.16.840.1.113883.6.1", "CT Head W contrast IV")
    assert [c.code for c in r.act_translations] == ["ACQH004", "CT", "774007"]
    assert [(c.code, c.code_system) for c in r.modalities] == [("CT", "1.2.840.10008.2.16.4")]
    assert r.modalities[0].display_name == "Tomodensitométrie"
    assert [(c.code, c.code_system) for c in r.regions] == [("774007", "2.16.840.1.113883.6.96")]
    assert r.service_start == datetime(2021, 1, 8, 10, 25, tzinfo=CET)
    assert r.service_stop == datetime(2021, 1, 8, 11, 17, tzinfo=CET)
    assert r.service_start is not None and r.service_start.utcoffset() == timedelta(hours=1)


def test_cr_c_people_and_organisations() -> None:
    r = parse_report(cda_c())
    (author,) = r.authors
    assert author.id == Identifier(RPPS_OID, "801234560801")
    assert author.name is not None and author.name.family == "BIDEAULT"
    assert author.name.prefix == "M" and author.name.suffix == "DR"
    assert author.code == Code(
        "G15_10/SM44", "1.2.250.1.213.1.1.4.5", "Médecin - Radio-diagnostic (SM)"
    )
    assert author.organization is not None
    assert author.organization.id == Identifier("1.2.250.1.71.4.2.2", "101235555")
    assert author.organization.name == "Centre de radiologie Ambroise"
    assert author.time == datetime(2021, 1, 8, 11, 17, tzinfo=CET)
    assert r.legal_authenticator is not None
    assert r.legal_authenticator.id == Identifier(RPPS_OID, "801234560801")
    assert r.custodian is not None and r.custodian.id.extension == "101235555"
    assert r.healthcare_facility_type == Code("SA08", "1.2.250.1.71.4.2.4", "Cabinet de groupe")
    assert r.practice_setting == Code("AMBULATOIRE", "1.2.250.1.213.1.1.4.9", "Ambulatoire")


def test_report_is_frozen() -> None:
    r = parse_report(cda_c())
    with pytest.raises(AttributeError):
        r.version_number = 3  # type: ignore[misc]


def test_str_input_with_encoding_declaration() -> None:
    assert parse_report(cda_c().decode("utf-8")).document_id.root == "1.2.250.1.213.4.5.4.403"


def test_exam_g_report_and_its_update() -> None:
    g1 = parse_report(cda_in_message("CR_G1-ORU.hl7"))
    assert g1.document_id.root == "1.2.250.1.213.4.5.4.407"
    assert g1.study_instance_uid.endswith(".2.1.108")
    assert g1.accession_number is not None and g1.accession_number.extension == "ACN108"
    assert g1.placer_order is not None and g1.placer_order.extension == "OPN108"
    assert g1.version_number == 1
    maj = parse_report(cda_in_message("CR_G1_MAJ-MDM.hl7"))
    assert maj.document_id.root == "1.2.250.1.213.4.5.4.4072"
    assert maj.version_number == 2
    assert maj.set_id == g1.set_id
    assert maj.replaced_document_id == Identifier("1.2.250.1.213.4.5.4.407")


# ------------------------------------------------------------------------------------------
# Mandatory elements and validation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (DOC_ID, b"", "ClinicalDocument/id/@root (document id)"),
        (STUDY_ID, b"", "missing documentationOf/serviceEvent/id/@root (StudyInstanceUID)"),
        (INS_ID, b"", "patient INS"),
        (b'<setId root="D52DE737-001D-4031-B571-0A0ED7C42300"/>', b"", "setId"),
        (b'<versionNumber value="1"/>', b"", "versionNumber"),
        (b'<versionNumber value="1"/>', b'<versionNumber value="one"/>', "versionNumber"),
        (b"<recordTarget>", b"<recordTarget><!-- -->", None),  # control: still fine
    ],
)
def test_missing_mandatory_element(old: bytes, new: bytes, expected: str | None) -> None:
    data = replace_once(cda_c(), old, new)
    if expected is None:
        parse_report(data)
        return
    with pytest.raises(CdaError) as info:
        parse_report(data)
    assert expected in str(info.value)
    assert str(info.value).startswith("CDA")


def test_missing_patient_name() -> None:
    data = replace_once(cda_c(), b'<family qualifier="BR">PAT-TROIS</family>', b"")
    data = replace_once(data, b'<family qualifier="CL">PAT-TROIS</family>', b"")
    with pytest.raises(CdaError, match=r"patient/name/family \(patient name\)"):
        parse_report(data)


def test_error_names_the_element() -> None:
    with pytest.raises(CdaError) as info:
        parse_report(replace_once(cda_c(), STUDY_ID, b""))
    assert (
        str(info.value) == "CDA: missing documentationOf/serviceEvent/id/@root (StudyInstanceUID)"
    )
    assert info.value.element == "documentationOf/serviceEvent/id/@root"


@pytest.mark.parametrize(
    "uid",
    ["1.2.250.01.3", "1.2.250.1.abc", "1.2..3", "1.2.3.", "1." + "1234567890." * 6 + "1"],
)
def test_invalid_study_uid(uid: str) -> None:
    data = replace_once(cda_c(), STUDY_ID, f'<id root="{uid}"/>'.encode())
    with pytest.raises(CdaError, match="not a valid DICOM UID"):
        parse_report(data)


@pytest.mark.parametrize(
    "ins", ["279035121518988", "27903512151898", "2790351215189890", "27903512151898A"]
)
def test_invalid_ins(ins: str) -> None:
    data = replace_once(
        cda_c(), INS_ID, f'<id extension="{ins}" root="1.2.250.1.213.1.4.10"/>'.encode()
    )
    with pytest.raises(CdaError, match="not a valid INS"):
        parse_report(data)


def test_ins_outside_ins_oids_is_not_an_ins() -> None:
    data = replace_once(
        cda_c(), INS_ID, b'<id extension="279035121518989" root="1.2.250.1.213.1.4.2"/>'
    )
    with pytest.raises(CdaError, match="patient INS"):
        parse_report(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<ClinicalDocument xmlns='urn:hl7-org:v3'><id root='1'/>",
        b"not xml at all",
        b"\xff\xfe\x00garbage",
    ],
)
def test_not_well_formed(data: bytes) -> None:
    with pytest.raises(CdaError, match=r"^CDA is not well-formed XML: line \d+: "):
        parse_report(data)


def test_truncated_sample_is_not_well_formed() -> None:
    with pytest.raises(CdaError, match=r"^CDA is not well-formed XML: line \d+: "):
        parse_report(cda_c()[: len(cda_c()) // 2])


def test_wrong_root_element() -> None:
    with pytest.raises(CdaError, match="expected ClinicalDocument"):
        parse_report(b"<ClinicalDocument/>")  # no HL7 v3 namespace


def test_external_entities_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    xxe = (
        f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file://{secret}">]>'
        '<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&x;</title></ClinicalDocument>'
    ).encode()
    with pytest.raises(CdaError) as info:
        parse_report(xxe)
    assert "TOP-SECRET" not in str(info.value)


def test_billion_laughs_is_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&c;</title></ClinicalDocument>'
    )
    with pytest.raises(CdaError):
        parse_report(bomb)


# ------------------------------------------------------------------------------------------
# Tolerance
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["latin-1", "cp1252"])
def test_doubly_utf8_encoded_cda_is_repaired(codec: str) -> None:
    doubled = cda_c().decode("utf-8").encode("utf-8").decode(codec).encode("utf-8")
    assert "mÃ©dicale".encode() in doubled
    r = parse_report(doubled)
    assert r.title == "CR d’imagerie médicale"
    assert r.modalities[0].display_name == "Tomodensitométrie"
    assert r.act_translations[0].display_name.startswith("Scanographie du crâne")
    assert r.authors[0].code is not None
    assert r.authors[0].code.display_name == "Médecin - Radio-diagnostic (SM)"
    assert r == parse_report(cda_c())


def test_fix_mojibake_leaves_correct_text_alone() -> None:
    for text in ["déjà vu", "Crâne « tête » – cou’s", "PAT-TROIS", "Œdème", ""]:
        assert fix_mojibake(text) == text
    assert fix_mojibake("Ã\xa0 la tÃªte") == "à la tête"
    assert fix_mojibake("Ã\x83Â©") == "é"  # encoded three times


def test_names_without_qualifiers() -> None:
    data = sub_once(
        rb"<patient classCode=\"PSN\">\s*<name>.*?</name>",
        b'<patient classCode="PSN"><name><given>Marie</given><given>Anne</given>'
        b"<family>DURAND</family></name>",
        cda_c(),
    )
    name = parse_report(data).patient.name
    assert (name.family, name.given) == ("DURAND", ("Marie", "Anne"))
    assert name.to_dicom() == "DURAND^Marie^Anne"


def test_used_name_only_still_gives_a_name() -> None:
    data = replace_once(cda_c(), b'<family qualifier="BR">PAT-TROIS</family>', b"")
    assert parse_report(data).patient.name.family == "PAT-TROIS"


def test_optional_parts_may_be_absent() -> None:
    data = sub_once(rb"<inFulfillmentOf>.*?</inFulfillmentOf>", b"", cda_c())
    # the serviceEvent's effectiveTime is the one holding 10:25 (the encounter's has no zone)
    data = sub_once(
        rb"<effectiveTime>(?:(?!</effectiveTime>).)*?\+0100.*?</effectiveTime>", b"", data
    )
    data = replace_once(
        data,
        b'<confidentialityCode code="N" displayName="Normal" codeSystem="2.16.840.1.113883.5.25"/>',
        b"",
    )
    r = parse_report(data)
    assert r.accession_number is None and r.placer_order is None
    assert r.service_start is None and r.service_stop is None
    assert r.confidentiality.code == "N"


def test_date_only_and_naive_times() -> None:
    data = replace_once(cda_c(), b'<low value="20210108102500+0100"/>', b'<low value="20210108"/>')
    data = replace_once(
        data, b'<high value="20210108111700+0100" />', b'<high value="202101081117"/>'
    )
    r = parse_report(data)
    assert r.service_start == datetime(2021, 1, 8)
    assert r.service_stop == datetime(2021, 1, 8, 11, 17)
    assert r.service_stop is not None and r.service_stop.tzinfo is None


def test_bad_time_stamp_is_reported() -> None:
    data = replace_once(
        cda_c(), b'<low value="20210108102500+0100"/>', b'<low value="08/01/2021"/>'
    )
    with pytest.raises(CdaError, match="serviceEvent/effectiveTime/low"):
        parse_report(data)


def test_region_by_qualifier_and_several_modalities() -> None:
    extra = (
        b'<translation code="MR" codeSystem="1.2.840.10008.2.16.4"/>'
        b'<translation code="T-D1100" codeSystem="1.2.250.1.213.2.5.x">'
        b'<qualifier><name code="39111-0" codeSystem="2.16.840.1.113883.6.1"/></qualifier>'
        b"</translation>"
        b"</code>\n      <effectiveTime>"
    )
    data = sub_once(rb"</code>\s*<effectiveTime>", extra, cda_c())
    r = parse_report(data)
    assert [c.code for c in r.modalities] == ["CT", "MR"]
    assert [c.code for c in r.regions] == ["774007", "T-D1100"]


VIEWER = "https://viewer.example.fr/IHEInvokeImageDisplay?requestType=STUDY&studyUID=1.2.250.1.213.4.5.2.1.103&accessionNumber=ACN103&idCDA=1.2.250.1.213.4.5.4.403"


def test_viewer_link_from_sop_instance_entry() -> None:
    body = (
        b"<component><structuredBody><component><section><entry>"
        b'<observation classCode="DGIMG" moodCode="EVN">'
        b'<templateId root="1.2.840.10008.9.18"/><templateId root="1.2.250.1.213.1.1.3.157"/>'
        b'<id root="1.2.3"/>'
        b'<code code="1.2.840.10008.5.1.4.1.1.2" codeSystem="1.2.840.10008.2.6.1"/>'
        b'<text><reference value="' + VIEWER.replace("&", "&amp;").encode() + b'"/></text>'
        b"</observation></entry></section></component></structuredBody></component>"
    )
    assert parse_report(with_body(cda_c(), body)).viewer_url == VIEWER


def test_viewer_link_anywhere_in_text() -> None:
    body = (
        b"<component><structuredBody><component><section><text><paragraph>Images : "
        + VIEWER.replace("&", "&amp;").encode()
        + b" (lien)</paragraph></text></section></component></structuredBody></component>"
    )
    assert parse_report(with_body(cda_c(), body)).viewer_url == VIEWER


def test_big_embedded_pdf_parses_without_huge_tree() -> None:
    data = cda_c()
    assert len(data) > 200_000
    assert parse_report(data).document_id.root.endswith(".403")


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


def test_parse_hl7_ts() -> None:
    assert parse_hl7_ts("20210108102500+0100") == datetime(2021, 1, 8, 10, 25, tzinfo=CET)
    assert parse_hl7_ts("20210108102500.25-0230") == datetime(
        2021, 1, 8, 10, 25, 0, 250000, tzinfo=timezone(-timedelta(hours=2, minutes=30))
    )
    assert parse_hl7_ts("19790328") == datetime(1979, 3, 28)
    assert parse_hl7_ts("197903") is None
    assert parse_hl7_ts("") is None
    for bad in ["2021-01-08", "20211308", "20210108+01", "x"]:
        with pytest.raises(ValueError):
            parse_hl7_ts(bad)


def test_uid_and_ins_validators() -> None:
    assert is_valid_dicom_uid("1.2.250.1.213.4.5.2.1.103")
    assert is_valid_dicom_uid("1.2.0.3")
    assert not is_valid_dicom_uid("")
    assert not is_valid_dicom_uid("1." * 32 + "1")  # 65 chars
    assert is_valid_ins("279035121518989")
    assert is_valid_ins("274075176079430")
    assert not is_valid_ins("279035121518980")
    # Corsica: 2A counts as 19, 2B as 18 for the key.
    body_2a = "18001" + "19" + "123456"
    key = 97 - int(body_2a) % 97
    assert is_valid_ins(f"180012A123456{key:02d}")
