"""Sign-in with Pro Santé Connect on a node's user origin, over real sockets, against the PSC
simulator: login, the choice of situation d'exercice, a replayed callback, logout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from drimbox.sim.psc import LocalPsc
from drimbox.trust import audit
from support.node import RunningNode, node_config


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[RunningNode, LocalPsc]]:
    with LocalPsc() as psc:
        config = node_config(tmp_path, None, {
            "DRIMBOX_PSC__CLIENT_ID": psc.client.client_id,
            "DRIMBOX_PSC__CLIENT_SECRET": psc.client.client_secret,
            "DRIMBOX_PSC__DISCOVERY_URL": psc.discovery_url,
            "DRIMBOX_PACS__PORT": "9",
        })  # fmt: skip
        with RunningNode(config) as running:
            # The redirect URI follows the viewer's real port, known once it listens.
            yield running, psc


def sign_in(client: httpx.Client, base: str, user: str) -> httpx.Response:
    return client.get(f"{base}/connexion", params={"login_hint": user, "next": "/viewer"})


def test_login_situation_and_logout(node: tuple[RunningNode, LocalPsc]) -> None:
    running, _psc = node
    base = running.viewer_url
    with httpx.Client(follow_redirects=True, timeout=30) as browser:
        page = sign_in(browser, base, "medecin-deux-situations")
        assert page.status_code == 200, page.text
        assert "plusieurs situations" in page.text  # two situations: the user must choose
        assert "drimbox_session" in browser.cookies
        choice = browser.post(f"{base}/auth/situation", data={"situation": "nope", "next": "/"})
        assert choice.status_code == 400
        events = audit.events(running.node.db)
        assert [e["action"] for e in events] == ["login"]
        out = browser.get(f"{base}/deconnexion")
        assert "session est terminée" in out.text
        after = browser.get(f"{base}/viewer", follow_redirects=False)
        assert after.status_code == 303 and after.headers["location"].startswith("/connexion")


def test_a_replayed_callback_is_refused(node: tuple[RunningNode, LocalPsc]) -> None:
    running, _psc = node
    base = running.viewer_url
    with httpx.Client(follow_redirects=False, timeout=30) as browser:
        step = browser.get(f"{base}/connexion", params={"login_hint": "radiologue"})
        while step.status_code in (302, 303) and "/auth/callback" not in step.headers["location"]:
            step = browser.get(step.headers["location"])
        callback = step.headers["location"]
        first = browser.get(callback)
        assert first.status_code == 303 and "drimbox_session" in first.cookies
        replay = browser.get(callback)
    assert replay.status_code == 400 and "déjà été utilisée" in replay.text


def test_a_low_assurance_login_is_refused(node: tuple[RunningNode, LocalPsc]) -> None:
    running, _psc = node
    with httpx.Client(follow_redirects=True, timeout=30) as browser:
        page = sign_in(browser, running.viewer_url, "authentification-faible")
    assert page.status_code == 403 and "drimbox_session" not in browser.cookies
