"""The lean C-FIND receive path (`drimbox.dicom.cfind`) against pynetdicom's own: the same
answers from a real Orthanc at every level and syntax, the same snapshot, the same errors for
failure and cancel statuses, a timeout, a PACS aborting mid-stream, odd answers, and TLS."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.dsutils import decode
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from drimbox.dicom.cfind import DatasetAnswer, RawAnswer
from drimbox.dicom.elements import LONG_VRS
from drimbox.dicom.pacs import (
    INSTANCE_RETURN_KEYS,
    SERIES_RETURN_KEYS,
    STUDY_RETURN_KEYS,
    PacsClient,
    PacsError,
    PacsSettings,
)
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.studies import SeriesSpec, generate_study
from support.scripted import serving
from support.trust import localhost_tls

STUDY_UID = "1.2.826.0.1.3680043.8.498.77.9.17"
LEAN_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class OneSyntaxClient(PacsClient):
    """A client proposing a single transfer syntax for C-FIND (the PACS must take it)."""

    def __init__(self, settings: PacsSettings, syntax: str, *, lean_find: bool) -> None:
        super().__init__(settings, lean_find=lean_find)
        self.syntax = syntax

    def _new_ae(self) -> Any:
        ae = self._configured_ae()
        ae.add_requested_context(Verification, [self.syntax])
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, [self.syntax])
        return ae


@pytest.fixture(scope="module")
def study(orthanc: LocalOrthanc, tmp_path_factory: pytest.TempPathFactory) -> None:
    orthanc.store_files(
        generate_study(
            tmp_path_factory.mktemp("lean"), patient_id="IPP1717", patient_name="LÉGER^ÉLODIE",
            birth_date="19850412", sex="F", study_uid=STUDY_UID, accession="ACN1717",
            issuer_of_patient_id="1.2.250.1.213.1.4.8",
            other_patient_ids=[("IPP-LOCAL-9", "1.2.250.1.71.4.2.7")],
            study_description="Scanner thoracique — contrôle",
            series=[SeriesSpec("CT", "Thorax", 7), SeriesSpec("CR", "Thorax face", 2)],
            rows=16, columns=16,
        )
    )  # fmt: skip


def both(settings: PacsSettings, syntax: str) -> tuple[PacsClient, PacsClient]:
    """(lean, pynetdicom's own) clients of the same PACS."""
    return (
        OneSyntaxClient(settings, syntax, lean_find=True),
        OneSyntaxClient(settings, syntax, lean_find=False),
    )


def assert_same_answers(
    lean: PacsClient, own: PacsClient, level: str, keys: tuple[str, ...], query: dict[str, str]
) -> int:
    with lean.session() as lean_session, own.session() as own_session:
        got = lean_session.find_answers(level, keys, query)
        expected = own_session.find_answers(level, keys, query)
    assert all(isinstance(a, DatasetAnswer) for a in expected)
    datasets = [a.dataset() for a in got]
    assert all(ds is not None for ds in datasets)
    assert [ds.to_json_dict() for ds in datasets if ds is not None] == [
        ds.to_json_dict() for a in expected if (ds := a.dataset()) is not None
    ]
    for keyword in (*keys, "SpecificCharacterSet", "PatientName", "StudyDescription"):
        assert [a.text(keyword) for a in got] == [a.text(keyword) for a in expected], keyword
        assert [a.integer(keyword) for a in got] == [a.integer(keyword) for a in expected]
    return len(got)


@pytest.mark.parametrize("syntax", [*LEAN_SYNTAXES, ExplicitVRBigEndian])
def test_lean_path_answers_what_pynetdicom_answers(
    orthanc: LocalOrthanc, study: None, syntax: str
) -> None:
    settings = PacsSettings(host="127.0.0.1", port=orthanc.dicom_port, called_aet=orthanc.aet)
    lean, own = both(settings, syntax)
    with lean.session() as session:
        answers = session.find_answers("STUDY", STUDY_RETURN_KEYS, {"PatientID": "IPP1717"})
    # Little endian goes through the lean path; big endian falls back to pynetdicom's.
    assert all(
        isinstance(a, RawAnswer if syntax in LEAN_SYNTAXES else DatasetAnswer) for a in answers
    )
    assert answers and answers[0].text("PatientName") == "LÉGER^ÉLODIE"

    study_query = {"StudyInstanceUID": STUDY_UID}
    assert assert_same_answers(lean, own, "STUDY", STUDY_RETURN_KEYS, study_query) == 1
    assert assert_same_answers(lean, own, "STUDY", STUDY_RETURN_KEYS, {"PatientID": "IPP1717"}) == 1
    assert assert_same_answers(lean, own, "SERIES", SERIES_RETURN_KEYS, study_query) == 2
    series = own.find_series(STUDY_UID)
    for ds in series:
        query = study_query | {"SeriesInstanceUID": str(ds.SeriesInstanceUID)}
        count = assert_same_answers(lean, own, "IMAGE", INSTANCE_RETURN_KEYS, query)
        assert count == (7 if ds.Modality == "CT" else 2)
        without_class = tuple(k for k in INSTANCE_RETURN_KEYS if k != "SOPClassUID")
        assert assert_same_answers(lean, own, "IMAGE", without_class, query) == count

    snapshot = lean.snapshot(STUDY_UID)
    assert snapshot is not None and snapshot == own.snapshot(STUDY_UID)
    assert snapshot.patient_name == "LÉGER^ÉLODIE"
    assert snapshot.other_patient_ids == ("IPP-LOCAL-9",)
    assert [len(s.instances) for s in snapshot.series] == [7, 2]
    assert [i.instance_number for i in snapshot.series[0].instances] == list(range(1, 8))


# -- a scripted PACS (pynetdicom SCP) for what Orthanc never does -------------------------------

Handler = Callable[[Any], Iterator[tuple[Any, Dataset | None]]]


@contextmanager
def scripted_pacs(
    handler: Handler,
    syntax: str = ExplicitVRLittleEndian,
    server_tls: ssl.SSLContext | None = None,
    **settings: Any,
) -> Iterator[PacsSettings]:
    ae = AE(ae_title="SCRIPTED")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind, [syntax])
    ae.add_supported_context(Verification, [syntax])
    with serving(ae, evt.EVT_C_FIND, handler, server_tls, **settings) as pacs:
        yield pacs


def image(number: int | str | None, sop_uid: str | None = None, **extra: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = STUDY_UID + ".1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    if sop_uid is not None:
        ds.SOPInstanceUID = sop_uid
    if number is not None:
        ds.add(DataElement(0x00200013, "IS", number))
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def odd_answers() -> list[Dataset]:
    """What some PACS send: extra elements and nested sequences, an odd-length UID (padded
    with NUL), integers with spaces or as "1.0", several values, a private element, a UID
    sent as UN, an answer without SOPInstanceUID."""
    nested = Dataset()
    nested.CodeValue, nested.CodingSchemeDesignator = "T-D3000", "SRT"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.ConceptNameCodeSequence = Sequence([nested])
    answers = [
        image(3, STUDY_UID + ".1.3", PatientName="LÉGER^ÉLODIE", ReferencedImageSequence=[item]),
        image(" 2 ", STUDY_UID + ".1.22"),  # odd length: NUL-padded on the wire
        image("1.0", STUDY_UID + ".1.1"),
        image("", STUDY_UID + ".1.9"),
        image("12\\13", STUDY_UID + ".1.12"),
        image(4, None),
        image(5, STUDY_UID + ".1.5"),
        image(6, STUDY_UID + ".1.6"),
    ]
    answers[3].SOPClassUID = ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"]
    answers[6].add_new(0x00091010, "LO", "privé")
    answers[7].add(DataElement(0x00080018, "UN", (STUDY_UID + ".1.6").encode()))
    return answers


def odd_pacs(event: Any) -> Iterator[tuple[int, Dataset | None]]:
    level = event.identifier.QueryRetrieveLevel
    if level == "STUDY":
        ds = Dataset()
        ds.QueryRetrieveLevel, ds.SpecificCharacterSet = "STUDY", "ISO_IR 192"
        ds.StudyInstanceUID, ds.PatientID, ds.PatientName = STUDY_UID, "IPP1717", "LÉGER^ÉLODIE"
        other = Dataset()
        other.PatientID, other.IssuerOfPatientID = "IPP-LOCAL-9", "HOPITAL"
        ds.OtherPatientIDsSequence = [other]
        ds.SOPClassesInStudy = ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"]
        yield 0xFF00, ds
    elif level == "SERIES":
        ds = Dataset()
        ds.QueryRetrieveLevel, ds.Modality, ds.SeriesNumber = "SERIES", "CT", "1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, STUDY_UID + ".1"
        yield 0xFF00, ds
    else:
        for answer in odd_answers():
            yield 0xFF01, answer
    yield 0x0000, None


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")  # the "1.0" sent on purpose
@pytest.mark.parametrize("syntax", LEAN_SYNTAXES)
def test_odd_answers_read_as_pynetdicom_reads_them(syntax: str) -> None:
    with scripted_pacs(odd_pacs, syntax) as settings:
        lean, own = both(settings, syntax)
        query = {"StudyInstanceUID": STUDY_UID, "SeriesInstanceUID": STUDY_UID + ".1"}
        assert assert_same_answers(lean, own, "IMAGE", INSTANCE_RETURN_KEYS, query) == 8
        study_query = {"StudyInstanceUID": STUDY_UID}
        assert assert_same_answers(lean, own, "STUDY", STUDY_RETURN_KEYS, study_query) == 1
        snapshot = lean.snapshot(STUDY_UID)
        assert snapshot is not None and snapshot == own.snapshot(STUDY_UID)
    numbers = {
        i.sop_instance_uid[len(STUDY_UID) + 3 :]: i.instance_number
        for i in snapshot.series[0].instances
    }
    assert numbers == {"3": 3, "22": 2, "1": 1, "9": None, "12": None, "5": 5, "6": 6}
    assert snapshot.other_patient_ids == ("IPP-LOCAL-9",)


def final_status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment
    return status


def pending_then(last: Callable[[Any], Iterator[tuple[Any, Dataset | None]]]) -> Handler:
    def handle(event: Any) -> Iterator[tuple[Any, Dataset | None]]:
        for number in range(1, 6):
            yield 0xFF00, image(number, f"{STUDY_UID}.1.{number}")
        yield from last(event)

    return handle


def failing(event: Any) -> Iterator[tuple[Any, Dataset | None]]:
    yield final_status(0xA700, "Base de donnees indisponible"), None


def cancelled(event: Any) -> Iterator[tuple[Any, Dataset | None]]:
    yield final_status(0xFE00), None


def slow(event: Any) -> Iterator[tuple[Any, Dataset | None]]:
    time.sleep(2.5)
    yield 0x0000, None


def aborting(event: Any) -> Iterator[tuple[Any, Dataset | None]]:
    threading.Timer(0.2, event.assoc.abort).start()  # once the pending answers are out
    time.sleep(1)
    yield 0x0000, None


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        (failing, r"IMAGE en échec \(statut 0xA700\) \(Base de donnees indisponible\)$"),
        (cancelled, r"C-FIND niveau IMAGE annulé$"),
        (slow, r"pas de réponse à la requête C-FIND IMAGE en 1 s"),
        (aborting, r"C-FIND IMAGE interrompue : le PACS a interrompu l'association \(A-ABORT\)"),
    ],
)
def test_errors_are_pynetdicoms_errors(last: Handler, expected: str) -> None:
    with scripted_pacs(pending_then(last), dimse_timeout=1) as settings:
        messages = []
        for lean_find in (True, False):
            client = PacsClient(settings, lean_find=lean_find)
            with pytest.raises(PacsError, match=expected) as failure, client.session() as session:
                assoc = session._assoc
                session.find("IMAGE", INSTANCE_RETURN_KEYS, {"StudyInstanceUID": STUDY_UID})
            messages.append(str(failure.value))
            # Never left half-used: aborted (by the PACS or the box), its reactor gone.
            assoc.dul.join(5)
            assert not assoc.is_established and not assoc.dul.is_alive()
        assert messages[0] == messages[1]
        # The PACS is still usable by the next association.
        client.echo()


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_over_tls(tmp_path: Path) -> None:
    server_tls, client_tls = localhost_tls(tmp_path)
    with scripted_pacs(
        odd_pacs, server_tls=server_tls, host="localhost", tls=client_tls
    ) as settings:
        lean, own = both(settings, ExplicitVRLittleEndian)
        with lean.session() as session:
            assert isinstance(session._assoc.dul.socket.socket, ssl.SSLSocket)
            answers = session.find_answers("IMAGE", INSTANCE_RETURN_KEYS, {})
            assert len(answers) == 8 and isinstance(answers[0], RawAnswer)
            session.echo()  # the association goes on after the C-FIND
        snapshot = lean.snapshot(STUDY_UID)
        assert snapshot is not None and snapshot == own.snapshot(STUDY_UID)


def releasing(event: Any) -> Iterator[tuple[Any, Dataset | None]]:
    threading.Timer(0.2, event.assoc.release).start()
    time.sleep(1)
    yield 0x0000, None


def cutting(event: Any) -> Iterator[tuple[Any, Dataset | None]]:
    connection = event.assoc.dul.socket.socket
    threading.Timer(0.2, connection.shutdown, (socket.SHUT_RDWR,)).start()
    time.sleep(1)
    yield 0x0000, None


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        (releasing, r"IMAGE interrompue : le PACS a mis fin à l'association \(A-RELEASE\)"),
        (cutting, r"C-FIND IMAGE interrompue : connexion fermée par le PACS"),
    ],
)
def test_a_pacs_ending_the_association_mid_stream_is_a_french_error(
    last: Handler, expected: str
) -> None:
    with scripted_pacs(pending_then(last)) as settings:
        client = PacsClient(settings)
        with pytest.raises(PacsError, match=expected), client.session() as session:
            assoc = session._assoc
            session.find("IMAGE", INSTANCE_RETURN_KEYS, {"StudyInstanceUID": STUDY_UID})
        assoc.dul.join(5)
        assert not assoc.is_established and not assoc.dul.is_alive()
        client.echo()


# -- the answers' values read from the bytes, against pydicom on the same bytes ------------------

ELEMENTS = ((0x00080016, b"UI"), (0x00080018, b"UI"), (0x0020000D, b"UI"), (0x00200013, b"IS"))
VALUE = st.binary(max_size=14).map(lambda b: bytes(b"0123456789. +-\\\x00a\xe9"[c % 16] for c in b))


def encoded(elements: list[tuple[int, bytes, bytes]], explicit: bool) -> bytes:
    """(tag, VR, raw value) elements, in tag order, as a PACS would encode them."""
    out = b""
    for tag, vr, value in elements:
        value += b" " * (len(value) % 2)
        out += struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        if not explicit:
            out += struct.pack("<I", len(value))
        elif vr in LONG_VRS:
            out += vr + struct.pack("<HI", 0, len(value))
        else:
            out += vr + struct.pack("<H", len(value))
        out += value
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the invalid values
@settings(max_examples=400, deadline=None)
@given(
    values=st.lists(
        st.tuples(st.booleans(), st.sampled_from([b"", b"UN", b"LO"]), VALUE),
        min_size=4,
        max_size=4,
    ),
    explicit=st.booleans(),
)
def test_values_read_from_the_bytes_are_pydicoms(
    values: list[tuple[bool, bytes, bytes]], explicit: bool
) -> None:
    """Present or not, with their own VR or another (explicit VR), any bytes of a small
    alphabet (digits, dots, spaces, signs, backslash, NUL, letters, non-ASCII)."""
    elements = [
        (tag, other or vr, value)
        for (tag, vr), (present, other, value) in zip(ELEMENTS, values, strict=True)
        if present
    ]
    data = encoded(elements, explicit)
    raw = RawAnswer(data, explicit)
    reference = DatasetAnswer(decode(BytesIO(data), not explicit, True, False))
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "InstanceNumber"):
        assert raw.text(keyword) == reference.text(keyword), keyword
        assert raw.integer(keyword) == reference.integer(keyword), keyword
