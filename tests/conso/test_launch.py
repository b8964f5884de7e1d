"""The contextual launch form: every field validated, errors name the field, URL-encoding
decoded."""

from __future__ import annotations

from datetime import date
from urllib.parse import urlencode

import pytest

from drimbox.conso.launch import (
    F_BIRTH_DATE,
    F_CONSENT,
    F_GENDER,
    F_INS,
    F_INS_SYSTEM,
    F_IPP_ISSUER,
    F_MODALITY,
    F_STUDY_DATE,
    F_STUDY_UID,
    REQUIRED_FIELDS,
    InvalidLaunch,
    parse_launch,
)

VALID: dict[str, str] = {
    "Patient.identifier.value": "279035121518989",
    "Patient.identifier.system": "urn:oid:1.2.250.1.213.1.4.10",
    "Patient.name.family": "PAT-TROIS",
    "Patient.name.given": "DOMINIQUE",
    "Patient.gender": "F",
    "Patient.birthDate": "1979-03-28",
    "Address.district": "21231",
    "PatientID": "IPP101",
    "PatientIDIssuer": "1.2.250.1.213.4.5.2.4",
    "InformationEtOppositionConsultation": "true",
}


def errors_of(form: dict[str, str] | bytes) -> dict[str, str]:
    with pytest.raises(InvalidLaunch) as caught:
        parse_launch(form, today=date(2026, 1, 1))
    return {e.field: e.message for e in caught.value.errors}


def test_a_complete_urlencoded_form_is_decoded() -> None:
    form = {
        **VALID,
        "Patient.name.family": "DE LA FONTAINE-ÉLOÏSE",
        "StudyInstanceUID": "1.2.250.1.213.4.5.2.1.103",
        "AccessionNumber": "ACN 103/B",
        "Modality": "ct",
        "StudyDate": "20210108",
        "AnatomicRegion": "Tête & cou",
        "Situation": "urgence",
    }
    body = urlencode(form).encode("ascii")
    assert b"%C3%89" in body and b"urn%3Aoid%3A" in body
    launch = parse_launch(body, today=date(2026, 1, 1))
    assert launch.ins == "279035121518989" and launch.ins_oid == "1.2.250.1.213.1.4.10"
    assert launch.family_name == "DE LA FONTAINE-ÉLOÏSE"
    assert launch.given_names == ("DOMINIQUE",)
    assert launch.birth_date == date(1979, 3, 28) and launch.gender == "F"
    assert launch.local_patient_id == "IPP101" and launch.consent is True
    assert launch.accession_number == "ACN 103/B" and launch.modality == "CT"
    assert launch.study_date == date(2021, 1, 8) and launch.anatomic_region == "Tête & cou"


def test_bare_oid_fhir_gender_and_double_encoded_system() -> None:
    form = {**VALID, F_INS_SYSTEM: "urn%3Aoid%3A1.2.250.1.213.1.4.8", F_GENDER: "female"}
    form[F_INS] = "279035121518989"
    launch = parse_launch(form)
    assert launch.ins_oid == "1.2.250.1.213.1.4.8" and launch.gender == "F"
    assert parse_launch({**VALID, F_INS_SYSTEM: "1.2.250.1.213.1.4.9"}).ins_oid.endswith(".9")


@pytest.mark.parametrize("missing", REQUIRED_FIELDS)
def test_each_missing_field_is_named(missing: str) -> None:
    form = {k: v for k, v in VALID.items() if k != missing}
    errors = errors_of(form)
    assert set(errors) == {missing}
    assert missing in errors[missing] and "absent" in errors[missing]


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        (F_INS, "279035121518988", "clé"),  # wrong key
        (F_INS, "27903512151898", "15"),  # too short
        (F_INS_SYSTEM, "urn:oid:1.2.250.1.213.1.4.2", "OID"),
        (F_GENDER, "X", "M, F ou U"),
        (F_BIRTH_DATE, "28/03/1979", "AAAA-MM-JJ"),
        (F_BIRTH_DATE, "2030-01-01", "futur"),
        (F_CONSENT, "peut-être", "true ou false"),
        (F_STUDY_UID, "1.2.03.4", "UID"),
        (F_MODALITY, "C T!", "modalité"),
        (F_STUDY_DATE, "2021-13-40", "AAAA-MM-JJ"),
    ],
)
def test_each_invalid_field_is_named(field: str, value: str, words: str) -> None:
    errors = errors_of({**VALID, field: value})
    assert set(errors) == {field}
    assert field in errors[field] and words in errors[field]


def test_all_errors_at_once_and_repeated_fields() -> None:
    body = urlencode(
        [*VALID.items(), (F_GENDER, "M"), (F_INS, "1"), ("Patient.name.given", "MARIE")]
    ).encode()
    errors = errors_of(body)
    assert set(errors) == {F_GENDER, F_INS}
    assert "répété" in errors[F_GENDER]
    # Given names may repeat: two first names.
    launch = parse_launch(urlencode([*VALID.items(), ("Patient.name.given", "MARIE")]).encode())
    assert launch.given_names == ("DOMINIQUE", "MARIE")


def test_opposition_is_a_valid_launch_but_recorded() -> None:
    launch = parse_launch({**VALID, F_CONSENT: "false"})
    assert launch.consent is False


def test_oversized_form_and_control_characters_are_refused() -> None:
    assert "" in errors_of(b"a=" + b"x" * 20000)
    errors = errors_of({**VALID, "Patient.name.family": "PAT\x00TROIS"})
    assert "contrôle" in errors["Patient.name.family"]


def test_the_ans_tools_field_names_in_any_case() -> None:
    """The ANS contextual-launch test tool sends the consent as InformationEtConsentement; RIS
    and DPI vary the case of every name."""
    form = {
        name.upper() if i % 2 else name.lower(): value
        for i, (name, value) in enumerate(VALID.items())
        if name != F_CONSENT
    }
    form["informationetconsentement"] = "false"
    form["ACCESSIONNUMBER"] = "ACN103"
    form["studyinstanceuid"] = "1.2.250.1.213.4.5.2.1.103"
    launch = parse_launch(urlencode(form).encode("ascii"), today=date(2026, 1, 1))
    assert launch.consent is False
    assert launch.ins == "279035121518989" and launch.given_names == ("DOMINIQUE",)
    assert launch.accession_number == "ACN103"
    assert launch.study_instance_uid == "1.2.250.1.213.4.5.2.1.103"
    # Both consent names with one value is no ambiguity; with two values it is.
    both = parse_launch({**VALID, "InformationEtConsentement": "true"})
    assert both.consent is True
    errors = errors_of({**VALID, "InformationEtConsentement": "false"})
    assert set(errors) == {F_CONSENT} and "répété" in errors[F_CONSENT]
    # The consent under neither name: named by its canonical name.
    missing = errors_of({k: v for k, v in VALID.items() if k != F_CONSENT})
    assert set(missing) == {F_CONSENT}


@pytest.mark.parametrize(
    ("issuer", "expected"),
    [
        ("1.2.250.1.213.4.5.2.4", "1.2.250.1.213.4.5.2.4"),
        ("urn:oid:1.2.250.1.213.4.5.2.4", "1.2.250.1.213.4.5.2.4"),
        ("HOPITAL&1.2.250.1.213.4.5.2.4&ISO", "1.2.250.1.213.4.5.2.4"),
        ("&1.2.250.1.213.4.5.2.4&ISO", "1.2.250.1.213.4.5.2.4"),
        ("HOPITAL&1.2.250.1.213.4.5.2.4&iso", "1.2.250.1.213.4.5.2.4"),
        ("HOPITAL&1.2.250.1.213.4.5.2.4", "1.2.250.1.213.4.5.2.4"),
        ("HOPITAL&&", "HOPITAL"),
        ("HOPITAL", "HOPITAL"),
    ],
)
def test_patient_id_issuer_as_a_full_cx4(issuer: str, expected: str) -> None:
    assert parse_launch({**VALID, F_IPP_ISSUER: issuer}).local_patient_id_issuer == expected


@pytest.mark.parametrize(
    ("issuer", "words"),
    [
        ("HOPITAL&1.2.250&DNS", "ISO attendu"),
        ("HOPITAL&pas-un-oid&ISO", "n'est pas un OID"),
        ("&&ISO", "ni espace de noms ni OID"),
        ("A&1.2.3&ISO&X", "CX.4 attendu"),
    ],
)
def test_a_malformed_cx4_issuer_is_named(issuer: str, words: str) -> None:
    errors = errors_of({**VALID, F_IPP_ISSUER: issuer})
    assert set(errors) == {F_IPP_ISSUER} and words in errors[F_IPP_ISSUER]
