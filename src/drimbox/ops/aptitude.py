"""The site acceptance check (vérification d'aptitude, `drimbox aptitude`): one run on the site's
node that proves the installation works, and the report the site files as its acceptance record.

Owns the list of checks, each verdict (OK / warning / failure) with its French explanation and
what to do, and the report's data (`AptitudeReport`: JSON for automation, HTML through
`drimbox.ops.report`). Every check uses the box's own code paths — the configuration loader, the
database's migrations, the whitelist store, the PACS client and the speed test, the DMP client
with the structure's certificates, the PSC client, the peers' WADO-RS client — and changes
nothing but what a speed test records. A check that crashes is a failure with its reason, never a
traceback.
"""

from __future__ import annotations

import email.utils
import math
import os
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import httpx
from cryptography import x509

from drimbox import __version__
from drimbox.config import Config
from drimbox.french import french_number, french_size
from drimbox.http.tlspolicy import client_context
from drimbox.trust.keys import KeyFileError, load_certificate, load_key_pair

Status = Literal["ok", "warning", "failure"]
STATUS_LABELS: Final[dict[str, str]] = {"ok": "OK", "warning": "Avertissement", "failure": "Échec"}
EXPIRY_WARNING_DAYS: Final = 30
WHITELIST_MAX_AGE_DAYS: Final = 30
CLOCK_WARNING_S: Final = 5.0
CLOCK_FAILURE_S: Final = 60.0  # VIHF assertions are refused beyond a minute or so of skew
MIN_FREE_BYTES: Final = 1024**3
# A well-formed INS no patient has: the harmless query when no test patient is configured.
NO_PATIENT_INS: Final = "199990000000000"
PROBE_REFRESH_TOKEN: Final = "verification-aptitude-drimbox"


@dataclass
class Check:
    """One verdict of the report."""

    key: str  # stable identifier, e.g. "pacs.echo"
    group: str  # French section of the report
    title: str
    status: Status
    message: str  # what was found (French)
    action: str = ""  # what to do about it (French; empty when OK)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return STATUS_LABELS[self.status]


@dataclass
class AptitudeReport:
    site_name: str
    structure_id: str
    db_url: str
    viewer_url: str
    roles: list[str]
    host: str
    version: str
    at: datetime
    checks: list[Check]

    @property
    def status(self) -> Status:
        statuses = {c.status for c in self.checks}
        return "failure" if "failure" in statuses else "warning" if "warning" in statuses else "ok"

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "failure"]

    def count(self, status: Status) -> int:
        return sum(c.status == status for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "site": {
                "name": self.site_name,
                "structure_id": self.structure_id,
                "db": self.db_url,
                "vi": self.viewer_url,
                "roles": self.roles,
                "host": self.host,
            },
            "version": self.version,
            "at": self.at.isoformat(),
            "status": self.status,
            "checks": [asdict(c) for c in self.checks],
        }


class _Checks:
    """Collects the verdicts; `run` turns an unexpected exception into a failure."""

    def __init__(self) -> None:
        self.items: list[Check] = []

    def add(
        self,
        key: str,
        group: str,
        title: str,
        status: Status,
        message: str,
        action: str = "",
        *,
        figures: dict[str, Any] | None = None,
    ) -> Check:
        check = Check(
            key, group, title, status, message, action if status != "ok" else "", figures or {}
        )
        self.items.append(check)
        return check

    def run(self, key: str, group: str, title: str, check: Callable[[], Check | None]) -> None:
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - a verdict, never a traceback
            self.add(
                key,
                group,
                title,
                "failure",
                f"vérification interrompue : {exc}",
                "Corrigez la cause indiquée puis relancez la vérification.",
            )


def run_aptitude(config: Config, *, now: Callable[[], datetime] | None = None) -> AptitudeReport:
    """Every check, in the order of the report."""
    clock = now or (lambda: datetime.now(UTC))
    checks = _Checks()
    _configuration(checks, config)
    db = _database(checks, config)
    _certificates(checks, config, clock())
    store = _whitelist(checks, config, clock())
    _own_entry(checks, config, store)
    _pacs(checks, config, db)
    _dmp(checks, config)
    _psc(checks, config)
    _peers(checks, config, store)
    _cache(checks, config)
    if db is not None:
        db.dispose()
    roles = [name for name, on in config.roles.model_dump().items() if on]
    return AptitudeReport(
        site_name=config.site.name,
        structure_id=config.site.structure_id,
        db_url=config.site.public_base_url,
        viewer_url=config.viewer.public_url,
        roles=roles,
        host=socket.gethostname(),
        version=__version__,
        at=clock(),
        checks=checks.items,
    )


def invalid_configuration(source: str, problems: list[str]) -> AptitudeReport:
    """The report when the configuration cannot even be loaded: that one failure."""
    check = Check(
        "config",
        "Configuration",
        "Fichier de configuration",
        "failure",
        f"configuration invalide ({source}) : " + " ; ".join(problems),
        "Corrigez chaque clé citée (drimbox config check FICHIER) puis relancez.",
    )
    return AptitudeReport(
        "", "", "", "", [], socket.gethostname(), __version__, datetime.now(UTC), [check]
    )


# -- configuration and database ------------------------------------------------------------------


def _configuration(checks: _Checks, config: Config) -> None:
    group = "Configuration"
    missing = [
        label
        for label, value in (
            ("[site] structure_id", config.site.structure_id),
            ("[trust] whitelist_source", config.trust.whitelist_source),
            ("[trust] tls_cert", config.trust.tls_cert),
            ("[dmp] base_url", config.dmp.base_url),
            ("[psc] client_id", config.psc.client_id),
        )
        if not value
    ]
    roles = ", ".join(n for n, on in config.roles.model_dump().items() if on) or "aucun"
    if missing:
        checks.add(
            "config",
            group,
            "Fichier de configuration",
            "failure",
            f"configuration valide mais incomplète pour DRIM-M : {', '.join(missing)}",
            "Renseignez ces clés (docs/configuration.md).",
            figures={"roles": roles},
        )
    elif not config.site.public_base_url.startswith("https://"):
        checks.add(
            "config",
            group,
            "Fichier de configuration",
            "warning",
            f"[site] public_base_url n'est pas en https ({config.site.public_base_url})",
            "Les autres DRIMbox n'appellent qu'en https : corrigez l'URL publique.",
        )
    else:
        checks.add(
            "config",
            group,
            "Fichier de configuration",
            "ok",
            f"configuration valide et complète (rôles : {roles})",
        )


def _database(checks: _Checks, config: Config) -> Any:
    from drimbox.db import Database

    group, title = "Base de données", "Base joignable, schéma à jour"
    try:
        db = Database(config.store.database_url)
        current, heads = db.schema_revisions()
    except Exception as exc:  # noqa: BLE001 - reported
        checks.add(
            "database",
            group,
            title,
            "failure",
            f"base inaccessible : {exc}",
            "Vérifiez [store] database_url, le serveur et les droits.",
        )
        return None
    if current == heads:
        checks.add(
            "database", group, title, "ok", f"schéma à jour (révision {', '.join(sorted(heads))})"
        )
        return db
    if not current:
        message = "base vide : le schéma n'a jamais été créé"
    else:
        message = f"schéma en révision {', '.join(sorted(current))}, attendu {', '.join(heads)}"
    checks.add(
        "database",
        group,
        title,
        "failure",
        message,
        "Lancez « drimbox db upgrade --config … » (nœuds arrêtés).",
    )
    db.dispose()
    return None  # nothing is recorded in a database at another schema


# -- certificates --------------------------------------------------------------------------------


def _anchor_pool(config: Config) -> list[x509.Certificate]:
    from drimbox.trust.whitelist import load_certificates

    files = [*config.trust.anchors, config.trust.tls_ca, config.dmp.tls_ca]
    return load_certificates([f for f in dict.fromkeys(files) if f and Path(f).is_file()])


def _certificates(checks: _Checks, config: Config, now: datetime) -> None:
    group = "Certificats"
    pool = _anchor_pool(config)
    pairs = [
        (
            "cert.tls",
            "Certificat serveur de la DRIMbox (TLS mutuel avec les pairs)",
            config.trust.tls_cert,
            config.trust.tls_key,
            "[trust] tls_cert / tls_key",
            config.trust.key_passphrase_env,
        ),
        (
            "cert.dmp_auth",
            "Certificat ORG d'authentification (TLS avec le DMP)",
            config.dmp.tls_cert,
            config.dmp.tls_key,
            "[dmp] tls_cert / tls_key",
            config.dmp.key_passphrase_env,
        ),
        (
            "cert.dmp_sign",
            "Certificat ORG de signature (VIHF, XAdES)",
            config.dmp.signing_cert,
            config.dmp.signing_key,
            "[dmp] signing_cert / signing_key",
            config.dmp.key_passphrase_env,
        ),
    ]
    for key, title, cert_path, key_path, keys, env in pairs:
        checks.run(
            key,
            group,
            title,
            lambda k=key, t=title, c=cert_path, p=key_path, n=keys, e=env: (  # type: ignore[misc]
                _certificate(checks, k, group, t, c, p, n, pool, now, e)
            ),
        )


def _certificate(
    checks: _Checks,
    key: str,
    group: str,
    title: str,
    cert_path: str,
    key_path: str,
    keys: str,
    pool: list[x509.Certificate],
    now: datetime,
    passphrase_env: str = "",
) -> Check:
    if not cert_path or not key_path:
        return checks.add(
            key,
            group,
            title,
            "failure",
            f"non configuré ({keys})",
            "Installez le certificat IGC-Santé et sa clé, puis renseignez ces clés.",
        )
    try:
        pair = load_key_pair(cert_path, key_path, passphrase_env)
    except KeyFileError as exc:
        return checks.add(
            key,
            group,
            title,
            "failure",
            str(exc),
            "Vérifiez le chemin, le format (PEM ou PKCS#12), les droits (0600) et, pour une clé "
            "chiffrée, key_passphrase_env.",
        )
    certificate = pair.certificate
    subject = certificate.subject.rfc4514_string()
    if not pair.matches():
        return checks.add(
            key,
            group,
            title,
            "failure",
            f"la clé {key_path} ne correspond pas au certificat {subject}",
            "Installez la clé privée générée avec ce certificat.",
            figures={"subject": subject},
        )
    days = (certificate.not_valid_after_utc - now).days
    figures = {
        "subject": subject,
        "not_after": certificate.not_valid_after_utc.isoformat(),
        "days_left": days,
    }
    if now < certificate.not_valid_before_utc:
        return checks.add(
            key,
            group,
            title,
            "failure",
            f"{subject} n'est valide qu'à partir du {certificate.not_valid_before_utc:%d/%m/%Y}",
            "Vérifiez l'horloge de la machine et le certificat installé.",
            figures=figures,
        )
    if days < 0:
        return checks.add(
            key,
            group,
            title,
            "failure",
            f"{subject} a expiré le {certificate.not_valid_after_utc:%d/%m/%Y}",
            "Commandez un nouveau certificat (IGC-Santé) et installez-le.",
            figures=figures,
        )
    if not _chained(certificate, pool):
        return checks.add(
            key,
            group,
            title,
            "failure",
            f"{subject} ne se rattache à aucune autorité configurée "
            f"(émetteur : {certificate.issuer.rfc4514_string()})",
            "Ajoutez la chaîne IGC-Santé de l'émetteur à [trust] anchors / tls_ca.",
            figures=figures,
        )
    revoked = _revocation(certificate, pool)
    if revoked is not None and revoked.startswith("révoqué"):
        return checks.add(
            key,
            group,
            title,
            "failure",
            f"{subject} : {revoked}",
            "Commandez un nouveau certificat (IGC-Santé) et installez-le.",
            figures=figures,
        )
    detail = f"{subject}, clé correspondante, chaîne vérifiée, expire dans {days} jours"
    detail += f" ; {revoked}" if revoked else ""
    if days < EXPIRY_WARNING_DAYS:
        return checks.add(
            key,
            group,
            title,
            "warning",
            detail,
            "Renouvelez ce certificat avant son expiration.",
            figures=figures,
        )
    return checks.add(key, group, title, "ok", detail, figures=figures)


def _issuer_of(certificate: x509.Certificate, pool: list[x509.Certificate]) -> Any:
    for candidate in pool:
        if candidate.subject != certificate.issuer:
            continue
        try:
            certificate.verify_directly_issued_by(candidate)
        except Exception:  # noqa: BLE001 - not this one (wrong key type or signature)
            continue
        return candidate
    return None


def _chained(certificate: x509.Certificate, pool: list[x509.Certificate]) -> bool:
    """Issued by a configured authority (as TLS with VERIFY_X509_PARTIAL_CHAIN accepts)."""
    return _issuer_of(certificate, pool) is not None


def _revocation(certificate: x509.Certificate, pool: list[x509.Certificate]) -> str | None:
    """ "révoqué …" when a CRL of the certificate lists it; a note when it cannot be checked;
    None when a CRL says it is not revoked."""
    from drimbox.trust.revocation import CrlError, load_crl

    try:
        points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return "révocation non vérifiable (pas de liste de révocation indiquée)"
    urls = [
        name.value
        for point in points
        for name in point.full_name or []
        if isinstance(name, x509.UniformResourceIdentifier)
    ]
    issuer = _issuer_of(certificate, pool)
    for url in urls:
        try:
            data = _fetch(url)
        except (OSError, httpx.HTTPError) as exc:
            last = f"liste de révocation injoignable ({url} : {exc})"
            continue
        try:
            crl = load_crl(data)
        except CrlError as exc:
            last = f"liste de révocation {url} : {exc}"
            continue
        if issuer is not None and not crl.is_signature_valid(issuer.public_key()):
            last = f"liste de révocation {url} mal signée"
            continue
        entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
        if entry is not None:
            return f"révoqué le {entry.revocation_date_utc:%d/%m/%Y} (liste {url})"
        return None
    return last if urls else "révocation non vérifiable (aucune adresse de liste)"


def _fetch(url: str) -> bytes:
    if url.startswith("file://"):
        return Path(urlsplit(url).path).read_bytes()
    response = httpx.get(url, timeout=10, follow_redirects=True, verify=client_context())
    response.raise_for_status()
    return response.content


# -- whitelist -----------------------------------------------------------------------------------


def _whitelist(checks: _Checks, config: Config, now: datetime) -> Any:
    from drimbox.trust.store import whitelist_store

    group, title = "Liste blanche", "Téléchargée, signature valide, âge"
    store = None
    try:
        store = whitelist_store(config)
    except Exception as exc:  # noqa: BLE001 - reported
        checks.add(
            "whitelist",
            group,
            title,
            "failure",
            f"autorités illisibles : {exc}",
            "Vérifiez [trust] anchors.",
        )
        return None
    if store is None:
        checks.add(
            "whitelist",
            group,
            title,
            "failure",
            "aucune source configurée",
            "Renseignez [trust] whitelist_source (URL publiée par l'ANS).",
        )
        return None
    result = store.refresh()
    if result.status == "refused" and result.refusal is not None:
        kept = " ; la dernière liste valide reste en vigueur" if store.current() else ""
        checks.add(
            "whitelist",
            group,
            title,
            "failure",
            f"liste refusée ({store.source}) : {result.refusal.message} "
            f"[{result.refusal.detail}]{kept}",
            "Vérifiez l'adresse de la liste, l'accès réseau et [trust] anchors ; une "
            "liste non signée ou altérée n'est jamais acceptée.",
        )
        return store
    current = result.whitelist
    assert current is not None
    age = now - current.generated_at
    signer_days = (current.signer.not_after - now).days
    message = (
        f"{len(current.domains)} DRIMbox, générée le {current.generated_at:%d/%m/%Y %H:%M} "
        f"UTC (il y a {age.days} jour(s)), signée par {current.signer.subject} "
        f"(valide encore {signer_days} jours)"
    )
    figures = {"domains": len(current.domains), "age_days": age.days, "source": store.source}
    stale = age.days > WHITELIST_MAX_AGE_DAYS
    checks.add(
        "whitelist", group, title, "warning" if stale else "ok", message,
        "La liste en ligne n'a pas changé depuis longtemps : vérifiez l'adresse configurée "
        "auprès de l'ANS.",
        figures=figures,
    )  # fmt: skip
    return store


def _own_entry(checks: _Checks, config: Config, store: Any) -> None:
    from drimbox.trust.dn import DistinguishedName

    group, title = "Liste blanche", "Cette DRIMbox dans la liste en vigueur (db, vi, DN)"
    current = store.current() if store is not None else None
    if current is None:
        checks.add(
            "whitelist.self",
            group,
            title,
            "failure",
            "aucune liste blanche en vigueur",
            "Obtenez une liste valide (ci-dessus).",
        )
        return
    db = urlsplit(config.site.public_base_url).hostname or ""
    vi = urlsplit(config.viewer.public_url).hostname or ""
    entry = current.by_db(db)
    if entry is None:
        checks.add(
            "whitelist.self",
            group,
            title,
            "failure",
            f"le nom db « {db} » ([site] public_base_url) n'est pas dans la liste",
            "Faites enregistrer la DRIMbox auprès de l'ANS, ou corrigez l'URL publique.",
        )
        return
    problems = []
    if entry.vi and (entry.vi.lower() != vi.lower()):
        problems.append(f"le nom vi de la liste est « {entry.vi} », [viewer] public_url « {vi} »")
    try:
        certificate = load_certificate(config.trust.tls_cert, config.trust.key_passphrase_env)
        if entry.dn != DistinguishedName.from_name(certificate.subject):
            problems.append(
                f"le DN de la liste est « {entry.operator_dn} », le certificat "
                f"installé est « {certificate.subject.rfc4514_string()} »"
            )
    except (OSError, ValueError) as exc:
        problems.append(f"certificat [trust] tls_cert illisible ({exc})")
    if problems:
        checks.add(
            "whitelist.self",
            group,
            title,
            "failure",
            " ; ".join(problems),
            "Alignez la configuration et le certificat sur l'enregistrement ANS.",
        )
        return
    checks.add(
        "whitelist.self",
        group,
        title,
        "ok",
        f"entrée {entry.identifier} « {entry.name} » : db {entry.db}, vi {entry.vi}, "
        f"DN {entry.operator_dn}",
    )


# -- PACS ----------------------------------------------------------------------------------------


def _pacs(checks: _Checks, config: Config, db: Any) -> None:
    from drimbox.dicom.pacs import PacsClient, PacsError
    from drimbox.dicom.retrieve import pacs_settings
    from drimbox.ops.speedtest import SpeedTestError, latest_study, pacs_speedtest, record

    group = "PACS"
    client = PacsClient(pacs_settings(config))
    label = client.settings.label
    fix = "Vérifiez que le PACS tourne et connaît l'AE Title de la DRIMbox ([pacs])."
    try:
        client.echo()
    except PacsError as exc:
        checks.add("pacs.echo", group, "C-ECHO", "failure", str(exc), fix)
        checks.add("pacs.find", group, "C-FIND", "failure", "non fait : PACS injoignable", fix)
        checks.add(
            "pacs.speed", group, "Test de débit", "failure", "non fait : PACS injoignable", fix
        )
        return
    checks.add("pacs.echo", group, "C-ECHO", "ok", f"{label} répond")
    try:
        study = config.checks.pacs_study or latest_study(client)
        if client.snapshot(study) is None:
            raise PacsError(f"examen {study} ([checks] pacs_study) inconnu du PACS {label}")
    except (PacsError, SpeedTestError) as exc:
        checks.add(
            "pacs.find",
            group,
            "C-FIND",
            "failure",
            str(exc),
            "Vérifiez les droits de recherche de l'AE Title de la DRIMbox dans le PACS, "
            "et [checks] pacs_study.",
        )
        checks.add(
            "pacs.speed",
            group,
            "Test de débit",
            "failure",
            "non fait : aucun examen",
            "Indiquez un examen du PACS dans [checks] pacs_study.",
        )
        return
    checks.add("pacs.find", group, "C-FIND", "ok", f"examen {study} trouvé")
    mode = config.pacs.retrieve
    try:
        result = pacs_speedtest(config, study_uid=study, mode=mode, client=client)
    except SpeedTestError as exc:
        checks.add(
            "pacs.speed",
            group,
            f"Test de débit ({mode})",
            "failure",
            str(exc),
            "Corrigez la récupération des images ([pacs] retrieve) : sans elle, les "
            "pairs ne reçoivent rien.",
        )
        return
    if db is not None:
        record(db, result, slow_ratio=config.checks.slow_ratio)
    figures = {label: value for label, value in result.summary()}
    message = (
        f"{french_number(result.images)} images, {french_size(result.bytes)} en "
        f"{french_number(result.seconds, 2)} s ({french_size(result.throughput_bps)}/s), "
        f"première image en {french_number((result.first_image_s or 0) * 1000)} ms"
    )
    if not result.ok:
        checks.add(
            "pacs.speed",
            group,
            f"Test de débit ({mode})",
            "failure",
            f"{message} — {result.error}",
            "Consultez le journal du PACS.",
            figures=figures,
        )
    elif result.flag:
        checks.add(
            "pacs.speed",
            group,
            f"Test de débit ({mode})",
            "warning",
            f"{message} — {result.flag}",
            "Voir docs/deploy.md, « Speed tests ».",
            figures=figures,
        )
    else:
        checks.add("pacs.speed", group, f"Test de débit ({mode})", "ok", message, figures=figures)


# -- DMP -----------------------------------------------------------------------------------------


def _dmp(checks: _Checks, config: Config) -> None:
    from drimbox.dmp.client import DmpError, DmpSettings, tls_context

    group, tls_title = "DMP", "Connexion TLS avec le certificat de la structure"
    query_title = "Requête sans effet (TD0.2, patient de test)"
    base = config.dmp.base_url
    settings = DmpSettings.from_config(config)
    skew: float | None = None
    if not base:
        checks.add(
            "dmp.tls",
            group,
            tls_title,
            "failure",
            "DMP non configuré ([dmp] base_url)",
            "Renseignez [dmp] et les certificats ORG de la structure.",
        )
    else:
        try:
            context = tls_context(settings)
        except DmpError as exc:
            checks.add(
                "dmp.tls",
                group,
                tls_title,
                "failure",
                f"{exc.message} ({exc.detail})",
                "Vérifiez [dmp] tls_cert, tls_key et tls_ca.",
            )
        else:
            skew = _dmp_handshake(checks, group, tls_title, base, context, config.dmp.timeout_s)
    _clock(checks, skew)
    if skew is None:
        checks.add(
            "dmp.query",
            group,
            query_title,
            "failure",
            "non faite : pas de connexion au DMP",
            "Rétablissez la connexion au DMP (ci-dessus) puis relancez.",
        )
    else:
        _dmp_query(checks, group, query_title, config, settings)


def _dmp_handshake(
    checks: _Checks, group: str, title: str, base: str, context: ssl.SSLContext, timeout_s: float
) -> float | None:
    """The DMP's clock minus ours (seconds; NaN without a Date header), None if unreachable."""
    try:
        with httpx.Client(verify=context, timeout=timeout_s) as client:
            sent = time.time()
            response = client.get(f"{base}/registry")
            received = time.time()
            stream = response.extensions.get("network_stream")
            tls = stream.get_extra_info("ssl_object") if stream is not None else None
    except httpx.HTTPError as exc:
        checks.add(
            "dmp.tls",
            group,
            title,
            "failure",
            f"DMP injoignable ou certificat refusé ({base}) : {type(exc).__name__} {exc}",
            "Vérifiez l'accès réseau au DMP, [dmp] tls_cert / tls_key (certificat ORG "
            "d'authentification) et [dmp] tls_ca.",
        )
        return None
    version = tls.version() if tls is not None else "TLS"
    checks.add(
        "dmp.tls",
        group,
        title,
        "ok",
        f"{base} : poignée de main {version} acceptée, HTTP {response.status_code}",
    )
    try:
        when = email.utils.parsedate_to_datetime(response.headers.get("date", ""))
    except (TypeError, ValueError):
        return float("nan")
    # The server stamps its Date while answering: compare with the middle of the exchange.
    return when.timestamp() - (sent + received) / 2


def _clock(checks: _Checks, skew: float | None) -> None:
    group, title = "Horloge", "Écart avec l'heure du DMP (en-tête HTTP Date)"
    if skew is None:
        checks.add(
            "clock",
            group,
            title,
            "failure",
            "non mesuré : pas de connexion au DMP",
            "Rétablissez l'accès au DMP puis relancez.",
        )
        return
    if math.isnan(skew):
        checks.add(
            "clock",
            group,
            title,
            "warning",
            "le DMP n'envoie pas d'en-tête Date",
            "Vérifiez l'heure de la machine par NTP.",
        )
        return
    # Date has one-second resolution: below that, the clocks agree.
    shown = f"{abs(skew):.0f} s" + (" d'avance du DMP" if skew > 0 else " de retard du DMP")
    if abs(skew) >= CLOCK_FAILURE_S:
        checks.add(
            "clock",
            group,
            title,
            "failure",
            f"écart de {shown}",
            "Synchronisez l'horloge de la machine (NTP) : le DMP refuse les jetons VIHF "
            "hors délai.",
            figures={"skew_s": round(skew, 1)},
        )
    elif abs(skew) >= CLOCK_WARNING_S:
        checks.add(
            "clock",
            group,
            title,
            "warning",
            f"écart de {shown}",
            "Activez la synchronisation NTP.",
            figures={"skew_s": round(skew, 1)},
        )
    else:
        checks.add(
            "clock",
            group,
            title,
            "ok",
            f"écart inférieur à {CLOCK_WARNING_S:.0f} s",
            figures={"skew_s": round(skew, 1)},
        )


def _dmp_query(checks: _Checks, group: str, title: str, config: Config, settings: Any) -> None:
    from drimbox.cda.model import Code
    from drimbox.dmp import codes
    from drimbox.dmp.client import DmpClient, DmpError
    from drimbox.dmp.vihf import VihfSubject

    professional = (config.admin.users or [""])[0]
    if not professional:
        checks.add(
            "dmp.query",
            group,
            title,
            "failure",
            "aucun professionnel au nom duquel interroger ([admin] users vide)",
            "Déclarez l'administrateur (RPPS) dans [admin] users.",
        )
        return
    ins = config.checks.dmp_test_patient or NO_PATIENT_INS
    subject = VihfSubject(
        name_id=professional,
        display_name="Vérification d'aptitude DRIMbox",
        profession=Code("10", codes.PROFESSION_SYSTEM, "Médecin"),
    )
    try:
        with DmpClient(settings) as client:
            status = client.patient_status(ins, config.checks.dmp_test_patient_oid, subject=subject)
    except DmpError as exc:
        checks.add(
            "dmp.query",
            group,
            title,
            "failure",
            f"le DMP refuse la requête : {exc.message}"
            + (f" ({exc.code})" if exc.code else "")
            + (f" [{exc.detail}]" if exc.detail else ""),
            "Vérifiez le certificat ORG de signature ([dmp] signing_*), l'identifiant "
            "de structure et l'enregistrement du logiciel (LPS) au DMP.",
        )
        return
    answer = (
        f"patient {ins} : DMP {'existant' if status.exists else 'inexistant'} "
        f"(réponse {status.query_response_code}"
    )
    answer += f", autorisation {status.authorization})" if status.authorization else ")"
    checks.add(
        "dmp.query",
        group,
        title,
        "ok",
        f"le DMP répond : {answer}",
        figures={"patient": ins, "exists": status.exists},
    )


# -- Pro Santé Connect ---------------------------------------------------------------------------


def _psc(checks: _Checks, config: Config) -> None:
    from drimbox.auth.psc import PscClient, PscError, PscErrorReason, PscSettings

    group = "Pro Santé Connect"
    fix = "Vérifiez [psc] (adresse de découverte, identifiant et certificat ou secret du client)."
    redirect = config.psc.redirect_uri or f"{config.viewer.public_url}/auth/callback"
    client: PscClient | None = None
    try:
        client = PscClient(PscSettings.from_config(config, redirect))
        endpoints = client.endpoints
    except PscError as exc:
        if client is not None:
            client.close()
        checks.add("psc.discovery", group, "Découverte", "failure", exc.message, fix)
        checks.add("psc.client", group, "Authentification du client", "failure",
                   "non faite : Pro Santé Connect non découvert", fix)  # fmt: skip
        return
    with client:
        checks.add(
            "psc.discovery",
            group,
            "Découverte",
            "ok",
            f"émetteur {endpoints.issuer}, jetons {endpoints.token}",
        )
        # A refresh with a token PSC never issued: "invalid_grant" proves our client was
        # authenticated; "invalid_client" (or 401) that it was not.
        try:
            client.refresh(PROBE_REFRESH_TOKEN)
        except PscError as exc:
            if exc.reason is PscErrorReason.SESSION_ENDED:
                checks.add(
                    "psc.client",
                    group,
                    "Authentification du client",
                    "ok",
                    f"client « {config.psc.client_id} » authentifié par PSC "
                    f"({client.settings.token_endpoint_auth_method})",
                )
            elif exc.reason is PscErrorReason.CLIENT_REFUSED:
                checks.add(
                    "psc.client",
                    group,
                    "Authentification du client",
                    "failure",
                    f"PSC refuse le client « {config.psc.client_id} » : {exc.message}",
                    "Vérifiez [psc] client_id et tls_cert (ou client_secret) auprès de l'ANS "
                    "(enregistrement du service).",
                )
            else:
                checks.add(
                    "psc.client", group, "Authentification du client", "failure", exc.message, fix
                )
            return
        checks.add(
            "psc.client",
            group,
            "Authentification du client",
            "warning",
            "PSC a accepté un jeton de rafraîchissement inventé",
            fix,
        )


# -- peers ---------------------------------------------------------------------------------------


def _peers(checks: _Checks, config: Config, store: Any) -> None:
    from drimbox.ops.speedtest import SpeedTestError, peer_speedtest, peer_target

    group = "Autres DRIMbox"
    if not config.checks.peers:
        checks.add(
            "peers",
            group,
            "Accès WADO-RS",
            "warning",
            "aucune DRIMbox à tester",
            "Indiquez dans [checks] peers une ou deux DRIMbox de la liste blanche.",
        )
        return
    for host in config.checks.peers:
        key, title = f"peer.{peer_target(host)}", f"Accès WADO-RS à {host}"
        try:
            result = peer_speedtest(config, host, token=config.checks.peer_token, store=store)
        except SpeedTestError as exc:
            checks.add(
                key,
                group,
                title,
                "failure",
                str(exc),
                "Vérifiez le nom, le réseau, les certificats et la liste blanche des deux côtés.",
            )
            continue
        checks.add(
            key,
            group,
            title,
            "ok",
            f"répond en {french_number((result.latency_s or 0) * 1000)} ms sur TLS mutuel "
            f"({result.note})",
            figures={"latency_ms": round((result.latency_s or 0) * 1000)},
        )


# -- image cache ---------------------------------------------------------------------------------


def _cache(checks: _Checks, config: Config) -> None:
    group, title = "Cache d'images", "Volume, place libre, vitesse d'écriture"
    folder = Path(config.store.cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(folder)
        rate = _write_speed(folder, config.checks.cache_test_bytes)
    except OSError as exc:
        checks.add(
            "cache",
            group,
            title,
            "failure",
            f"{folder} inutilisable : {exc}",
            "Vérifiez le dossier [store] cache_dir et ses droits.",
        )
        return
    wanted = min(config.store.cache_max_bytes, usage.total)
    message = (
        f"{folder} : {french_size(usage.free)} libres sur {french_size(usage.total)}, "
        f"cache limité à {french_size(config.store.cache_max_bytes)}, écriture "
        f"{french_size(rate)}/s"
    )
    figures = {"free_bytes": usage.free, "total_bytes": usage.total, "write_bps": round(rate)}
    if usage.free < MIN_FREE_BYTES:
        status: Status = "failure"
        action = "Libérez de la place ou déplacez [store] cache_dir."
    elif usage.free < wanted or rate < config.checks.cache_min_write_bps:
        status, action = (
            "warning",
            (
                "Le volume ne peut pas contenir le cache configuré, ou il est lent : ajustez "
                "[store] cache_max_bytes ou le stockage."
            ),
        )
    else:
        status, action = "ok", ""
    checks.add("cache", group, title, status, message, action, figures=figures)


def _write_speed(folder: Path, size: int) -> float:
    """Bytes per second writing `size` bytes to the volume, synced to disk, then removed."""
    block = os.urandom(1024 * 1024)
    fd, name = tempfile.mkstemp(dir=folder, prefix=".aptitude-", suffix=".tmp")
    try:
        started = time.perf_counter()
        with os.fdopen(fd, "wb") as handle:
            written = 0
            while written < size:
                handle.write(block)
                written += len(block)
            handle.flush()
            os.fsync(handle.fileno())
        elapsed = time.perf_counter() - started
    finally:
        Path(name).unlink(missing_ok=True)
    return written / elapsed if elapsed > 0 else float("inf")


def groups(report: AptitudeReport) -> Iterator[tuple[str, list[Check]]]:
    """The checks by section, in the report's order."""
    seen: dict[str, list[Check]] = {}
    for check in report.checks:
        seen.setdefault(check.group, []).append(check)
    yield from seen.items()
