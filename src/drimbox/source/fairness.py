"""A fair share of the Source's WADO-RS between the Consos that read it.

A Source box on a small machine serves many Consos; one Conso prefetching a long history must
not take every worker. `PeerLimiter`, an ASGI middleware of the peer application, keeps (in
`PeerShares`, `app.state.peer_shares`) at most `per_peer` requests in flight for each peer (its
client certificate's DN, else its address) and `total` for all of them (`[source]
peer_max_requests`, `max_requests`); one more is answered `503 Service Unavailable` with
`Retry-After` at once, before any work (no token check, no PACS), and the Conso's retrieval
waits and asks again (`drimbox.conso.retrieval`). A request holds its slot until its answer is
fully sent (a streamed series included).

Runs in the node's event loop: the counters need no lock. It must not know who may read what
(`drimbox.source.wado` does).
"""

from __future__ import annotations

import json
import logging
from collections import Counter

from starlette.types import ASGIApp, Receive, Scope, Send

from drimbox.trust.tls import peer_certificate_from_scope

log = logging.getLogger(__name__)


def peer_key(scope: Scope) -> str:
    """Who is asking: the DN of the client certificate (mutual TLS), else the address."""
    try:
        certificate = peer_certificate_from_scope(scope)
    except ValueError:
        certificate = None
    if certificate is not None:
        return certificate.subject.rfc4514_string()
    client = scope.get("client")
    return str(client[0]) if client else ""


class PeerShares:
    """The in-flight counts: at most `per_peer` requests per peer and `total` in all; beyond,
    503 with `Retry-After: retry_after_s`. `busiest` (per peer), `peak` (in all) and `refused`
    (503s per peer) are for /metrics, logs and tests."""

    def __init__(self, *, per_peer: int, total: int, retry_after_s: int) -> None:
        if per_peer < 1 or total < 1:
            raise ValueError("per_peer and total must be at least 1")
        self.per_peer = per_peer
        self.total = total
        self.retry_after_s = retry_after_s
        self.in_flight: Counter[str] = Counter()
        self.busiest: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.peak = 0

    @property
    def running(self) -> int:
        return sum(self.in_flight.values())

    def acquire(self, peer: str) -> bool:
        if self.in_flight[peer] >= self.per_peer or self.running >= self.total:
            self.refused[peer] += 1
            log.info(
                "WADO-RS busy for %s (%d of %d for this peer, %d of %d in all): 503",
                peer,
                self.in_flight[peer],
                self.per_peer,
                self.running,
                self.total,
                extra={"peer": peer},
            )
            return False
        self.in_flight[peer] += 1
        self.busiest[peer] = max(self.busiest[peer], self.in_flight[peer])
        self.peak = max(self.peak, self.running)
        return True

    def release(self, peer: str) -> None:
        self.in_flight[peer] -= 1
        if self.in_flight[peer] <= 0:
            del self.in_flight[peer]


class PeerLimiter:
    """The ASGI middleware applying `shares` to the requests under `prefix`."""

    def __init__(self, app: ASGIApp, *, prefix: str, shares: PeerShares) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/") + "/"
        self.shares = shares

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        peer = peer_key(scope)
        if not self.shares.acquire(peer):
            await self._busy(send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.shares.release(peer)

    async def _busy(self, send: Send) -> None:
        retry_after = self.shares.retry_after_s
        body = json.dumps(
            {
                "status": 503,
                "erreur": "DRIMbox source saturée (trop de demandes en cours) : réessayez dans "
                f"{retry_after} s",
            },
            ensure_ascii=False,
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(retry_after).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
