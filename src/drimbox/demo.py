"""`drimbox demo`: a local DRIM-M network on the embedded defaults, for evaluation and training.

Owns the demo folder layout (one folder, reused by a second run, reset by `--fresh`), the sample
studies generated to match the bundled ANS reports, and the start-up sequence with progress. At
this stage: an Orthanc PACS, a Source node, and a RIS simulator that sends the sample reports.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from sqlalchemy import select

from drimbox.cda.model import ImagingReport
from drimbox.config import Config, load_config
from drimbox.db import Report, ReportState
from drimbox.hl7.message import parse_report_message
from drimbox.node import Node
from drimbox.samples import ans_file
from drimbox.sim.dmp.server import LocalDmp
from drimbox.sim.dmp.settings import DmpSimSettings
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.pki import DEMO_STRUCTURE, SiteCertificates, site_certificates
from drimbox.sim.ris import RisClient
from drimbox.sim.studies import SeriesSpec, generate_study_for_report

# The sample reports the RIS simulator sends, and the exams generated for them in the PACS.
DEMO_REPORTS: tuple[tuple[str, tuple[SeriesSpec, ...]], ...] = (
    (
        "hl7/CR_C-ORU.hl7",
        (
            SeriesSpec("CT", "Crâne sans injection", 24, body_part="HEAD"),
            SeriesSpec("CT", "Crâne avec injection IV", 24, body_part="HEAD"),
        ),
    ),
    (
        "hl7/CR_G1-ORU.hl7",
        (SeriesSpec("CT", "Tête et cou", 32, body_part="HEAD"),),
    ),
)
SETTLED = {ReportState.PUBLISHED.value, ReportState.PARKED.value, ReportState.REFUSED.value}


# Installed by scripts/setup.sh; the demo is run from the project folder.
OHIF_DIR = Path("var/ohif").resolve()

STATE_TEXT = {
    ReportState.PUBLISHED.value: "publié au DMP",
    ReportState.PARKED.value: "refusé par le DMP",
}


@dataclass(frozen=True)
class DemoPorts:
    hl7: int = 2575
    http: int = 8080
    pacs_dicom: int = 4242
    pacs_http: int = 8042
    dmp: int = 8090
    scp: int = 11112
    viewer: int = 8081


def _port_or_free(port: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return port
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


def demo_config(folder: Path, ports: DemoPorts, certs: SiteCertificates) -> Config:
    """The Source node's configuration, also written to `<folder>/drimbox.toml` for the CLI."""
    text = f"""# Written by `drimbox demo`.
[roles]
source = true

[site]
name = "Centre de radiologie Ambroise (démo)"
structure_id = "{DEMO_STRUCTURE}"
uid_root = "1.2.250.1.999.9"
public_base_url = "http://127.0.0.1:{ports.http}"

[http]
host = "127.0.0.1"
port = {ports.http}

[viewer]
host = "127.0.0.1"
port = {ports.viewer}
public_url = "http://127.0.0.1:{ports.viewer}"
ohif_dir = "{OHIF_DIR}"

[hl7]
host = "127.0.0.1"
port = {ports.hl7}

[pacs]
host = "127.0.0.1"
port = {ports.pacs_dicom}
called_aet = "ORTHANC"
calling_aet = "DRIMBOX"
scp_port = {ports.scp}
dicomweb_url = "http://127.0.0.1:{ports.pacs_http}/dicom-web"
timeout_s = 10

[source]
poll_interval_s = 0.2
retry_initial_s = 2

[dmp]
base_url = "https://127.0.0.1:{ports.dmp}"
tls_cert = "{certs.auth.cert_path}"
tls_key = "{certs.auth.key_path}"
tls_ca = "{certs.ca.cert_path}"
signing_cert = "{certs.signing.cert_path}"
signing_key = "{certs.signing.key_path}"
lps_id = "DRIMBOX-DEMO"
lps_homologation_id = "DEMO"
retry_initial_s = 2
retry_max_s = 30

[store]
database_url = "sqlite:///source.db"
cache_dir = "cache"
"""
    path = folder / "drimbox.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ={})


def sample_report(relative: str) -> tuple[str, ImagingReport]:
    text = ans_file(relative).read_bytes().decode("utf-8")
    message = parse_report_message(text)
    if message.report is None:
        raise RuntimeError(f"{relative}: no CDA")
    return text, message.report


def generate_demo_studies(folder: Path) -> list[Path]:
    files: list[Path] = []
    for relative, series in DEMO_REPORTS:
        _, report = sample_report(relative)
        files += generate_study_for_report(
            folder / report.study_instance_uid,
            report,
            series,
            institution_name="Centre de radiologie Ambroise",
        )
    return files


def run_demo(folder: Path, *, fresh: bool, exit_after: bool, console: Console) -> int:
    """Start the demo network; returns the process exit code."""
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ports = DemoPorts(
        hl7=_port_or_free(2575),
        http=_port_or_free(8080),
        pacs_dicom=_port_or_free(4242),
        pacs_http=_port_or_free(8042),
        dmp=_port_or_free(8090),
        scp=_port_or_free(11112),
        viewer=_port_or_free(8081),
    )
    console.print(f"[bold]DRIMbox — démonstration[/] (dossier {folder})", highlight=False)
    # A new test PKI each run: no key outlives the demo's own folder.
    certs = site_certificates(folder / "pki")
    config = demo_config(folder, ports, certs)
    assert certs.server.cert_path and certs.server.key_path
    dmp = LocalDmp(
        DmpSimSettings(
            database_path=folder / "dmp.db",
            trusted_vihf_certs=[certs.ca.cert_pem],
            tls_cert=certs.server.cert_path,
            tls_key=certs.server.key_path,
            client_ca=certs.ca.cert_path,
        ),
        port=ports.dmp,
    )
    with console.status("Démarrage du PACS Orthanc…"):
        pacs = LocalOrthanc(
            aet="ORTHANC",
            http_port=ports.pacs_http,
            dicom_port=ports.pacs_dicom,
            work_dir=folder / "orthanc",
        ).start()
    try:
        console.print(f"  [green]✓[/] PACS Orthanc : {pacs.url} (DICOM {pacs.dicom_port})")
        with console.status("Démarrage du simulateur du DMP…"):
            dmp.start()
        console.print(f"  [green]✓[/] DMP (simulateur, TLS mutuel) : {dmp.url}")
        if pacs.statistics().get("CountInstances", 0) == 0:
            with console.status("Génération des examens de démonstration…"):
                files = generate_demo_studies(folder / "studies")
                pacs.store_files(files)
            console.print(f"  [green]✓[/] {len(files)} images chargées dans le PACS")
        else:
            console.print("  [green]✓[/] examens déjà présents dans le PACS (dossier réutilisé)")
        return asyncio.run(_run_node(config, ports, exit_after=exit_after, console=console))
    finally:
        dmp.stop()
        pacs.stop()


async def _run_node(config: Config, ports: DemoPorts, *, exit_after: bool, console: Console) -> int:
    node = Node(config)
    await node.start()
    try:
        console.print(f"  [green]✓[/] DRIMbox Source : MLLP 127.0.0.1:{ports.hl7}")
        results = await asyncio.to_thread(_send_reports, ports.hl7)
        for name, code, detail in results:
            colour = "green" if code == "AA" else "red"
            console.print(f"  [{colour}]{code or '—'}[/] RIS → {name} {detail}", highlight=False)
        with console.status("Construction et publication des KOS au DMP…"):
            reports = await asyncio.to_thread(_wait_settled, node, 120.0)
        _print_reports(reports, console)
        config_file = (
            Path(config.store.database_url.removeprefix("sqlite:///")).parent / "drimbox.toml"
        )
        console.print(
            "\n[bold]Prête.[/] Pour consulter : "
            f"[cyan]uv run drimbox reports list --config {config_file}[/]",
            highlight=False,
        )
        failed = any(r.state != ReportState.PUBLISHED.value for r in reports)
        if exit_after:
            return 1 if failed else 0
        console.print("Ctrl-C pour arrêter.")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        await node.stop()
        console.print("Démonstration arrêtée.")


def _send_reports(port: int) -> list[tuple[str, str, str]]:
    results = []
    with RisClient("127.0.0.1", port) as ris:
        for relative, _ in DEMO_REPORTS:
            text, _report = sample_report(relative)
            result = ris.send(text)
            results.append((Path(relative).name, result.code, result.text))
    return results


def _wait_settled(node: Node, timeout_s: float) -> list[Report]:
    deadline = time.monotonic() + timeout_s
    while True:
        with node.db.session() as session:
            reports = list(session.scalars(select(Report).order_by(Report.id)))
        if (reports and all(r.state in SETTLED for r in reports)) or time.monotonic() > deadline:
            return reports
        time.sleep(0.2)


def _print_reports(reports: list[Report], console: Console) -> None:
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    from drimbox.dicom.kos import describe_manifest

    for report in reports:
        if report.kos is not None:
            console.print(
                f"\n[bold green]KOS du compte rendu n°{report.id}[/] — "
                f"{STATE_TEXT.get(report.state, report.state)} "
                f"(entrée DMP {report.dmp_entry_uuid or '—'})",
                highlight=False,
            )
            console.print(
                describe_manifest(dcmread(DicomBytesIO(report.kos))),
                highlight=False,
                soft_wrap=True,
            )
        else:
            console.print(
                f"\n[bold red]Compte rendu n°{report.id} : {report.state}[/] {report.reason or ''}",
                highlight=False,
            )
