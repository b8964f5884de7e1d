"""Speed tests as product commands: a real study retrieved from a real Orthanc by each method,
a real Source node over mutual TLS, the figures checked against the study's known size, the
refusals (unreachable PACS, unknown study, peer off the whitelist), the record and its flag."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import JPEGLSLossless
from typer.testing import CliRunner

from drimbox.cli import app
from drimbox.config import Config
from drimbox.db import Database, SpeedTest
from drimbox.ops.speedtest import (
    SpeedResult,
    SpeedTestError,
    latest_results,
    pacs_speedtest,
    peer_speedtest,
    record,
)
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ports import free_port
from drimbox.sim.studies import SeriesSpec, generate_study_for_report
from drimbox.trust import audit
from support.factories import make_report
from support.node import RunningNode, node_config
from support.site import Site, peer_view, source_site
from support.source import orthanc_moving_to

BOX_AET = "DRIMBOXST"
runner = CliRunner()


@pytest.fixture(scope="module")
def scp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def pacs(scp_port: int) -> Iterator[LocalOrthanc]:
    with orthanc_moving_to("ORTHANCST", BOX_AET, scp_port) as orthanc:
        yield orthanc


@pytest.fixture(scope="module")
def study(pacs: LocalOrthanc, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two series, 7 JPEG-LS images: the known study the figures are checked against."""
    report = make_report()
    files = generate_study_for_report(
        tmp_path_factory.mktemp("study"),
        report,
        [SeriesSpec("CT", "Thorax", 5), SeriesSpec("CT", "Abdomen", 2)],
        rows=96,
        columns=96,
        transfer_syntax=JPEGLSLossless,
    )
    pacs.store_files(files)
    return files


def pacs_config(tmp_path: Path, pacs: LocalOrthanc, scp_port: int, **pacs_keys: str) -> Config:
    keys = {"calling_aet": BOX_AET, "scp_port": scp_port, "dicomweb_url": pacs.dicomweb_url}
    return node_config(tmp_path, pacs, pacs=keys | pacs_keys)


def toml_for(tmp_path: Path, config: Config) -> Path:
    """The configuration as a file, for the command line."""
    lines = []
    for section in ("pacs", "store", "trust", "checks"):
        lines.append(f"[{section}]")
        for key, value in getattr(config, section).model_dump().items():
            lines.append(f"{key} = {json.dumps(value)}")
    path = tmp_path / "drimbox.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("mode", ["c-get", "c-move", "wado-rs"])
def test_pacs_speedtest_retrieves_the_known_study(
    mode: str, tmp_path: Path, pacs: LocalOrthanc, scp_port: int, study: list[Path]
) -> None:
    config = pacs_config(tmp_path, pacs, scp_port)
    study_uid = str(dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)
    result = pacs_speedtest(config, study_uid=study_uid, mode=mode)
    assert result.ok and result.mode == mode and result.study_uid == study_uid
    assert result.images == result.expected_images == len(study) == 7
    # Stored as JPEG-LS, received as JPEG-LS: the box never asks the PACS to transcode.
    assert result.transfer_syntaxes == {JPEGLSLossless: 7}
    on_disk = sum(p.stat().st_size for p in study)
    if mode == "wado-rs":
        assert result.bytes == on_disk  # Orthanc sends its files as stored
    else:
        # DIMSE carries the dataset; the file meta is rebuilt on receipt (a few bytes each).
        assert abs(result.bytes - on_disk) <= 7 * 256
    assert result.first_image_s is not None and 0 < result.first_image_s <= result.seconds
    assert result.throughput_bps == pytest.approx(result.bytes / result.seconds)
    lines = dict(result.summary())
    assert lines["Images"] == "7" and "JPEG-LS Lossless" in lines["Syntaxe de transfert reçue"]


def test_latest_study_and_the_command_line(
    tmp_path: Path, pacs: LocalOrthanc, scp_port: int, study: list[Path]
) -> None:
    config = pacs_config(tmp_path, pacs, scp_port)
    path = toml_for(tmp_path, config)
    outcome = runner.invoke(
        app, ["pacs", "speedtest", "--config", str(path), "--latest", "--mode", "c-get", "--json"]
    )
    assert outcome.exit_code == 0, outcome.output
    figures = json.loads(outcome.stdout)
    assert figures["images"] == 7 and figures["mode"] == "c-get"
    assert figures["study_uid"] == str(dcmread(study[0]).StudyInstanceUID)
    assert figures["throughput_mb_s"] > 0 and figures["transfer_syntaxes"] == {JPEGLSLossless: 7}
    text = runner.invoke(app, ["pacs", "speedtest", "--config", str(path)])
    assert text.exit_code == 0 and "Première image" in text.stdout and "o/s (" in text.stdout
    db = Database(config.store.database_url)
    rows = latest_results(db)
    db.dispose()
    assert [(r.kind, r.mode, r.images, r.ok) for r in rows] == [("pacs", "c-get", 7, True)]


def test_unknown_study_and_unreachable_pacs_are_refused_in_french(
    tmp_path: Path, pacs: LocalOrthanc, scp_port: int, study: list[Path]
) -> None:
    config = pacs_config(tmp_path, pacs, scp_port)
    with pytest.raises(SpeedTestError, match=r"examen 1\.2\.3\.4\.5 inconnu du PACS ORTHANCST@"):
        pacs_speedtest(config, study_uid="1.2.3.4.5", mode="c-get")
    path = toml_for(tmp_path, config)
    unknown = runner.invoke(app, ["pacs", "speedtest", "-c", str(path), "--study", "1.2.3.4.5"])
    assert unknown.exit_code == 1 and "inconnu du PACS" in unknown.stderr
    assert "Traceback" not in unknown.output
    stopped = pacs_config(tmp_path, pacs, scp_port, port=str(free_port()))
    with pytest.raises(SpeedTestError, match="injoignable : aucune connexion TCP"):
        pacs_speedtest(stopped, study_uid="1.2.3.4.5", mode="c-move")
    down = runner.invoke(app, ["pacs", "speedtest", "-c", str(toml_for(tmp_path, stopped))])
    assert down.exit_code == 1 and "injoignable" in down.stderr
    wrong = runner.invoke(app, ["pacs", "speedtest", "-c", str(path), "--mode", "c-find"])
    assert wrong.exit_code == 1 and "méthode « c-find » inconnue" in wrong.stderr
    # Failed runs are kept too: the status page shows the PACS as failing.
    db = Database(config.store.database_url)
    rows = latest_results(db)
    db.dispose()
    assert all(not r.ok and r.error for r in rows) and len(rows) == 3


def test_a_result_far_below_the_previous_one_is_flagged(database: Database) -> None:
    before = datetime.now(UTC) - timedelta(days=1)
    first = SpeedResult("pacs", "PACS@h:104", "c-get", "1.2", at=before, images=100,
                        bytes=50_000_000, seconds=1.0, first_image_s=0.05)  # fmt: skip
    assert record(database, first).flag == ""
    close = SpeedResult("pacs", "PACS@h:104", "c-get", "1.2", images=100, bytes=50_000_000,
                        seconds=1.6, first_image_s=0.06)  # fmt: skip
    assert record(database, close).flag == ""
    slow = SpeedResult("pacs", "PACS@h:104", "c-get", "1.2", images=100, bytes=50_000_000,
                       seconds=5.0, first_image_s=0.06)  # fmt: skip
    flag = record(database, slow).flag
    assert "débit nettement inférieur" in flag and "10,0 Mo/s contre 31,2 Mo/s" in flag
    # Another method or another PACS is not compared with this one.
    other = SpeedResult("pacs", "PACS@h:104", "wado-rs", "1.2", images=1, bytes=1, seconds=9.0)
    assert record(database, other).flag == ""
    with database.session() as session:
        assert session.query(SpeedTest).count() == 4
    latest = latest_results(database)
    assert [(r.mode, bool(r.flag)) for r in latest] == [("wado-rs", False), ("c-get", True)]


# -- a peer ---------------------------------------------------------------------------------------


@pytest.fixture
def site(orthanc: LocalOrthanc, tmp_path: Path) -> Iterator[Site]:
    with source_site(orthanc, tmp_path / "site") as running:
        yield running


def conso_config(site: Site, tmp_path: Path, token: str = "") -> Config:
    """Another box (site B) whose whitelist names the site's node as `localhost`."""
    environ = peer_view(site, tmp_path / "conso", site.trusted_peer)
    environ["DRIMBOX_CHECKS__PEER_TOKEN"] = token
    return node_config(tmp_path / "conso", None, environ)


def stored_in_orthanc(orthanc: LocalOrthanc, series_uids: list[str]) -> tuple[int, int]:
    """Images and bytes of these series as the PACS holds them (its files' sizes)."""
    images = size = 0
    for uid in series_uids:
        (found,) = orthanc.client.post("/tools/lookup", content=uid).json()
        for instance in orthanc.client.get(f"/series/{found['ID']}/instances").json():
            images += 1
            size += int(instance["FileSize"])
    return images, size


def test_peer_speedtest_over_mutual_tls(site: Site, orthanc: LocalOrthanc, tmp_path: Path) -> None:
    token = site.psc.mint_access_token("radiologue")
    config = conso_config(site, tmp_path, token)
    host = "localhost:" + site.node.peer_url.rsplit(":", 1)[1]
    result = peer_speedtest(
        config, host, study_uid=site.study_uid, kos_uid=site.kos_uid, token=token
    )
    assert result.ok and result.kind == "peer" and result.target == host
    # The KOS's 4 + 2 images, uncompressed in the Source's PACS: asked with the official
    # DRIM-M Accept list, they come as its first choice, JPEG Lossless SV1 (fewer bytes).
    images, stored = stored_in_orthanc(orthanc, site.series_uids)
    assert result.images == images == 6
    assert result.transfer_syntaxes == {"1.2.840.10008.1.2.4.70": 6}
    assert 0 < result.bytes < stored, (result.bytes, stored)
    assert result.latency_s is not None and result.first_image_s is not None
    assert 0 < result.latency_s <= result.first_image_s <= result.seconds
    # Without an exam: a probe, latency only (the Source answers an unknown study with 4xx).
    probe = peer_speedtest(config, host, token=token)
    assert probe.ok and probe.images == 0 and probe.latency_s is not None
    assert "HTTP 404" in probe.note
    # The command line, with the configured test token.
    path = toml_for(tmp_path, config)
    outcome = runner.invoke(app, ["peer", "speedtest", host, "-c", str(path), "--study",
                                  site.study_uid, "--kos", site.kos_uid, "--json"])  # fmt: skip
    assert outcome.exit_code == 0, outcome.output
    assert json.loads(outcome.stdout)["images"] == 6


def test_peer_refusals(site: Site, tmp_path: Path) -> None:
    token = site.psc.mint_access_token("radiologue")
    config = conso_config(site, tmp_path, token)
    port = site.node.peer_url.rsplit(":", 1)[1]
    # Off the whitelist: refused before any network contact.
    with pytest.raises(SpeedTestError, match="n'est pas dans la liste blanche"):
        peer_speedtest(config, f"db9.test.fr:{port}", token=token)
    path = toml_for(tmp_path, config)
    off = runner.invoke(app, ["peer", "speedtest", "db9.test.fr", "-c", str(path)])
    assert off.exit_code == 1 and "liste blanche" in off.stderr
    # A token the Source does not accept.
    host = f"localhost:{port}"
    with pytest.raises(SpeedTestError, match="Pro Santé Connect"):
        peer_speedtest(config, host, study_uid=site.study_uid, kos_uid=site.kos_uid,
                       token="not-a-token")  # fmt: skip
    # Our certificate is not on the Source's whitelist: it says so (403).
    outsider = node_config(tmp_path / "z", None, peer_view(site, tmp_path / "z", site.unknown_peer))
    with pytest.raises(SpeedTestError, match="refuse"):
        peer_speedtest(outsider, host, study_uid=site.study_uid, kos_uid=site.kos_uid,
                       token=token)  # fmt: skip
    # An exam without its KOS makes no sense to a Source.
    with pytest.raises(SpeedTestError, match="--study et --kos vont ensemble"):
        peer_speedtest(config, host, study_uid=site.study_uid)


def test_peer_speedtest_from_the_console_with_the_operator_token(
    site: Site, tmp_path: Path
) -> None:
    """Site B's administrator measures site A from the status page, with their own PSC sign-in."""
    admin = "899700100011"  # the PSC simulator's `radiologue`
    environ = (
        peer_view(site, tmp_path / "conso", site.trusted_peer)
        | site.psc.node_environ()
        | {"DRIMBOX_ADMIN__USERS": admin}
    )
    host = "localhost:" + site.node.peer_url.rsplit(":", 1)[1]
    with (
        RunningNode(node_config(tmp_path / "conso", None, environ)) as conso,
        httpx.Client(follow_redirects=True, timeout=60) as browser,
    ):
        base = conso.viewer_url
        browser.headers["Origin"] = base  # the console's forms post from the origin
        browser.get(f"{base}/connexion", params={"login_hint": "radiologue", "next": "/admin"})
        form = browser.get(f"{base}/admin").text
        assert 'action="/admin/debit"' in form and '<option value="localhost">' in form
        fields = {"hote": host, "examen": site.study_uid, "kos": site.kos_uid}
        page = browser.post(f"{base}/admin/debit", data=fields)
        assert page.status_code == 200
        assert f"Test de débit vers {host} : réussi" in page.text
        assert "6 images" in page.text  # the result, on the status page
        blank = browser.post(f"{base}/admin/debit", data={"hote": " "})
        assert "Indiquez le nom db… de la DRIMbox à mesurer." in blank.text
        # The token really is the operator's: signed out, nothing is measured.
        browser.cookies.clear()
        refused = browser.post(f"{base}/admin/debit", data=fields, follow_redirects=False)
        assert refused.status_code == 303 and "/connexion" in refused.headers["location"]
        rows = latest_results(conso.node.db)
        events = audit.events(conso.node.db, actor=admin)
    assert [(r.kind, r.target, r.images, r.ok) for r in rows] == [("peer", host, 6, True)]
    assert any(e["action"] == "peer_speedtest" and e["result"] == "ok" for e in events)
