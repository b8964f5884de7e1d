"""The MLLP listener over real sockets: ACK per message, bad framing and size answered, bursts."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select

from drimbox.db import Database, Hl7Message, Report
from drimbox.hl7.mllp import frame
from drimbox.hl7.server import MllpServer
from drimbox.sim.ris import RisClient, parse_ack
from drimbox.source.intake import ReportIntake
from support.samples import hl7_text, report_variant

MAX_BYTES = 1024 * 1024


class RunningServer:
    """An MllpServer on its own event loop thread, as `drimbox serve` runs it."""

    def __init__(self, db: Database) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = MllpServer(
            ReportIntake(db).handle_async, "127.0.0.1", 0, max_message_bytes=MAX_BYTES
        )
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture
def server(sqlite_db: Database) -> Iterator[RunningServer]:
    running = RunningServer(sqlite_db)
    yield running
    running.stop()


def test_samples_over_a_real_socket(server: RunningServer) -> None:
    with RisClient("127.0.0.1", server.server.port) as ris:
        for name in ("CR_C-ORU.hl7", "CR_G1-ORU.hl7", "CR_G1_MAJ-MDM.hl7"):
            result = ris.send(hl7_text(name))
            assert result.code == "AA", result.ack
            assert f"MSA|AA|{result.control_id}" in result.ack


def test_bad_framing_and_oversize_are_answered_and_the_connection_goes_on(
    server: RunningServer, sqlite_db: Database
) -> None:
    with RisClient("127.0.0.1", server.server.port) as ris:
        no_start_byte = hl7_text("CR_C-ORU.hl7").encode() + b"\x1c\x0d"
        code, detail = parse_ack(ris.send_raw(no_start_byte))
        assert code == "AR" and "MLLP" in detail

        huge = frame("MSH|^~\\&|A|B|C|D|1||ORU^R01|1|P|2.5\r" + "OBX|" + "x" * (MAX_BYTES + 10))
        code, detail = parse_ack(ris.send_raw(huge))
        assert code == "AR" and "octets" in detail

        result = ris.send(hl7_text("CR_C-ORU.hl7"))  # same connection still serves
        assert result.code == "AA"
    with sqlite_db.session() as session:
        assert session.scalar(select(func.count()).select_from(Report)) == 1


def test_a_client_closing_mid_message_does_not_hurt_the_listener(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.server.port)) as sock:
        sock.sendall(frame(hl7_text("CR_C-ORU.hl7"))[:5000])
    with RisClient("127.0.0.1", server.server.port) as ris:
        assert ris.send(hl7_text("CR_G1-ORU.hl7")).code == "AA"


def test_burst_of_200_messages_from_10_connections(
    server: RunningServer, sqlite_db: Database
) -> None:
    base = hl7_text("CR_C-ORU.hl7")
    messages = [report_variant(base, index) for index in range(200)]

    def sender(chunk: list[str]) -> list[str]:
        with RisClient("127.0.0.1", server.server.port, timeout_s=120) as ris:
            return [ris.send(m).code for m in chunk]

    with ThreadPoolExecutor(10) as pool:
        chunks = [messages[i::10] for i in range(10)]
        codes = [code for chunk in pool.map(sender, chunks) for code in chunk]
    assert codes == ["AA"] * 200
    with sqlite_db.session() as session:
        assert session.scalar(select(func.count()).select_from(Hl7Message)) == 200
        assert session.scalar(select(func.count()).select_from(Report)) == 200
