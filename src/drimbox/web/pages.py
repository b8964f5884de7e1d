"""The French pages of the user origin (Conso, administration, sign-in, viewer gate, errors):
Jinja2 templates under `templates/` (autoescaped: every value is shown as text), one base
layout, the stylesheet and script served as files from `static/` under `STATIC_PATH`.

Owns the template environment, the page response (French, never cached) and the formatting
filters the pages share (`drimbox.french`). Route modules gather
data and hand it to a template; they write no HTML. It must not read the database nor know any
route's logic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from drimbox.french import french_date, french_datetime, french_number, french_size

__all__ = ["french_date", "french_datetime", "french_number", "french_size", "message", "render"]

HERE: Final = Path(__file__).resolve().parent
STATIC_DIR: Final = HERE / "static"
STATIC_PATH: Final = "/_drimbox"  # OHIF owns the rest of the origin's root
LOGOUT_PATH: Final = "/deconnexion"


templates: Final = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(
    french_date=french_date,
    french_datetime=french_datetime,
    french_number=french_number,
    french_size=french_size,
)
templates.env.globals.update(STATIC_PATH=STATIC_PATH, LOGOUT_PATH=LOGOUT_PATH)


def render(request: Request, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
    """A page from `templates/`: French, never cached (it may name a patient)."""
    context.setdefault("here", request.url.path)
    return templates.TemplateResponse(
        request, template, context, status_code=status, headers={"Cache-Control": "no-store"}
    )


def message(
    request: Request,
    title: str,
    *paragraphs: str,
    status: int = 200,
    alert: bool = False,
    items: Iterable[str] = (),
    links: Sequence[tuple[str, str]] = (),
    **context: Any,
) -> HTMLResponse:
    """A page saying one thing: paragraphs (an alert when `alert`), a list, links."""
    return render(
        request,
        "message.html",
        status=status,
        title=title,
        paragraphs=paragraphs,
        alert=alert,
        items=list(items),
        links=links,
        **context,
    )


def favicon() -> Response:
    return Response(
        (STATIC_DIR / "favicon.ico").read_bytes(),
        media_type="image/vnd.microsoft.icon",
        headers={"Cache-Control": "public, max-age=86400"},
    )
