"""Parsing of the official ANS report messages, and refusals of broken variants built from them."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drimbox.hl7 import HL7Error, ReportMessage, build_ack, parse_report_message
from drimbox.samples import ANS_DIR
from support.samples import cda_of, segments, with_cda, with_obx5_data
from support.samples import hl7_text as sample

FIXTURES = ANS_DIR
HL7_DIR = FIXTURES / "hl7"

INS = "279035121518989"
INS_OID = "1.2.250.1.213.1.4.10"
INS_CDA = b'<id extension="279035121518989" root="1.2.250.1.213.1.4.10"/>'
INS_PID = "279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS^^~"
STUDY_CDA = b'<id root="1.2.250.1.213.4.5.2.1.103"/>'


def edit_cda(text: str, old: bytes, new: bytes) -> str:
    cda = cda_of(text)
    assert cda.count(old) == 1, old
    return with_cda(text, cda.replace(old, new))


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def ins_with_key(body13: str) -> str:
    return f"{body13}{97 - int(body13) % 97:02d}"


def refusal(text: str) -> HL7Error:
    with pytest.raises(HL7Error) as info:
        parse_report_message(text)
    return info.value


# ------------------------------------------------------------------------------------------
# The official messages
# ------------------------------------------------------------------------------------------


def test_cr_c_oru_publish() -> None:
    m = parse_report_message(sample("CR_C-ORU.hl7"))
    assert isinstance(m, ReportMessage)
    assert (m.message_type, m.trigger, m.version, m.kind) == ("ORU^R01", "R01", "2.5", "publish")
    assert m.control_id == "{{idMessage}}"
    assert m.sending_application == "{{applicationSupplier}}"
    assert m.sending_facility == "{{facilitySupplier}}"
    assert m.receiving_application == "{{applicationReceiver}}"
    assert m.receiving_facility == "{{facilityReceiver}}"
    assert (m.patient_ins, m.patient_ins_oid) == (INS, INS_OID)
    assert (m.patient_ipp, m.patient_ipp_issuer) == ("IPP101", "1.2.250.1.213.4.5.2.4")
    assert (m.order_control, m.result_status) == ("NW", "F")
    assert m.document_id == "1.2.250.1.213.4.5.4.403"
    assert m.replaced_document_id is None
    assert m.accession_number == "ACN103"
    assert m.study_instance_uid == "1.2.250.1.213.4.5.2.1.103"
    assert m.cda_xml == (FIXTURES / "cda" / "CR_C.xml").read_bytes()
    assert m.flags["INVISIBLE_PATIENT"] is True
    assert m.flags["MASQUE_PS"] is False
    assert m.flags["DESTDMP"] is True
    assert set(m.flags) == {
        "MASQUE_PS",
        "INVISIBLE_PATIENT",
        "INVISIBLE_REP_LEGAUX",
        "CONNEXION_SECRETE",
        "MODIF_CONF_CODE",
        "DESTDMP",
        "DESTMSSANTEPS",
        "DESTMSSANTEPAT",
        "ACK_RECEPTION",
        "ACK_LECTURE_MSS",
    }
    r = m.report
    assert r is not None
    assert r.document_id.root == "1.2.250.1.213.4.5.4.403" and r.version_number == 1
    assert r.accession_number is not None
    assert (r.accession_number.extension, r.accession_number.root) == (
        "ACN103",
        "1.2.250.1.925.994044785528.27",
    )
    assert r.placer_order is not None
    assert (r.placer_order.extension, r.placer_order.root) == ("OPN103", "1.2.250.1.213.4.5.2.6")
    assert [c.code for c in r.modalities] == ["CT"]
    assert [c.code for c in r.regions] == ["774007"]
    assert r.authors[0].id.extension == "801234560801"
    assert r.authors[0].organization is not None
    assert r.authors[0].organization.id.extension == "101235555"
    assert str(r.patient.birth_date) == "1979-03-28" and r.patient.sex == "F"
    assert r.patient.ipp is not None and r.patient.ipp.root == "1.2.250.1.213.4.5.2.4"


def test_cr_g1_oru_publish() -> None:
    m = parse_report_message(sample("CR_G1-ORU.hl7"))
    assert m.kind == "publish"
    assert m.document_id == "1.2.250.1.213.4.5.4.407"
    assert m.study_instance_uid is not None and m.study_instance_uid.endswith(".2.1.108")
    assert m.accession_number == "ACN108"
    assert m.report is not None and m.report.placer_order is not None
    assert m.report.placer_order.extension == "OPN108"


def test_cr_g1_maj_mdm_update() -> None:
    m = parse_report_message(sample("CR_G1_MAJ-MDM.hl7"))
    assert (m.message_type, m.version, m.kind) == ("MDM^T10", "2.6", "update")
    assert (m.order_control, m.result_status) == ("RO", "C")
    assert m.document_id == "1.2.250.1.213.4.5.4.4072"  # TXA-12
    assert m.replaced_document_id == "1.2.250.1.213.4.5.4.407"  # TXA-13
    assert m.report is not None
    assert m.report.version_number == 2
    assert m.report.document_id.root == "1.2.250.1.213.4.5.4.4072"
    assert m.report.replaced_document_id is not None
    assert m.report.replaced_document_id.root == "1.2.250.1.213.4.5.4.407"
    assert m.flags["MODIF_CONF_CODE"] is True and m.flags["INVISIBLE_PATIENT"] is False


@pytest.mark.parametrize(
    ("name", "message_type"),
    [("CR_C_Depublication-ORU.hl7", "ORU^R01"), ("CR_C_Depublication-MDM.hl7", "MDM^T04")],
)
def test_depublication_withdraw(name: str, message_type: str) -> None:
    m = parse_report_message(sample(name))
    assert (m.message_type, m.kind) == (message_type, "withdraw")
    assert (m.order_control, m.result_status) == ("CA", "D")
    assert m.document_id == "1.2.250.1.213.4.5.4.403"
    assert m.patient_ins == INS


def test_omi_exam_withdrawal() -> None:
    m = parse_report_message(sample("CR_W_Suppression-OMI.hl7"))
    assert (m.message_type, m.version, m.kind) == ("OMI^O23", "2.5.1", "withdraw_exam")
    assert m.control_id == "001"
    assert m.accession_number == "ACN124"
    assert m.study_instance_uid == "1.2.250.1.213.4.5.2.1.124"
    assert (m.patient_ins, m.patient_ipp) == (INS, "IPP101")
    assert m.cda_xml is None and m.report is None


def test_omi_new_order_is_not_handled() -> None:
    err = refusal((FIXTURES / "informatif" / "OMI_O23-ImagingOrder.hl7").read_bytes().decode())
    assert err.code == "AR" and err.segment == "ORC"


@pytest.mark.parametrize("separator", ["\n", "\r\n", "\r"])
def test_segment_separators(separator: str) -> None:
    text = sample("CR_C-ORU.hl7").replace("\r", separator)
    m = parse_report_message(text)
    assert m.patient_ins == INS and m.report is not None


@pytest.mark.parametrize("separator", ["\n", "\r\n"])
def test_wrapped_base64_is_joined_back(separator: str) -> None:
    text = sample("CR_C-ORU.hl7")
    data = base64.b64encode(cda_of(text)).decode("ascii")
    wrapped = separator.join(data[i : i + 76] for i in range(0, len(data), 76))
    m = parse_report_message(with_obx5_data(text, wrapped).replace("\r", separator))
    assert m.cda_xml == cda_of(text)
    assert m.flags["INVISIBLE_PATIENT"] is True


def test_escaped_values_are_unescaped() -> None:
    text = replace_once(sample("CR_C-ORU.hl7"), "IPP101^^^", "IPP\\T\\1\\X41\\^^^")
    text = replace_once(text, "AUT-AFFECTATION&1.2.250.1.213.4.5.2.4", "AUT&9.9.9")
    m = parse_report_message(text)
    assert m.patient_ipp == "IPP&1A"
    assert m.patient_ipp_issuer == "9.9.9"


def test_mllp_bytes_around_message_are_ignored() -> None:
    m = parse_report_message("\x0b" + sample("CR_C-ORU.hl7") + "\x1c\r")
    assert m.kind == "publish"


# ------------------------------------------------------------------------------------------
# Kind rules
# ------------------------------------------------------------------------------------------


def test_mdm_t02_publishes() -> None:
    text = replace_once(sample("CR_G1_MAJ-MDM.hl7"), "MDM^T10^MDM_T02", "MDM^T02^MDM_T02")
    text = replace_once(text, "ORC|RO|", "ORC|NW|")
    text = replace_once(text, "|1.2.250.1.213.4.5.4.407||", "|||")  # no TXA-13
    text = text.replace("||||||C|", "||||||F|")
    assert parse_report_message(text).kind == "publish"


def test_oru_with_corrected_status_updates() -> None:
    text = sample("CR_G1-ORU.hl7").replace("||||||F|\rPRT", "||||||C|\rPRT")
    assert parse_report_message(text).kind == "update"


def test_oru_withdrawal_by_status_only() -> None:
    text = sample("CR_C-ORU.hl7").replace("||||||F|\rPRT", "||||||D|\rPRT")
    assert parse_report_message(text).kind == "withdraw"


def test_mdm_withdrawal_needs_no_cda_when_txa12_names_the_document() -> None:
    m = parse_report_message(with_obx5_data(sample("CR_C_Depublication-MDM.hl7"), ""))
    assert m.kind == "withdraw" and m.cda_xml is None
    assert m.document_id == "1.2.250.1.213.4.5.4.403"
    assert m.patient_ins == INS


# ------------------------------------------------------------------------------------------
# Refusals
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "hello world", "PID|||123\rOBX|1|ED", "MSH", "MSHX", "MSH|abc|x|y", "MSH|^~\\&"],
)
def test_no_msh_or_not_hl7_is_ar(text: str) -> None:
    err = refusal(text)
    assert err.code == "AR"
    assert err.hl7_error_code in ("100", "102")


def test_pid_first_is_ar_100() -> None:
    text = sample("CR_C-ORU.hl7")
    body = text.split("\r", 1)[1]
    err = refusal(body)
    assert (err.code, err.hl7_error_code, err.segment) == ("AR", "100", "MSH")


def test_unsupported_message_type_is_ar_200() -> None:
    err = refusal(replace_once(sample("CR_C-ORU.hl7"), "ORU^R01^ORU_R01", "ADT^A01^ADT_A01"))
    assert (err.code, err.hl7_error_code, err.segment, err.field) == ("AR", "200", "MSH", 9)
    assert "ADT^A01" in err.message


def test_unsupported_event_is_ar() -> None:
    err = refusal(replace_once(sample("CR_C-ORU.hl7"), "ORU^R01^ORU_R01", "ORU^R30^ORU_R30"))
    assert (err.code, err.hl7_error_code) == ("AR", "201")


@pytest.mark.parametrize("version", ["2.1", "3.0", "x"])
def test_unsupported_version_is_ar_203(version: str) -> None:
    err = refusal(replace_once(sample("CR_C-ORU.hl7"), "|P|2.5|", f"|P|{version}|"))
    assert (err.code, err.hl7_error_code, err.field) == ("AR", "203", 12)


def test_obx5_not_base64_is_ae() -> None:
    err = refusal(with_obx5_data(sample("CR_C-ORU.hl7"), "this is *not* base64!"))
    assert (err.code, err.hl7_error_code, err.segment, err.field) == ("AE", "102", "OBX", 5)
    assert err.user_message == "Message refusé : OBX-5 n'est pas du base64 valide"


def test_cda_not_well_formed_is_ae() -> None:
    text = sample("CR_C-ORU.hl7")
    err = refusal(with_cda(text, cda_of(text)[:5000]))
    assert (err.code, err.hl7_error_code, err.segment, err.field) == ("AE", "102", "OBX", 5)
    assert "CDA is not well-formed XML: line" in err.message


def test_missing_cda_in_publish_is_ae() -> None:
    err = refusal(with_obx5_data(sample("CR_C-ORU.hl7"), ""))
    assert (err.code, err.hl7_error_code, err.segment, err.field) == ("AE", "101", "OBX", 5)


def test_no_ins_anywhere_is_ae() -> None:
    text = replace_once(sample("CR_C-ORU.hl7"), INS_PID, "")
    text = edit_cda(text, INS_CDA, b"")
    err = refusal(text)
    assert (err.code, err.hl7_error_code, err.segment, err.field) == ("AE", "101", "PID", 3)
    assert "no INS in PID-3 nor in the CDA" in err.message


def test_ins_only_in_cda_is_enough() -> None:
    m = parse_report_message(replace_once(sample("CR_C-ORU.hl7"), INS_PID, ""))
    assert (m.patient_ins, m.patient_ins_oid) == (INS, INS_OID)


def test_cda_without_ins_is_ae_even_with_pid_ins() -> None:
    err = refusal(edit_cda(sample("CR_C-ORU.hl7"), INS_CDA, b""))
    assert (err.code, err.segment, err.field) == ("AE", "OBX", 5)
    assert "patient INS" in err.message


def test_ins_mismatch_between_pid_and_cda_is_ae() -> None:
    other = ins_with_key("1840775123456")
    err = refusal(replace_once(sample("CR_C-ORU.hl7"), f"{INS}^^^", f"{other}^^^"))
    assert (err.code, err.segment, err.field) == ("AE", "PID", 3)
    assert other in err.message and INS in err.message
    assert other in err.user_message and INS in err.user_message


def test_invalid_ins_in_pid_is_ae() -> None:
    err = refusal(replace_once(sample("CR_C-ORU.hl7"), f"{INS}^^^", "279035121518988^^^"))
    assert (err.code, err.hl7_error_code, err.segment) == ("AE", "102", "PID")


def test_missing_study_uid_in_cda_is_ae() -> None:
    err = refusal(edit_cda(sample("CR_C-ORU.hl7"), STUDY_CDA, b""))
    assert (err.code, err.hl7_error_code, err.segment, err.field) == ("AE", "101", "OBX", 5)
    assert "documentationOf/serviceEvent/id/@root" in err.message
    assert "StudyInstanceUID" in err.message
    assert "documentationOf/serviceEvent/id/@root" in err.user_message


def test_invalid_study_uid_in_cda_is_ae() -> None:
    err = refusal(edit_cda(sample("CR_C-ORU.hl7"), STUDY_CDA, b'<id root="1.2.03.4"/>'))
    assert (err.code, err.hl7_error_code) == ("AE", "102")


def test_txa12_not_matching_the_cda_is_ae() -> None:
    text = replace_once(
        sample("CR_G1_MAJ-MDM.hl7"), "|1.2.250.1.213.4.5.4.4072|", "|1.2.250.1.213.4.5.4.999|"
    )
    err = refusal(text)
    assert (err.code, err.segment, err.field) == ("AE", "TXA", 12)


def test_omi_without_ipc_is_ae() -> None:
    text = "\r".join(s for s in segments(sample("CR_W_Suppression-OMI.hl7")) if s[:3] != "IPC")
    err = refusal(text)
    assert (err.code, err.segment) == ("AE", "IPC")


def test_missing_pid_is_ae() -> None:
    text = "\r".join(s for s in segments(sample("CR_C-ORU.hl7")) if s[:3] != "PID")
    err = refusal(text)
    assert (err.code, err.hl7_error_code, err.segment) == ("AE", "100", "PID")


def test_doubly_encoded_cda_in_message() -> None:
    text = sample("CR_C-ORU.hl7")
    doubled = cda_of(text).decode("utf-8").encode("utf-8").decode("latin-1").encode("utf-8")
    m = parse_report_message(with_cda(text, doubled))
    assert m.report is not None and m.report.title == "CR d’imagerie médicale"


# ------------------------------------------------------------------------------------------
# Robustness: only HL7Error, and never the internal-error fallback
# ------------------------------------------------------------------------------------------

BASE = sample("CR_C-ORU.hl7")
# A light message (small CDA) so that mutations land in the HL7 structure, not in base64.
LIGHT = with_cda(
    BASE, re.sub(rb'(representation="B64">)[^<]*(</text>)', rb"\1JVBERi0=\2", cda_of(BASE))
)


def check_only_hl7_error(text: str) -> None:
    try:
        m = parse_report_message(text)
    except HL7Error as err:
        assert "internal error" not in err.message, err.message
        assert err.code in ("AE", "AR")
        ack = build_ack(text, err.code, error=err)
        assert ack.startswith("MSH|^~\\&|") and "\rMSA|" + err.code in ack
    else:
        assert m.kind in ("publish", "update", "withdraw", "withdraw_exam")


HL7_ALPHABET = st.sampled_from(
    [
        *"|^~\\&\r\n ABCDEFHIMNOPRSTUVXY0123456789.{}é",
        *["MSH", "PID", "OBX", "ORC", "TXA", "IPC", "ED", "CA", "RO", "^^^", "&", "~", "\\F\\"],
    ]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_hl7_error(text: str) -> None:
    check_only_hl7_error(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(HL7_ALPHABET, max_size=200).map("".join))
def test_structured_garbage_after_msh_only_raises_hl7_error(tail: str) -> None:
    check_only_hl7_error("MSH|^~\\&|A|B|C|D|20240101||ORU^R01|1|P|2.5\r" + tail)


@st.composite
def mutations(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from([LIGHT, sample("CR_W_Suppression-OMI.hl7")]))
    # Mutate the segments around the payload (where the structure is), not the base64 itself.
    head = draw(st.booleans())
    low, high = (0, min(len(base), 2500)) if head else (max(0, len(base) - 2000), len(base))
    start = draw(st.integers(low, high))
    end = draw(st.integers(start, min(high, start + 40)))
    insert = draw(st.lists(HL7_ALPHABET, max_size=8).map("".join))
    return base[:start] + insert + base[end:]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_mutated_samples_only_raise_hl7_error(text: str) -> None:
    check_only_hl7_error(text)


def test_light_sample_is_valid() -> None:
    assert len(LIGHT) < 40_000
    assert parse_report_message(LIGHT).kind == "publish"
