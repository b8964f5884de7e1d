"""The outbox's view of the DMP, over `drimbox.dmp.client.DmpClient`.

Translates the client's results and errors into the few facts the outbox reasons on (is this KOS
registered, with which status; did a call fail in a way worth retrying).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from drimbox.cda.model import ImagingReport
from drimbox.config import Config
from drimbox.dmp.client import DmpClient, DmpError, DmpSettings
from drimbox.dmp.metadata import DocumentEntry
from drimbox.dmp.vihf import VihfError, VihfSubject
from drimbox.source.outbox import DmpPort, DmpPortError, RegisteredEntry

T = TypeVar("T")


def dmp_port(config: Config) -> DmpPort | None:
    """None when no DMP is configured: jobs then wait, with the reason shown to the operator."""
    if not config.dmp.base_url:
        return None
    return ClientDmpPort(DmpClient(DmpSettings.from_config(config)))


def _call(action: Callable[[], T]) -> T:
    try:
        return action()
    except DmpError as exc:
        raise DmpPortError(str(exc), retryable=exc.retryable, code=exc.code) from exc
    except VihfError as exc:
        raise DmpPortError(f"VIHF impossible : {exc}", retryable=False) from exc


class ClientDmpPort:
    def __init__(self, client: DmpClient) -> None:
        self.client = client
        self._entries: dict[str, DocumentEntry] = {}

    def close(self) -> None:
        self.client.close()

    def find(self, report: ImagingReport, kos_uid: str) -> RegisteredEntry | None:
        subject = _call(lambda: VihfSubject.from_report(report))
        patient = report.patient
        found = _call(
            lambda: self.client.get_documents(
                patient.ins, patient.ins_oid, unique_ids=[kos_uid], subject=subject
            )
        )
        if not found:
            return None
        entry = found[0]
        self._entries[entry.entry_uuid] = entry
        return RegisteredEntry(entry.entry_uuid, entry.unique_id, entry.status.rsplit(":", 1)[-1])

    def publish(
        self, report: ImagingReport, kos: bytes, flags: dict[str, bool], replaces: str | None
    ) -> str:
        result = _call(
            lambda: self.client.publish_kos(report, kos, flags, replaces_entry_uuid=replaces)
        )
        return result.entry_uuid

    def delete(self, report: ImagingReport, entry: RegisteredEntry) -> None:
        document = self._entries.get(entry.entry_uuid)
        if document is None:
            raise DmpPortError("entrée DMP inconnue : relire avant de supprimer", retryable=True)
        subject = _call(lambda: VihfSubject.from_report(report))
        _call(lambda: self.client.delete(document, subject=subject))
