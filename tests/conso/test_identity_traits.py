"""The patient's INS identity traits on the Conso (issue 14 §4, requirement INS/va1.36): by
default the birth name, the first birth given name, the birth date, the sex and the birthplace;
on the professional's choice (kept per PSC subject, across launches) also the INS matricule, its
nature, every birth given name, the used given name and the used name. Same order and wording on
every Conso page. Over real sockets: a Source node with Orthanc, a Conso node, the DMP and PSC
simulators (`support.history`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape

import httpx
import pytest

from drimbox.conso.launch import InvalidLaunch, parse_launch
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.studies import SeriesSpec
from drimbox.web.conso_routes import TRAITS_DEFAULT, TRAITS_MORE
from support.history import (
    FROM_RIS,
    SECOND_RADIOLOGIST,
    HistoryNetwork,
    launch,
    launch_form,
    long_history,
    signed_in_user,
)

USED = {"Patient.name.usual.family": "Martin", "Patient.name.usual.given": "Domi"}
GIVEN = "DOMINIQUE"
DEFAULT = [
    ("Nom de naissance", "PAT-TROIS"),
    ("Premier prénom de naissance", GIVEN),
    ("Date de naissance", "28/03/1979"),
    ("Sexe", "Féminin"),
    ("Lieu de naissance (code INSEE)", "75056"),
]


@pytest.fixture(scope="module")
def network(
    orthanc: LocalOrthanc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HistoryNetwork]:
    with long_history(
        orthanc, tmp_path_factory.mktemp("traits"), count=1, series=(SeriesSpec("CT", "a", 1),),
        size=8,
    ) as built:  # fmt: skip
        yield built


def traits(page: httpx.Response) -> list[tuple[str, str]]:
    """The identity block's (label, value) pairs, in page order (the IPP aside)."""
    block = re.search(r'<section class="banner" id="identite".*?</section>', page.text, re.S)
    assert block is not None, page.text[:2000]
    pairs = re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", block.group(0), re.S)
    return [(unescape(k), unescape(v)) for k, v in pairs if k != "IPP"]


def choose(browser: httpx.Client, url: str, everything: bool) -> httpx.Response:
    return browser.post(f"{url}/traits", data={"tous": "1" if everything else "0"})


def test_the_launch_accepts_the_used_name_and_given_name() -> None:
    context = parse_launch(launch_form(**USED))
    assert (context.used_name, context.used_given_name) == ("Martin", "Domi")
    aliased = parse_launch(launch_form(NomUtilise="Martin", prenomutilise="Domi"))
    assert (aliased.used_name, aliased.used_given_name) == ("Martin", "Domi")
    plain = parse_launch(launch_form())
    assert (plain.used_name, plain.used_given_name) == (None, None)
    with pytest.raises(InvalidLaunch) as refused:
        parse_launch(launch_form(**{"Patient.name.usual.family": "A\x01"}))
    assert refused.value.errors[0].field == "Patient.name.usual.family"


def test_the_default_traits_then_all_of_them_on_the_user_s_choice(
    network: HistoryNetwork,
) -> None:
    with signed_in_user(network) as browser:
        choose(browser, launch(browser)[0], False)  # whatever an earlier run left
        # Two birth given names, as the RIS sends them: the field repeated.
        form: dict[str, str | list[str]] = {
            **launch_form(**USED),
            "Patient.name.given": [GIVEN, "ANNE"],
        }
        page = browser.post("/lancement", data=form, headers=FROM_RIS)
        assert "/consultation/" in str(page.url), page.text[:2000]
        url = str(page.url).split("?")[0]
        assert traits(page) == DEFAULT, traits(page)
        assert "Matricule INS" not in page.text and "Martin" not in page.text.replace("Marc", "")
        assert "Afficher tous les traits d'identité" in unescape(page.text)

        page = choose(browser, url, True)
        assert page.status_code == 200 and str(page.url).split("#")[0] == url
        shown = traits(page)
        assert [k for k, _ in shown] == [*TRAITS_DEFAULT, *TRAITS_MORE]
        assert shown[:5] == DEFAULT
        assert shown[5:] == [
            ("Matricule INS", shown[5][1]),
            ("Nature du matricule", shown[6][1]),
            ("Prénoms de naissance", f"{GIVEN} ANNE"),
            ("Prénom utilisé", "Domi"),
            ("Nom utilisé", "MARTIN"),
        ]
        assert shown[5][1].replace(" ", "") == launch_form()["Patient.identifier.value"]
        assert shown[6][1].startswith("INS-NI") and "1.2.250.1.213.1.4." in shown[6][1]

        # The same block, same order, on the other Conso pages: an error page here.
        missing = browser.get(f"{url}/ouvrir/1.2.3.4.5")
        assert missing.status_code == 404 and traits(missing) == shown

        # Kept for this professional: a later launch opens with every trait.
        _, later = launch(browser)
        assert [k for k, _ in traits(later)] == [*TRAITS_DEFAULT, *TRAITS_MORE]
        assert traits(later)[8:] == [("Prénom utilisé", "non transmis"),
                                     ("Nom utilisé", "non transmis")]  # fmt: skip

        # Another professional still sees the default traits.
        with signed_in_user(network, SECOND_RADIOLOGIST.id) as other:
            assert traits(launch(other)[1]) == DEFAULT

        refused = browser.post(f"{url}/traits", data={"tous": "peut-être"})
        assert refused.status_code == 400 and "« tous » vaut 0 ou 1" in refused.text
        back = choose(browser, url, False)
        assert traits(back) == DEFAULT
