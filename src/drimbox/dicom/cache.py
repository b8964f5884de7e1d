"""The on-disk image cache: series retrieved from the PACS, kept for the next requests.

Owns the cache folder (`[store] cache_dir`): one sub-folder per series holding the Part-10 files
exactly as the PACS sent them, appended one after the other to `instances.bin` (one file per
series: creating 1300 small files cost more than receiving them), and an `entry.json` index
(offsets) written when the series is complete; the
size limit, the time to live, purge and usage figures. Eviction is fair between users: series a
prefetch filled and nobody opened go first, then the least recently used, and series a user
viewed recently (`protect_viewed_s`) last — never for another user's prefetch (which stops when
the cache has no room left for it, `prefetch_room`). An entry being filled is visible at once:
readers follow its instances as they arrive (`CacheEntry.follow`), which is what lets a response
stream before the PACS has finished.
Thread-safe: retrieval threads add instances, the event loop reads. A series being read is pinned
and never evicted under its readers. It must not talk to the PACS (see `drimbox.dicom.retrieve`)
nor decide who may read what. One node per cache folder (shared folders come with §7's scaling).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pydicom import dcmread

log = logging.getLogger(__name__)

ENTRY_FILE = "entry.json"
DATA_FILE = "instances.bin"
SERIES_DIR = "series"
PREALLOCATE_MIN = 1024 * 1024
PREALLOCATE_MAX = 64 * 1024 * 1024


class CacheError(Exception):
    """The cache folder cannot be used (permissions, full disk…)."""


@dataclass(frozen=True)
class CachedInstance:
    """One instance of a cached series: its Part-10 bytes, untouched, at `offset` in the
    series' data file."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    size: int
    offset: int
    entry: CacheEntry = field(repr=False, compare=False)

    def read(self) -> bytes:
        return self.entry.read(self.offset, self.size)

    def read_into(self, target: memoryview) -> None:
        """Copy the instance's bytes into `target` (exactly `size` bytes long): one copy from
        the page cache, none through an intermediate bytes object."""
        self.entry.read_into(self.offset, target)


@dataclass(frozen=True)
class CacheUsage:
    """Figures for `/status` and the admin console."""

    bytes: int
    max_bytes: int
    series: int
    instances: int
    hits: int
    misses: int
    evictions: int
    expired: int
    reading: int = 0  # series pinned by readers (or being filled) right now


@dataclass(frozen=True)
class PurgeResult:
    series: int
    bytes: int


_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


_ELEMENT_HEAD = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_LONG_LENGTH = struct.Struct("<I")
_META_SLOTS = {0x0002: 0, 0x0003: 1, 0x0010: 2}  # SOP class, SOP instance, transfer syntax


def _file_meta(data: bytes | memoryview) -> tuple[str, str, str] | None:
    """Group 0002 read straight from the bytes (always Explicit VR Little Endian, PS3.10 §7.1):
    ~100× cheaper than a pydicom parse, which matters at 1300 instances a series. Stops at
    the transfer syntax (0002,0010), the last element wanted (elements come in ascending
    order; out of order, what is missing sends the caller to pydicom)."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    found = ["", "", ""]
    pos, size = 132, len(data)
    head, long_length = _ELEMENT_HEAD.unpack_from, _LONG_LENGTH.unpack_from
    while pos + 8 <= size:
        group, element, vr, length = head(data, pos)
        if group != 0x0002 or element > 0x0010:
            break
        if vr in _LONG_VRS:
            (length,) = long_length(data, pos + 8)
            start = pos + 12
        else:
            start = pos + 8
        slot = _META_SLOTS.get(element)
        if slot is not None:
            found[slot] = str(data[start : start + length], "ascii", "replace").strip("\0 ")
            if element == 0x0010:
                break
        pos = start + length
    if not found[1] or not found[2]:
        return None
    return found[1], found[0], found[2]


def describe_instance(data: bytes | memoryview) -> tuple[str, str, str]:
    """(SOP Instance UID, SOP Class UID, transfer syntax) of Part-10 bytes, reading the header
    only (the pixel data is never decoded)."""
    quick = _file_meta(data)
    if quick is not None:
        return quick
    ds = dcmread(BytesIO(data), stop_before_pixels=True)
    meta = ds.file_meta
    sop = str(meta.get("MediaStorageSOPInstanceUID", "") or ds.get("SOPInstanceUID", ""))
    sop_class = str(meta.get("MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    syntax = str(meta.get("TransferSyntaxUID", ""))
    if not sop or not syntax:
        raise ValueError("instance without SOP Instance UID or transfer syntax in its file meta")
    return sop, sop_class, syntax


class CacheEntry:
    """One series in the cache, complete or being filled. Get it from `SeriesCache`."""

    def __init__(self, cache: SeriesCache, key: str, study_uid: str, series_uid: str) -> None:
        self._cache = cache
        self.key = key
        self.study_uid = study_uid
        self.series_uid = series_uid
        self.directory = cache.series_root / key
        self.instances: list[CachedInstance] = []
        self.complete = False
        self.error: BaseException | None = None
        self.created = cache.clock()
        self.completed_at: float | None = None
        self.last_used = self.created
        self.size = 0
        self.pins = 0
        # The prefetch (a launch id) that filled it, until a reader opens it; when a reader
        # (viewer, peer, export) last pinned it. In memory only: a restart forgets both.
        self.prefetched_by: str | None = None
        self.viewed_at: float | None = None
        self.detached = False  # out of the index (expired, evicted or failed); deleted unpinned
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._write_fd: int | None = None
        self._read_fd: int | None = None
        self._allocated = 0  # bytes of the data file reserved by `_preallocate`

    @property
    def data_path(self) -> Path:
        return self.directory / DATA_FILE

    def _reader(self) -> int:
        """The data file's descriptor shared by the entry's readers (pread: no seek races).
        Opened when the entry is pinned (`SeriesCache.get_or_begin`) or its file created, and
        kept while it is pinned: a purge by another process cannot pull the file from under a
        reader, and the disk is freed once the last reader is done."""
        fd = self._read_fd
        if fd is None:
            with self._cache.lock:
                if self._read_fd is None:
                    try:
                        self._read_fd = os.open(self.data_path, os.O_RDONLY)
                    except OSError as exc:
                        raise CacheError(f"cache file {self.data_path} unreadable: {exc}") from exc
                fd = self._read_fd
        return fd

    def _on_disk(self) -> bool:
        """Whether a complete entry is still there: another process (`drimbox cache purge`)
        removes an entry's index first, then its folder."""
        return os.path.exists(self.directory / ENTRY_FILE)

    def read(self, offset: int, size: int) -> bytes:
        data = os.pread(self._reader(), size, offset)
        if len(data) != size:
            raise CacheError(f"cache file {self.data_path} truncated")
        return data

    def read_into(self, offset: int, target: memoryview) -> None:
        fd = self._reader()
        while target:
            count = os.preadv(fd, [target], offset)
            if count <= 0:
                raise CacheError(f"cache file {self.data_path} truncated")
            target = target[count:]
            offset += count

    def _append(self, data: bytes | memoryview) -> int:
        # Unbuffered writes: what is written is readable at once by the streaming readers.
        if self._write_fd is None:
            self._write_fd = os.open(self.data_path, os.O_WRONLY | os.O_CREAT, 0o600)
            self._reader()  # the followers read the file that is being written, whatever happens
        offset = self.size
        end = offset + len(data)
        if end > self._allocated:
            self._preallocate(end)
        view = memoryview(data)
        while view:
            written = os.pwrite(self._write_fd, view, offset)
            view = view[written:]
            offset += written
        return end - len(data)

    def _preallocate(self, end: int) -> None:
        """Reserve the file's blocks ahead of the writes (doubling, up to `PREALLOCATE_MAX`):
        a third less CPU per byte written than block allocation write by write (measured on
        ext4). Best effort: a file system without it, or too full for it, just writes."""
        assert self._write_fd is not None
        ahead = min(max(end, PREALLOCATE_MIN), PREALLOCATE_MAX)
        try:
            os.posix_fallocate(self._write_fd, self._allocated, end + ahead - self._allocated)
            self._allocated = end + ahead
        except OSError:
            self._allocated = 2**63  # not again for this entry

    def _seal(self) -> None:
        """Drop the blocks reserved past the data and close the writer."""
        if self._write_fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._write_fd, self.size)
        os.close(self._write_fd)
        self._write_fd = None

    def _close_reader(self) -> None:
        if self._read_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._read_fd)
            self._read_fd = None

    def _close(self) -> None:
        for name in ("_write_fd", "_read_fd"):
            fd = getattr(self, name)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, None)

    @property
    def done(self) -> bool:
        return self.complete or self.error is not None

    def _notify(self) -> None:
        # Called with the cache lock held, from any thread.
        waiters, self._waiters = self._waiters, []
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, event in waiters:
            if loop is current:
                event.set()  # the filler runs in the readers' loop: no wake-up through a pipe
                continue
            with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
                loop.call_soon_threadsafe(event.set)

    async def follow(self) -> AsyncIterator[CachedInstance]:
        """Every instance of the series, those already in first, then each as it arrives.
        Raises the retrieval's error if it fails after the last instance yielded."""
        async for batch in self.follow_batches():
            for instance in batch:
                yield instance

    async def follow_batches(
        self, min_bytes: int = 0, max_wait_s: float = 0.05
    ) -> AsyncIterator[list[CachedInstance]]:
        """The same, as lists: what is in at each step (all of a complete series at once), so
        that a reader can pack many instances into one write. After the first instance (at
        once: time to first byte), a batch waits for `min_bytes`, at most `max_wait_s` (a
        slow PACS still streams)."""
        index = 0
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            with self._cache.lock:
                ready = self.instances[index:]
                finished = self.done
                error = self.error
                enough = finished or not index or sum(i.size for i in ready) >= min_bytes
                if ready and not enough:
                    deadline = deadline or loop.time() + max_wait_s
                    enough = loop.time() >= deadline
                event: asyncio.Event | None = None
                if not (ready and enough) and not finished:
                    event = asyncio.Event()
                    self._waiters.append((loop, event))
            if ready and enough:
                index += len(ready)
                deadline = None
                yield ready
                continue
            if finished:
                if error is not None:
                    raise error
                return
            assert event is not None
            if deadline is None:
                await event.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await event.wait()

    async def wait_first(self) -> None:
        """Until the first instance is in or the retrieval has ended."""
        async for _ in self.follow():
            return

    async def wait_done(self) -> None:
        async for _ in self.follow():
            pass


class SeriesCache:
    """A bounded on-disk cache of series (LRU eviction by size, time to live).

    - `directory`: the cache folder (created if missing); series live in `directory/series/`.
    - `max_bytes`: the size limit; complete, unread series are evicted (least recently used
      first) whenever it is exceeded. A single series larger than the limit is served while it
      is read and evicted right after.
    - `ttl_s`: a series older than this is fetched again from the PACS (the PACS may have
      received corrections; IOCM rejections also remove series, see `drop`).
    - `protect_viewed_s`: a series a reader pinned less than this ago is evicted only after
      every other one, and never to make room for a prefetch.
    """

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        ttl_s: float,
        *,
        protect_viewed_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes < 0 or ttl_s <= 0:
            raise ValueError("max_bytes must be >= 0 and ttl_s > 0")
        self.directory = Path(directory)
        self.series_root = self.directory / SERIES_DIR
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.protect_viewed_s = protect_viewed_s
        self.clock = clock
        self.lock = threading.RLock()
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()  # LRU order, oldest first
        self._bytes = 0
        self._hits = self._misses = self._evictions = self._expired = 0
        try:
            self.series_root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"dossier de cache {self.directory} inutilisable : {exc}") from exc
        self._load()

    # -- persistence -------------------------------------------------------------------------

    def _load(self) -> None:
        """Index the complete series left by a previous run; remove half-filled ones."""
        loaded: list[CacheEntry] = []
        for folder in self.series_root.iterdir():
            entry = self._read_entry(folder)
            if entry is None:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            loaded.append(entry)
        for entry in sorted(loaded, key=lambda e: e.last_used):
            self._entries[entry.key] = entry
            self._bytes += entry.size
        with self.lock:
            self._evict()

    def _read_entry(self, folder: Path) -> CacheEntry | None:
        index = folder / ENTRY_FILE
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            entry = CacheEntry(
                self, self.key(data["study"], data["series"]), data["study"], data["series"]
            )
            entry.created = float(data["created"])
            entry.completed_at = float(data.get("completed", entry.created))
            entry.directory = folder
            entry.last_used = index.stat().st_mtime
            for item in data["instances"]:
                entry.instances.append(
                    CachedInstance(
                        item["sop"], item["class"], item["ts"], item["size"], item["offset"], entry
                    )
                )
                entry.size += int(item["size"])
            if entry.data_path.stat().st_size < entry.size:
                return None
            entry.complete = True
            return entry
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_entry(self, entry: CacheEntry) -> None:
        data = {
            "study": entry.study_uid,
            "series": entry.series_uid,
            "created": entry.created,
            "completed": entry.completed_at,
            "instances": [
                {
                    "sop": i.sop_instance_uid,
                    "class": i.sop_class_uid,
                    "ts": i.transfer_syntax,
                    "size": i.size,
                    "offset": i.offset,
                }
                for i in entry.instances
            ],
        }
        tmp = entry.directory / (ENTRY_FILE + ".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, entry.directory / ENTRY_FILE)

    # -- lookups -----------------------------------------------------------------------------

    @staticmethod
    def key(study_uid: str, series_uid: str) -> str:
        return hashlib.sha256(f"{study_uid}|{series_uid}".encode()).hexdigest()[:32]

    def _expired_entry(self, entry: CacheEntry) -> bool:
        return entry.complete and self.clock() - entry.created > self.ttl_s

    def holds(self, study_uid: str, series_uid: str) -> bool:
        """Whether the series is complete in the cache now (no pin, no statistics)."""
        with self.lock:
            entry = self._entries.get(self.key(study_uid, series_uid))
            return entry is not None and entry.complete and not self._expired_entry(entry)

    def get_or_begin(
        self, study_uid: str, series_uid: str, *, prefetch: str | None = None
    ) -> tuple[CacheEntry, bool]:
        """The series' entry, pinned (call `release` when done), and whether it is new: the
        caller of a new entry must fill it (`add`, then `finish` or `fail`). Concurrent callers
        for one series share one entry: one PACS retrieval (single flight).

        `prefetch` names the prefetch (a launch) asking, for whom nobody is viewing the series
        yet; any other caller is a reader, which makes the series "viewed" (see `_evict`)."""
        key = self.key(study_uid, series_uid)
        with self.lock:
            entry = self._entries.get(key)
            if entry is not None and self._expired_entry(entry):
                self._expired += 1
                self._detach(entry)
                entry = None
            if entry is not None and entry.complete and not self._readable(entry):
                entry = None  # purged by another process: fetched again
            if entry is not None:
                self._hits += 1
                created = False
            else:
                self._misses += 1
                entry = CacheEntry(self, key, study_uid, series_uid)
                if entry.directory.exists():  # a detached predecessor still being read
                    entry.directory = self.series_root / f"{key}.{time.monotonic_ns()}"
                entry.directory.mkdir(parents=True)
                self._entries[key] = entry
                created = True
            entry.pins += 1
            entry.last_used = self.clock()
            if prefetch is None:
                entry.prefetched_by, entry.viewed_at = None, entry.last_used
            elif created:
                entry.prefetched_by = prefetch
            self._entries.move_to_end(key)
            return entry, created

    def _readable(self, entry: CacheEntry) -> bool:
        """A complete entry still on disk, its data file open for the pinning reader; one that
        another process purged is detached (the disk is freed when its last reader is done)."""
        try:
            if not entry._on_disk():
                raise CacheError("index removed")
            entry._reader()
        except CacheError as exc:
            log.info("cache entry of series %s purged from disk (%s)", entry.series_uid, exc)
            self._detach(entry)
            return False
        return True

    def release(self, entry: CacheEntry) -> None:
        """Unpin an entry got from `get_or_begin`."""
        with self.lock:
            entry.pins -= 1
            entry.last_used = self.clock()
            if entry.pins <= 0 and entry.detached:
                self._delete(entry)
            elif entry.complete and entry.pins <= 0:
                # Unread, a series holds no open file: a purge by another process frees its
                # disk at once, and the next reader finds it gone (see `_readable`).
                entry._close_reader()
                with contextlib.suppress(OSError):  # LRU order survives restarts
                    os.utime(entry.directory / ENTRY_FILE)
            self._evict(entry.prefetched_by)

    @contextlib.contextmanager
    def pinned(self, study_uid: str, series_uid: str) -> Iterator[tuple[CacheEntry, bool]]:
        entry, created = self.get_or_begin(study_uid, series_uid)
        try:
            yield entry, created
        finally:
            self.release(entry)

    # -- filling (from retrieval threads) ----------------------------------------------------

    def add(self, entry: CacheEntry, data: bytes | memoryview) -> CachedInstance:
        """Store one Part-10 instance, as received, into a series being filled (`data` is
        not kept: a view of a receive buffer will do)."""
        sop, sop_class, syntax = describe_instance(data)
        # One filler per entry (single flight): appends need no lock against each other.
        try:
            offset = entry._append(data)
        except OSError as exc:
            raise CacheError(f"écriture impossible dans le cache {self.directory} : {exc}") from exc
        instance = CachedInstance(sop, sop_class, syntax, len(data), offset, entry)
        with self.lock:
            entry.instances.append(instance)
            entry.size += instance.size
            if not entry.detached:
                self._bytes += instance.size
            entry._notify()
            self._evict(entry.prefetched_by)
        return instance

    def finish(self, entry: CacheEntry) -> None:
        with self.lock:
            entry.completed_at = self.clock()
            entry._seal()
            if not entry.detached:
                try:
                    self._write_entry(entry)
                except OSError as exc:
                    log.warning("cache index of series %s not written: %s", entry.series_uid, exc)
                    self._detach(entry)
            entry.complete = True
            entry._notify()
            self._evict(entry.prefetched_by)

    def fail(self, entry: CacheEntry, error: BaseException) -> None:
        with self.lock:
            entry.error = error
            self._detach(entry)
            entry._notify()

    # -- eviction ----------------------------------------------------------------------------

    def _detach(self, entry: CacheEntry) -> None:
        if entry.detached:
            return
        entry.detached = True
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        self._bytes -= entry.size
        if entry.pins <= 0:
            self._delete(entry)

    def _delete(self, entry: CacheEntry) -> None:
        entry._close()
        shutil.rmtree(entry.directory, ignore_errors=True)

    def _victims(self, prefetch: str | None) -> list[CacheEntry]:
        """The series that may be evicted, in order: those another prefetch filled and nobody
        opened, then those nobody viewed recently, then (not for a prefetch) the recently
        viewed; least recently used first in each group. Never a pinned series, nor one a
        prefetch filled for the same launch that is making room now."""
        now = self.clock()
        unused = [e for e in self._entries.values() if e.complete and e.pins <= 0]

        def viewed(entry: CacheEntry) -> bool:
            return entry.viewed_at is not None and now - entry.viewed_at <= self.protect_viewed_s

        groups = [
            [e for e in unused if e.prefetched_by is not None and e.prefetched_by != prefetch],
            [e for e in unused if e.prefetched_by is None and not viewed(e)],
        ]
        if prefetch is None:
            groups.append([e for e in unused if e.prefetched_by is None and viewed(e)])
        return [entry for group in groups for entry in group]

    def _evict(self, prefetch: str | None = None) -> None:
        """Back under the size limit, making room for `prefetch` (a launch) or a reader."""
        if self._bytes <= self.max_bytes:
            return
        for entry in self._victims(prefetch):
            if self._bytes <= self.max_bytes:
                break
            self._evictions += 1
            self._detach(entry)

    def prefetch_room(self, prefetch: str) -> int:
        """Bytes a prefetch may still fill without evicting a pinned series, a recently viewed
        one or its own: what another series of it may take (<= 0: no room)."""
        with self.lock:
            freeable = sum(e.size for e in self._victims(prefetch))
            return self.max_bytes - self._bytes + freeable

    def drop(self, study_uid: str, series_uid: str | None = None) -> int:
        """Forget a series (or every series of a study): e.g. after an IOCM rejection."""
        with self.lock:
            doomed = [
                e
                for e in self._entries.values()
                if e.study_uid == study_uid and series_uid in (None, e.series_uid)
            ]
            for entry in doomed:
                self._detach(entry)
            return len(doomed)

    def purge(self, *, expired_only: bool = False) -> PurgeResult:
        """Remove every series not being read (or only the expired ones): for
        `drimbox cache purge`. Series being read go as soon as their readers are done."""
        with self.lock:
            removed = removed_bytes = 0
            for entry in list(self._entries.values()):
                if not entry.complete:
                    continue
                if expired_only and not self._expired_entry(entry):
                    continue
                removed += 1
                removed_bytes += entry.size
                self._detach(entry)
            return PurgeResult(removed, removed_bytes)

    def usage(self) -> CacheUsage:
        with self.lock:
            for entry in list(self._entries.values()):  # purged by another process
                if entry.complete and not entry._on_disk():
                    self._detach(entry)
            return CacheUsage(
                bytes=self._bytes,
                max_bytes=self.max_bytes,
                series=len(self._entries),
                instances=sum(len(e.instances) for e in self._entries.values()),
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                expired=self._expired,
                reading=sum(1 for e in self._entries.values() if e.pins > 0),
            )

    def disk_bytes(self) -> int:
        """Bytes of instance data actually on disk (for tests and the admin console)."""
        total = 0
        for root, _dirs, files in os.walk(self.series_root):
            for name in files:
                if name == DATA_FILE:
                    with contextlib.suppress(OSError):
                        total += os.stat(os.path.join(root, name)).st_size
        return total


def purge_cache(
    directory: Path,
    *,
    expired_only: bool = False,
    ttl_h: float = 72.0,
    clock: Callable[[], float] = time.time,
    dry_run: bool = False,
) -> PurgeResult:
    """`drimbox cache purge`: remove the complete series of a node's cache folder (or the
    expired ones), whether the node runs or not.

    Each series' index goes first, then its folder: a running node takes a series without index
    for gone and fetches it again, its readers of the moment finish from their open file (whose
    disk is freed when they are done). Series being filled are left to the node that fills
    them (a node cleans up those of a previous run when it starts). `dry_run`: count only."""
    removed = removed_bytes = 0
    root = Path(directory) / SERIES_DIR
    folders = sorted(root.iterdir()) if root.is_dir() else []
    for folder in folders:
        index = folder / ENTRY_FILE
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            size = sum(int(item["size"]) for item in data["instances"])
            created = float(data["created"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being filled, or already going
        if expired_only and clock() - created <= ttl_h * 3600.0:
            continue
        if dry_run:  # counted, not removed
            removed, removed_bytes = removed + 1, removed_bytes + size
            continue
        try:
            index.unlink()
        except FileNotFoundError:
            continue  # purged meanwhile by the node or another purge
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
        removed_bytes += size
    return PurgeResult(removed, removed_bytes)
