"""Outages: the database restarting under a running node, the PACS and the DMP down — the box
says so on `/status`, never ACKs what it could not store, and catches up by itself."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

from drimbox.db import ReportState
from drimbox.hl7.message import parse_report_message
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ris import RisClient
from drimbox.sim.studies import SeriesSpec, generate_study_for_report
from support.dmp import local_dmp
from support.node import RunningNode, node_config
from support.postgres import TemporaryPostgres
from support.samples import hl7_text, report_variant
from support.site import official_headers, peer_client, series_url, source_site
from support.tools import missing


def test_postgresql_restart_under_a_running_node(
    postgres_server: TemporaryPostgres, tmp_path: Path
) -> None:
    url = postgres_server.create_database("outage_restart")
    config = node_config(tmp_path, None, {"DRIMBOX_STORE__DATABASE_URL": url},
                         pacs={"port": 9, "timeout_s": 1})  # fmt: skip
    base = hl7_text("CR_C-ORU.hl7")
    with RunningNode(config) as node, RisClient("127.0.0.1", node.hl7_port) as ris:
        assert ris.send(report_variant(base, 1)).code == "AA"
        postgres_server.pause()
        try:
            during = ris.send(report_variant(base, 2))
            assert during.code == "AE"  # not stored: the RIS must send it again
            assert "207" in during.ack
        finally:
            postgres_server.resume()
        deadline = time.monotonic() + 30
        while True:
            again = ris.send(report_variant(base, 2))
            if again.code == "AA" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert again.code == "AA"
        assert len(node.reports()) == 2


def test_pacs_and_dmp_down_are_reported_and_caught_up(tmp_path: Path) -> None:
    report = parse_report_message(hl7_text("CR_C-ORU.hl7")).report
    assert report is not None
    with LocalOrthanc(work_dir=tmp_path / "orthanc") as pacs, local_dmp(tmp_path / "dmp") as dmp:
        files = generate_study_for_report(tmp_path / "study", report, [SeriesSpec("CT", "a", 2)],
                                          rows=32, columns=32)  # fmt: skip
        pacs.store_files(files)
        config = node_config(tmp_path, pacs, dmp.node_environ())
        with RunningNode(config) as node:
            pacs.stop()
            dmp.dmp.stop()
            with RisClient("127.0.0.1", node.hl7_port) as ris:
                assert ris.send(hl7_text("CR_C-ORU.hl7")).code == "AA"  # stored all the same
            status = httpx.get(f"{node.peer_url}/status", timeout=30).json()
            assert set(status["failing"]) >= {"pacs", "dmp"}
            assert status["status"] == "dégradé"
            first = node.reports()[0]
            node.wait_for_report(first.id, {ReportState.RECEIVED.value})
            pacs.start()
            dmp.dmp.start()
            done = node.wait_for_report(first.id, {ReportState.PUBLISHED.value}, timeout_s=120)
            assert done.kos_sop_uid is not None
            status = httpx.get(f"{node.peer_url}/status", timeout=30).json()
            assert status["failing"] == [] or set(status["failing"]) <= {"whitelist"}


def test_a_full_cache_disk_gives_503_and_is_reported(orthanc: LocalOrthanc, tmp_path: Path) -> None:
    """The image cache's volume is full: peers get 503 with Retry-After, never a 500, and
    /status says so."""
    cache = tmp_path / "cache"
    cache.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(cache)],
                             capture_output=True, text=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        missing(f"cannot mount a small tmpfs (the suite runs as root): {mounted.stderr.strip()}")
    try:
        series = (SeriesSpec("CT", "a", 4),)
        with source_site(orthanc, tmp_path, series, size=128) as site:
            token = site.psc.mint_access_token("radiologue")
            with peer_client(site, site.trusted_peer) as client:
                response = client.get(series_url(site), headers=official_headers(site, token))
                status = client.get(f"{site.node.peer_url}/status").json()
            assert response.status_code == 503, response.text
            assert "retry-after" in {k.lower() for k in response.headers}
            assert "cache" in status["failing"]
            assert "presque plein" in status["checks"]["cache"]["message"]
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=False)
