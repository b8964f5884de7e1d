"""The French page layout shared by the user-facing pages (administration, errors): one design,
keyboard-usable (skip link, visible focus, labelled controls), readable error pages, dates in
French format. Pages are built server-side from escaped fragments; no patient data is ever put in
a URL or a log here."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from fastapi.responses import HTMLResponse

PARIS = ZoneInfo("Europe/Paris")

CSS = """
:root{--ink:#1d2733;--muted:#5b6675;--line:#d9dee5;--brand:#000091;--ok:#18753c;--ko:#ce0500;
--warn:#b34000;--bg:#f6f6f6}
*{box-sizing:border-box}body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Marianne,
Arial,sans-serif;color:var(--ink);background:var(--bg)}
a{color:var(--brand)}a:focus,button:focus,input:focus,select:focus{outline:3px solid #0a76f6;
outline-offset:2px}
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff;padding:.5rem}
header{background:#fff;border-bottom:1px solid var(--line);padding:.75rem 1.5rem;display:flex;
gap:2rem;align-items:center}header .brand{font-weight:700;color:var(--brand);text-decoration:none}
nav a{margin-right:1rem}main{max-width:78rem;margin:1.5rem auto;padding:0 1.5rem}
h1{font-size:1.6rem;margin:.5rem 0 1rem}
table{width:100%;border-collapse:collapse;background:#fff}th,td{border-bottom:1px solid
var(--line);padding:.45rem .6rem;text-align:left;vertical-align:top}th{background:#eef0f4}
.ok{color:var(--ok);font-weight:600}.ko{color:var(--ko);font-weight:600}.warn{color:var(--warn)}
.muted{color:var(--muted)}.card{background:#fff;border:1px solid var(--line);padding:1rem;
margin-bottom:1rem}button,.button{background:var(--brand);color:#fff;border:0;padding:.4rem .9rem;
cursor:pointer;text-decoration:none;display:inline-block}form.inline{display:inline}
.banner{background:#fff;border-left:6px solid var(--brand);padding:.75rem 1rem;margin-bottom:1rem}
label{margin-right:.5rem}input,select{padding:.3rem}
"""


def e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def french_datetime(moment: datetime | str | None) -> str:
    if moment is None or moment == "":
        return ""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is not None:
        moment = moment.astimezone(PARIS)
    return moment.strftime("%d/%m/%Y %H:%M")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str) -> str:
    """An HTML table; cells are already-escaped fragments."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="muted">{e(empty)}</p>'
    head = "".join(f'<th scope="col">{e(h)}</th>' for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(
    title: str,
    body: str,
    *,
    status: int = 200,
    nav: Sequence[tuple[str, str]] = (),
    user: str = "",
) -> HTMLResponse:
    links = "".join(f'<a href="{e(href)}">{e(label)}</a>' for href, label in nav)
    who = f'<span class="muted">{e(user)} — <a href="/deconnexion">Se déconnecter</a></span>'
    return HTMLResponse(
        f"""<!doctype html><html lang="fr"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{e(title)} — DRIMbox</title><style>{CSS}</style></head><body>
<a class="skip" href="#contenu">Aller au contenu</a>
<header><a class="brand" href="/admin">DRIMbox</a><nav aria-label="Navigation">{links}</nav>
{who if user else ""}</header>
<main id="contenu"><h1>{e(title)}</h1>{body}</main></body></html>""",
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )
