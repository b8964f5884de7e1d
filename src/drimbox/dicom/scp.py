"""The box's own DICOM C-STORE SCP (`[pacs] scp_port`): where C-MOVE retrievals land, and later
the PACS's IOCM rejection notes.

Owns the listening AE (every storage SOP class, every transfer syntax, so that senders never
transcode; TCP_NODELAY on its sockets; the called AE title checked, and the calling one when
`senders` names who may send: a rejection note from anyone could withdraw a published KOS) and
the dispatch of each received instance to pluggable handlers: the first handler that claims an
instance gets it. Handlers get the bytes exactly as received (`ReceivedInstance.data`, Part-10)
and must be quick and thread-safe (they run on pynetdicom's association threads). It must not
interpret the instances itself: retrieval routing lives in `drimbox.dicom.retrieve`, IOCM in
its own module.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

log = logging.getLogger(__name__)

Verification = UID("1.2.840.10008.1.1")
_SUCCESS = 0x0000
_CANNOT_UNDERSTAND = 0xC000
_OUT_OF_RESOURCES = 0xA700


class ScpError(Exception):
    """The SCP cannot listen (port taken, permission…)."""


@dataclass(frozen=True)
class ReceivedInstance:
    """One instance received by C-STORE."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    calling_aet: str
    move_originator_aet: str  # empty unless sent as a C-MOVE sub-operation
    data: bytes  # Part-10: preamble, file meta, dataset as received

    def dataset_header(self) -> Any:
        """The dataset without pixel data (decoded on demand, for routing decisions)."""
        from io import BytesIO

        from pydicom import dcmread

        return dcmread(BytesIO(self.data), stop_before_pixels=True)


class StoreHandler(Protocol):
    """Returns True when it took the instance (stored it), False to let the next handler try.
    Raising means "failed to store": the sender gets Out of Resources."""

    def __call__(self, instance: ReceivedInstance) -> bool: ...


class StoreScp:
    """A C-STORE (and C-ECHO) SCP on `host:port` with AE title `aet`; associations from a
    calling AE title not in `senders` are rejected (no `senders`: any caller, for tools)."""

    def __init__(
        self,
        aet: str,
        host: str,
        port: int,
        *,
        max_pdu: int = 262144,
        senders: list[str] | None = None,
        sender_hosts: list[str] | None = None,
    ) -> None:
        self.aet = aet
        self.host = host
        self.port = port
        self.max_pdu = max_pdu
        self.senders = list(senders or [])
        # Networks the callers must come from (empty: any); checked before any DICOM is read.
        self.sender_networks = [
            ipaddress.ip_network(host, strict=False) for host in sender_hosts or []
        ]
        self._handlers: list[StoreHandler] = []
        self._lock = threading.Lock()
        self._server: Any = None

    def add_handler(self, handler: StoreHandler) -> Callable[[], None]:
        """Register a handler (tried in registration order); returns its remover."""
        with self._lock:
            self._handlers.append(handler)

        def remove() -> None:
            with self._lock:
                if handler in self._handlers:
                    self._handlers.remove(handler)

        return remove

    @property
    def bound_port(self) -> int:
        if self._server is None:
            raise ScpError("the SCP is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        if self._server is not None:
            return
        ae = AE(ae_title=self.aet)
        ae.maximum_pdu_size = self.max_pdu
        ae.require_called_aet = True
        ae.require_calling_aet = self.senders
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        try:
            self._server = ae.start_server(
                (self.host, self.port),
                block=False,
                evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
            )
        except OSError as exc:
            raise ScpError(
                f"le SCP DICOM ne peut pas écouter sur {self.host}:{self.port} : {exc}"
            ) from exc
        if self.sender_networks:
            self._server.verify_request = self._from_allowed_host
        # Accepted sockets inherit TCP_NODELAY from the listener on Linux: no ~40 ms stalls on
        # DIMSE's small writes (ARCHITECTURE §2.6).
        self._server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.info("DICOM SCP %s listening on %s:%d", self.aet, self.host, self.bound_port)

    def _from_allowed_host(self, request: Any, client_address: Any) -> bool:
        """socketserver's hook: a connection from another host is closed before any PDU."""
        host = str(client_address[0])
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address is not None and any(address in n for n in self.sender_networks):
            return True
        log.warning("DICOM SCP: connection from %s refused ([pacs] scp_sender_hosts)", host)
        return False

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_store(self, event: Any) -> int:
        request = event.request
        instance = ReceivedInstance(
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
            transfer_syntax=str(event.context.transfer_syntax),
            calling_aet=str(event.assoc.requestor.ae_title).strip(),
            move_originator_aet=str(request.MoveOriginatorApplicationEntityTitle or "").strip(),
            data=event.encoded_dataset(include_meta=True),
        )
        with self._lock:
            handlers = list(self._handlers)
        for handler in handlers:
            try:
                if handler(instance):
                    return _SUCCESS
            except Exception:
                log.exception("C-STORE handler failed for %s", instance.sop_instance_uid)
                return _OUT_OF_RESOURCES
        log.warning(
            "C-STORE of %s from %s refused: nothing expects it",
            instance.sop_instance_uid,
            instance.calling_aet,
        )
        return _CANNOT_UNDERSTAND
