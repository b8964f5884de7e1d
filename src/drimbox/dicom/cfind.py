"""A lean receive path for C-FIND responses, beside pynetdicom's.

Why: the image-level C-FIND of a 1300-instance study (`PacsClient.snapshot`, on the path from
the HL7 report to the KOS) cost the box 0.65-0.7 s of CPU while Orthanc spent 0.1 s answering
it (bench/RESULTS.md, issue 17 §1): pynetdicom's reactor decodes each P-DATA PDU into objects
and runs its state machine per PDU, pydicom decodes every response's command set and
identifier, and the answers' values are then converted one getattr at a time. Here the
session's own thread sends the C-FIND-RQ and reads the responses' PDUs straight from the socket
while pynetdicom's reactor is parked (`HeldSocket`); each identifier is kept as its bytes and
only the elements asked for are read (`drimbox.dicom.elements.walk`), by pydicom when they are
not plain UIDs or integers. The command set is read without pydicom except for the final
response, whose status goes through pynetdicom's own conversion, so that what callers see is
what pynetdicom's path gives.

pynetdicom keeps the association (negotiation, TLS, release, abort): anything but P-DATA in the
middle of the stream (A-ABORT, A-RELEASE-RQ, an unknown PDU) is handed back unread to its
reactor, which handles it as it always does. The lean path is only taken for implicit and
explicit VR little endian; big endian and deflated go through pynetdicom.

The exchange (`exchange`: park the reactor, send, read, give the socket back) and the reading of
P-DATA PDUs into DIMSE messages (`MessageReader`) are shared with the lean C-GET path
(`drimbox.dicom.cget`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any, NamedTuple, Protocol, TypeVar, cast

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.dimse_messages import (
    C_FIND_RQ,
    C_FIND_RSP,
    C_GET_RQ,
    C_GET_RSP,
    C_MOVE_RQ,
    C_MOVE_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    DIMSEMessage,
)
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.transport import AssociationSocket

from drimbox.dicom.elements import UNDEFINED, Element, walk

log = logging.getLogger(__name__)

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
PENDING = frozenset({0xFF00, 0xFF01})
_C_FIND_RSP = 0x8020
_NO_DATASET = 0x0101
COMMAND_FIELD, RESPONDED_TO, _DATASET_TYPE, STATUS = 0x0100, 0x0120, 0x0800, 0x0900
_P_DATA_TF, _A_RELEASE_RQ, _A_ABORT = 0x04, 0x05, 0x07
_BAD_PDV = "PDV mal formée ou d'un autre contexte de présentation"
BAD_MESSAGE = "réponse DIMSE inattendue ou invalide"
PEER_ABORTED = "le PACS a interrompu l'association (A-ABORT)"
_PARK_WAIT_S = 0.05  # the parked reactor's nap between checks (it has nothing else to do)
_PAUSE_WAIT_S = 0.1  # the association's reactor checks its pause every millisecond
_SETTLE_S = 2.0  # how long the reactor gets to process an A-ABORT/A-RELEASE handed back
_CHUNK = 262144
_U16 = struct.Struct("<H")
_T = TypeVar("_T")
_TAG_LEN = struct.Struct("<HHI")

# Elements read from the bytes without pydicom: (tag, VR). Anything else goes through pydicom.
_FAST: dict[str, tuple[int, bytes]] = {
    "SOPClassUID": (0x00080016, b"UI"),
    "SOPInstanceUID": (0x00080018, b"UI"),
    "StudyInstanceUID": (0x0020000D, b"UI"),
    "SeriesInstanceUID": (0x0020000E, b"UI"),
    "InstanceNumber": (0x00200013, b"IS"),
}
_INTEGER = re.compile(rb" *[+-]?[0-9]{1,12} *")


class LeanFindFailure(Exception):
    """The C-FIND stream broke off; the message (French) says how, `timed_out` when the PACS
    stopped answering. The caller aborts the association (a no-op when the PACS did)."""

    def __init__(self, reason: str, *, timed_out: bool = False, peer_ended: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out
        # The PACS ended the association (A-ABORT, A-RELEASE, closed): pynetdicom's reactor
        # is acting on it (`settle`).
        self.peer_ended = peer_ended


# -- reading answers -----------------------------------------------------------------------------


def text_of(ds: Dataset, keyword: str) -> str:
    """An element's value as text ("" when absent or empty), multiple values joined by `\\`."""
    try:
        value = ds.get(keyword, "")
    except Exception as exc:  # noqa: BLE001 - pydicom's conversion of bad bytes fails variously
        log.warning("C-FIND answer: %s unreadable (%s)", keyword, exc)
        return ""
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def int_of(ds: Dataset, keyword: str) -> int | None:
    """An element's value as an integer; None when absent, empty or not a single integer."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        return int(value)
    except Exception:  # noqa: BLE001 - as `text_of`; several values, not a number
        return None


class Answer(Protocol):
    """One C-FIND answer (identifier), whichever path received it."""

    def text(self, keyword: str) -> str: ...

    def integer(self, keyword: str) -> int | None: ...

    def dataset(self) -> Dataset | None:
        """The identifier as pynetdicom decodes it; None when pydicom cannot."""


class DatasetAnswer:
    """An answer pynetdicom has decoded."""

    __slots__ = ("_ds",)

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds

    def text(self, keyword: str) -> str:
        return text_of(self._ds, keyword)

    def integer(self, keyword: str) -> int | None:
        return int_of(self._ds, keyword)

    def dataset(self) -> Dataset | None:
        return self._ds


_SLOW = object()


class RawAnswer:
    """An answer kept as its encoded identifier: UIDs and integers are read from the bytes, the
    rest (and anything unusual: other VR, several values, non-ASCII) by pydicom, decoding the
    same bytes as pynetdicom would."""

    __slots__ = ("_data", "_decoded", "_ds", "_elements", "_explicit")

    def __init__(self, data: bytes, explicit: bool) -> None:
        self._data = data
        self._explicit = explicit
        self._ds: Dataset | None = None
        self._decoded = False
        elements: dict[int, Element] = {}
        try:
            whole = walk(data, 0, len(data), explicit, elements) == len(data)
        except (ValueError, struct.error):
            whole = False
        # Out of order tags: pydicom's own reading decides what they mean.
        self._elements = elements if whole and list(elements) == sorted(elements) else None

    @property
    def readable(self) -> bool:
        """Whether the identifier can be read at all (pynetdicom drops those it cannot)."""
        return self._elements is not None or self.dataset() is not None

    def dataset(self) -> Dataset | None:
        if not self._decoded:
            self._decoded = True
            try:
                self._ds = decode(BytesIO(self._data), not self._explicit, True, False)
            except Exception:  # noqa: BLE001 - as pynetdicom: the answer is dropped
                self._ds = None
        return self._ds

    def _raw(self, keyword: str) -> bytes | object | None:
        """The value's bytes, None when absent, `_SLOW` when pydicom must read it."""
        fast = _FAST.get(keyword)
        if fast is None or self._elements is None:
            return _SLOW
        tag, vr = fast
        element = self._elements.get(tag)
        if element is None:
            return None
        encoded_vr, at, length = element
        if (encoded_vr and encoded_vr != vr) or length == UNDEFINED:
            return _SLOW
        raw = self._data[at : at + length]
        if b"\\" in raw or not raw.isascii():
            return _SLOW
        return raw

    def text(self, keyword: str) -> str:
        raw = self._raw(keyword)
        if raw is None:
            return ""
        if isinstance(raw, bytes) and _FAST[keyword][1] == b"UI":
            # pydicom: trailing NULs and spaces dropped, then `text_of` strips.
            return raw.decode("ascii").rstrip("\0 ").strip()
        ds = self.dataset()
        return text_of(ds, keyword) if ds is not None else ""

    def integer(self, keyword: str) -> int | None:
        raw = self._raw(keyword)
        if raw is None:
            return None
        if isinstance(raw, bytes) and _FAST[keyword][1] == b"IS":
            if not raw.strip(b" "):
                return None
            if _INTEGER.fullmatch(raw):
                return int(raw)
        ds = self.dataset()
        return int_of(ds, keyword) if ds is not None else None


# -- taking the socket from pynetdicom's reactor -------------------------------------------------


class HeldSocket(AssociationSocket):
    """An association socket that the session's thread can take over from pynetdicom's reactor
    (`hold`, then `resume`): while held, the reactor is told there is nothing to read and naps.
    Bytes read past the end of the held stream are given back to the reactor first."""

    def __init__(self, assoc: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(assoc, *args, **kwargs)
        self._init_hold()

    def _init_hold(self) -> None:
        self._held = False
        self._reserved = False
        self._parked = threading.Event()
        self._resumed = threading.Event()
        self._unread = bytearray()

    @classmethod
    def adopt(cls, sock: AssociationSocket) -> HeldSocket:
        """`sock` as a `HeldSocket` (its state taken over as it is): for the sockets pynetdicom's
        server builds itself, for which it has no socket-class hook. Built anew instead, the
        socket would queue a second transport-connection event into the state machine."""
        held = cls.__new__(cls)
        held.__dict__.update(sock.__dict__)
        held._init_hold()
        return held

    @property
    def ready(self) -> bool:
        if self._held:
            self._parked.set()
            self._resumed.wait(_PARK_WAIT_S)
            return False
        if self._reserved:
            return False  # no nap: the reactor has a PDU of its own to send (`reserve`)
        return bool(self._unread) or self._socket_ready()

    def reserve(self) -> None:
        """Keep the reactor from reading, without parking it, until `hold` then `resume` (or
        `resume` alone): an acceptor reserves its socket when the association is requested, so
        that what the peer sends once accepted stays unread until the lean path decides (a
        C-STORE-RQ half read by pynetdicom could not be taken over)."""
        self._reserved = True

    def unreserve(self) -> None:
        """End a reservation that no `hold` followed (the association was not established)."""
        if not self._held:
            self._reserved = False

    def _socket_ready(self) -> bool:
        return bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]

    def recv(self, nr_bytes: int) -> bytearray:
        if not self._unread:
            return AssociationSocket.recv(self, nr_bytes)
        head = self._unread[:nr_bytes]
        del self._unread[:nr_bytes]
        if len(head) < nr_bytes:
            head += AssociationSocket.recv(self, nr_bytes - len(head))
        return head

    def hold(self, timeout: float) -> bool:
        """Park the reactor at the start of its next turn (never inside a PDU); False if it did
        not come within `timeout` (the socket is then left to it)."""
        self._parked.clear()
        self._resumed.clear()
        self._held = True
        if self._parked.wait(timeout):
            return True
        self.resume()
        return False

    def resume(self, unread: bytes | bytearray = b"") -> None:
        """Give the socket back to the reactor, with the bytes read but not consumed."""
        self._unread += unread
        self._held = self._reserved = False
        self._resumed.set()

    @property
    def has_unread(self) -> bool:
        return bool(self._unread)


# -- the C-FIND exchange ------------------------------------------------------------------------


def usable_context(assoc: Any, model: str) -> tuple[int, bool] | None:
    """(context id, explicit VR) of the context pynetdicom would use for `model`, when its
    syntax is one the lean path reads; None otherwise (pynetdicom's path then)."""
    for context in assoc.accepted_contexts:
        if context.abstract_syntax == model:
            syntax = str(context.transfer_syntax[0])
            if syntax in (IMPLICIT_LE, EXPLICIT_LE):
                return int(context.context_id), syntax == EXPLICIT_LE
            return None
    return None


def _idle(assoc: Any, sock: HeldSocket) -> bool:
    """Nothing in flight in pynetdicom: no PDU to send, no event or message waiting."""
    dul = assoc.dul
    return bool(
        assoc.is_established
        and not sock.has_unread
        and dul.state_machine.current_state == "Sta6"
        and dul.event_queue.empty()
        and dul.to_provider_queue.empty()
        and dul.to_user_queue.empty()
        and assoc.dimse.message is None  # no message half received
        and assoc.dimse.msg_queue.empty()
    )


_MESSAGES: dict[type, tuple[type[DIMSEMessage], type[DIMSEMessage]]] = {
    C_FIND: (C_FIND_RQ, C_FIND_RSP),
    C_GET: (C_GET_RQ, C_GET_RSP),
    C_MOVE: (C_MOVE_RQ, C_MOVE_RSP),
    C_STORE: (C_STORE_RQ, C_STORE_RSP),
}
Primitive = C_FIND | C_GET | C_MOVE | C_STORE


def encode_message(primitive: Primitive, context_id: int, max_pdu: int) -> bytes:
    """A DIMSE request or response as the P-DATA-TF PDUs pynetdicom would send for it."""
    request, response = _MESSAGES[type(primitive)]
    message = request() if primitive.MessageIDBeingRespondedTo is None else response()
    message.primitive_to_message(primitive)
    pdus = []
    for p_data in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        pdus.append(pdu.encode())
    return b"".join(pdus)


def _request_bytes(assoc: Any, context_id: int, model: str, identifier: bytes) -> bytes:
    """The C-FIND-RQ as pynetdicom's `send_c_find` sends it."""
    request = C_FIND()
    request.MessageID = 1
    request.AffectedSOPClassUID = model
    request.Priority = 2
    request.Identifier = BytesIO(identifier)
    return encode_message(request, context_id, assoc.dimse.maximum_pdu_size)


def final_status(
    command: bytes, data_set: bytes, message_type: type[DIMSEMessage] = C_FIND_RSP
) -> Dataset:
    """The status Dataset pynetdicom's `send_c_find`/`send_c_get`/`send_c_move` yields for a
    final response."""
    message = message_type()
    message.command_set = decode(BytesIO(command), True, True, False)
    message.data_set = BytesIO(data_set)
    response = cast(C_FIND | C_GET | C_MOVE, message.message_to_primitive())
    status = Dataset()
    status.Status = response.Status
    for keyword in response.STATUS_OPTIONAL_KEYWORDS:
        if getattr(response, keyword, None) is not None:
            setattr(status, keyword, getattr(response, keyword))
    return status


def _command_values(command: bytes | bytearray) -> dict[int, int]:
    """The US elements of a command set (implicit VR little endian) that the stream needs."""
    values: dict[int, int] = {}
    pos, end = 0, len(command)
    while pos + 8 <= end:
        group, element, length = _TAG_LEN.unpack_from(command, pos)
        if group == 0 and length == 2 and pos + 10 <= end:
            values[element] = _U16.unpack_from(command, pos + 8)[0]
        pos += 8 + length
    return values


def find(
    assoc: Any,
    sock: HeldSocket,
    model: str,
    context: tuple[int, bool],
    identifier: bytes,
    timeout: float | None,
) -> tuple[list[RawAnswer], Dataset] | None:
    """Send a C-FIND-RQ and read its responses on the session's thread: (the pending answers,
    the final status as pynetdicom gives it). None when the exchange could not start (the
    reactor busy or not parked): nothing was sent, pynetdicom's path is to be used. Raises
    `LeanFindFailure` when the stream breaks off (timeout: `timeout` seconds without data)."""
    context_id, explicit = context

    def read(raw_socket: socket.socket) -> tuple[tuple[list[RawAnswer], Dataset], bytes]:
        answers, status, rest = receive(raw_socket, context_id, explicit)
        return (answers, status), rest

    return exchange(
        assoc, sock, _request_bytes(assoc, context_id, model, identifier), timeout, read
    )


def exchange(
    assoc: Any,
    sock: HeldSocket,
    request: bytes,
    timeout: float | None,
    read: Callable[[socket.socket], tuple[_T, bytes]],
    *,
    pause: bool = True,
) -> _T | None:
    """Park pynetdicom's reactor, send `request` and `read` the responses from the socket on
    the calling thread (`read` gives its result and the bytes it read past the end, which go
    back to the reactor). None when the exchange could not start (the reactor busy or not
    parked): nothing was sent, pynetdicom's path is to be used. Raises `LeanFindFailure` when
    the stream breaks off (timeout: `timeout` seconds without data). `pause`: also pause the
    association's own reactor (not when called from that reactor's thread)."""
    if not sock.hold(1.0):
        return None
    if not _idle(assoc, sock) or sock.socket is None:
        sock.resume()
        return None
    raw_socket: socket.socket = sock.socket
    idle_timer = assoc.dul._idle_timer
    idle_timer.stop()  # our own timeout applies while the reactor is parked
    previous_timeout = raw_socket.gettimeout()
    unread = b""
    if pause:
        _pause_association(assoc)
    try:
        raw_socket.settimeout(timeout)
        raw_socket.sendall(request)
        result, unread = read(raw_socket)
        return result
    except HandBack as back:
        unread = back.unread
        raise LeanFindFailure(back.reason, peer_ended=back.peer_ended) from None
    except TimeoutError:
        raise LeanFindFailure("pas de réponse", timed_out=True) from None
    except OSError as exc:
        raise LeanFindFailure(
            f"connexion fermée ({exc.strerror or exc})", peer_ended=True
        ) from None
    finally:
        with contextlib.suppress(OSError):
            raw_socket.settimeout(previous_timeout)
        idle_timer.restart()
        assoc._reactor_checkpoint.set()
        sock.resume(unread)


def _pause_association(assoc: Any) -> None:
    """Pause the association's own reactor, as pynetdicom's `send_*` do: it wakes every
    millisecond otherwise, and took 14 % of the Source's CPU during a cold C-GET of 1300
    instances (py-spy), taking the GIL from the thread reading the stream. Bounded: a reactor
    that is not running (association ending) is not waited for."""
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + _PAUSE_WAIT_S
    while not assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.0001)


class HandBack(LeanFindFailure):
    """Stop reading: `unread` goes back to the reactor, `reason` to the caller."""

    def __init__(self, reason: str, unread: bytes = b"", *, closed: bool = False) -> None:
        super().__init__(reason, peer_ended=closed or bool(unread))
        self.unread = unread


class Stream(Protocol):
    def recv_into(self, buffer: memoryview, /) -> int: ...


def settle(assoc: Any) -> None:
    """Give the reactor the time to act on a PDU handed back (abort, release)."""
    deadline = time.monotonic() + _SETTLE_S
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.005)


class Message(NamedTuple):
    """One DIMSE message as read; its buffers are reused for the next one."""

    context_id: int
    values: dict[int, int]  # the command set's US elements (`_command_values`)
    command: bytearray
    data_set: bytearray  # empty when the command announces none


class MessageReader:
    """Reads P-DATA-TF PDUs from a socket and gathers their PDVs into whole DIMSE messages.
    Raises `HandBack` for anything else (A-ABORT, A-RELEASE-RQ, another PDU, malformed PDVs),
    with the bytes not consumed."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._pos = 0
        self._chunk = memoryview(bytearray(_CHUNK))

    @property
    def rest(self) -> bytes:
        """The bytes read past the PDU of the last message."""
        return bytes(self._buffer[self._pos :])

    def _fill(self, count: int) -> None:
        buffer = self._buffer
        if self._pos:
            del buffer[: self._pos]
            self._pos = 0
        view = self._chunk
        while len(buffer) < count:
            received = self._stream.recv_into(view)
            if not received:
                raise HandBack("connexion fermée par le PACS", closed=True)
            buffer += view[:received]

    def messages(self) -> Iterator[Message]:
        buffer = self._buffer
        command = bytearray()
        data_set = bytearray()
        values: dict[int, int] | None = None  # the current message's command, once whole
        context_id = -1
        while True:
            if len(buffer) - self._pos < 6:
                self._fill(6)
            pos = self._pos
            pdu_type = buffer[pos]
            length = int.from_bytes(buffer[pos + 2 : pos + 6], "big")
            if pdu_type != _P_DATA_TF:
                reason = {
                    _A_ABORT: PEER_ABORTED,
                    _A_RELEASE_RQ: "le PACS a mis fin à l'association (A-RELEASE) avant la fin",
                }.get(pdu_type, f"PDU inattendue (type 0x{pdu_type:02X})")
                raise HandBack(reason, bytes(buffer[pos:]))
            if len(buffer) - pos < 6 + length:
                self._fill(6 + length)
                pos = self._pos
            item = pos + 6
            end = item + length
            self._pos = end
            while item < end:
                item_length = int.from_bytes(buffer[item : item + 4], "big")
                fragment_at, item = item + 6, item + 4 + item_length
                if item_length < 2 or item > end:
                    raise HandBack(_BAD_PDV)
                pdv_context = buffer[fragment_at - 2]
                header = buffer[fragment_at - 1]
                if header & 1:
                    if values is not None:
                        raise HandBack("jeu de commande reçu au milieu d'une réponse")
                    context_id = pdv_context
                    command += buffer[fragment_at:item]
                    if not header & 2:
                        continue
                    values = _command_values(command)
                    if COMMAND_FIELD not in values:
                        raise HandBack(BAD_MESSAGE)
                    if values.get(_DATASET_TYPE, _NO_DATASET) != _NO_DATASET:
                        continue  # its data set follows
                else:
                    if values is None:
                        raise HandBack("données reçues avant leur jeu de commande")
                    if pdv_context != context_id:
                        raise HandBack(_BAD_PDV)
                    data_set += buffer[fragment_at:item]
                    if not header & 2:
                        continue
                yield Message(context_id, values, command, data_set)
                command.clear()
                data_set.clear()
                values = None


def receive(
    raw_socket: Stream, context_id: int, explicit: bool
) -> tuple[list[RawAnswer], Dataset, bytes]:
    """Read P-DATA-TF PDUs until the final C-FIND-RSP: (answers, final status, bytes read past
    it). Raises `LeanFindFailure` for what is not a C-FIND response stream on `context_id`."""
    reader = MessageReader(raw_socket)
    answers: list[RawAnswer] = []
    for message in reader.messages():
        values = message.values
        if message.context_id != context_id:
            raise HandBack(_BAD_PDV)
        if (
            values[COMMAND_FIELD] != _C_FIND_RSP
            or STATUS not in values
            or RESPONDED_TO not in values
        ):
            raise HandBack(BAD_MESSAGE)
        if values[STATUS] not in PENDING:
            try:
                status = final_status(bytes(message.command), bytes(message.data_set))
            except Exception as exc:  # noqa: BLE001 - pydicom's and pynetdicom's, varied
                raise HandBack(f"réponse finale illisible ({exc})") from None
            # (PDVs after it in the same PDU would be a peer's error: nothing follows.)
            return answers, status, reader.rest
        if message.data_set:
            answer = RawAnswer(bytes(message.data_set), explicit)
            if answer.readable:
                answers.append(answer)
    raise AssertionError("unreachable: the reader ends by raising")
