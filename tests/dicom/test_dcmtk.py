"""`c-move-dcmtk`: C-MOVE requested by dcmtk movescu, received by the box's supervised dcmtk
storescp, each file handed from the spool to the waiting retrieval — against a real Orthanc,
over real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless
from typer.testing import CliRunner

from drimbox.cli import app
from drimbox.config import Config, ConfigError, load_config
from drimbox.dicom.dcmtk import (
    DcmtkMoveRetriever,
    IncompleteInstance,
    StoreScpProcess,
    series_key,
)
from drimbox.dicom.pacs import PacsError
from drimbox.dicom.retrieve import ImageService, pacs_settings, storescp_process
from drimbox.ops.aptitude import _Checks
from drimbox.ops.aptitude import _pacs as pacs_check
from drimbox.ops.speedtest import pacs_speedtest
from drimbox.sim.orthanc import LocalOrthanc, RemoteModality, orthanc_available
from drimbox.sim.ports import free_port
from drimbox.sim.studies import SeriesSpec, generate_study
from support.source import pacs_environ

BOX_AET, RX_AET, STRANGER_AET = "DRIMBOXT", "DRIMBOXTRX", "STRANGER"
STUDY_A, STUDY_B = "1.2.826.0.1.3680043.8.498.77.17.1", "1.2.826.0.1.3680043.8.498.77.17.2"


@pytest.fixture(scope="module")
def rx_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def pacs(rx_port: int) -> Iterator[LocalOrthanc]:
    assert orthanc_available(), "Orthanc is installed by scripts/setup.sh"
    modalities = {
        "box": RemoteModality(BOX_AET, "127.0.0.1", free_port()),
        "rx": RemoteModality(RX_AET, "127.0.0.1", rx_port),
    }
    with LocalOrthanc(aet="ORTHANCDK", modalities=modalities) as orthanc:
        yield orthanc


@pytest.fixture(scope="module")
def studies(pacs: LocalOrthanc, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Two studies of one JPEG-LS series each (6 and 4 images)."""
    made = {}
    for uid, count in ((STUDY_A, 6), (STUDY_B, 4)):
        paths = generate_study(
            tmp_path_factory.mktemp("dcmtk"),
            patient_id="IPP17",
            patient_name="MARTIN^PAUL",
            birth_date="19700101",
            sex="M",
            study_uid=uid,
            accession=f"ACN{count}",
            series=[SeriesSpec("CT", "Thorax", count)],
            rows=64,
            columns=64,
            transfer_syntax=JPEGLSLossless,
        )
        pacs.store_files(paths)
        made[uid] = paths
    return made


def environ_for(
    tmp_path: Path, pacs: LocalOrthanc, rx_port: int, **pacs_keys: str
) -> dict[str, str]:
    environ = {
        "DRIMBOX_STORE__DATABASE_URL": f"sqlite:///{tmp_path / 'box.db'}",
        "DRIMBOX_STORE__CACHE_DIR": str(tmp_path / "cache"),
        **pacs_environ(pacs, BOX_AET, free_port()),
        "DRIMBOX_PACS__RETRIEVE": "c-move-dcmtk",
        "DRIMBOX_PACS__STORESCP_AET": RX_AET,
        "DRIMBOX_PACS__STORESCP_PORT": str(rx_port),
        "DRIMBOX_PACS__TIMEOUT_S": "10",
    }
    environ.update({f"DRIMBOX_PACS__{k.upper()}": v for k, v in pacs_keys.items()})
    return environ


def config_for(tmp_path: Path, pacs: LocalOrthanc, rx_port: int, **pacs_keys: str) -> Config:
    return load_config(environ=environ_for(tmp_path, pacs, rx_port, **pacs_keys))


@pytest.fixture
def config(tmp_path: Path, pacs: LocalOrthanc, rx_port: int) -> Config:
    return config_for(tmp_path, pacs, rx_port)


@pytest.fixture
def receiver(config: Config, tmp_path: Path) -> Iterator[StoreScpProcess]:
    process = storescp_process(config, tmp_path / "spool")
    process.start()
    yield process
    process.stop()


def series_of(paths: list[Path]) -> str:
    return str(dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


def dataset_bytes(part10: bytes) -> bytes:
    """The dataset as encoded, after the file meta (which each writer makes its own)."""
    meta_length = int.from_bytes(part10[140:144], "little")
    return part10[144 + meta_length :]


def retriever(config: Config, receiver: StoreScpProcess) -> DcmtkMoveRetriever:
    return DcmtkMoveRetriever(pacs_settings(config), receiver)


def test_every_instance_arrives_byte_exact_and_the_spool_is_emptied(
    config: Config, receiver: StoreScpProcess, studies: dict[str, list[Path]]
) -> None:
    paths = studies[STUDY_A]
    received: list[bytes] = []
    count = retriever(config, receiver).retrieve_series(
        STUDY_A, series_of(paths), lambda data: received.append(bytes(data)), ()
    )
    assert count == len(received) == len(paths) == 6
    originals = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}
    for data in received:
        ds = dcmread(BytesIO(data))  # a Part-10 file, as the cache keeps it
        assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
        original = originals.pop(str(ds.SOPInstanceUID))
        assert dataset_bytes(data) == dataset_bytes(original.read_bytes())
    assert originals == {}
    assert list(receiver.spool.iterdir()) == []
    assert receiver.discarded == 0


def test_first_instance_reaches_the_sink_before_the_move_ends(
    config: Config, tmp_path: Path, studies: dict[str, list[Path]]
) -> None:
    # storescp waits 1 s after each store: the move lasts ≥ 6 s, the first file is there at once.
    slow = StoreScpProcess(
        RX_AET,
        config.pacs.storescp_port,
        tmp_path / "slow-spool",
        options=("--sleep-after", "1"),
    )
    slow.start()
    try:
        move = retriever(config, slow)
        started = time.monotonic()
        first: list[float] = []
        moving = threading.Event()
        real_move = move._move

        def tracked_move(study_uid: str, series_uid: str) -> None:
            moving.set()
            real_move(study_uid, series_uid)
            moving.clear()

        move._move = tracked_move  # type: ignore[method-assign]

        def sink(data: bytes | memoryview) -> None:
            if not first:
                first.append(time.monotonic() - started)
                assert moving.is_set(), "first instance handed only after the move ended"

        count = move.retrieve_series(STUDY_A, series_of(studies[STUDY_A]), sink, ())
        total = time.monotonic() - started
    finally:
        slow.stop()
    assert count == 6
    assert first and first[0] < total - 3


def test_files_nobody_expects_are_discarded(
    config: Config, receiver: StoreScpProcess, pacs: LocalOrthanc, studies: dict[str, list[Path]]
) -> None:
    # A C-MOVE the box did not ask for (made here by dcmtk's movescu directly) …
    done = subprocess.run(
        ["/usr/bin/movescu", "-S", "-aet", BOX_AET, "-aec", pacs.aet, "-aem", RX_AET,
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY_B}",
         "127.0.0.1", str(pacs.dicom_port)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # … and a stranger's C-STORE straight to the storescp port.
    stored = subprocess.run(
        ["/usr/bin/storescu", "-xt", "-aet", STRANGER_AET, "-aec", RX_AET, "127.0.0.1",
         str(receiver.port), str(studies[STUDY_A][0])],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert stored.returncode == 0, stored.stdout + stored.stderr
    receiver.drain()
    assert receiver.discarded == 4 + 1
    assert list(receiver.spool.iterdir()) == []
    # A retrieval right after gets its own series only.
    received: list[bytes] = []
    count = retriever(config, receiver).retrieve_series(
        STUDY_B, series_of(studies[STUDY_B]), lambda data: received.append(bytes(data)), ()
    )
    assert count == len(received) == 4
    assert {series_key(d) for d in received} == {(STUDY_B, series_of(studies[STUDY_B]))}


def test_a_file_cut_short_fails_its_retrieval_instead_of_reaching_the_cache(
    receiver: StoreScpProcess, studies: dict[str, list[Path]]
) -> None:
    whole = studies[STUDY_A][0].read_bytes()
    for cut in (len(whole) - 1, len(whole) - 5000, 2000):
        with pytest.raises(IncompleteInstance) as error:
            series_key(whole[:cut])
        assert error.value.key == (STUDY_A, series_of(studies[STUDY_A]))
    received: list[bytes] = []
    with receiver.expect(STUDY_A, series_of(studies[STUDY_A]), received.append) as expected:
        (receiver.spool / "CT.cut").write_bytes(whole[: len(whole) - 100])  # as storescp would
        (receiver.spool / "CT.whole").write_bytes(whole)
    assert len(received) == 1 and received[0] == whole
    assert [type(e) for e in expected.errors] == [PacsError]
    assert "reçue incomplète" in str(expected.errors[0])
    assert list(receiver.spool.iterdir()) == []


def test_storescp_is_restarted_when_it_dies(
    config: Config, receiver: StoreScpProcess, studies: dict[str, list[Path]]
) -> None:
    first = receiver.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (receiver.pid in (None, first) or not receiver.restarts):
        time.sleep(0.05)
    assert receiver.restarts == 1 and receiver.pid not in (None, first)
    time.sleep(0.3)  # listening again
    count = retriever(config, receiver).retrieve_series(
        STUDY_B, series_of(studies[STUDY_B]), lambda data: None, ()
    )
    assert count == 4


def test_two_series_moved_at_once_both_complete(
    config: Config, receiver: StoreScpProcess, studies: dict[str, list[Path]]
) -> None:
    move = retriever(config, receiver)
    counts: dict[str, int] = {}
    keys: dict[str, set[tuple[str, str]]] = {STUDY_A: set(), STUDY_B: set()}

    def one(study: str) -> None:
        counts[study] = move.retrieve_series(
            study, series_of(studies[study]), lambda data: keys[study].add(series_key(data)), ()
        )

    threads = [threading.Thread(target=one, args=(s,)) for s in (STUDY_A, STUDY_B)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert counts == {STUDY_A: 6, STUDY_B: 4}
    assert keys == {s: {(s, series_of(studies[s]))} for s in (STUDY_A, STUDY_B)}
    assert receiver.discarded == 0


def test_unknown_destination_is_a_french_error(
    tmp_path: Path, pacs: LocalOrthanc, studies: dict[str, list[Path]]
) -> None:
    port = free_port()
    stray = StoreScpProcess("NOTDECLARED", port, tmp_path / "stray")
    stray.start()
    try:
        settings = pacs_settings(config_for(tmp_path, pacs, port))
        with pytest.raises(PacsError, match="NOTDECLARED") as error:
            DcmtkMoveRetriever(settings, stray).retrieve_series(
                STUDY_A, series_of(studies[STUDY_A]), lambda data: None, ()
            )
        assert "en échec" in str(error.value)
    finally:
        stray.stop()


def test_busy_port_is_refused_in_french(receiver: StoreScpProcess, tmp_path: Path) -> None:
    other = StoreScpProcess(RX_AET, receiver.port, tmp_path / "other")
    with pytest.raises(Exception, match="déjà pris"):
        other.start()


def test_speedtest_and_the_node_service_use_it(
    config: Config, studies: dict[str, list[Path]], tmp_path: Path
) -> None:
    result = pacs_speedtest(config, study_uid=STUDY_A, mode="c-move-dcmtk")
    assert result.ok and result.images == result.expected_images == 6
    assert result.transfer_syntaxes == {JPEGLSLossless: 6}

    async def through_the_service() -> tuple[int, int | None, int | None]:
        service = ImageService(config)
        await service.start()
        assert service.storescp is not None
        pid = service.storescp.pid
        try:
            entry = await service.fetcher.open(STUDY_B, series_of(studies[STUDY_B]))
            deadline = time.monotonic() + 30
            while not entry.complete and entry.error is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert entry.error is None
            count = len(entry.instances)
            service.cache.release(entry)
            # A file nobody expects is discarded and counted for monitoring.
            stray = service.storescp.spool / "CT.stray"
            stray.write_bytes(studies[STUDY_A][0].read_bytes())
            service.storescp.drain()
            assert not stray.exists()
            discarded = service.metrics.registry.get_sample_value(
                "drimbox_storescp_events_total",
                {"node": service.metrics.node, "event": "discarded"},
            )
            assert discarded == 1
        finally:
            await service.stop()
        return count, pid, service.storescp.pid

    count, pid, after = asyncio.run(through_the_service())
    assert count == 4 and pid is not None and after is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert list((tmp_path / "cache" / "storescp-spool").iterdir()) == []


def test_config_refuses_a_storescp_sharing_the_box_identity(
    tmp_path: Path, pacs: LocalOrthanc, rx_port: int
) -> None:
    with pytest.raises(ConfigError, match="storescp_aet doit différer"):
        config_for(tmp_path, pacs, rx_port, storescp_aet=BOX_AET)
    same = config_for(tmp_path, pacs, rx_port)
    with pytest.raises(ConfigError, match="storescp_port doit différer"):
        config_for(tmp_path, pacs, rx_port, scp_port=str(same.pacs.storescp_port))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_series_key_reads_past_nested_sequences(syntax: str) -> None:
    ds = Dataset()
    ds.PatientName = "X"
    inner = Dataset()
    inner.CodeMeaning = "m"
    item = Dataset()
    item.CodeValue = "1"
    item.ConceptNameCodeSequence = [inner]
    ds.ReferencedStudySequence = [item, Dataset()]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.4"
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for undefined in (False, True):
        for element in (ds["ReferencedStudySequence"], item["ConceptNameCodeSequence"]):
            element.is_undefined_length = undefined
        for each in (item, inner):
            each.is_undefined_length_sequence_item = undefined
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
        assert series_key(out.getvalue()) == ("1.2.3", "1.2.3.4")
    with pytest.raises(InvalidDicomError):  # the watcher discards such a file
        series_key(b"not dicom" * 20)


def test_the_command_line_speedtest_and_the_aptitude_check_use_it(
    tmp_path: Path,
    pacs: LocalOrthanc,
    rx_port: int,
    studies: dict[str, list[Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in environ_for(tmp_path, pacs, rx_port).items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "drimbox.toml"
    path.write_text("", encoding="utf-8")
    runner = CliRunner()
    command = ["pacs", "speedtest", "--config", str(path), "--study", STUDY_A, "--json"]
    outcome = runner.invoke(app, command)  # --mode defaults to [pacs] retrieve
    assert outcome.exit_code == 0, outcome.output
    figures = json.loads(outcome.stdout)
    assert (figures["mode"], figures["images"], figures["ok"]) == ("c-move-dcmtk", 6, True)

    config = load_config(path)
    checks = _Checks()
    pacs_check(checks, config, None)
    speed = {c.key: c for c in checks.items}["pacs.speed"]
    assert speed.status == "ok" and "c-move-dcmtk" in speed.title, speed

    # The node holds the port: the command says so in French instead of measuring nothing.
    running = storescp_process(config, tmp_path / "node-spool")
    running.start()
    try:
        busy = runner.invoke(app, command)
    finally:
        running.stop()
    assert busy.exit_code == 1
    assert "storescp de dcmtk ne peut pas démarrer" in busy.output
    assert "Traceback" not in busy.output
