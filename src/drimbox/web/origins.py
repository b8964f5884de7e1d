"""Cross-site request checks of the user origin: where a state-changing request comes from.

Owns `request_origin` (the `Origin` header, else the origin of `Referer`, as browsers send them)
and `SameOriginPosts`, the ASGI middleware that refuses every POST, PUT, PATCH or DELETE of the
user origin not sent by one of its own pages (export, situation choice, identity traits,
administration, logout…): a page of another site cannot make a signed-in user's browser act.
The check is the one OWASP calls "verifying origin with standard headers": the request's
origin must be the origin the browser reached (its `Host`) or `[viewer] public_url`; a request
with neither `Origin` nor `Referer` is refused too (every current browser sends `Origin` on a
POST; the box's `Referrer-Policy: same-origin` never hides it). The contextual launch is exempt
(`exempt`): it comes from the RIS/DPI by design, and has its own rule (`conso_routes`).
It must not authenticate anyone nor read bodies.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from drimbox.config import web_origin
from drimbox.web.pages import message

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def request_origin(headers: Mapping[str, str]) -> str:
    """Where the browser says the request comes from: `Origin` (may be "null", for a local file
    or a sandboxed page), else the origin of `Referer`; "" when neither is sent."""
    origin = headers.get("origin", "").strip()
    if origin:
        return origin if origin == "null" else web_origin(origin) or origin
    return web_origin(headers.get("referer", ""))


class SameOriginPosts:
    """Refuse (403, French) a state-changing request that no page of this origin sent."""

    def __init__(
        self, app: ASGIApp, *, public_url: str, exempt: Collection[str] = frozenset()
    ) -> None:
        self.app = app
        self.public = web_origin(public_url)
        self.exempt = frozenset(exempt)

    def allowed(self, origin: str, host: str) -> bool:
        if not origin or origin == "null":
            return False
        if origin == self.public:
            return True
        # The host the browser reached: behind a proxy or by another name, still this origin
        # (compared without the scheme: `Host` has none).
        reached = web_origin(f"http://{host}").removeprefix("http://")
        return bool(reached) and origin.split("://", 1)[-1] == reached

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in SAFE_METHODS
            or scope["path"] in self.exempt
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        origin = request_origin(request.headers)
        if self.allowed(origin, request.headers.get("host", "")):
            await self.app(scope, receive, send)
            return
        log.info("cross-site %s %s refused (origin %r)", scope["method"], scope["path"], origin)
        response = refusal(request, origin)
        await response(scope, receive, send)


def refusal(request: Request, origin: str) -> Response:
    text = (
        "Cette action a été envoyée depuis une autre page que celles de la DRIMbox"
        + (f" ({origin})" if origin and origin != "null" else "")
        + " : elle est refusée pour votre sécurité. Revenez à la page de la DRIMbox et "
        "recommencez."
    )
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"status": 403, "erreur": text}, status_code=403)
    return message(request, "Action refusée", text, status=403, alert=True)
