"""ACK building (MSH/MSA/ERR) and MLLP framing."""

from __future__ import annotations

import base64
import re

import pytest

import hl7
from drimbox.hl7 import (
    MAX_MESSAGE_BYTES,
    HL7Error,
    build_ack,
    escape_text,
    frame,
    parse_report_message,
    unframe,
)
from drimbox.samples import ANS_DIR

FIXTURES = ANS_DIR


def sample(name: str) -> str:
    return (FIXTURES / "hl7" / name).read_bytes().decode("utf-8")


def parse_ack(ack: str) -> hl7.Message:
    assert ack.endswith("\r") and "\n" not in ack
    return hl7.parse(ack)


def field(msg: hl7.Message, segment: str, n: int, c: int = 1, s: int = 1) -> str:
    seg = msg.segment(segment)
    return str(seg.extract_field(field_num=n, component_num=c, subcomponent_num=s))


def test_aa_for_a_sample() -> None:
    raw = sample("CR_C-ORU.hl7")
    ack = parse_ack(build_ack(raw, "AA"))
    assert [str(s[0]) for s in ack] == ["MSH", "MSA"]
    assert field(ack, "MSH", 3) == "{{applicationReceiver}}"
    assert field(ack, "MSH", 4) == "{{facilityReceiver}}"
    assert field(ack, "MSH", 5) == "{{applicationSupplier}}"
    assert field(ack, "MSH", 6) == "{{facilitySupplier}}"
    assert re.fullmatch(r"\d{14}[+-]\d{4}", field(ack, "MSH", 7))
    assert str(ack.segment("MSH")[9]) == "ACK^R01^ACK"
    assert field(ack, "MSH", 10) not in ("", "{{idMessage}}")
    assert field(ack, "MSH", 11) == "P"
    assert field(ack, "MSH", 12) == "2.5"
    assert field(ack, "MSH", 17) == "FRA"
    assert field(ack, "MSH", 18) == "UNICODE UTF-8"
    assert field(ack, "MSA", 1) == "AA"
    assert field(ack, "MSA", 2) == "{{idMessage}}"


def test_ack_from_parsed_message_keeps_version_and_trigger() -> None:
    m = parse_report_message(sample("CR_G1_MAJ-MDM.hl7"))
    ack = parse_ack(build_ack(m, "AA", "reçu"))
    assert str(ack.segment("MSH")[9]) == "ACK^T10^ACK"
    assert field(ack, "MSH", 12) == "2.6"
    assert field(ack, "MSA", 3) == "reçu"


def test_control_ids_are_new_and_unique() -> None:
    raw = sample("CR_W_Suppression-OMI.hl7")
    ids = {field(parse_ack(build_ack(raw, "AA")), "MSH", 10) for _ in range(50)}
    assert len(ids) == 50
    assert all(0 < len(i) <= 20 for i in ids)


def test_ae_carries_err_segment() -> None:
    raw = sample("CR_C-ORU.hl7")
    fields = raw.split("\r")
    bad = "\r".join(
        re.sub(r"\^Base64\^[^|]*", "^Base64^not base64!", s) if s.startswith("OBX|1|") else s
        for s in fields
    )
    with pytest.raises(HL7Error) as info:
        parse_report_message(bad)
    err = info.value
    ack = parse_ack(build_ack(bad, err.code, error=err))
    assert [str(s[0]) for s in ack] == ["MSH", "MSA", "ERR"]
    assert field(ack, "MSA", 1) == "AE"
    assert field(ack, "MSA", 2) == "{{idMessage}}"
    assert field(ack, "MSA", 3) == "Message refusé : OBX-5 n'est pas du base64 valide"
    assert str(ack.segment("ERR")[2]) == "OBX^1^5"
    assert str(ack.segment("ERR")[3]) == "102^Data type error^HL70357"
    assert field(ack, "ERR", 4) == "E"
    assert "base64" in field(ack, "ERR", 7)
    assert field(ack, "ERR", 8) == "Message refusé : OBX-5 n'est pas du base64 valide"


def test_ar_for_unsupported_type() -> None:
    raw = sample("CR_C-ORU.hl7").replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01")
    with pytest.raises(HL7Error) as info:
        parse_report_message(raw)
    ack = parse_ack(build_ack(raw, info.value.code, error=info.value))
    assert str(ack.segment("MSH")[9]) == "ACK^A01^ACK"
    assert field(ack, "MSA", 1) == "AR"
    assert str(ack.segment("ERR")[2]) == "MSH^1^9"
    assert field(ack, "ERR", 3) == "200"
    assert field(ack, "ERR", 3, 3) == "HL70357"


def test_ins_mismatch_ack_names_both_ins() -> None:
    other = "1840775123456"
    other += f"{97 - int(other) % 97:02d}"
    raw = sample("CR_C-ORU.hl7").replace("279035121518989^^^", f"{other}^^^", 1)
    with pytest.raises(HL7Error) as info:
        parse_report_message(raw)
    ack = parse_ack(build_ack(raw, "AE", error=info.value))
    user = field(ack, "ERR", 8)
    assert other in user and "279035121518989" in user
    assert str(ack.segment("ERR")[2]) == "PID^1^3"


@pytest.mark.parametrize("inbound", [None, "", "garbage \x00\x1c", b"\xff\xfe", "PID|||x", "MSH"])
def test_best_effort_ack_without_usable_msh(inbound: str | bytes | None) -> None:
    ack = build_ack(inbound, "AR", "trame illisible")
    msg = parse_ack(ack)
    assert str(msg.segment("MSH")[9]) == "ACK"
    assert field(msg, "MSH", 12) == "2.5"
    assert field(msg, "MSH", 18) == "UNICODE UTF-8"
    assert field(msg, "MSA", 1) == "AR"
    assert field(msg, "MSA", 2) == ""
    assert field(msg, "ERR", 3) == "207"
    assert field(msg, "ERR", 8) == "trame illisible"


def test_ack_for_msh_only_and_lf_separators() -> None:
    raw = "MSH|^~\\&|RIS|HOP|DRIM|SITE|20240101||ORU^R01|CTRL42|T|2.5\nPID|||x\n"
    msg = parse_ack(build_ack(raw, "AA"))
    assert field(msg, "MSH", 3) == "DRIM" and field(msg, "MSH", 5) == "RIS"
    assert field(msg, "MSH", 11) == "T"
    assert field(msg, "MSA", 2) == "CTRL42"


def test_non_standard_delimiters_are_reencoded() -> None:
    # component $, repetition %, escape *, subcomponent @; "^" is plain text there
    raw = "MSH#$%*@#RIS$1.2.3$ISO#H^P#DRIM#SITE#20240101##ORU$R01#CTRL*F*42#P#2.5\r"
    ack = build_ack(raw, "AA")
    msg = parse_ack(ack)
    assert str(msg.segment("MSH")[5]) == "RIS^1.2.3^ISO"
    assert str(msg.segment("MSH")[6]) == "H\\S\\P"
    assert field(msg, "MSH", 6) == "H^P"
    assert str(msg.segment("MSH")[9]) == "ACK^R01^ACK"
    assert field(msg, "MSA", 2) == "CTRL#42"


def test_free_text_is_escaped() -> None:
    text = "a|b^c~d\\e&f\r\nligne 2"
    error = HL7Error("AE", text, "OBX", 5, "102", user_message=text)
    ack = build_ack(sample("CR_C-ORU.hl7"), "AE", text, error=error)
    assert ack.count("\r") == 3  # MSH, MSA, ERR, nothing else breaks a segment
    msa = ack.split("\r")[1]
    assert msa == "MSA|AE|{{idMessage}}|a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f  ligne 2"
    msg = parse_ack(ack)
    assert field(msg, "ERR", 8) == "a|b^c~d\\e&f  ligne 2"
    assert escape_text("x\\y") == "x\\E\\y"


def test_ae_without_error_object_gets_generic_err() -> None:
    msg = parse_ack(build_ack(sample("CR_C-ORU.hl7"), "AE", "stockage impossible"))
    assert field(msg, "ERR", 3) == "207"
    assert field(msg, "ERR", 4) == "E"
    assert field(msg, "ERR", 8) == "stockage impossible"


def test_default_french_user_message() -> None:
    err = HL7Error("AE", "PID-3 missing", "PID", 3, "101")
    assert err.user_message == "Message refusé : champ obligatoire absent (PID-3)"
    assert str(err) == "PID-3 missing"


# ------------------------------------------------------------------------------------------
# MLLP framing
# ------------------------------------------------------------------------------------------


def test_frame_and_unframe() -> None:
    msg = sample("CR_C-ORU.hl7")
    framed = frame(msg)
    assert framed[:1] == b"\x0b" and framed[-2:] == b"\x1c\r"
    assert framed[1:-2] == msg.encode("utf-8")
    assert unframe(framed) == msg
    assert unframe(b"\x0bMSH|x\x1c") == "MSH|x"


def test_frame_is_utf8() -> None:
    assert frame("é") == b"\x0b\xc3\xa9\x1c\r"


def test_max_message_bytes() -> None:
    assert MAX_MESSAGE_BYTES == 20 * 1024 * 1024
    assert len(frame(sample("CR_G1_MAJ-MDM.hl7"))) < MAX_MESSAGE_BYTES


def test_cda_roundtrip_through_frame() -> None:
    framed = frame(sample("CR_C-ORU.hl7"))
    m = parse_report_message(unframe(framed))
    assert m.cda_xml is not None
    assert base64.b64encode(m.cda_xml).decode() in framed.decode("utf-8")
