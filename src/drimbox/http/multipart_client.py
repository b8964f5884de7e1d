"""A lean streaming HTTP/1.1 GET for `multipart/related` answers: the PACS's WADO-RS series
(hundreds of MB), read part by part with as few copies as the kernel allows.

Owns the receive buffer the socket writes into (an asyncio `BufferedProtocol`: no bytes object
per read), the response head (parsed by h11), the body framing (Content-Length, chunked, or
until the server closes) and the in-place multipart split: each part's body is handed out as a
`memoryview` of the receive buffer, valid until the next part is asked for. httpx stays the
client for everything else: this exists because reading a 257 MB series through httpx cost
more CPU than the PACS spent sending it (bench/RESULTS.md). No connection reuse, no proxies, no
redirects: one GET per series to a PACS or a peer the configuration names.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Literal, cast
from urllib.parse import quote, urlsplit

import h11

from drimbox.http.multipart import (
    MAX_HEADER_BYTES,
    MultipartError,
    boundary_of,
    parse_part_headers,
)
from drimbox.http.tlspolicy import client_context

INITIAL_BUFFER = 4 * 1024 * 1024
MIN_FREE = 64 * 1024  # reading pauses below this much free space, until the reader makes room
MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE = 4096
DEFAULT_MAX_PART = 4 * 1024**3
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"  # RFC 3986 pchar and "/": everything else is escaped

Framing = Literal["length", "chunked", "close"]


class FetchError(Exception):
    """The server could not be reached, broke the connection, or sent a malformed response."""


class PartTooLarge(MultipartError):
    """A part exceeds the reader's `max_part` (a peer sending more than any instance is)."""


@dataclass(frozen=True)
class BodyPart:
    """One part: lower-case headers and its body, a view valid until the next part is read."""

    headers: Mapping[str, str]
    body: memoryview

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


class PartScanner:
    """The body of a multipart response in one growable buffer that the socket fills directly.

    Feed it with `writable()` / `received(n)` (or `feed(data)`), call `eof()` when the server
    closed, and take parts with `next_part()`. Chunked framing is removed in place as data
    arrives. No I/O: the fuzz target drives it with arbitrary bytes and splits."""

    def __init__(
        self,
        boundary: str,
        framing: Framing,
        length: int | None = None,
        *,
        max_part: int = DEFAULT_MAX_PART,
        initial_size: int = INITIAL_BUFFER,
    ) -> None:
        if framing == "length" and length is None:
            raise ValueError("a Content-Length framing needs the length")
        self._delimiter = b"--" + boundary.encode("ascii")
        self._next = b"\r\n" + self._delimiter
        self._framing = framing
        self._body_left = length if framing == "length" else None
        self._max_part = max_part
        self._buffer = bytearray(max(initial_size, 2 * MIN_FREE))
        self._view = memoryview(self._buffer)
        self._start = 0  # first byte not yet handed out
        self._data_end = 0  # end of body bytes (chunk framing removed)
        self._raw = 0  # first received byte not yet de-framed (== _data_end unless chunked)
        self._end = 0  # end of received bytes
        self._scan_from = 0
        # The pending part's headers, body offset from `_start` and declared length.
        self._head: tuple[dict[str, str], int, int | None] | None = None
        self._started = False  # the first delimiter was seen
        self._finished = False  # the closing delimiter was seen
        self._body_done = length == 0 and framing == "length"  # length reached, last chunk, EOF
        self._eof = False
        # chunked decoding state
        self._chunk_left = 0
        self._after_chunk = False
        self._in_trailers = False

    # -- filling -----------------------------------------------------------------------------

    @property
    def free(self) -> int:
        return len(self._buffer) - self._end

    def writable(self) -> memoryview:
        """Where the next received bytes go (never empty after `make_room`)."""
        return self._view[self._end :]

    def make_room(self) -> None:
        """Ensure `MIN_FREE` bytes of free space: move the unread bytes to the front, or grow.
        Invalidates the views of earlier parts: call it only when asking for the next part."""
        if self.free >= MIN_FREE:
            return
        keep = self._end - self._start
        if self._start > 0 and len(self._buffer) - keep >= MIN_FREE:
            shift = self._start
            self._view[0:keep] = self._view[self._start : self._end]
        else:
            grown = bytearray(max(2 * len(self._buffer), keep + MIN_FREE))
            grown[:keep] = self._view[self._start : self._end]
            self._buffer = grown  # the old one lives on while earlier parts' views do
            self._view = memoryview(grown)
            shift = self._start
        self._start -= shift
        self._data_end -= shift
        self._raw -= shift
        self._end -= shift
        self._scan_from = max(0, self._scan_from - shift)

    def received(self, count: int) -> None:
        """`count` bytes were written at `writable()`."""
        if count <= 0:
            return
        self._end += count
        if self._framing == "chunked":
            self._dechunk()
        else:
            usable = self._end - self._raw
            if self._body_left is not None:
                if usable > self._body_left:
                    raise FetchError("the server sent more than its Content-Length")
                self._body_left -= usable
                if self._body_left == 0:
                    self._body_done = True
            self._raw = self._data_end = self._end

    def feed(self, data: bytes) -> None:
        """Copy `data` in (for tests and fuzzing; the socket uses `writable`/`received`)."""
        view = memoryview(data)
        while view:
            self.make_room()
            count = min(len(view), self.free)
            self._view[self._end : self._end + count] = view[:count]
            self.received(count)
            view = view[count:]

    def eof(self) -> None:
        """The server closed the connection."""
        self._eof = True
        if self._framing == "close":
            self._body_done = True
        elif not self._body_done:
            raise FetchError("connection closed before the end of the response body")

    def _dechunk(self) -> None:
        """Remove chunk framing from [_raw:_end], moving chunk data down to `_data_end`."""
        view = self._view
        while self._raw < self._end and not self._body_done:
            if self._chunk_left:
                count = min(self._chunk_left, self._end - self._raw)
                if self._data_end != self._raw:
                    view[self._data_end : self._data_end + count] = view[
                        self._raw : self._raw + count
                    ]
                self._data_end += count
                self._raw += count
                self._chunk_left -= count
                self._after_chunk = self._chunk_left == 0
                continue
            line_end = self._buffer.find(b"\r\n", self._raw, self._end)
            if line_end < 0:
                if self._end - self._raw > MAX_CHUNK_LINE:
                    raise FetchError("malformed chunked body (chunk line too long)")
                return
            line = bytes(view[self._raw : line_end])
            self._raw = line_end + 2
            if self._after_chunk:
                if line:
                    raise FetchError("malformed chunked body (no CRLF after chunk data)")
                self._after_chunk = False
            elif self._in_trailers:
                if not line:
                    self._body_done = True
            else:
                size_text = line.split(b";", 1)[0].strip()
                if not _CHUNK_SIZE.fullmatch(size_text):
                    raise FetchError(f"malformed chunked body (chunk size {line[:40]!r})")
                size = int(size_text, 16)
                if size == 0:
                    self._in_trailers = True
                self._chunk_left = size
        if self._body_done and self._raw < self._end:
            raise FetchError("the server sent bytes after the end of the chunked body")

    # -- parts -------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """The closing delimiter was seen."""
        return self._finished

    @property
    def body_done(self) -> bool:
        return self._body_done

    def next_part(self) -> BodyPart | None:
        """The next complete part, or None until more bytes come. Raises `MultipartError` on
        a malformed body, including one that ends (`eof`/length) without its closing
        delimiter."""
        part = self._scan()
        if part is None and self._body_done and not self._finished:
            raise MultipartError("the multipart body ended before its closing delimiter")
        return part

    def _scan(self) -> BodyPart | None:
        if self._finished:
            return None
        buffer = self._buffer
        if not self._started:
            index = buffer.find(self._delimiter, self._start, self._data_end)
            if index < 0:
                if self._data_end - self._start > MAX_HEADER_BYTES:
                    raise MultipartError("no multipart delimiter at the start of the body")
                return None
            self._start = index + len(self._delimiter)
            self._started = True
            self._scan_from = self._start
        if self._data_end - self._start < 2:
            return None
        if buffer[self._start : self._start + 2] == b"--":
            self._finished = True
            self._start = self._data_end
            return None
        if self._head is None:
            self._head = self._part_head()
            if self._head is None:
                return None
        headers, body_offset, length = self._head
        body_start = self._start + body_offset
        if length is not None:
            # The part says how long it is: check the delimiter there instead of searching
            # the whole body for it (most of the CPU of reading a series otherwise). A body
            # never holds its delimiter (RFC 2046 §5.1.1), so a length that ends on one is
            # taken as right.
            end = body_start + length
            if end + len(self._next) > self._data_end and not self._body_done:
                return None
            if buffer.startswith(self._next, end, self._data_end):
                return self._take(headers, body_start, end)
            self._head = (headers, body_offset, None)  # a wrong length: search, as without it
        end = buffer.find(self._next, max(self._scan_from, body_start), self._data_end)
        if end < 0:
            self._scan_from = max(body_start, self._data_end - len(self._next) + 1)
            if self._data_end - body_start > self._max_part:
                raise PartTooLarge(f"a part larger than {self._max_part} bytes")
            return None
        return self._take(headers, body_start, end)

    def _take(self, headers: Mapping[str, str], body_start: int, end: int) -> BodyPart:
        if end - body_start > self._max_part:  # however it arrived: the limit is on the body
            raise PartTooLarge(f"a part larger than {self._max_part} bytes")
        self._start = self._scan_from = end + len(self._next)
        self._head = None
        return BodyPart(headers, self._view[body_start:end])

    def _part_head(self) -> tuple[dict[str, str], int, int | None] | None:
        """The part's headers once complete: (headers, body offset from `_start`, its
        Content-Length if it gives a usable one)."""
        # [_start:] = transport padding, CRLF, headers, CRLF CRLF, body
        buffer, start, data_end = self._buffer, self._start, self._data_end
        line_end = buffer.find(b"\r\n", start, data_end)
        if line_end < 0:
            if data_end - start > MAX_HEADER_BYTES:
                raise MultipartError("malformed part (no line break after the delimiter)")
            return None
        head_end = buffer.find(b"\r\n\r\n", line_end, data_end)
        if head_end < 0 or buffer.find(self._next, line_end, head_end + 2) >= 0:
            if head_end >= 0 or data_end - line_end > MAX_HEADER_BYTES:
                raise MultipartError("malformed part (headers not terminated)")
            return None
        headers: dict[str, str] = {}
        if head_end > line_end:
            if head_end - line_end > MAX_HEADER_BYTES:
                raise MultipartError("part headers too long")
            headers = parse_part_headers(bytes(self._view[line_end + 2 : head_end]))
        declared = headers.get("content-length", "")
        length = int(declared) if declared.isascii() and declared.isdigit() else None
        if length is not None and length > self._max_part:
            raise PartTooLarge(f"a part larger than {self._max_part} bytes")
        return headers, head_end + 4 - start, length


class _Receiver(asyncio.BufferedProtocol):
    """Socket → `PartScanner`. Reading pauses when the buffer runs short of room; the reader
    (`MultipartResponse`) makes room between parts and resumes it."""

    def __init__(self) -> None:
        self.scanner: PartScanner | None = None
        self.head = bytearray()  # bytes before the scanner exists (response head + early body)
        # Views, never bytearrays: asyncio's TLS reader slices what `get_buffer` returns to
        # read several records into it, and a bytearray slice is a copy (data lost).
        self._head_buffer = memoryview(bytearray(MAX_HEAD_BYTES))
        self.transport: asyncio.Transport | None = None
        self.error: BaseException | None = None
        self.closed = False
        self.paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._overflow: memoryview | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def get_buffer(self, sizehint: int) -> memoryview:
        scanner = self.scanner
        if scanner is None:
            return self._head_buffer
        if scanner.free == 0:  # a read raced the pause: keep it aside
            self._overflow = memoryview(bytearray(max(sizehint, MIN_FREE)))
            return self._overflow
        # A buffer handed out may never be filled (TLS: no whole record yet): the next
        # `buffer_updated` is about this one.
        self._overflow = None
        return scanner.writable()

    def buffer_updated(self, nbytes: int) -> None:
        scanner = self.scanner
        try:
            if scanner is None:
                self.head += self._head_buffer[:nbytes]
            elif self._overflow is not None:
                self.head += self._overflow[:nbytes]  # handed to the scanner by `make_room`
                self._overflow = None
            else:
                scanner.received(nbytes)
                if scanner.free < MIN_FREE and self.transport is not None:
                    self.transport.pause_reading()
                    self.paused = True
        except FetchError as exc:
            self.error = exc
            if self.transport is not None:
                self.transport.close()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout_s: float) -> None:
        """Until something arrives (or the connection ends)."""
        if self.error is not None or self.closed:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout_s):
                await self._waiter
        except TimeoutError:
            raise FetchError(f"no data from the server for {timeout_s:g} s") from None
        finally:
            self._waiter = None


@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: Mapping[str, str]  # lower-case names; repeated headers joined by ", "
    framing: Framing
    length: int | None


def parse_response_head(data: bytes) -> ResponseHead:
    """Status and headers of a response head (up to and including CRLF CRLF), checked by h11."""
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    connection.send(h11.EndOfMessage())
    connection.receive_data(data)
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as exc:
            raise FetchError(f"malformed HTTP response head ({exc})") from None
        if isinstance(event, h11.InformationalResponse):
            continue
        if not isinstance(event, h11.Response):
            raise FetchError("incomplete HTTP response head")
        break
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    framing: Framing = "close"
    length: int | None = None
    if "chunked" in headers.get("transfer-encoding", "").lower():
        framing = "chunked"
    elif "content-length" in headers:
        framing, length = "length", int(headers["content-length"])  # h11 validated it
    return ResponseHead(event.status_code, headers, framing, length)


class MultipartResponse:
    """One streaming GET; use `open_multipart`. `status`/`headers` are known on entry; read
    `parts()` for a multipart answer, or `text()` for an error body."""

    def __init__(self, receiver: _Receiver, head: ResponseHead, timeout_s: float) -> None:
        self._receiver = receiver
        self.head = head
        self._timeout_s = timeout_s

    @property
    def status(self) -> int:
        return self.head.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self.head.headers

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        """The TLS session (the peer's certificate), None over plain HTTP."""
        transport = self._receiver.transport
        return None if transport is None else transport.get_extra_info("ssl_object")

    def _scanner(self, boundary: str, max_part: int) -> PartScanner:
        receiver = self._receiver
        scanner = PartScanner(boundary, self.head.framing, self.head.length, max_part=max_part)
        early, receiver.head = bytes(receiver.head), bytearray()
        receiver.scanner = scanner
        scanner.feed(early)
        return scanner

    async def _more(self, scanner: PartScanner) -> None:
        """Make room, resume reading, and wait for bytes (or the end of the connection)."""
        receiver = self._receiver
        if receiver.error is not None:
            raise receiver.error
        scanner.make_room()
        if receiver.head:  # bytes read while the buffer was full
            scanner.feed(bytes(receiver.head))
            receiver.head = bytearray()
            return
        if receiver.closed:
            scanner.eof()
            return
        if receiver.paused and receiver.transport is not None:
            receiver.paused = False
            receiver.transport.resume_reading()
        await receiver.wait(self._timeout_s)
        if receiver.error is not None:
            raise receiver.error

    async def parts(self, max_part: int = DEFAULT_MAX_PART) -> AsyncIterator[BodyPart]:
        """Each part as soon as it is complete. Raises `MultipartError` for a body that is not
        multipart or ends early, `FetchError` for a broken connection."""
        scanner = self._scanner(boundary_of(self.headers.get("content-type", "")), max_part)
        while True:
            part = scanner.next_part()
            if part is not None:
                yield part
                continue
            if scanner.finished:
                return
            await self._more(scanner)

    async def text(self, limit: int = 4096) -> str:
        """The beginning of the body (for error messages), chunk framing removed."""
        receiver = self._receiver
        deadline = asyncio.get_running_loop().time() + min(self._timeout_s, 5.0)
        while len(receiver.head) < limit and not receiver.closed and receiver.error is None:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            with contextlib.suppress(FetchError):
                await receiver.wait(remaining)
        raw = bytes(receiver.head)
        body = _unchunked(raw) if self.head.framing == "chunked" else raw
        return body[:limit].decode("utf-8", "replace")


def _unchunked(raw: bytes) -> bytes:
    """The data of the complete chunks at the start of `raw` (best effort, for messages)."""
    data = bytearray()
    position = 0
    while (line_end := raw.find(b"\r\n", position)) >= 0:
        size_text = raw[position:line_end].split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text) or not (size := int(size_text, 16)):
            break
        data += raw[line_end + 2 : line_end + 2 + size]
        position = line_end + 2 + size + 2
    return bytes(data)


@dataclass(frozen=True)
class GetRequest:
    """Where to connect and what to send for one GET (`Connection: close`)."""

    host: str
    port: int
    secure: bool
    authority: str
    data: bytes


def get_request(url: str, headers: Mapping[str, str]) -> GetRequest:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise FetchError(f"invalid port in URL {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"not an http(s) URL: {url!r}")
    secure = parts.scheme == "https"
    authority = parts.netloc.rpartition("@")[2]
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    target = path + (f"?{quote(parts.query, safe=_PATH_SAFE + '?')}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {authority}", "Connection: close"]
    for name, value in headers.items():
        if any(c in name + value for c in "\r\n\0"):
            raise FetchError(f"invalid request header {name!r}")
        lines.append(f"{name}: {value}")
    try:
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise FetchError(f"request for {url!r} not encodable in latin-1") from None
    return GetRequest(parts.hostname, port or (443 if secure else 80), secure, authority, data)


@contextlib.asynccontextmanager
async def open_multipart(
    url: str,
    headers: Mapping[str, str],
    *,
    timeout_s: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
    connect_to: str | None = None,
) -> AsyncIterator[MultipartResponse]:
    """GET `url` and give the response once its head is in. `timeout_s` bounds the connection
    and every wait for data; `connect_to` is an address to connect to instead of the URL's
    host, which still names the server (Host, SNI, certificate check). Raises `FetchError`
    (unreachable, TLS refused, timeout, malformed head)."""
    request = get_request(url, headers)
    authority = request.authority
    if request.secure and ssl_context is None:
        ssl_context = client_context()
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(min(timeout_s, 10.0)):
            transport, receiver = await loop.create_connection(
                _Receiver,
                connect_to or request.host,
                request.port,
                ssl=ssl_context if request.secure else None,
                server_hostname=request.host if request.secure else None,
            )
    except (OSError, TimeoutError) as exc:
        raise FetchError(f"cannot connect to {authority} ({type(exc).__name__}: {exc})") from exc
    try:
        transport.write(request.data)
        while True:
            end = receiver.head.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(receiver.head) > MAX_HEAD_BYTES:
                raise FetchError("HTTP response head too long")
            if receiver.error is not None:
                raise FetchError(f"connection to {authority} failed: {receiver.error}")
            if receiver.closed:
                raise FetchError(f"{authority} closed the connection without answering")
            await receiver.wait(timeout_s)
        head = parse_response_head(bytes(receiver.head[: end + 4]))
        del receiver.head[: end + 4]
        yield MultipartResponse(receiver, head, timeout_s)
    finally:
        transport.close()
