"""Getting a series from the PACS into the cache, once, while readers stream it.

Owns the three retrieval methods of `[pacs] retrieve` behind one `Retriever` protocol —
`wado-rs` (the PACS's own DICOMweb, by far the fastest), `c-get` and `c-move` (to the box's own
SCP) — and `SeriesFetcher`, the single flight: concurrent requests for one series share one
retrieval, whose instances readers follow as they land in the cache. `ImageService` puts the
cache, the retriever and (for C-MOVE) the SCP together for a node. DIMSE goes through
`drimbox.dicom.pacs` only. It must not decide who may read a series (`drimbox.source.wado`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from drimbox.config import Config
from drimbox.dicom.cache import CacheEntry, SeriesCache
from drimbox.dicom.pacs import InstanceSink, PacsClient, PacsError, PacsSettings
from drimbox.dicom.scp import ReceivedInstance, StoreScp
from drimbox.web.multipart import MultipartError, MultipartReader, boundary_of

log = logging.getLogger(__name__)

# Ask the PACS for what it stores (PS3.18 §8.7.3.5.2: `*` = no transcoding).
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
WADO_CHUNK = 256 * 1024


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
        header = instance.dataset_header()
        key = (str(header.get("StudyInstanceUID", "")), str(header.get("SeriesInstanceUID", "")))
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

        def counting(data: bytes) -> None:
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
    """WADO-RS from the PACS's DICOMweb root, parts stored as they come off the wire."""

    method = "wado-rs"

    def __init__(self, base_url: str, *, timeout_s: float = 30.0, label: str = "") -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"PACS DICOMweb URL {base_url!r} must be an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.label = label or self.base_url
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self._limits = httpx.Limits(max_connections=8, max_keepalive_connections=4)
        self._client = httpx.Client(timeout=self._timeout, limits=self._limits)
        self._async: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None

    def close(self) -> None:
        self._client.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async[1].aclose()
            self._async = None

    def _async_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (loop, httpx.AsyncClient(timeout=self._timeout, limits=self._limits))
        return self._async[1]

    def _url(self, study_uid: str, series_uid: str) -> str:
        return f"{self.base_url}/studies/{study_uid}/series/{series_uid}"

    def _check(self, response: httpx.Response, series_uid: str) -> MultipartReader | None:
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise PacsError(
                f"PACS {self.label} : WADO-RS de la série {series_uid} refusé "
                f"(HTTP {response.status_code})"
            )
        return MultipartReader(boundary_of(response.headers.get("content-type", "")))

    async def retrieve_series_async(
        self, study_uid: str, series_uid: str, sink: InstanceSink, sop_classes: Sequence[str]
    ) -> int:
        """The same in the node's event loop: no retrieval thread competing for the GIL with
        the threads serving the response (measured: 2.2 s → under 1 s for 1300 instances)."""
        count = 0
        client = self._async_client()
        url = self._url(study_uid, series_uid)
        try:
            async with client.stream("GET", url, headers={"Accept": WADO_ACCEPT}) as response:
                reader = self._check(response, series_uid)
                if reader is None:
                    return 0
                async for chunk in response.aiter_raw(WADO_CHUNK):
                    for part in reader.feed(chunk):
                        sink(part.body)
                        count += 1
                reader.close()
        except httpx.TransportError as exc:
            raise PacsError(
                f"PACS {self.label} injoignable en WADO-RS ({type(exc).__name__}: {exc})"
            ) from exc
        except MultipartError as exc:
            raise PacsError(f"PACS {self.label} : réponse WADO-RS mal formée ({exc})") from exc
        return count

    def retrieve_series(
        self, study_uid: str, series_uid: str, sink: InstanceSink, sop_classes: Sequence[str]
    ) -> int:
        url = self._url(study_uid, series_uid)
        count = 0
        try:
            with self._client.stream("GET", url, headers={"Accept": WADO_ACCEPT}) as response:
                reader = self._check(response, series_uid)
                if reader is None:
                    return 0
                for chunk in response.iter_raw(WADO_CHUNK):
                    for part in reader.feed(chunk):
                        sink(part.body)
                        count += 1
                reader.close()
        except httpx.TransportError as exc:
            raise PacsError(
                f"PACS {self.label} injoignable en WADO-RS ({type(exc).__name__}: {exc})"
            ) from exc
        except MultipartError as exc:
            raise PacsError(f"PACS {self.label} : réponse WADO-RS mal formée ({exc})") from exc
        return count


class SeriesFetcher:
    """Single flight over the cache: `open()` gives the series' cache entry, starting one PACS
    retrieval when the series is not cached; concurrent callers share it.

    `retrievals` counts the PACS retrievals started (for /status and tests)."""

    def __init__(self, cache: SeriesCache, retriever: Retriever, *, threads: int = 4) -> None:
        self.cache = cache
        self.retriever = retriever
        self.retrievals = 0
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="drimbox-retrieve")
        self._running: set[Future[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()

    async def open(
        self, study_uid: str, series_uid: str, sop_classes: Sequence[str] = ()
    ) -> CacheEntry:
        """The entry, pinned: pair with `cache.release(entry)` (or use `series()`)."""
        entry, created = self.cache.get_or_begin(study_uid, series_uid)
        if created:
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
        try:
            count = await self.retriever.retrieve_series_async(
                entry.study_uid,
                entry.series_uid,
                lambda data: self._add(entry, data),
                sop_classes,
            )
            log.info(
                "series %s retrieved by %s: %d instance(s), %d bytes",
                entry.series_uid,
                self.retriever.method,
                count,
                entry.size,
            )
            self.cache.finish(entry)
        except BaseException as exc:
            log.warning("retrieval of series %s failed: %s", entry.series_uid, exc)
            self.cache.fail(entry, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _fill(self, entry: CacheEntry, sop_classes: tuple[str, ...]) -> None:
        try:
            count = self.retriever.retrieve_series(
                entry.study_uid,
                entry.series_uid,
                lambda data: self._add(entry, data),
                sop_classes,
            )
            log.info(
                "series %s retrieved by %s: %d instance(s), %d bytes",
                entry.series_uid,
                self.retriever.method,
                count,
                entry.size,
            )
            self.cache.finish(entry)
        except BaseException as exc:  # noqa: BLE001 (handed to the readers, who answer 503)
            log.warning("retrieval of series %s failed: %s", entry.series_uid, exc)
            self.cache.fail(entry, exc)

    def _add(self, entry: CacheEntry, data: bytes) -> None:
        self.cache.add(entry, data)

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)


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
    )


class ImageService:
    """A node's image service: cache, PACS retriever and, for C-MOVE, the SCP.

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
    ) -> None:
        self.config = config
        store = config.store
        self.cache = SeriesCache(
            Path(store.cache_dir), store.cache_max_bytes, store.cache_ttl_h * 3600.0
        )
        self.pacs = PacsClient(pacs_settings(config))
        self.scp = scp
        self._owns_scp = False
        if retriever is None:
            retriever = self._default_retriever()
        self.retriever = retriever
        self.fetcher = SeriesFetcher(self.cache, retriever)
        self._users = 0

    def _default_retriever(self) -> Retriever:
        method = self.config.pacs.retrieve
        if method == "wado-rs":
            if not self.config.pacs.dicomweb_url:
                raise ValueError(
                    "[pacs] retrieve = wado-rs demande [pacs] dicomweb_url "
                    "(racine DICOMweb du PACS)"
                )
            return WadoRsRetriever(
                self.config.pacs.dicomweb_url,
                timeout_s=self.config.pacs.timeout_s,
                label=self.pacs.settings.label,
            )
        if method == "c-move":
            if self.scp is None:
                # A node passes its own SCP (shared with IOCM); this one is for a lone service.
                self.scp = StoreScp(
                    self.config.pacs.calling_aet,
                    self.config.pacs.scp_host,
                    self.config.pacs.scp_port,
                )
                self._owns_scp = True
            return CMoveRetriever(self.pacs, self.scp, self.config.pacs.calling_aet)
        return CGetRetriever(self.pacs)

    async def start(self) -> None:
        self._users += 1
        if self._users == 1 and self._owns_scp and self.scp is not None:
            await asyncio.to_thread(self.scp.start)

    async def stop(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        if self._owns_scp and self.scp is not None:
            await asyncio.to_thread(self.scp.stop)
        await self.fetcher.shutdown()
        aclose: Callable[[], Any] | None = getattr(self.retriever, "aclose", None)
        if aclose is not None:
            await aclose()
        close: Callable[[], Any] | None = getattr(self.retriever, "close", None)
        if close is not None:
            close()
