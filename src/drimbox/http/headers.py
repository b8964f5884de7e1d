"""Security headers on every answer of an origin: Content-Security-Policy (with frame-ancestors),
X-Frame-Options, X-Content-Type-Options, Referrer-Policy, and HSTS when the origin is HTTPS.

The user origin's policy is the one OHIF works with (checked by the Chromium viewer test): its
own scripts plus the inline scripts of its `index.html` by hash, WebAssembly codecs
(`wasm-unsafe-eval`), workers from `blob:`, inline styles (OHIF sets style attributes), images
from `data:`/`blob:`, requests to its own origin only. The peer origin serves data, never pages:
`default-src 'none'`. Headers a route already set are kept.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PEER_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
HSTS = "max-age=31536000"
_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL | re.I)


def inline_script_hashes(index_html: Path) -> list[str]:
    """CSP sources (`'sha256-…'`) of the inline scripts of a page (none if it is absent)."""
    try:
        page = index_html.read_bytes()
    except OSError:
        return []
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + "'"
        for body in _INLINE_SCRIPT.findall(page)
        if body.strip()
    ]


def viewer_policy(script_hashes: Iterable[str], *, worker: bool = False) -> str:
    """The user origin's policy; `worker`: the one served with scripts, which OHIF's decoding
    workers run under (its Emscripten codecs build functions from strings: 'unsafe-eval')."""
    scripts = " ".join(
        ["'self'", "'unsafe-eval'" if worker else "'wasm-unsafe-eval'", *script_hashes]
    )
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {scripts}",
            "worker-src 'self' blob:",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data: blob:",
            "font-src 'self' data:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'self'",
            # Framed by its own pages only (the history frames the launch's named exam).
            "frame-ancestors 'self'",
        ]
    )


class SecurityHeaders:
    """ASGI middleware adding the security headers to every HTTP answer. `hsts`: also
    Strict-Transport-Security (the origin is HTTPS, directly or behind the site's proxy)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: str,
        script_policy: str | None = None,
        hsts: bool = False,
        frame_options: str = "DENY",
    ) -> None:
        self.app = app
        self.policy = policy.encode("ascii")
        # A worker runs under the policy of its own script's response, not the page's.
        self.script_policy = (script_policy or policy).encode("ascii")
        headers = [
            (b"x-frame-options", frame_options.encode("ascii")),
            (b"x-content-type-options", b"nosniff"),
            # URLs carry study UIDs and launch ids: never sent to another site. Not
            # "no-referrer": browsers then send `Origin: null`, and the POST origin checks fail.
            (b"referrer-policy", b"same-origin"),
        ]
        self.headers = headers
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = list(self.headers)
        if self.hsts or scope.get("scheme") == "https":
            extra.append((b"strict-transport-security", HSTS.encode("ascii")))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = dict((k.lower(), v) for k, v in message.get("headers", []))
                script = b"javascript" in headers.get(b"content-type", b"")
                policy = self.script_policy if script else self.policy
                message["headers"] = [
                    *message.get("headers", []),
                    *(h for h in [(b"content-security-policy", policy), *extra]
                      if h[0] not in headers),
                ]  # fmt: skip
            await send(message)

        await self.app(scope, receive, with_headers)
