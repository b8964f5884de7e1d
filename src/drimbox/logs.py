"""The node's log: one line per event on standard error (the journal under systemd), as text
or as JSON (`[log] format`).

Events about a report, a study or a peer carry them as fields (`extra={"report_id": …}`), so a
log collector can follow one report through intake, PACS query, publication and retrieval; the
text format appends them as `key=value`.

What the logs may say about a patient: nothing. Reports are named by their id, studies by their
UID (an identifier), patients by a short hash (`ref`) that an operator matches against the audit
trail; names, INS, birth dates and the reasons that quote them stay in the database
(`drimbox reports show`). Libraries that dump whole datasets at INFO (pynetdicom logs every C-FIND
identifier: name, INS, birth date) are kept at WARNING unless the node runs with --verbose.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from drimbox.config import LogConfig

# Loggers that write patient data at INFO: quiet unless verbose.
DATASET_LOGGERS = ("pynetdicom",)
# The fields of a record that the events add (`extra=`), in display order.
CONTEXT_FIELDS = ("report_id", "study_uid", "series_uid", "job_id", "peer", "subject", "bytes")


def ref(value: str) -> str:
    """A short, stable stand-in for a patient identifier in the logs (SHA-256, 12 hex digits)."""
    return hashlib.sha256(value.encode()).hexdigest()[:12] if value else "-"


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    return {key: getattr(record, key) for key in CONTEXT_FIELDS if hasattr(record, key)}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{key}={value}" for key, value in context_of(record).items())
        return f"{line} [{context}]" if context else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, node, the event's fields and,
    for an error, the traceback as one string."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "node": self.node,
        }
        entry |= context_of(record)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(settings: LogConfig, node: str, *, verbose: bool = False) -> None:
    """Replace the root logger's handlers with one on standard error in the chosen format."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(node) if settings.format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else settings.level)
    for name in DATASET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
