"""The MLLP listener: framing, size limit and one ACK per inbound block, whatever the block holds.

The framing itself comes from python-hl7's asyncio streams; what a message means and whether it is
stored is the handler's business (`MessageHandler`). A connection survives every bad message: it is
closed only by the peer, by an idle timeout, by the server stopping, or to bound the node's
memory: at most `max_connections` connections (the longest idle one makes room for a new one),
and at most `max_pending_bytes` held in unfinished blocks over all connections (the connection
that passes it gets an AR and is closed; nothing was ACKed, so the RIS sends again).
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hl7.mllp import HL7StreamProtocol, HL7StreamReader, InvalidBlockError

from drimbox.hl7.message import HL7Error, build_ack

log = logging.getLogger(__name__)

# Takes the raw bytes of one block and the peer address, returns the ACK to send.
MessageHandler = Callable[[bytes, str], Awaitable[str]]


class _Saturated(Exception):
    """The connection's unfinished block would pass the listener's memory budget."""


class _BudgetedReader(HL7StreamReader):  # type: ignore[misc]
    """python-hl7's reader, charging what it buffers to the listener's shared budget."""

    def __init__(self, pool: weakref.WeakSet[_BudgetedReader], budget: int, limit: int) -> None:
        super().__init__(limit=limit, encoding="utf-8")
        self._pool = pool
        self._budget = budget
        self.saturated = False
        pool.add(self)

    def held(self) -> int:
        return len(self._buffer)

    def feed_data(self, data: bytes) -> None:
        if self.saturated:
            return
        if sum(r.held() for r in self._pool) + len(data) > self._budget:
            self.saturated = True
            self._buffer.clear()
            self.set_exception(_Saturated())
            return
        super().feed_data(data)


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    last_active: float = field(default_factory=time.monotonic)
    busy: bool = False  # a message is being handled: never evicted then


class MllpServer:
    """Serves MLLP on host:port; `handler` is awaited once per block, in arrival order."""

    def __init__(
        self,
        handler: MessageHandler,
        host: str,
        port: int,
        *,
        max_message_bytes: int,
        idle_timeout_s: float = 60.0,
        max_connections: int = 16,
        max_pending_bytes: int = 64 * 1024 * 1024,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self._handler = handler
        self.ssl = ssl  # MLLP over TLS when given
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.max_pending_bytes = max(max_pending_bytes, max_message_bytes)
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._readers: weakref.WeakSet[_BudgetedReader] = weakref.WeakSet()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> HL7StreamProtocol:
            reader = _BudgetedReader(self._readers, self.max_pending_bytes, self.max_message_bytes)
            return HL7StreamProtocol(reader, self._serve_connection, loop=loop, encoding="utf-8")

        self._server = await loop.create_server(
            factory,
            self.host,
            self.port,
            ssl=self.ssl,
            ssl_handshake_timeout=self.idle_timeout_s if self.ssl else None,
        )
        sockets = list(self._server.sockets)
        if sockets and self.port == 0:
            self.port = sockets[0].getsockname()[1]
        log.info("MLLP listening on %s:%s", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    def _make_room(self, peer: str) -> bool:
        """Whether a new connection may stay: at the cap, the longest idle one is closed."""
        if len(self._connections) < self.max_connections:
            return True
        idle = [(c.last_active, t) for t, c in self._connections.items() if not c.busy]
        if not idle:
            log.warning(
                "MLLP %s refused: %d connections, all working", peer, len(self._connections)
            )
            return False
        _, oldest = min(idle, key=lambda pair: pair[0])
        log.warning("MLLP at %d connections: closing the longest idle one", self.max_connections)
        oldest.cancel()
        del self._connections[oldest]
        return True

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "?"
        task = asyncio.current_task()
        if not self._make_room(peer):
            writer.close()
            return
        connection = _Connection(writer)
        if task is not None:
            self._connections[task] = connection
        # After an oversized block, the rest of that block arrives without a start byte: it must
        # be skipped quietly, it was already answered.
        skipping_oversized = False
        try:
            while True:
                try:
                    block: bytes = await asyncio.wait_for(
                        reader.readblock(),  # type: ignore[attr-defined]
                        timeout=self.idle_timeout_s,
                    )
                except TimeoutError:
                    log.info("MLLP %s idle for %ss: closing", peer, self.idle_timeout_s)
                    break
                except _Saturated:
                    log.warning(
                        "MLLP %s: unfinished messages over %d bytes in all: refused and closed",
                        peer,
                        self.max_pending_bytes,
                    )
                    # No drain: it would re-raise the reader's error; closing flushes the AR.
                    nak = _framing_nak(
                        "listener memory budget for unfinished messages exceeded",
                        "Message refusé : DRIMbox saturée, renvoyer le message plus tard",
                    )
                    writer.writeblock(nak.encode("utf-8"))  # type: ignore[attr-defined]
                    break
                except asyncio.IncompleteReadError as exc:
                    if exc.partial.strip():
                        log.warning(
                            "MLLP %s closed mid-message (%d bytes lost)", peer, len(exc.partial)
                        )
                    break
                except ValueError:
                    skipping_oversized = True
                    await self._reply(
                        writer,
                        _framing_nak(
                            f"message larger than the {self.max_message_bytes}-byte limit",
                            f"Message refusé : plus de {self.max_message_bytes} octets",
                        ),
                    )
                    continue
                except InvalidBlockError:
                    if skipping_oversized:
                        skipping_oversized = False
                        continue
                    await self._reply(
                        writer,
                        _framing_nak(
                            "block does not start with <VT> (0x0B)",
                            "Message refusé : trame MLLP invalide (pas de caractère de début 0x0B)",
                        ),
                    )
                    continue
                skipping_oversized = False
                connection.busy = True
                try:
                    ack = await self._handler(block, peer)
                    await self._reply(writer, ack)
                finally:
                    connection.busy = False
                    connection.last_active = time.monotonic()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._connections.pop(task, None)

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, ack: str) -> None:
        writer.writeblock(ack.encode("utf-8"))  # type: ignore[attr-defined]
        await writer.drain()


def _framing_nak(detail: str, user_message: str) -> str:
    error = HL7Error(
        "AR", detail, segment=None, field=None, hl7_error_code="100", user_message=user_message
    )
    return build_ack(None, "AR", detail, error=error)
