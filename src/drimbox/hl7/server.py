"""The MLLP listener: framing, size limit and one ACK per inbound block, whatever the block holds.

The framing itself comes from python-hl7's asyncio streams; what a message means and whether it is
stored is the handler's business (`MessageHandler`). A connection survives every bad message: it is
closed only by the peer, by an idle timeout, or by the server stopping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from hl7.mllp import InvalidBlockError, start_hl7_server

from drimbox.hl7.message import HL7Error, build_ack

log = logging.getLogger(__name__)

# Takes the raw bytes of one block and the peer address, returns the ACK to send.
MessageHandler = Callable[[bytes, str], Awaitable[str]]


class MllpServer:
    """Serves MLLP on host:port; `handler` is awaited once per block, in arrival order."""

    def __init__(
        self,
        handler: MessageHandler,
        host: str,
        port: int,
        *,
        max_message_bytes: int,
        idle_timeout_s: float = 300.0,
    ) -> None:
        self._handler = handler
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.idle_timeout_s = idle_timeout_s
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await start_hl7_server(
            self._serve_connection,
            host=self.host,
            port=self.port,
            limit=self.max_message_bytes,
            encoding="utf-8",
        )
        sockets = self._server.sockets or []
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

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "?"
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
                ack = await self._handler(block, peer)
                await self._reply(writer, ack)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, ack: str) -> None:
        writer.writeblock(ack.encode("utf-8"))  # type: ignore[attr-defined]
        await writer.drain()


def _framing_nak(detail: str, user_message: str) -> str:
    error = HL7Error(
        "AR", detail, segment=None, field=None, hl7_error_code="100", user_message=user_message
    )
    return build_ack(None, "AR", detail, error=error)
