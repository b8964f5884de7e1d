"""ANS launch statistics: every contextual launch, accepted or refused, becomes a ModelStat row
(`drimbox stats export`), and the monthly usage figures (launches, KOS published and withdrawn,
images served and retrieved, exports) reach the CSV and the administration console — over a real
Conso node, its launch form posted on its socket."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from html import unescape
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from drimbox.cli import app
from drimbox.db import Database
from drimbox.db.models import LaunchStat
from drimbox.french import PARIS, french_month
from drimbox.ops.stats import (
    MODELSTAT_COLUMNS,
    MONTH_COLUMNS,
    day_range,
    launch_rows,
    monthly,
    months_back,
)
from drimbox.sim.psc import LocalPsc
from drimbox.trust import audit
from support.history import launch_form
from support.node import RIS_ORIGIN, RunningNode, node_config, signed_in

ADMIN = "899700100011"  # the PSC simulator's `radiologue`


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningNode]:
    with LocalPsc() as psc:
        config = node_config(tmp_path, None, {
            **psc.node_environ(),
            "DRIMBOX_ROLES__CONSO": "true",
            "DRIMBOX_ADMIN__USERS": ADMIN,
            "DRIMBOX_NODE__NAME": "conso-1",
            "DRIMBOX_PACS__PORT": "9",
            "DRIMBOX_PACS__TIMEOUT_S": "1",
        })  # fmt: skip
        with RunningNode(config) as running:
            yield running


def launch_twice_and_refuse_once(node: RunningNode) -> None:
    """Two accepted launches and a refused one (INS missing, birth date invalid), as a RIS
    posts them."""
    with httpx.Client(base_url=node.viewer_url, follow_redirects=False, timeout=30,
                      headers={"Origin": RIS_ORIGIN}) as ris:  # fmt: skip
        for _ in range(2):
            assert ris.post("/lancement", data=launch_form()).status_code == 303
        refused = ris.post(
            "/lancement",
            data=launch_form(**{"Patient.identifier.value": "", "Patient.birthDate": "28/03"}),
        )
        assert refused.status_code == 400


def record_usage(node: RunningNode) -> None:
    """What the audit trail holds after a month of use; only successes count, and only image
    data sent to a peer counts as served."""
    db = node.node.db
    events: list[tuple[str, audit.Role, audit.Result]] = [
        ("dmp_publish", "system", "ok"),
        ("dmp_publish", "system", "ok"),
        ("dmp_publish", "system", "refused"),  # parked: not published
        ("dmp_delete", "system", "ok"),
        ("image_retrieve_series", "peer", "ok"),
        ("image_retrieve_instance", "peer", "ok"),
        ("image_retrieve_metadata", "peer", "ok"),  # metadata, not images
        ("image_retrieve_series", "peer", "refused"),
        ("image_retrieve_series", "user", "ok"),  # the local viewer, not a peer
        ("wado_rs_retrieve", "user", "ok"),
        ("wado_rs_retrieve", "user", "error"),
        ("export_pacs", "user", "ok"),
        ("xdm_export", "user", "ok"),
        ("login", "user", "ok"),
    ]
    for action, role, result in events:
        audit.record(db, actor="x", role=role, action=action, result=result)


def export(node: RunningNode, tmp_path: Path, *extra: str) -> list[list[str]]:
    conf = tmp_path / "drimbox.toml"
    conf.write_text(
        f'[store]\ndatabase_url = "{node.config.store.database_url}"\n'
        f'cache_dir = "{tmp_path / "cli-cache"}"\n',
        encoding="utf-8",
    )
    today = datetime.now(PARIS).date()
    out = tmp_path / "stats.csv"
    result = CliRunner().invoke(app, [
        "stats", "export", "--config", str(conf), "--from", str(today - timedelta(days=1)),
        "--to", str(today), "-o", str(out), *extra,
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "écrits dans" in result.output
    with out.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.reader(handle, delimiter=";"))


def test_every_launch_is_a_modelstat_row(node: RunningNode, tmp_path: Path) -> None:
    launch_twice_and_refuse_once(node)
    with node.node.db.session() as session:  # a launch of last year: outside the period
        session.add(LaunchStat(at=datetime(2025, 1, 1, tzinfo=UTC), node="conso-1", ok=True))
    rows = export(node, tmp_path)
    assert tuple(rows[0]) == MODELSTAT_COLUMNS
    launches = [dict(zip(MODELSTAT_COLUMNS, row, strict=True)) for row in rows[1:]]
    assert [r["Statut_Appel"] for r in launches] == ["succes", "succes", "erreur"]
    assert {r["Nombre_Appel"] for r in launches} == {"1"} and {r["Noeud"] for r in launches} == {
        "conso-1"
    }
    assert all(r["Motif_Erreur"] == "" for r in launches[:2])
    reason = launches[2]["Motif_Erreur"]
    assert "Patient.identifier.value" in reason and "Patient.birthDate" in reason
    assert "28/03" not in reason  # the field, never the value sent: the file leaves the site
    when = datetime.strptime(f"{launches[0]['Date_Appel']} {launches[0]['Heure_Appel']}",
                             "%d/%m/%Y %H:%M:%S").replace(tzinfo=PARIS)  # fmt: skip
    assert abs(datetime.now(PARIS) - when) < timedelta(minutes=5)  # Paris time, not UTC


def test_monthly_summary_counts_each_figure(node: RunningNode, tmp_path: Path) -> None:
    launch_twice_and_refuse_once(node)
    record_usage(node)
    rows = export(node, tmp_path, "--mensuel")
    assert tuple(rows[0]) == MONTH_COLUMNS
    by_month = {row[0]: dict(zip(MONTH_COLUMNS[1:], map(int, row[1:]), strict=True))
                for row in rows[1:]}  # fmt: skip
    this_month = datetime.now(PARIS).strftime("%Y-%m")
    figures = by_month.pop(this_month)
    if by_month:  # the period's first day may fall in the previous month: nothing there
        assert all(not any(v.values()) for v in by_month.values())
    assert figures == {
        "Lancements_Succes": 2,
        "Lancements_Erreur": 1,
        "KOS_Publies": 2,
        "KOS_Retires": 1,
        "Recuperations_Servies": 2,
        "Recuperations_Effectuees": 1,
        "Exports": 2,
    }


def test_bad_dates_are_refused_in_french(tmp_path: Path) -> None:
    runner = CliRunner()
    out = str(tmp_path / "s.csv")
    wrong = runner.invoke(app, ["stats", "export", "--from", "01/12/2026", "--to", "2026-12-31",
                                "-o", out])  # fmt: skip
    assert wrong.exit_code == 1 and "date invalide pour --from" in wrong.output
    backwards = runner.invoke(app, ["stats", "export", "--from", "2026-12-31", "--to",
                                    "2026-12-01", "-o", out])  # fmt: skip
    assert backwards.exit_code == 1 and "période vide" in backwards.output


def test_months_and_days_are_paris_ones(database: Database) -> None:
    """00:30 in Paris on 1 March is 23:30 UTC on 28 February: a March launch, inside a period
    starting on 1 March, outside one ending on 28 February (SQLite keeps no zone, PostgreSQL
    does: both give the same answer)."""
    with database.session() as session:
        at = datetime(2026, 3, 1, 0, 30, tzinfo=PARIS).astimezone(UTC)  # stored as UTC
        session.add(LaunchStat(at=at, node="n1", ok=False, reason="r"))
    march = monthly(database, *day_range(date(2026, 3, 1), date(2026, 3, 31)))
    assert [(m.month, m.launches_refused) for m in march] == [("2026-03", 1)]
    assert monthly(database, *day_range(date(2026, 2, 1), date(2026, 2, 28))) == []
    rows = launch_rows(database, *day_range(date(2026, 3, 1), date(2026, 3, 1)))
    assert rows == [["01/03/2026", "00:30:00", "n1", "1", "erreur", "r"]]


def test_months_back_spans_whole_months() -> None:
    assert months_back(date(2026, 12, 7), 12) == date(2026, 1, 1)
    assert months_back(date(2026, 3, 31), 12) == date(2025, 4, 1)
    assert months_back(date(2026, 1, 15), 1) == date(2026, 1, 1)


def test_console_table_for_administrators_only(node: RunningNode) -> None:
    launch_twice_and_refuse_once(node)
    record_usage(node)
    browser = signed_in(node, "radiologue")
    try:
        page = browser.get(f"{node.viewer_url}/admin/statistiques")
    finally:
        browser.close()
    text = unescape(page.text)
    assert page.status_code == 200 and "Statistiques d'usage" in text
    assert 'href="/admin/statistiques"' in text  # the console's tab
    month = french_month(datetime.now(PARIS).strftime("%Y-%m"))
    row = text.split(f"<td>{month}</td>", 1)[1].split("</tr>", 1)[0]
    assert [cell.split("</td>")[0] for cell in row.split("<td>")[1:]] == [
        "2", "1", "2", "1", "2", "1", "2"
    ]  # fmt: skip
    other = signed_in(node, "medecin-deux-situations")
    try:
        refused = other.get(f"{node.viewer_url}/admin/statistiques")
    finally:
        other.close()
    assert refused.status_code == 403 and "réservée aux administrateurs" in refused.text
    assert month not in unescape(refused.text)
