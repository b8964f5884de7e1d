"""What the logs may say about a patient: nothing. Logs name reports by their id and studies or
patients by a short hash (`ref`), which an operator matches against `drimbox reports list` or the
audit trail; names, INS and birth dates stay in the database.

`quiet_libraries` keeps the libraries that dump whole datasets at INFO (pynetdicom logs every
C-FIND identifier: name, INS, birth date) at WARNING unless the node runs with --verbose.
"""

from __future__ import annotations

import hashlib
import logging

DATASET_LOGGERS = ("pynetdicom",)


def ref(value: str) -> str:
    """A short, stable stand-in for an identifier in the logs (SHA-256, 12 hex digits)."""
    return hashlib.sha256(value.encode()).hexdigest()[:12] if value else "-"


def quiet_libraries(verbose: bool) -> None:
    for name in DATASET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
