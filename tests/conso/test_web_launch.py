"""The Conso web service without a network: launches stored and bound to the session that opens
them, expiry, the report body of the official CDA, and the image service's source-aware path
(a study of another site is never asked of the local PACS)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest

from drimbox.config import Config, load_config
from drimbox.conso.launch import LaunchContext
from drimbox.db import Database, utcnow
from drimbox.db.models import ConsoExam, ConsoLaunch
from drimbox.dicom.retrieve import ImageService, RemoteSourceError, RemoteStudies
from drimbox.samples import ANS_DIR
from drimbox.sim.psc import TWO_SITES_PHYSICIAN
from drimbox.source.grants import Grants
from drimbox.web.conso_routes import (
    ConsoService,
    LaunchRefused,
    context_from_json,
    context_to_json,
    format_ins,
    report_body,
)
from drimbox.web.sessions import DbSessionStore, SessionView

CONTEXT = LaunchContext(
    ins="279035121518989",
    ins_oid="1.2.250.1.213.1.4.10",
    family_name="PAT-TROIS",
    given_names=("DOMINIQUE",),
    gender="F",
    birth_date=date(1979, 3, 28),
    district="75056",
    local_patient_id="IPP-B-1",
    local_patient_id_issuer="1.2.250.1.999.2.1",
    consent=True,
    study_date=date(2021, 1, 8),
)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(
        environ={
            "DRIMBOX_STORE__DATABASE_URL": f"sqlite:///{tmp_path / 'conso.db'}",
            "DRIMBOX_STORE__CACHE_DIR": str(tmp_path / "cache"),
            "DRIMBOX_PACS__PORT": "9",
            "DRIMBOX_PACS__TIMEOUT_S": "1",
        }
    )


@pytest.fixture
def db(config: Config) -> Iterator[Database]:
    database = Database(config.store.database_url)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def service(config: Config, db: Database) -> Iterator[ConsoService]:
    sessions = DbSessionStore(db, b"k" * 32, max_age=timedelta(hours=1))
    conso = ConsoService(config, db, sessions, ImageService(config), None)
    yield conso
    conso.close()


def test_context_survives_the_database() -> None:
    assert context_from_json(context_to_json(CONTEXT)) == CONTEXT
    assert format_ins("279035121518989") == "2 79 03 51 215 189 89"


def test_a_launch_is_bound_to_the_first_session_that_opens_it(service: ConsoService) -> None:
    launch_id = service.store_launch(CONTEXT)
    assert len(launch_id) >= 40
    opened = service.open_launch(launch_id, "cookie-a")
    assert opened.context == CONTEXT and not opened.history_loaded
    assert service.open_launch(launch_id, "cookie-a").id == launch_id  # again: same session
    with pytest.raises(LaunchRefused) as other:
        service.open_launch(launch_id, "cookie-b")
    assert other.value.status == 403
    with pytest.raises(LaunchRefused) as unknown:
        service.open_launch("nope", "cookie-a")
    assert unknown.value.status == 404


def test_an_unopened_launch_expires(service: ConsoService, db: Database) -> None:
    launch_id = service.store_launch(CONTEXT)
    with db.session() as session:
        row = session.get(ConsoLaunch, launch_id)
        assert row is not None
        row.open_by = utcnow() - timedelta(seconds=1)
    with pytest.raises(LaunchRefused) as expired:
        service.open_launch(launch_id, "cookie-a")
    assert expired.value.status == 410 and "expiré" in str(expired.value)


def test_the_official_report_body_is_its_pdf() -> None:
    kind, content = report_body((ANS_DIR / "cda" / "CR_C.xml").read_bytes())
    assert kind == "pdf" and isinstance(content, bytes) and content.startswith(b"%PDF")
    assert report_body(b"<not-xml")[0] == "none"


def test_a_study_of_another_site_is_never_asked_of_the_local_pacs(
    config: Config, db: Database, service: ConsoService
) -> None:
    launch_id = service.store_launch(CONTEXT)
    with db.session() as session:
        session.add(ConsoExam(launch_id=launch_id, study_uid="1.2.3.4", accession="", summary={},
                              created_at=utcnow()))  # fmt: skip
    grants = Grants(db)
    assert grants.is_conso_study("1.2.3.4") and not grants.is_conso_study("1.2.3.5")
    images = ImageService(config, remote=RemoteStudies(grants.is_conso_study))

    async def open_series() -> None:
        async with images.fetcher.series("1.2.3.4", "1.2.3.4.1") as entry:
            await entry.wait_done()

    with pytest.raises(RemoteSourceError, match="autre site"):
        asyncio.run(open_series())
    assert images.fetcher.retrievals == 0 and images.fetcher.remote_retrievals == 1
    with pytest.raises(RemoteSourceError):
        images.pacs.find_series("1.2.3.4")  # QIDO: no C-FIND to the PACS either


def test_the_launch_names_the_situation_d_exercice(service: ConsoService) -> None:
    """A DPI that sends `Situation` (a structure identifier or a situation key) spares a user
    with several situations the choice page; anything else still asks."""
    claims = TWO_SITES_PHYSICIAN.userinfo()
    view = SessionView(
        cookie="c",
        subject="s",
        subject_name_id=str(claims.get("SubjectNameID", "s")),
        display_name="D",
        userinfo=claims,
        situation_key=None,
        studies=frozenset(),
        expires_at=utcnow() + timedelta(hours=1),
    )
    situations = view.user.situations()
    assert len(situations) == 2 and view.user.must_choose_situation
    second = situations[1]
    assert second.activity is not None

    def chosen(situation: str | None) -> str | None:
        launch_id = service.store_launch(replace(CONTEXT, situation=situation))
        return service.situation_of_launch(service.open_launch(launch_id, "c"), view)

    assert chosen(second.activity.national_structure_id) == second.key
    assert chosen(second.activity.structure_id) == second.key
    assert chosen(situations[0].key) == situations[0].key
    assert chosen("999999999") is None  # a structure where this user does not work
    assert chosen(None) is None
