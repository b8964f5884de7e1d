"""The outbox's view of the DMP, over `drimbox.dmp.client.DmpClient`.

Translates the client's results and errors into the few facts the outbox reasons on (is this KOS
registered, with which status; did a call fail in a way worth retrying). Each report goes through
the client of its structure (`structures.choose_structure`: the organisation of its legal
authenticator), so its VIHF, metadata, signature and TLS certificate are that structure's; a
report of an unconfigured organisation is refused (parked), never sent with another's
certificate. The signature document follows its KOS: replaced and deleted with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from drimbox.cda.model import ImagingReport
from drimbox.config import Config
from drimbox.dmp.client import DmpClient, DmpError, DmpSettings, Replacement
from drimbox.dmp.metadata import DocumentEntry
from drimbox.dmp.structures import StructureError, choose_structure, site_structures
from drimbox.dmp.vihf import VihfError, VihfSubject
from drimbox.source.outbox import DmpPort, DmpPortError, RegisteredEntry

T = TypeVar("T")


def dmp_port(config: Config) -> DmpPort | None:
    """None when no DMP is configured: jobs then wait, with the reason shown to the operator."""
    if not config.dmp.base_url:
        return None
    return ClientDmpPort(config)


def _call(action: Callable[[], T]) -> T:
    try:
        return action()
    except DmpError as exc:
        raise DmpPortError(str(exc), retryable=exc.retryable, code=exc.code) from exc
    except VihfError as exc:
        raise DmpPortError(f"VIHF impossible : {exc}", retryable=False) from exc


class ClientDmpPort:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.structures = site_structures(config)
        self._clients: dict[str, DmpClient] = {}
        self._entries: dict[str, DocumentEntry] = {}

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def client(self, report: ImagingReport) -> DmpClient:
        """The client of the report's structure (created on first use)."""
        try:
            structure = choose_structure(self.structures, report)
        except StructureError as exc:
            raise DmpPortError(
                f"Publication refusée : {exc}.", retryable=False, code="STRUCTURE"
            ) from exc
        client = self._clients.get(structure.id)
        if client is None:
            client = _call(lambda: DmpClient(DmpSettings.from_config(self.config, structure)))
            self._clients[structure.id] = client
        return client

    def find(self, report: ImagingReport, kos_uid: str) -> RegisteredEntry | None:
        client = self.client(report)
        subject = _call(lambda: VihfSubject.from_report(report))
        patient = report.patient
        found = _call(
            lambda: client.get_documents(
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
        client = self.client(report)
        old_signature = None
        if replaces is not None:
            old_signature = self._signature_of(client, report, replaces)
        result = _call(
            lambda: client.publish_kos(
                report,
                kos,
                flags,
                replaces=Replacement(replaces, old_signature) if replaces else None,
            )
        )
        return result.entry_uuid

    def _signature_of(self, client: DmpClient, report: ImagingReport, kos_uuid: str) -> str | None:
        document = self._entries.get(kos_uuid)
        if document is None:
            return None
        subject = _call(lambda: VihfSubject.from_report(report))
        signature = _call(lambda: client.signature_of(document, subject=subject))
        return None if signature is None else signature.entry_uuid

    def delete(self, report: ImagingReport, entry: RegisteredEntry) -> None:
        document = self._entries.get(entry.entry_uuid)
        if document is None:
            raise DmpPortError("entrée DMP inconnue : relire avant de supprimer", retryable=True)
        client = self.client(report)
        subject = _call(lambda: VihfSubject.from_report(report))
        signature = _call(lambda: client.signature_of(document, subject=subject))
        also = () if signature is None else (signature,)
        _call(lambda: client.delete(document, subject=subject, also=also))
