"""The raw-body extension: the same bytes on the wire as plain ASGI messages, chunked for
HTTP/1.1, close-delimited for HTTP/1.0, through any server (fallback), and a client leaving
mid-stream ends the body generator without harming the next request."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from starlette.testclient import TestClient

from drimbox.http.rawbody import BodyChunk, Framable, RawStreamingResponse
from support.source import serving

BIG = bytes(range(256)) * 8192  # 2 MiB


def framable(data: bytes) -> Framable:
    chunk = Framable.allocate(len(data))
    chunk.body[:] = data
    return chunk


def expected() -> bytes:
    return b"head;" + BIG + b"view;" + "fin é".encode()


def make_app(closed: threading.Event | None = None) -> FastAPI:
    app = FastAPI()

    @app.get("/stream")
    async def stream() -> RawStreamingResponse:
        async def body() -> AsyncIterator[BodyChunk]:
            yield b"head;"
            yield framable(BIG)
            yield memoryview(b"view;")
            yield framable(b"")  # empty chunks are skipped, never a premature end
            yield "fin é".encode()

        return RawStreamingResponse(body(), media_type="application/octet-stream")

    @app.get("/endless")
    async def endless() -> RawStreamingResponse:
        async def body() -> AsyncIterator[BodyChunk]:
            try:
                while True:
                    yield framable(BIG)
            finally:
                if closed is not None:
                    closed.set()

        return RawStreamingResponse(body(), media_type="application/octet-stream")

    return app


def test_http11_chunked_through_the_node_server() -> None:
    with serving(make_app()) as base:
        response = httpx.get(f"{base}/stream")
    assert response.status_code == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.content == expected()


def test_http10_close_delimited() -> None:
    with serving(make_app()) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /stream HTTP/1.0\r\nHost: x\r\n\r\n")
            received = b""
            while data := sock.recv(65536):
                received += data
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert body == expected()


def test_fallback_without_the_extension() -> None:
    with TestClient(make_app()) as client:
        response = client.get("/stream")
    assert response.status_code == 200
    assert response.content == expected()


def test_a_client_leaving_ends_the_generator() -> None:
    closed = threading.Event()
    with serving(make_app(closed)) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
            assert len(sock.recv(65536)) > 0
        deadline = time.monotonic() + 10
        while not closed.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert closed.is_set()
        assert httpx.get(f"{base}/stream").content == expected()
