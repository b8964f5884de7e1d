"""Refuses request paths that hide a separator or a dot segment (`%2F`, `%5C`, `..`).

Starlette decodes `%2F` to `/` before routing, so `/studies/..%2F..%2Fetc/series/1` would
otherwise fall through to a 404 (or, worse, to a route that joins it into a file path). The
guard answers such paths 400 before any route or authentication sees them, whatever the route.
"""

from __future__ import annotations

import json
import re
from urllib.parse import unquote

from starlette.types import ASGIApp, Receive, Scope, Send

from drimbox.http.limits import send_whole

_ENCODED_SEPARATOR = re.compile(rb"%(2f|5c|00)", re.IGNORECASE)


def hides_traversal(raw_path: bytes) -> bool:
    """True when the path encodes a separator or NUL, or has a `.`/`..` segment once decoded."""
    if _ENCODED_SEPARATOR.search(raw_path):
        return True
    segments = unquote(raw_path.decode("latin-1")).replace("\\", "/").split("/")
    return any(segment in (".", "..") for segment in segments)


class PathGuard:
    """ASGI middleware: 400 with a French JSON body for paths under `prefix` that hide a
    traversal."""

    def __init__(self, app: ASGIApp, *, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
            if hides_traversal(raw_path):
                body = json.dumps(
                    {"status": 400, "erreur": "chemin invalide : UID DICOM attendu"}
                ).encode("utf-8")
                await send_whole(send, 400, "application/json", body)
                return
        await self.app(scope, receive, send)
