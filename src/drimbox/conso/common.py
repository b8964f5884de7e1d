"""What the Conso modules share: `ConsoError` (a French message for the user or the site's IT,
a stable code for the web layer), the audit hook and the instance sources/stores that
retrieval, export and XDM exchange.

It must not import the web layer, the configuration or any network client: it is vocabulary.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from drimbox.db import Database
from drimbox.dicom.cache import CachedInstance, CacheEntry, SeriesCache, describe_instance
from drimbox.dicom.model import is_uid
from drimbox.trust import audit


class ConsoError(Exception):
    """A Conso operation failed. `message` is French and says what to do; `code` is stable
    (e.g. `PAS_DE_DMP`, `ACCES_REFUSE`, `DMP_INJOIGNABLE`) for the web layer to choose a page
    or an HTTP status; `detail` is technical, for logs."""

    def __init__(
        self, code: str, message: str, *, detail: str = "", retryable: bool = False
    ) -> None:
        self.code = code
        self.message = message
        self.detail = detail
        self.retryable = retryable
        super().__init__(f"{message} ({detail})" if detail else message)


class Auditor(Protocol):
    """Records one audit event for the acting user (see `drimbox.trust.audit.record`)."""

    def __call__(
        self,
        *,
        action: str,
        result: audit.Result,
        patient_ins: str = "",
        study_uid: str = "",
        nbytes: int | None = None,
        remote: str = "",
        **detail: Any,
    ) -> None: ...


def no_audit(**_: Any) -> None:
    """An `Auditor` that records nothing (tests, tools)."""


def db_auditor(db: Database, actor: str, role: audit.Role = "user") -> Auditor:
    """An `Auditor` writing to the node's append-only audit trail for `actor` (the PSC
    SubjectNameID of the signed-in professional)."""

    def record(
        *,
        action: str,
        result: audit.Result,
        patient_ins: str = "",
        study_uid: str = "",
        nbytes: int | None = None,
        remote: str = "",
        **detail: Any,
    ) -> None:
        audit.record(
            db,
            actor=actor,
            role=role,
            action=action,
            result=result,
            patient_ins=patient_ins,
            study_uid=study_uid,
            nbytes=nbytes,
            remote=remote,
            **detail,
        )

    return record


# --- instance sources (what export and XDM read) -------------------------------------------


class InstanceSource(Protocol):
    """One stored Part-10 instance: `CachedInstance` (the cache) and `FileInstance` (a folder)
    both qualify."""

    @property
    def sop_instance_uid(self) -> str: ...

    @property
    def sop_class_uid(self) -> str: ...

    @property
    def transfer_syntax(self) -> str: ...

    def read(self) -> bytes: ...


@dataclass(frozen=True)
class FileInstance:
    """A Part-10 file on disk."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    size: int

    @classmethod
    def of(cls, path: Path) -> FileInstance:
        data = path.read_bytes()
        sop, sop_class, syntax = describe_instance(data)
        return cls(path, sop, sop_class, syntax, len(data))

    def read(self) -> bytes:
        return self.path.read_bytes()


@dataclass(frozen=True)
class MemoryInstance:
    """Part-10 bytes already in memory (small objects, tests)."""

    data: bytes
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str

    @classmethod
    def of(cls, data: bytes) -> MemoryInstance:
        sop, sop_class, syntax = describe_instance(data)
        return cls(data, sop, sop_class, syntax)

    def read(self) -> bytes:
        return self.data


# --- instance stores (where retrieval and XDM import write) ---------------------------------


class SeriesWriter(Protocol):
    """Receives the instances of one series, then `finish()` or `fail(error)` exactly once."""

    def add(self, data: bytes | memoryview) -> None: ...

    def finish(self) -> None: ...

    def fail(self, error: BaseException) -> None: ...


class InstanceStore(Protocol):
    """Where retrieved instances go. `open_series` returns None when the series is already
    there, complete (nothing to fetch)."""

    def open_series(self, study_uid: str, series_uid: str) -> SeriesWriter | None: ...


class _CacheWriter:
    def __init__(self, cache: SeriesCache, entry: CacheEntry) -> None:
        self._cache = cache
        self._entry = entry

    def add(self, data: bytes | memoryview) -> None:
        self._cache.add(self._entry, data)

    def finish(self) -> None:
        try:
            self._cache.finish(self._entry)
        finally:
            self._cache.release(self._entry)

    def fail(self, error: BaseException) -> None:
        try:
            self._cache.fail(self._entry, error)
        finally:
            self._cache.release(self._entry)


class CacheStore:
    """The node's series cache (`drimbox.dicom.cache.SeriesCache`) as an `InstanceStore`: the
    Conso's own DICOMweb endpoints (viewer) then read what retrieval wrote, even while it
    streams in (`CacheEntry.follow`)."""

    def __init__(self, cache: SeriesCache) -> None:
        self.cache = cache

    def open_series(self, study_uid: str, series_uid: str) -> SeriesWriter | None:
        entry, created = self.cache.get_or_begin(study_uid, series_uid)
        if not created:
            # Cached already (or being filled by a concurrent retrieval of the same series:
            # single flight, the viewer follows that one).
            self.cache.release(entry)
            return None
        return _CacheWriter(self.cache, entry)

    def instances(self, study_uid: str, series_uid: str) -> list[CachedInstance]:
        """The complete cached series' instances ([] when absent or incomplete)."""
        # The cache has no read-only lookup: a lookup that created an empty entry fails it at
        # once (it is detached and removed on release, and no reader can have joined it).
        with self.cache.pinned(study_uid, series_uid) as (entry, created):
            if created:
                self.cache.fail(entry, LookupError("lookup only"))
                return []
            return list(entry.instances) if entry.complete else []


class _FolderWriter:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written: list[Path] = []

    def add(self, data: bytes | memoryview) -> None:
        sop, _cls, _ts = describe_instance(data)
        if not is_uid(sop):
            raise ValueError(f"SOP Instance UID invalide : {sop[:80]!r}")
        target = self.folder / f"{sop}.dcm"
        # Write-then-rename: a reader never sees half an instance.
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.written.append(target)

    def finish(self) -> None:
        (self.folder / ".complete").touch()

    def fail(self, error: BaseException) -> None:
        for path in self.written:
            path.unlink(missing_ok=True)


class FolderStore:
    """A plain folder `<root>/<study>/<series>/<sop>.dcm` as an `InstanceStore` (CLI, tests,
    XDM import without a cache)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def series_folder(self, study_uid: str, series_uid: str) -> Path:
        if not (is_uid(study_uid) and is_uid(series_uid)):
            raise ValueError("UID d'étude ou de série invalide")
        return self.root / study_uid / series_uid

    def open_series(self, study_uid: str, series_uid: str) -> SeriesWriter | None:
        folder = self.series_folder(study_uid, series_uid)
        if (folder / ".complete").exists():
            return None
        return _FolderWriter(folder)

    def instances(self, study_uid: str, series_uid: str) -> list[FileInstance]:
        folder = self.series_folder(study_uid, series_uid)
        return [FileInstance.of(p) for p in sorted(folder.glob("*.dcm"))]


ProgressCallback = Callable[[int, int], None]
"""Called with (instances so far, bytes so far)."""
