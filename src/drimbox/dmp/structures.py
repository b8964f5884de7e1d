"""The structures a box publishes for, and which one a report belongs to.

The ANS FAQ for the DRIMbox offer: the ORG AUTH certificate that publishes a KOS is the one of the
organisation in the report's `legalAuthenticator/assignedEntity/representedOrganization` (HL7
PRT-8 carries the same organisation; the CDA author's organisation stands in here when the legal
authenticator has none). So the VIHF
`Identifiant_Structure`, the metadata's `authorInstitution`, the signing certificate and the TLS
certificate all come from that one structure (NATIONAL-RULES.md, "Publication").

Owns `Structure` (one `[[structures]]` entry, or the single structure of `[site]` + `[dmp]` when
there is none), `site_structures`, `choose_structure` (report → structure, or a French refusal
naming the organisation) and `certificate_problems` (`drimbox config check`: each certificate
names its structure in its subject OU, matches its key, and has the usage its role needs). It
must not talk to the network or read files other than the certificates and keys it checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from drimbox.cda.model import Code, ImagingReport, Organization
from drimbox.dmp import codes
from drimbox.trust.keys import load_certificate, load_private_key

if TYPE_CHECKING:
    from drimbox.config import Config

# IDNST prefixes (identifiant national de structure): 1 FINESS, 3 SIRET, 4 cabinet (RPPS rang).
_PREFIX = {"FINESS_EJ": "1", "FINESS_EG": "1", "SIRET": "3", "RPPS": "4"}


class StructureError(Exception):
    """The report's organisation has no configured structure (French, for site staff)."""


@dataclass(frozen=True)
class Structure:
    """A structure and its IGC-Santé ORG certificates."""

    id: str  # IDNST: the certificates' OU, the VIHF Identifiant_Structure
    name: str
    kind: str = "FINESS_EG"
    report_ids: tuple[str, ...] = ()
    tls_cert: str = ""
    tls_key: str = ""
    signing_cert: str = ""
    signing_key: str = ""
    key_passphrase_env: str = ""  # the variable holding the keys' passphrase (encrypted keys)
    activity_sector: str = ""  # empty: [dmp] activity_sector
    content_type: Code | None = None  # empty: from the encounter, else XDS.xml's
    implicit: bool = field(default=False, compare=False)  # from [site] + [dmp]

    def names(self) -> set[str]:
        """Every id a report may use for this structure: the IDNST, the bare FINESS/SIRET
        (the IDNST without its prefix), and the configured `report_ids`."""
        result = {self.id, *self.report_ids}
        prefix = _PREFIX.get(self.kind, "")
        if prefix and self.id.startswith(prefix) and len(self.id) > 1:
            result.add(self.id[1:])
        return result


def parse_code(value: str) -> Code | None:
    """`code^system^display` (display optional) → Code; empty → None."""
    if not value.strip():
        return None
    code, _, rest = value.strip().partition("^")
    system, _, display = rest.partition("^")
    return Code(code, system or codes.CONTENT_TYPE_SYSTEM, display or code)


def site_structures(config: Config) -> list[Structure]:
    """The configured structures; without `[[structures]]`, the one of `[site]` and `[dmp]`."""
    if config.structures:
        return [
            Structure(
                id=s.id,
                name=s.name,
                kind=s.kind,
                report_ids=tuple(s.report_ids),
                tls_cert=s.tls_cert,
                tls_key=s.tls_key,
                signing_cert=s.signing_cert,
                signing_key=s.signing_key,
                key_passphrase_env=s.key_passphrase_env,
                activity_sector=s.activity_sector,
                content_type=parse_code(s.content_type),
            )
            for s in config.structures
        ]
    dmp, site = config.dmp, config.site
    return [
        Structure(
            id=site.structure_id,
            name=site.name,
            tls_cert=dmp.tls_cert,
            tls_key=dmp.tls_key,
            signing_cert=dmp.signing_cert,
            signing_key=dmp.signing_key,
            key_passphrase_env=dmp.key_passphrase_env,
            implicit=True,
        )
    ]


def report_organization(report: ImagingReport) -> Organization | None:
    """The organisation the report is published for: the legal authenticator's, else the first
    author's. (HL7 PRT-8 is not read yet: the outbox works from the stored CDA.)"""
    for professional in (report.legal_authenticator, *report.authors):
        organization = None if professional is None else professional.organization
        if organization is not None and organization.id.extension:
            return organization
    return None


def choose_structure(structures: Sequence[Structure], report: ImagingReport) -> Structure:
    """The structure of the report's organisation, or StructureError naming it."""
    organization = report_organization(report)
    if organization is None:
        raise StructureError(
            "le compte rendu ne désigne pas l'organisation du responsable du document "
            "(legalAuthenticator/representedOrganization du CDA, ni PRT-8 du message) : "
            "impossible de choisir le certificat de publication"
        )
    org_id = organization.id.extension or ""
    for structure in structures:
        if org_id in structure.names():
            return structure
    configured = ", ".join(s.id for s in structures if s.id) or "aucune"
    label = f"« {org_id} »" + (f" ({organization.name})" if organization.name else "")
    raise StructureError(
        f"l'organisation {label} du compte rendu n'est pas une structure configurée "
        f"(structures : {configured}) : ajoutez-la dans [[structures]] avec ses certificats "
        "ORG AUTH et ORG SIGN, ou son identifiant dans report_ids. Aucun envoi avec le "
        "certificat d'une autre structure."
    )


# -- drimbox config check ---------------------------------------------------------------------


def key_matches(certificate: x509.Certificate, key_path: str, passphrase_env: str = "") -> bool:
    key = load_private_key(key_path, passphrase_env)
    public = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public == mine


def usage_problem(certificate: x509.Certificate, role: str) -> str | None:
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None  # nothing to contradict
    if role == "sign" and not usage.content_commitment:
        return "n'est pas un certificat de signature (nonRepudiation) : ORG SIGN attendu"
    if role == "auth":
        if not usage.digital_signature:
            return "n'est pas un certificat d'authentification : ORG AUTH attendu"
        try:
            purposes = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return None
        if ExtendedKeyUsageOID.CLIENT_AUTH not in purposes:
            return "n'autorise pas l'authentification client TLS (clientAuth)"
    return None


def certificate_problems(structure: Structure) -> list[str]:
    """French sentences, one per problem of this structure's certificates (empty: all good)."""
    problems: list[str] = []
    label = f"structure {structure.id or '(sans identifiant)'}"
    if not structure.id:
        problems.append(f"{label} : identifiant de structure absent ([site] structure_id)")
    pairs = (
        ("auth", "tls_cert", structure.tls_cert, "tls_key", structure.tls_key),
        ("sign", "signing_cert", structure.signing_cert, "signing_key", structure.signing_key),
    )
    for role, cert_key, cert_path, key_key, key_path in pairs:
        if not cert_path:
            problems.append(f"{label} : {cert_key} non renseigné")
            continue
        try:
            certificate = load_certificate(cert_path, structure.key_passphrase_env)
        except (OSError, ValueError) as exc:
            problems.append(f"{label} : {cert_key} illisible ({cert_path}) : {exc}")
            continue
        units = [
            str(a.value)
            for a in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        ]
        if structure.id and structure.id not in units:
            problems.append(
                f"{label} : {cert_key} ({cert_path}) est celui de la structure "
                f"« {', '.join(units) or 'sans OU'} », pas de {structure.id} (OU du sujet)"
            )
        usage = usage_problem(certificate, role)
        if usage is not None:
            problems.append(f"{label} : {cert_key} ({cert_path}) {usage}")
        if not key_path:
            problems.append(f"{label} : {key_key} non renseigné")
            continue
        try:
            matches = key_matches(certificate, key_path, structure.key_passphrase_env)
        except (OSError, ValueError, TypeError) as exc:
            problems.append(f"{label} : {key_key} illisible ({key_path}) : {exc}")
            continue
        if not matches:
            problems.append(
                f"{label} : la clé {key_key} ({key_path}) ne correspond pas au certificat "
                f"{cert_key} ({cert_path})"
            )
    return problems
