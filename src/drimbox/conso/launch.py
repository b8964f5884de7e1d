"""The contextual launch: the form a RIS/DPI posts to open the Conso on a patient (ARCHITECTURE §3).

Owns the field names, their validation and `LaunchContext`, the typed result. Field names are
matched regardless of case, and the consent is accepted under the name the ANS contextual-launch
test tool sends (`InformationEtConsentement`) as well; `PatientIDIssuer` may be a bare OID or a
full HL7 CX.4 (`namespace&OID&ISO`), as the ANS FAQ recommends. The INS used name and used
given name (optional) come as `Patient.name.usual.family` / `.given`. Every problem is
reported at once, as `FieldError`s naming the form field in French, so that the site's
integrator fixes the RIS call in one go. Pure functions: the web layer stores the context with an
expiry and answers 303; this module must not touch the DMP, the session or the network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final
from urllib.parse import parse_qs, unquote

from drimbox.cda.model import INS_OIDS
from drimbox.cda.parser import is_valid_dicom_uid, is_valid_ins

# Form field names (as the RIS/DPI sends them; matched regardless of case).
F_INS: Final = "Patient.identifier.value"
F_INS_SYSTEM: Final = "Patient.identifier.system"
F_FAMILY: Final = "Patient.name.family"
F_GIVEN: Final = "Patient.name.given"
F_GENDER: Final = "Patient.gender"
F_BIRTH_DATE: Final = "Patient.birthDate"
F_DISTRICT: Final = "Address.district"
F_IPP: Final = "PatientID"
F_IPP_ISSUER: Final = "PatientIDIssuer"
F_CONSENT: Final = "InformationEtOppositionConsultation"
F_STUDY_UID: Final = "StudyInstanceUID"
F_ACCESSION: Final = "AccessionNumber"
F_MODALITY: Final = "Modality"
F_STUDY_DATE: Final = "StudyDate"
F_REGION: Final = "AnatomicRegion"
F_SITUATION: Final = "Situation"
# The INS used name and used given name (FHIR `name` of use "usual"); the ones above are the
# birth traits.
F_USED_NAME: Final = "Patient.name.usual.family"
F_USED_GIVEN: Final = "Patient.name.usual.given"

REQUIRED_FIELDS: Final = (
    F_INS,
    F_INS_SYSTEM,
    F_FAMILY,
    F_GIVEN,
    F_GENDER,
    F_BIRTH_DATE,
    F_DISTRICT,
    F_IPP,
    F_IPP_ISSUER,
    F_CONSENT,
)
OPTIONAL_FIELDS: Final = (
    F_STUDY_UID,
    F_ACCESSION,
    F_MODALITY,
    F_STUDY_DATE,
    F_REGION,
    F_SITUATION,
    F_USED_NAME,
    F_USED_GIVEN,
)
# Only given names may repeat (several first names); any other repeated field is ambiguous.
_REPEATABLE: Final = frozenset({F_GIVEN})
# Other names a field is sent under: the ANS contextual-launch test tool's consent field.
ALIASES: Final = {
    "InformationEtConsentement": F_CONSENT,
    "NomUtilise": F_USED_NAME,
    "PrenomUtilise": F_USED_GIVEN,
}
# Lower-cased name as sent → the field's canonical name.
_CANONICAL: Final = {
    **{name.lower(): name for name in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)},
    **{alias.lower(): name for alias, name in ALIASES.items()},
}

MAX_FORM_BYTES: Final = 16 * 1024  # a launch form is a few hundred bytes
MAX_VALUE_LENGTH: Final = 256

_GENDERS: Final = {"M": "M", "F": "F", "U": "U", "MALE": "M", "FEMALE": "F", "UNKNOWN": "U"}
_TRUE: Final = frozenset({"TRUE", "1", "O", "OUI", "Y", "YES"})
_FALSE: Final = frozenset({"FALSE", "0", "N", "NON", "NO"})
_MODALITY_RE: Final = re.compile(r"^[A-Z0-9_]{1,16}$")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
_OID_RE: Final = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


@dataclass(frozen=True)
class FieldError:
    """One problem of the form: the field name as sent, and a French sentence naming it."""

    field: str
    message: str


class InvalidLaunch(ValueError):
    """The form cannot open the Conso; `errors` lists every faulty field, `ins` the patient's
    INS when the form carried a valid one (for the audit trail of the refusal)."""

    def __init__(self, errors: Sequence[FieldError], *, ins: str = "") -> None:
        self.errors = tuple(errors)
        self.ins = ins
        super().__init__("; ".join(e.message for e in self.errors))


@dataclass(frozen=True)
class LaunchContext:
    """A validated contextual launch. `ins_oid` is a bare OID (no `urn:oid:`)."""

    ins: str
    ins_oid: str
    family_name: str
    given_names: tuple[str, ...]
    gender: str  # M, F or U
    birth_date: date
    district: str  # Address.district: the birthplace code of the INS identity traits
    local_patient_id: str  # the site's IPP
    local_patient_id_issuer: str
    consent: bool  # informed, and no opposition to the consultation of the DMP
    study_instance_uid: str | None = None
    accession_number: str | None = None
    modality: str | None = None
    study_date: date | None = None
    anatomic_region: str | None = None
    situation: str | None = None
    used_name: str | None = None  # INS "nom utilisé", when it differs from the birth name
    used_given_name: str | None = None  # INS "prénom utilisé"

    @property
    def display_name(self) -> str:
        return " ".join([self.family_name.upper(), *self.given_names]).strip()


FormInput = bytes | str | Mapping[str, str] | Mapping[str, Sequence[str]]


def _decode_body(body: bytes | str) -> tuple[dict[str, list[str]], list[FieldError]]:
    if isinstance(body, bytes):
        if len(body) > MAX_FORM_BYTES:
            return {}, [FieldError("", f"Formulaire trop volumineux (> {MAX_FORM_BYTES} octets).")]
        try:
            text = body.decode("ascii")  # percent-encoded form: ASCII on the wire
        except UnicodeDecodeError:
            text = body.decode("utf-8", "replace")
    else:
        text = body
    try:
        fields = parse_qs(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return {}, [FieldError("", "Formulaire mal encodé : les valeurs doivent être en UTF-8.")]
    return fields, []


def form_fields(body: bytes) -> list[tuple[str, str]]:
    """The fields of a posted form as sent (name, value), for a page that posts it again."""
    fields, _ = _decode_body(body)
    return [(name, value) for name, values in fields.items() for value in values]


def _normalise(form: FormInput) -> tuple[dict[str, list[str]], list[FieldError]]:
    if isinstance(form, bytes | str):
        return _decode_body(form)
    fields: dict[str, list[str]] = {}
    for name, value in form.items():
        fields[name] = [value] if isinstance(value, str) else list(value)
    return fields, []


def _canonical(fields: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """The known fields under their canonical names (any case, aliases merged); unknown fields
    are dropped: RIS add their own."""
    known: dict[str, list[str]] = {}
    for name, values in fields.items():
        canonical = _CANONICAL.get(name.lower())
        if canonical is not None:
            known.setdefault(canonical, []).extend(values)
    return known


def _cx4_issuer(value: str) -> tuple[str, str | None]:
    """The assigning authority of `PatientIDIssuer`: a bare OID or name, or a full HL7 CX.4
    `namespace&OID&ISO` (the OID then, else the namespace); a French problem or None."""
    if "&" not in value:
        return value, None
    parts = value.split("&")
    if len(parts) > 3:
        return value, "CX.4 attendu : espace de noms&OID&ISO."
    namespace, universal, kind = (*parts, "", "")[:3]
    if universal:
        if kind and kind.upper() != "ISO":
            return value, f"type d'identifiant « {kind} » : ISO attendu (espace de noms&OID&ISO)."
        if not is_oid(universal):
            return value, f"« {universal} » n'est pas un OID (espace de noms&OID&ISO)."
        return universal, None
    if not namespace:
        return value, "ni espace de noms ni OID (espace de noms&OID&ISO)."
    return namespace, None


def _date(value: str) -> date | None:
    for pattern in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(value, pattern).date()
        except ValueError:
            continue
    return None


def parse_launch(form: FormInput, *, today: date | None = None) -> LaunchContext:
    """Validate a launch form: the raw `application/x-www-form-urlencoded` body (decoded here)
    or the fields a framework already decoded. Raises `InvalidLaunch` listing every problem."""
    raw, errors = _normalise(form)
    fields = _canonical(raw)
    today = today or date.today()
    values: dict[str, str] = {}
    for name, raw_values in fields.items():
        cleaned = [v.strip() for v in raw_values if v.strip()]
        if name not in _REPEATABLE:
            # The same value under two spellings (consent under both names) is no ambiguity.
            cleaned = list(dict.fromkeys(cleaned))
        if len(cleaned) > 1 and name not in _REPEATABLE:
            errors.append(FieldError(name, f"Le champ {name} est répété : une seule valeur."))
            continue
        value = " ".join(cleaned)
        if len(value) > MAX_VALUE_LENGTH:
            errors.append(
                FieldError(name, f"Le champ {name} est trop long ({MAX_VALUE_LENGTH} max.).")
            )
            continue
        if _CONTROL_RE.search(value):
            errors.append(FieldError(name, f"Le champ {name} contient des caractères de contrôle."))
            continue
        values[name] = value
    for name in REQUIRED_FIELDS:
        if not values.get(name) and not any(e.field == name for e in errors):
            errors.append(FieldError(name, f"Le champ obligatoire {name} est absent ou vide."))

    def bad(name: str, message: str) -> None:
        # The value received, so that the site's IT staff can find the sender's mistake.
        received = values.get(name, "")
        shown = received if len(received) <= 80 else received[:79] + "…"
        errors.append(
            FieldError(name, f"Le champ {name} est invalide (reçu « {shown} ») : {message}")
        )

    ins = values.get(F_INS, "").replace(" ", "").upper()
    if ins and not is_valid_ins(ins):
        bad(F_INS, "l'INS doit compter 15 caractères avec une clé de contrôle exacte.")

    system = values.get(F_INS_SYSTEM, "")
    if "%" in system:
        system = unquote(system)  # some RIS encode the URN twice
    oid = system[len("urn:oid:") :] if system.lower().startswith("urn:oid:") else system
    if system and oid not in INS_OIDS:
        bad(
            F_INS_SYSTEM,
            "OID d'INS attendu (" + ", ".join(f"urn:oid:{o}" for o in INS_OIDS) + ").",
        )

    gender = _GENDERS.get(values.get(F_GENDER, "").upper(), "")
    if values.get(F_GENDER) and not gender:
        bad(F_GENDER, "valeurs admises M, F ou U.")

    birth_date: date | None = None
    if values.get(F_BIRTH_DATE):
        birth_date = _date(values[F_BIRTH_DATE])
        if birth_date is None:
            bad(F_BIRTH_DATE, "date attendue au format AAAA-MM-JJ.")
        elif birth_date > today:
            bad(F_BIRTH_DATE, "la date de naissance est dans le futur.")

    consent: bool | None = None
    if values.get(F_CONSENT):
        flag = values[F_CONSENT].upper()
        consent = True if flag in _TRUE else False if flag in _FALSE else None
        if consent is None:
            bad(F_CONSENT, "valeurs admises true ou false.")

    issuer = values.get(F_IPP_ISSUER, "")
    if issuer.lower().startswith("urn:oid:"):
        issuer = issuer[len("urn:oid:") :]
    if issuer and "\\" in issuer:
        bad(F_IPP_ISSUER, "caractère « \\ » interdit.")
    elif issuer:
        issuer, problem = _cx4_issuer(issuer)
        if problem:
            bad(F_IPP_ISSUER, problem)
    ipp = values.get(F_IPP, "")
    if ipp and ("\\" in ipp or len(ipp) > 64):
        bad(F_IPP, "64 caractères au plus, sans « \\ ».")

    study_uid = values.get(F_STUDY_UID) or None
    if study_uid and not is_valid_dicom_uid(study_uid):
        bad(F_STUDY_UID, "UID DICOM attendu (chiffres et points, 64 caractères au plus).")
    accession = values.get(F_ACCESSION) or None
    if accession and ("\\" in accession or len(accession) > 64):
        bad(F_ACCESSION, "64 caractères au plus, sans « \\ ».")
    modality = (values.get(F_MODALITY) or "").upper() or None
    if modality and not _MODALITY_RE.match(modality):
        bad(F_MODALITY, "code de modalité DICOM attendu (CT, MR, US…).")
    study_date: date | None = None
    if values.get(F_STUDY_DATE):
        study_date = _date(values[F_STUDY_DATE])
        if study_date is None:
            bad(F_STUDY_DATE, "date attendue au format AAAA-MM-JJ.")

    if errors:
        raise InvalidLaunch(errors, ins=ins if ins and is_valid_ins(ins) else "")
    assert birth_date is not None and consent is not None  # checked above
    return LaunchContext(
        ins=ins,
        ins_oid=oid,
        family_name=values[F_FAMILY],
        # One given name per form value, as sent ("JEAN PIERRE" may be one compound name).
        given_names=tuple(g.strip() for g in fields.get(F_GIVEN, []) if g.strip()),
        gender=gender,
        birth_date=birth_date,
        district=values[F_DISTRICT],
        local_patient_id=ipp,
        local_patient_id_issuer=issuer,
        consent=consent,
        study_instance_uid=study_uid,
        accession_number=accession,
        modality=modality,
        study_date=study_date,
        anatomic_region=values.get(F_REGION) or None,
        situation=values.get(F_SITUATION) or None,
        used_name=values.get(F_USED_NAME) or None,
        used_given_name=values.get(F_USED_GIVEN) or None,
    )


def is_oid(value: str) -> bool:
    """Whether an issuer is an OID (then it also goes into IssuerOfPatientIDQualifiers)."""
    return _OID_RE.match(value) is not None
