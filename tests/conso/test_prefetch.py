"""Prefetch that scales with a long history (issue 19), over real sockets with real components.

A patient with 40 exams in the DMP simulator (`support.history`: a real Source node and Orthanc,
a Conso node, the PSC simulator): the launch names one exam; the Conso prefetches it first, then
its relevant priors (same modality and region, most recent first), within the budget of
`[conso] prefetch_exams` / `prefetch_max_bytes`; the other exams are fetched when opened.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from drimbox.conso.prefetch import Budget, Candidate, prefetch_order
from drimbox.db.models import ConsoExam, ConsoLaunch
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.trust import audit
from support.factories import CR_C_INS
from support.history import (
    FROM_RIS,
    HistoryNetwork,
    launch,
    launch_form,
    long_history,
    signed_in_user,
    wait_prefetch,
)

BUDGET_EXAMS = 4


@pytest.fixture(scope="module")
def network(
    orthanc: LocalOrthanc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HistoryNetwork]:
    with long_history(
        orthanc,
        tmp_path_factory.mktemp("history"),
        conso_environ={"DRIMBOX_CONSO__PREFETCH_EXAMS": str(BUDGET_EXAMS)},
    ) as built:
        yield built


def exam_ids(network: HistoryNetwork, launch_url: str) -> dict[int, str]:
    """exam id → study UID of the launch's history rows."""
    launch_id = launch_url.rsplit("/", 1)[-1]
    with network.conso.node.db.session() as session:
        rows = session.scalars(select(ConsoExam).where(ConsoExam.launch_id == launch_id))
        return {row.id: row.study_uid for row in rows}


def retrieved_studies(network: HistoryNetwork, since_id: int = 0) -> list[dict[str, Any]]:
    """The Conso's audited WADO-RS retrievals from the Source, in order."""
    return [
        e
        for e in audit.events(network.conso.node.db)
        if e["action"] == "wado_rs_retrieve" and e["id"] > since_id
    ]


def last_event_id(network: HistoryNetwork) -> int:
    events = audit.events(network.conso.node.db)
    return int(events[-1]["id"]) if events else 0


def cached_bytes(network: HistoryNetwork, study_uid: str) -> int:
    cache = network.conso.node.images
    assert cache is not None
    with cache.cache.lock:
        return sum(e.size for e in cache.cache._entries.values() if e.study_uid == study_uid)


def test_the_order_puts_the_named_exam_first_then_same_modality_and_region() -> None:
    def exam(key: int, date: str, modality: str, region: str) -> Candidate:
        return Candidate(key, f"1.2.{key}", f"A{key}", date, (modality,), (region,))

    candidates = [
        exam(1, "2025-01-01", "MR", "Head"),
        exam(2, "2024-01-01", "CT", "Thorax"),
        exam(3, "2023-01-01", "CT", "Head"),
        exam(4, "2022-01-01", "CT", "Thorax"),
        exam(5, "", "US", "Abdomen"),
        exam(6, "2021-01-01", "CT", "Thorax"),
    ]
    by_uid = prefetch_order(candidates, study_uid="1.2.4")
    assert [c.key for c in by_uid] == [4, 2, 6, 3, 1, 5]
    by_accession = prefetch_order(candidates, accession="A3")
    assert [c.key for c in by_accession] == [3, 1, 2, 4, 6, 5]
    unnamed = prefetch_order(candidates, modality="CT")
    assert [c.key for c in unnamed] == [2, 3, 4, 6, 1, 5]
    budget = Budget(exams=2, max_bytes=100)
    assert budget.allows_exam(1) and not budget.allows_exam(2)
    assert budget.allows_more(0, 10**9)  # the named exam is never cut
    assert budget.allows_more(1, 99) and not budget.allows_more(1, 100)


def test_forty_exams_named_first_budget_and_on_demand(network: HistoryNetwork) -> None:
    images = network.conso.node.images
    assert images is not None
    start = last_event_id(network)
    with signed_in_user(network) as browser:
        launch_url, page = launch(browser, StudyInstanceUID=network.named.study_uid)
        ids = exam_ids(network, launch_url)
        assert len(ids) == 40
        assert "36 examens seront récupérés à l'ouverture" in unescape(page.text)
        state = wait_prefetch(browser, launch_url)

        # Only the named exam and its three most recent CT thorax priors, the named one first.
        expected = [network.named, *network.same_kind_as_named()[: BUDGET_EXAMS - 1]]
        events = retrieved_studies(network, start)
        order = list(dict.fromkeys(e["study_uid"] for e in events))
        assert order == [e.study_uid for e in expected]
        assert len(events) == BUDGET_EXAMS * 2 and all(e["result"] == "ok" for e in events)
        named_done = max(i for i, e in enumerate(events) if e["study_uid"] == expected[0].study_uid)
        assert named_done == 1  # both of its series before any prior's
        jobs = {ids[int(k)]: v for k, v in state["images"].items()}
        assert sorted(uid for uid, j in jobs.items() if j["etat"] == "termine") == sorted(
            e.study_uid for e in expected
        )
        on_demand = [uid for uid, j in jobs.items() if j["etat"] == "a_la_demande"]
        assert len(on_demand) == 40 - BUDGET_EXAMS

        # Bytes: what the summary counts is exactly what is in the cache, all of it.
        summary = state["prechargement"]
        assert summary["examens"] == BUDGET_EXAMS and summary["prevus"] == BUDGET_EXAMS
        per_exam = [cached_bytes(network, e.study_uid) for e in expected]
        assert all(per_exam) and summary["octets"] == sum(per_exam)
        assert images.cache.usage().bytes == sum(per_exam)
        assert images.cache.usage().series == BUDGET_EXAMS * 2
        assert summary["budget_octets"] == 2_000_000_000

        # The page says which exams are ready and which come when opened.
        text = unescape(browser.get(launch_url).text)
        assert "Images prêtes : 4 examens." in text
        assert "36 examens seront récupérés à l'ouverture" in text
        assert text.count("Hors du préchargement : les images seront récupérées") == 36

        # An exam outside the budget: fetched when opened, with the same progress display.
        other = network.exams[1]  # the most recent MR head: not a prior of a CT thorax
        assert jobs[other.study_uid]["etat"] == "a_la_demande"
        assert cached_bytes(network, other.study_uid) == 0
        opened = browser.get(f"{launch_url}/ouvrir/{other.study_uid}", follow_redirects=False)
        assert opened.status_code == 303 and other.study_uid in opened.headers["location"]
        state = wait_prefetch(browser, launch_url)
        jobs = {ids[int(k)]: v for k, v in state["images"].items()}
        assert jobs[other.study_uid]["etat"] == "termine", jobs[other.study_uid]
        assert jobs[other.study_uid]["faits"] == jobs[other.study_uid]["total"] == 3
        assert cached_bytes(network, other.study_uid) > 0
        series = browser.get(
            f"/dicom-web/studies/{other.study_uid}/series",
            headers={"Accept": "application/dicom+json"},
        )
        assert series.status_code == 200 and len(series.json()) == 2

        # Comparing two exams outside the budget fetches both, with the same progress display.
        pair = [network.exams[3].study_uid, network.exams[5].study_uid]
        assert all(jobs[uid]["etat"] == "a_la_demande" for uid in pair)
        compared = browser.get(
            f"{launch_url}/comparer", params=[("etude", uid) for uid in pair],
            follow_redirects=False,
        )  # fmt: skip
        assert compared.status_code == 303 and all(u in compared.headers["location"] for u in pair)
        state = wait_prefetch(browser, launch_url)
        jobs = {ids[int(k)]: v for k, v in state["images"].items()}
        assert all(jobs[uid]["etat"] == "termine" for uid in pair)
        assert all(cached_bytes(network, uid) > 0 for uid in pair)


def test_the_byte_budget_stops_the_prefetch_between_series(network: HistoryNetwork) -> None:
    """A byte budget of 1: the named exam is still fetched whole, nothing else. A budget just
    above the named exam: the first prior stops after its first series (checked between
    series), the others wait to be opened."""
    images = network.conso.node.images
    web = network.conso.node.web
    assert images is not None and web is not None and web.conso is not None
    conso = web.conso
    original = conso.config

    def launch_with(max_bytes: int) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        images.cache.purge()
        conso.config = original.model_copy(
            update={"conso": original.conso.model_copy(update={"prefetch_max_bytes": max_bytes})}
        )
        start = last_event_id(network)
        with signed_in_user(network) as browser:
            launch_url, _ = launch(browser, StudyInstanceUID=network.named.study_uid)
            state = wait_prefetch(browser, launch_url)
        ids = exam_ids(network, launch_url)
        jobs = {ids[int(k)]: v for k, v in state["images"].items()}
        return retrieved_studies(network, start), state["prechargement"], jobs

    try:
        events, summary, jobs = launch_with(1)
        assert [e["study_uid"] for e in events] == [network.named.study_uid] * 2
        named_bytes = cached_bytes(network, network.named.study_uid)
        assert summary["examens"] == 1 and summary["octets"] == named_bytes > 1
        priors = network.same_kind_as_named()[: BUDGET_EXAMS - 1]
        for prior in priors:
            assert jobs[prior.study_uid]["etat"] == "a_la_demande"
            assert "Hors du préchargement (limite de 1 octet" in jobs[prior.study_uid]["message"]

        events, summary, jobs = launch_with(named_bytes + 1)
        first = priors[0].study_uid
        assert [e["study_uid"] for e in events] == [network.named.study_uid] * 2 + [first]
        assert summary["examens"] == 1
        assert summary["octets"] == named_bytes + cached_bytes(network, first)
        assert jobs[first]["etat"] == "a_la_demande" and jobs[first]["faits"] == 2
        assert jobs[first]["message"].startswith("Préchargement partiel (limite de")
        assert all("Hors du préchargement (limite" in jobs[p.study_uid]["message"]
                   for p in priors[1:])  # fmt: skip
    finally:
        conso.config = original


def test_a_launch_prefetch_never_evicts_what_another_user_views(network: HistoryNetwork) -> None:
    """User 2 prefetches four CT head exams and views the first; the cache is then nearly full
    when user 1's launch prefetches four CT thorax exams: user 2's unopened prefetched series
    go, the viewed exam stays, and user 1's prefetch stops when only it is left."""
    images = network.conso.node.images
    assert images is not None
    cache = images.cache
    cache.purge()
    limit = cache.max_bytes
    viewed, *others = [network.exams[i] for i in (0, 4, 8, 12)]  # CT head, most recent first
    json = {"Accept": "application/dicom+json"}
    try:
        with signed_in_user(network, "radiologue-2") as second:
            launch_url, _ = launch(second, StudyInstanceUID=viewed.study_uid)
            wait_prefetch(second, launch_url)
            assert all(cached_bytes(network, e.study_uid) for e in (viewed, *others))
            second.get(f"{launch_url}/ouvrir/{viewed.study_uid}", follow_redirects=False)
            listed = second.get(f"/dicom-web/studies/{viewed.study_uid}/series", headers=json)
            assert listed.status_code == 200 and len(listed.json()) == 2
            for item in listed.json():
                uid = item["0020000E"]["Value"][0]
                metadata = second.get(
                    f"/dicom-web/studies/{viewed.study_uid}/series/{uid}/metadata", headers=json
                )
                assert metadata.status_code == 200
        exam_size = cache.usage().bytes / 4
        cache.max_bytes = int(exam_size * 3.5)
        evictions = cache.usage().evictions

        with signed_in_user(network) as first:
            launch_url, _ = launch(first, StudyInstanceUID=network.named.study_uid)
            state = wait_prefetch(first, launch_url)
        ids = exam_ids(network, launch_url)
        jobs = {ids[int(k)]: v for k, v in state["images"].items()}
        assert jobs[network.named.study_uid]["etat"] == "termine"
        # The viewed exam is whole; the other user's unopened prefetches made the room.
        assert all(cache.holds(viewed.study_uid, s) for s in viewed.study.series_uids)
        assert not any(cached_bytes(network, e.study_uid) for e in others)
        assert cache.usage().evictions - evictions >= len(others)
        full = [j for j in jobs.values() if "occupé par les images consultées" in j["message"]]
        assert full, jobs  # stopped rather than evicting the viewed exam
        assert cache.usage().bytes <= cache.max_bytes + exam_size
    finally:
        cache.max_bytes = limit


def test_an_unauthenticated_state_poll_is_refused(network: HistoryNetwork) -> None:
    with httpx.Client(base_url=network.conso.viewer_url) as anonymous:
        assert anonymous.get("/consultation/x/etat").status_code == 401


# Issue 14: run last, their prefetches fill the cache the tests above start without.


def test_every_conso_dmp_query_is_in_the_reinforced_indirect_mode(
    network: HistoryNetwork,
) -> None:
    """The Conso queries the DMP as the professional signed in with PSC: every ITI-18 and ITI-43
    VIHF says INDIRECTE_RENFORCEE (with APP_BROWSER_AUTH, or the simulator refuses it), none
    DIRECTE (which it refuses without a card)."""
    before = network.dmp.stats()
    with signed_in_user(network) as browser:
        launch_url, _ = launch(browser, StudyInstanceUID=network.named.study_uid)
        wait_prefetch(browser, launch_url)
    after = network.dmp.stats()

    def new(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    for operation in ("ITI-18", "ITI-43"):
        assert new(operation) > 0, operation
        assert new(f"{operation} mode INDIRECTE_RENFORCEE") == new(operation), operation
    assert not [name for name in after if name.endswith("mode DIRECTE")]
    assert not [name for name in after if name.startswith("Fault:")], after


def test_a_launch_as_the_ans_test_tool_sends_it(network: HistoryNetwork) -> None:
    """Field names in other cases, the consent as InformationEtConsentement, PatientIDIssuer as
    a full CX.4: the Conso opens on the patient's 40 exams."""
    form = {
        name.lower() if i % 2 else name.upper(): value
        for i, (name, value) in enumerate(launch_form().items())
        if name not in ("InformationEtOppositionConsultation", "PatientIDIssuer")
    }
    form["InformationEtConsentement"] = "true"
    form["PATIENTIDISSUER"] = "HOPITAL B&1.2.250.1.999.2.1&ISO"
    form["studyinstanceuid"] = network.named.study_uid
    with signed_in_user(network) as browser:
        page = browser.post("/lancement", data=form, headers=FROM_RIS)
        assert page.status_code == 200 and "/consultation/" in str(page.url), page.text[:2000]
        launch_url = str(page.url).split("?")[0]
        assert len(exam_ids(network, launch_url)) == 40
        wait_prefetch(browser, launch_url)
    launch_id = launch_url.rsplit("/", 1)[-1]
    with network.conso.node.db.session() as session:
        row = session.get(ConsoLaunch, launch_id)
        assert row is not None
        assert row.context["local_patient_id_issuer"] == "1.2.250.1.999.2.1"


def shown_exams(page: httpx.Response) -> set[str]:
    """The study UIDs of the history table's rows (each has its comparison checkbox)."""
    return set(re.findall(r'name="etude" value="([^"]+)"', page.text))


def named_block(page: httpx.Response) -> str:
    text = unescape(page.text)
    start = text.index('id="examen-demande"')
    return text[start : text.index("</section>", start)]


def test_the_launch_names_the_exam_and_filters_the_history(network: HistoryNetwork) -> None:
    """`StudyInstanceUID` / `AccessionNumber` put the named exam first with its viewer link;
    `Modality`, `AnatomicRegion`, `StudyDate` filter the history; the page's GET form filters
    the stored history again without any new DMP query, and says what is wrong with a date."""
    named = network.named
    kinds = {e.study_uid: (e.modality, e.region) for e in network.exams}
    with signed_in_user(network) as browser:
        launch_url, page = launch(
            browser, StudyInstanceUID=named.study_uid, Modality="ct", AnatomicRegion="THORAX"
        )
        block = named_block(page)
        assert f"/ouvrir/{named.study_uid}" in block and "Examen demandé" in block
        ct_thorax = {uid for uid, kind in kinds.items() if kind == ("CT", "Thorax")}
        assert len(ct_thorax) == 10 and shown_exams(page) == ct_thorax
        assert "10 examens sur 40 correspondent aux filtres." in unescape(page.text)
        wait_prefetch(browser, launch_url)

        before = network.dmp.stats()
        mr = browser.get(launch_url, params={"filtre": "1", "modalite": "MR"})
        assert mr.status_code == 200
        assert shown_exams(mr) == {uid for uid, kind in kinds.items() if kind[0] == "MR"}
        assert f"/ouvrir/{named.study_uid}" in named_block(mr)  # the named exam stays on top
        head = browser.get(launch_url, params={"filtre": "1", "region": "head"})
        assert shown_exams(head) == {uid for uid, kind in kinds.items() if kind[1] == "Head"}
        recent = [e for e in network.exams if e.index < 5]
        period = browser.get(launch_url, params={
            "filtre": "1", "du": recent[-1].when.date().isoformat(),
            "au": recent[0].when.date().isoformat(),
        })  # fmt: skip
        assert shown_exams(period) == {e.study_uid for e in recent}
        everything = browser.get(launch_url, params={"filtre": "1"})
        assert len(shown_exams(everything)) == 40
        assert "40 examens." in everything.text
        bad = browser.get(launch_url, params={"filtre": "1", "du": "2025-13-01", "au": "x"})
        assert bad.status_code == 400 and len(shown_exams(bad)) == 40
        text = unescape(bad.text)
        assert "Date de début invalide (reçu « 2025-13-01 ») : format AAAA-MM-JJ attendu." in text
        assert "Date de fin invalide (reçu « x »)" in text
        backwards = browser.get(
            launch_url, params={"filtre": "1", "du": "2025-06-01", "au": "2024-01-01"}
        )
        assert backwards.status_code == 400
        assert "La date de début est après la date de fin" in unescape(backwards.text)
        nothing = browser.get(launch_url, params={"filtre": "1", "modalite": "US"})
        assert not shown_exams(nothing)
        assert "Aucun examen ne correspond aux filtres" in unescape(nothing.text)
        assert network.dmp.stats() == before  # filtered from the stored history

        # The accession names the exam too; the launch's StudyDate is that exam's day.
        launch_url, page = launch(
            browser, AccessionNumber=named.study.accession,
            StudyDate=named.when.date().strftime("%Y%m%d"),
        )  # fmt: skip
        assert f"/ouvrir/{named.study_uid}" in named_block(page)
        assert shown_exams(page) == {named.study_uid}
        wait_prefetch(browser, launch_url)


def test_every_launch_is_audited_with_its_reason(network: HistoryNetwork) -> None:
    """Accepted and refused launches, and a launch refused when opened, are in the audit
    trail with the patient (when the form named a valid INS) and why."""
    start = last_event_id(network)
    with httpx.Client(base_url=network.conso.viewer_url, timeout=60, headers=FROM_RIS) as ris:
        refused = ris.post(
            "/lancement", data=launch_form(**{"Patient.identifier.system": "urn:oid:1.2.3"})
        )
        assert refused.status_code == 400
        accepted = ris.post(
            "/lancement", data=launch_form(StudyInstanceUID=network.named.study_uid)
        )
        assert accepted.status_code == 303
        form_type = {"Content-Type": "application/x-www-form-urlencoded"}
        garbage = ris.post("/lancement", content=b"\xff" * 40, headers=form_type)
        assert garbage.status_code == 400
    launch_id = accepted.headers["location"].rsplit("/", 1)[-1]
    with network.conso.node.db.session() as session:
        row = session.get(ConsoLaunch, launch_id)
        assert row is not None
        row.open_by = datetime.now(UTC) - timedelta(minutes=1)
    with signed_in_user(network) as browser:
        assert browser.get(f"/consultation/{launch_id}").status_code == 410
        assert browser.get("/consultation/inconnu").status_code == 404

    events = [e for e in audit.events(network.conso.node.db) if e["id"] > start]
    launches = [e for e in events if e["action"] == "launch"]
    assert [e["result"] for e in launches] == ["refused", "ok", "refused"]
    bad_oid, ok, unreadable = launches
    assert bad_oid["patient_ins"] == CR_C_INS
    assert any("OID d'INS attendu" in reason for reason in bad_oid["detail"]["reason"])
    assert ok["patient_ins"] == CR_C_INS and ok["study_uid"] == network.named.study_uid
    assert ok["detail"]["reason"] == "lancement accepté" and ok["detail"]["consent"] is True
    assert launch_id not in str(ok)  # the launch's capability is not written out
    assert unreadable["patient_ins"] == "" and unreadable["detail"]["reason"]
    assert all(e["remote"] == "127.0.0.1" for e in launches)
    opened = [e for e in events if e["action"] == "launch_open"]
    assert [(e["result"], e["detail"]["status"]) for e in opened] == [
        ("refused", 410),
        ("refused", 404),
    ]
    assert opened[0]["patient_ins"] == CR_C_INS and "expiré" in opened[0]["detail"]["reason"]
    assert opened[0]["actor"] == "899700100011"
