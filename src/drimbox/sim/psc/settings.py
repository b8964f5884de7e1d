"""Settings of the Pro Santé Connect simulator: the test users, the clients it accepts, lifetimes.

Part of the test/demo simulator of PSC; never deploy it. The users are described here with the
simulator's own small model and rendered to PSC-shaped userinfo claims by `SimUser.userinfo`,
independently of the box's parser (`drimbox.auth.users`), so that tests compare two readings of
the format rather than one with itself.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REALM = "esante-wallet"
# PSC's level for a CPS card or an e-CPS: what DRIM-M requires (`acr_values=eidas1`).
ACR_EIDAS1 = "eidas1"


@dataclass(frozen=True)
class SimActivity:
    """A structure where a test user practises (PSC `activities[]`)."""

    name: str
    structure_id: str
    national_structure_id: str = ""
    sector_code: str = "SA07"
    practice_mode: str = "L"
    postal_code: str = "75015"
    town: str = "75015 PARIS"

    def claims(self) -> dict[str, str]:
        # The fields PSC sends, empty ones included (PSC sends "" rather than omitting).
        return {
            "codeModeExercice": self.practice_mode,
            "codeSecteurDactivite": self.sector_code,
            "codeSectionPharmacien": "",
            "codeRole": "",
            "codeGenreActivite": "GENR01",
            "numeroSiretSite": "",
            "numeroSirenSite": "",
            "numeroFinessSite": "",
            "numeroFinessetablissementJuridique": "",
            "identifiantTechniqueDeLaStructure": self.structure_id,
            "raisonSocialeSite": self.name,
            "enseigneCommercialeSite": "",
            "codePostal": self.postal_code,
            "bureauCedex": self.town,
            "codePays": "99000",
            "ancienIdentifiantDeLaStructure": self.national_structure_id,
        }


@dataclass(frozen=True)
class SimExercice:
    """A professional practice of a test user (PSC `exercices[]`)."""

    profession_code: str = "10"
    specialty_code: str = ""
    specialty_type: str = "S"
    category: str = "C"
    civility: str = "DR"
    activities: tuple[SimActivity, ...] = ()


@dataclass(frozen=True)
class SimUser:
    """A test professional. `id` is what the login page and `login_hint` use.

    `acr` is the authentication level PSC reports for them: "eidas1" for a CPS or e-CPS; any
    other value stands for a weaker authentication, which the box must refuse.
    """

    id: str
    subject_name_id: str  # "8" + 11 digits (RPPS-like)
    given_name: str
    family_name: str
    exercices: tuple[SimExercice, ...] = ()
    acr: str = ACR_EIDAS1
    civility: str = "M"
    description: str = ""

    @property
    def subject(self) -> str:
        # PSC's `sub` is a Keycloak federated id, not the RPPS: clients must read SubjectNameID.
        return f"f:00000000-0000-4000-8000-000000000000:{self.subject_name_id}"

    def userinfo(self) -> dict[str, Any]:
        """The claims PSC's userinfo endpoint returns for this user (scope_all)."""
        exercices = [
            {
                "codeProfession": e.profession_code,
                "codeCategorieProfessionnelle": e.category,
                "codeCiviliteDexercice": e.civility,
                "nomDexercice": self.family_name,
                "prenomDexercice": self.given_name,
                "codeTypeSavoirFaire": e.specialty_type if e.specialty_code else "",
                "codeSavoirFaire": e.specialty_code,
                "activities": [a.claims() for a in e.activities],
            }
            for e in self.exercices
        ]
        first = next((a for e in self.exercices for a in e.activities), None)
        claims: dict[str, Any] = {
            "sub": self.subject,
            "SubjectNameID": self.subject_name_id,
            "preferred_username": self.subject_name_id,
            "given_name": self.given_name,
            "family_name": self.family_name,
            "codeCivilite": self.civility,
            "UITVersion": "1.0",
            "SubjectRefPro": {"codeCivilite": self.civility, "exercices": exercices},
            "SubjectRole": [f"{e.profession_code}^1.2.250.1.213.1.1.5.5" for e in self.exercices],
            "otherIds": [{"identifiant": self.subject_name_id, "origine": "RPPS", "qualite": 1}],
        }
        if first is not None:
            claims["SubjectOrganization"] = first.name
            claims["SubjectOrganizationID"] = first.structure_id
            claims["Secteur_Activite"] = f"{first.sector_code}^1.2.250.1.71.4.2.4"
        return claims

    def summary(self) -> str:
        """One French line for the login page."""
        if self.description:
            return self.description
        parts = [
            f"profession {e.profession_code}"
            + (f" / {e.specialty_code}" if e.specialty_code else "")
            for e in self.exercices
        ]
        return ", ".join(parts) or "sans exercice"


RADIOLOGIST = SimUser(
    id="radiologue",
    subject_name_id="899700100011",
    given_name="Claire",
    family_name="RADIOLOGUE",
    description="Médecin radiologue, un seul lieu d'exercice (cabinet d'imagerie)",
    exercices=(
        SimExercice(
            profession_code="10",
            specialty_code="SM44",
            activities=(
                SimActivity(
                    name="CABINET D'IMAGERIE DU PARC",
                    structure_id="R10011",
                    national_structure_id="499700100011001",
                    sector_code="SA07",
                    practice_mode="L",
                ),
            ),
        ),
    ),
)

TWO_SITES_PHYSICIAN = SimUser(
    id="medecin-deux-situations",
    subject_name_id="899700100022",
    given_name="Marc",
    family_name="GENERALISTE",
    description="Médecin généraliste, deux situations d'exercice (cabinet et centre hospitalier)",
    exercices=(
        SimExercice(
            profession_code="10",
            specialty_code="SM26",
            activities=(
                SimActivity(
                    name="CABINET MEDICAL DES TILLEULS",
                    structure_id="R10022",
                    national_structure_id="499700100022001",
                    sector_code="SA07",
                    practice_mode="L",
                    postal_code="69003",
                    town="69003 LYON",
                ),
                SimActivity(
                    name="CENTRE HOSPITALIER DE TEST",
                    structure_id="F10023",
                    national_structure_id="1690000000",
                    sector_code="SA01",
                    practice_mode="S",
                    postal_code="69003",
                    town="69003 LYON",
                ),
            ),
        ),
    ),
)

LOW_ACR_USER = SimUser(
    id="authentification-faible",
    subject_name_id="899700100033",
    given_name="Paul",
    family_name="FAIBLE",
    # Keycloak reports "0" for a session resumed without a fresh strong authentication.
    acr="0",
    description="Médecin authentifié sans CPS ni e-CPS (niveau inférieur à eidas1 : à refuser)",
    exercices=(
        SimExercice(
            profession_code="10",
            specialty_code="SM44",
            activities=(SimActivity(name="CABINET FAIBLE", structure_id="R10033"),),
        ),
    ),
)

NO_SITUATION_USER = SimUser(
    id="sans-situation",
    subject_name_id="899700100044",
    given_name="Anne",
    family_name="SANS-EXERCICE",
    description="Professionnel sans situation d'exercice dans l'Annuaire Santé (à refuser)",
    exercices=(),
)

# Professions the DMP's access matrix keeps away from imaging reports, and practices without a
# structure: the report's viewer link refuses them (docs/conformance.md, "viewer link").
PHARMACIST = SimUser(
    id="pharmacien",
    subject_name_id="899700100055",
    given_name="Hugo",
    family_name="PHARMACIEN",
    description="Pharmacien d'officine (profession 21)",
    exercices=(
        SimExercice(
            profession_code="21",
            civility="M",
            activities=(SimActivity(name="PHARMACIE DU MARCHE", structure_id="R10055"),),
        ),
    ),
)

NURSE = SimUser(
    id="infirmier",
    subject_name_id="899700100066",
    given_name="Lea",
    family_name="INFIRMIERE",
    civility="MME",
    description="Infirmière libérale (profession 60)",
    exercices=(
        SimExercice(
            profession_code="60",
            civility="MME",
            activities=(SimActivity(name="CABINET INFIRMIER DES LILAS", structure_id="R10066"),),
        ),
    ),
)

NO_STRUCTURE_PHYSICIAN = SimUser(
    id="medecin-sans-structure",
    subject_name_id="899700100077",
    given_name="Jean",
    family_name="SANS-STRUCTURE",
    description="Médecin inscrit sans aucun lieu d'exercice (aucune structure)",
    exercices=(SimExercice(profession_code="10", specialty_code="SM54"),),
)

OTHER_STRUCTURE_PHYSICIAN = SimUser(
    id="medecin-autre-structure",
    subject_name_id="899700100088",
    given_name="Sophie",
    family_name="TRAITANTE",
    civility="MME",
    description="Médecin généraliste d'une autre structure (le médecin demandeur)",
    exercices=(
        SimExercice(
            profession_code="10",
            specialty_code="SM54",
            activities=(
                SimActivity(
                    name="MAISON DE SANTE DU VAL",
                    structure_id="R10088",
                    national_structure_id="499700100088001",
                    postal_code="33000",
                    town="33000 BORDEAUX",
                ),
            ),
        ),
    ),
)

DEFAULT_USERS: tuple[SimUser, ...] = (
    RADIOLOGIST,
    TWO_SITES_PHYSICIAN,
    LOW_ACR_USER,
    NO_SITUATION_USER,
    PHARMACIST,
    NURSE,
    NO_STRUCTURE_PHYSICIAN,
    OTHER_STRUCTURE_PHYSICIAN,
)


@dataclass(frozen=True)
class SimClient:
    """A relying party registered at the simulated PSC.

    `redirect_uris` and `post_logout_redirect_uris` match exactly, or by prefix when they end
    with "*" (as Keycloak's wildcards: "http://127.0.0.1:*" accepts any local port).
    `tls_client_auth_subject_dn` (RFC 4514) registers the client for mutual-TLS authentication
    (RFC 8705 `tls_client_auth`, how PSC registers a DRIMbox by its ORG AUTH CLI certificate):
    then only a connection with a certificate of that subject authenticates it, never a secret
    (needs the simulator's `client_ca`).
    """

    client_id: str
    client_secret: str = ""
    redirect_uris: tuple[str, ...] = ("http://127.0.0.1:*", "http://localhost:*")
    post_logout_redirect_uris: tuple[str, ...] = ("http://127.0.0.1:*", "http://localhost:*")
    tls_client_auth_subject_dn: str = ""

    def accepts_redirect(self, uri: str) -> bool:
        return _matches(uri, self.redirect_uris)

    def accepts_post_logout(self, uri: str) -> bool:
        return _matches(uri, self.post_logout_redirect_uris)


def _matches(uri: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if pattern.endswith("*") and uri.startswith(pattern[:-1]):
            return True
        if uri == pattern:
            return True
    return False


# The simulator's demo client; not a credential of anything real.
DEFAULT_CLIENT = SimClient("drimbox-sim", "drimbox-sim-secret")


@dataclass
class PscSimSettings:
    """How one simulated PSC behaves."""

    users: Sequence[SimUser] = DEFAULT_USERS
    clients: Sequence[SimClient] = (DEFAULT_CLIENT,)
    realm: str = REALM
    access_token_lifetime_s: int = 300
    id_token_lifetime_s: int = 300
    refresh_token_lifetime_s: int = 1800
    code_lifetime_s: int = 60
    # A used refresh token is replaced by a new one (and stops working), as Keycloak does when
    # "revoke refresh token" is on.
    rotate_refresh_tokens: bool = True
    # Answer userinfo as a signed JWT (`application/jwt`) instead of JSON.
    signed_userinfo: bool = False
    # Refuse authorization requests without PKCE (PSC does not require it).
    require_pkce: bool = False
    # Public base URL when the simulator is reached through another name (demo behind a proxy);
    # None: the URL it listens on.
    public_url: str | None = None
    # TLS for the simulator's own listener.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # CA (PEM) of the clients' certificates: the simulator asks for one (tls_client_auth). With
    # mtls_cert/mtls_key, on a second listener that serves the token, introspection, userinfo
    # and logout endpoints (the discovery document's `mtls_endpoint_aliases`), the first one
    # (the browser's) keeping tls_cert or plain HTTP; without, on the first listener (tls_cert).
    client_ca: Path | None = None
    mtls_cert: Path | None = None
    mtls_key: Path | None = None
    extra_users: Sequence[SimUser] = field(default_factory=tuple)

    def all_users(self) -> list[SimUser]:
        return [*self.users, *self.extra_users]

    def user(self, user_id: str) -> SimUser | None:
        for user in self.all_users():
            if user_id in (user.id, user.subject_name_id):
                return user
        return None

    def client(self, client_id: str) -> SimClient | None:
        for client in self.clients:
            if client.client_id == client_id:
                return client
        return None


def load_users(path: Path) -> tuple[SimUser, ...]:
    """Test users from a TOML file (for `drimbox sim psc --users FILE`)::

        [[users]]
        id = "radiologue"
        subject_name_id = "899700100011"
        given_name = "Claire"
        family_name = "RADIOLOGUE"
        acr = "eidas1"                       # optional
        [[users.exercices]]
        profession_code = "10"
        specialty_code = "SM44"
        [[users.exercices.activities]]
        name = "CABINET D'IMAGERIE DU PARC"
        structure_id = "R10011"

    Raises `ValueError` (French) on a malformed file.
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"fichier d'utilisateurs de test illisible ({path}) : {exc}") from exc
    users = data.get("users")
    if not isinstance(users, list) or not users:
        raise ValueError(f"{path} : aucune table [[users]]")
    try:
        return tuple(_user(entry) for entry in users)
    except (TypeError, KeyError) as exc:
        raise ValueError(f"{path} : utilisateur de test mal décrit ({exc})") from exc


def _user(entry: Mapping[str, Any]) -> SimUser:
    exercices = tuple(
        SimExercice(
            **{k: v for k, v in e.items() if k != "activities"},
            activities=tuple(SimActivity(**a) for a in e.get("activities", [])),
        )
        for e in entry.get("exercices", [])
    )
    rest = {k: v for k, v in entry.items() if k != "exercices"}
    return SimUser(**rest, exercices=exercices)
