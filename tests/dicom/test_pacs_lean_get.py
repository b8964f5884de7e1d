"""The lean C-GET receive path (`drimbox.dicom.cget`) against pynetdicom's own: the same
instance bytes, counts and errors from a real Orthanc and from scripted PACS (instances larger
than the PDU, a sink that fails, a PACS that aborts mid-series, failure statuses), each
instance handed on before the next is sent, a PACS that stops answering, TLS, pynetdicom's path
kept for big endian, and C-MOVE's responses on the same path; the file meta and C-STORE-RSP
encoded here, byte for byte pynetdicom's."""

from __future__ import annotations

import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from drimbox.dicom import cget
from drimbox.dicom.cfind import encode_message
from drimbox.dicom.pacs import (
    RETRIEVE_TRANSFER_SYNTAXES,
    PacsClient,
    PacsError,
    PacsSettings,
)
from drimbox.sim.orthanc import LocalOrthanc
from support.scripted import count_calls, ct_instance, serving
from support.source import store_ct_pair
from support.trust import localhost_tls

BIG_STUDY = "1.2.826.0.1.3680043.8.498.77.9.18"
SMALL_STUDY = "1.2.826.0.1.3680043.8.498.77.9.19"
SCRIPTED_STUDY = "1.2.826.0.1.3680043.8.498.77.9.20"
MAX_PDU = 65536  # the box's; the 512×512 instances are several PDUs each


@pytest.fixture(scope="module")
def series(orthanc: LocalOrthanc, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Study UID → series UID: 512×512 uncompressed CT, and small JPEG-LS CT."""
    store_ct_pair(orthanc, tmp_path_factory.mktemp("lean-get"), BIG_STUDY, SMALL_STUDY)
    client = PacsClient(settings_of(orthanc))
    return {
        study: str(client.find_series(study)[0].SeriesInstanceUID)
        for study in (BIG_STUDY, SMALL_STUDY)
    }


def settings_of(orthanc: LocalOrthanc, **extra: Any) -> PacsSettings:
    return PacsSettings(
        host="127.0.0.1",
        port=orthanc.dicom_port,
        called_aet=orthanc.aet,
        max_pdu=MAX_PDU,
        **extra,
    )


@pytest.fixture
def lean_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the C-GETs received by the lean path."""
    return count_calls(monkeypatch, cget, "receive")


def retrieve(client: PacsClient, study: str, series_uid: str) -> tuple[int, list[bytes]]:
    received: list[bytes] = []
    count = client.get_series(study, series_uid, lambda data: received.append(bytes(data)))
    return count, received


@pytest.mark.parametrize("study", [BIG_STUDY, SMALL_STUDY])
def test_lean_path_gives_the_bytes_pynetdicom_gives(
    orthanc: LocalOrthanc, series: dict[str, str], study: str, lean_calls: list[int]
) -> None:
    settings = settings_of(orthanc)
    count, lean = retrieve(PacsClient(settings), study, series[study])
    assert lean_calls == [1]
    own_count, own = retrieve(PacsClient(settings, lean_retrieve=False), study, series[study])
    assert lean_calls == [1]
    assert count == own_count == len(lean) == (4 if study == BIG_STUDY else 6)
    assert sorted(lean) == sorted(own)  # byte for byte, file meta included
    if study == BIG_STUDY:
        assert min(len(data) for data in lean) > 4 * MAX_PDU
    # The data set as Orthanc stored it, untouched: its own file, after its file meta.
    sop_uid = dcmread(BytesIO(lean[0]), stop_before_pixels=True).SOPInstanceUID
    http = orthanc.client
    ids = http.post("/tools/lookup", content=str(sop_uid)).json()
    stored = http.get(f"/instances/{ids[0]['ID']}/file").content
    assert lean[0][data_set_offset(lean[0]) :] == stored[data_set_offset(stored) :]


def data_set_offset(part10: bytes) -> int:
    """Where the data set starts after the preamble, prefix and file meta group."""
    group_length = int.from_bytes(part10[140:144], "little")
    return 144 + group_length


def test_a_failing_sink_is_told_to_the_pacs_in_both_paths(
    orthanc: LocalOrthanc, series: dict[str, str], lean_calls: list[int]
) -> None:
    results = []
    for lean_retrieve in (True, False):
        client = PacsClient(settings_of(orthanc), lean_retrieve=lean_retrieve)
        offered: list[bytes] = []

        def sink(data: bytes | memoryview, offered: list[bytes] = offered) -> None:
            offered.append(bytes(data))
            if len(offered) == 2:
                raise OSError("disque plein")

        with client.session(retrieve_sop_classes=[CTImageStorage], sink=sink) as session:
            # The PACS counts the refused instance as failed: a warning, the others completed.
            completed = session.get_series(SMALL_STUDY, series[SMALL_STUDY])
        results.append((completed, len(offered)))
        # Through `PacsClient.get_series`, the sink's own error ends the retrieval.
        with pytest.raises(OSError, match="disque plein"):
            offered.clear()
            client.get_series(SMALL_STUDY, series[SMALL_STUDY], sink, [CTImageStorage])
    assert lean_calls == [1, 1]
    assert results == [(5, 6), (5, 6)]


# -- scripted PACS ------------------------------------------------------------------------------


def instance(number: int, size: int) -> Dataset:
    return ct_instance(SCRIPTED_STUDY, number, size)


Handler = Callable[[Any], Iterator[Any]]


@contextmanager
def scripted_pacs(
    handler: Handler,
    get_syntax: str = ExplicitVRLittleEndian,
    server_tls: ssl.SSLContext | None = None,
    **extra: Any,
) -> Iterator[PacsSettings]:
    """A pynetdicom C-GET SCP answering with `handler` (over TLS with `server_tls`)."""
    ae = AE(ae_title="SCRIPTED")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet, [get_syntax])
    ae.add_supported_context(
        CTImageStorage, list(RETRIEVE_TRANSFER_SYNTAXES), scu_role=True, scp_role=True
    )
    ae.maximum_pdu_size = 0
    with serving(ae, evt.EVT_C_GET, handler, server_tls, max_pdu=MAX_PDU, **extra) as pacs:
        yield pacs


def both_paths(settings: PacsSettings) -> list[tuple[int | str, list[bytes]]]:
    """(count or error message, instances received) by the lean path then pynetdicom's."""
    outcomes: list[tuple[int | str, list[bytes]]] = []
    for lean_retrieve in (True, False):
        client = PacsClient(settings, lean_retrieve=lean_retrieve)
        received: list[bytes] = []
        try:
            count: int | str = client.get_series(
                SCRIPTED_STUDY,
                SCRIPTED_STUDY + ".1",
                lambda data, received=received: received.append(bytes(data)),
                [CTImageStorage],
            )
        except PacsError as exc:
            count = str(exc)
        outcomes.append((count, received))
    return outcomes


def sending(count: int, size: int, then: Callable[[Any], Iterator[Any]] | None = None) -> Handler:
    def handle(event: Any) -> Iterator[Any]:
        yield count + (then is not None)  # `then` is one more sub-operation for the PACS
        for number in range(1, count + 1):
            yield 0xFF00, instance(number, size)
        if then is not None:
            yield from then(event)

    return handle


def test_instances_larger_than_the_pdu(lean_calls: list[int]) -> None:
    with scripted_pacs(sending(3, 300_000)) as settings:
        (lean_count, lean), (own_count, own) = both_paths(settings)
    assert lean_calls == [1]
    assert lean_count == own_count == 3
    assert lean == own and len(lean[0]) > 4 * MAX_PDU
    # Part 10: pynetdicom's file meta, then the data set as the PACS encoded it.
    assert lean[0][128:132] == b"DICM" and bytes(range(256)) * 1000 in lean[0]


def test_each_instance_reaches_the_sink_before_the_next_is_sent(lean_calls: list[int]) -> None:
    seen = threading.Event()
    waited: list[bool] = []

    def handle(event: Any) -> Iterator[Any]:
        yield 3
        yield 0xFF00, instance(1, 1000)
        waited.append(seen.wait(10))  # the box has handed the first one on
        yield 0xFF00, instance(2, 300_000)
        yield 0xFF00, instance(3, 300_000)

    received: list[bytes] = []

    def sink(data: bytes | memoryview) -> None:
        received.append(bytes(data))
        seen.set()

    with scripted_pacs(handle) as settings:
        count = PacsClient(settings).get_series(
            SCRIPTED_STUDY, SCRIPTED_STUDY + ".1", sink, [CTImageStorage]
        )
    assert lean_calls == [1]
    assert count == 3 and len(received) == 3 and waited == [True]


def test_over_tls(tmp_path: Path, lean_calls: list[int]) -> None:
    server_tls, client_tls = localhost_tls(tmp_path)
    with scripted_pacs(
        sending(3, 300_000), server_tls=server_tls, host="localhost", tls=client_tls
    ) as settings:
        (lean_count, lean), (own_count, own) = both_paths(settings)
    assert lean_calls == [1]
    assert lean_count == own_count == 3 and lean == own


def silent(event: Any) -> Iterator[Any]:
    time.sleep(2.5)
    yield 0xFF00, instance(9, 1000)


def aborting(event: Any) -> Iterator[Any]:
    threading.Timer(0.2, event.assoc.abort).start()  # once the C-STOREs are answered
    time.sleep(1)
    yield 0xFF00, instance(9, 1000)


def failing(event: Any) -> Iterator[Any]:
    status = Dataset()
    status.Status = 0xA701
    status.ErrorComment = "Stockage temporaire plein"
    yield status, None


@pytest.mark.parametrize(
    ("then", "expected"),
    [
        (aborting, r"C-GET interrompue : le PACS a interrompu l'association \(A-ABORT\)"),
        (failing, r"en échec \(statut 0xA701\) \(Stockage temporaire plein\)$"),
        (silent, r"pas de réponse à la requête C-GET en 1 s"),
    ],
)
def test_a_pacs_failing_mid_series_gives_pynetdicoms_error(
    then: Handler, expected: str, lean_calls: list[int]
) -> None:
    with scripted_pacs(sending(2, 300_000, then), dimse_timeout=1) as settings:
        (lean_error, lean), (own_error, own) = both_paths(settings)
        assert isinstance(lean_error, str)
        assert lean_error == own_error
        assert re.search(expected, lean_error)
        assert len(lean) == 2 and lean == own
    assert lean_calls == [1]


def test_big_endian_goes_through_pynetdicom(lean_calls: list[int]) -> None:
    with scripted_pacs(sending(2, 1000), get_syntax=ExplicitVRBigEndian) as settings:
        (lean_count, lean), (own_count, own) = both_paths(settings)
    assert lean_calls == []
    assert lean_count == own_count == 2 and lean == own


def test_c_move_responses_read_as_pynetdicom_reads_them(lean_calls: list[int]) -> None:
    """C-MOVE on the same path: the count and the unknown-destination error are pynetdicom's."""
    stored: list[str] = []

    def store(event: Any) -> int:
        stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    destination = AE(ae_title="DEST")
    destination.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    receiver = destination.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, store)]
    )

    def move(event: Any) -> Iterator[Any]:
        if str(event.move_destination).strip() != "DEST":
            yield None, None  # unknown destination: pynetdicom answers 0xA801
            return
        yield "127.0.0.1", int(receiver.server_address[1])
        yield 3
        for number in range(1, 4):
            yield 0xFF00, instance(number, 1000)

    ae = AE(ae_title="SCRIPTED")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove, ExplicitVRLittleEndian)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_MOVE, move)])
    settings = PacsSettings(
        host="127.0.0.1", port=int(server.server_address[1]), called_aet="SCRIPTED"
    )
    outcomes = []
    try:
        for lean_retrieve in (True, False):
            client = PacsClient(settings, lean_retrieve=lean_retrieve)
            count = client.move_series(SCRIPTED_STUDY, SCRIPTED_STUDY + ".1", "DEST")
            with pytest.raises(PacsError) as unknown:
                client.move_series(SCRIPTED_STUDY, SCRIPTED_STUDY + ".1", "NOWHERE")
            outcomes.append((count, str(unknown.value)))
    finally:
        server.shutdown()
        receiver.shutdown()
    assert lean_calls == [1, 1]
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == 3 and len(stored) == 6
    assert "destination 'NOWHERE' inconnue du PACS ?" in outcomes[0][1]


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0x0122])
@pytest.mark.parametrize("uid", ["1.2.3.4", "1.2.3.45"])  # even and odd lengths
def test_store_response_is_pynetdicoms(status: int, uid: str) -> None:
    response = C_STORE()
    response.MessageID = 7
    response.MessageIDBeingRespondedTo = 7
    response.AffectedSOPClassUID = CTImageStorage
    response.AffectedSOPInstanceUID = uid
    response.Status = status
    assert cget.store_response(5, 7, CTImageStorage, uid, status) == encode_message(
        response, 5, MAX_PDU
    )


@pytest.mark.parametrize("syntax", RETRIEVE_TRANSFER_SYNTAXES)
@pytest.mark.parametrize("sop_class", [CTImageStorage, "1.2.840.10008.5.1.4.1.1.7"])
@pytest.mark.parametrize("uid", ["1.2.3.4", "1.2.3.45", "2.25." + "9" * 59])
def test_part10_header_is_pynetdicoms(syntax: str, sop_class: str, uid: str) -> None:
    """As `Event.encoded_dataset(include_meta=True)` builds it for a C-STORE-RQ (UIDs of even
    and odd length, up to 64 characters)."""
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = uid
    request.DataSet = BytesIO(b"\x08\x00\x18\x00")
    event = evt.Event(
        None,  # type: ignore[arg-type]
        evt.EVT_C_STORE,
        {"request": request, "context": _context(sop_class, syntax)},
    )
    expected = event.encoded_dataset(include_meta=True)
    header = cget.part10_header(sop_class, uid, syntax)
    assert header + b"\x08\x00\x18\x00" == expected


def _context(sop_class: str, syntax: str) -> Any:
    context = PresentationContext()
    context.context_id = 1
    context.abstract_syntax = sop_class
    context.transfer_syntax = [syntax]
    return context.as_tuple
