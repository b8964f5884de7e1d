"""The shared page layout and French formats: Paris time (with its offset where read away from
a page), French numbers and sizes, autoescaped templates, one stylesheet served as a file."""

from __future__ import annotations

from datetime import UTC, date, datetime

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.testclient import TestClient

from drimbox.french import french_date, french_datetime, french_number, french_size
from drimbox.web.admin_routes import purge_message
from drimbox.web.labels import action_label
from drimbox.web.pages import message, render


def test_french_formats() -> None:
    # The database gives UTC (naive from SQLite): shown in Paris time.
    assert french_datetime("2026-11-26T04:22:00") == "26/11/2026 05:22"
    assert french_datetime(datetime(2026, 7, 1, 10, 0, tzinfo=UTC)) == "01/07/2026 12:00"
    assert french_datetime(datetime(2026, 7, 1, 10, 0, tzinfo=UTC), offset=True) == (
        "01/07/2026 12:00 (UTC+02:00)"
    )
    assert french_datetime("2026-01-05T10:00:00", offset=True) == "05/01/2026 11:00 (UTC+01:00)"
    assert french_datetime(None) == "" and french_date(None) == ""
    assert french_date(date(1979, 3, 28)) == "28/03/1979"
    # An exam's time is Paris time, whatever the zone it came in (UTC from the DMP's metadata).
    assert french_date(datetime(2025, 11, 18, 9, 25, tzinfo=UTC)) == "18/11/2025 à 10 h 25"
    assert french_number(10604160) == "10\u202f604\u202f160"
    assert french_size(10604160) == "10,6 Mo" and french_size(1) == "1 octet"
    assert french_size(2_500_000_000) == "2,5 Go"


def test_labels_and_purge_message_are_french() -> None:
    assert purge_message(3, 10604160) == "Cache vidé : 3 séries supprimées, 10,6 Mo libérés."
    assert purge_message(0, 0) == "Cache vidé : il ne contenait aucune série."
    assert action_label("image_retrieve_series") == "images servies (série)"
    assert action_label("dmp_retrieve_kos").startswith("lecture d'un manifeste")


def _client() -> TestClient:
    app = FastAPI()

    @app.get("/page")
    def page(request: Request) -> Response:
        return render(request, "message.html", title="<b>Titre</b>", user="<i>Claire</i>",
                      paragraphs=["<script>alert(1)</script>"], nav=[("/admin", "État")],
                      links=[])  # fmt: skip

    @app.get("/erreur")
    def error(request: Request) -> Response:
        return message(request, "Erreur", "motif <img src=x>", status=400, alert=True,
                       items=["<u>champ</u>"])  # fmt: skip

    return TestClient(app)


def test_layout_is_french_escaped_keyboard_usable_and_never_cached() -> None:
    client = _client()
    page = client.get("/page")
    body = page.text
    assert '<html lang="fr">' in body and 'href="#contenu"' in body and "Se déconnecter" in body
    assert "&lt;b&gt;Titre&lt;/b&gt;" in body and "<b>" not in body
    assert "&lt;script&gt;" in body and "<script>alert" not in body
    assert "&lt;i&gt;Claire&lt;/i&gt;" in body
    assert 'href="/_drimbox/drimbox.css"' in body and "<style>" not in body
    # Logout is a form posted from the page (a link could be another site's), back here after.
    assert 'method="post" action="/deconnexion"' in body
    assert '<input type="hidden" name="next" value="/page">' in body
    assert page.headers["cache-control"] == "no-store"
    error = client.get("/erreur")
    assert error.status_code == 400 and 'role="alert"' in error.text
    assert "&lt;img src=x&gt;" in error.text and "&lt;u&gt;champ&lt;/u&gt;" in error.text
