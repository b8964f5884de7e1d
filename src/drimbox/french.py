"""French formats for people: dates and times in Paris time (with the UTC offset where the
text is read away from a page), numbers with French grouping and decimal comma, sizes in
decimal units. Shared by the pages, the CLI and the messages for site staff."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Final
from zoneinfo import ZoneInfo

PARIS: Final = ZoneInfo("Europe/Paris")


def french_date(value: date | datetime | None) -> str:
    """ "05/03/2024" (and " à 14 h 05" for a datetime with a time, in Paris time when its zone
    is known), "" when unknown."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(PARIS)
        text = value.strftime("%d/%m/%Y")
        if value.hour or value.minute:
            text += f" à {value.hour} h {value.minute:02d}"
        return text
    return value.strftime("%d/%m/%Y")


MONTHS: Final = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août",
                  "septembre", "octobre", "novembre", "décembre")  # fmt: skip


def french_month(value: str) -> str:
    """ "2024-03" → "mars 2024"."""
    year, month = value.split("-")
    return f"{MONTHS[int(month) - 1]} {year}"


def paris_time(value: datetime | str) -> datetime:
    """A stored timestamp (UTC; SQLite gives it without a zone; ISO strings accepted) in Paris
    time."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(PARIS)


def french_datetime(value: datetime | str | None, *, offset: bool = False) -> str:
    """ "05/03/2024 14:05" in Paris time, "" when unknown; with `offset`, " (UTC+01:00)"
    follows (for text read away from the page: CLI, exports)."""
    if value is None or value == "":
        return ""
    local = paris_time(value)
    text = local.strftime("%d/%m/%Y %H:%M")
    if offset:
        text += f" (UTC{local.strftime('%z')[:3]}:{local.strftime('%z')[3:]})"
    return text


def french_number(value: float, decimals: int = 0) -> str:
    """ "10 604 160", "10,6": French grouping (narrow no-break space) and decimal comma."""
    text = f"{value:,.{decimals}f}"
    return text.replace(",", "\u202f").replace(".", ",")


def french_size(nbytes: float) -> str:
    """ "10,6 Mo", "512 octets": decimal units as the French system uses them (1 Mo = 10⁶ o)."""
    for unit, scale in (("To", 1e12), ("Go", 1e9), ("Mo", 1e6), ("ko", 1e3)):
        if nbytes >= scale:
            return f"{french_number(nbytes / scale, 1)} {unit}"
    return f"{french_number(nbytes)} octet{'s' if nbytes >= 2 else ''}"
