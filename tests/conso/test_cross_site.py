"""Cross-site requests on a running Conso (real sockets, PSC and DMP simulators): a contextual
launch from an origin the site did not declare (`[conso] launch_origins`) shows a confirmation
page naming the patient and asks nothing of the DMP until the user confirms; every other POST
of the user origin is refused unless one of its own pages sent it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from drimbox.db.models import ConsoLaunch
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.studies import SeriesSpec
from drimbox.trust import audit
from support.history import (
    FROM_RIS,
    HistoryNetwork,
    launch,
    launch_form,
    long_history,
    signed_in_user,
)

TRAP = "https://site-piege.test"


@pytest.fixture(scope="module")
def network(
    orthanc: LocalOrthanc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HistoryNetwork]:
    with long_history(
        orthanc, tmp_path_factory.mktemp("cross-site"), count=1,
        series=(SeriesSpec("CT", "a", 1),), size=8,
    ) as built:  # fmt: skip
        yield built


def launches(network: HistoryNetwork) -> int:
    with network.conso.node.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(ConsoLaunch)) or 0)


def test_a_launch_from_another_origin_asks_before_any_dmp_call(network: HistoryNetwork) -> None:
    base = network.conso.viewer_url
    before, stored = network.dmp.stats(), launches(network)
    with signed_in_user(network) as browser:
        for headers in (
            {"Origin": TRAP},  # another site's page
            {"Origin": "null"},  # a sandboxed frame, a local file
            {"Origin": "", "Referer": f"{TRAP}/page"},  # no Origin: the Referer says
            {"Origin": ""},  # neither: nobody vouches for it
        ):
            page = browser.post("/lancement", data=launch_form(), headers=headers)
            assert page.status_code == 200, headers
            assert "/consultation/" not in str(page.url), headers
            assert "Ouvrir le dossier de ce patient ?" in page.text
            assert "PAT-TROIS" in page.text and "DOMINIQUE" in page.text  # names the patient
            assert 'action="/lancement/confirmer"' in page.text
        assert TRAP in browser.post("/lancement", data=launch_form(),
                                    headers={"Origin": TRAP}).text  # fmt: skip
        # Nothing stored, nothing asked of the DMP (no TD0.2/TD0.3, no ITI-18).
        assert launches(network) == stored
        assert network.dmp.stats() == before
        # The confirmation page's form, posted from another site: refused.
        form = launch_form()
        forged = browser.post("/lancement/confirmer", data=form, headers={"Origin": TRAP})
        assert forged.status_code == 403 and "Action refusée" in forged.text
        assert launches(network) == stored and network.dmp.stats() == before
        # Confirmed from the box's own page: the launch proceeds, the DMP is read.
        confirmed = browser.post("/lancement/confirmer", data=form, headers={"Origin": base})
        assert confirmed.status_code == 200 and "/consultation/" in str(confirmed.url)
        assert "Historique des examens" in confirmed.text
    assert launches(network) == stored + 1
    assert network.dmp.stats() != before
    events = [e for e in audit.events(network.conso.node.db) if e["action"] == "launch"]
    reasons = [e["detail"]["reason"] for e in events]
    assert f"origine non déclarée ({TRAP}) : confirmation demandée à l'utilisateur" in reasons
    assert "origine non déclarée (absente) : confirmation demandée à l'utilisateur" in reasons
    assert "lancement confirmé par l'utilisateur" in reasons
    assert all(e["patient_ins"] for e in events if e["detail"]["reason"].startswith("origine"))


def test_the_declared_ris_launches_at_once(network: HistoryNetwork) -> None:
    with signed_in_user(network) as browser:
        _, page = launch(browser)  # Origin: the declared RIS
        assert "Historique des examens" in page.text
        # A browser that sends only the Referer (an old one) of the declared RIS.
        old_browser = {"Origin": "", "Referer": f"{FROM_RIS['Origin']}/dpi/lancer"}
        referer = browser.post(
            "/lancement", data=launch_form(), follow_redirects=False, headers=old_browser
        )
        assert referer.status_code == 303


def test_state_changing_posts_need_the_origin_itself(network: HistoryNetwork) -> None:
    with signed_in_user(network) as browser:
        url, _ = launch(browser)
        study = network.exams[0].study.study_uid
        posts = {
            f"{url}/export/{study}": {"destination": "PACS"},
            f"{url}/traits": {"tous": "1"},
            "/auth/situation": {"situation": "x", "next": "/"},
            "/deconnexion": {"next": "/"},
            "/admin/cache/purger": {},
        }
        for path, form in posts.items():
            for headers in ({"Origin": TRAP}, {"Origin": "null"}, {"Origin": ""}):
                refused = browser.post(path, data=form, headers=headers)
                assert refused.status_code == 403, (path, headers, refused.status_code)
                assert "Action refusée" in refused.text and 'lang="fr"' in refused.text
        api = browser.post(f"{url}/export/{study}", headers={"Origin": TRAP,
                           "Accept": "application/json"})  # fmt: skip
        assert api.status_code == 403 and "autre page" in api.json()["erreur"]
        # Still signed in (the forged logout did nothing), and the same POSTs from the origin
        # itself go through.
        assert browser.get(url).status_code == 200
        same = browser.post(f"{url}/traits", data={"tous": "0"})  # Origin: the box
        assert same.status_code == 200 and "/consultation/" in str(same.url)
        referer_only = browser.post(
            f"{url}/traits",
            data={"tous": "0"},
            headers={"Origin": "", "Referer": url},
        )
        assert referer_only.status_code == 200
