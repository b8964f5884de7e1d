"""The embedded HTTP server: port 0 gives a free port, requests are served, stop is clean."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from drimbox.http.server import HttpServer
from support.source import LoopThread


def test_port_zero_serve_and_stop() -> None:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"réponse": "pong"}

    loop = LoopThread()
    server = HttpServer(app, "127.0.0.1", 0)
    try:
        loop.run(server.start())
        assert server.port > 0
        assert httpx.get(f"{server.url}/ping").json() == {"réponse": "pong"}
        loop.run(server.stop())
        try:
            httpx.get(f"{server.url}/ping", timeout=1)
            raise AssertionError("still serving after stop()")
        except httpx.TransportError:
            pass
    finally:
        loop.close()
