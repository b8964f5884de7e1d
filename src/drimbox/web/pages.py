"""The French page layout of every page of the user origin (Conso, administration, sign-in,
viewer gate and error pages): one design for the whole product.

Owns the HTML skeleton (language, skip link, header with the signed-in user and the logout link,
a readable stylesheet with visible keyboard focus) and the small formatting helpers the pages
share (French dates, escaping). Every value put into a page goes through `esc`. It must not read
the database nor know any route's logic.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Final
from zoneinfo import ZoneInfo

from fastapi.responses import HTMLResponse

STYLE: Final = """
:root{--ink:#1d1d1f;--muted:#5a5a66;--line:#d4d4dc;--accent:#004b9b;--ok:#1b6e2a;--bad:#a4161a}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);margin:0;
line-height:1.45}
a{color:var(--accent)}
a:focus,button:focus,input:focus,summary:focus{outline:3px solid #f0a500;outline-offset:2px}
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff;padding:.5rem}
header.top{background:var(--accent);color:#fff;padding:.6rem 1.5rem;display:flex;
justify-content:space-between;align-items:center;gap:1rem;flex-wrap:wrap}
header.top a{color:#fff}
main{max-width:78rem;margin:1.5rem auto;padding:0 1.5rem}
h1{font-size:1.5rem;margin:.2rem 0 1rem}
.banner{border:2px solid var(--accent);border-radius:6px;padding:.8rem 1rem;margin-bottom:1.2rem;
display:flex;flex-wrap:wrap;gap:.4rem 2rem;background:#f4f8fc}
.banner strong{font-size:1.15rem}
.banner dl{display:flex;flex-wrap:wrap;gap:.2rem 1.5rem;margin:0}
.banner dt{color:var(--muted);font-size:.85rem}.banner dd{margin:0;font-weight:600}
.alert{border-left:6px solid var(--bad);background:#fdf0f0;padding:.8rem 1rem;margin:1rem 0}
.note{border-left:6px solid var(--accent);background:#f4f8fc;padding:.6rem 1rem;margin:1rem 0}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid var(--line);padding:.5rem .4rem;text-align:left;vertical-align:top}
th{font-size:.85rem;color:var(--muted)}
td.actions{white-space:nowrap}
button,.button{font:inherit;padding:.35rem .8rem;border:1px solid var(--accent);border-radius:4px;
background:#fff;color:var(--accent);cursor:pointer;text-decoration:none;display:inline-block}
button.primary,.button.primary{background:var(--accent);color:#fff}
button[disabled]{opacity:.5;cursor:not-allowed}
progress{width:9rem;vertical-align:middle}
.state{font-size:.85rem;color:var(--muted);display:block}
.state.erreur,.state.refuse{color:var(--bad)}.state.termine{color:var(--ok)}
ul.errors li{margin:.3rem 0}
nav.sections a{color:#fff;margin-right:1rem}
.ok{color:var(--ok);font-weight:600}.ko{color:var(--bad);font-weight:600}.muted{color:var(--muted)}
.card{border:1px solid var(--line);border-radius:6px;padding:1rem;margin-bottom:1rem}
form.inline{display:inline}label{margin-right:.4rem}input,select{font:inherit;padding:.25rem}
"""
PARIS: Final = ZoneInfo("Europe/Paris")


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def french_date(value: date | datetime | None) -> str:
    """ "05/03/2024" (and " à 14 h 05" for a datetime with a time), "" when unknown."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        text = value.strftime("%d/%m/%Y")
        if value.hour or value.minute:
            text += f" à {value.hour} h {value.minute:02d}"
        return text
    return value.strftime("%d/%m/%Y")


def french_datetime(value: datetime | str | None) -> str:
    """ "05/03/2024 14:05" in French local time (ISO strings accepted), "" when unknown.

    Timestamps come from the database in UTC; SQLite returns them without a zone."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(PARIS)
    return value.strftime("%d/%m/%Y %H:%M")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str) -> str:
    """An HTML table of already-escaped cells, or a French "nothing" line."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="muted">{esc(empty)}</p>'
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def layout(
    title: str,
    body: str,
    *,
    status: int = 200,
    user: str = "",
    script: str = "",
    poll_url: str = "",
    nav: Sequence[tuple[str, str]] = (),
) -> HTMLResponse:
    """A whole page: header (product, signed-in user, logout), `<main>` with `body`; `poll_url`
    is handed to the page's script as `<body data-etat>`."""
    who = (
        f'<span>Connecté : {esc(user)} · <a href="/deconnexion">Se déconnecter</a></span>'
        if user
        else ""
    )
    tail = f"<script>{script}</script>" if script else ""
    links = "".join(f'<a href="{esc(href)}">{esc(label)}</a>' for href, label in nav)
    sections = f'<nav class="sections" aria-label="Sections">{links}</nav>' if nav else ""
    return HTMLResponse(
        f"""<!doctype html><html lang="fr"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} — DRIMbox</title><style>{STYLE}</style></head>
<body{f' data-etat="{esc(poll_url)}"' if poll_url else ""}>
<a class="skip" href="#contenu">Aller au contenu</a>
<header class="top"><span><strong>DRIMbox</strong> · partage d'images DRIM-M</span>
{sections}{who}</header>
<main id="contenu" tabindex="-1"><h1>{esc(title)}</h1>{body}</main>{tail}</body></html>""",
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )
