"""The Source's fair share (`drimbox.source.fairness`) on a real HTTP server: a slot is held
until the streamed answer is fully sent, a peer without certificate is counted by its address,
paths outside the prefix are never limited, and the 503 says when to come back."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from drimbox.source.fairness import PeerLimiter, PeerShares
from support.source import serving


def streaming_app(shares: PeerShares, gate: threading.Event) -> FastAPI:
    app = FastAPI()

    @app.get("/dicom-web-rs/series")
    async def series() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"first part, "
            while not gate.is_set():  # the rest of the series is slow to come
                await asyncio.sleep(0.01)
            yield b"last part"

        return StreamingResponse(body(), media_type="application/octet-stream")

    @app.get("/status")
    async def status() -> dict[str, str]:
        return {"etat": "ok"}

    app.add_middleware(PeerLimiter, prefix="/dicom-web-rs", shares=shares)
    return app


def test_a_slot_is_held_until_the_streamed_answer_ends() -> None:
    shares = PeerShares(per_peer=1, total=5, retry_after_s=3)
    gate = threading.Event()
    with serving(streaming_app(shares, gate)) as base, ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.get, f"{base}/dicom-web-rs/series", timeout=30)
        deadline = time.monotonic() + 10
        while not shares.in_flight:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        busy = httpx.get(f"{base}/dicom-web-rs/series", timeout=30)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "3"
        assert busy.json() == {
            "status": 503,
            "erreur": "DRIMbox source saturée (trop de demandes en cours) : réessayez dans 3 s",
        }
        assert httpx.get(f"{base}/status", timeout=30).status_code == 200  # not limited
        assert dict(shares.in_flight) == {"127.0.0.1": 1}  # no certificate: the address
        gate.set()
        assert first.result().content == b"first part, last part"
        again = httpx.get(f"{base}/dicom-web-rs/series", timeout=30)
        assert again.status_code == 200
    assert shares.refused == {"127.0.0.1": 1} and shares.peak == 1


def test_the_global_limit_and_the_settings_are_checked() -> None:
    shares = PeerShares(per_peer=2, total=2, retry_after_s=1)
    assert shares.acquire("a") and shares.acquire("b")
    assert not shares.acquire("c")  # the total is reached, whoever asks
    shares.release("a")
    assert shares.acquire("c") and shares.running == 2
    with pytest.raises(ValueError):
        PeerShares(per_peer=0, total=2, retry_after_s=1)
