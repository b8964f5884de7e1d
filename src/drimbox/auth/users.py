"""The user of a DRIMbox as Pro Santé Connect describes them.

Owns `PscUser` (built from the PSC userinfo claims: `SubjectNameID`, names, and
`SubjectRefPro.exercices[]` with their `activities[]`), `Exercice` and `Activity` (the
professional practice and the structures where it takes place, as the Annuaire Santé lists them),
`Situation` (one exercice at one activity: what the user acts as for this session — the
"situation d'exercice" a user with several must choose), and the mapping of a situation to the
VIHF roles the DMP expects (profession TRE_G15 1.2.250.1.71.1.2.7, specialty TRE_R38
1.2.250.1.71.4.2.5).

It must not talk to Pro Santé Connect (`drimbox.auth.psc` does), keep sessions, or decide what a
user may see: it only reads claims and names things.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from drimbox.cda.model import Code
from drimbox.dmp import codes
from drimbox.dmp.vihf import VihfSubject

# TRE_G15-ProfessionSante: the professions a DRIMbox user is likely to have. PSC sends codes
# only; an unknown code is shown as "Profession <code>".
PROFESSION_LABELS: dict[str, str] = {
    "10": "Médecin",
    "21": "Pharmacien",
    "40": "Chirurgien-dentiste",
    "50": "Sage-femme",
    "60": "Infirmier",
    "70": "Masseur-kinésithérapeute",
    "80": "Pédicure-podologue",
    "91": "Orthophoniste",
    "92": "Orthoptiste",
    "98": "Manipulateur ERM",
}

# TRE_R38-SpecialiteOrdinale: the specialties of the DRIM-M use cases (labels as the ANS
# samples write them).
SPECIALTY_LABELS: dict[str, str] = {
    "SM26": "Qualifié en médecine générale",
    "SM44": "Radio-diagnostic",
    "SM53": "Spécialiste en médecine générale",
    "SM54": "Médecine générale",
}

# codeCategorieProfessionnelle (TRE_R09): civil, military, student.
CATEGORY_LABELS: dict[str, str] = {"C": "Civil", "M": "Militaire", "E": "Étudiant"}

# codeTypeSavoirFaire of an ordinal specialty: only those go into the VIHF role.
SPECIALTY_TYPE_ORDINAL = "S"


class UserInfoError(ValueError):
    """The userinfo claims cannot describe a professional (the message is French)."""


def _text(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    return value.strip() if isinstance(value, str) else ""


def _objects(value: object) -> list[Mapping[str, Any]]:
    # PSC sends arrays; a single object where an array is expected is tolerated, anything else
    # (null, strings) is read as "none".
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, Mapping)]
    return []


@dataclass(frozen=True)
class Activity:
    """One structure where an exercice takes place (PSC `activities[]`)."""

    name: str  # raisonSocialeSite
    structure_id: str = ""  # identifiantTechniqueDeLaStructure
    national_structure_id: str = ""  # ancienIdentifiantDeLaStructure ("1"+FINESS, "3"+SIRET…)
    sector_code: str = ""  # codeSecteurDactivite, TRE_R02 (SA07 cabinet, SA01 hospital…)
    practice_mode: str = ""  # codeModeExercice: L libéral, S salarié, B bénévole
    role_code: str = ""  # codeRole
    finess_site: str = ""
    siret_site: str = ""
    postal_code: str = ""
    town: str = ""  # bureauCedex

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Activity:
        return cls(
            name=_text(claims, "raisonSocialeSite") or _text(claims, "enseigneCommercialeSite"),
            structure_id=_text(claims, "identifiantTechniqueDeLaStructure"),
            national_structure_id=_text(claims, "ancienIdentifiantDeLaStructure"),
            sector_code=_text(claims, "codeSecteurDactivite"),
            practice_mode=_text(claims, "codeModeExercice"),
            role_code=_text(claims, "codeRole"),
            finess_site=_text(claims, "numeroFinessSite"),
            siret_site=_text(claims, "numeroSiretSite"),
            postal_code=_text(claims, "codePostal"),
            town=_text(claims, "bureauCedex"),
        )

    @property
    def vihf_structure_id(self) -> str:
        """The structure identifier for the VIHF: the national one when PSC gives it (the DMP
        knows structures by it), else the technical one."""
        return self.national_structure_id or self.structure_id

    @property
    def label(self) -> str:
        place = f" ({self.town})" if self.town else ""
        return f"{self.name or 'Structure sans nom'}{place}"


@dataclass(frozen=True)
class Exercice:
    """A professional practice (PSC `exercices[]`): a profession, maybe a specialty, and the
    structures (activities) where it is practised."""

    profession_code: str
    category: str = ""  # codeCategorieProfessionnelle
    specialty_type: str = ""  # codeTypeSavoirFaire (S: ordinal specialty, CEX, …)
    specialty_code: str = ""  # codeSavoirFaire, e.g. SM44
    civility: str = ""  # codeCiviliteDexercice (DR, M, MME…)
    family_name: str = ""  # nomDexercice
    given_name: str = ""  # prenomDexercice
    activities: tuple[Activity, ...] = ()

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Exercice:
        return cls(
            profession_code=_text(claims, "codeProfession"),
            category=_text(claims, "codeCategorieProfessionnelle"),
            specialty_type=_text(claims, "codeTypeSavoirFaire"),
            specialty_code=_text(claims, "codeSavoirFaire"),
            civility=_text(claims, "codeCiviliteDexercice"),
            family_name=_text(claims, "nomDexercice"),
            given_name=_text(claims, "prenomDexercice"),
            activities=tuple(Activity.from_claims(a) for a in _objects(claims.get("activities"))),
        )

    @property
    def profession_label(self) -> str:
        return PROFESSION_LABELS.get(self.profession_code, f"Profession {self.profession_code}")

    @property
    def specialty_label(self) -> str:
        if not self.specialty_code:
            return ""
        return SPECIALTY_LABELS.get(self.specialty_code, self.specialty_code)

    @property
    def category_label(self) -> str:
        return CATEGORY_LABELS.get(self.category, self.category)

    @property
    def label(self) -> str:
        """ "Médecin – Radio-diagnostic", or the profession alone."""
        specialty = self.specialty_label
        return f"{self.profession_label} – {specialty}" if specialty else self.profession_label


@dataclass(frozen=True)
class VihfRole:
    """The roles a VIHF carries for a professional: profession, then specialty if any."""

    profession: Code
    specialty: Code | None = None

    @property
    def codes(self) -> tuple[Code, ...]:
        return (self.profession,) if self.specialty is None else (self.profession, self.specialty)


def vihf_role(exercice: Exercice) -> VihfRole:
    """The VIHF roles of an exercice: TRE_G15 profession, and its TRE_R38 specialty when the
    savoir-faire is an ordinal specialty (type "S", or an "SM…" code when PSC leaves the type
    empty) — competences and other savoir-faire types are not VIHF roles."""
    if not exercice.profession_code:
        raise UserInfoError("la situation d'exercice n'a pas de code profession")
    profession = Code(exercice.profession_code, codes.PROFESSION_SYSTEM, exercice.profession_label)
    specialty = None
    ordinal = exercice.specialty_type == SPECIALTY_TYPE_ORDINAL or (
        not exercice.specialty_type and exercice.specialty_code.startswith("SM")
    )
    if exercice.specialty_code and ordinal:
        specialty = Code(exercice.specialty_code, codes.SPECIALTY_SYSTEM, exercice.specialty_label)
    return VihfRole(profession, specialty)


@dataclass(frozen=True)
class Situation:
    """One exercice at one activity (or at none, when PSC lists no structure for it)."""

    exercice: Exercice
    activity: Activity | None = None

    @property
    def key(self) -> str:
        """A stable identifier for a form field or a session row: profession, specialty and
        structure (two situations of one user never share all three)."""
        structure = self.activity.vihf_structure_id if self.activity else ""
        return f"{self.exercice.profession_code}/{self.exercice.specialty_code}@{structure}"

    @property
    def label(self) -> str:
        """French label for the choice page: "Médecin – Radio-diagnostic, CABINET X (PARIS)"."""
        if self.activity is None:
            return self.exercice.label
        return f"{self.exercice.label}, {self.activity.label}"

    @property
    def role(self) -> VihfRole:
        return vihf_role(self.exercice)

    def vihf_subject(
        self, user: PscUser, *, authentication_mode: str, fallback_sector: str | None = None
    ) -> VihfSubject:
        """The DMP subject for a consultation by this user in this situation.

        `authentication_mode` is the VIHF `Authentification_Mode` the DMP client uses for PSC
        users; `fallback_sector` ("SA07^1.2.250.1.71.4.2.4") when the activity has none.
        """
        role = self.role
        sector = fallback_sector
        if self.activity is not None and self.activity.sector_code:
            sector = f"{self.activity.sector_code}^{codes.ACTIVITY_SECTOR_SYSTEM}"
        return VihfSubject(
            name_id=user.subject_name_id,
            display_name=user.display_name,
            profession=role.profession,
            specialty=role.specialty,
            authentication_mode=authentication_mode,
            structure_id=(self.activity.vihf_structure_id or None) if self.activity else None,
            activity_sector=sector,
        )


@dataclass(frozen=True)
class PscUser:
    """A professional authenticated by Pro Santé Connect.

    `subject` is the OIDC `sub` (PSC's internal id, "f:<uuid>:<id>"); `subject_name_id` the
    national identifier ("8" + RPPS) that the DMP, the VIHF and the audit trail use.
    """

    subject: str
    subject_name_id: str
    given_name: str = ""
    family_name: str = ""
    preferred_username: str = ""
    exercices: tuple[Exercice, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> PscUser:
        """Read the userinfo claims; raises `UserInfoError` without `sub` or `SubjectNameID`."""
        subject = _text(claims, "sub")
        name_id = _text(claims, "SubjectNameID")
        if not subject:
            raise UserInfoError("les informations de l'utilisateur n'ont pas d'identifiant (sub)")
        if not name_id:
            raise UserInfoError(
                "Pro Santé Connect n'a pas transmis l'identifiant national du professionnel "
                "(SubjectNameID) : la portée « scope_all » a-t-elle été demandée ?"
            )
        reference = claims.get("SubjectRefPro")
        exercices = _objects(reference.get("exercices")) if isinstance(reference, Mapping) else []
        return cls(
            subject=subject,
            subject_name_id=name_id,
            given_name=_text(claims, "given_name"),
            family_name=_text(claims, "family_name"),
            preferred_username=_text(claims, "preferred_username"),
            exercices=tuple(Exercice.from_claims(e) for e in exercices),
            claims=dict(claims),
        )

    @property
    def display_name(self) -> str:
        """ "Prénom NOM" (the VIHF subject-id and the UI), the national id when PSC gives none."""
        name = " ".join(part for part in (self.given_name, self.family_name.upper()) if part)
        return name or self.subject_name_id

    def situations(self) -> list[Situation]:
        """Every situation d'exercice, in PSC's order: one per (exercice, activity)."""
        found: list[Situation] = []
        for exercice in self.exercices:
            if not exercice.activities:
                found.append(Situation(exercice))
            found.extend(Situation(exercice, activity) for activity in exercice.activities)
        return found

    @property
    def must_choose_situation(self) -> bool:
        """True when the user has several situations: the UI must ask which one applies
        before any DMP access (the VIHF names one profession and one structure)."""
        return len(self.situations()) > 1

    def situation(self, key: str | None = None) -> Situation:
        """The situation with this `key`, or the only one when `key` is None.

        Raises `UserInfoError` (French) when there is none, when `key` is unknown, or when the
        user has several and `key` is None.
        """
        situations = self.situations()
        if not situations:
            raise UserInfoError(
                "aucune situation d'exercice n'est connue pour ce professionnel dans l'Annuaire "
                "Santé : l'accès aux examens n'est pas possible"
            )
        if key is None:
            if len(situations) > 1:
                raise UserInfoError("choisissez votre situation d'exercice")
            return situations[0]
        for situation in situations:
            if situation.key == key:
                return situation
        raise UserInfoError("situation d'exercice inconnue pour ce professionnel")
