"""The whitelist in force: loaded from a URL or a file, verified, kept on disk and in memory.

Owns `WhitelistStore`: `refresh()` fetches the source, verifies it (`verify_whitelist`) and
replaces the list in force only when the new one is valid and not older (a replayed old list is
refused: `DateDeGeneration` never goes backwards); the last valid list stays in force otherwise and
every refusal is recorded (time, reason) for the status page and the admin console. A list whose
signer is on an IGC-Santé CRL (`revocation`, a `RevocationStore`) is refused like an invalid one.
The last valid list is written atomically to `state_dir` and re-verified at start. `run_forever`
refreshes periodically. It must not decide about peers (that is `tls.PeerCheck`'s, which reads
`current()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import ssl
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import httpx
from cryptography import x509

from drimbox.config import Config
from drimbox.http.tlspolicy import client_context
from drimbox.trust.errors import Reason, WhitelistError
from drimbox.trust.revocation import RevocationStore, refresh_periodically
from drimbox.trust.whitelist import MAX_BYTES, Whitelist, load_certificates, verify_whitelist
from drimbox.trust.xades_verify import ExpectedSigner

log = logging.getLogger(__name__)

STATE_FILE = "whitelist.xml"


@dataclass(frozen=True)
class Refusal:
    """One refused list (or failed download), for the status page and the admin console."""

    at: datetime
    source: str
    reason: Reason
    detail: str

    @property
    def message(self) -> str:
        return self.reason.message


@dataclass(frozen=True)
class RefreshResult:
    status: Literal["updated", "unchanged", "refused"]
    whitelist: Whitelist | None  # the list in force after the refresh
    refusal: Refusal | None = None


def _now() -> datetime:
    return datetime.now(UTC)


class WhitelistStore:
    """The list in force and its refresh. Thread-safe; `current()` never blocks on a download."""

    def __init__(
        self,
        source: str | Path,
        anchors: Sequence[x509.Certificate],
        state_dir: str | Path,
        *,
        expected_signer: ExpectedSigner | None = None,
        allow_sha1: bool = False,
        timeout_s: float = 30.0,
        max_bytes: int = MAX_BYTES,
        http_verify: bool | str = True,
        clock: Callable[[], datetime] = _now,
        keep_refusals: int = 100,
        revocation: RevocationStore | None = None,
    ) -> None:
        self.source = str(source)
        self.anchors = list(anchors)
        self.state_dir = Path(state_dir)
        self.expected_signer = expected_signer
        self.allow_sha1 = allow_sha1
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.http_verify = http_verify
        self.clock = clock
        self.revocation = revocation
        self.last_refresh: datetime | None = None  # last attempt, whatever its outcome
        self.last_success: datetime | None = None  # last attempt that ended with a valid list
        self._refusals: deque[Refusal] = deque(maxlen=keep_refusals)
        self._current: Whitelist | None = None
        self._lock = threading.Lock()
        self._load_state()

    # -- reading ---------------------------------------------------------------------------

    def current(self) -> Whitelist | None:
        """The list in force, or None when no valid list was ever obtained."""
        return self._current

    def age(self, now: datetime | None = None) -> timedelta | None:
        """How old the list in force is (since its `DateDeGeneration`)."""
        current = self._current
        if current is None:
            return None
        return (now or self.clock()) - current.generated_at

    @property
    def refusals(self) -> list[Refusal]:
        """Recent refusals, oldest first."""
        return list(self._refusals)

    # -- refreshing ------------------------------------------------------------------------

    def refresh(self) -> RefreshResult:
        """Fetch, verify and maybe replace the list in force. Never raises for a bad list."""
        with self._lock:
            now = self.clock()
            self.last_refresh = now
            try:
                data = self._fetch()
                candidate = self._verify(data, now)
            except WhitelistError as error:
                return self._refuse(now, error)
            current = self._current
            if current is not None and candidate.generated_at < current.generated_at:
                return self._refuse(
                    now,
                    WhitelistError(
                        Reason.OLDER_THAN_CURRENT,
                        f"received list generated {candidate.generated_at:%Y-%m-%dT%H:%M:%SZ}, the "
                        f"list in force was generated {current.generated_at:%Y-%m-%dT%H:%M:%SZ}",
                    ),
                )
            self.last_success = now
            if current is not None and current.raw == candidate.raw:
                return RefreshResult("unchanged", current)
            self._write_state(candidate.raw)
            self._current = candidate
            log.info(
                "whitelist updated: %d domains, generated %s",
                len(candidate.domains),
                candidate.generated_at,
            )
            return RefreshResult("updated", candidate)

    async def run_forever(self, stop: asyncio.Event, interval_s: float) -> None:
        """Refresh now, then every `interval_s` seconds until `stop` is set."""
        await refresh_periodically(self.refresh, stop, interval_s, "whitelist")

    # -- internals -------------------------------------------------------------------------

    def _verify(self, data: bytes, now: datetime) -> Whitelist:
        whitelist = verify_whitelist(
            data,
            self.anchors,
            now=now,
            expected_signer=self.expected_signer,
            allow_sha1=self.allow_sha1,
            source=self.source,
            max_bytes=self.max_bytes,
        )
        if self.revocation is not None:
            # The signer and the CAs above it (an intermediate CA revoked by the root's CRL).
            path = whitelist.signer.path or (whitelist.signer.certificate,)
            self.revocation.note(*path)
            for certificate in path:
                revoked = self.revocation.revoked(certificate)
                if revoked is not None:
                    raise WhitelistError(
                        Reason.SIGNER_REVOKED,
                        f"{certificate.subject.rfc4514_string()} serial "
                        f"{certificate.serial_number:x} (chain of {whitelist.signer.subject}): "
                        f"revoked {revoked.revoked_at:%Y-%m-%d} ({revoked.source})",
                    )
        return whitelist

    def _refuse(self, now: datetime, error: WhitelistError) -> RefreshResult:
        refusal = Refusal(now, self.source, error.reason, error.detail)
        self._refusals.append(refusal)
        log.warning("whitelist from %s refused: %s (%s)", self.source, error.message, error.detail)
        return RefreshResult("refused", self._current, refusal)

    def _fetch(self) -> bytes:
        if self.source.startswith(("http://", "https://")):
            return self._download()
        path = Path(self.source)
        try:
            if path.stat().st_size > self.max_bytes:
                raise WhitelistError(Reason.TOO_LARGE, f"{path} is larger than {self.max_bytes}")
            return path.read_bytes()
        except OSError as exc:
            raise WhitelistError(Reason.UNREACHABLE, f"{path}: {exc.strerror or exc}") from exc

    def _download(self) -> bytes:
        try:
            with (
                httpx.Client(timeout=self.timeout_s, verify=self._verify_tls()) as client,
                client.stream("GET", self.source) as response,
            ):
                if response.status_code != 200:
                    raise WhitelistError(
                        Reason.UNREACHABLE, f"HTTP {response.status_code} from {self.source}"
                    )
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    # Stop reading early: a hostile or broken server must not fill our memory.
                    if len(body) > self.max_bytes:
                        raise WhitelistError(
                            Reason.TOO_LARGE, f"more than {self.max_bytes} bytes from {self.source}"
                        )
                return bytes(body)
        except httpx.HTTPError as exc:
            raise WhitelistError(Reason.UNREACHABLE, f"{self.source}: {exc!r}") from exc

    def _verify_tls(self) -> ssl.SSLContext | bool:
        if self.http_verify is False:
            return False
        return client_context(self.http_verify if isinstance(self.http_verify, str) else None)

    def _write_state(self, data: bytes) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        target = self.state_dir / STATE_FILE
        # Write-then-rename in the same folder: a crash leaves the old list or the new one, never
        # half of one.
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".whitelist-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _load_state(self) -> None:
        path = self.state_dir / STATE_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read the stored whitelist %s: %s", path, exc)
            return
        # Re-verified at every start: anchors may have changed and the signer may have expired.
        now = self.clock()
        try:
            whitelist = self._verify(data, now)
        except WhitelistError as error:
            self._refusals.append(Refusal(now, str(path), error.reason, error.detail))
            log.warning("stored whitelist %s refused: %s (%s)", path, error.message, error.detail)
            return
        self._current = dataclasses.replace(whitelist, source=str(path))


def whitelist_store(config: Config) -> WhitelistStore | None:
    """The whitelist in force, refreshed from `[trust] whitelist_source`; None when unset."""
    trust = config.trust
    if not trust.whitelist_source:
        return None
    expected = ExpectedSigner(
        common_name=re.escape(trust.expected_signer_cn) if trust.expected_signer_cn else None,
        organizational_unit=(
            re.escape(trust.expected_signer_ou) if trust.expected_signer_ou else None
        ),
    )
    anchors = load_certificates([Path(anchor) for anchor in trust.anchors])
    return WhitelistStore(
        trust.whitelist_source,
        anchors,
        trust.state_dir,
        expected_signer=expected,
        allow_sha1=trust.allow_sha1,
        revocation=revocation_store(config, anchors),
    )


def revocation_store(config: Config, anchors: Sequence[x509.Certificate]) -> RevocationStore:
    """The CRLs of the trust space: those configured, and (unless turned off) those the CAs and
    the box's own certificates point to. CRLs are checked with the whitelist anchors and the
    peers' CAs."""
    trust = config.trust
    issuers = list(anchors)
    own: list[x509.Certificate] = []
    for path, kept in ((trust.tls_ca, issuers), (trust.tls_cert, own),
                       (config.dmp.tls_cert, own), (config.dmp.signing_cert, own)):  # fmt: skip
        if path:
            with contextlib.suppress(OSError, ValueError):
                kept.extend(load_certificates([path]))
    store = RevocationStore(
        issuers,
        trust.state_dir,
        sources=trust.crl_urls,
        follow_distribution_points=trust.crl_from_certificates,
    )
    store.note(*own)
    return store
