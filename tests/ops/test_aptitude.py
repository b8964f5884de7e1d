"""The site acceptance check against a network built like the demo's site A (Orthanc with an
exam, the DMP and PSC simulators over their real protocols, a test IGC, a whitelist signed at
start, the running node): every check OK; then each dependency broken in turn (stopped PACS,
expired certificate, unsigned whitelist, DMP down, wrong PSC client), each failure named in the
report; the printed report fits one A4 page (Chromium, print media)."""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from drimbox import __version__
from drimbox.auth.psc import PscClient, PscSettings
from drimbox.cli import app
from drimbox.config import Config, load_config
from drimbox.demo import DemoPorts, Trust, make_trust, site_config
from drimbox.french import french_datetime
from drimbox.ops.aptitude import AptitudeReport, _Checks, _clock, run_aptitude
from drimbox.ops.report import render_html
from drimbox.ops.speedtest import SpeedResult, record
from drimbox.samples import ANS_DIR
from drimbox.sim.dmp.server import LocalDmp
from drimbox.sim.dmp.settings import DmpSimSettings
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.pki import Issued, TestPki
from drimbox.sim.ports import free_port
from drimbox.sim.psc import LocalPsc, PscSimSettings, SimClient
from support.node import RunningNode
from support.samples import sample_exam
from support.tools import chromium

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "var" / "artifacts"  # ignored by git: the report's pictures for the record
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
    files = sample_exam(folder / "study")[1]
    dmp_settings = DmpSimSettings(
        database_path=folder / "dmp.db", trusted_vihf_certs=[c.ca.cert_pem],
        tls_cert=c.server.cert_path, tls_key=c.server.key_path, client_ca=c.ca.cert_path,
    )  # fmt: skip
    with (
        LocalOrthanc(aet="ORTHANCA", dicom_port=ports.pacs_a, http_port=ports.pacs_a_http) as pacs,
        LocalDmp(dmp_settings, port=ports.dmp),
        LocalPsc.with_mtls(folder / "psc", trust.pki, port=ports.psc) as psc,
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
                # Runs of a 5-image study on a shared machine vary by more than 2×: the
                # speed-drop warning is tested in test_speedtest, not here.
                "slow_ratio = 0.01\n"
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
    assert "Installation apte : les 17 vérifications sont réussies." in html
    assert "Centre de radiologie Ambroise (site A)" in html
    # The record's identity: software version and date of the run, as filed.
    assert f"DRIMbox {__version__}, " in html
    assert french_datetime(datetime.fromisoformat(data["at"]), offset=True) in html
    assert "Pour le site" in html and "Pour l'installateur" in html

    printed_on_one_page(out, "aptitude-report")


def printed_on_one_page(report: Path, name: str) -> None:
    """The HTML report printed by Chromium (print media): one A4 page with its signature block;
    the PDF and a picture kept under var/artifacts/ for the record."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 794, "height": 1123})
        page.goto(report.as_uri())
        page.emulate_media(media="print")
        pdf = page.pdf(format="A4", print_background=True, prefer_css_page_size=True)
        (ARTIFACTS / f"{name}.pdf").write_bytes(pdf)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        signatures = page.locator(".signatures").bounding_box()
        page.close()
    assert len(re.findall(rb"/Type\s*/Page(?!s)", pdf)) == 1
    assert signatures is not None and signatures["height"] > 80


def box_certificate(
    network: Network, name: str, pki: TestPki | None = None, **dates: Any
) -> Config:
    """The configuration with another certificate of the box's DN (`pki`: another authority)."""
    issued = (pki or network.trust.pki).issue(
        "localhost", usage="server", dns_names=("localhost", "127.0.0.1"),
        organizational_unit="300000001830001", organization="SITE A DEMO", state="Paris (75)",
        **dates,
    ).write(network.folder / "pki", name)  # fmt: skip
    trust = {"tls_cert": str(issued.cert_path), "tls_key": str(issued.key_path)}
    return changed(network.config, trust=trust)


def revoked_certificate(network: Network) -> Config:
    """A certificate whose CRL (named in it, as IGC-Santé's are) lists it as revoked."""
    ca, now = network.trust.pki.ca, datetime.now(UTC)
    crl_path = network.folder / "pki" / "ac.crl"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    point = x509.DistributionPoint([x509.UniformResourceIdentifier(crl_path.as_uri())],
                                   None, None, None)  # fmt: skip
    certificate = (
        x509.CertificateBuilder()
        .subject_name(network.trust.box_a.certificate.subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.CRLDistributionPoints([point]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    revoked = x509.RevokedCertificateBuilder().serial_number(certificate.serial_number)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now - timedelta(hours=1))
        .next_update(now + timedelta(days=7))
        .add_revoked_certificate(revoked.revocation_date(now - timedelta(hours=1)).build())
        .sign(ca.key, hashes.SHA256())
    )
    crl_path.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    issued = Issued(certificate, key).write(network.folder / "pki", "box-a-revoked")
    trust = {"tls_cert": str(issued.cert_path), "tls_key": str(issued.key_path)}
    return changed(network.config, trust=trust)


@pytest.mark.parametrize(
    ("case", "failing"),
    [
        ("stopped PACS", {"pacs.echo", "pacs.find", "pacs.speed"}),
        ("expired certificate", {"cert.tls"}),
        ("revoked certificate", {"cert.tls"}),
        ("key of another certificate", {"cert.tls"}),
        ("certificate of an unknown authority", {"cert.tls"}),
        ("unsigned whitelist", {"whitelist", "whitelist.self"}),
        ("DMP down", {"dmp.tls", "clock", "dmp.query"}),
        ("wrong PSC client", {"psc.client"}),
        # Beyond the issue's five: the other checks' own failures.
        ("empty database", {"database"}),
        ("box off the whitelist", {"whitelist.self"}),
        ("certificate of another box", {"whitelist.self"}),
        ("PSC unreachable", {"psc.discovery", "psc.client"}),
        ("peer down", {"peer.localhost:{port}"}),
    ],
)
def test_each_broken_dependency_is_named(
    case: str, failing: set[str], network: Network, tmp_path: Path
) -> None:
    config = network.config
    if case == "stopped PACS":
        config = changed(config, pacs={"port": free_port()})
    elif case == "expired certificate":
        config = box_certificate(network, "box-a-expired", days=365,
                                 not_before=datetime.now(UTC) - timedelta(days=400))  # fmt: skip
    elif case == "revoked certificate":
        config = revoked_certificate(network)
    elif case == "key of another certificate":
        config = changed(config, trust={"tls_key": str(network.trust.box_b.key_path)})
    elif case == "certificate of an unknown authority":
        config = box_certificate(network, "box-a-other-ca", TestPki("AC INCONNUE"))
    elif case == "unsigned whitelist":
        config = changed(config, trust={"whitelist_source": str(UNSIGNED),
                                        "state_dir": str(tmp_path / "trust")})  # fmt: skip
    elif case == "DMP down":
        config = changed(config, dmp={"base_url": f"https://127.0.0.1:{free_port()}"})
    elif case == "wrong PSC client":
        # Another box's certificate: PSC registered this client by its own certificate subject.
        box_b = network.trust.box_b
        config = changed(config, psc={"tls_cert": str(box_b.cert_path),
                                      "tls_key": str(box_b.key_path)})  # fmt: skip
    elif case == "empty database":
        config = changed(config, store={"database_url": f"sqlite:///{tmp_path / 'vide.db'}"})
    elif case == "box off the whitelist":
        config = changed(config, site={"public_base_url": "https://db9.inconnu.fr"})
    elif case == "certificate of another box":
        box_b = network.trust.box_b
        config = changed(config, trust={"tls_cert": str(box_b.cert_path),
                                        "tls_key": str(box_b.key_path)})  # fmt: skip
    elif case == "PSC unreachable":
        config = changed(
            config, psc={"discovery_url": f"http://127.0.0.1:{free_port()}/.well-known"}
        )
    else:
        port = free_port()
        config = changed(config, checks={"peers": [f"localhost:{port}"]})
        failing = {key.format(port=port) for key in failing}
    report = run_aptitude(config)
    found = statuses(report)
    assert report.status == "failure"
    assert failing <= {key for key, status in found.items() if status == "failure"}, found
    # The rest of the installation is still checked, and found working.
    assert {
        found[k] for k in ("config", "database", "cache", "pacs.speed") if k not in failing
    } == {"ok"}
    checks = {c.key: c for c in report.checks}
    expected_words = {
        "stopped PACS": ("pacs.echo", "injoignable"),
        "expired certificate": ("cert.tls", "a expiré"),
        "revoked certificate": ("cert.tls", "révoqué le"),
        "key of another certificate": ("cert.tls", "ne correspond pas au certificat"),
        "certificate of an unknown authority": ("cert.tls", "ne se rattache à aucune autorité"),
        "unsigned whitelist": ("whitelist", "liste refusée"),
        "DMP down": ("dmp.tls", "DMP injoignable"),
        "wrong PSC client": ("psc.client", "PSC refuse le client"),
        "empty database": ("database", "base vide"),
        "box off the whitelist": ("whitelist.self", "« db9.inconnu.fr » ([site] public_base_url)"),
        "certificate of another box": ("whitelist.self", "le certificat installé est"),
        "PSC unreachable": ("psc.discovery", "injoignable"),
        "peer down": (next(iter(failing)), "injoignable"),
    }
    key, words = expected_words[case]
    assert words in checks[key].message and checks[key].action
    html = render_html(report)
    assert "Installation non apte" in html and words in html
    assert f'data-check="{key}"' in html


def test_warnings_leave_the_installation_fit_with_reservations(network: Network) -> None:
    """A certificate 10 days from expiry, a PACS far slower than last time, a slow cache
    volume: warnings, not failures."""
    # The last run of the same speed test went at 1 Go/s: this one is far below it.
    p = network.config.pacs
    fast = SpeedResult("pacs", f"{p.called_aet}@{p.host}:{p.port}", p.retrieve, "1.2", images=5,
                       bytes=10**9, seconds=1.0, first_image_s=0.01)  # fmt: skip
    record(network.node.node.db, fast)
    config = box_certificate(network, "box-a-soon", days=10)
    report = run_aptitude(changed(config, checks={"slow_ratio": 0.5}))
    found = statuses(report)
    assert report.status == "warning"
    assert found.pop("cert.tls") == found.pop("pacs.speed") == "warning"
    assert set(found.values()) == {"ok"}
    checks = {c.key: c for c in report.checks}
    assert re.search(r"expire dans (9|10) jours", checks["cert.tls"].message)
    assert checks["cert.tls"].action == "Renouvelez ce certificat avant son expiration."
    assert "débit nettement inférieur au précédent" in checks["pacs.speed"].message
    assert "contre 1,0 Go/s" in checks["pacs.speed"].message
    html = render_html(report)
    assert "Installation apte avec réserves : 2 avertissement(s), aucun échec" in html
    # The command line: exit status 0, the verdict said.
    slow = network.path.read_text(encoding="utf-8").replace(
        "cache_min_write_bps = 1\n", "cache_min_write_bps = 1000000000000000\n"
    )
    path = network.path.parent / "cache-lent.toml"
    path.write_text(slow, encoding="utf-8")
    outcome = runner.invoke(app, ["aptitude", "-c", str(path), "--json"])
    assert outcome.exit_code == 0, outcome.output
    data = json.loads(outcome.stdout)
    assert data["status"] == "warning"
    cache = next(c for c in data["checks"] if c["key"] == "cache")
    assert cache["status"] == "warning" and "lent" in cache["action"]
    text = runner.invoke(app, ["aptitude", "-c", str(path)])
    assert text.exit_code == 0 and "Installation apte avec réserves." in text.stdout


def test_psc_client_authentication_by_mutual_tls(network: Network) -> None:
    """RFC 8705 `tls_client_auth`, as DRIM-M asks in production: the structure's ORG
    authentication certificate ([dmp] tls_cert by default), no secret."""
    c, config = network.trust.certs, network.config
    assert c.server.cert_path and c.server.key_path and c.ca.cert_path
    org = x509.load_pem_x509_certificate(Path(config.dmp.tls_cert).read_bytes())
    registered = SimClient("drimbox-org", "",
                           tls_client_auth_subject_dn=org.subject.rfc4514_string())  # fmt: skip
    settings = PscSimSettings(tls_cert=c.server.cert_path, tls_key=c.server.key_path,
                              client_ca=c.ca.cert_path, clients=(registered,))  # fmt: skip
    with LocalPsc(settings) as psc:
        mutual = changed(config, psc={
            "discovery_url": psc.discovery_url, "client_id": "drimbox-org", "client_secret": "",
            "token_endpoint_auth_method": "tls_client_auth", "ca_file": str(c.ca.cert_path),
            "tls_cert": "", "tls_key": "",  # the [dmp] ORG authentication certificate
        })  # fmt: skip
        checks = {check.key: check for check in run_aptitude(mutual).checks}
        assert checks["psc.discovery"].status == checks["psc.client"].status == "ok"
        assert "(tls_client_auth)" in checks["psc.client"].message
        # Introspection of a peer's token goes through the same mutual TLS.
        with PscClient(PscSettings.from_config(mutual, "https://localhost/cb")) as client:
            info = client.introspect(psc.mint_access_token("radiologue", client_id="drimbox-org"))
        assert info is not None and info.client_id == "drimbox-org"
        # Another certificate of the same authority is not the one registered: refused.
        box_b = network.trust.box_b
        other = changed(mutual, psc={"tls_cert": str(box_b.cert_path),
                                     "tls_key": str(box_b.key_path)})  # fmt: skip
        refused = {check.key: check for check in run_aptitude(other).checks}["psc.client"]
        assert refused.status == "failure" and "PSC refuse le client" in refused.message
        # Nor does a secret stand in for the certificate.
        secret = changed(mutual, psc={"token_endpoint_auth_method": "client_secret_basic",
                                      "client_secret": "devine"})  # fmt: skip
        assert statuses(run_aptitude(secret))["psc.client"] == "failure"
        # The client named without a certificate on the connection: refused.
        form = {"grant_type": "refresh_token", "refresh_token": "x", "client_id": "drimbox-org"}
        verify = ssl.create_default_context(cafile=c.ca.cert_path)
        bare = httpx.post(psc.paths.oidc("token"), data=form, verify=verify)
        assert bare.status_code == 401 and bare.json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    ("skew", "status", "words"),
    [
        (0.4, "ok", "écart inférieur à 5 s"),
        (-7.0, "warning", "écart de 7 s de retard du DMP"),
        (75.0, "failure", "écart de 75 s d'avance du DMP"),
        (float("nan"), "warning", "le DMP n'envoie pas d'en-tête Date"),
        (None, "failure", "non mesuré : pas de connexion au DMP"),
    ],
)
def test_clock_skew_is_graded(skew: float | None, status: str, words: str) -> None:
    """The grading of the skew measured against the DMP's `Date` (the demo's clocks agree, so
    the other grades are shown here on the function that grades them)."""
    checks = _Checks()
    _clock(checks, skew)
    (check,) = checks.items
    assert (check.key, check.status) == ("clock", status) and words in check.message
    assert bool(check.action) == (status != "ok")


def test_command_line_exit_status_and_refusals(network: Network, tmp_path: Path) -> None:
    broken = network.path.read_text(encoding="utf-8").replace(
        f"port = {network.config.pacs.port}", f"port = {free_port()}"
    )
    # Next to the site's file: its relative paths (database, trust state) stay the same.
    path = network.path.parent / "pacs-arrete.toml"
    path.write_text(broken, encoding="utf-8")
    out = tmp_path / "pv.html"
    outcome = runner.invoke(app, ["aptitude", "-c", str(path), "-o", str(out)])
    assert outcome.exit_code == 1
    assert "NON APTE" in outcome.stdout and "injoignable" in outcome.stdout
    assert "Traceback" not in outcome.output
    # The record of a failed check, with every action to take, still prints on one page.
    assert "Installation non apte : 3 échec(s)" in out.read_text(encoding="utf-8")
    printed_on_one_page(out, "aptitude-report-non-apte")
    # An invalid configuration is a failure of its own, still reported.
    bad = tmp_path / "bad.toml"
    bad.write_text("[pacs]\nport = 0\n", encoding="utf-8")
    invalid = runner.invoke(app, ["aptitude", "-c", str(bad), "--json"])
    assert invalid.exit_code == 1
    data = json.loads(invalid.stdout)
    assert data["status"] == "failure" and "pacs.port" in data["checks"][0]["message"]
