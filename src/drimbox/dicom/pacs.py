"""The PACS adapter: the only module that opens DICOM associations (pynetdicom) to the site's PACS.

Owns the association settings (AE titles, timeouts, PDU size, TCP_NODELAY), C-ECHO, the Study
Root C-FIND queries (turned into `StudySnapshot`s) and the DIMSE retrieval of a series: C-GET
(the instances come back on the same association) and C-MOVE (the PACS sends them to the box's
own C-STORE SCP, `drimbox.dicom.scp`). Retrieval proposes one presentation context per (SOP
class, transfer syntax) so that the PACS can send what it stores without transcoding, and hands
each instance's encoded bytes to a sink without decoding them. The C-FIND, C-GET and C-MOVE
response streams are read by the session's own thread (`cfind`, `cget`), pynetdicom's paths
kept as the fallback (`PacsClient(lean_find=False, lean_retrieve=False)`). Failures become a
`PacsError` whose message names the PACS (AE title, host:port) and says what went wrong.
It must not build KOS manifests, know about reports or the DMP, or leak DIMSE statuses or
pynetdicom objects to its callers.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom import AE, build_role, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from pynetdicom.transport import AssociationSocket

from drimbox.dicom import cfind, cget
from drimbox.dicom.cfind import PEER_ABORTED, Answer, DatasetAnswer, HeldSocket, LeanFindFailure
from drimbox.dicom.cfind import int_of as _int_or_none
from drimbox.dicom.cfind import text_of as _text
from drimbox.dicom.model import InstanceRef, SeriesSnapshot, StudySnapshot, is_uid

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# pynetdicom pretty-prints every C-FIND answer and request for its log whether or not the log is
# shown: 0.2 s of CPU for the 1300 answers of one CT study. The box logs its own summaries.
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False

# SOP classes proposed (pynetdicom's sop_class module builds its names dynamically: untyped).
Verification = UID("1.2.840.10008.1.1")
StudyRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.2.1")
StudyRootQueryRetrieveInformationModelMove = UID("1.2.840.10008.5.1.4.1.2.2.2")
StudyRootQueryRetrieveInformationModelGet = UID("1.2.840.10008.5.1.4.1.2.2.3")

# Transfer syntaxes offered for incoming images, each in a context of its own, so that the PACS
# can pick the one its file is stored in (ARCHITECTURE §2.6: no transcoding on the way in).
# Most used by PACS first: the list is cut when the 128-context limit is near.
RETRIEVE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.5",  # RLE lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still met)
)
_QUERY_MODELS = frozenset(
    {
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
        StudyRootQueryRetrieveInformationModelGet,
        Verification,
    }
)
_MAX_CONTEXTS = 127  # PS3.8: 128 presentation context ids; one is the C-GET model

# C-GET/C-MOVE final statuses (PS3.4 C.4.2.1.5, C.4.3.1.4).
_WARNING_SUBOPS_FAILED = 0xB000
_OUT_OF_RESOURCES = 0xA700

InstanceSink = Callable[[bytes | memoryview], None]
"""Receives one retrieved instance as Part-10 bytes (file meta + dataset as sent by the PACS);
a view is only valid during the call (it may be a receive buffer's)."""

# C-FIND statuses (PS3.4 C.4.1.1.4): Pending with/without all optional keys supported.
_PENDING = frozenset({0xFF00, 0xFF01})
_SUCCESS = 0x0000
_CANCEL = 0xFE00

# Return keys asked at each level (empty value = "send me this attribute").
STUDY_RETURN_KEYS: tuple[str, ...] = (
    "StudyInstanceUID",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "StudyID",
    "ReferringPhysicianName",
    "ModalitiesInStudy",
    "SOPClassesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_RETURN_KEYS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
)
INSTANCE_RETURN_KEYS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
)


class PacsError(Exception):
    """The PACS could not be reached or did not answer as expected (message for a site's IT)."""


@dataclass(frozen=True)
class PacsSettings:
    """How the box reaches the PACS (DIMSE). Timeouts are in seconds.

    - `called_aet`: the PACS's AE title; `calling_aet`: the box's own AE title, which the PACS
      must know (most PACS refuse unknown callers).
    - `connection_timeout`: TCP connect; `acse_timeout`: waiting for the association answer;
      `dimse_timeout`: waiting for each DIMSE response (a C-FIND on a large study is slow on some
      PACS); `network_timeout`: an idle association is closed after this.
    - `max_pdu`: the largest PDU the box accepts, in bytes; 0 means unlimited. 256 KiB keeps the
      number of PDUs (and of recv calls) low for image transfers while bounding memory.
    """

    host: str
    port: int
    called_aet: str
    calling_aet: str = "DRIMBOX"
    connection_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 120.0
    network_timeout: float = 120.0
    max_pdu: int = 262144
    # DICOM over TLS (PS3.15 B.1): the client context (`dicom.retrieve.pacs_tls`); None: TCP.
    tls: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @property
    def tls_args(self) -> tuple[ssl.SSLContext, str] | None:
        """pynetdicom's `tls_args`: the context and the host name the PACS certificate names."""
        return (self.tls, self.host) if self.tls is not None else None

    def __post_init__(self) -> None:
        for name, aet in (("called_aet", self.called_aet), ("calling_aet", self.calling_aet)):
            if not aet or len(aet) > 16 or "\\" in aet:
                raise ValueError(f"{name} {aet!r} is not a valid AE title (1 to 16 characters)")
        if not 0 < self.port < 65536:
            raise ValueError(f"PACS port {self.port} is not a valid TCP port")
        if self.max_pdu < 0:
            raise ValueError("max_pdu must be 0 (unlimited) or a positive number of bytes")

    @property
    def label(self) -> str:
        """How error messages name the PACS: `ORTHANC@pacs.example:104`."""
        return f"{self.called_aet}@{self.host}:{self.port}"


class _WaitingSocket(HeldSocket):
    """An association socket whose readiness check waits (up to the reactor's old 1 ms nap)
    for data instead of answering at once, and that C-FIND can take over (`HeldSocket`).

    pynetdicom's reactor sleeps 1 ms after every turn and reads one PDU a turn: 1300 C-FIND
    answers (one PDU each) took at least 1.3 s. With its nap set to 0 (`_NoDelayAE`), the
    reactor now blocks in `select` and wakes as soon as a PDU arrives; idle, it still sleeps
    between turns, as before.
    """

    def _socket_ready(self) -> bool:
        sock = self.socket
        if sock is not None and self._is_connected and not self._pending():
            # Errors (a closed connection) are reported by the base check below.
            with contextlib.suppress(OSError, ValueError):
                select.select([sock], [], [], _REACTOR_WAIT_S)
        return super()._socket_ready()

    def _pending(self) -> bool:
        """Whether the reactor has something to send, or TLS has decrypted bytes buffered
        that `select` does not see: it must not wait then."""
        sock = self.socket
        buffered = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        return buffered or not self.assoc.dul.to_provider_queue.empty()


_REACTOR_WAIT_S = 0.001


class _NoDelayAE(AE):
    """An AE whose client sockets have TCP_NODELAY set before connecting, and whose reactor
    wakes on incoming data (`_WaitingSocket`).

    Without TCP_NODELAY, DIMSE's small writes (PDV headers, command sets) wait for delayed ACKs
    (~40-70 ms per message on loopback, ARCHITECTURE §2.6). pynetdicom 3.0 has no public
    socket-option setting; `_create_socket` is its per-association hook that builds the bound
    socket (pynetdicom's own is two lines: create, keep the TLS arguments).
    """

    def _create_socket(self, assoc: Any, address: Any, tls_args: Any) -> AssociationSocket:
        sock = _WaitingSocket(assoc, address=address)
        sock.tls_args = tls_args
        if sock.socket is not None:
            sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The reactor's fixed nap between turns; `_WaitingSocket.ready` waits instead.
        assoc.dul._run_loop_delay = 0
        return sock


class PacsSession:
    """One open association; all queries made through it reuse it. Get one from `PacsClient`."""

    def __init__(
        self,
        assoc: Association,
        settings: PacsSettings,
        *,
        lean_find: bool = True,
        lean_retrieve: bool = True,
        sink: InstanceSink | None = None,
    ) -> None:
        self._assoc = assoc
        self._settings = settings
        self._lean_find = lean_find
        self._lean_retrieve = lean_retrieve
        self._sink = sink

    @property
    def tcp_nodelay(self) -> bool:
        """Whether the association's socket has TCP_NODELAY (for diagnostics and tests)."""
        wrapper = self._assoc.dul.socket
        if wrapper is None or wrapper.socket is None:
            return False
        return bool(wrapper.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def echo(self) -> None:
        status = self._assoc.send_c_echo()
        code = self._status_code(status, "C-ECHO")
        if code != _SUCCESS:
            raise PacsError(f"PACS {self._settings.label} : C-ECHO refusé (statut 0x{code:04X})")

    def find(
        self, level: str, return_keys: tuple[str, ...], keys: Mapping[str, Any]
    ) -> list[Dataset]:
        """Study Root C-FIND at `level`; `keys` are matching keys by DICOM keyword."""
        answers = (a.dataset() for a in self.find_answers(level, return_keys, keys))
        return [ds for ds in answers if ds is not None]

    def find_answers(
        self, level: str, return_keys: tuple[str, ...], keys: Mapping[str, Any]
    ) -> list[Answer]:
        """`find`, its answers read only as far as asked (see `drimbox.dicom.cfind`)."""
        identifier = Dataset()
        identifier.QueryRetrieveLevel = level
        identifier.SpecificCharacterSet = "ISO_IR 192"  # accept UTF-8 answers
        for keyword in return_keys:
            setattr(identifier, keyword, "")
        if level == "STUDY":
            # An empty sequence as return key asks for every item (PS3.4 C.2.2.2.6).
            identifier.OtherPatientIDsSequence = []
        unknown = [kw for kw in keys if tag_for_keyword(kw) is None]
        if unknown:
            raise PacsError(
                f"clé(s) DICOM inconnue(s) dans la requête C-FIND : {', '.join(unknown)}"
            )
        for keyword, value in keys.items():
            try:
                setattr(identifier, keyword, value)
            except (ValueError, TypeError) as exc:
                raise PacsError(f"clé C-FIND invalide {keyword}={value!r} : {exc}") from exc

        what = f"C-FIND {level}"
        found = self._lean_find_answers(identifier, what) if self._lean_find else None
        results, status = found if found is not None else self._pynetdicom_find(identifier)
        code = self._status_code(status, what)
        if code == _SUCCESS:
            return results
        comment = status.get("ErrorComment", "")
        label = "annulé" if code == _CANCEL else f"en échec (statut 0x{code:04X})"
        raise PacsError(
            f"PACS {self._settings.label} : C-FIND niveau {level} {label}"
            + (f" ({comment})" if comment else "")
        )

    def _pynetdicom_find(self, identifier: Dataset) -> tuple[list[Answer], Dataset]:
        """pynetdicom's own C-FIND: (pending answers, final status; empty when none came)."""
        results: list[Answer] = []
        for status, answer in self._assoc.send_c_find(
            identifier, StudyRootQueryRetrieveInformationModelFind
        ):
            if "Status" in status and status.Status in _PENDING:
                if answer is not None:
                    results.append(DatasetAnswer(answer))
                continue
            return results, status
        return results, Dataset()

    def _lean_find_answers(
        self, identifier: Dataset, what: str
    ) -> tuple[list[Answer], Dataset] | None:
        """The C-FIND through `drimbox.dicom.cfind` (the session's thread reads the responses);
        None when that path does not apply (syntax, socket, reactor busy): pynetdicom's then."""
        assoc = self._assoc
        sock = assoc.dul.socket
        model = StudyRootQueryRetrieveInformationModelFind
        context = cfind.usable_context(assoc, model) if assoc.is_established else None
        if context is None or not isinstance(sock, HeldSocket):
            return None
        encoded = encode(identifier, not context[1], True, False)
        if encoded is None:
            return None  # pynetdicom's path reports it
        found = self._lean_exchange(
            what, lambda timeout: cfind.find(assoc, sock, model, context, encoded, timeout)
        )
        if found is None:
            return None
        answers, status = found
        return list(answers), status

    def _lean_exchange(self, what: str, run: Callable[[float], _T | None]) -> _T | None:
        """Run a lean exchange (`cfind.exchange`) with the session's timeout; a broken stream
        becomes the `PacsError` pynetdicom's path gives (the association aborted)."""
        s = self._settings
        assoc = self._assoc
        try:
            return run(min(s.dimse_timeout, s.network_timeout))
        except LeanFindFailure as failure:
            if failure.timed_out:
                assoc.abort()
                self._status_code(Dataset(), what)  # raises the usual "no answer" error
            if failure.peer_ended:
                cfind.settle(assoc)
            assoc.abort()
            raise PacsError(
                f"PACS {s.label} : requête {what} interrompue : {failure.reason}"
            ) from None

    def _lean_retrieve_status(
        self, kind: str, identifier: Dataset, destination: str
    ) -> Dataset | None:
        """The C-GET or C-MOVE through `drimbox.dicom.cget` (the session's thread reads the
        stream and, for C-GET, stores each instance); its final status, or None when that path
        does not apply (C-GET without a sink, the model's context not little endian, the
        reactor busy): pynetdicom's then."""
        assoc = self._assoc
        sock = assoc.dul.socket
        sink = self._sink
        move = kind == "MOVE"
        model = (
            StudyRootQueryRetrieveInformationModelMove
            if move
            else StudyRootQueryRetrieveInformationModelGet
        )
        context = cfind.usable_context(assoc, model) if assoc.is_established else None
        if context is None or (sink is None and not move) or not isinstance(sock, HeldSocket):
            return None
        context_id, explicit = context
        encoded = encode(identifier, not explicit, True, False)
        if encoded is None:
            return None
        storage = {
            c.context_id: cget.StorageContext(str(c.abstract_syntax), str(c.transfer_syntax[0]))
            for c in assoc.accepted_contexts
            if c.abstract_syntax not in _QUERY_MODELS and c.context_id is not None
        }
        request = cget.request(context_id, encoded, assoc.dimse.maximum_pdu_size, destination)

        def store(data: memoryview) -> int:
            return _OUT_OF_RESOURCES if sink is None else _store_status(sink, data)

        def read(raw_socket: socket.socket) -> tuple[Dataset, bytes]:
            return cget.receive(raw_socket, context_id, storage, store, move=move)

        return self._lean_exchange(
            f"C-{kind}", lambda timeout: cfind.exchange(assoc, sock, request, timeout, read)
        )

    def get_series(self, study_uid: str, series_uid: str) -> int:
        """C-GET of one series on this association (opened with a sink, see
        `PacsClient.session`); returns the number of instances received."""
        return self._retrieve("GET", study_uid, series_uid)

    def move_series(self, study_uid: str, series_uid: str, destination_aet: str) -> int:
        """C-MOVE of one series to `destination_aet`; returns the completed sub-operations."""
        return self._retrieve("MOVE", study_uid, series_uid, destination=destination_aet)

    def _retrieve(
        self,
        kind: str,
        study_uid: str,
        series_uid: str,
        *,
        destination: str = "",
    ) -> int:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = series_uid
        lean = (
            self._lean_retrieve_status(kind, identifier, destination)
            if self._lean_retrieve
            else None
        )
        responses: Iterable[tuple[Dataset, Dataset | None]]
        if lean is not None:
            responses = [(lean, None)]
        elif kind == "GET":
            responses = self._assoc.send_c_get(
                identifier, StudyRootQueryRetrieveInformationModelGet
            )
        else:
            responses = self._assoc.send_c_move(
                identifier, destination, StudyRootQueryRetrieveInformationModelMove
            )
        received = 0
        for status, _answer in responses:
            code = self._status_code(status, f"C-{kind}")
            if code in _PENDING:
                continue
            completed = int(status.get("NumberOfCompletedSuboperations", 0) or 0)
            failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
            received = completed
            if code == _SUCCESS or (code == _WARNING_SUBOPS_FAILED and completed):
                if failed:
                    log.warning(
                        "PACS %s: C-%s of series %s: %d instance(s) failed",
                        self._settings.label,
                        kind,
                        series_uid,
                        failed,
                    )
                break
            comment = status.get("ErrorComment", "")
            label = "annulé" if code == _CANCEL else f"en échec (statut 0x{code:04X})"
            raise PacsError(
                f"PACS {self._settings.label} : C-{kind} de la série {series_uid} {label}"
                + (f" ({comment})" if comment else "")
                + (f" ; destination {destination!r} inconnue du PACS ?" if code == 0xA801 else "")
            )
        return received

    def _status_code(self, status: Dataset, what: str) -> int:
        # An empty status means no response at all: DIMSE timeout, abort or dropped connection.
        if "Status" not in status:
            s = self._settings
            assoc = self._assoc
            if assoc.acse.is_aborted("a-abort") or (
                assoc.is_aborted and not getattr(assoc, "_sent_abort", True)
            ):
                raise PacsError(f"PACS {s.label} : requête {what} interrompue : {PEER_ABORTED}")
            raise PacsError(
                f"PACS {s.label} : pas de réponse à la requête {what} en {s.dimse_timeout:.0f} s "
                "ou association fermée"
            )
        code: int = status.Status
        return code


def _other_patient_ids(ds: Dataset) -> tuple[str, ...]:
    ids: list[str] = []
    for item in ds.get("OtherPatientIDsSequence", None) or []:
        pid = _text(item, "PatientID")
        if pid:
            ids.append(pid)
    # The retired OtherPatientIDs (0010,1000) is still what some PACS fill in.
    legacy = ds.get("OtherPatientIDs")
    if legacy:
        values = legacy if isinstance(legacy, MultiValue) else [legacy]
        ids.extend(str(v).strip() for v in values if str(v).strip())
    return tuple(dict.fromkeys(ids))


class PacsClient:
    """Queries the site's PACS over DIMSE. Each public call opens and releases one association.

    `lean_find=False` receives C-FIND answers through pynetdicom's own path instead of
    `drimbox.dicom.cfind`, `lean_retrieve=False` C-GET's instances and C-MOVE's responses instead of
    `drimbox.dicom.cget`
    (what the tests and the bench compare them with)."""

    def __init__(
        self, settings: PacsSettings, *, lean_find: bool = True, lean_retrieve: bool = True
    ) -> None:
        self.settings = settings
        self.lean_find = lean_find
        self.lean_retrieve = lean_retrieve

    def _configured_ae(self) -> _NoDelayAE:
        """An AE with the box's title and every timeout and PDU size of the settings."""
        s = self.settings
        ae = _NoDelayAE(ae_title=s.calling_aet)
        ae.connection_timeout = s.connection_timeout
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        ae.network_timeout = s.network_timeout
        ae.maximum_pdu_size = s.max_pdu
        return ae

    def _new_ae(self) -> _NoDelayAE:
        ae = self._configured_ae()
        ae.add_requested_context(Verification)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        return ae

    def _retrieve_ae(self, sop_classes: Iterable[str]) -> tuple[_NoDelayAE, list[Any]]:
        """An AE proposing C-GET, C-MOVE and, for C-GET's C-STORE sub-operations, one context per
        (SOP class, transfer syntax) with the SCP role (PS3.4 C.4.3: the box stores)."""
        ae = self._configured_ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        classes = list(dict.fromkeys(c for c in sop_classes if c))
        room = _MAX_CONTEXTS - 1
        per_class = max(1, min(len(RETRIEVE_TRANSFER_SYNTAXES), room // max(1, len(classes))))
        roles = []
        for sop_class in classes[:room]:
            for syntax in RETRIEVE_TRANSFER_SYNTAXES[:per_class]:
                ae.add_requested_context(sop_class, [syntax])
            roles.append(build_role(sop_class, scp_role=True))
        return ae, roles

    @contextmanager
    def session(
        self,
        *,
        retrieve_sop_classes: Iterable[str] | None = None,
        sink: InstanceSink | None = None,
    ) -> Iterator[PacsSession]:
        """Open one association (released on exit, aborted on error).

        With `retrieve_sop_classes`, the association is set up for C-GET/C-MOVE of instances of
        those classes, and `sink` receives what C-GET brings back."""
        s = self.settings
        if retrieve_sop_classes is None:
            assoc = self._new_ae().associate(
                s.host, s.port, ae_title=s.called_aet, tls_args=s.tls_args
            )
        else:
            ae, roles = self._retrieve_ae(retrieve_sop_classes)
            handlers: list[Any] = []
            if sink is not None:
                handlers.append((evt.EVT_C_STORE, _store_handler(sink)))
            assoc = ae.associate(
                s.host,
                s.port,
                ae_title=s.called_aet,
                ext_neg=roles,
                evt_handlers=handlers,
                tls_args=s.tls_args,
            )
        if not assoc.is_established:
            raise PacsError(self._association_failure(assoc))
        _keep_responses(assoc)
        try:
            yield PacsSession(
                assoc, s, lean_find=self.lean_find, lean_retrieve=self.lean_retrieve, sink=sink
            )
        except BaseException:
            assoc.abort()
            raise
        else:
            assoc.release()

    def _association_failure(self, assoc: Association) -> str:
        s = self.settings
        where = f"PACS {s.label} (AE Title de la DRIMbox : {s.calling_aet})"
        primitive = getattr(assoc.acceptor, "primitive", None)
        if assoc.is_rejected and primitive is not None:
            return (
                f"{where} : association refusée : {primitive.reason_str} "
                f"({primitive.result_str}, {primitive.source_str}) ; vérifiez que le PACS connaît "
                f"l'AE Title {s.calling_aet!r} et que le sien est bien {s.called_aet!r}"
            )
        if primitive is None and not _tcp_reachable(s.host, s.port, s.connection_timeout):
            return (
                f"{where} injoignable : aucune connexion TCP possible sur "
                f"{s.host}:{s.port} (PACS arrêté, hôte/port erronés ou pare-feu)"
            )
        if primitive is None:
            return (
                f"{where} : connexion TCP acceptée mais pas de réponse à l'association en "
                f"{s.acse_timeout:.0f} s (ce port est-il un service DICOM ?)"
            )
        return f"{where} : association interrompue (aucun contexte de présentation commun ?)"

    def sop_classes(self, study_uid: str, series_uid: str) -> list[str]:
        """The SOP classes of a series' instances (C-FIND IMAGE level)."""
        answers = self.find_instances(study_uid, series_uid)
        return list(dict.fromkeys(_text(a, "SOPClassUID") for a in answers if "SOPClassUID" in a))

    def get_series(
        self,
        study_uid: str,
        series_uid: str,
        sink: InstanceSink,
        sop_classes: Iterable[str] | None = None,
    ) -> int:
        """C-GET one series; `sink` gets each instance's bytes as it arrives (stored syntax when
        the PACS honours the proposed contexts). `sop_classes` (e.g. from the KOS) saves a
        C-FIND. Returns the number of instances received."""
        classes = list(sop_classes) if sop_classes else self.sop_classes(study_uid, series_uid)
        if not classes:
            return 0
        errors: list[BaseException] = []

        def guarded(data: bytes | memoryview) -> None:
            try:
                sink(data)
            except BaseException as exc:
                errors.append(exc)
                raise

        with self.session(retrieve_sop_classes=classes, sink=guarded) as session:
            count = session.get_series(study_uid, series_uid)
        if errors:
            raise errors[0]
        return count

    def move_series(self, study_uid: str, series_uid: str, destination_aet: str) -> int:
        """C-MOVE one series to `destination_aet` (the box's own SCP, which the PACS must know
        under that AE title). Returns when the PACS reports the move complete."""
        with self.session(retrieve_sop_classes=[]) as session:
            return session.move_series(study_uid, series_uid, destination_aet)

    def echo(self) -> None:
        """C-ECHO: raises `PacsError` unless the PACS answers Success."""
        with self.session() as session:
            session.echo()

    def find_studies(self, **keys: Any) -> list[Dataset]:
        """Study-level C-FIND; `keys` are DICOM keywords (e.g. `PatientID="123"`)."""
        with self.session() as session:
            return session.find("STUDY", STUDY_RETURN_KEYS, keys)

    def find_series(self, study_uid: str) -> list[Dataset]:
        with self.session() as session:
            return session.find("SERIES", SERIES_RETURN_KEYS, {"StudyInstanceUID": study_uid})

    def find_instances(self, study_uid: str, series_uid: str) -> list[Dataset]:
        with self.session() as session:
            return session.find(
                "IMAGE",
                INSTANCE_RETURN_KEYS,
                {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid},
            )

    def snapshot(self, study_uid: str) -> StudySnapshot | None:
        """What the PACS holds for `study_uid` (None if unknown), queried over one association."""
        with self.session() as session:
            studies = session.find("STUDY", STUDY_RETURN_KEYS, {"StudyInstanceUID": study_uid})
            studies = [d for d in studies if _text(d, "StudyInstanceUID") == study_uid]
            if not studies:
                return None
            if len(studies) > 1:
                raise PacsError(
                    f"PACS {self.settings.label} returned {len(studies)} studies for "
                    f"StudyInstanceUID {study_uid}: the PACS index is inconsistent"
                )
            study = studies[0]
            # One SOP class in the whole study (the usual CT or MR): every instance has it, and
            # the image-level queries need not ask for it. Orthanc reads each instance's stored
            # file to answer SOPClassUID: 0.4 s of its 1 s C-FIND of a 1300-image series.
            classes = study.get("SOPClassesInStudy", "")
            only_class = str(classes) if isinstance(classes, str) and is_uid(str(classes)) else ""
            image_keys = tuple(
                k for k in INSTANCE_RETURN_KEYS if k != "SOPClassUID" or not only_class
            )
            series_list: list[SeriesSnapshot] = []
            series_answers = session.find(
                "SERIES", SERIES_RETURN_KEYS, {"StudyInstanceUID": study_uid}
            )
            for series in series_answers:
                series_uid = _text(series, "SeriesInstanceUID")
                if not series_uid:
                    continue
                answers = session.find_answers(
                    "IMAGE",
                    image_keys,
                    {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid},
                )
                refs: dict[str, InstanceRef] = {}
                for a in answers:
                    if sop_uid := a.text("SOPInstanceUID"):
                        refs[sop_uid] = InstanceRef(
                            sop_class_uid=a.text("SOPClassUID") or only_class,
                            sop_instance_uid=sop_uid,
                            instance_number=a.integer("InstanceNumber"),
                        )
                instances = sorted(
                    refs.values(),
                    key=lambda r: (
                        r.instance_number is None,
                        r.instance_number or 0,
                        r.sop_instance_uid,
                    ),
                )
                series_list.append(
                    SeriesSnapshot(
                        series_instance_uid=series_uid,
                        modality=_text(series, "Modality"),
                        series_number=_int_or_none(series, "SeriesNumber"),
                        series_description=_text(series, "SeriesDescription"),
                        instances=tuple(instances),
                    )
                )
            series_list.sort(
                key=lambda s: (s.series_number is None, s.series_number or 0, s.series_instance_uid)
            )
            return StudySnapshot(
                study_instance_uid=study_uid,
                patient_id=_text(study, "PatientID"),
                issuer_of_patient_id=_text(study, "IssuerOfPatientID"),
                other_patient_ids=_other_patient_ids(study),
                patient_name=_text(study, "PatientName"),
                patient_birth_date=_text(study, "PatientBirthDate"),
                patient_sex=_text(study, "PatientSex"),
                accession_number=_text(study, "AccessionNumber"),
                study_date=_text(study, "StudyDate"),
                study_time=_text(study, "StudyTime"),
                study_description=_text(study, "StudyDescription"),
                study_id=_text(study, "StudyID"),
                referring_physician_name=_text(study, "ReferringPhysicianName"),
                series=tuple(series_list),
            )


def _keep_responses(assoc: Association) -> None:
    """Never lose a DIMSE response to pynetdicom's reactor thread.

    pynetdicom 3.0.4 pauses its reactor before each `send_*()` with a flag handshake that can
    see a stale "paused" while the reactor has just left its wait; the reactor then takes the
    next response off the queue, logs "Received unexpected C-FIND service message" and drops
    it. Seen here under CPU load: ~4 % of study snapshots missed one instance (hence KOS
    manifests missing an image). A response the reactor takes is put back at the head of the
    queue for the waiting `send_*()`; one nobody waits for is dropped after ~1 s of bounces.
    """
    serve = getattr(assoc, "_serve_request", None)
    dimse = getattr(assoc, "dimse", None)
    if serve is None or dimse is None or not hasattr(dimse, "msg_queue"):
        return
    bounces: dict[int, int] = {}

    def serve_or_requeue(msg: Any, context_id: int) -> None:
        if getattr(msg, "is_valid_request", True):
            serve(msg, context_id)
            return
        count = bounces.get(id(msg), 0) + 1
        bounces[id(msg)] = count
        if count > 1000:
            bounces.pop(id(msg), None)
            serve(msg, context_id)  # logs it as unexpected, as pynetdicom would
            return
        queue = dimse.msg_queue
        with queue.mutex:
            queue.queue.appendleft((context_id, msg))
            queue.not_empty.notify()

    assoc._serve_request = serve_or_requeue  # type: ignore[method-assign]


def _store_handler(sink: InstanceSink | None) -> Callable[[Any], int]:
    def handle(event: Any) -> int:
        if sink is None:
            return _OUT_OF_RESOURCES
        # The bytes as sent by the PACS, with file meta: never decoded nor re-encoded.
        return _store_status(sink, event.encoded_dataset(include_meta=True))

    return handle


def _store_status(sink: InstanceSink, data: bytes | memoryview) -> int:
    """Hand one retrieved instance to `sink`: the C-STORE status to answer (both C-GET paths)."""
    try:
        sink(data)
    except Exception:
        log.exception("retrieved instance could not be stored")
        return _OUT_OF_RESOURCES
    return _SUCCESS


def _tcp_reachable(host: str, port: int, timeout: float) -> bool:
    """Tell "nothing listens there" from "a DICOM peer that did not answer" in error messages."""
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 5.0)):
            return True
    except OSError:
        return False


# --- C-STORE SCU (the Conso's export to the local PACS) ------------------------------------------

_STORE_WARNINGS = frozenset({0x0001, 0xB000, 0xB006, 0xB007})  # stored, with coercion etc.
StorageContext = tuple[str, str]
"""(SOP Class UID, transfer syntax UID) of instances to send."""


@dataclass(frozen=True)
class StoreOutcome:
    """What the PACS answered for one instance sent by C-STORE (message in French)."""

    sop_instance_uid: str
    stored: bool
    status: int | None
    message: str = ""


def store_instances(
    client: PacsClient,
    contexts: Iterable[StorageContext],
    instances: Iterable[Dataset],
    on_outcome: Callable[[StoreOutcome], None] | None = None,
) -> list[StoreOutcome]:
    """C-STORE each dataset to the PACS over one association, as encoded in its file meta
    transfer syntax (one presentation context per (SOP class, syntax) of `contexts`, so that
    nothing is transcoded). `instances` may be a generator: datasets are read one at a time.
    An instance the PACS refuses is reported and the next one is sent; a lost association
    stops the transfer (the outcomes so far are returned, the rest were not sent)."""
    pairs = list(dict.fromkeys((c, t) for c, t in contexts if c and t))
    if len(pairs) > _MAX_CONTEXTS + 1:
        raise PacsError(
            f"trop de couples (classe SOP, syntaxe de transfert) différents ({len(pairs)}) "
            "pour une seule association C-STORE"
        )
    s = client.settings
    ae = client._configured_ae()
    for sop_class, syntax in pairs:
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(s.host, s.port, ae_title=s.called_aet, tls_args=s.tls_args)
    if not assoc.is_established:
        raise PacsError(client._association_failure(assoc))
    outcomes: list[StoreOutcome] = []
    try:
        for ds in instances:
            sop = str(ds.get("SOPInstanceUID", ""))
            try:
                status = assoc.send_c_store(ds)
            except (ValueError, AttributeError) as exc:
                # pynetdicom: no accepted context for this SOP class / transfer syntax.
                outcome = StoreOutcome(
                    sop, False, None, f"le PACS n'accepte pas ce type d'image ou son codage ({exc})"
                )
            else:
                if "Status" not in status:
                    outcome = StoreOutcome(
                        sop, False, None, "pas de réponse du PACS (association interrompue)"
                    )
                else:
                    code = int(status.Status)
                    ok = code == _SUCCESS or code in _STORE_WARNINGS
                    comment = str(status.get("ErrorComment", "") or "")
                    outcome = StoreOutcome(
                        sop,
                        ok,
                        code,
                        "" if ok else f"refusé par le PACS (statut 0x{code:04X}) {comment}".strip(),
                    )
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
            if not assoc.is_established:
                break
    except BaseException:
        assoc.abort()
        raise
    if assoc.is_established:
        assoc.release()
    return outcomes
