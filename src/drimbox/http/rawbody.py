"""The `drimbox.raw_body` ASGI extension: large streamed bodies written to the socket as they
are, instead of being copied once more by h11's chunk framing.

Owns both sides: `RawBodyH11Protocol`, uvicorn's h11 protocol that offers the extension in
every HTTP scope (the node's servers use it, and the mutual-TLS protocol builds on it), and
`RawStreamingResponse`, a `StreamingResponse` that uses it when offered and falls back to
plain ASGI messages otherwise (any other server, the test client). A WADO-RS series is
hundreds of MB; the copy saved is a tenth of the box's CPU on that path (bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

RAW_BODY = "drimbox.raw_body"
FRAME_HEAD = 10  # room for a chunk-size line: up to 8 hex digits and CRLF
FRAME_TAIL = 2


@dataclass(frozen=True)
class Framable:
    """Body bytes at `buffer[start:end]` with `FRAME_HEAD` free bytes before them and
    `FRAME_TAIL` after, so that the chunk framing is written around them in place: one
    socket write per chunk instead of three."""

    buffer: memoryview
    start: int
    end: int

    @classmethod
    def allocate(cls, size: int) -> Framable:
        buffer = memoryview(bytearray(FRAME_HEAD + size + FRAME_TAIL))
        return cls(buffer, FRAME_HEAD, FRAME_HEAD + size)

    @property
    def body(self) -> memoryview:
        return self.buffer[self.start : self.end]

    def __len__(self) -> int:
        return self.end - self.start

    def framed(self) -> memoryview:
        """The chunk as HTTP/1.1 chunked encoding puts it on the wire."""
        line = b"%x\r\n" % len(self)
        begin = self.start - len(line)
        self.buffer[begin : self.start] = line
        self.buffer[self.end : self.end + FRAME_TAIL] = b"\r\n"
        return self.buffer[begin : self.end + FRAME_TAIL]


BodyChunk = bytes | memoryview | Framable
RawWrite = Callable[[BodyChunk], Awaitable[bool]]


def _raw_writer(offer: dict[str, Any], chunked: bool) -> RawWrite:
    """Writes body bytes of the offer's response cycle: framed as one chunk if the response is
    chunked (HTTP/1.1 without Content-Length), with uvicorn's own back-pressure. Returns False
    once the client has left. Adds the body bytes written to `offer["written"]` (metrics)."""
    cycle: RequestResponseCycle = offer["cycle"]
    transport: asyncio.Transport = offer["transport"]

    async def write(data: BodyChunk) -> bool:
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if cycle.disconnected or transport.is_closing():
            return False
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError("raw body written outside a response")
        if not len(data):
            return True
        if isinstance(data, Framable):
            transport.write(data.framed() if chunked else data.body)
        elif chunked:
            transport.write(b"%x\r\n" % len(data))
            transport.write(data)
            transport.write(b"\r\n")
        else:
            transport.write(data)
        offer["written"] += len(data)
        # A fast client never makes the transport push back: let the loop serve others (and
        # notice a client that left) between chunks.
        await asyncio.sleep(0)
        return True

    return write


class RawBodyH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus the `drimbox.raw_body` extension in each HTTP scope, and a
    deadline for request headers: uvicorn waits forever for a request that never ends its
    headers (or never starts), so slow clients could hold every connection."""

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._awaiting_headers() and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._awaiting_headers():
            self._arm_header_timer()
        else:
            self._disarm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()
        app = self.app
        protocol = self

        async def app_with_raw_body(scope: Any, receive: Any, send: Any) -> None:
            if scope.get("type") == "http" and scope.get("method") != "HEAD":
                # One cycle per request: the writer is bound to this request's response.
                offer = {"cycle": protocol.cycle, "transport": protocol.transport, "written": 0}
                scope.setdefault("extensions", {})[RAW_BODY] = offer
            await app(scope, receive, send)

        self.app = app_with_raw_body


class RawStreamingResponse(StreamingResponse):
    """A streaming response (never with a Content-Length) whose chunks (`BodyChunk`) go
    through the `drimbox.raw_body` extension when the server offers it."""

    _write: RawWrite | None = None

    def __init__(self, content: AsyncIterable[BodyChunk], **kwargs: Any) -> None:
        # Starlette's own type admits no `Framable`; `stream_response` below handles it.
        super().__init__(cast(AsyncIterable[bytes], content), **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        offer = (scope.get("extensions") or {}).get(RAW_BODY)
        if offer is not None:
            chunked = scope.get("http_version") == "1.1"
            self._write = _raw_writer(offer, chunked)
        await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        write = self._write
        async for chunk in self.body_iterator:
            data: BodyChunk = chunk.encode(self.charset) if isinstance(chunk, str) else chunk
            if write is not None:
                if not await write(data):
                    aclose = getattr(self.body_iterator, "aclose", None)
                    if aclose is not None:
                        await aclose()  # the client left: stop producing now
                    break
            else:
                body = data.body if isinstance(data, Framable) else data
                await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
