"""Retrieval of an exam's images from the Source boxes named in its KOS (WADO-RS, DRIM-M flavour).

Owns the outgoing WADO-RS series request of ARCHITECTURE §2.6 — `Authorization: Bearer <PSC
access token of the user>`, `KOS-SOPInstanceUID`, the `Accept` list of the official request
(`samples/ans/validators/wado-rs-series-request.txt`) — and the rules around it:

- the RetrieveURL's host must be the `db` of a whitelist entry, checked **before any network
  contact** (`PeerCheck.check_outgoing_host`); plain `http://` is refused;
- mutual TLS with the node's certificate (`client_ssl_context`), and the server certificate's
  subject must be that entry's `DNCertificatOperateur` (`PeerCheck.check_outgoing`), checked
  once the headers are in and **before the body is read**;
- the multipart/related body is parsed as it arrives; each instance is checked against the KOS
  (only referenced instances of that series are stored) and handed to an `InstanceStore` (the
  node's cache, or a folder) before the next one is read: memory holds one instance at a time;
- 401/403/404/406/503 (Retry-After honoured when short) become `RetrievalError`s in French;
- every series retrieval is audited (who, patient, study, peer, bytes, result).

It must not decide who may retrieve (the web layer checks the session), nor serve images.
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import uvloop

from drimbox.conso.common import Auditor, ConsoError, InstanceStore, SeriesWriter, no_audit
from drimbox.conso.history import Manifest, SeriesRef
from drimbox.dicom.cache import CacheError, describe_instance
from drimbox.http.multipart import MultipartError
from drimbox.http.multipart_client import (
    FetchError,
    MultipartResponse,
    PartTooLarge,
    open_multipart,
)
from drimbox.trust.audit import Result
from drimbox.trust.tls import PeerCheck, PeerRefused, peer_certificate
from drimbox.trust.whitelist import Domain

log = logging.getLogger(__name__)
_T = TypeVar("_T")

KOS_HEADER: Final = "KOS-SOPInstanceUID"
# The Accept value of the official DRIM-M series request, byte for byte (trailing comma included):
# JPEG lossless SV1 first, then JPEG-LS, JPEG 2000, JPEG, MPEG, Explicit VR Little Endian.
ACCEPT_DRIM_M: Final = (
    ",".join(
        f'multipart/related; type="application/dicom";transfer-syntax={syntax};q={q};boundary=**'
        for syntax, q in (
            ("1.2.840.10008.1.2.4.70", "0.9"),
            ("1.2.840.10008.1.2.4.80", "0.8"),
            ("1.2.840.10008.1.2.4.91", "0.6"),
            ("1.2.840.10008.1.2.4.50", "0.5"),
            ("1.2.840.10008.1.2.4.51", "0.5"),
            ("1.2.840.10008.1.2.4.100", "0.5"),
            ("1.2.840.10008.1.2.4.101", "0.5"),
            ("1.2.840.10008.1.2.4.102", "0.5"),
            ("1.2.840.10008.1.2.4.103", "0.5"),
            ("1.2.840.10008.1.2.1", "0.4"),
        )
    )
    + ","
)
MAX_INSTANCE_BYTES: Final = 2 * 1024**3  # one multi-frame instance may be large; not a series
MAX_ERROR_BODY: Final = 4096
MIN_BUSY_WAIT_S: Final = 0.2  # a busy Source's "Retry-After: 0" still waits this much


def run_reader(reader: Coroutine[Any, Any, _T]) -> _T:
    """Run one Source read on its own event loop, uvloop's: its TLS layer (Cython over libuv)
    decrypts a Source's stream with ~20 % less CPU than asyncio's (0.36 s against 0.46 s for
    a 257 MB series, bench/conso_prefetch.py), and a warm prefetch is bound by this reader's CPU
    (issue 17 §4)."""
    return uvloop.run(reader)


class RetrievalError(ConsoError):
    """A series could not be retrieved. `status` is the Source's HTTP status when it answered;
    `retry_after` (seconds) when it said when to come back (503)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        detail: str = "",
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(code, message, detail=detail, retryable=retryable)
        self.status = status
        self.retry_after = retry_after


@dataclass
class Progress:
    """Figures handed to the progress callback after each instance."""

    series_done: int
    series_total: int
    instances: int
    bytes: int
    expected_instances: int
    current_series: str = ""


ProgressCallback = Callable[[Progress], None]


@dataclass
class SeriesResult:
    series_uid: str
    peer: str  # whitelist Identifiant of the Source
    instances: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)  # referenced by the KOS, not received
    unexpected: list[str] = field(default_factory=list)  # received, not in the KOS: dropped
    received: list[str] = field(default_factory=list, repr=False)  # SOP UIDs stored
    already_stored: bool = False


@dataclass
class RetrievalReport:
    study_uid: str
    series: list[SeriesResult] = field(default_factory=list)
    errors: dict[str, RetrievalError] = field(default_factory=dict)  # by series UID

    @property
    def complete(self) -> bool:
        return not self.errors and not any(s.missing for s in self.series)

    @property
    def instances(self) -> int:
        return sum(s.instances for s in self.series)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.series)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


_STATUS_ERRORS: Final[dict[int, tuple[str, str]]] = {
    400: ("REQUETE_INVALIDE", "La DRIMbox source a jugé la demande d'images invalide."),
    401: (
        "NON_AUTHENTIFIE",
        "La DRIMbox source n'a pas accepté votre connexion Pro Santé Connect : reconnectez-vous "
        "puis réessayez.",
    ),
    403: (
        "ACCES_REFUSE",
        "La DRIMbox source refuse l'accès à ces images (examen non publié avec ce manifeste, ou "
        "accès non autorisé).",
    ),
    404: (
        "INTROUVABLE",
        "Les images de cet examen ne sont plus disponibles sur la DRIMbox source.",
    ),
    406: (
        "FORMAT_NON_ACCEPTE",
        "La DRIMbox source ne peut fournir les images dans aucun des formats demandés.",
    ),
    503: (
        "SOURCE_INDISPONIBLE",
        "La DRIMbox source est momentanément indisponible : réessayez plus tard.",
    ),
}


@dataclass
class _Reading:
    """What one series' answer goes into, and the checks on each of its instances."""

    expected: set[str]
    writer: SeriesWriter
    result: SeriesResult
    totals: Progress
    progress: ProgressCallback | None
    received: set[str] = field(default_factory=set)

    def take(self, data: memoryview) -> None:
        sop, _sop_class, _syntax = describe_instance(data)
        result = self.result
        if sop not in self.expected:
            # Not referenced by the KOS of this series: never stored (identity safety).
            result.unexpected.append(sop)
            log.warning("instance %s not in KOS series %s: dropped", sop, result.series_uid)
            return
        if sop in self.received:
            return  # a duplicate part: stored once
        self.writer.add(data)
        self.received.add(sop)
        result.received.append(sop)
        result.instances += 1
        result.bytes += len(data)
        self.totals.instances += 1
        self.totals.bytes += len(data)
        if self.progress is not None:
            self.progress(self.totals)


@contextmanager
def _transport_errors(domain: Domain) -> Iterator[None]:
    """Network and format failures of a Source's answer, in French."""
    try:
        yield
    except FetchError as exc:
        raise RetrievalError(
            "SOURCE_INJOIGNABLE",
            f"La DRIMbox source {domain.name} est injoignable (réseau, certificat ou service "
            "arrêté).",
            detail=f"{type(exc).__name__}: {exc}",
            retryable=True,
        ) from exc
    except (MultipartError, ValueError) as exc:
        raise RetrievalError(
            "REPONSE_INVALIDE",
            f"La DRIMbox source {domain.name} a envoyé une réponse illisible.",
            detail=str(exc),
        ) from exc


class SourceRetriever:
    """WADO-RS client of the Source boxes, for one node.

    - `peer_check`: the node's `PeerCheck` (the whitelist in force);
    - `ssl_context`: `client_ssl_context(cert, key, ca)` of the node (mutual TLS);
    - `resolve`: host → address overrides (like curl's `--resolve`), for sites whose DNS cannot
      resolve peers, and for tests on loopback; the certificate is still checked against the
      whitelisted host name (SNI and Host header keep it);
    - `max_wait_s`: a busy Source (503 with a Retry-After of at most this) is asked again
      after waiting at least what it said, longer at each new refusal (plus a little jitter, so
      that Consos refused together do not come back together), until `busy_wait_s` of waiting
      for one series; a longer Retry-After is an error at once. `busy_retries` counts them.
    """

    def __init__(
        self,
        peer_check: PeerCheck,
        ssl_context: ssl.SSLContext,
        *,
        timeout_s: float = 60.0,
        resolve: Mapping[str, str] | None = None,
        max_instance_bytes: int = MAX_INSTANCE_BYTES,
        max_wait_s: float = 5.0,
        busy_wait_s: float = 120.0,
        user_agent: str = "DRIMbox",
    ) -> None:
        self._check = peer_check
        self._resolve = {k.lower(): v for k, v in (resolve or {}).items()}
        self._max_instance = max_instance_bytes
        self._max_wait = max_wait_s
        self._busy_wait = busy_wait_s
        self._busy_lock = threading.Lock()
        self.busy_retries = 0
        self._ssl = ssl_context
        self._timeout_s = timeout_s
        self._user_agent = user_agent

    def close(self) -> None:
        """Nothing held between series (one connection per series): kept for `with`."""

    def __enter__(self) -> SourceRetriever:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- one exam ----------------------------------------------------------------------------

    def retrieve_exam(
        self,
        manifest: Manifest,
        token: str,
        store: InstanceStore,
        *,
        series_uids: Sequence[str] | None = None,
        progress: ProgressCallback | None = None,
        audit: Auditor = no_audit,
    ) -> RetrievalReport:
        """Every series of the KOS (or those of `series_uids`), one after the other. A series
        that fails is reported in `errors` and the others are still fetched."""
        wanted = [s for s in manifest.series if series_uids is None or s.series_uid in series_uids]
        report = RetrievalReport(manifest.study_uid)
        totals = Progress(0, len(wanted), 0, 0, sum(len(s.instances) for s in wanted))
        for series in wanted:
            totals.current_series = series.series_uid
            try:
                result = self.retrieve_series(
                    series,
                    manifest,
                    token,
                    store,
                    progress=progress,
                    totals=totals,
                    audit=audit,
                )
                report.series.append(result)
            except RetrievalError as error:
                report.errors[series.series_uid] = error
            totals.series_done += 1
            if progress is not None:
                progress(totals)
        return report

    # -- one series --------------------------------------------------------------------------

    def retrieve_series(
        self,
        series: SeriesRef,
        manifest: Manifest,
        token: str,
        store: InstanceStore,
        *,
        progress: ProgressCallback | None = None,
        totals: Progress | None = None,
        audit: Auditor = no_audit,
    ) -> SeriesResult:
        url = series.retrieve_url
        host = urlsplit(url).hostname or ""

        def record(result: Result, nbytes: int | None = None, **extra: str | int) -> None:
            audit(
                nbytes=nbytes,
                action="wado_rs_retrieve",
                result=result,
                patient_ins=manifest.patient_id,
                study_uid=series.study_uid,
                remote=host,
                series_uid=series.series_uid,
                kos_uid=manifest.sop_instance_uid,
                **extra,
            )

        try:
            domain = self._allowed(url)
        except RetrievalError as refused:
            record("refused", code=refused.code)
            raise
        try:
            writer = store.open_series(series.study_uid, series.series_uid)
        except (OSError, ValueError, CacheError) as exc:
            raise RetrievalError(
                "STOCKAGE_IMPOSSIBLE",
                "Les images ne peuvent pas être enregistrées localement (cache ou dossier).",
                detail=str(exc),
            ) from exc
        if writer is None:
            return SeriesResult(series.series_uid, domain.identifier, already_stored=True)
        result = SeriesResult(series.series_uid, domain.identifier)
        totals = totals or Progress(0, 1, 0, 0, len(series.instances), series.series_uid)
        try:
            with _transport_errors(domain):
                self._fetch(url, series, manifest, token, writer, result, totals, progress)
        except BaseException as exc:
            writer.fail(exc)
            code = exc.code if isinstance(exc, RetrievalError) else type(exc).__name__
            record(
                "refused" if code == "CERTIFICAT_NON_CONFORME" else "error",
                nbytes=result.bytes,
                code=code,
                peer=domain.identifier,
            )
            raise
        writer.finish()
        result.missing = sorted({uid for _cls, uid in series.instances} - set(result.received))
        record(
            "ok",
            nbytes=result.bytes,
            peer=domain.identifier,
            instances=result.instances,
            missing=len(result.missing),
        )
        return result

    def measure(
        self,
        url: str,
        token: str,
        kos_uid: str,
        take: Callable[[memoryview], None],
        on_headers: Callable[[], None] | None = None,
    ) -> Domain:
        """One WADO-RS request to a Source for the speed test (`drimbox peer speedtest`): the
        same checks and headers as a retrieval, each instance handed to `take` and nothing kept,
        nothing audited (no patient data is stored or shown). Returns the Source's entry."""
        domain = self._allowed(url)
        with _transport_errors(domain):
            run_reader(
                self._fetch_once(url, self._headers(token, kos_uid), take, False, on_headers)
            )
        return domain

    def _headers(self, token: str, kos_uid: str) -> dict[str, str]:
        return {
            "Accept": ACCEPT_DRIM_M,
            "Authorization": f"Bearer {token}",
            KOS_HEADER: kos_uid,
            "User-Agent": self._user_agent,
        }

    def _allowed(self, url: str) -> Domain:
        parts = urlsplit(url)
        if not url:
            raise RetrievalError(
                "SANS_ADRESSE",
                "Le manifeste (KOS) n'indique pas où récupérer cette série (RetrieveURL absente).",
            )
        if parts.scheme != "https":
            raise RetrievalError(
                "URL_NON_SECURISEE",
                "Adresse de récupération des images non sécurisée (https obligatoire) : "
                "demande non envoyée.",
                detail=url,
            )
        try:
            return self._check.check_outgoing_host(url)
        except PeerRefused as refusal:
            raise RetrievalError(
                "HORS_LISTE_BLANCHE",
                f"La DRIMbox « {parts.hostname} » qui détient ces images n'est pas dans la liste "
                "blanche DRIM-M en vigueur : aucune demande ne lui a été envoyée.",
                detail=refusal.detail,
            ) from refusal

    def _fetch(
        self,
        url: str,
        series: SeriesRef,
        manifest: Manifest,
        token: str,
        writer: SeriesWriter,
        result: SeriesResult,
        totals: Progress,
        progress: ProgressCallback | None,
    ) -> None:
        """One GET of the series (blocking: its own event loop in the calling thread); a busy
        Source (503 with a short Retry-After) is asked again, backing off, then the series is
        read from its start (a refusal comes before any instance)."""
        headers = self._headers(token, manifest.sop_instance_uid)
        expected = {uid for _cls, uid in series.instances}
        reading = _Reading(expected, writer, result, totals, progress)
        waited = 0.0
        for attempt in itertools.count():
            may_retry = waited < self._busy_wait
            wait = run_reader(self._fetch_once(url, headers, reading.take, may_retry))
            if wait is None:
                return
            # At least what the Source asked, more at each refusal, never 0 (the total waited
            # bounds the retries).
            delay = min(max(wait, MIN_BUSY_WAIT_S) * (1 + attempt), self._max_wait)
            delay *= random.uniform(1.0, 1.25)  # jitter
            with self._busy_lock:
                self.busy_retries += 1
            log.info("Source %s busy, asking again in %.1f s", urlsplit(url).hostname, delay)
            time.sleep(delay)
            waited += delay

    async def _fetch_once(
        self,
        url: str,
        headers: dict[str, str],
        take: Callable[[memoryview], None],
        may_retry: bool,
        on_headers: Callable[[], None] | None = None,
    ) -> float | None:
        """None once the answer is read (each instance handed to `take`); else seconds to wait
        before asking again. `on_headers` is called once the Source's headers are in."""
        host = (urlsplit(url).hostname or "").lower()
        async with open_multipart(
            url,
            headers,
            timeout_s=self._timeout_s,
            ssl_context=self._ssl,
            connect_to=self._resolve.get(host),
        ) as response:
            # Who answers is checked before anything it sent is read (ARCHITECTURE §4).
            ssl_object = response.ssl_object
            try:
                self._check.check_outgoing(
                    url, peer_certificate(ssl_object) if ssl_object is not None else None
                )
            except PeerRefused as refusal:
                raise RetrievalError(
                    "CERTIFICAT_NON_CONFORME",
                    "Le certificat présenté par la DRIMbox source ne correspond pas à celui "
                    "de la liste blanche : images non téléchargées.",
                    detail=refusal.detail,
                ) from refusal
            if on_headers is not None:
                on_headers()
            if response.status == 503 and may_retry:
                wait = _retry_after(response.headers.get("retry-after"))
                if wait is not None and wait <= self._max_wait:
                    return wait
            if response.status != 200:
                body = await response.text(MAX_ERROR_BODY)
                raise self._status_error(response.status, response.headers, body)
            await self._read_parts(response, take)
            return None

    def _status_error(self, status: int, headers: Mapping[str, str], body: str) -> RetrievalError:
        detail = f"HTTP {status}: {body[:MAX_ERROR_BODY]}"
        code, message = _STATUS_ERRORS.get(
            status,
            (
                "ERREUR_SOURCE",
                f"La DRIMbox source a répondu par une erreur (HTTP {status}).",
            ),
        )
        retry_after = _retry_after(headers.get("retry-after")) if status == 503 else None
        if retry_after is not None:
            message += f" (nouvel essai possible dans {int(retry_after)} s)"
        return RetrievalError(
            code,
            message,
            detail=detail,
            status=status,
            retry_after=retry_after,
            retryable=status in (503,) or status >= 500,
        )

    async def _read_parts(
        self, response: MultipartResponse, take: Callable[[memoryview], None]
    ) -> None:
        content_type = response.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/related"):
            raise RetrievalError(
                "REPONSE_INVALIDE",
                "La DRIMbox source n'a pas renvoyé d'images DICOM (multipart/related attendu).",
                detail=f"Content-Type {content_type!r}",
            )
        try:
            async for part in response.parts(max_part=self._max_instance):
                part_type = part.content_type.split(";", 1)[0].strip().lower()
                if part_type and part_type != "application/dicom":
                    raise RetrievalError(
                        "REPONSE_INVALIDE",
                        "La DRIMbox source a envoyé autre chose qu'une instance DICOM.",
                        detail=f"part Content-Type {part.content_type!r}",
                    )
                take(part.body)
        except PartTooLarge as exc:
            raise RetrievalError(
                "REPONSE_INVALIDE",
                "La DRIMbox source envoie une instance démesurée : téléchargement interrompu.",
                detail=str(exc),
            ) from exc
