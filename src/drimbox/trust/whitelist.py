"""The ANS whitelist ("liste blanche DRIM-M"): model, hardened parsing, verification, lookups.

Owns `Whitelist` and `Domain`, `verify_whitelist` (the only way to obtain a `Whitelist`: parse
without DTD, entities or network, check the XAdES signature and its signer through
`xades_verify`, then read the content) and `verify_command`, the body of
`drimbox whitelist verify`. Elements are matched by local name because namespaces vary between
published lists. It must not fetch lists nor keep state (that is `store`'s) nor decide whether a
TLS peer is accepted (that is `tls.PeerCheck`'s).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from lxml import etree

from drimbox.trust.dn import DistinguishedName, DnSyntaxError, dn_equal
from drimbox.trust.errors import Reason, WhitelistError, WhitelistInternalError
from drimbox.trust.xades_verify import (
    DS,
    ExpectedSigner,
    SignerSummary,
    embedded_certificates,
    find_signature,
    verify_enveloped_xades,
)

log = logging.getLogger(__name__)

UNEXPECTED = "unexpected error:"
MAX_BYTES = 5 * 1024 * 1024  # the test list holds 27 domains in 19 kB; 5 MB is ~7000 domains
ROOT_NAME = "ListeBlancheDRIM-M"
# A list dated more than this ahead of our clock is refused: once accepted, its date would make
# every genuine newer list look like a replay until that date.
FUTURE_TOLERANCE = timedelta(days=1)
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


def normalise_host(host: str) -> str:
    """`DB3.example.fr.` → `db3.example.fr`; a `host:port` loses its port (IPv6 kept as is)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0].lstrip("[")
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


@dataclass(frozen=True)
class Domain:
    """One `Domaine` of the list: a DRIMbox (db), its viewer (vi) and its operator's certificate.

    Built validated: `db` must be a host name and `operator_dn` a distinguished name.
    """

    identifier: str
    db: str
    vi: str
    name: str
    operator_dn: str
    support_contact: str = ""
    updated_at: datetime | None = None
    dn: DistinguishedName = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.identifier:
            raise ValueError("Identifiant is empty")
        for label, host in (("db", self.db), ("vi", self.vi)):
            if (host or label == "db") and not _HOST.match(normalise_host(host)):
                raise ValueError(f"{label} {host!r} is not a host name")
        try:
            object.__setattr__(self, "dn", DistinguishedName.parse(self.operator_dn))
        except DnSyntaxError as exc:
            raise ValueError(f"DNCertificatOperateur {self.operator_dn!r}: {exc}") from exc


@dataclass(frozen=True)
class Whitelist:
    """A verified list. Obtain one from `verify_whitelist` (or a `WhitelistStore`)."""

    generated_at: datetime
    domains: tuple[Domain, ...]
    signer: SignerSummary
    source: str
    loaded_at: datetime
    version_format: str = ""
    raw: bytes = field(default=b"", repr=False, compare=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def by_identifier(self, identifier: str) -> Domain | None:
        return next((d for d in self.domains if d.identifier == identifier.strip()), None)

    def by_db(self, host: str) -> Domain | None:
        """The domain whose box (`db`) is `host` (case, trailing dot and port ignored)."""
        wanted = normalise_host(host)
        return next((d for d in self.domains if normalise_host(d.db) == wanted), None)

    def by_vi(self, host: str) -> Domain | None:
        """The domain whose viewer (`vi`) is `host`; entries without a viewer never match."""
        wanted = normalise_host(host)
        return next((d for d in self.domains if d.vi and normalise_host(d.vi) == wanted), None)

    def by_dn(
        self, subject: str | x509.Name | x509.Certificate | DistinguishedName
    ) -> Domain | None:
        """The domain whose `DNCertificatOperateur` is this subject (RDN sets compared)."""
        try:
            wanted = DistinguishedName.of(subject)
        except DnSyntaxError:
            return None
        return next((d for d in self.domains if d.dn == wanted), None)


def _local(node: etree._Element) -> str:
    return etree.QName(node).localname


def _elements(node: etree._Element) -> list[etree._Element]:
    return [child for child in node if isinstance(child.tag, str)]


def _text(node: etree._Element) -> str:
    if _elements(node):
        raise WhitelistError(
            Reason.INVALID_CONTENT, f"<{_local(node)}> must hold text, not elements"
        )
    # All text nodes joined: a comment (unsigned under exc-c14n) must not cut a value short.
    texts = node.xpath("text()")
    return "".join(str(t) for t in texts).strip() if isinstance(texts, list) else ""


def _date(text: str, what: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise WhitelistError(Reason.INVALID_CONTENT, f"{what} {text!r} is not a date") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_xml(xml: bytes, *, max_bytes: int = MAX_BYTES) -> etree._Element:
    """Parse untrusted XML: size-limited, no DTD, no entity expansion, no network access."""
    if len(xml) > max_bytes:
        raise WhitelistError(Reason.TOO_LARGE, f"{len(xml)} bytes, limit {max_bytes}")
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=False,
    )
    try:
        root = etree.fromstring(xml, parser)
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise WhitelistError(Reason.MALFORMED, f"not well-formed XML: {exc}") from exc
    if root is None:
        raise WhitelistError(Reason.MALFORMED, "empty document")
    docinfo = root.getroottree().docinfo
    # No legitimate list has a DOCTYPE; refusing it closes entity expansion and external subsets.
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise WhitelistError(Reason.MALFORMED, "a DOCTYPE is not allowed")
    if _local(root) != ROOT_NAME:
        raise WhitelistError(
            Reason.MALFORMED, f"root element <{_local(root)}>, expected <{ROOT_NAME}>"
        )
    return root


def _single(parent: etree._Element, name: str, *, required: bool) -> etree._Element | None:
    found = [c for c in _elements(parent) if _local(c) == name]
    if len(found) > 1 or (required and not found):
        raise WhitelistError(
            Reason.INVALID_CONTENT,
            f"<{_local(parent)}> must hold exactly one <{name}>, found {len(found)}",
        )
    return found[0] if found else None


def _domain(node: etree._Element) -> Domain:
    def field_text(name: str, *, required: bool = False) -> str:
        child = _single(node, name, required=required)
        return _text(child) if child is not None else ""

    updated = field_text("DateMAJ")
    try:
        return Domain(
            identifier=field_text("Identifiant", required=True),
            db=field_text("db", required=True),
            vi=field_text("vi"),
            name=field_text("Denomination"),
            operator_dn=field_text("DNCertificatOperateur", required=True),
            support_contact=field_text("SupportContact"),
            updated_at=_date(updated, "DateMAJ") if updated else None,
        )
    except ValueError as exc:
        raise WhitelistError(Reason.INVALID_CONTENT, f"Domaine: {exc}") from exc


def _content(root: etree._Element, now: datetime) -> tuple[datetime, tuple[Domain, ...], str]:
    # Only the expected places are read (root/DateDeGeneration, root/ListeDomaines/Domaine): the
    # signature covers the whole document minus the one ds:Signature, so all of it is signed.
    generated = _single(root, "DateDeGeneration", required=True)
    listing = _single(root, "ListeDomaines", required=True)
    assert generated is not None and listing is not None  # required=True
    generated_at = _date(_text(generated), "DateDeGeneration")
    if generated_at > now + FUTURE_TOLERANCE:
        raise WhitelistError(
            Reason.INVALID_CONTENT,
            f"DateDeGeneration {generated_at:%Y-%m-%dT%H:%M:%SZ} is in the future",
        )
    entries = _elements(listing)
    if any(_local(e) != "Domaine" for e in entries):
        raise WhitelistError(Reason.INVALID_CONTENT, "ListeDomaines holds something else")
    return generated_at, tuple(_domain(e) for e in entries), root.get("versionFormat", "")


def verify_whitelist(
    xml_bytes: bytes,
    anchors: Sequence[x509.Certificate],
    *,
    now: datetime | None = None,
    expected_signer: ExpectedSigner | None = None,
    allow_sha1: bool = False,
    source: str = "",
    max_bytes: int = MAX_BYTES,
) -> Whitelist:
    """Verify a signed list against `anchors` and return it; raise `WhitelistError` otherwise.

    `now` is the verification time (the signer must be valid then); `expected_signer`
    constrains the signer's CN/OU (`ExpectedSigner.ans()` for the official lists).
    """
    now = now or datetime.now(UTC)
    try:
        root = parse_xml(xml_bytes, max_bytes=max_bytes)
        signer = verify_enveloped_xades(
            root, anchors, now=now, expected_signer=expected_signer, allow_sha1=allow_sha1
        )
        generated_at, domains, version = _content(root, now)
    except WhitelistError:
        raise
    except Exception as exc:
        # The list comes from outside: whatever a damaged one triggers in a library must be a
        # refusal for the caller (the list in force stays), and a log entry for us. The fuzz
        # tests fail on this detail, so a new case gets a precise handling.
        log.exception("unexpected error while verifying a whitelist")
        raise WhitelistInternalError(
            Reason.MALFORMED, f"{UNEXPECTED} {type(exc).__name__}: {exc}"
        ) from exc
    return Whitelist(
        generated_at=generated_at,
        domains=domains,
        signer=signer,
        source=source,
        loaded_at=now,
        version_format=version,
        raw=xml_bytes,
    )


def load_certificates(paths: Iterable[str | Path]) -> list[x509.Certificate]:
    """Trust anchors from files: PEM (one or several certificates) or DER."""
    certificates: list[x509.Certificate] = []
    for path in paths:
        data = Path(path).read_bytes()
        if b"-----BEGIN CERTIFICATE-----" in data:
            certificates.extend(x509.load_pem_x509_certificates(data))
        else:
            certificates.append(x509.load_der_x509_certificate(data))
    return certificates


def embedded_anchors(xml_bytes: bytes) -> list[x509.Certificate]:
    """The list's own self-signed KeyInfo certificates (all of them if none is self-signed).

    For `drimbox whitelist verify` without `--anchor` only: it proves the list is intact and
    consistently signed, not that the ANS signed it.
    """
    try:
        certificates = embedded_certificates(find_signature(parse_xml(xml_bytes)))
    except WhitelistError:
        return []
    roots = [c for c in certificates if c.subject == c.issuer]
    return roots or certificates


def _when(value: datetime | None) -> str:
    return f"{value:%d/%m/%Y %H:%M:%S} UTC" if value else "—"


def summary(whitelist: Whitelist) -> list[str]:
    """French lines describing a verified list (CLI, admin console)."""
    signer = whitelist.signer
    lines = [
        f"  Date de génération : {_when(whitelist.generated_at)}",
        f"  Nombre de domaines : {len(whitelist.domains)}",
        f"  Signataire         : {signer.subject}",
        f"  Émis par           : {signer.issuer}",
        f"  Validité           : du {_when(signer.not_before)} au {_when(signer.not_after)}",
        f"  Date de signature  : {_when(signer.signing_time)}",
        "  Chaîne de confiance: " + " → ".join(signer.chain),
    ]
    return lines


def verify_command(
    file: str | Path, anchors: Sequence[str | Path], *, now: datetime | None = None
) -> tuple[int, str]:
    """`drimbox whitelist verify FILE [--anchor CERT …]`: (exit code, French text).

    0: valid; 1: refused (the reason is printed); 2: the file or an anchor cannot be read.
    """
    try:
        xml = Path(file).read_bytes()
    except OSError as exc:
        return 2, f"Impossible de lire le fichier {file} : {exc.strerror or exc}"
    try:
        trusted = load_certificates(anchors)
    except (OSError, ValueError) as exc:
        return 2, f"Impossible de lire l'ancre de confiance : {exc}"
    lines: list[str] = []
    if not anchors:
        trusted = embedded_anchors(xml)
        lines.append(
            "Attention : aucune ancre de confiance fournie (--anchor) ; la liste est vérifiée "
            "avec les certificats qu'elle contient (KeyInfo) comme ancres. Cela prouve son "
            "intégrité, pas qu'elle vient de l'ANS."
        )
    try:
        whitelist = verify_whitelist(xml, trusted, now=now, source=str(file))
    except WhitelistError as error:
        lines[:0] = [
            f"Liste blanche REFUSÉE : {file}",
            f"  Motif  : {error.message}",
            f"  Détail : {error.detail}",
        ]
        return 1, "\n".join(lines)
    lines[:0] = [f"Liste blanche VALIDE : {file}", *summary(whitelist)]
    return 0, "\n".join(lines)


__all__ = [
    "DS",
    "Domain",
    "ExpectedSigner",
    "Reason",
    "SignerSummary",
    "Whitelist",
    "WhitelistError",
    "dn_equal",
    "embedded_anchors",
    "load_certificates",
    "normalise_host",
    "parse_xml",
    "summary",
    "verify_command",
    "verify_whitelist",
]
