"""PartScanner splits a streamed multipart body exactly as MultipartReader does, under any framing,
split and buffer size, and refuses malformed framing and bodies; the response head and request
helpers of the streaming GET behave as documented."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drimbox.http.multipart import (
    MAX_HEADER_BYTES,
    MultipartError,
    MultipartReader,
    boundary_of,
    closing,
    part_header,
)
from drimbox.http.multipart_client import (
    MIN_FREE,
    FetchError,
    Framing,
    PartScanner,
    get_request,
    parse_response_head,
)
from drimbox.samples import ans_file

BOUNDARY = "drimbox-5f0c2a9e7b31d4c8a6e2f017"
DELIMITER = f"--{BOUNDARY}".encode()
SMALLEST_BUFFER = 2 * MIN_FREE  # what any initial_size below it gives
FRAMINGS: tuple[Framing, ...] = ("length", "chunked", "close")

Headers = list[tuple[str, str]]
Parsed = list[tuple[dict[str, str], bytes]]


# -- building bodies ---------------------------------------------------------------------------


def encode_part(headers: Headers, payload: bytes, *, first: bool, padding: bytes = b"") -> bytes:
    """One part: its delimiter (CRLF-led unless first), transport padding, headers, payload."""
    lines = b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)
    return (b"" if first else b"\r\n") + DELIMITER + padding + b"\r\n" + lines + b"\r\n" + payload


def multipart_body(
    parts: Sequence[tuple[Headers, bytes]],
    *,
    preamble: bytes = b"",
    padding: bytes = b"",
    epilogue: bytes = b"",
) -> bytes:
    out = preamble + b"".join(
        encode_part(headers, payload, first=index == 0 and not preamble, padding=padding)
        for index, (headers, payload) in enumerate(parts)
    )
    return out + closing(BOUNDARY) + epilogue


def chunked(
    body: bytes,
    sizes: Sequence[int],
    *,
    extension: bool = False,
    trailers: Sequence[bytes] = (),
    upper: bool = False,
) -> bytes:
    """`body` with Transfer-Encoding: chunked framing, chunk sizes taken in turn from `sizes`."""
    out = bytearray()
    position = 0
    index = 0
    while position < len(body):
        chunk = body[position : position + sizes[index % len(sizes)]]
        size = (b"%X" if upper else b"%x") % len(chunk)
        out += size + (b";x=y" if extension else b"") + b"\r\n" + chunk + b"\r\n"
        position += len(chunk)
        index += 1
    out += b"0" + (b";last=1" if extension else b"") + b"\r\n"
    for trailer in trailers:
        out += trailer + b"\r\n"
    return bytes(out + b"\r\n")


def framed(
    body: bytes, framing: Framing, sizes: Sequence[int] = (4096,)
) -> tuple[bytes, int | None]:
    """The bytes on the wire for `body` and the Content-Length to announce."""
    if framing == "chunked":
        return chunked(body, sizes), None
    return body, len(body) if framing == "length" else None


# -- driving a scanner -------------------------------------------------------------------------


def drain(scanner: PartScanner, into: Parsed) -> None:
    while (part := scanner.next_part()) is not None:
        into.append((dict(part.headers), bytes(part.body)))  # copied before more bytes come


def by_feed(scanner: PartScanner, stream: bytes, cuts: Sequence[int]) -> Parsed:
    """Pieces copied in with `feed`, parts taken after each, then the server closes."""
    parts: Parsed = []
    position = 0
    index = 0
    while position < len(stream):
        size = cuts[index % len(cuts)]
        scanner.feed(stream[position : position + size])
        drain(scanner, parts)
        position += size
        index += 1
    scanner.eof()
    drain(scanner, parts)
    return parts


def by_socket(scanner: PartScanner, stream: bytes, cuts: Sequence[int]) -> Parsed:
    """As a socket does: make room, write into `writable()`, report with `received(n)`."""
    parts: Parsed = []
    position = 0
    index = 0
    while position < len(stream):
        scanner.make_room()
        window = scanner.writable()
        assert len(window) >= MIN_FREE
        count = min(len(window), cuts[index % len(cuts)], len(stream) - position)
        window[:count] = stream[position : position + count]
        scanner.received(count)
        drain(scanner, parts)
        position += count
        index += 1
    scanner.eof()
    drain(scanner, parts)
    return parts


DRIVERS: dict[str, Callable[[PartScanner, bytes, Sequence[int]], Parsed]] = {
    "feed": by_feed,
    "socket": by_socket,
}


def reference(body: bytes, cuts: Sequence[int]) -> Parsed:
    reader = MultipartReader(BOUNDARY)
    parts: Parsed = []
    position = 0
    index = 0
    while position < len(body):
        size = cuts[index % len(cuts)]
        parts.extend(
            (dict(p.headers), p.body) for p in reader.feed(body[position : position + size])
        )
        position += size
        index += 1
    reader.close()
    return parts


def scan_all(
    body: bytes, framing: Framing, cuts: Sequence[int] = (1 << 30,), **options: int
) -> Parsed:
    stream, length = framed(body, framing)
    scanner = PartScanner(BOUNDARY, framing, length, **options)
    parts = by_feed(scanner, stream, cuts)
    assert scanner.finished
    return parts


# -- the property ------------------------------------------------------------------------------

FRAGMENTS = [
    b"\r\n--",
    b"\r\n-",
    b"--",
    b"\r\n\r\n",
    b"\r",
    b"\n--" + BOUNDARY.encode(),  # not preceded by CR: not a delimiter (unless at the start)
    b"\r\n--" + BOUNDARY.encode()[:-1],
    b"\r\n--" + BOUNDARY.encode()[:8],
    b"\r\n--" + BOUNDARY.encode()[:-1] + b"X",
]
PAYLOADS = (
    st.lists(st.one_of(st.binary(max_size=60), st.sampled_from(FRAGMENTS)), max_size=6)
    .map(b"".join)
    # a delimiter cannot be in a part, nor start it (CRLF CRLF before it makes one)
    .filter(lambda payload: b"\r\n" + DELIMITER not in payload)
    .filter(lambda payload: not payload.startswith(DELIMITER))
)
HEADER_NAMES = st.from_regex(r"X-[A-Za-z0-9-]{1,12}", fullmatch=True)
HEADER_VALUES = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=20,
)
HEADER_LISTS = st.lists(
    st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=3, unique_by=lambda item: item[0].lower()
)


@st.composite
def parts_with_headers(draw: st.DrawFn) -> list[tuple[Headers, bytes]]:
    parts: list[tuple[Headers, bytes]] = []
    for payload in draw(st.lists(PAYLOADS, min_size=1, max_size=5)):
        headers: Headers = draw(HEADER_LISTS)
        if draw(st.booleans()):
            name = draw(st.sampled_from(["Content-Length", "content-length", "CONTENT-LENGTH"]))
            headers.insert(draw(st.integers(0, len(headers))), (name, str(len(payload))))
        parts.append((headers, payload))
    return parts


def expected(parts: Sequence[tuple[Headers, bytes]]) -> Parsed:
    return [
        ({name.lower(): value.strip() for name, value in headers}, payload)
        for headers, payload in parts
    ]


CUTS = st.lists(st.integers(1, 97), min_size=1, max_size=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=parts_with_headers(),
    framing=st.sampled_from(FRAMINGS),
    cuts=CUTS,
    chunk_sizes=st.lists(st.integers(1, 300), min_size=1, max_size=8),
    extension=st.booleans(),
    trailers=st.lists(st.sampled_from([b"X-Checksum: 1", b"Expires: 0"]), max_size=2),
    upper=st.booleans(),
    preamble=st.sampled_from([b"", b"this is a preamble\r\n", b"--not-the-boundary\r\n"]),
    padding=st.sampled_from([b"", b" ", b" \t "]),
    epilogue=st.sampled_from([b"", b"epilogue\r\n"]),
)
def test_any_framing_and_split_give_the_payloads_and_headers(
    parts: list[tuple[Headers, bytes]],
    framing: Framing,
    cuts: list[int],
    chunk_sizes: list[int],
    extension: bool,
    trailers: list[bytes],
    upper: bool,
    preamble: bytes,
    padding: bytes,
    epilogue: bytes,
) -> None:
    body = multipart_body(parts, preamble=preamble, padding=padding, epilogue=epilogue)
    if framing == "chunked":
        stream = chunked(body, chunk_sizes, extension=extension, trailers=trailers, upper=upper)
    else:
        stream = body
    length = len(body) if framing == "length" else None
    want = expected(parts)
    assert reference(body, cuts) == want
    for name, drive in DRIVERS.items():
        scanner = PartScanner(BOUNDARY, framing, length)
        got = drive(scanner, stream, cuts)
        assert got == want, name
        assert scanner.finished, name
        assert scanner.body_done, name
        assert scanner.next_part() is None, name


@settings(max_examples=60, deadline=None)
@given(framing=st.sampled_from(FRAMINGS), cuts=CUTS, seed=st.integers(0, 2**32))
def test_parts_already_in_the_buffer_come_out_one_by_one(
    framing: Framing, cuts: list[int], seed: int
) -> None:
    """Parts already complete in the buffer are handed out one after the other."""
    rng = random.Random(seed)
    parts = [
        ([("Content-Type", "application/dicom")], rng.randbytes(rng.randrange(200)))
        for _ in range(4)
    ]
    stream, length = framed(multipart_body(parts), framing, cuts)
    scanner = PartScanner(BOUNDARY, framing, length)
    for index in range(0, len(stream), cuts[0]):
        scanner.feed(stream[index : index + cuts[0]])
    got: Parsed = []
    drain(scanner, got)
    assert got == expected(parts)
    assert scanner.finished


# -- a wrong Content-Length --------------------------------------------------------------------

PAYLOAD_SET = [b"first payload", b"", b"third\r\n--not it\r\n", b"x" * 300]


def wrong_lengths(size: int) -> list[str]:
    return ["0", "1", str(max(size - 1, 0)), str(size + 1), str(size + 2), str(size + 5000),
            "abc", "-3", "", "1e3", "12x", "0x10", "\u00b2", f" {size + 1} "]  # fmt: skip


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("target", range(len(PAYLOAD_SET)))
@pytest.mark.parametrize("cut", [1, 7, 1 << 30])
def test_a_wrong_content_length_gives_the_same_parts_as_none(
    framing: Framing, target: int, cut: int
) -> None:
    without = [([("Content-Type", "application/dicom")], payload) for payload in PAYLOAD_SET]
    plain = scan_all(multipart_body(without), framing, [cut])
    assert [body for _, body in plain] == PAYLOAD_SET
    for declared in wrong_lengths(len(PAYLOAD_SET[target])):
        parts = [(list(headers), payload) for headers, payload in without]
        parts[target][0].append(("Content-Length", declared))
        body = multipart_body(parts)
        got = scan_all(body, framing, [cut])
        assert [payload for _, payload in got] == PAYLOAD_SET, declared
        assert got[target][0]["content-length"] == declared.strip()
        assert got == reference(body, [cut]), declared


def test_a_correct_content_length_matching_the_delimiter_is_used() -> None:
    parts = [([("Content-Length", str(len(p)))], p) for p in PAYLOAD_SET]
    for framing in FRAMINGS:
        assert scan_all(multipart_body(parts), framing, [5]) == expected(parts)


# -- errors ------------------------------------------------------------------------------------

TWO_PARTS = multipart_body([([("Content-Type", "a/b")], b"one"), ([], b"two")])
UNCLOSED = TWO_PARTS[: TWO_PARTS.index(b"\r\n" + DELIMITER + b"--")]


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("cut", [1, 1 << 30])
@pytest.mark.parametrize(
    ("end", "complete"),
    [
        (len(UNCLOSED), [b"one"]),  # "two" and nothing after
        (len(UNCLOSED) + 3, [b"one"]),  # "two" and part of a delimiter
        (len(UNCLOSED) + 2 + len(DELIMITER), [b"one", b"two"]),  # a delimiter, not "--" after
        (len(UNCLOSED) + 3 + len(DELIMITER), [b"one", b"two"]),  # a delimiter and one "-"
    ],
)
def test_a_body_that_ends_before_its_closing_delimiter(
    framing: Framing, cut: int, end: int, complete: list[bytes]
) -> None:
    """The error comes from `next_part` once the body ended (length reached, last chunk, or
    the server closed), after the parts that were complete."""
    stream, length = framed(TWO_PARTS[:end], framing, [5])
    scanner = PartScanner(BOUNDARY, framing, length)
    parts: Parsed = []
    with pytest.raises(MultipartError, match="closing delimiter"):
        for index in range(0, len(stream), cut):
            scanner.feed(stream[index : index + cut])
            drain(scanner, parts)
        assert not scanner.body_done or framing != "close"
        scanner.eof()
        drain(scanner, parts)
    assert [body for _, body in parts] == complete
    assert scanner.body_done
    assert not scanner.finished


def test_an_empty_body() -> None:
    for framing in ("chunked", "close"):
        stream, length = framed(b"", framing)
        scanner = PartScanner(BOUNDARY, framing, length)
        scanner.feed(stream)
        scanner.eof()
        with pytest.raises(MultipartError):
            scanner.next_part()


def test_more_bytes_than_the_content_length() -> None:
    scanner = PartScanner(BOUNDARY, "length", len(TWO_PARTS))
    scanner.feed(TWO_PARTS)
    assert scanner.body_done
    with pytest.raises(FetchError, match="Content-Length"):
        scanner.feed(b"x")
    scanner = PartScanner(BOUNDARY, "length", len(TWO_PARTS) - 1)
    with pytest.raises(FetchError, match="Content-Length"):
        scanner.feed(TWO_PARTS)
    scanner = PartScanner(BOUNDARY, "length", 10)
    scanner.make_room()
    scanner.writable()[:11] = b"x" * 11
    with pytest.raises(FetchError, match="Content-Length"):
        scanner.received(11)


def test_a_length_framing_needs_the_length() -> None:
    with pytest.raises(ValueError, match="length"):
        PartScanner(BOUNDARY, "length")


@pytest.mark.parametrize(
    "stream",
    [
        b"zz\r\nabc\r\n0\r\n\r\n",  # not hexadecimal
        b"-3\r\nabc\r\n0\r\n\r\n",  # negative
        b"\r\nabc\r\n0\r\n\r\n",  # empty size line
        b";x=y\r\nabc\r\n0\r\n\r\n",  # extension without a size
        b"1" * 17 + b"\r\nabc",  # more hex digits than any real size
        b"3" + b" " * (4096 + 10),  # a size line that never ends
        b"3\r\nabcXY\r\n0\r\n\r\n",  # no CRLF after the chunk data
        b"3\r\nabc\n0\r\n\r\n",  # a bare LF after the chunk data
        b"3\r\nabc\r\n0\r\n\r\nextra",  # bytes after the last chunk
        b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n\r\n",  # bytes after the trailers
    ],
)
@pytest.mark.parametrize("cut", [1, 2, 1 << 30])
def test_malformed_chunked_framing(stream: bytes, cut: int) -> None:
    scanner = PartScanner(BOUNDARY, "chunked")
    with pytest.raises(FetchError, match="chunked"):  # whichever piece completes the fault
        for index in range(0, len(stream), cut):
            scanner.feed(stream[index : index + cut])


def test_bytes_arriving_after_the_last_chunk_later() -> None:
    scanner = PartScanner(BOUNDARY, "chunked")
    scanner.feed(chunked(TWO_PARTS, [10]))
    assert scanner.body_done
    with pytest.raises(FetchError, match="after the end"):
        scanner.feed(b"0")


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("missing", [1, 2, 5, 20])
def test_eof_before_the_end_of_a_framed_body(framing: Framing, missing: int) -> None:
    stream, length = framed(TWO_PARTS, framing, [8])
    scanner = PartScanner(BOUNDARY, framing, length)
    scanner.feed(stream[:-missing])
    assert not scanner.body_done
    with pytest.raises(FetchError, match="closed before the end"):
        scanner.eof()


def test_eof_ends_a_close_framed_body() -> None:
    scanner = PartScanner(BOUNDARY, "close")
    scanner.feed(TWO_PARTS)
    assert not scanner.body_done
    scanner.eof()
    assert scanner.body_done


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("cut", [1, 1 << 30])
@pytest.mark.parametrize(
    "body",
    [
        # the first part's headers run into the next delimiter
        DELIMITER + b"\r\nA: 1\r\n" + DELIMITER + b"\r\nB: 2\r\n\r\ntwo" + closing(BOUNDARY),
        # a second part's headers run into the closing delimiter
        multipart_body([([], b"one")])[: -len(closing(BOUNDARY))] + b"\r\n" + DELIMITER
        + b"\r\nB: 2" + closing(BOUNDARY),
        # a header line without a colon
        DELIMITER + b"\r\nnot a header\r\n\r\nbody" + closing(BOUNDARY),
    ],
)  # fmt: skip
def test_malformed_part_headers(framing: Framing, cut: int, body: bytes) -> None:
    with pytest.raises(MultipartError):
        reference(body, [cut])
    with pytest.raises(MultipartError):
        scan_all(body, framing, [cut])


@pytest.mark.parametrize("framing", FRAMINGS)
def test_headers_not_terminated_before_the_next_delimiter_fail_without_waiting(
    framing: Framing,
) -> None:
    """The next part's header end is in: the error comes before the body ends."""
    body = DELIMITER + b"\r\nA: 1\r\n" + DELIMITER + b"\r\nB: 2\r\n\r\ntwo\r\n" + DELIMITER
    stream, length = framed(body + b"--\r\n", framing)
    scanner = PartScanner(BOUNDARY, framing, length)
    scanner.feed(stream[: stream.index(b"two")])
    assert not scanner.body_done
    with pytest.raises(MultipartError, match="not terminated"):
        scanner.next_part()


@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_part_larger_than_max_part_with_a_content_length(framing: Framing) -> None:
    body = multipart_body([([("Content-Length", "1001")], b"x" * 1001)])
    stream, length = framed(body, framing)
    scanner = PartScanner(BOUNDARY, framing, length, max_part=1000)
    scanner.feed(stream[:200])  # the headers are in, the body is not yet
    with pytest.raises(MultipartError, match="larger than 1000"):
        scanner.next_part()
    ok = multipart_body([([("Content-Length", "1000")], b"x" * 1000)])
    assert scan_all(ok, framing, [50], max_part=1000) == [({"content-length": "1000"}, b"x" * 1000)]


@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_part_larger_than_max_part_without_a_content_length(framing: Framing) -> None:
    body = multipart_body([([], b"small"), ([("Content-Type", "a/b")], b"x" * 5000)])
    with pytest.raises(MultipartError, match="larger than 1000"):
        scan_all(body, framing, [100], max_part=1000)
    ok = multipart_body([([], b"small"), ([("Content-Type", "a/b")], b"x" * 900)])
    assert [len(b) for _, b in scan_all(ok, framing, [100], max_part=1000)] == [5, 900]


@pytest.mark.parametrize("framing", FRAMINGS)
def test_no_delimiter_within_the_first_16_kib(framing: Framing) -> None:
    stream, length = framed(b"x" * 20000 + multipart_body([([], b"p")]), framing, [1000])
    scanner = PartScanner(BOUNDARY, framing, length)
    scanner.feed(stream[:18000])
    with pytest.raises(MultipartError, match="no multipart delimiter"):
        scanner.next_part()


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize(("extra", "fails"), [(0, False), (1, True)])
def test_the_16_kib_limit_before_the_first_delimiter_is_exact(
    framing: Framing, extra: int, fails: bool
) -> None:
    """Byte by byte: the body holds 16 KiB + `extra` bytes just before the delimiter is whole."""
    preamble = b"x" * (MAX_HEADER_BYTES - len(DELIMITER) - 1 + extra)
    body = multipart_body([([], b"p")], preamble=preamble)  # preamble, CRLF, delimiter, ...
    assert body.index(DELIMITER) + len(DELIMITER) - 1 == MAX_HEADER_BYTES + extra
    if fails:
        with pytest.raises(MultipartError, match="no multipart delimiter"):
            scan_all(body, framing, [1])
    else:
        assert scan_all(body, framing, [1]) == [({}, b"p")]


# -- the buffer --------------------------------------------------------------------------------


def buffer_size(scanner: PartScanner) -> int:
    """The size of the buffer the socket writes into."""
    return memoryview(scanner.writable().obj).nbytes


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("driver", sorted(DRIVERS))
@pytest.mark.parametrize("with_length", [False, True])
def test_the_buffer_grows_for_a_part_larger_than_it(
    framing: Framing, driver: str, with_length: bool
) -> None:
    rng = random.Random(1)
    large = rng.randbytes(5 * SMALLEST_BUFFER + 17)
    payloads = [b"before", large, b"after"]
    parts = [([("Content-Length", str(len(p)))] if with_length else [], p) for p in payloads]
    stream, length = framed(multipart_body(parts), framing, [3001, 65536, 7])
    scanner = PartScanner(BOUNDARY, framing, length, initial_size=1)
    assert buffer_size(scanner) == SMALLEST_BUFFER
    got = DRIVERS[driver](scanner, stream, [9999, 40000, 123])
    assert [body for _, body in got] == payloads
    assert buffer_size(scanner) > len(large)
    assert scanner.finished


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_compaction_keeps_unread_data_intact(framing: Framing, driver: str) -> None:
    """Many parts through the smallest buffer: complete parts not yet taken and a half-decoded
    chunk are moved to the front, again and again, and come out unchanged."""
    rng = random.Random(2)
    parts: list[tuple[Headers, bytes]] = []
    for index in range(300):
        payload = rng.randbytes(rng.choice([0, 1, 50, 700, 3000, 9000]))
        headers: Headers = [("Content-Type", "application/dicom"), ("X-Index", str(index))]
        if index % 3:
            headers.append(("Content-Length", str(len(payload)) if index % 7 else "77"))
        parts.append((headers, payload))
    body = multipart_body(parts)
    assert len(body) > 4 * SMALLEST_BUFFER
    stream, length = framed(body, framing, [1, 4099, 30000, 17])
    scanner = PartScanner(BOUNDARY, framing, length, initial_size=1)
    assert DRIVERS[driver](scanner, stream, [5003, 1, 60000, 777]) == expected(parts)
    assert buffer_size(scanner) == SMALLEST_BUFFER  # moved, never grown


def test_unread_parts_survive_compaction_when_taken_late() -> None:
    """Feed several parts' worth before taking any: what `make_room` moves is still right."""
    rng = random.Random(3)
    payloads = [rng.randbytes(20000) for _ in range(40)]
    parts = [([("X-N", str(n))], p) for n, p in enumerate(payloads)]
    stream = chunked(multipart_body(parts), [777])
    scanner = PartScanner(BOUNDARY, "chunked", initial_size=1)
    got: Parsed = []
    for index in range(0, len(stream), 50000):
        scanner.feed(stream[index : index + 50000])
        part = scanner.next_part()  # one part per piece: a backlog builds up
        if part is not None:
            got.append((dict(part.headers), bytes(part.body)))
    drain(scanner, got)
    assert got == expected(parts)
    assert scanner.finished and scanner.body_done


# -- the response head -------------------------------------------------------------------------


def crlf_head(data: bytes) -> bytes:
    text = data.replace(b"\r\n", b"\n").rstrip(b"\n").replace(b"\n", b"\r\n")
    return text + b"\r\n\r\n"


def test_the_ans_wado_rs_response_head() -> None:
    head = parse_response_head(crlf_head(ans_file("validators/wado-rs-response.txt").read_bytes()))
    assert head.status == 200
    assert head.framing == "chunked"
    assert head.length is None
    assert boundary_of(head.headers["content-type"]) == "7544a517-4f5a-4007-9762-690998213829"
    assert head.headers["transfer-encoding"] == "chunked"
    assert head.headers["etag"] == '"1330673892"'


def test_response_head_framings() -> None:
    head = parse_response_head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
    )
    assert (head.status, head.framing, head.length) == (200, "length", 1234)
    assert head.headers["x-a"] == "1, 2"
    head = parse_response_head(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\n")
    assert (head.status, head.framing, head.length) == (404, "close", None)
    head = parse_response_head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")
    assert (head.status, head.framing) == (200, "close")
    head = parse_response_head(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
    )
    assert head.framing == "chunked"


@pytest.mark.parametrize(
    "data",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n",  # incomplete
        b"",
    ],
)
def test_a_malformed_response_head(data: bytes) -> None:
    with pytest.raises(FetchError):
        parse_response_head(data)


# -- the request -------------------------------------------------------------------------------


def sent(data: bytes) -> h11.Request:
    server = h11.Connection(h11.SERVER)
    server.receive_data(data)
    event = server.next_event()
    assert isinstance(event, h11.Request)
    return event


def test_get_request_with_a_port_and_a_query() -> None:
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    request = get_request(
        "http://pacs.local:8042/dicom-web/studies/1.2/series/3.4?includefield=all&x=1",
        {"Accept": accept},
    )
    assert (request.host, request.port, request.secure) == ("pacs.local", 8042, False)
    assert request.authority == "pacs.local:8042"
    assert request.data.startswith(
        b"GET /dicom-web/studies/1.2/series/3.4?includefield=all&x=1 HTTP/1.1\r\n"
    )
    assert request.data.endswith(b"\r\n\r\n")
    event = sent(request.data)
    assert event.method == b"GET"
    assert event.target == b"/dicom-web/studies/1.2/series/3.4?includefield=all&x=1"
    headers = {name: value for name, value in event.headers}
    assert headers[b"host"] == b"pacs.local:8042"
    assert headers[b"connection"] == b"close"
    assert headers[b"accept"] == accept.encode()


def test_get_request_default_ports() -> None:
    plain = get_request("http://pacs.local/wado", {})
    assert (plain.host, plain.port, plain.secure, plain.authority) == (
        "pacs.local",
        80,
        False,
        "pacs.local",
    )
    secure = get_request("https://user:secret@peer.example/", {})
    assert (secure.port, secure.secure, secure.authority) == (443, True, "peer.example")
    assert b"secret" not in secure.data
    assert sent(secure.data).target == b"/"
    assert sent(get_request("https://peer.example", {}).data).target == b"/"
    ipv6 = get_request("http://[::1]:8080/x", {})
    assert (ipv6.host, ipv6.port, ipv6.authority) == ("::1", 8080, "[::1]:8080")


@pytest.mark.parametrize(
    "url", ["ftp://pacs/x", "file:///etc/passwd", "http:///nohost", "pacs/x", ""]
)
def test_get_request_refuses_non_http_urls(url: str) -> None:
    with pytest.raises(FetchError, match="not an http"):
        get_request(url, {})


@pytest.mark.parametrize(
    "headers",
    [{"Accept": "a\r\nX-Injected: 1"}, {"Accept": "a\nb"}, {"Accept": "a\rb"}, {"X\r\nY": "v"},
     {"Accept": "a\0b"}],
)  # fmt: skip
def test_get_request_refuses_header_values_with_line_breaks(headers: dict[str, str]) -> None:
    with pytest.raises(FetchError, match="invalid request header"):
        get_request("http://pacs/x", headers)


# -- the writer's framing ------------------------------------------------------------------------


def test_a_body_built_with_the_writer_helpers() -> None:
    body = (
        part_header(BOUNDARY, "application/dicom", 4) + b"DICM"
        + b"\r\n" + part_header(BOUNDARY, "application/dicom") + b"\r\n--\r\n"
        + closing(BOUNDARY)
    )  # fmt: skip
    for framing in FRAMINGS:
        got = scan_all(body, framing, [3])
        assert [b for _, b in got] == [b"DICM", b"\r\n--\r\n"]
        assert got[0][0] == {"content-type": "application/dicom", "content-length": "4"}
