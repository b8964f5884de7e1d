"""The lean streaming GET against real peers: Orthanc's DICOMweb (body until close), a whole
Source node over mutual TLS (chunked), a Content-Length answer, and every way a server can fail
(refused, silent, cut short, error status, malformed head): only `FetchError` or
`MultipartError` come out, never a hang."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, Response
from pydicom import dcmread

from drimbox.config import load_config
from drimbox.dicom.pacs import PacsError
from drimbox.dicom.retrieve import WadoRsRetriever, dicomweb_tls
from drimbox.http.multipart import MultipartError, closing, new_boundary, part_header
from drimbox.http.multipart_client import (
    MIN_FREE,
    FetchError,
    MultipartResponse,
    PartScanner,
    _Receiver,
    open_multipart,
)
from drimbox.http.server import HttpServer
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.pki import TestPki
from drimbox.sim.ports import free_port
from drimbox.sim.studies import SeriesSpec, generate_study
from support.site import Site, official_headers, series_url, source_site
from support.source import LoopThread, serving

WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


async def collect(response: MultipartResponse) -> list[tuple[dict[str, str], bytes]]:
    return [(dict(p.headers), bytes(p.body)) async for p in response.parts()]


async def get_parts(
    url: str, headers: dict[str, str] | None = None, **kwargs: object
) -> tuple[int, str, list[tuple[dict[str, str], bytes]]]:
    async with open_multipart(url, headers or {}, **kwargs) as response:  # type: ignore[arg-type]
        return response.status, response.head.framing, await collect(response)


def test_orthanc_series_as_stored(pacs: LocalOrthanc, tmp_path: Path) -> None:
    study_uid = "1.2.826.0.1.3680043.8.498.77.9.1"
    files = generate_study(
        tmp_path,
        patient_id="P1",
        patient_name="A^B",
        birth_date="19700101",
        sex="F",
        study_uid=study_uid,
        accession="A1",
        series=[SeriesSpec("CT", "x", 5)],
        rows=64,
        columns=64,
    )
    pacs.store_files(files)
    uid = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    url = f"{pacs.dicomweb_url}/studies/{study_uid}/series/{uid}"
    status, framing, parts = asyncio.run(get_parts(url, {"Accept": WADO_ACCEPT}))
    assert status == 200 and framing in ("close", "chunked", "length")
    assert sorted(body for _, body in parts) == sorted(p.read_bytes() for p in files)
    assert all(h["content-type"].startswith("application/dicom") for h, _ in parts)


def test_source_node_over_mutual_tls(orthanc: LocalOrthanc, tmp_path: Path) -> None:
    with source_site(orthanc, tmp_path) as site:
        context = _peer_context(site)
        token = site.psc.mint_access_token("radiologue")
        for _ in range(8):  # TLS records split differently each time
            status, framing, parts = asyncio.run(
                get_parts(series_url(site), official_headers(site, token), ssl_context=context)
            )
            assert status == 200 and framing == "chunked"
            assert len(parts) == 4
            assert all(body[128:132] == b"DICM" for _, body in parts)
        # Without a client certificate the TLS handshake is refused: a FetchError, no hang.
        anonymous = ssl.create_default_context(cafile=str(site.ca_file))
        with pytest.raises(FetchError):
            asyncio.run(
                get_parts(series_url(site), official_headers(site, token), ssl_context=anonymous)
            )


def test_receive_buffers_take_several_records_in_one_read() -> None:
    """asyncio's TLS reader fills what `get_buffer` gives through slices of it, several records
    per call: every phase must hand out a view, or the later records are lost."""
    receiver = _Receiver()

    def read(data: bytes) -> None:
        buffer = receiver.get_buffer(-1)
        middle = len(data) // 2
        buffer[:middle] = data[:middle]
        buffer[middle:][: len(data) - middle] = data[middle:]  # as sslproto does
        receiver.buffer_updated(len(data))

    read(b"HTTP/1.1 200 OK\r\n")
    assert bytes(receiver.head) == b"HTTP/1.1 200 OK\r\n"
    scanner = PartScanner("b", "close", initial_size=MIN_FREE * 2)
    receiver.head = bytearray()
    receiver.scanner = scanner
    read(b"--b\r\n\r\nbody")
    filler = b"x" * scanner.free
    read(filler)
    assert scanner.free == 0
    read(b"overflow!")  # a read racing the pause goes aside, intact
    assert bytes(receiver.head) == b"overflow!"


def _peer_context(site: Site) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(site.ca_file))
    peer = site.trusted_peer
    assert peer.cert_path and peer.key_path
    context.load_cert_chain(str(peer.cert_path), str(peer.key_path))
    return context


def _app(boundary: str, payloads: list[bytes]) -> FastAPI:
    app = FastAPI()
    body = b"".join(
        (b"\r\n" if i else b"") + part_header(boundary, "application/dicom", len(p)) + p
        for i, p in enumerate(payloads)
    ) + closing(boundary)

    @app.get("/whole")
    @app.get("/dicom-web/studies/{study}/series/{series}")
    async def whole() -> Response:
        return Response(body, media_type=f"multipart/related; boundary={boundary}")

    @app.get("/missing")
    async def missing() -> Response:
        return PlainTextResponse("pas ici", status_code=404)

    return app


def test_content_length_answer_and_error_status() -> None:
    boundary = new_boundary()
    payloads = [b"one" * 1000, b"", b"three\r\n--" * 50]
    with serving(_app(boundary, payloads)) as base:
        status, framing, parts = asyncio.run(get_parts(f"{base}/whole"))
        assert (status, framing) == (200, "length")
        assert [body for _, body in parts] == payloads

        async def missing() -> tuple[int, str]:
            async with open_multipart(f"{base}/missing", {}) as response:
                return response.status, await response.text()

        assert asyncio.run(missing()) == (404, "pas ici")


@contextlib.contextmanager
def raw_server(script: bytes, *, then_close: bool = True, stall_s: float = 0.0) -> Iterator[int]:
    """A TCP server that answers every connection with `script`, then closes (or stalls)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection, contextlib.suppress(OSError):
                connection.recv(65536)
                connection.sendall(script)
                if not then_close:
                    stop.wait(stall_s)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: multipart/related; boundary=b\r\n"


@pytest.mark.parametrize(
    ("script", "error"),
    [
        (b"", FetchError),  # closed without answering
        (b"HTTP/1.1 200 OK\r\nbroken header line\r\n\r\n", FetchError),
        (b"NOT HTTP AT ALL\r\n\r\n", FetchError),
        (HEAD + b"\r\n--b\r\nContent-Type: x\r\n\r\nhalf a part", MultipartError),
        (HEAD + b"Content-Length: 500\r\n\r\n--b\r\n\r\ncut short", FetchError),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\n--b\r\n\r\nzz\r\n", FetchError),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\nnot-hex\r\n", FetchError),
        (HEAD + b"\r\nno delimiter here", MultipartError),
    ],
)
def test_broken_servers(script: bytes, error: type[Exception]) -> None:
    with raw_server(script) as port, pytest.raises(error):
        asyncio.run(get_parts(f"http://127.0.0.1:{port}/x", timeout_s=5))


def test_a_silent_server_times_out() -> None:
    for script in (HEAD + b"\r\n--b\r\n", b""):  # silent mid-body, silent before the head
        with (
            raw_server(script, then_close=False, stall_s=10) as port,
            pytest.raises(FetchError, match="no data"),
        ):
            asyncio.run(get_parts(f"http://127.0.0.1:{port}/x", timeout_s=0.5))


def test_unreachable_and_bad_urls() -> None:
    with pytest.raises(FetchError, match="cannot connect"):
        asyncio.run(get_parts(f"http://127.0.0.1:{free_port()}/x", timeout_s=2))
    with pytest.raises(FetchError, match="not an http"):
        asyncio.run(get_parts("ftp://example.test/x"))
    with pytest.raises(FetchError, match="invalid request header"):
        asyncio.run(get_parts("http://127.0.0.1:1/x", {"X-Evil": "a\r\nInjected: 1"}))


def test_a_slow_reader_pauses_the_socket_and_loses_nothing() -> None:
    """Parts much larger than the receive buffer, read slowly: the buffer grows, reading
    pauses and resumes, and every byte arrives."""
    boundary = new_boundary()
    payloads = [bytes([i]) * (3 * 1024 * 1024 + i) for i in range(4)]
    with serving(_app(boundary, payloads)) as base:

        async def slow() -> list[int]:
            sizes = []
            async with open_multipart(f"{base}/whole", {}) as response:
                async for part in response.parts():
                    assert bytes(part.body[:1]) * len(part.body) == bytes(part.body)
                    sizes.append(len(part.body))
                    await asyncio.sleep(0.05)
            return sizes

        assert asyncio.run(slow()) == [len(p) for p in payloads]


def test_an_https_pacs_trusted_through_its_own_authority(tmp_path: Path) -> None:
    """`[pacs] dicomweb_ca_file`: a PACS DICOMweb behind https with the hospital's own CA is
    read with that CA, refused without it (the system's authorities do not know it), and a
    missing file is a clear configuration error."""
    pki = TestPki("AC HOPITAL TEST")
    ca = pki.ca.write(tmp_path, "ca")
    server = pki.issue("localhost", usage="server", dns_names=("localhost",)).write(tmp_path, "srv")
    assert ca.cert_path and server.cert_path and server.key_path
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(server.cert_path), str(server.key_path))
    boundary = new_boundary()
    payloads = [b"DICM-one", b"DICM-two"]
    app = _app(boundary, payloads)
    loop = LoopThread()
    http = HttpServer(app, "127.0.0.1", 0, ssl=context)
    loop.run(http.start())
    try:
        base = f"https://localhost:{http.port}/dicom-web"

        def retrieve(ca_file: str) -> list[bytes]:
            config = load_config(
                environ={
                    "DRIMBOX_PACS__RETRIEVE": "wado-rs",
                    "DRIMBOX_PACS__DICOMWEB_URL": base,
                    "DRIMBOX_PACS__DICOMWEB_CA_FILE": ca_file,
                }
            )
            retriever = WadoRsRetriever(base, timeout_s=5, ssl_context=dicomweb_tls(config))
            received: list[bytes] = []
            retriever.retrieve_series("1.2", "1.2.3", lambda d: received.append(bytes(d)), ())
            return received

        assert retrieve(str(ca.cert_path)) == payloads
        with pytest.raises(PacsError, match="injoignable"):
            retrieve("")
        with pytest.raises(ValueError, match="dicomweb_ca_file : fichier introuvable"):
            retrieve(str(tmp_path / "absent.pem"))
    finally:
        loop.run(http.stop())
        loop.close()
