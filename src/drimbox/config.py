"""Node configuration: one TOML file, every key documented, validated at start.

Owns the configuration model (sections and defaults), loading from TOML, the
`DRIMBOX_<SECTION>__<KEY>` environment overrides and the French error messages that
`drimbox config check` shows to the site's IT staff. Nothing else reads TOML or the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "DRIMBOX_"
# Variables of ours that are not configuration keys (drimbox.failpoints; the CLI's file).
NOT_CONFIGURATION = frozenset({"DRIMBOX_FAILPOINTS", "DRIMBOX_CONFIG"})


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists one French sentence per wrong key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def web_origin(url: str) -> str:
    """The origin of an http(s) URL as browsers write it in `Origin`: lower-case, the default
    port left out; "" for anything else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return ""
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return ""
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def _networks(value: list[str]) -> list[str]:
    """CIDR networks (an address alone is its /32 or /128)."""
    for network in value:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"« {network} » n'est pas un réseau (ex. 10.0.0.0/24)") from None
    return value


def _origin(value: str) -> str:
    """A declared origin: "null", or scheme://host[:port] without path."""
    text = value.strip().rstrip("/")
    if text == "null":
        return text
    origin = web_origin(text)
    if not origin or urlsplit(text).path or urlsplit(text).query:
        raise ValueError(
            f"origine invalide : « {value} » (attendu schéma://hôte[:port], ex. "
            "https://ris.exemple.fr)"
        )
    return origin


def _comma_separated(value: object) -> object:
    """A list key given as one string (the environment): comma-separated items."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

PASSPHRASE_ENV_DESCRIPTION = (
    "Nom de la variable d'environnement qui contient la phrase secrète des clés de cette "
    "section quand elles sont chiffrées (fichier PKCS#12 .p12/.pfx, ou clé PEM chiffrée), "
    "ex. DRIMBOX_DMP_KEY_PASS ; la phrase n'est jamais écrite dans ce fichier. Vide : clés en "
    "clair (droits 0600, voir docs/deploy.md)."
)


def _passphrase_env(value: str) -> str:
    value = value.strip()
    if value and not _ENV_NAME.fullmatch(value):
        raise ValueError(f"« {value} » n'est pas un nom de variable d'environnement")
    return value


def _pkcs12_pairs(section: BaseModel, *pairs: tuple[str, str]) -> None:
    """A PKCS#12 file holds both the key and its certificate: given once (as the certificate
    or as the key), it stands for the other too."""
    for cert, key in pairs:
        cert_path, key_path = getattr(section, cert), getattr(section, key)
        for given, other in ((cert_path, key), (key_path, cert)):
            if given.lower().endswith((".p12", ".pfx")) and not getattr(section, other):
                setattr(section, other, given)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class RolesConfig(_Section):
    """Which roles this node plays (one process may play both)."""

    source: bool = Field(True, description="Rôle Source : reçoit les CR du RIS, publie les KOS.")
    conso: bool = Field(False, description="Rôle Conso : consultation des examens du DMP.")


class NodeConfig(_Section):
    """This node among the nodes of a site that share one database."""

    name: str = Field(
        "",
        max_length=64,
        description="Nom du nœud, unique parmi les nœuds d'un site et stable d'un démarrage à "
        "l'autre (il marque le travail qu'il tient et le journal d'audit) ; vide : le nom "
        "d'hôte de la machine.",
    )

    @field_validator("name")
    @classmethod
    def _hostname_by_default(cls, value: str) -> str:
        return value.strip() or socket.gethostname()[:64]


class SiteConfig(_Section):
    """Identity of the imaging site that runs this node."""

    name: str = Field("Site d'imagerie DRIMbox", description="Nom affiché de la structure.")
    structure_id: str = Field(
        "",
        description="Identifiant national de la structure (IDNST : OU des certificats ORG de "
        "[dmp], Identifiant_Structure du VIHF). Sans [[structures]], seuls les CR dont "
        "l'organisation (representedOrganization du responsable) est celle-ci sont publiés ; "
        "les autres sont mis de côté avec la raison.",
    )
    uid_root: str = Field(
        "1.2.250.1.999.9",
        description="Racine d'OID enregistrée du site : tous les UID créés (KOS) sont sous elle.",
    )
    public_base_url: str = Field(
        "http://127.0.0.1:8080",
        description="URL publique de la DRIMbox (son nom db… de la liste blanche) : base des "
        "RetrieveURL écrites dans les KOS.",
    )

    @field_validator("uid_root")
    @classmethod
    def _uid_root_is_oid(cls, value: str) -> str:
        parts = value.split(".")
        if not value or any(not p.isdigit() or (len(p) > 1 and p[0] == "0") for p in parts):
            raise ValueError(
                "doit être un OID (chiffres séparés par des points, sans zéro initial)"
            )
        if len(value) > 40:
            raise ValueError("trop long : 40 caractères au plus pour laisser la place aux UID")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("doit commencer par https:// (ou http:// en démonstration)")
        return value.rstrip("/")


class HttpConfig(_Section):
    """The peer-facing HTTP origin (the whitelist's `db` name): WADO-RS for DRIM-M peers over
    mutual TLS, /health and /status."""

    host: str = Field("127.0.0.1", description="Adresse d'écoute HTTP.")
    port: int = Field(8080, ge=0, le=65535, description="Port HTTP (0 : un port libre).")
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=16 * 1024,
        description="Taille maximale du corps d'une requête, sur les deux origines (refusée en "
        "413 pendant sa lecture) ; le lancement contextuel a sa propre limite de 16 Kio.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Délai pour recevoir les en-têtes d'une requête, sur les deux origines "
        "(secondes) : une connexion lente ou muette est fermée.",
    )
    status_allow: list[str] = Field(
        ["127.0.0.1/32", "::1/128"],
        description="Réseaux (CIDR) de la supervision locale autorisés à lire /status ; les "
        "autres clients ne le lisent qu'avec un certificat de DRIMbox de la liste blanche "
        "(403 sinon). /health répond à tous et ne dit rien d'autre que « ok ».",
    )

    insecure_plain_http: bool = Field(
        False,
        description="Servir l'origine des pairs en HTTP clair quand [trust] tls_cert est vide "
        "(démonstration, tests). Sans ce drapeau, la DRIMbox refuse de démarrer sans TLS : les "
        "images ne circulent jamais en clair entre DRIMbox.",
    )

    _split = field_validator("status_allow", mode="before")(_comma_separated)
    _status_networks = field_validator("status_allow")(_networks)


class ViewerConfig(_Section):
    """The user-facing HTTP origin (the whitelist's `vi` name): sign-in, the OHIF viewer at its
    root, the Conso and administration pages."""

    host: str = Field("127.0.0.1", description="Adresse d'écoute de la visionneuse.")
    port: int = Field(
        8081, ge=0, le=65535, description="Port de la visionneuse (le nom vi… de la liste blanche)."
    )
    public_url: str = Field(
        "http://127.0.0.1:8081",
        description="URL publique de la visionneuse, celle des liens IHEInvokeImageDisplay.",
    )
    ohif_dir: str = Field(
        "var/ohif", description="Dossier de l'application OHIF (installée par scripts/setup.sh)."
    )
    iid_professions: list[str] = Field(
        default_factory=lambda: ["10"],
        min_length=1,
        description="Professions (codes TRE_G15 transmis par Pro Santé Connect) autorisées à "
        "ouvrir les images par le lien du compte rendu (IHEInvokeImageDisplay), dans leur "
        "situation d'exercice (dans l'environnement : séparées par des virgules). Défaut : 10 "
        "(médecin), les professionnels à qui la matrice d'habilitation du DMP ouvre les comptes "
        "rendus d'imagerie ; un site peut ajouter 40 (chirurgien-dentiste) ou 50 (sage-femme). "
        "Pharmaciens (21) et infirmiers (60) sont refusés par défaut.",
    )

    tls_cert: str = Field(
        "",
        description="Certificat serveur (PEM, ou PKCS#12) pour que la visionneuse serve elle-même "
        "le HTTPS ; vide : HTTP, derrière un mandataire inverse qui termine le TLS.",
    )
    tls_key: str = Field("", description="Clé privée (PEM) de ce certificat.")
    key_passphrase_env: str = Field("", description=PASSPHRASE_ENV_DESCRIPTION)

    _split = field_validator("iid_professions", mode="before")(_comma_separated)
    _passphrase = field_validator("key_passphrase_env")(_passphrase_env)

    @model_validator(mode="after")
    def _pkcs12(self) -> ViewerConfig:
        _pkcs12_pairs(self, ("tls_cert", "tls_key"))
        return self

    @field_validator("iid_professions")
    @classmethod
    def _profession_codes(cls, values: list[str]) -> list[str]:
        for value in values:
            if not value.isdigit() or len(value) > 3:
                raise ValueError(f"code profession TRE_G15 invalide : « {value} » (ex. 10)")
        return values


class Hl7Config(_Section):
    """The MLLP listener that receives the RIS's reports."""

    host: str = Field("127.0.0.1", description="Adresse d'écoute MLLP.")
    port: int = Field(
        2575, ge=0, le=65535, description="Port MLLP (0 : un port libre choisi au démarrage)."
    )
    max_message_bytes: int = Field(
        20 * 1024 * 1024,
        ge=64 * 1024,
        description="Taille maximale d'un message HL7 (les CR avec PDF font ~325 ko).",
    )
    idle_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Fermeture d'une connexion MLLP inactive ou d'un message inachevé "
        "(secondes) ; le RIS se reconnecte.",
    )
    tls_cert: str = Field(
        "",
        description="Certificat serveur (PEM, ou PKCS#12) : MLLP sur TLS ; vide : MLLP en clair "
        "(réseau local du site).",
    )
    tls_key: str = Field("", description="Clé privée (PEM) de ce certificat.")
    key_passphrase_env: str = Field("", description=PASSPHRASE_ENV_DESCRIPTION)
    tls_client_ca: str = Field(
        "",
        description="Autorités (PEM) des certificats clients exigés du RIS (TLS mutuel) ; vide : "
        "pas de certificat client demandé.",
    )
    max_connections: int = Field(
        16,
        ge=1,
        description="Connexions MLLP simultanées au plus ; au-delà, la plus longtemps inactive "
        "est fermée (ou la nouvelle, si toutes travaillent).",
    )
    max_pending_bytes: int = Field(
        64 * 1024 * 1024,
        ge=64 * 1024,
        description="Mémoire totale des messages MLLP en cours de réception (octets, au moins "
        "max_message_bytes) ; au-delà, la connexion qui la dépasse reçoit un refus (AR) et est "
        "fermée, le RIS renverra.",
    )

    _passphrase = field_validator("key_passphrase_env")(_passphrase_env)

    @model_validator(mode="after")
    def _pending_holds_a_message(self) -> Hl7Config:
        if self.max_pending_bytes < self.max_message_bytes:
            raise ValueError(
                "max_pending_bytes doit être au moins max_message_bytes (un message entier)"
            )
        _pkcs12_pairs(self, ("tls_cert", "tls_key"))
        return self


class PacsConfig(_Section):
    """The site's PACS, queried by C-FIND and read by the chosen retrieve method."""

    host: str = Field("127.0.0.1", description="Hôte DICOM du PACS.")
    port: int = Field(104, ge=1, le=65535, description="Port DICOM du PACS.")
    called_aet: str = Field("PACS", max_length=16, description="AE Title du PACS.")
    calling_aet: str = Field("DRIMBOX", max_length=16, description="AE Title de la DRIMbox.")
    scp_host: str = Field(
        "127.0.0.1", description="Adresse d'écoute du SCP DICOM de la DRIMbox (0.0.0.0 : toutes)."
    )
    scp_port: int = Field(
        11112, ge=0, le=65535, description="Port du SCP DICOM de la DRIMbox (C-STORE, IOCM)."
    )
    scp_senders: list[str] = Field(
        default_factory=list,
        description="AE Titles autorisés à envoyer au SCP de la DRIMbox, en plus de celui du "
        "PACS (called_aet) ; toute autre association est refusée (une note de rejet IOCM "
        "retire un KOS du DMP).",
    )
    retrieve: Literal["wado-rs", "c-get", "c-move", "c-move-dcmtk"] = Field(
        "c-get",
        description="Méthode de récupération des images : c-get (par défaut, au rythme de "
        "dcmtk), c-move (C-MOVE vers le SCP de la DRIMbox, aussi rapide, pour un PACS qui "
        "refuse C-GET ; demande de déclarer calling_aet et scp_port dans le PACS), "
        "c-move-dcmtk (C-MOVE reçu par storescp de dcmtk ; demande de déclarer storescp_aet "
        "dans le PACS), ou wado-rs (la plus rapide quand le PACS offre DICOMweb, voir "
        "bench/RESULTS.md).",
    )
    storescp_aet: str = Field(
        "DRIMBOX_DCMTK",
        max_length=16,
        description="AE Title du storescp de dcmtk (retrieve = c-move-dcmtk) : seconde "
        "destination C-MOVE à déclarer dans le PACS (hôte de la DRIMbox, storescp_port).",
    )
    storescp_port: int = Field(
        11113,
        ge=1,
        le=65535,
        description="Port du storescp de dcmtk (retrieve = c-move-dcmtk), sur toutes les "
        "interfaces : à n'ouvrir qu'au PACS dans le pare-feu.",
    )
    dcmtk_dir: str = Field(
        "/usr/bin",
        description="Dossier des outils dcmtk storescp et movescu (retrieve = c-move-dcmtk).",
    )
    dicomweb_url: str = Field(
        "",
        description="Racine DICOMweb du PACS (pour retrieve = wado-rs), ex. http://pacs/dicom-web.",
    )
    dicomweb_ca_file: str = Field(
        "",
        description="Autorités (PEM) du DICOMweb du PACS quand il est en https ; vide : celles "
        "du système.",
    )
    tls: bool = Field(
        False,
        description="Associations DICOM vers le PACS sur TLS (DICOM PS3.15 B.1) ; le certificat "
        "du PACS doit nommer [pacs] host.",
    )
    tls_ca: str = Field(
        "",
        description="Autorités (PEM) du certificat TLS DICOM du PACS ; vide : celles du système.",
    )
    tls_cert: str = Field(
        "", description="Certificat client (PEM) présenté au PACS en TLS, s'il en exige un."
    )
    tls_key: str = Field("", description="Clé privée (PEM) de ce certificat client.")
    key_passphrase_env: str = Field("", description=PASSPHRASE_ENV_DESCRIPTION)
    scp_sender_hosts: list[str] = Field(
        default_factory=list,
        description="Réseaux (CIDR) ou adresses d'où le SCP de la DRIMbox accepte une "
        "association (le PACS) ; vide : toute adresse (les AE Titles restent vérifiés).",
    )
    timeout_s: float = Field(30.0, gt=0, description="Délai d'attente réseau DICOM (secondes).")
    max_pdu: int = Field(
        0, ge=0, description="Taille maximale de PDU reçue (octets, 0 = illimitée)."
    )

    @field_validator("called_aet", "calling_aet", "storescp_aet")
    @classmethod
    def _aet(cls, value: str) -> str:
        return _ae_title(value)

    @model_validator(mode="after")
    def _storescp_apart(self) -> PacsConfig:
        if self.retrieve != "c-move-dcmtk":
            return self
        if self.storescp_aet == self.calling_aet:
            raise ValueError(
                "storescp_aet doit différer de calling_aet : le PACS envoie à chaque AE Title "
                "une seule adresse"
            )
        if self.storescp_port == self.scp_port:
            raise ValueError("storescp_port doit différer de scp_port (le SCP de la DRIMbox)")
        return self

    @field_validator("scp_senders")
    @classmethod
    def _aets(cls, values: list[str]) -> list[str]:
        return [_ae_title(value) for value in values]

    _split_hosts = field_validator("scp_sender_hosts", mode="before")(_comma_separated)
    _hosts = field_validator("scp_sender_hosts")(_networks)
    _passphrase = field_validator("key_passphrase_env")(_passphrase_env)

    def scp_calling_aets(self) -> list[str]:
        """Who may open an association to the box's SCP: the PACS, and `scp_senders`."""
        return [self.called_aet, *self.scp_senders]


def _ae_title(value: str) -> str:
    if not value.strip() or "\\" in value or len(value) > 16:
        raise ValueError("AE Title vide ou invalide")
    return value


class ConsoConfig(_Section):
    """Behaviour of the Conso role."""

    export: Literal["c-store", "stow-rs"] = Field(
        "c-store",
        description="Export des examens vers le PACS local : c-store (DICOM) ou stow-rs "
        "(DICOMweb, vers [pacs] dicomweb_url).",
    )
    prefetch_exams: int = Field(
        4,
        ge=0,
        description="Examens préchargés à chaque lancement : l'examen demandé puis les "
        "antériorités les plus pertinentes (même modalité et région, les plus récentes "
        "d'abord) ; les autres sont récupérés à leur ouverture (0 : aucun préchargement).",
    )
    prefetch_max_bytes: int = Field(
        2_000_000_000,
        ge=0,
        description="Volume d'images préchargé au plus par lancement (octets), vérifié entre "
        "deux séries ; l'examen demandé est toujours récupéré en entier.",
    )
    launch_origins: list[str] = Field(
        default_factory=list,
        description="Origines (schéma://hôte[:port], ex. https://ris.exemple.fr) des pages du "
        "RIS/DPI qui postent le lancement contextuel (dans l'environnement : séparées par des "
        "virgules). Un lancement venu d'une autre origine, ou sans en-tête Origin ni Referer, "
        "affiche d'abord une page de confirmation nommant le patient : rien n'est demandé au DMP "
        "avant que l'utilisateur confirme. « null » : un RIS qui poste depuis un fichier local "
        "(à éviter : toute page en bac à sable s'annonce aussi « null »).",
    )

    _split = field_validator("launch_origins", mode="before")(_comma_separated)

    @field_validator("launch_origins")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        return [_origin(value) for value in values]


PACS_DESTINATION: Final = "PACS"
"""The name under which the site's PACS (`[pacs]`, `[conso] export`) is offered for export."""


class ExportDestinationConfig(_Section):
    """Another DICOM destination offered to Conso users for the export, besides the site's PACS
    (always offered first, and chosen by default): a workstation (C-STORE) or a DICOMweb STOW-RS
    endpoint. Repeat `[[export_destinations]]` for each; without any, exports go to the PACS."""

    name: str = Field(
        min_length=1,
        max_length=64,
        description="Nom proposé à l'utilisateur dans la liste « Exporter vers » (ex. « Poste de "
        "lecture salle 2 ») ; unique, différent de « PACS ».",
    )
    kind: Literal["c-store", "stow-rs"] = Field(
        "c-store", description="Protocole : c-store (DICOM) ou stow-rs (DICOMweb)."
    )
    host: str = Field("", description="Hôte DICOM de la destination (c-store).")
    port: int = Field(104, ge=1, le=65535, description="Port DICOM de la destination (c-store).")
    called_aet: str = Field("", max_length=16, description="AE Title de la destination (c-store).")
    calling_aet: str = Field(
        "", max_length=16, description="AE Title de la DRIMbox ; vide : [pacs] calling_aet."
    )
    url: str = Field(
        "", description="Racine DICOMweb de la destination (stow-rs), ex. http://poste/dicom-web."
    )
    ca_file: str = Field(
        "",
        description="Autorités (PEM) du serveur DICOMweb quand il est en https ; vide : celles "
        "du système.",
    )

    @model_validator(mode="after")
    def _complete(self) -> ExportDestinationConfig:
        if self.name.strip().casefold() == PACS_DESTINATION.casefold():
            raise ValueError(f"« {PACS_DESTINATION} » désigne déjà le PACS du site ([pacs])")
        if self.kind == "c-store" and not (self.host and self.called_aet):
            raise ValueError(f"« {self.name} » (c-store) demande host et called_aet")
        if self.kind == "stow-rs" and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"« {self.name} » (stow-rs) demande une url http(s)://")
        return self


class SourceConfig(_Section):
    """Behaviour of the Source pipeline."""

    images_wait_h: float = Field(
        24.0,
        gt=0,
        description="Durée pendant laquelle un CR attend ses images dans le PACS avant d'être "
        "refusé (heures).",
    )
    retry_initial_s: float = Field(
        10.0, gt=0, description="Premier délai avant nouvel essai (PACS injoignable)."
    )
    retry_max_s: float = Field(600.0, gt=0, description="Délai maximal entre deux essais.")
    poll_interval_s: float = Field(
        1.0, gt=0, description="Intervalle de scrutation de la file de traitement."
    )
    lease_s: float = Field(
        30.0,
        ge=3,
        description="Bail d'un travail en cours (CR, envoi au DMP) : renouvelé toutes les "
        "lease_s/3 secondes tant que le nœud travaille ; si le nœud meurt, un autre nœud le "
        "reprend après ce délai (voir docs/deploy.md pour la valeur minimale sûre).",
    )
    stale_work_s: float = Field(
        300.0,
        gt=0,
        description="Âge au-delà duquel un travail en attente (CR reçu, envoi au DMP) fait passer "
        "/status en alerte (secondes).",
    )
    peer_max_requests: int = Field(
        4,
        ge=1,
        description="Demandes WADO-RS traitées en même temps pour une même DRIMbox (son "
        "certificat) : au-delà, réponse 503 avec Retry-After, la DRIMbox redemande ensuite.",
    )
    max_requests: int = Field(
        16,
        ge=1,
        description="Demandes WADO-RS traitées en même temps pour toutes les DRIMbox : au-delà, "
        "réponse 503 avec Retry-After.",
    )
    busy_retry_after_s: int = Field(
        2,
        ge=1,
        le=60,
        description="Délai (Retry-After, secondes) indiqué aux DRIMbox refusées faute de place.",
    )
    images_recheck_s: list[float] = Field(
        default_factory=lambda: [300.0, 1800.0, 7200.0, 86400.0],
        description="Images arrivées en retard : délais (secondes après la publication) auxquels "
        "le PACS est relu ; si les instances de l'examen ont changé, le KOS est remplacé au DMP. "
        "Liste vide : pas de relecture (dans l'environnement : valeurs séparées par des virgules).",
    )

    _split = field_validator("images_recheck_s", mode="before")(_comma_separated)

    @field_validator("images_recheck_s")
    @classmethod
    def _positive_sorted(cls, value: list[float]) -> list[float]:
        if any(delay <= 0 for delay in value):
            raise ValueError("les délais de relecture doivent être positifs")
        return sorted(value)


class DmpConfig(_Section):
    """The national DMP (IHE XDS.b registry/repository) where the Source publishes its KOS."""

    base_url: str = Field(
        "",
        description="URL de base du DMP (les services /registry, /repository, /patients, "
        "/habilitations sont dessous). Vide : pas de publication (les KOS restent construits).",
    )
    timeout_s: float = Field(
        30.0, gt=0, description="Délai d'attente d'une requête DMP (secondes)."
    )
    tls_cert: str = Field(
        "", description="Certificat ORG d'authentification (PEM) présenté au DMP (TLS mutuel)."
    )
    tls_key: str = Field("", description="Clé privée (PEM) du certificat d'authentification.")
    tls_ca: str = Field(
        "",
        description="Autorités (PEM) pour vérifier le serveur du DMP ; vide : celles du système.",
    )
    signing_cert: str = Field(
        "", description="Certificat ORG de signature (PEM) : VIHF et document de signature XAdES."
    )
    signing_key: str = Field("", description="Clé privée (PEM) du certificat de signature.")
    key_passphrase_env: str = Field("", description=PASSPHRASE_ENV_DESCRIPTION)
    lps_id: str = Field("", description="Identifiant du logiciel (LPS_ID) enregistré au DMP.")
    lps_name: str = Field("DRIMbox", description="Nom du logiciel (LPS_Nom).")
    lps_version: str = Field("0.1.0", description="Version du logiciel (LPS_Version).")
    lps_homologation_id: str = Field(
        "", description="Numéro d'homologation DMP du logiciel (LPS_ID_HOMOLOGATION_DMP)."
    )
    vihf_version: str = Field("3.0", description="Version du VIHF (jeton SAML).")
    activity_sector: str = Field(
        "SA07^1.2.250.1.71.4.2.4",
        description="Secteur d'activité du VIHF (code^système), ex. SA07 (cabinet), SA01 (ES).",
    )
    signature_algorithm: Literal["rsa-sha1", "rsa-sha256", "rsa-sha512"] = Field(
        "rsa-sha1",
        description="Algorithme de signature du VIHF et du XAdES. rsa-sha1 par défaut : c'est "
        "celui de la requête acceptée par le DMP (XDS.xml) ; rsa-sha256 si le DMP l'accepte.",
    )
    digest_algorithm: Literal["sha1", "sha256", "sha512"] = Field(
        "sha1",
        description="Algorithme d'empreinte des signatures (sha1 comme XDS.xml ; sha256 possible).",
    )
    retry_initial_s: float = Field(
        30.0, gt=0, description="Premier délai avant nouvel essai quand le DMP est injoignable."
    )
    retry_max_s: float = Field(3600.0, gt=0, description="Délai maximal entre deux essais.")

    @field_validator("base_url")
    @classmethod
    def _base(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("doit commencer par https:// (ou http:// pour un simulateur local)")
        return value.rstrip("/")

    _passphrase = field_validator("key_passphrase_env")(_passphrase_env)

    @model_validator(mode="after")
    def _pkcs12(self) -> DmpConfig:
        _pkcs12_pairs(self, ("tls_cert", "tls_key"), ("signing_cert", "signing_key"))
        return self


StructureKind = Literal["FINESS_EJ", "FINESS_EG", "SIRET", "RPPS"]


class StructureConfig(_Section):
    """One structure (legal or geographic entity) this box publishes for, with its IGC-Santé
    ORG certificates. Repeat `[[structures]]` for each; without any, the structure is the one of
    `[site]` with the `[dmp]` certificates."""

    id: str = Field(
        description="Identifiant national de la structure (IDNST, OU de ses certificats ORG, "
        "Identifiant_Structure du VIHF) : 1 + FINESS, 3 + SIRET, 4 + identifiant de cabinet."
    )
    kind: StructureKind = Field(
        "FINESS_EG",
        description="Nature de l'identifiant : FINESS_EJ (entité juridique), FINESS_EG "
        "(entité géographique), SIRET ou RPPS (cabinet libéral).",
    )
    name: str = Field(description="Nom de la structure (authorInstitution).")
    report_ids: list[str] = Field(
        default_factory=list,
        description="Autres identifiants sous lesquels les CR du RIS désignent cette structure "
        "(representedOrganization du CDA, PRT-8 du message HL7), ex. le FINESS sans préfixe.",
    )
    tls_cert: str = Field(
        description="Certificat ORG AUTH (PEM) de la structure : TLS mutuel avec le DMP."
    )
    tls_key: str = Field(description="Clé privée (PEM) du certificat ORG AUTH.")
    signing_cert: str = Field(
        description="Certificat ORG SIGN (PEM) de la structure : VIHF et document de signature."
    )
    signing_key: str = Field(description="Clé privée (PEM) du certificat ORG SIGN.")
    key_passphrase_env: str = Field("", description=PASSPHRASE_ENV_DESCRIPTION)
    activity_sector: str = Field(
        "",
        description="Secteur d'activité du VIHF (code^système) ; vide : [dmp] activity_sector.",
    )
    content_type: str = Field(
        "",
        description="contentTypeCode par défaut des lots (code^système^libellé) quand la "
        "rencontre du CR ne le donne pas ; vide : celui de XDS.xml (04, 1.2.250.1.213.2.2).",
    )

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not value.strip() or not value.strip().isalnum():
            raise ValueError("identifiant de structure vide ou non alphanumérique")
        return value.strip()

    _passphrase = field_validator("key_passphrase_env")(_passphrase_env)


class PscConfig(_Section):
    """Pro Santé Connect (OpenID Connect): how users sign in, and how peers' tokens are checked."""

    client_id: str = Field(
        "",
        description="Identifiant client de la DRIMbox chez PSC (le CN du certificat tls_cert).",
    )
    tls_cert: str = Field(
        "",
        description="Certificat IGC-Santé ORG AUTH CLI (PEM) de la DRIMbox auprès de PSC : "
        "CN = client_id, OU = SIRET de l'opérateur. Authentification du client par TLS mutuel "
        "(RFC 8705, tls_client_auth), le mode de production.",
    )
    tls_key: str = Field("", description="Clé privée (PEM) du certificat tls_cert.")
    key_passphrase_env: str = Field("", description=PASSPHRASE_ENV_DESCRIPTION)
    client_secret: str = Field(
        "",
        description="Secret client PSC, pour les bacs à sable qui l'utilisent encore (inutile "
        "avec tls_cert ; préférer DRIMBOX_PSC__CLIENT_SECRET à ce fichier).",
    )
    redirect_uri: str = Field(
        "", description="URL de retour après connexion, ex. https://db.exemple.fr/auth/callback."
    )
    discovery_url: str = Field(
        "",
        description="Document de découverte (chemin propre à PSC : …/realms/esante-wallet/"
        ".well-known/wallet-openid-configuration). Sinon, renseigner chaque point d'accès.",
    )
    issuer: str = Field("", description="Émetteur attendu des jetons (iss).")
    authorization_endpoint: str = Field("", description="Point d'accès d'autorisation.")
    token_endpoint: str = Field("", description="Point d'accès des jetons.")
    userinfo_endpoint: str = Field("", description="Point d'accès userinfo.")
    jwks_uri: str = Field("", description="Clés publiques (JWKS).")
    introspection_endpoint: str = Field(
        "", description="Introspection (vérification des jetons des pairs)."
    )
    end_session_endpoint: str = Field("", description="Déconnexion.")
    scope: str = Field("openid scope_all", description="Portée demandée.")
    acr_values: str = Field("eidas1", description="Niveau d'authentification exigé.")
    token_endpoint_auth_method: Literal[
        "auto", "tls_client_auth", "client_secret_basic", "client_secret_post"
    ] = Field(
        "auto",
        description="Authentification du client aux points d'accès jetons et introspection ; "
        "auto : tls_client_auth avec tls_cert, sinon client_secret_basic ; tls_client_auth "
        "sans tls_cert : le certificat ORG d'authentification [dmp] tls_cert / tls_key.",
    )
    use_pkce: bool = Field(True, description="PKCE (S256) pour le flux code.")
    leeway_s: int = Field(30, ge=0, description="Tolérance d'horloge pour exp/iat (secondes).")
    timeout_s: float = Field(10.0, gt=0, description="Délai d'attente des appels à PSC.")
    ca_file: str = Field("", description="Autorités (PEM) du serveur PSC ; vide : le système.")
    introspection_cache_s: float = Field(
        30.0, ge=0, description="Durée de cache d'une introspection réussie (secondes)."
    )
    peer_clients: list[str] = Field(
        default_factory=list,
        description="Clients PSC (client_id) des DRIMbox de l'espace de confiance dont les "
        "jetons d'accès sont acceptés des pairs (dans l'environnement : séparés par des "
        "virgules) ; vide : seul le client_id de cette DRIMbox. Un jeton délivré à toute autre "
        "application PSC est refusé.",
    )
    session_max_h: float = Field(12.0, gt=0, description="Durée maximale d'une session (heures).")

    _split = field_validator("peer_clients", mode="before")(_comma_separated)
    _passphrase = field_validator("key_passphrase_env")(_passphrase_env)

    @model_validator(mode="after")
    def _pkcs12(self) -> PscConfig:
        _pkcs12_pairs(self, ("tls_cert", "tls_key"))
        return self

    @property
    def configured(self) -> bool:
        return bool(self.client_id and (self.discovery_url or self.token_endpoint))

    @property
    def accepted_peer_clients(self) -> list[str]:
        """The PSC clients whose access tokens peers may present (fail closed: never "any")."""
        return self.peer_clients or [self.client_id]


class AdminConfig(_Section):
    """Who may use the administration console (signed in with Pro Santé Connect)."""

    users: list[str] = Field(
        default_factory=list,
        description="SubjectNameID PSC (RPPS…) des administrateurs de la DRIMbox (dans "
        "l'environnement : séparés par des virgules).",
    )

    _split = field_validator("users", mode="before")(_comma_separated)


class TrustConfig(_Section):
    """The trust space: the ANS whitelist and the box's mutual TLS material for its peers."""

    whitelist_source: str = Field(
        "",
        description="Liste blanche DRIM-M : URL (https://…) ou fichier. Vide : aucun pair admis.",
    )
    anchors: list[str] = Field(
        default_factory=list,
        description="Certificats (PEM) des autorités IGC-Santé auxquelles le signataire de la "
        "liste doit se rattacher (dans l'environnement : chemins séparés par des virgules).",
    )
    expected_signer_cn: str = Field(
        "Liste Blanche DRIM-M", description="CN attendu du signataire de la liste (vide : tout CN)."
    )
    expected_signer_ou: str = Field(
        "318751275100020",
        description="OU attendu du signataire (SIRET de l'ANS ; vide : toute OU).",
    )
    allow_sha1: bool = Field(False, description="Accepter une liste signée en SHA-1 (déconseillé).")
    refresh_interval_s: float = Field(
        3600.0, gt=0, description="Intervalle de rafraîchissement de la liste (secondes)."
    )
    state_dir: str = Field(
        "var/trust", description="Dossier où la dernière liste valide est conservée."
    )
    tls_cert: str = Field(
        "", description="Certificat (PEM) de la DRIMbox pour le TLS mutuel avec ses pairs."
    )
    tls_key: str = Field("", description="Clé privée (PEM) de ce certificat.")
    key_passphrase_env: str = Field("", description=PASSPHRASE_ENV_DESCRIPTION)
    tls_ca: str = Field(
        "", description="Autorités (PEM) qui émettent les certificats des pairs (IGC-Santé)."
    )
    crl_urls: list[str] = Field(
        default_factory=list,
        description="Listes de révocation (CRL) IGC-Santé à suivre en plus de celles indiquées "
        "dans les certificats : URL (http://…) ou fichiers (dans l'environnement : séparées par "
        "des virgules). Un pair ou un signataire de liste blanche révoqué est refusé.",
    )
    crl_from_certificates: bool = Field(
        True,
        description="Suivre aussi les points de distribution de CRL écrits dans les certificats "
        "(autorités, certificats de la DRIMbox, signataire de la liste, pairs rencontrés).",
    )
    crl_refresh_interval_s: float = Field(
        3600.0, gt=0, description="Intervalle de rafraîchissement des CRL (secondes)."
    )
    expiry_warning_days: int = Field(
        30,
        ge=1,
        description="Les certificats de la DRIMbox (DMP, signature, pairs, PSC) qui expirent "
        "dans moins de ce nombre de jours sont signalés (attention) sur /status et la console.",
    )

    _split = field_validator("anchors", "crl_urls", mode="before")(_comma_separated)
    _passphrase = field_validator("key_passphrase_env")(_passphrase_env)

    @model_validator(mode="after")
    def _pkcs12(self) -> TrustConfig:
        _pkcs12_pairs(self, ("tls_cert", "tls_key"))
        return self


class StoreConfig(_Section):
    """Where the node keeps its state."""

    database_url: str = Field(
        "sqlite:///var/drimbox.db",
        description="Base de données : sqlite:///chemin ou postgresql://utilisateur@hôte/base.",
    )
    cache_dir: str = Field("var/cache", description="Dossier du cache d'images.")
    cache_max_bytes: int = Field(
        10 * 1024**3, ge=0, description="Taille maximale du cache d'images (octets)."
    )
    secret_key_file: str = Field(
        "var/secret.key",
        description="Clé secrète du nœud (chiffrement des jetons de session) : créée au premier "
        "démarrage ; la même sur tous les nœuds d'un site.",
    )
    cache_ttl_h: float = Field(
        72.0,
        gt=0,
        description="Durée de conservation d'une série dans le cache (heures) : au-delà, elle "
        "est relue du PACS ou de la Source, et la purge de rétention ([retention]) l'efface.",
    )
    cache_protect_viewed_min: float = Field(
        60.0,
        ge=0,
        description="Une série consultée depuis moins de ce délai (minutes) n'est retirée du "
        "cache qu'en dernier, et jamais pour le préchargement d'une autre consultation ; les "
        "séries préchargées jamais ouvertes partent les premières.",
    )

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("doit commencer par sqlite:/// ou postgresql://")
        return value


class RetentionConfig(_Section):
    """How long the box keeps what it stores, and the purge that applies it (run by every node
    every `purge_interval_h`, one node at a time; `drimbox retention purge` by hand). What is
    still needed is never purged: the report version in force (its CDA and KOS, to replace or
    delete it in the DMP later) and work under way stay whatever their age; a purged row keeps
    its metadata (ids, dates, state, DMP entry), only the documents go. The image cache has its
    own age, `[store] cache_ttl_h`, applied by the same purge. See docs/deploy.md."""

    hl7_days: float = Field(
        90.0,
        gt=0,
        description="Contenu brut des messages HL7 reçus (le CR du RIS tel quel) : effacé après "
        "ce délai (jours) une fois leur CR traité ; la trace du message (date, émetteur, type, "
        "identifiant, acquittement) reste.",
    )
    superseded_reports_days: float = Field(
        365.0,
        gt=0,
        description="CDA et KOS des versions de CR qui ne sont plus en vigueur (remplacées, "
        "retirées du DMP, refusées, arrivées après une version plus récente) : effacés ce délai "
        "(jours) après leur dernier changement ; la version publiée en vigueur est gardée.",
    )
    conso_documents_h: float = Field(
        24.0,
        gt=0,
        description="Copies Conso des documents du DMP (KOS et CR lus par ITI-43 pour un "
        "lancement) : supprimées ce délai (heures) après l'expiration du lancement.",
    )
    sessions_h: float = Field(
        24.0,
        gt=0,
        description="Sessions des utilisateurs (jetons PSC chiffrés) : supprimées ce délai "
        "(heures) après leur fin ou leur expiration ; les connexions PSC inachevées, dès "
        "qu'elles expirent.",
    )
    audit_days: float = Field(
        3 * 365.0,
        ge=365,
        description="Piste d'audit des accès aux données de santé : conservée ce délai (jours, "
        "un an au moins ; à fixer avec le délégué à la protection des données du site). Elle "
        "n'est jamais purgée par le nœud (son rôle ne peut pas y supprimer) : « drimbox audit "
        "purge » avec le compte propriétaire du schéma.",
    )
    purge_interval_h: float = Field(
        6.0,
        gt=0,
        description="Intervalle entre deux purges de rétention automatiques (heures) ; un seul "
        "nœud du site la fait à la fois.",
    )
    batch_rows: int = Field(
        100,
        ge=1,
        description="Lignes traitées par transaction de purge (de courtes transactions : le "
        "nœud continue de servir pendant une longue purge).",
    )


class MetricsConfig(_Section):
    """The Prometheus endpoint (`/metrics`), on its own port, loopback by default: it names no
    patient, but tells the box's activity, so only the monitoring may read it."""

    enabled: bool = Field(
        False, description="Sert /metrics (Prometheus) sur host:port (installation : activé)."
    )
    host: str = Field(
        "127.0.0.1", description="Adresse d'écoute de /metrics (0.0.0.0 : toutes, voir allow)."
    )
    port: int = Field(9464, ge=0, le=65535, description="Port de /metrics (0 : un port libre).")
    allow: list[str] = Field(
        ["127.0.0.1/32", "::1/128"],
        description="Réseaux (CIDR) autorisés à lire /metrics ; les autres reçoivent 403.",
    )
    probe_interval_s: float = Field(
        30.0,
        gt=0,
        description="Intervalle minimal entre deux vérifications de joignabilité du DMP et du "
        "PACS (secondes) ; les lectures plus rapprochées reprennent la dernière.",
    )

    _split = field_validator("allow", mode="before")(_comma_separated)
    _allow_networks = field_validator("allow")(_networks)


class LogConfig(_Section):
    """The node's log: one line per event, to standard error (the journal under systemd)."""

    format: Literal["text", "json"] = Field(
        "text",
        description="text : lisible ; json : un objet JSON par ligne (compte rendu, examen, "
        "pair dans des champs à part), pour un collecteur de journaux.",
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Niveau minimal des messages journalisés."
    )


class ChecksConfig(_Section):
    """Speed tests and the site acceptance check (`drimbox pacs speedtest`, `drimbox peer
    speedtest`, `drimbox aptitude`)."""

    pacs_study: str = Field(
        "",
        description="Examen (Study Instance UID) récupéré par le test de débit du PACS de la "
        "vérification d'aptitude ; vide : le plus récent du PACS.",
    )
    peer_token: str = Field(
        "",
        description="Jeton d'accès PSC de test pour les mesures vers les autres DRIMbox "
        "(préférer DRIMBOX_CHECKS__PEER_TOKEN à ce fichier) ; sinon celui de l'opérateur "
        "(--token).",
    )
    peers: list[str] = Field(
        default_factory=list,
        description="Noms db… des DRIMbox de la liste blanche dont la vérification d'aptitude "
        "teste l'accès WADO-RS (dans l'environnement : séparés par des virgules).",
    )
    dmp_test_patient: str = Field(
        "",
        description="INS du patient de test de l'environnement DMP, pour la requête sans effet "
        "de la vérification d'aptitude ; vide : requête sur un patient inexistant.",
    )
    dmp_test_patient_oid: str = Field(
        "1.2.250.1.213.1.4.10",
        description="OID de l'INS de ce patient : INS-NIR de test (1.2.250.1.213.1.4.10) par "
        "défaut, 1.2.250.1.213.1.4.8 pour un INS-NIR.",
    )
    slow_ratio: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Un débit mesuré sous cette fraction du précédent est signalé sur la page "
        "d'état de la console.",
    )
    cache_test_bytes: int = Field(
        64 * 1024**2,
        ge=1024**2,
        description="Volume écrit dans le cache pour en mesurer la vitesse d'écriture (octets).",
    )
    cache_min_write_bps: int = Field(
        20_000_000,
        ge=0,
        description="Vitesse d'écriture du cache en dessous de laquelle la vérification "
        "d'aptitude avertit (octets par seconde).",
    )

    _split = field_validator("peers", mode="before")(_comma_separated)


class Config(_Section):
    """A whole node configuration (`drimbox.toml`)."""

    roles: RolesConfig = RolesConfig()
    node: NodeConfig = NodeConfig()
    site: SiteConfig = SiteConfig()
    http: HttpConfig = HttpConfig()
    viewer: ViewerConfig = ViewerConfig()
    hl7: Hl7Config = Hl7Config()
    pacs: PacsConfig = PacsConfig()
    source: SourceConfig = SourceConfig()
    conso: ConsoConfig = ConsoConfig()
    dmp: DmpConfig = DmpConfig()
    psc: PscConfig = PscConfig()
    admin: AdminConfig = AdminConfig()
    trust: TrustConfig = TrustConfig()
    store: StoreConfig = StoreConfig()
    retention: RetentionConfig = RetentionConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    checks: ChecksConfig = ChecksConfig()
    structures: list[StructureConfig] = []
    export_destinations: list[ExportDestinationConfig] = []

    @model_validator(mode="after")
    def _structures_are_distinct(self) -> Config:
        seen: dict[str, str] = {}
        for structure in self.structures:
            for name in (structure.id, *structure.report_ids):
                if name in seen and seen[name] != structure.id:
                    raise ValueError(
                        f"structures : l'identifiant « {name} » désigne deux structures "
                        f"({seen[name]} et {structure.id})"
                    )
                if name == structure.id and name in seen:
                    raise ValueError(f"structures : la structure « {name} » est déclarée deux fois")
                seen[name] = structure.id
        return self

    @model_validator(mode="after")
    def _destinations_are_distinct(self) -> Config:
        names = [d.name.strip().casefold() for d in self.export_destinations]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"export_destinations : la destination « {twice[0]} » est déclarée deux fois"
            )
        return self

    @model_validator(mode="after")
    def _stow_needs_an_url(self) -> Config:
        if self.conso.export == "stow-rs" and not self.pacs.dicomweb_url:
            raise ValueError("conso.export = stow-rs demande [pacs] dicomweb_url")
        if self.pacs.retrieve == "wado-rs" and not self.pacs.dicomweb_url:
            raise ValueError("pacs.retrieve = wado-rs demande [pacs] dicomweb_url")
        return self

    def resolve_paths(self, base: Path) -> Config:
        """Relative paths in the file are relative to the file's folder, not to the cwd."""
        store = self.store.model_copy()
        url = store.database_url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            rel = url.removeprefix("sqlite:///")
            if rel and rel != ":memory:":
                store.database_url = "sqlite:///" + str((base / rel).resolve())
        store.cache_dir = str((base / store.cache_dir).resolve())
        store.secret_key_file = str((base / store.secret_key_file).resolve())
        viewer = self.viewer.model_copy()
        viewer.ohif_dir = str((base / viewer.ohif_dir).resolve())
        dmp = self.dmp.model_copy()
        for key in ("tls_cert", "tls_key", "tls_ca", "signing_cert", "signing_key"):
            value = getattr(dmp, key)
            if value:
                setattr(dmp, key, str((base / value).resolve()))
        trust = self.trust.model_copy()
        trust.anchors = [str((base / anchor).resolve()) for anchor in trust.anchors]
        trust.state_dir = str((base / trust.state_dir).resolve())
        for key in ("tls_cert", "tls_key", "tls_ca"):
            if getattr(trust, key):
                setattr(trust, key, str((base / getattr(trust, key)).resolve()))
        source = trust.whitelist_source
        if source and "://" not in source:
            trust.whitelist_source = str((base / source).resolve())
        psc = self.psc.model_copy()
        for key in ("tls_cert", "tls_key", "ca_file"):
            if getattr(psc, key):
                setattr(psc, key, str((base / getattr(psc, key)).resolve()))
        pacs = self.pacs.model_copy()
        if pacs.dicomweb_ca_file:
            pacs.dicomweb_ca_file = str((base / pacs.dicomweb_ca_file).resolve())
        structures = []
        for structure in self.structures:
            paths = ("tls_cert", "tls_key", "signing_cert", "signing_key")
            structures.append(
                structure.model_copy(
                    update={k: str((base / getattr(structure, k)).resolve()) for k in paths}
                )
            )
        destinations = [
            d.model_copy(update={"ca_file": str((base / d.ca_file).resolve())}) if d.ca_file else d
            for d in self.export_destinations
        ]
        return self.model_copy(
            update={
                "export_destinations": destinations,
                "store": store,
                "dmp": dmp,
                "viewer": viewer,
                "trust": trust,
                "psc": psc,
                "pacs": pacs,
                "structures": structures,
            }
        )


def _passphrase_variables(data: Mapping[str, Any], environ: Mapping[str, str]) -> set[str]:
    """The variables named by `key_passphrase_env` keys (file or environment): they hold
    passphrases, not configuration, even when their name starts with DRIMBOX_."""
    sections = [v for v in data.values() if isinstance(v, dict)]
    sections += [t for v in data.values() if isinstance(v, list) for t in v if isinstance(t, dict)]
    names = {str(s.get("key_passphrase_env", "")) for s in sections}
    names |= {v for k, v in environ.items() if k.lower().endswith("__key_passphrase_env")}
    return names - {""}


def _env_overrides(
    environ: Mapping[str, str], skip: set[str] | frozenset[str] = frozenset()
) -> tuple[dict[str, dict[str, str]], list[str]]:
    overrides: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_CONFIGURATION or name in skip:
            continue
        key = name.removeprefix(ENV_PREFIX).lower()
        section, sep, field = key.partition("__")
        if not sep or not field:
            problems.append(f"{name} : attendu DRIMBOX_<SECTION>__<CLÉ>, ex. DRIMBOX_PACS__PORT")
            continue
        overrides.setdefault(section, {})[field] = value
    return overrides, problems


def _merge(data: dict[str, Any], overrides: dict[str, dict[str, str]]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for section, values in overrides.items():
        target = merged.setdefault(section, {})
        if isinstance(target, dict):
            target.update(values)
    return merged


def _describe(error: Any) -> str:
    location = ".".join(str(p) for p in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{location} : clé inconnue"
    if kind in ("int_parsing", "int_type"):
        return f"{location} : doit être un nombre entier (reçu « {error.get('input')} »)"
    if kind in ("float_parsing", "float_type"):
        return f"{location} : doit être un nombre (reçu « {error.get('input')} »)"
    if kind in ("bool_parsing", "bool_type"):
        return f"{location} : doit être true ou false (reçu « {error.get('input')} »)"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{location} : valeur « {error.get('input')} » non admise (attendu : {expected})"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than"):
        return f"{location} : valeur hors limites (reçu « {error.get('input')} »)"
    if kind == "model_type" or kind == "dict_type":
        return f"{location} : doit être une section [{location}]"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{location} : {message}" if location else message


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load a node's configuration: defaults, then the TOML file, then the environment."""
    environ = os.environ if environ is None else environ
    source = str(path) if path else "configuration par défaut"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(source, ["fichier introuvable"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, [f"syntaxe TOML invalide : {exc}"]) from None
    overrides, problems = _env_overrides(environ, _passphrase_variables(data, environ))
    try:
        config = Config.model_validate(_merge(data, overrides))
    except ValidationError as exc:
        problems += [_describe(e) for e in exc.errors()]
        raise ConfigError(source, problems) from None
    if problems:
        raise ConfigError(source, problems)
    return config.resolve_paths(path.parent if path else Path.cwd())


LIST_SECTIONS: Final[dict[str, type[BaseModel]]] = {
    "structures": StructureConfig,
    "export_destinations": ExportDestinationConfig,
}
"""Top-level keys that are lists of tables (`[[name]]`), with the model of one table."""


def reference_markdown() -> str:
    """The configuration reference, generated from the model (docs/configuration.md)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated by `drimbox config reference` from the configuration model: do not edit.",
        "Every key can be overridden by the environment variable `DRIMBOX_<SECTION>__<KEY>`;",
        "descriptions are in French, as the site's IT staff read them.",
        "",
    ]
    for section, field in Config.model_fields.items():
        model = field.annotation
        heading = f"[{section}]"
        if section in LIST_SECTIONS:  # a list of tables
            model, heading = LIST_SECTIONS[section], f"[[{section}]]"
        assert isinstance(model, type) and issubclass(model, BaseModel)
        lines += [f"## {heading}", "", (model.__doc__ or "").strip(), ""]
        lines += ["| key | default | description |", "| --- | --- | --- |"]
        for key, info in model.model_fields.items():
            default = info.get_default(call_default_factory=True)
            if info.is_required():
                default = "(obligatoire)"
            shown = f"`{default!r}`" if default not in ("", None, [], "(obligatoire)") else "—"
            if info.is_required():
                shown = "obligatoire"
            description = (info.description or "").replace("|", "\\|")
            lines.append(f"| `{key}` | {shown} | {description} |")
        lines.append("")
    return "\n".join(lines)
