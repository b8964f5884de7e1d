"""A lean receive path for C-GET, beside pynetdicom's (the C-FIND one's machinery, `cfind`).

Why: a C-GET of a 300-image JPEG-LS series ran at a fifth of dcmtk's pace, ~2.8 ms of CPU per
instance in pynetdicom: its reactor decodes each P-DATA PDU into objects and runs its state
machine per PDU, pydicom decodes each C-STORE-RQ's command set, each C-STORE-RSP is built as a
pydicom Dataset and encoded, and the sub-operation travels through two threads and queues.
Here the session's thread, with pynetdicom's reactor parked (`cfind.exchange`), sends the
C-GET-RQ and reads the PDUs itself: each C-STORE-RQ's data set is gathered from its PDVs and
handed to the store callback as soon as it is whole (Part-10 bytes: the file meta pynetdicom
builds, then the PACS's bytes untouched), the C-STORE-RSP is written straight back, and the
C-GET-RSPs are read until the final one, whose status goes through pynetdicom's own
conversion so that callers see what pynetdicom's path gives.

The data sets are never read, only passed on, so every transfer syntax the box accepted for
the sub-operations is handled alike; the C-GET's own context must be little endian (implicit
or explicit VR), else pynetdicom's path is used (`PacsSession._retrieve`).
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import NamedTuple, NoReturn

from pydicom.dataset import Dataset
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dimse_messages import C_GET_RSP, C_MOVE_RSP
from pynetdicom.dimse_primitives import C_GET, C_MOVE

from drimbox.dicom.cfind import (
    BAD_MESSAGE,
    COMMAND_FIELD,
    PENDING,
    RESPONDED_TO,
    STATUS,
    HandBack,
    Message,
    MessageReader,
    encode_message,
    final_status,
)
from drimbox.dicom.elements import walk

_C_STORE_RQ, _C_GET_RSP, _C_MOVE_RSP = 0x0001, 0x8010, 0x8021
_GET_MODEL, _MOVE_MODEL = "1.2.840.10008.5.1.4.1.2.2.3", "1.2.840.10008.5.1.4.1.2.2.2"
_MESSAGE_ID = 0x0110
_SOP_CLASS, _SOP_INSTANCE, _MOVE_ORIGINATOR = 0x00000002, 0x00001000, 0x00001030
_NOT_SUPPORTED = 0x0122  # pynetdicom's answer to a C-STORE on a context it cannot take
_PREAMBLE = b"\0" * 128 + b"DICM"
_PRINTABLE = re.compile(rb"[!-~]{1,64}")  # a UID: ASCII, no space nor control character
_TAG = struct.Struct("<HH")
_UL = struct.Struct("<I")
_US = struct.Struct("<H")
_PDU_HEAD = struct.Struct(">BBIIBB")  # P-DATA-TF, its length, one PDV: length, context, header

Store = Callable[[memoryview], int]
"""Takes one instance (Part-10 bytes, valid during the call) and gives the C-STORE status."""


@dataclass(frozen=True)
class StorageContext:
    """An accepted context on which the PACS may send C-STORE sub-operations."""

    sop_class: str
    transfer_syntax: str


def part10_header(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, prefix and file meta group exactly as pynetdicom's
    `Event.encoded_dataset(include_meta=True)` puts them before the data set (its
    `create_file_meta` + `encode_file_meta`; encoded here: pydicom took 40 % of the lean
    path's CPU doing it; tests compare both byte for byte)."""
    elements = b"".join(
        (
            _META_VERSION,
            _explicit(0x0002, b"UI", _uid(sop_class)),
            _explicit(0x0003, b"UI", _uid(sop_instance)),
            _explicit(0x0010, b"UI", _uid(transfer_syntax)),
            _META_IMPLEMENTATION,
        )
    )
    return b"".join((_PREAMBLE, _explicit(0x0000, b"UL", _UL.pack(len(elements))), elements))


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    """A group 2 element, explicit VR little endian (short form; OB written by hand)."""
    return _TAG.pack(2, element) + vr + _US.pack(len(value)) + value


def _text(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


# (0002,0001) OB "\0\1"; Implementation Class UID and Version Name: pynetdicom's.
_META_VERSION = _TAG.pack(2, 0x0001) + b"OB\0\0" + _UL.pack(2) + b"\0\1"
_META_IMPLEMENTATION = _explicit(0x0012, b"UI", _uid(PYNETDICOM_IMPLEMENTATION_UID)) + _explicit(
    0x0013, b"SH", _text(PYNETDICOM_IMPLEMENTATION_VERSION)
)


def store_response(
    context_id: int, message_id: int, sop_class: str, sop_instance: str, status: int
) -> bytes:
    """The C-STORE-RSP pynetdicom sends for a status without comment, as one P-DATA-TF PDU
    (its command set encoded here: pydicom's encoding cost more than the rest of the
    sub-operation; tests compare it byte for byte with pynetdicom's)."""
    sop_class_uid, sop_instance_uid = _uid(sop_class), _uid(sop_instance)
    elements = b"".join(
        (
            _element(0x0002, sop_class_uid),
            _element(0x0100, _US.pack(0x8001)),
            _element(0x0120, _US.pack(message_id)),
            _element(0x0800, _US.pack(0x0101)),
            _element(0x0900, _US.pack(status)),
            _element(0x1000, sop_instance_uid),
        )
    )
    command = _element(0x0000, _UL.pack(len(elements))) + elements
    head = _PDU_HEAD.pack(0x04, 0, len(command) + 6, len(command) + 2, context_id, 0x03)
    return head + command


def _element(element: int, value: bytes) -> bytes:
    return _TAG.pack(0, element) + _UL.pack(len(value)) + value


def request(context_id: int, identifier: bytes, max_pdu: int, destination: str = "") -> bytes:
    """The C-GET-RQ as pynetdicom's `send_c_get` sends it, or with a `destination` the
    C-MOVE-RQ of its `send_c_move`."""
    request: C_GET | C_MOVE
    if destination:
        request = C_MOVE()
        request.AffectedSOPClassUID = _MOVE_MODEL
        request.MoveDestination = destination
    else:
        request = C_GET()
        request.AffectedSOPClassUID = _GET_MODEL
    request.MessageID = 1
    request.Priority = 2
    request.Identifier = BytesIO(identifier)
    return encode_message(request, context_id, max_pdu)


class StoreRequest(NamedTuple):
    """What the box reads of a C-STORE-RQ's command set."""

    sop_class: str
    sop_instance: str
    move_originator: str  # the C-MOVE's requestor for a C-MOVE sub-operation, else ""


StoreCallback = Callable[[StoreRequest, StorageContext, memoryview], int]
"""Takes one instance with what its C-STORE-RQ and context say (Part-10 bytes, valid during
the call) and gives the C-STORE status."""


def _store_request(command: bytearray) -> StoreRequest:
    found: dict[int, tuple[bytes, int, int]] = {}
    data = bytes(command)
    try:
        walk(data, 0, len(data), False, found, (_SOP_CLASS, _SOP_INSTANCE, _MOVE_ORIGINATOR))
    except (ValueError, struct.error):
        raise HandBack(BAD_MESSAGE) from None
    if _SOP_CLASS not in found or _SOP_INSTANCE not in found:
        raise HandBack(BAD_MESSAGE)
    values = []
    for tag in (_SOP_CLASS, _SOP_INSTANCE, _MOVE_ORIGINATOR):
        if tag not in found:
            values.append("")
            continue
        _vr, at, length = found[tag]
        raw = data[at : at + length].rstrip(b"\0 ").strip(b" ")
        # (found by fuzzing: the UIDs go into the file meta)
        if not (_PRINTABLE.fullmatch(raw) or (tag == _MOVE_ORIGINATOR and not raw)):
            raise HandBack(BAD_MESSAGE)
        values.append(raw.decode("ascii"))
    return StoreRequest(*values)


def _answer_store(
    raw_socket: socket.socket,
    message: Message,
    storage: Mapping[int, StorageContext],
    store: StoreCallback,
) -> None:
    """Store the instance of a C-STORE-RQ (`store` gives the status) and send its C-STORE-RSP;
    a context that is not a storage one the box accepted for that SOP class gets pynetdicom's
    refusal."""
    request = _store_request(message.command)
    context = storage.get(message.context_id)
    if context is None or context.sop_class != request.sop_class:
        status = _NOT_SUPPORTED
    else:
        instance = bytearray(
            part10_header(request.sop_class, request.sop_instance, context.transfer_syntax)
        )
        instance += message.data_set
        status = store(request, context, memoryview(instance))
    raw_socket.sendall(
        store_response(
            message.context_id,
            message.values[_MESSAGE_ID],
            request.sop_class,
            request.sop_instance,
            status,
        )
    )


def serve_stores(
    raw_socket: socket.socket,
    storage: Mapping[int, StorageContext],
    store: StoreCallback,
) -> NoReturn:
    """The SCP side: answer the C-STORE-RQs of an association on which the requestor only
    stores (a C-MOVE's sub-operations landing on the box) until it asks to release (the bytes
    of its A-RELEASE-RQ, like those of an A-ABORT or a closed connection, go back to
    pynetdicom's reactor through `HandBack.unread`: it ends the association as always). Ends
    by raising `HandBack`; a message other than a C-STORE-RQ is `BAD_MESSAGE`."""
    reader = MessageReader(raw_socket)
    for message in reader.messages():
        if message.values[COMMAND_FIELD] != _C_STORE_RQ or _MESSAGE_ID not in message.values:
            raise HandBack(BAD_MESSAGE)
        _answer_store(raw_socket, message, storage, store)
    raise AssertionError("unreachable: the reader ends by raising")


def receive(
    raw_socket: socket.socket,
    context_id: int,
    storage: Mapping[int, StorageContext],
    store: Store,
    *,
    move: bool = False,
) -> tuple[Dataset, bytes]:
    """Read the C-GET's (`move`: C-MOVE's) stream until its final response, storing each
    instance and answering its C-STORE-RQ on the way: (the final status as pynetdicom gives
    it, the bytes read past it). Raises `LeanFindFailure` for what is not such a stream."""
    response_field, response_type = (_C_MOVE_RSP, C_MOVE_RSP) if move else (_C_GET_RSP, C_GET_RSP)
    reader = MessageReader(raw_socket)
    for message in reader.messages():
        values = message.values
        field = values[COMMAND_FIELD]
        if field == _C_STORE_RQ and _MESSAGE_ID in values:
            _answer_store(raw_socket, message, storage, lambda _rq, _cx, data: store(data))
            continue
        if (
            field != response_field
            or message.context_id != context_id
            or STATUS not in values
            or RESPONDED_TO not in values
        ):
            raise HandBack(BAD_MESSAGE)
        if values[STATUS] in PENDING:
            continue
        try:
            status_set = final_status(
                bytes(message.command), bytes(message.data_set), response_type
            )
        except Exception as exc:  # noqa: BLE001 - pydicom's and pynetdicom's, varied
            raise HandBack(f"réponse finale illisible ({exc})") from None
        return status_set, reader.rest
    raise AssertionError("unreachable: the reader ends by raising")
