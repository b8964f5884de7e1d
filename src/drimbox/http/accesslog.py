"""One line per HTTP request in the service log (logger `drimbox.access`, INFO): origin,
method, path, status, bytes sent, duration, and who asked.

What the line may say: the path without its query string (QIDO keys such as PatientName, the
PSC callback's code and state, the IID link's parameters stay out; a `?` marks that there was
one) and with capability segments replaced by a short hash (`/consultation/<launch id>`: the
launch URL is the key to a patient's history). Study, series and instance UIDs stay: they are
identifiers, not identities (`drimbox.logs`). Who: the user's PSC SubjectNameID (RPPS) or the
peer token's subject, as the request's handler noted it (`note_user`) or from the session
cookie (`user_of`, cached a minute); for a peer, the subject of its client certificate, else its
address. Bytes include those written through the raw-body extension (`drimbox.http.rawbody`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from drimbox.http.rawbody import RAW_BODY
from drimbox.logs import ref

log = logging.getLogger("drimbox.access")

NOTE = "drimbox.access"  # scope key: a dict the handlers fill ("user")
_CAPABILITY = re.compile(r"^(/consultation/)([^/]+)")
_USER_CACHE_S = 60.0
_USER_CACHE_SIZE = 1024

Done = Callable[[int, int, float], None]


async def measured(app: ASGIApp, scope: Scope, receive: Receive, send: Send, done: Done) -> None:
    """Run `app`, then call `done(status, bytes sent, seconds)` (also when it fails)."""
    started = time.perf_counter()
    status, sent = 500, 0

    async def counting(message: Message) -> None:
        nonlocal status, sent
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            sent += len(message.get("body", b""))
        await send(message)

    try:
        await app(scope, receive, counting)
    finally:
        offer = (scope.get("extensions") or {}).get(RAW_BODY) or {}
        done(status, sent + offer.get("written", 0), time.perf_counter() - started)


def note_user(scope: Scope, user: str) -> None:
    """Name who a request is for in its access log line (the handler knows best)."""
    note = scope.get(NOTE)
    if note is not None and user:
        note["user"] = user


def loggable_path(path: str, query: bytes | str = b"") -> str:
    """The path as the log shows it (see the module docstring)."""
    path = _CAPABILITY.sub(lambda m: m.group(1) + ref(m.group(2)), path)
    return path[:512] + ("?…" if query else "")


class AccessLog:
    """The middleware. `origin`: "peer" or "viewer" (which of the node's origins);
    `user_of(cookie value)`: the signed-in user of a session cookie ("" if none), blocking."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        origin: str,
        cookie: str = "",
        user_of: Callable[[str], str] | None = None,
        peer_of: Callable[[Scope], str] | None = None,
    ) -> None:
        self.app = app
        self.origin = origin
        self.cookie = cookie
        self.user_of = user_of
        self.peer_of = peer_of
        self._users: dict[str, tuple[float, str]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        note: dict[str, str] = {}
        scope[NOTE] = note
        user = await self._session_user(scope)

        def done(status: int, sent: int, seconds: float) -> None:
            who = note.get("user") or user
            peer = self._peer(scope)
            log.info(
                "%s %s %s %s %d B %.1f ms %s",
                self.origin,
                scope["method"],
                loggable_path(scope["path"], scope.get("query_string", b"")),
                status,
                sent,
                seconds * 1000,
                who or peer or "-",
                extra={"subject": who or "-", "peer": peer or "-", "bytes": sent},
            )

        await measured(self.app, scope, receive, send, done)

    def _peer(self, scope: Scope) -> str:
        if self.peer_of is not None:
            try:
                named = self.peer_of(scope)
            except ValueError:
                named = ""
            if named:
                return named
        client = scope.get("client")
        return str(client[0]) if client else ""

    async def _session_user(self, scope: Scope) -> str:
        if self.user_of is None or not self.cookie:
            return ""
        value = _cookie(scope, self.cookie)
        if not value:
            return ""
        key = ref(value)
        now = time.monotonic()
        cached = self._users.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        user = await asyncio.to_thread(self.user_of, value)
        if len(self._users) >= _USER_CACHE_SIZE:
            self._users.clear()
        self._users[key] = (now + _USER_CACHE_S, user)
        return user


def _cookie(scope: Scope, name: str) -> str:
    for header, value in scope.get("headers") or ():
        if header == b"cookie":
            return cookie_parser(value.decode("latin-1")).get(name, "")
    return ""


__all__ = ["NOTE", "AccessLog", "loggable_path", "measured", "note_user"]
