"""The shared page layout's formatting: French dates in Paris time, nothing printed for unknowns."""

from __future__ import annotations

from datetime import UTC, date, datetime

from drimbox.web.pages import esc, french_date, french_datetime, layout, table


def test_french_formats() -> None:
    # The database gives UTC (naive from SQLite): shown in Paris time.
    assert french_datetime("2026-11-26T04:22:00") == "26/11/2026 05:22"
    assert french_datetime(datetime(2026, 7, 1, 10, 0, tzinfo=UTC)) == "01/07/2026 12:00"
    assert french_datetime(None) == "" and french_date(None) == ""
    assert french_date(date(1979, 3, 28)) == "28/03/1979"
    assert esc(None) == "" and esc("<b>") == "&lt;b&gt;"


def test_layout_is_french_keyboard_usable_and_never_cached() -> None:
    page = layout("Titre", table(["A"], [["x"]], empty="rien"), nav=[("/admin", "État")],
                  user="Claire")  # fmt: skip
    body = page.body.decode()
    assert '<html lang="fr">' in body and 'href="#contenu"' in body and "Se déconnecter" in body
    assert page.headers["cache-control"] == "no-store"
    assert "rien" in table(["A"], [], empty="rien")
