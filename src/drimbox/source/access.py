"""The record of every image retrieval served by the Source (who, which study/series, how many
bytes, with what result, when).

Each request is appended as one JSON line to `<cache_dir>/access-log.jsonl` as it ends: the
node's local, per-request trace, written even when the database is not. The audit trail
(`drimbox.trust.audit`) holds the same accesses summed per caller, study, action and minute
(`drimbox.trust.tally`), refusals one by one. `record_retrieval` must never raise into the request
that is being served: a record that cannot be written is logged as an error. The file is rotated
(`access-log.jsonl.1` … `.4`) past 64 MiB, so that one line per frame request cannot fill the
disk: the audit trail is the record kept for years, this file the recent detail.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

ACCESS_LOG_NAME = "access-log.jsonl"
ACCESS_LOG_MAX_BYTES = 64 * 1024 * 1024
ACCESS_LOG_GENERATIONS = 4  # rotated files kept besides the current one
_lock = threading.Lock()


@dataclass(frozen=True)
class RetrievalRecord:
    """One retrieval. `result` is the HTTP status sent (200, 401, 404…); `bytes` what was sent."""

    subject: str  # the token's or session's subject ("" when unknown: refused before)
    study_uid: str
    series_uid: str = ""
    sop_instance_uid: str = ""
    # study, series, instance, metadata, frames, rendered, thumbnail; search_studies,
    # search_series, search_instances (QIDO-RS)
    resource: str = "series"
    channel: str = "peer"  # peer (WADO-RS /dicom-web-rs) or viewer (/dicom-web)
    client: str = ""  # remote address (and later the peer's certificate DN)
    psc_client: str = ""  # peers: the PSC client their bearer token was issued to
    peer_dn: str = ""  # peers: the subject of their client certificate (mutual TLS)
    kos_sop_uid: str = ""
    bytes: int = 0
    instances: int = 0
    result: int = 200
    detail: str = ""
    studies: tuple[str, ...] = ()  # QIDO /studies: the studies the answer listed
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))

    @property
    def action(self) -> str:
        """The audit trail's name for this access."""
        kind, _, level = self.resource.partition("_")
        return f"image_search_{level}" if kind == "search" else f"image_retrieve_{self.resource}"


def access_log_path(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / ACCESS_LOG_NAME


def record_retrieval(
    path: Path, record: RetrievalRecord, *, max_bytes: int = ACCESS_LOG_MAX_BYTES
) -> None:
    """Append `record` to the access log at `path` (one JSON object per line), rotating the
    file first once it holds `max_bytes`."""
    line = json.dumps(asdict(record), ensure_ascii=False) + "\n"
    try:
        with _lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_size >= max_bytes:
                    _rotate(path)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(line)
    except OSError as exc:
        log.error("access log %s not written (%s): %s", path, exc, line.strip())


def _rotate(path: Path) -> None:
    """`path` becomes `path.1`, `.1` becomes `.2`…; the oldest generation is dropped."""
    for generation in range(ACCESS_LOG_GENERATIONS, 0, -1):
        older = path.with_name(f"{path.name}.{generation}")
        newer = path.with_name(f"{path.name}.{generation - 1}") if generation > 1 else path
        if newer.exists():
            newer.replace(older)


def read_records(path: Path) -> list[RetrievalRecord]:
    """Every record of an access log (for tests and a future export command)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            fields = json.loads(line)
            fields["studies"] = tuple(fields.get("studies", ()))
            records.append(RetrievalRecord(**fields))
    return records
