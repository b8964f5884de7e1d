"""`PscUser` read from userinfo claims shaped like PSC's (written here by hand, not by the
simulator), situations d'exercice and their VIHF roles."""

from __future__ import annotations

from typing import Any

import pytest

from drimbox.auth.users import Exercice, PscUser, UserInfoError, vihf_role


def activity(name: str, structure: str, national: str = "", sector: str = "SA07") -> dict[str, str]:
    return {
        "codeModeExercice": "L",
        "codeSecteurDactivite": sector,
        "codeRole": "",
        "numeroFinessSite": "",
        "numeroSiretSite": "",
        "identifiantTechniqueDeLaStructure": structure,
        "raisonSocialeSite": name,
        "enseigneCommercialeSite": "",
        "codePostal": "13001",
        "bureauCedex": "13001 MARSEILLE",
        "ancienIdentifiantDeLaStructure": national,
    }


def claims(*exercices: dict[str, Any], **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "f:11111111-2222-4333-8444-555555555555:810000000001",
        "SubjectNameID": "810000000001",
        "preferred_username": "810000000001",
        "given_name": "Anne",
        "family_name": "Durand",
        "SubjectRefPro": {"codeCivilite": "MME", "exercices": list(exercices)},
    }
    base.update(extra)
    return base


RADIOLOGY = {
    "codeProfession": "10",
    "codeCategorieProfessionnelle": "C",
    "codeCiviliteDexercice": "DR",
    "nomDexercice": "DURAND",
    "prenomDexercice": "Anne",
    "codeTypeSavoirFaire": "S",
    "codeSavoirFaire": "SM44",
    "activities": [activity("CLINIQUE DU PORT", "F1", "1130000001", "SA01")],
}
MANIPULATOR = {
    "codeProfession": "98",
    "codeCategorieProfessionnelle": "C",
    "codeTypeSavoirFaire": "",
    "codeSavoirFaire": "",
    "activities": [activity("CABINET RADIO", "R2"), activity("CENTRE IRM", "R3", "499700000003")],
}


def test_one_exercice_one_activity() -> None:
    user = PscUser.from_claims(claims(RADIOLOGY))
    assert user.subject_name_id == "810000000001"
    assert user.display_name == "Anne DURAND"
    assert not user.must_choose_situation
    situation = user.situation()
    assert situation.label == "Médecin – Radio-diagnostic, CLINIQUE DU PORT (13001 MARSEILLE)"
    subject = situation.vihf_subject(user, authentication_mode="DIRECTE")
    assert subject.name_id == "810000000001"
    assert subject.display_name == "Anne DURAND"
    assert [c.code for c in (subject.profession, subject.specialty) if c] == ["10", "SM44"]
    assert subject.structure_id == "1130000001"  # the national id rather than the technical one
    assert subject.activity_sector == "SA01^1.2.250.1.71.4.2.4"


def test_two_exercices_make_three_situations() -> None:
    user = PscUser.from_claims(claims(RADIOLOGY, MANIPULATOR))
    assert [e.profession_label for e in user.exercices] == ["Médecin", "Manipulateur ERM"]
    situations = user.situations()
    assert len(situations) == 3 and user.must_choose_situation
    assert len({s.key for s in situations}) == 3
    with pytest.raises(UserInfoError, match="choisissez"):
        user.situation()
    irm = user.situation(situations[2].key)
    assert irm.activity is not None and irm.activity.name == "CENTRE IRM"
    assert irm.role.specialty is None  # no savoir-faire: the profession alone
    assert irm.vihf_subject(user, authentication_mode="DIRECTE").structure_id == "499700000003"
    with pytest.raises(UserInfoError, match="inconnue"):
        user.situation("10/SM99@nulle-part")


def test_exercice_without_activity_is_still_a_situation() -> None:
    user = PscUser.from_claims(claims({**RADIOLOGY, "activities": []}))
    situation = user.situation()
    assert situation.activity is None and situation.label == "Médecin – Radio-diagnostic"
    subject = situation.vihf_subject(
        user, authentication_mode="DIRECTE", fallback_sector="SA07^1.2.250.1.71.4.2.4"
    )
    assert subject.structure_id is None
    assert subject.activity_sector == "SA07^1.2.250.1.71.4.2.4"


def test_user_without_exercice_cannot_act() -> None:
    user = PscUser.from_claims(claims(SubjectRefPro=None))
    assert user.exercices == () and not user.must_choose_situation
    with pytest.raises(UserInfoError, match="Annuaire Santé"):
        user.situation()


@pytest.mark.parametrize("missing", ["sub", "SubjectNameID"])
def test_identity_is_required(missing: str) -> None:
    data = claims(RADIOLOGY)
    del data[missing]
    with pytest.raises(UserInfoError):
        PscUser.from_claims(data)


def test_vihf_role_keeps_only_ordinal_specialties() -> None:
    competence = Exercice("10", specialty_type="CEX", specialty_code="CEX12")
    assert vihf_role(competence).codes[0].code == "10" and vihf_role(competence).specialty is None
    untyped = Exercice("10", specialty_code="SM26")
    assert vihf_role(untyped).specialty is not None
    assert vihf_role(untyped).specialty.display_name == "Qualifié en médecine générale"  # type: ignore[union-attr]
    assert Exercice("77").profession_label == "Profession 77"
    with pytest.raises(UserInfoError):
        vihf_role(Exercice(""))


def test_tolerant_reading() -> None:
    # A single object where PSC normally sends an array, nulls, and stray types.
    odd = claims({**RADIOLOGY, "activities": activity("SEUL", "R9")}, given_name=None)
    user = PscUser.from_claims(odd)
    assert user.display_name == "DURAND"
    assert user.situation().activity is not None
