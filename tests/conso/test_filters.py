"""The history filters (`drimbox.conso.filters`): the launch's defaults, the page's GET form, and
that no query string makes it raise (it reads what a browser sends)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from hypothesis import example, given, settings
from hypothesis import strategies as st

from drimbox.conso.filters import HistoryFilter, filter_from_query
from drimbox.conso.launch import parse_launch
from support.history import launch_form

LAUNCH = parse_launch(launch_form(Modality="ct", AnatomicRegion="Crâne", StudyDate="20240305"))
PLAIN = replace(LAUNCH, modality=None, anatomic_region=None, study_date=None)


def test_the_launch_gives_the_filters_until_the_form_is_sent() -> None:
    wanted, errors = filter_from_query({}, LAUNCH)
    assert errors == [] and wanted.active
    assert wanted == HistoryFilter("CT", "Crâne", date(2024, 3, 5), date(2024, 3, 5))
    assert wanted.matches(date(2024, 3, 5), ["CT", "SR"], ["crane"])  # case, accents
    assert not wanted.matches(date(2024, 3, 6), ["CT"], ["Crâne"])
    assert not wanted.matches(date(2024, 3, 5), ["MR"], ["Crâne"])
    assert not wanted.matches(None, ["CT"], ["Crâne"])  # undated: not in a period
    sent, errors = filter_from_query({"filtre": "1"}, LAUNCH)
    assert errors == [] and not sent.active and sent.matches(None, [], [])
    assert not filter_from_query({}, PLAIN)[0].active


def test_the_form_s_dates_are_checked_in_french() -> None:
    wanted, errors = filter_from_query(
        {"filtre": "1", "modalite": " mr ", "du": "2024-01-01", "au": "2024-12-31"}, PLAIN
    )
    assert errors == [] and wanted.modality == "MR"
    assert wanted.matches(date(2024, 1, 1), ["MR"], []) and wanted.matches(date(2024, 12, 31),
                                                                           ["MR"], [])  # fmt: skip
    assert not wanted.matches(date(2025, 1, 1), ["MR"], [])
    wanted, errors = filter_from_query({"filtre": "1", "du": "01/02/2024"}, PLAIN)
    assert wanted.date_from is None
    assert errors == ["Date de début invalide (reçu « 01/02/2024 ») : format AAAA-MM-JJ attendu."]
    wanted, errors = filter_from_query({"filtre": "1", "du": "2024-02-01", "au": "2024-01-01"},
                                       PLAIN)  # fmt: skip
    assert (wanted.date_from, wanted.date_to) == (None, None)
    assert errors == ["La date de début est après la date de fin : période ignorée."]
    assert filter_from_query({"filtre": "1", **wanted.as_query()}, PLAIN) == (wanted, [])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["filtre", "modalite", "region", "du", "au", "x"]),
                       st.text(max_size=300)))  # fmt: skip
@example({"modalite": "0" * 15 + " X"})  # found by this test: the cut ended on a space
def test_no_query_makes_the_filter_raise(params: dict[str, str]) -> None:
    wanted, errors = filter_from_query(params, LAUNCH)
    assert all(e.endswith(".") for e in errors)
    assert len(wanted.modality or "") <= 16 and len(wanted.region or "") <= 128
    wanted.matches(date(2024, 3, 5), ["CT"], ["Crâne"])
    assert filter_from_query(wanted.as_query(), LAUNCH)[0] == wanted
