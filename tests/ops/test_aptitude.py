"""The site acceptance check against a network built like the demo's site A (Orthanc with an
exam, the DMP and PSC simulators over their real protocols, a test IGC, a whitelist signed at
start, the running node): every check OK; then each dependency broken in turn (stopped PACS,
expired certificate, unsigned whitelist, DMP down, wrong PSC client), each failure named in the
report; the printed report fits one A4 page (Chromium, print media)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from drimbox.cli import app
from drimbox.config import Config, load_config
from drimbox.demo import DemoPorts, Trust, make_trust, site_config
from drimbox.hl7.message import parse_report_message
from drimbox.ops.aptitude import AptitudeReport, run_aptitude
from drimbox.ops.report import render_html
from drimbox.samples import ANS_DIR
from drimbox.sim.dmp.server import LocalDmp
from drimbox.sim.dmp.settings import DmpSimSettings
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ports import free_port
from drimbox.sim.psc import LocalPsc
from drimbox.sim.studies import SeriesSpec, generate_study_for_report
from support.node import RunningNode
from support.samples import hl7_text
from support.tools import chromium

TEST_PATIENT = "279035121518989"  # known to the DMP simulator (the official samples' INS)
UNSIGNED = ANS_DIR / "whitelist" / "LISTEBLANCHE_DRIM-M_NONSIGNEE_TEST.xml"
runner = CliRunner()


@dataclass
class Network:
    folder: Path
    trust: Trust
    config: Config
    path: Path  # the site's drimbox.toml
    node: RunningNode


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    folder = tmp_path_factory.mktemp("aptitude")
    ports = DemoPorts(**{name: free_port() for name in DemoPorts.__dataclass_fields__})
    trust = make_trust(folder / "pki")
    c = trust.certs
    assert c.server.cert_path and c.server.key_path and c.ca.cert_path
    report = parse_report_message(hl7_text("CR_C-ORU.hl7")).report
    assert report is not None
    files = generate_study_for_report(
        folder / "study", report, [SeriesSpec("CT", "a", 3), SeriesSpec("CT", "b", 2)],
        rows=32, columns=32,
    )  # fmt: skip
    dmp_settings = DmpSimSettings(
        database_path=folder / "dmp.db", trusted_vihf_certs=[c.ca.cert_pem],
        tls_cert=c.server.cert_path, tls_key=c.server.key_path, client_ca=c.ca.cert_path,
    )  # fmt: skip
    with (
        LocalOrthanc(aet="ORTHANCA", dicom_port=ports.pacs_a, http_port=ports.pacs_a_http) as pacs,
        LocalDmp(dmp_settings, port=ports.dmp),
        LocalPsc(port=ports.psc) as psc,
    ):
        pacs.store_files(files)
        config = site_config(
            folder / "site-a", role="source", hl7_port=0, peer_port=ports.a_peer,
            viewer_port=ports.a_viewer, pacs_port=ports.pacs_a, scp_port=ports.scp_a,
            box=trust.box_a, name="Centre de radiologie Ambroise (site A)", ports=ports,
            trust=trust, psc=psc,
        )  # fmt: skip
        path = folder / "site-a" / "drimbox.toml"
        # What the installer adds for the check: a peer to reach (here the box itself, listed
        # as `localhost`), the DMP's test patient, a cache sized for this machine.
        with path.open("a", encoding="utf-8") as handle:
            handle.write(
                f'\n[checks]\npeers = ["localhost:{ports.a_peer}"]\n'
                f'dmp_test_patient = "{TEST_PATIENT}"\ncache_test_bytes = 4194304\n'
                "cache_min_write_bps = 1\n"
            )
        key = 'secret_key_file = "secret.key"'
        text = path.read_text(encoding="utf-8").replace(key, f"{key}\ncache_max_bytes = 100000000")
        path.write_text(text, encoding="utf-8")
        config = load_config(path, environ={})
        with RunningNode(config) as node:
            yield Network(folder, trust, config, path, node)


def statuses(report: AptitudeReport) -> dict[str, str]:
    return {check.key: check.status for check in report.checks}


def changed(config: Config, **sections: dict[str, Any]) -> Config:
    updates = {
        name: getattr(config, name).model_copy(update=values) for name, values in sections.items()
    }
    return config.model_copy(update=updates)


def test_every_check_passes_on_the_demo_network(network: Network, tmp_path: Path) -> None:
    report = run_aptitude(network.config)
    assert report.status == "ok", [(c.key, c.message) for c in report.checks if c.status != "ok"]
    assert set(statuses(report)) == {
        "config", "database", "cert.tls", "cert.dmp_auth", "cert.dmp_sign", "whitelist",
        "whitelist.self", "pacs.echo", "pacs.find", "pacs.speed", "dmp.tls", "clock",
        "dmp.query", "psc.discovery", "psc.client",
        f"peer.localhost:{network.config.http.port}", "cache",
    }  # fmt: skip
    checks = {c.key: c for c in report.checks}
    # The speed test is issue 20's measure, on the exam of the PACS: 5 images.
    assert checks["pacs.speed"].message.startswith("5 images")
    assert checks["pacs.speed"].figures["Images"] == "5"
    # The DMP's answer is reported: the simulator knows the test patient.
    assert f"patient {TEST_PATIENT} : DMP existant" in checks["dmp.query"].message
    assert "entrée 1" in checks["whitelist.self"].message
    assert checks["cert.tls"].figures["days_left"] >= 364
    assert "2 DRIMbox" in checks["whitelist"].message
    assert report.site_name == "Centre de radiologie Ambroise (site A)"

    # The command line: JSON for automation, the HTML report, exit status 0.
    out = tmp_path / "pv.html"
    outcome = runner.invoke(
        app, ["aptitude", "--config", str(network.path), "-o", str(out), "--json"]
    )
    assert outcome.exit_code == 0, outcome.output
    data = json.loads(outcome.stdout)
    assert data["status"] == "ok" and data["version"] and data["site"]["structure_id"]
    html = out.read_text(encoding="utf-8")
    assert "Installation apte" in html and "Pour l'installateur" in html
    assert "Centre de radiologie Ambroise (site A)" in html

    # Printed: one A4 page (Chromium, print media), and a picture of it for the record.
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 794, "height": 1123})
        page.goto(out.as_uri())
        page.emulate_media(media="print")
        pdf = page.pdf(format="A4", print_background=True, prefer_css_page_size=True)
        assert len(re.findall(rb"/Type\s*/Page(?!s)", pdf)) == 1
        shot = tmp_path / "aptitude-report.png"
        page.screenshot(path=str(shot), full_page=True)
        target = os.environ.get("APTITUDE_SCREENSHOT")
        if target:
            shutil.copyfile(shot, target)
        page.close()


@pytest.fixture
def expired(network: Network) -> Config:
    """The box's certificate, expired last month (the same DN, so only its dates are wrong)."""
    pki = network.trust.pki
    old = pki.issue(
        "localhost", usage="server", dns_names=("localhost", "127.0.0.1"),
        organizational_unit="300000001830001", organization="SITE A DEMO", state="Paris (75)",
        not_before=datetime.now(UTC) - timedelta(days=400), days=365,
    ).write(network.folder / "pki", "box-a-expired")  # fmt: skip
    trust = {"tls_cert": str(old.cert_path), "tls_key": str(old.key_path)}
    return changed(network.config, trust=trust)


@pytest.mark.parametrize(
    ("case", "failing"),
    [
        ("stopped PACS", {"pacs.echo", "pacs.find", "pacs.speed"}),
        ("expired certificate", {"cert.tls"}),
        ("unsigned whitelist", {"whitelist", "whitelist.self"}),
        ("DMP down", {"dmp.tls", "clock", "dmp.query"}),
        ("wrong PSC client", {"psc.client"}),
    ],
)
def test_each_broken_dependency_is_named(
    case: str, failing: set[str], network: Network, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    config = network.config
    if case == "stopped PACS":
        config = changed(config, pacs={"port": free_port()})
    elif case == "expired certificate":
        config = request.getfixturevalue("expired")
    elif case == "unsigned whitelist":
        config = changed(config, trust={"whitelist_source": str(UNSIGNED),
                                        "state_dir": str(tmp_path / "trust")})  # fmt: skip
    elif case == "DMP down":
        config = changed(config, dmp={"base_url": f"https://127.0.0.1:{free_port()}"})
    else:
        config = changed(config, psc={"client_secret": "pas-le-bon-secret"})
    report = run_aptitude(config)
    found = statuses(report)
    assert report.status == "failure"
    assert failing <= {key for key, status in found.items() if status == "failure"}, found
    # The rest of the installation is still checked, and found working.
    assert found["config"] == found["database"] == found["cache"] == "ok"
    checks = {c.key: c for c in report.checks}
    expected_words = {
        "stopped PACS": ("pacs.echo", "injoignable"),
        "expired certificate": ("cert.tls", "a expiré"),
        "unsigned whitelist": ("whitelist", "liste refusée"),
        "DMP down": ("dmp.tls", "DMP injoignable"),
        "wrong PSC client": ("psc.client", "PSC refuse le client"),
    }
    key, words = expected_words[case]
    assert words in checks[key].message and checks[key].action
    html = render_html(report)
    assert "Installation non apte" in html and words in html
    assert f'data-check="{key}"' in html


def test_command_line_exit_status_and_refusals(network: Network, tmp_path: Path) -> None:
    broken = network.path.read_text(encoding="utf-8").replace(
        f"port = {network.config.pacs.port}", f"port = {free_port()}"
    )
    # Next to the site's file: its relative paths (database, trust state) stay the same.
    path = network.path.parent / "pacs-arrete.toml"
    path.write_text(broken, encoding="utf-8")
    outcome = runner.invoke(app, ["aptitude", "-c", str(path), "-o", str(tmp_path / "pv.html")])
    assert outcome.exit_code == 1
    assert "NON APTE" in outcome.stdout and "injoignable" in outcome.stdout
    assert "Traceback" not in outcome.output
    # An invalid configuration is a failure of its own, still reported.
    bad = tmp_path / "bad.toml"
    bad.write_text("[pacs]\nport = 0\n", encoding="utf-8")
    invalid = runner.invoke(app, ["aptitude", "-c", str(bad), "--json"])
    assert invalid.exit_code == 1
    data = json.loads(invalid.stdout)
    assert data["status"] == "failure" and "pacs.port" in data["checks"][0]["message"]
