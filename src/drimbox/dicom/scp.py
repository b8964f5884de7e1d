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

The C-STOREs of an association that only stores (a C-MOVE's sub-operations) are received by
the lean path (`drimbox.dicom.cget.serve_stores`, on the association's own thread with
pynetdicom's reactor parked: ~5× less CPU an instance than pynetdicom's decoding, issue 17 §2);
pynetdicom keeps negotiation, release and abort, and receives what else comes (C-ECHO, an
association with the Verification context).
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
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from drimbox.dicom import cfind, cget

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
        lean: bool = True,
        network_timeout_s: float = 60.0,
    ) -> None:
        self.aet = aet
        self.host = host
        self.port = port
        self.max_pdu = max_pdu
        self.lean = lean  # False: every C-STORE through pynetdicom (for comparison)
        self.network_timeout_s = network_timeout_s
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
        ae.network_timeout = self.network_timeout_s
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        handlers: list[evt.EventHandlerType] = [(evt.EVT_C_STORE, self._on_store)]
        if self.lean:
            handlers += [
                (evt.EVT_REQUESTED, self._on_requested),
                (evt.EVT_ESTABLISHED, self._on_established),
                (evt.EVT_REJECTED, self._on_not_established),
                (evt.EVT_ABORTED, self._on_not_established),
            ]
        try:
            server = ae.make_server(
                (self.host, self.port),
                evt_handlers=handlers,
                server_class=ThreadedAssociationServer,
                request_handler=_HoldingRequestHandler if self.lean else RequestHandler,
            )
        except OSError as exc:
            raise ScpError(
                f"le SCP DICOM ne peut pas écouter sur {self.host}:{self.port} : {exc}"
            ) from exc
        self._server = server
        ae._servers.append(server)  # as `start_server` does: `shutdown` removes it from there
        threading.Thread(
            target=server.serve_forever, name=f"StoreScp@{self.port}", daemon=True
        ).start()
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
        """Stop listening and abort the associations still open: a PACS keeps its association
        open a while after a C-MOVE (Orthanc's `DicomAssociationCloseDelay`), and a stopped SCP
        must not take instances for handlers that are gone."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            for assoc in server.active_associations:
                assoc.abort()

    @staticmethod
    def _on_requested(event: Any) -> None:
        """Nothing the peer sends once accepted is read by pynetdicom before `_on_established`
        decides which path receives it."""
        sock = event.assoc.dul.socket
        if isinstance(sock, cfind.HeldSocket):
            sock.reserve()

    @staticmethod
    def _on_not_established(event: Any) -> None:
        """Rejected or aborted: pynetdicom's reactor reads again (the peer's closing)."""
        sock = event.assoc.dul.socket
        if isinstance(sock, cfind.HeldSocket):
            sock.unreserve()

    def _on_established(self, event: Any) -> None:
        """Receive the association's C-STOREs on this thread (`cget.serve_stores`) when all it
        may send is C-STOREs; pynetdicom's reactor goes on with what follows (the release)."""
        assoc = event.assoc
        sock = assoc.dul.socket
        if not isinstance(sock, cfind.HeldSocket):
            return
        contexts = assoc.accepted_contexts
        storage = {
            c.context_id: cget.StorageContext(str(c.abstract_syntax), str(c.transfer_syntax[0]))
            for c in contexts
            if c.abstract_syntax != Verification and c.context_id is not None
        }
        if not storage or len(storage) != len(contexts):
            sock.resume()  # a C-ECHO may come: pynetdicom's path for all
            return
        calling_aet = str(assoc.requestor.ae_title).strip()

        def store(
            request: cget.StoreRequest, context: cget.StorageContext, data: memoryview
        ) -> int:
            return self._dispatch(
                ReceivedInstance(
                    sop_class_uid=request.sop_class,
                    sop_instance_uid=request.sop_instance,
                    transfer_syntax=context.transfer_syntax,
                    calling_aet=calling_aet,
                    move_originator_aet=request.move_originator,
                    data=bytes(data),
                )
            )

        def read(raw_socket: socket.socket) -> tuple[None, bytes]:
            try:
                cget.serve_stores(raw_socket, storage, store)
            except cfind.HandBack as back:
                if not back.peer_ended:
                    raise
                return None, back.unread  # released, aborted or closed: the reactor's to end

        try:
            cfind.exchange(assoc, sock, b"", self.network_timeout_s, read, pause=False)
        except cfind.LeanFindFailure as failure:
            log.warning(
                "SCP DICOM : association de %s interrompue (A-ABORT) : %s",
                calling_aet,
                failure.reason,
            )
            assoc.abort(block=False)

    def _on_store(self, event: Any) -> int:
        request = event.request
        return self._dispatch(
            ReceivedInstance(
                sop_class_uid=str(request.AffectedSOPClassUID),
                sop_instance_uid=str(request.AffectedSOPInstanceUID),
                transfer_syntax=str(event.context.transfer_syntax),
                calling_aet=str(event.assoc.requestor.ae_title).strip(),
                move_originator_aet=str(request.MoveOriginatorApplicationEntityTitle or "").strip(),
                data=event.encoded_dataset(include_meta=True),
            )
        )

    def _dispatch(self, instance: ReceivedInstance) -> int:
        """The first handler that takes `instance`; its C-STORE status."""
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


class _HoldingRequestHandler(RequestHandler):
    """pynetdicom's per-connection handler, its association socket one that the lean C-STORE
    path can take over (`cfind.HeldSocket`)."""

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        if assoc.dul.socket is not None:
            assoc.dul.socket = cfind.HeldSocket.adopt(assoc.dul.socket)
        return assoc
