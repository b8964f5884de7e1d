"""The box's C-STORE SCP on the lean receive path (`cget.serve_stores`, taken by `StoreScp` for
associations that only store): a real Orthanc's C-MOVE gives the same `ReceivedInstance`s
(bytes, UIDs, syntax, calling and move-originator AE titles) as pynetdicom's path; statuses from
the handlers reach the sender; an association that may send C-ECHO keeps pynetdicom's path;
a peer that sends something else, aborts, cuts the connection or falls silent is dealt with
and the SCP keeps serving."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.sop_class import CTImageStorage, Verification

from drimbox.dicom import cget
from drimbox.dicom.pacs import PacsClient, PacsSettings
from drimbox.dicom.scp import ReceivedInstance, StoreScp
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ports import free_port
from support.scripted import count_calls, ct_instance
from support.source import orthanc_moving_to, store_ct_pair

BOX_AET = "DRIMBOXSCP"
MODALITY_AET = "MODALITY"
STUDY_BIG = "1.2.826.0.1.3680043.8.498.77.9.31"
STUDY_LS = "1.2.826.0.1.3680043.8.498.77.9.32"
SCRIPTED = "1.2.826.0.1.3680043.8.498.77.9.33"


@pytest.fixture(scope="module")
def scp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def moving_pacs(scp_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    """An Orthanc that moves to the box's SCP, holding 512×512 uncompressed CT (each instance
    several PDUs) and small JPEG-LS CT."""
    with orthanc_moving_to("ORTHANCSCP", BOX_AET, scp_port) as orthanc:
        store_ct_pair(orthanc, tmp_path_factory.mktemp("scp"), STUDY_BIG, STUDY_LS)
        yield orthanc


@pytest.fixture
def lean_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the associations received by the lean path."""
    return count_calls(monkeypatch, cget, "serve_stores")


@contextmanager
def running(port: int = 0, **options: Any) -> Iterator[tuple[StoreScp, list[ReceivedInstance]]]:
    """A started SCP whose one handler keeps every instance."""
    scp = StoreScp(BOX_AET, "127.0.0.1", port, **options)
    received: list[ReceivedInstance] = []

    def keep(instance: ReceivedInstance) -> bool:
        received.append(instance)
        return True

    scp.add_handler(keep)
    scp.start()
    try:
        yield scp, received
    finally:
        scp.stop()


def moved(orthanc: LocalOrthanc, port: int, study: str, lean: bool) -> list[ReceivedInstance]:
    client = PacsClient(
        PacsSettings(
            host="127.0.0.1", port=orthanc.dicom_port, called_aet=orthanc.aet, calling_aet=BOX_AET
        )
    )
    with running(port, lean=lean) as (_scp, received):
        series_uid = str(client.find_series(study)[0].SeriesInstanceUID)
        count = client.move_series(study, series_uid, BOX_AET)
        assert count == len(received)
    return received


@pytest.mark.parametrize("study", [STUDY_BIG, STUDY_LS])
def test_a_c_move_lands_as_through_pynetdicom(
    moving_pacs: LocalOrthanc, scp_port: int, study: str, lean_calls: list[int]
) -> None:
    lean = moved(moving_pacs, scp_port, study, lean=True)
    assert lean_calls == [1]
    own = moved(moving_pacs, scp_port, study, lean=False)
    assert lean_calls == [1]
    assert len(lean) == (4 if study == STUDY_BIG else 6)

    def by_uid(instances: list[ReceivedInstance]) -> list[ReceivedInstance]:
        return sorted(instances, key=lambda instance: instance.sop_instance_uid)

    assert by_uid(lean) == by_uid(own)  # every field, the Part-10 bytes included
    assert {i.move_originator_aet for i in lean} == {BOX_AET}
    assert {i.calling_aet for i in lean} == {moving_pacs.aet}
    expected_syntax = ExplicitVRLittleEndian if study == STUDY_BIG else JPEGLSLossless
    assert {i.transfer_syntax for i in lean} == {expected_syntax}
    if study == STUDY_BIG:
        assert min(len(i.data) for i in lean) > 512 * 512 * 2


# -- a scripted modality ------------------------------------------------------------------------


def instance(number: int) -> Dataset:
    return ct_instance(SCRIPTED, number, 256_000)


def associate(port: int, *, echo: bool = False) -> Any:
    ae = AE(ae_title=MODALITY_AET)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    if echo:
        ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=BOX_AET)
    assert assoc.is_established
    return assoc


def wait_until(condition: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("lean", [True, False])
def test_the_handlers_statuses_reach_the_sender(lean: bool, lean_calls: list[int]) -> None:
    scp = StoreScp(BOX_AET, "127.0.0.1", 0, lean=lean)
    taken: list[str] = []

    def take_odd(received: ReceivedInstance) -> bool:
        number = int(received.sop_instance_uid.rsplit(".", 1)[1])
        if number == 3:
            raise OSError("disque plein")
        taken.append(received.sop_instance_uid)
        return number % 2 == 1

    scp.add_handler(take_odd)
    scp.start()
    try:
        assoc = associate(scp.bound_port)
        statuses = [int(assoc.send_c_store(instance(n)).Status) for n in (1, 2, 3)]
        assoc.release()
    finally:
        scp.stop()
    assert statuses == [0x0000, 0xC000, 0xA700]  # taken, claimed by none, handler failed
    assert taken == [f"{SCRIPTED}.1.1", f"{SCRIPTED}.1.2"]
    assert lean_calls == ([1] if lean else [])


def test_an_association_that_may_echo_keeps_pynetdicoms_path(lean_calls: list[int]) -> None:
    with running() as (scp, received):
        assoc = associate(scp.bound_port, echo=True)
        assert int(assoc.send_c_echo().Status) == 0
        assert int(assoc.send_c_store(instance(1)).Status) == 0
        assoc.release()
    assert lean_calls == []
    assert [i.sop_instance_uid for i in received] == [f"{SCRIPTED}.1.1"]


def test_a_message_other_than_c_store_aborts(
    lean_calls: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    with running() as (scp, received):
        assoc = associate(scp.bound_port)
        assert int(assoc.send_c_store(instance(1)).Status) == 0
        echo = C_ECHO()
        echo.MessageID = 7
        echo.AffectedSOPClassUID = Verification
        with caplog.at_level(logging.WARNING, logger="drimbox.dicom.scp"):
            assoc.dimse.send_msg(echo, assoc.accepted_contexts[0].context_id)
            assert wait_until(lambda: assoc.is_aborted)
        assert "association de MODALITY interrompue" in caplog.text
        assert lean_calls == [1]
        assert len(received) == 1
        still = associate(scp.bound_port)  # the SCP goes on serving
        assert int(still.send_c_store(instance(2)).Status) == 0
        still.release()
    assert len(received) == 2


def test_a_peer_aborting_or_vanishing_leaves_the_scp_serving(lean_calls: list[int]) -> None:
    with running() as (scp, received):
        aborting = associate(scp.bound_port)
        assert int(aborting.send_c_store(instance(1)).Status) == 0
        aborting.abort()
        vanishing = associate(scp.bound_port)
        assert int(vanishing.send_c_store(instance(2)).Status) == 0
        # The connection cut without a word, in the middle of a C-STORE-RQ's PDU.
        raw: socket.socket = vanishing.dul.socket.socket
        raw.sendall(b"\x04\x00\x00\x01\x00\x00")
        raw.shutdown(socket.SHUT_RDWR)
        vanishing.kill()
        still = associate(scp.bound_port)
        assert int(still.send_c_store(instance(3)).Status) == 0
        still.release()
    assert [i.sop_instance_uid.rsplit(".", 1)[1] for i in received] == ["1", "2", "3"]
    assert lean_calls == [1, 1, 1]


def test_a_silent_peer_is_aborted_after_the_network_timeout(lean_calls: list[int]) -> None:
    with running(network_timeout_s=0.5) as (scp, _received):
        assoc = associate(scp.bound_port)
        started = time.monotonic()
        assert wait_until(lambda: assoc.is_aborted, 5.0)
        assert 0.4 < time.monotonic() - started < 3.0
    assert lean_calls == [1]


@pytest.mark.parametrize("lean", [True, False])
def test_stopping_the_scp_aborts_its_open_associations(lean: bool) -> None:
    with running(lean=lean) as (scp, received):
        assoc = associate(scp.bound_port)
        assert int(assoc.send_c_store(instance(1)).Status) == 0
    assert wait_until(lambda: assoc.is_aborted)
    assert len(received) == 1


def test_what_the_peer_sends_at_once_waits_for_the_lean_path(
    monkeypatch: pytest.MonkeyPatch, lean_calls: list[int]
) -> None:
    """The peer's first C-STORE-RQ, sent as soon as the association is accepted, is not read by
    pynetdicom while the SCP's thread is still deciding (here made slow): the lean path takes
    the whole message."""
    established = StoreScp._on_established

    def slow(self: StoreScp, event: Any) -> None:
        time.sleep(0.3)
        established(self, event)

    monkeypatch.setattr(StoreScp, "_on_established", slow)
    with running() as (scp, received):
        assoc = associate(scp.bound_port)
        statuses = [int(assoc.send_c_store(instance(n)).Status) for n in (1, 2)]
        assoc.release()
    assert statuses == [0, 0]
    assert lean_calls == [1]
    assert [i.sop_instance_uid.rsplit(".", 1)[1] for i in received] == ["1", "2"]


def test_a_caller_refused_at_negotiation_is_rejected_at_once(lean_calls: list[int]) -> None:
    with running(senders=["ORTHANC"]) as (scp, _received):
        ae = AE(ae_title=MODALITY_AET)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        started = time.monotonic()
        refused = ae.associate("127.0.0.1", scp.bound_port, ae_title=BOX_AET)
        assert refused.is_rejected
        assert time.monotonic() - started < 2.0
    assert lean_calls == []
