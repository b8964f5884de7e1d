"""The acceptance check's printable report: one A4 page (site identity, software version, date,
every verdict with what to do, a signature block for the site and the installer), rendered from
`templates/aptitude.html` by Jinja2 with autoescaping — every value is shown as text."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, select_autoescape

from drimbox.ops.aptitude import AptitudeReport, groups

PARIS: Final = ZoneInfo("Europe/Paris")
_environment: Final = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=False,
)


def _paris(value: datetime) -> str:
    moment = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(PARIS)
    return moment.strftime("%d/%m/%Y %H:%M (heure de Paris)")


_environment.filters["paris"] = _paris


def render_html(report: AptitudeReport) -> str:
    return _environment.get_template("aptitude.html").render(
        report=report, groups=list(groups(report))
    )
