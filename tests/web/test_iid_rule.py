"""The access rule of the report's viewer link (IHE IID), on the claims Pro Santé Connect sends:
profession, situation d'exercice and structure, and the report's confidentiality."""

from __future__ import annotations

from dataclasses import replace

from drimbox.sim.psc import (
    NO_STRUCTURE_PHYSICIAN,
    NURSE,
    OTHER_STRUCTURE_PHYSICIAN,
    PHARMACIST,
    RADIOLOGIST,
    TWO_SITES_PHYSICIAN,
    SimUser,
)
from drimbox.source.grants import IidReport
from drimbox.web.iid import CHOOSE_SITUATION, iid_refusal
from drimbox.web.viewer import ViewerSession

DOCTORS = ("10",)
PLAIN = IidReport(1, "279035121518989", frozenset({"INVISIBLE_PATIENT"}), frozenset(),
                  frozenset())  # fmt: skip
# Authored by the radiologist's colleague at the structure "499700100011001".
MASKED = IidReport(2, "279035121518989", frozenset({"MASQUE_PS"}), frozenset({"801234560801"}),
                   frozenset({"499700100011001"}))  # fmt: skip


def session(user: SimUser, situation: str | None = None) -> ViewerSession:
    return ViewerSession("s", user.subject_name_id, "", 0.0, userinfo=user.userinfo(),
                         situation_key=situation)  # fmt: skip


def reason(user: SimUser, report: IidReport = PLAIN, situation: str | None = None) -> str | None:
    refusal = iid_refusal(session(user, situation), report, DOCTORS)
    return None if refusal is None else refusal.reason


def test_professions_and_structures() -> None:
    assert reason(RADIOLOGIST) is None
    assert reason(OTHER_STRUCTURE_PHYSICIAN) is None
    # INVISIBLE_PATIENT concerns the patient, never a professional.
    assert reason(PHARMACIST) == "profession_non_autorisee:21"
    assert reason(NURSE) == "profession_non_autorisee:60"
    assert reason(NO_STRUCTURE_PHYSICIAN) == "sans_structure"
    assert reason(SimUser("x", "899700100099", "A", "B")) == "sans_situation"
    no_claims = ViewerSession("s", "899700100099", "", 0.0)
    assert iid_refusal(no_claims, PLAIN, DOCTORS) is not None
    # A site that opens the link to pharmacists too (`[viewer] iid_professions`).
    assert iid_refusal(session(PHARMACIST), PLAIN, ("10", "21")) is None


def test_several_situations_choose_first() -> None:
    assert iid_refusal(session(TWO_SITES_PHYSICIAN), PLAIN, DOCTORS) is CHOOSE_SITUATION
    chosen = "10/SM26@499700100022001"
    assert reason(TWO_SITES_PHYSICIAN, situation=chosen) is None
    assert iid_refusal(session(TWO_SITES_PHYSICIAN, "inconnue"), PLAIN, DOCTORS) is CHOOSE_SITUATION


def test_masked_report_opens_for_its_authors_and_their_structure_only() -> None:
    assert reason(RADIOLOGIST, MASKED) is None  # works at the authors' structure
    assert reason(OTHER_STRUCTURE_PHYSICIAN, MASKED) == "masque_aux_professionnels"
    author = replace(OTHER_STRUCTURE_PHYSICIAN, subject_name_id="801234560801")
    assert reason(author, MASKED) is None
    # The profession rule comes first: a pharmacist of the structure stays refused.
    assert reason(PHARMACIST, replace(MASKED, structures=frozenset({"R10055"}))) == (
        "profession_non_autorisee:21"
    )
