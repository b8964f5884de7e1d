"""Sign-in with Pro Santé Connect on a node's user origin, over real sockets, against the PSC
simulator: login, the choice of situation d'exercice, a replayed callback, logout."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from drimbox.config import Config
from drimbox.sim.pki import TestPki
from drimbox.sim.psc import LocalPsc, PscSimSettings
from drimbox.trust import audit
from support.node import RunningNode, node_config


def psc_node_config(tmp_path: Path, psc: LocalPsc) -> Config:
    """A node signing its users in with `psc`, its PACS unreachable (not needed here)."""
    return node_config(tmp_path, None, {
        **psc.node_environ(),
        "DRIMBOX_PACS__PORT": "9",
    })  # fmt: skip


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[RunningNode, LocalPsc]]:
    with LocalPsc.with_mtls(tmp_path / "psc", TestPki()) as psc:
        config = psc_node_config(tmp_path, psc)
        with RunningNode(config) as running:
            # The redirect URI follows the viewer's real port, known once it listens.
            yield running, psc


def sign_in(client: httpx.Client, base: str, user: str) -> httpx.Response:
    return client.get(f"{base}/connexion", params={"login_hint": user, "next": "/viewer"})


def signed_in(browser: httpx.Client, base: str) -> bool:
    page = browser.get(f"{base}/viewer", follow_redirects=False)
    return not (page.status_code == 303 and page.headers["location"].startswith("/connexion"))


def test_login_situation_and_logout(node: tuple[RunningNode, LocalPsc]) -> None:
    running, _psc = node
    base = running.viewer_url
    with httpx.Client(follow_redirects=True, timeout=30, headers={"Origin": base}) as browser:
        page = sign_in(browser, base, "medecin-deux-situations")
        assert page.status_code == 200, page.text
        assert "plusieurs situations" in page.text  # two situations: the user must choose
        assert "drimbox_session" in browser.cookies
        choice = browser.post(f"{base}/auth/situation", data={"situation": "nope", "next": "/"})
        assert choice.status_code == 400
        events = audit.events(running.node.db)
        assert [e["action"] for e in events] == ["login"]
        # A link (another site's, an image) cannot end the session: the page asks first.
        asked = browser.get(f"{base}/deconnexion", params={"next": "/viewer"})
        assert asked.status_code == 200 and 'method="post"' in asked.text
        assert signed_in(browser, base)
        # Nor can another site's form post.
        forged = browser.post(f"{base}/deconnexion", headers={"Origin": "https://attaque.test"})
        assert forged.status_code == 403 and "Action refusée" in forged.text
        assert signed_in(browser, base)
        out = browser.post(f"{base}/deconnexion", data={"next": "/viewer"})
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


def test_the_access_token_is_refreshed_before_it_expires(tmp_path: Path) -> None:
    """PSC access tokens live minutes, a prefetch or a viewing session longer: the session's
    token is refreshed with its refresh token (once, whatever the concurrency), the user keeps
    working; a refresh PSC refuses ends it."""
    # 40 s of life: fresh for 10 s with the default margin (30 s) however slow the sign-in,
    # then refreshes 39 s ahead: every token is due for refresh after 1 s.
    with LocalPsc(PscSimSettings(access_token_lifetime_s=40)) as psc:
        config = psc_node_config(tmp_path, psc)
        with RunningNode(config) as running, httpx.Client(follow_redirects=True) as browser:
            assert sign_in(browser, running.viewer_url, "radiologue").status_code == 200
            cookie = browser.cookies["drimbox_session"]
            web = running.node.web
            assert web is not None and web.session_tokens is not None
            keeper, sessions = web.session_tokens, web.sessions
            first = sessions.tokens(cookie)
            assert first is not None
            assert keeper.access_token(cookie) == first.access_token  # still fresh
            keeper.margin_s = 39
            time.sleep(1.2)
            second = keeper.access_token(cookie)
            assert second and second != first.access_token and keeper.refreshes == 1
            stored = sessions.tokens(cookie)
            assert stored is not None and stored.access_token == second
            assert stored.subject == first.subject and stored.refresh_token
            assert keeper.psc.userinfo(second, expected_subject=first.subject).subject_name_id
            # Eight threads find it due at once: one refresh, one token for all.
            time.sleep(1.2)
            with ThreadPoolExecutor(8) as pool:
                tokens = set(pool.map(lambda _: keeper.access_token(cookie), range(8)))
            assert len(tokens) == 1 and None not in tokens and keeper.refreshes == 2
            # PSC no longer honours the refresh token (the user logged out elsewhere): the
            # session ends here too, and the next page asks to sign in again.
            current = sessions.tokens(cookie)
            assert current is not None
            psc.provider.revoke(current.refresh_token)
            time.sleep(1.2)
            assert keeper.access_token(cookie) is None
            assert sessions.view(cookie) is None
            page = browser.get(f"{running.viewer_url}/viewer", follow_redirects=False)
            assert page.status_code == 303 and page.headers["location"].startswith("/connexion")
