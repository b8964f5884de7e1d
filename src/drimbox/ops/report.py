"""The acceptance check's printable report: one A4 page (site identity, software version, date,
every verdict with what to do, a signature block for the site and the installer), rendered from
`templates/aptitude.html` by Jinja2 with autoescaping — every value is shown as text. A
standalone document (the site prints and files it), so it carries its own print stylesheet
rather than the console's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from jinja2 import Environment, FileSystemLoader, select_autoescape

from drimbox.french import french_datetime
from drimbox.ops.aptitude import AptitudeReport, groups

_environment: Final = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
_environment.filters["french_datetime"] = french_datetime


def render_html(report: AptitudeReport) -> str:
    return _environment.get_template("aptitude.html").render(
        report=report, groups=list(groups(report))
    )
