"""Getting a series from the PACS into the cache, once, while readers stream it.

Owns the retrieval methods of `[pacs] retrieve` behind one `Retriever` protocol — `wado-rs` (the
PACS's own DICOMweb, by far the fastest), `c-get`, `c-move` (to the box's own SCP) and
`c-move-dcmtk` (dcmtk's movescu and storescp, `drimbox.dicom.dcmtk`) — and `SeriesFetcher`,
the single flight: concurrent requests for one series share one retrieval, whose instances
readers follow as they land in the cache. `ImageService` puts the cache, the retriever and (for
C-MOVE) the SCP or storescp together for a node. DIMSE goes through `drimbox.dicom.pacs` and
`drimbox.dicom.dcmtk` only. It must not decide who may read a series (`drimbox.source.wado`).

Studies of other sites (the Conso's exams, `RemoteStudies`) take a source-aware path: a cache
miss is filled from the Source box that holds them (a `RemoteSeriesSource` the Conso registers,
WADO-RS over mutual TLS), and the QIDO answers for them are read from the cached instances
(`SourceAwarePacs`) — the local PACS is never asked for a study that came from another site.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydicom import dcmread
from pydicom.dataset import Dataset

from drimbox.config import Config
from drimbox.dicom.cache import CachedInstance, CacheEntry, SeriesCache
from drimbox.dicom.dcmtk import DcmtkMoveRetriever, StoreScpProcess, series_key
from drimbox.dicom.pacs import InstanceSink, PacsClient, PacsError, PacsSettings
from drimbox.dicom.scp import ReceivedInstance, StoreScp
from drimbox.http.multipart import MultipartError
from drimbox.http.multipart_client import FetchError, open_multipart
from drimbox.http.tlspolicy import client_context
from drimbox.metrics import NodeMetrics

log = logging.getLogger(__name__)

# Ask the PACS for what it stores (PS3.18 §8.7.3.5.2: `*` = no transcoding).
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class Retriever(Protocol):
    """Fetches one series from the PACS, handing each instance to `sink` as it arrives.

    Blocking (runs on a retrieval thread). `sop_classes` are the series' SOP classes when known
    (from the KOS), which spares DIMSE methods a C-FIND. Returns the number of instances.
    Raises `PacsError` when the PACS cannot be reached or fails."""

    method: str

    def retrieve_series(
        self, study_uid: str, series_uid: str, sink: InstanceSink, sop_classes: Sequence[str]
    ) -> int: ...


@runtime_checkable
class AsyncRetriever(Retriever, Protocol):
    """A retriever that can also run in the event loop (HTTP-based methods)."""

    async def retrieve_series_async(
        self, study_uid: str, series_uid: str, sink: InstanceSink, sop_classes: Sequence[str]
    ) -> int: ...


class CGetRetriever:
    method = "c-get"

    def __init__(self, client: PacsClient) -> None:
        self.client = client

    def retrieve_series(
        self, study_uid: str, series_uid: str, sink: InstanceSink, sop_classes: Sequence[str]
    ) -> int:
        return self.client.get_series(study_uid, series_uid, sink, sop_classes or None)


class CMoveRetriever:
    """C-MOVE to the box's own SCP: received instances are routed to the waiting retrieval by
    their Series Instance UID."""

    method = "c-move"

    def __init__(self, client: PacsClient, scp: StoreScp, destination_aet: str) -> None:
        self.client = client
        self.scp = scp
        self.destination_aet = destination_aet
        self._routes: dict[tuple[str, str], InstanceSink] = {}
        self._lock = threading.Lock()
        scp.add_handler(self._route)

    def _route(self, instance: ReceivedInstance) -> bool:
        if instance.move_originator_aet and instance.move_originator_aet != self.destination_aet:
            return False
        with self._lock:
            if not self._routes:
                return False
        key = series_key(instance.data)  # read from the bytes: pydicom cost ~0.5 ms an image
        with self._lock:
            sink = self._routes.get(key)
        if sink is None:
            return False
        sink(instance.data)
        return True

    def retrieve_series(
        self, study_uid: str, series_uid: str, sink: InstanceSink, sop_classes: Sequence[str]
    ) -> int:
        received = 0

        def counting(data: bytes | memoryview) -> None:
            nonlocal received
            sink(data)
            received += 1

        key = (study_uid, series_uid)
        with self._lock:
            self._routes[key] = counting
        try:
            # The PACS answers the C-MOVE after its last C-STORE sub-operation was answered.
            self.client.move_series(study_uid, series_uid, self.destination_aet)
        finally:
            with self._lock:
                self._routes.pop(key, None)
        return received


class WadoRsRetriever:
    """WADO-RS from the PACS's DICOMweb root, each part stored straight from the receive
    buffer (`drimbox.http.multipart_client`: a fraction of httpx's CPU per byte, which on the
    cold path is what the peer waits for)."""

    method = "wado-rs"

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        label: str = "",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"PACS DICOMweb URL {base_url!r} must be an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.label = label or self.base_url
        self.timeout_s = timeout_s
        self.ssl_context = ssl_context

    async def retrieve_series_async(
        self, study_uid: str, series_uid: str, sink: InstanceSink, sop_classes: Sequence[str]
    ) -> int:
        """In the node's event loop: no retrieval thread competing for the GIL with the
        response being served."""
        url = f"{self.base_url}/studies/{study_uid}/series/{series_uid}"
        count = 0
        try:
            async with open_multipart(
                url, {"Accept": WADO_ACCEPT}, timeout_s=self.timeout_s, ssl_context=self.ssl_context
            ) as response:
                if response.status == 404:
                    return 0
                if response.status != 200:
                    raise PacsError(
                        f"PACS {self.label} : WADO-RS de la série {series_uid} refusé "
                        f"(HTTP {response.status} {(await response.text(200)).strip()})"
                    )
                async for part in response.parts():
                    sink(part.body)
                    count += 1
        except FetchError as exc:
            raise PacsError(f"PACS {self.label} injoignable en WADO-RS ({exc})") from exc
        except MultipartError as exc:
            raise PacsError(f"PACS {self.label} : réponse WADO-RS mal formée ({exc})") from exc
        return count

    def retrieve_series(
        self, study_uid: str, series_uid: str, sink: InstanceSink, sop_classes: Sequence[str]
    ) -> int:
        """The same from a thread (e.g. a command-line tool)."""
        return asyncio.run(self.retrieve_series_async(study_uid, series_uid, sink, sop_classes))


class RemoteSourceError(PacsError):
    """The images of another site's study could not be had from the Source box that holds
    them (message in French). The local PACS is never asked instead: it does not hold them."""


class RemoteSeriesSource(Protocol):
    """Where a study of another site comes from (the Conso registers one per exam: the Source
    named by its KOS, the user's token). Blocking, called on a retrieval thread."""

    @property
    def series_uids(self) -> Sequence[str]:
        """The study's series, in the KOS's order."""
        ...

    def fetch_series(self, study_uid: str, series_uid: str, sink: InstanceSink) -> int:
        """Hand each instance of the series to `sink`; raises `RemoteSourceError`."""
        ...


class RemoteStudies:
    """The studies of other sites a node shows (Conso exams) and where each comes from.

    `is_remote` (a database lookup, e.g. `Grants.is_conso_study`) says which studies are
    remote even when no source is registered in this process (after a restart, or on another
    node of the site): those are then refused (503) rather than asked of the local PACS."""

    def __init__(self, is_remote: Callable[[str], bool] | None = None) -> None:
        self._is_remote = is_remote
        self._sources: dict[str, RemoteSeriesSource] = {}
        self._lock = threading.Lock()

    def register(self, study_uid: str, source: RemoteSeriesSource) -> None:
        """Images of `study_uid` come from `source` from now on (the latest registration wins:
        it carries the freshest user token)."""
        with self._lock:
            self._sources[study_uid] = source

    def source(self, study_uid: str) -> RemoteSeriesSource | None:
        with self._lock:
            return self._sources.get(study_uid)

    def is_remote(self, study_uid: str) -> bool:
        if self.source(study_uid) is not None:
            return True
        return self._is_remote is not None and self._is_remote(study_uid)


_NO_SOURCE = (
    "Les images de cet examen viennent d'un autre site et ne sont plus en cache : rouvrez "
    "l'examen depuis l'historique du patient."
)


class SeriesFetcher:
    """Single flight over the cache: `open()` gives the series' cache entry, starting one PACS
    retrieval when the series is not cached — or, for a study of another site (`remote`), one
    retrieval from its Source; concurrent callers share it.

    `retrievals` counts the PACS retrievals started, `remote_retrievals` those from Sources
    (for /status and tests)."""

    def __init__(
        self,
        cache: SeriesCache,
        retriever: Retriever,
        *,
        threads: int = 4,
        remote: RemoteStudies | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.cache = cache
        self.retriever = retriever
        self.remote = remote or RemoteStudies()
        self.metrics = metrics or NodeMetrics()
        self.retrievals = 0
        self.remote_retrievals = 0
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="drimbox-retrieve")
        self._running: set[Future[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()

    async def open(
        self, study_uid: str, series_uid: str, sop_classes: Sequence[str] = ()
    ) -> CacheEntry:
        """The entry, pinned: pair with `cache.release(entry)` (or use `series()`)."""
        entry, created = self.cache.get_or_begin(study_uid, series_uid)
        if created and await asyncio.to_thread(self.remote.is_remote, study_uid):
            future = self._executor.submit(self._fill_remote, entry)
            self._running.add(future)
            future.add_done_callback(self._running.discard)
        elif created:
            with self._lock:
                self.retrievals += 1
            if isinstance(self.retriever, AsyncRetriever):
                task = asyncio.create_task(self._fill_async(entry, tuple(sop_classes)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                future = self._executor.submit(self._fill, entry, tuple(sop_classes))
                self._running.add(future)
                future.add_done_callback(self._running.discard)
        return entry

    @contextlib.asynccontextmanager
    async def series(
        self, study_uid: str, series_uid: str, sop_classes: Sequence[str] = ()
    ) -> AsyncIterator[CacheEntry]:
        entry = await self.open(study_uid, series_uid, sop_classes)
        try:
            yield entry
        finally:
            self.cache.release(entry)

    async def _fill_async(self, entry: CacheEntry, sop_classes: tuple[str, ...]) -> None:
        assert isinstance(self.retriever, AsyncRetriever)
        started = time.perf_counter()
        try:
            count = await self.retriever.retrieve_series_async(
                entry.study_uid,
                entry.series_uid,
                lambda data: self._add(entry, data),
                sop_classes,
            )
            self._retrieved(entry, count, started)
        except BaseException as exc:
            self._failed(entry, exc, started)
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _fill(self, entry: CacheEntry, sop_classes: tuple[str, ...]) -> None:
        started = time.perf_counter()
        try:
            count = self.retriever.retrieve_series(
                entry.study_uid,
                entry.series_uid,
                lambda data: self._add(entry, data),
                sop_classes,
            )
            self._retrieved(entry, count, started)
        except BaseException as exc:  # noqa: BLE001 (handed to the readers, who answer 503)
            self._failed(entry, exc, started)

    def _retrieved(self, entry: CacheEntry, count: int, started: float) -> None:
        log.info(
            "series %s retrieved by %s: %d instance(s), %d bytes",
            entry.series_uid,
            self.retriever.method,
            count,
            entry.size,
            extra={"study_uid": entry.study_uid, "series_uid": entry.series_uid},
        )
        self._measure("pacs", self.retriever.method, entry, started, ok=True)
        self.cache.finish(entry)

    def _failed(self, entry: CacheEntry, exc: BaseException, started: float) -> None:
        log.warning(
            "retrieval of series %s failed: %s",
            entry.series_uid,
            exc,
            extra={"study_uid": entry.study_uid, "series_uid": entry.series_uid},
        )
        self._measure("pacs", self.retriever.method, entry, started, ok=False)
        self.cache.fail(entry, exc)

    def _measure(
        self, origin: str, method: str, entry: CacheEntry, started: float, *, ok: bool
    ) -> None:
        seconds = time.perf_counter() - started
        self.metrics.retrieved(origin, method, entry.size, seconds, ok)

    def _add(self, entry: CacheEntry, data: bytes | memoryview) -> None:
        self.cache.add(entry, data)

    def _fill_remote(
        self, entry: CacheEntry, on_instance: Callable[[int], None] | None = None
    ) -> None:
        """Fill a new entry of another site's study from its Source (never from the PACS)."""
        with self._lock:
            self.remote_retrievals += 1
        source = self.remote.source(entry.study_uid)
        if source is None:
            self.cache.fail(entry, RemoteSourceError(_NO_SOURCE))
            return

        def sink(data: bytes | memoryview) -> None:
            self._add(entry, data)
            if on_instance is not None:
                on_instance(len(entry.instances))

        started = time.perf_counter()
        context = {"study_uid": entry.study_uid, "series_uid": entry.series_uid}
        try:
            count = source.fetch_series(entry.study_uid, entry.series_uid, sink)
            log.info(
                "series %s retrieved from its Source: %d instance(s), %d bytes",
                entry.series_uid,
                count,
                entry.size,
                extra=context,
            )
            self._measure("source", "wado-rs", entry, started, ok=True)
            self.cache.finish(entry)
        except BaseException as exc:  # noqa: BLE001 (handed to the readers, who answer 503)
            log.warning(
                "retrieval of series %s from its Source failed: %s",
                entry.series_uid,
                exc,
                extra=context,
            )
            self._measure("source", "wado-rs", entry, started, ok=False)
            self.cache.fail(entry, exc)

    def remote_series(
        self,
        study_uid: str,
        series_uid: str,
        *,
        wait: Literal["first", "done"] = "done",
        timeout_s: float = 300.0,
        on_instance: Callable[[int], None] | None = None,
        prefetch: str | None = None,
    ) -> list[CachedInstance]:
        """Blocking (a worker thread): the cached instances of a series of another site's
        study, fetched from its Source on a miss (in this thread) or followed while another
        retrieval fills it; until the first instance or the whole series (`wait`). Raises
        `RemoteSourceError` when the Source could not provide it. `prefetch`: the launch
        prefetching it (no user views it yet, see `SeriesCache.get_or_begin`)."""
        entry, created = self.cache.get_or_begin(study_uid, series_uid, prefetch=prefetch)
        try:
            if created:
                self._fill_remote(entry, on_instance)
            deadline = time.monotonic() + timeout_s
            seen = -1
            while True:
                with self.cache.lock:
                    instances = list(entry.instances)
                    done, error = entry.done, entry.error
                if on_instance is not None and len(instances) != seen:
                    seen = len(instances)
                    on_instance(seen)
                if done or (wait == "first" and instances):
                    break
                if time.monotonic() > deadline:
                    raise RemoteSourceError(
                        "La DRIMbox source met trop de temps à envoyer les images : réessayez."
                    )
                time.sleep(0.05)
            if error is not None and (wait == "done" or not instances):
                if isinstance(error, PacsError):
                    raise error
                message = getattr(error, "message", "") or str(error)
                raise RemoteSourceError(message) from error
            return instances
        finally:
            self.cache.release(entry)

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)


_STUDY_KEYS = (
    "StudyInstanceUID",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "StudyID",
    "ReferringPhysicianName",
)
_SERIES_KEYS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "SeriesDate",
)
_INSTANCE_KEYS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
)


def _header(instance: CachedInstance) -> Dataset:
    return dcmread(BytesIO(instance.read()), stop_before_pixels=True)


def _pick(source: Dataset, keywords: Sequence[str]) -> Dataset:
    out = Dataset()
    for keyword in keywords:
        if keyword in source:
            setattr(out, keyword, source.data_element(keyword).value)  # type: ignore[union-attr]
    return out


class SourceAwarePacs(PacsClient):
    """The node's PACS client for the image routes' queries (QIDO-RS), except that a study of
    another site is described from its cached instances (fetched from its Source when needed)
    instead of a C-FIND to the local PACS, which does not hold it."""

    def __init__(self, settings: PacsSettings, fetcher: SeriesFetcher | None = None) -> None:
        super().__init__(settings)
        self.fetcher = fetcher

    def _remote(self, study_uid: str) -> SeriesFetcher | None:
        fetcher = self.fetcher
        if fetcher is None or not study_uid or not fetcher.remote.is_remote(study_uid):
            return None
        return fetcher

    def _first_instances(self, fetcher: SeriesFetcher, study_uid: str) -> list[Dataset]:
        source = fetcher.remote.source(study_uid)
        if source is None:
            raise RemoteSourceError(_NO_SOURCE)
        headers: list[Dataset] = []
        failure: RemoteSourceError | None = None
        for series_uid in source.series_uids:
            try:
                instances = fetcher.remote_series(study_uid, series_uid, wait="first")
            except RemoteSourceError as exc:
                failure = exc
                continue
            if instances:
                headers.append(_header(instances[0]))
        if not headers and failure is not None:
            raise failure
        return headers

    def find_studies(self, **keys: Any) -> list[Dataset]:
        study_uid = str(keys.get("StudyInstanceUID", "") or "")
        fetcher = self._remote(study_uid)
        if fetcher is None:
            return super().find_studies(**keys)
        headers = self._first_instances(fetcher, study_uid)
        if not headers:
            return []
        study = _pick(headers[0], _STUDY_KEYS)
        study.ModalitiesInStudy = sorted({str(h.get("Modality", "")) for h in headers} - {""})
        return [study]

    def find_series(self, study_uid: str) -> list[Dataset]:
        fetcher = self._remote(study_uid)
        if fetcher is None:
            return super().find_series(study_uid)
        return [_pick(h, _SERIES_KEYS) for h in self._first_instances(fetcher, study_uid)]

    def find_instances(self, study_uid: str, series_uid: str) -> list[Dataset]:
        fetcher = self._remote(study_uid)
        if fetcher is None:
            return super().find_instances(study_uid, series_uid)
        instances = fetcher.remote_series(study_uid, series_uid, wait="done")
        return [_pick(_header(i), _INSTANCE_KEYS) for i in instances]


def dicomweb_tls(config: Config) -> ssl.SSLContext:
    """How the PACS's DICOMweb is trusted over https: `[pacs] dicomweb_ca_file`, else the
    system's authorities."""
    return trusted_authorities(config.pacs.dicomweb_ca_file, "[pacs] dicomweb_ca_file")


def trusted_authorities(ca_file: str, key: str) -> ssl.SSLContext:
    """A client TLS context trusting `ca_file` (PEM), else the system's authorities; raises
    `ValueError` (French, naming the configuration `key`) for a missing or unreadable file."""
    if ca_file and not Path(ca_file).is_file():
        raise ValueError(f"{key} : fichier introuvable ({ca_file})")
    try:
        return client_context(ca_file)
    except ssl.SSLError as exc:
        raise ValueError(f"{key} : autorités illisibles ({exc})") from exc


def pacs_settings(config: Config) -> PacsSettings:
    p = config.pacs
    return PacsSettings(
        host=p.host,
        port=p.port,
        called_aet=p.called_aet,
        calling_aet=p.calling_aet,
        connection_timeout=min(p.timeout_s, 10.0),
        acse_timeout=p.timeout_s,
        dimse_timeout=max(p.timeout_s, 120.0),
        network_timeout=max(p.timeout_s, 120.0),
        max_pdu=p.max_pdu or 262144,
        tls=pacs_tls(config),
    )


def pacs_tls(config: Config) -> ssl.SSLContext | None:
    """The TLS context of DICOM associations to the PACS (`[pacs] tls`), None for plain TCP:
    the box's TLS policy, the PACS's CAs, and the client certificate if one is configured
    (PEM; its permissions are checked at start with the other keys)."""
    p = config.pacs
    if not p.tls:
        return None
    context = trusted_authorities(p.tls_ca, "[pacs] tls_ca")
    if p.tls_cert:
        password = os.environ.get(p.key_passphrase_env) if p.key_passphrase_env else None
        try:
            context.load_cert_chain(p.tls_cert, p.tls_key or p.tls_cert, password)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"[pacs] tls_cert / tls_key illisibles ({exc})") from exc
    return context


def storescp_process(
    config: Config, spool: Path | None = None, metrics: NodeMetrics | None = None
) -> StoreScpProcess:
    """The dcmtk storescp of `c-move-dcmtk` (not started); its spool in the cache folder
    unless given (a speed test next to a running node uses its own)."""
    p = config.pacs
    return StoreScpProcess(
        p.storescp_aet,
        p.storescp_port,
        spool or Path(config.store.cache_dir) / "storescp-spool",
        storescp=str(Path(p.dcmtk_dir) / "storescp"),
        on_event=metrics.storescp_event if metrics is not None else None,
    )


def build_retriever(
    config: Config,
    method: str,
    pacs: PacsClient,
    scp: StoreScp | None = None,
    storescp: StoreScpProcess | None = None,
) -> Retriever:
    """The retriever of `method` (`[pacs] retrieve`) for `pacs`; `c-move` needs the running SCP
    where the PACS sends the instances (`[pacs] calling_aet` is its AE title), `c-move-dcmtk`
    the dcmtk storescp (`[pacs] storescp_aet`)."""
    if method == "wado-rs":
        if not config.pacs.dicomweb_url:
            raise ValueError(
                "[pacs] retrieve = wado-rs demande [pacs] dicomweb_url (racine DICOMweb du PACS)"
            )
        return WadoRsRetriever(
            config.pacs.dicomweb_url,
            timeout_s=config.pacs.timeout_s,
            label=pacs.settings.label,
            ssl_context=dicomweb_tls(config),
        )
    if method == "c-move":
        if scp is None:
            raise ValueError("la récupération c-move demande le SCP DICOM de la DRIMbox")
        return CMoveRetriever(pacs, scp, config.pacs.calling_aet)
    if method == "c-move-dcmtk":
        if storescp is None:
            raise ValueError("la récupération c-move-dcmtk demande le storescp de dcmtk")
        return DcmtkMoveRetriever(
            pacs.settings, storescp, movescu=str(Path(config.pacs.dcmtk_dir) / "movescu")
        )
    if method == "c-get":
        return CGetRetriever(pacs)
    raise ValueError(
        f"méthode de récupération inconnue : {method!r} (c-get, c-move, c-move-dcmtk ou wado-rs)"
    )


class ImageService:
    """A node's image service: cache, PACS retriever and, for C-MOVE, the SCP; and `remote`,
    the studies of other sites (Conso exams), which are fetched from their Source instead.

    Built from the configuration; `start()`/`stop()` are reference-counted so that the peer
    and viewer apps of one node can share one service. `scp`: the node's running C-STORE SCP
    (shared with IOCM), used by `c-move`; without it the service starts its own on
    `[pacs] scp_host:scp_port`. `retriever` may be given (tests wrap the real one to slow it
    down or count calls)."""

    def __init__(
        self,
        config: Config,
        *,
        retriever: Retriever | None = None,
        scp: StoreScp | None = None,
        remote: RemoteStudies | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or NodeMetrics(config.node.name)
        store = config.store
        self.cache = SeriesCache(
            Path(store.cache_dir),
            store.cache_max_bytes,
            store.cache_ttl_h * 3600.0,
            protect_viewed_s=store.cache_protect_viewed_min * 60.0,
        )
        self.pacs = SourceAwarePacs(pacs_settings(config))
        self.remote = remote or RemoteStudies()
        self.scp = scp
        self._owns_scp = False
        self.storescp: StoreScpProcess | None = None
        if retriever is None:
            retriever = self._default_retriever()
        self.retriever = retriever
        self.fetcher = SeriesFetcher(
            self.cache, retriever, remote=self.remote, metrics=self.metrics
        )
        self.pacs.fetcher = self.fetcher
        self._users = 0

    def _default_retriever(self) -> Retriever:
        method = self.config.pacs.retrieve
        if method == "c-move" and self.scp is None:
            # A node passes its own SCP (shared with IOCM); this one is for a lone service.
            pacs = self.config.pacs
            self.scp = StoreScp(
                pacs.calling_aet, pacs.scp_host, pacs.scp_port, senders=pacs.scp_calling_aets()
            )
            self._owns_scp = True
        if method == "c-move-dcmtk":
            self.storescp = storescp_process(self.config, metrics=self.metrics)
        return build_retriever(self.config, method, self.pacs, self.scp, self.storescp)

    async def start(self) -> None:
        self._users += 1
        if self._users == 1 and self._owns_scp and self.scp is not None:
            await asyncio.to_thread(self.scp.start)
        if self._users == 1 and self.storescp is not None:
            await asyncio.to_thread(self.storescp.start)

    async def stop(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        if self._owns_scp and self.scp is not None:
            await asyncio.to_thread(self.scp.stop)
        await self.fetcher.shutdown()
        if self.storescp is not None:
            await asyncio.to_thread(self.storescp.stop)
        aclose: Callable[[], Any] | None = getattr(self.retriever, "aclose", None)
        if aclose is not None:
            await aclose()
        close: Callable[[], Any] | None = getattr(self.retriever, "close", None)
        if close is not None:
            close()
