"""Certificate revocation: the IGC-Santé CRLs, fetched, verified, cached on disk and refreshed.

Owns `RevocationStore`: the CRL sources are the configured ones (`[trust] crl_urls`: URLs or
files) plus, unless turned off, the CRL distribution points written in the certificates the box
knows (its CAs, its own certificates, the whitelist's signer, every peer it met). `refresh()`
downloads each source (plain HTTP is fine: a CRL is signed, and the ANS rules exempt certificate
status downloads from encryption), keeps a CRL only when it is signed by a known CA and not older
than the one held, and writes it to `state_dir/crl/` so that a restart without network still
knows the revoked certificates. `revoked(certificate)` answers from memory, never downloads.

Policy (documented in docs/deploy.md): a certificate listed on its issuer's CRL is refused — the
peer at its TLS check, the whitelist's signer at verification. A CRL past its `nextUpdate`, or a
source that cannot be fetched, is kept and used, and reported on `/status` as a warning (soft
fail: an IGC-Santé outage must not cut every exchange between boxes). It must not decide whether
a peer is accepted (`tls.PeerCheck` asks it) nor verify whitelists (`store` asks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from drimbox.http.tlspolicy import client_context

log = logging.getLogger(__name__)

MAX_CRL_BYTES = 20 * 1024 * 1024  # IGC-Santé's largest CRLs are a few MB
CACHE_DIR = "crl"


def _now() -> datetime:
    return datetime.now(UTC)


class CrlError(Exception):
    """A CRL source gave nothing usable; the message is French, for /status."""


@dataclass
class CrlSource:
    """One place a CRL is published, and what the last attempts gave."""

    location: str
    crl: x509.CertificateRevocationList | None = None
    fetched_at: datetime | None = None  # last successful download
    error: str = ""  # last failure, French; empty after a success

    def stale(self, now: datetime) -> bool:
        next_update = self.crl.next_update_utc if self.crl is not None else None
        return next_update is not None and next_update < now


@dataclass(frozen=True)
class Revoked:
    """A certificate found on a CRL."""

    serial_number: int
    revoked_at: datetime
    source: str

    @property
    def message(self) -> str:
        return f"révoqué le {self.revoked_at:%d/%m/%Y} (liste de révocation {self.source})"


async def refresh_periodically(
    refresh: Callable[[], object], stop: asyncio.Event, interval_s: float, what: str
) -> None:
    """Run `refresh` in a thread now, then every `interval_s` seconds until `stop` is set."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(refresh)
        except Exception:
            # A bug must not end the loop: what is held stays in force, the next round retries.
            log.exception("%s refresh failed unexpectedly", what)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)


def distribution_points(certificate: x509.Certificate) -> list[str]:
    """The HTTP(S) CRL distribution points of a certificate (LDAP ones are not followed)."""
    try:
        points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    return [
        name.value
        for point in points
        for name in point.full_name or []
        if isinstance(name, x509.UniformResourceIdentifier)
        and name.value.lower().startswith(("http://", "https://"))
    ]


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise CrlError("ce n'est pas une liste de révocation (CRL) lisible") from exc


class RevocationStore:
    """The CRLs in force. Thread-safe; `revoked()` never blocks on a download."""

    def __init__(
        self,
        issuers: Sequence[x509.Certificate],
        state_dir: str | Path,
        *,
        sources: Iterable[str] = (),
        follow_distribution_points: bool = True,
        timeout_s: float = 15.0,
        max_bytes: int = MAX_CRL_BYTES,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.issuers = list(issuers)
        self.cache_dir = Path(state_dir) / CACHE_DIR
        self.follow = follow_distribution_points
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.clock = clock
        self.last_refresh: datetime | None = None
        self._sources: dict[str, CrlSource] = {}
        self._lock = threading.Lock()
        for location in sources:
            self._add(location)
        self.note(*self.issuers)

    # -- sources ---------------------------------------------------------------------------

    def _add(self, location: str) -> None:
        location = location.strip()
        if location and location not in self._sources:
            source = CrlSource(location)
            self._sources[location] = source
            self._load_cached(source)

    def note(self, *certificates: x509.Certificate) -> None:
        """Certificates the box met: their CRL distribution points are fetched from now on."""
        if not self.follow:
            return
        with self._lock:
            for certificate in certificates:
                for url in distribution_points(certificate):
                    self._add(url)

    @property
    def sources(self) -> list[CrlSource]:
        with self._lock:  # `note` may add one from a request thread meanwhile
            return list(self._sources.values())

    # -- reading ---------------------------------------------------------------------------

    def revoked(self, certificate: x509.Certificate) -> Revoked | None:
        """The CRL entry of `certificate` on its issuer's CRL, or None (also when no CRL of its
        issuer is held: `problems()` says so)."""
        for source in self.sources:
            crl = source.crl
            if crl is None or crl.issuer != certificate.issuer:
                continue
            entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
            if entry is not None:
                return Revoked(
                    certificate.serial_number, entry.revocation_date_utc, source.location
                )
        return None

    def covers(self, certificate: x509.Certificate) -> bool:
        """A CRL of this certificate's issuer is held."""
        return any(s.crl is not None and s.crl.issuer == certificate.issuer for s in self.sources)

    def problems(self, now: datetime | None = None) -> list[str]:
        """French warnings: sources never fetched or failing, CRLs past their `nextUpdate`."""
        now = now or self.clock()
        lines = []
        for source in self.sources:
            if source.crl is None:
                why = source.error or "pas encore téléchargée"
                lines.append(f"liste de révocation {source.location} indisponible : {why}")
            elif source.stale(now):
                assert source.crl is not None and source.crl.next_update_utc is not None
                lines.append(
                    f"liste de révocation {source.location} périmée depuis le "
                    f"{source.crl.next_update_utc:%d/%m/%Y %H:%M} UTC"
                    + (f" ({source.error})" if source.error else "")
                )
            elif source.error:
                lines.append(
                    f"liste de révocation {source.location} : dernier téléchargement en échec "
                    f"({source.error}), liste du {source.crl.last_update_utc:%d/%m/%Y} utilisée"
                )
        return lines

    # -- refreshing ------------------------------------------------------------------------

    def refresh(self) -> None:
        """Fetch every source once; a failure keeps the CRL held and is recorded."""
        now = self.clock()
        self.last_refresh = now
        for source in self.sources:
            try:
                data = self._fetch(source.location)
                crl = self._verified(load_crl(data))
            except CrlError as exc:
                source.error = str(exc)
                log.warning("CRL %s: %s", source.location, exc)
                continue
            held = source.crl
            if held is not None and crl.last_update_utc < held.last_update_utc:
                source.error = "liste reçue plus ancienne que celle détenue (rejeu ?)"
                log.warning("CRL %s older than the one held: kept the held one", source.location)
                continue
            source.crl, source.fetched_at, source.error = crl, now, ""
            self._write_cache(source.location, crl)

    async def run_forever(
        self, stop: asyncio.Event, interval_s: float, *, refresh_first: bool = True
    ) -> None:
        """Refresh now (or after `interval_s` when not `refresh_first`), then every
        `interval_s` seconds until `stop` is set."""
        if not refresh_first:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
        await refresh_periodically(self.refresh, stop, interval_s, "CRL")

    # -- internals -------------------------------------------------------------------------

    def _verified(self, crl: x509.CertificateRevocationList) -> x509.CertificateRevocationList:
        for issuer in self.issuers:
            key = issuer.public_key()
            # IGC-Santé CAs sign with RSA (EC accepted too); no other key type signed a CRL of ours.
            if (
                issuer.subject == crl.issuer
                and isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
                and crl.is_signature_valid(key)
            ):
                return crl
        raise CrlError(
            f"liste signée par une autorité inconnue ou mal signée ({crl.issuer.rfc4514_string()})"
        )

    def _fetch(self, location: str) -> bytes:
        if not location.lower().startswith(("http://", "https://")):
            path = Path(urlsplit(location).path if location.startswith("file://") else location)
            try:
                if path.stat().st_size > self.max_bytes:
                    raise CrlError(f"fichier trop gros (plus de {self.max_bytes} octets)")
                return path.read_bytes()
            except OSError as exc:
                raise CrlError(f"fichier illisible ({exc.strerror or exc})") from exc
        try:
            with (
                httpx.Client(
                    timeout=self.timeout_s, follow_redirects=True, verify=client_context()
                ) as client,
                client.stream("GET", location) as response,
            ):
                if response.status_code != 200:
                    raise CrlError(f"réponse HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise CrlError(f"plus de {self.max_bytes} octets")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise CrlError(f"injoignable ({type(exc).__name__})") from exc

    def _cache_path(self, location: str) -> Path:
        return self.cache_dir / (hashlib.sha256(location.encode()).hexdigest()[:32] + ".crl")

    def _write_cache(self, location: str, crl: x509.CertificateRevocationList) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".crl-", suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(crl.public_bytes(serialization.Encoding.DER))
            os.replace(tmp, self._cache_path(location))
        except OSError as exc:
            log.warning("cannot cache the CRL of %s: %s", location, exc)

    def _load_cached(self, source: CrlSource) -> None:
        path = self._cache_path(source.location)
        try:
            source.crl = self._verified(load_crl(path.read_bytes()))
        except FileNotFoundError:
            return
        except (OSError, CrlError) as exc:
            log.warning("cached CRL %s refused: %s", path, exc)
