"""Request body limits: an oversized body is refused (413) while it is read, never buffered.

`BodyLimit` answers 413 on the headers when `Content-Length` announces too much, and cuts a body
sent without a length (chunked) as soon as it passes the limit. Below the limit the body is read
in full before the route runs (the node's routes take small forms, none takes uploads), so no
route can be reached with more than its limit in memory. Limits are per path prefix, the longest
matching prefix winning.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """ASGI middleware: bodies over `max_bytes` (or the limit of the longest matching prefix
    of `path_limits`) get a French 413 and the connection is closed."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, path_limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = sorted((path_limits or {}).items(), key=lambda kv: -len(kv[0]))

    def limit_of(self, path: str) -> int:
        for prefix, limit in self.path_limits:
            if path.startswith(prefix):
                return limit
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_of(scope["path"])
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.strip().isdigit() and int(length) > limit:
            await _too_large(send, limit)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                chunks = []  # the client left: the route sees the disconnect
                replay: list[Message] = [message]
                break
            size += len(message.get("body", b""))
            if size > limit:
                await _too_large(send, limit)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
                break

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


async def _too_large(send: Send, limit: int) -> None:
    body = f"Requête trop volumineuse : {limit} octets au plus.\n".encode()
    await send_whole(send, 413, "text/plain; charset=utf-8", body, close=True)


async def send_whole(
    send: Send, status: int, content_type: str, body: bytes, *, close: bool = False
) -> None:
    """Send a whole small response from ASGI middleware (before any route ran)."""
    headers = [
        (b"content-type", content_type.encode("ascii")),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
