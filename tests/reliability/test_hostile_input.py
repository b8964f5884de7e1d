"""Hostile input: XML entity tricks, huge and truncated messages, traversal in UIDs, oversized
bodies, slow request headers, huge frame lists and ids, MLLP connection floods — each gets a clear
refusal, the node's memory stays bounded (RSS of this process, where the node runs) and it keeps
serving."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from drimbox.cda import CdaError, parse_report
from drimbox.db import Database
from drimbox.dicom.retrieve import ImageService
from drimbox.hl7.mllp import frame
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.psc import LocalPsc
from drimbox.sim.ris import RisClient, parse_ack
from drimbox.trust.whitelist import WhitelistError, verify_whitelist
from drimbox.web.app import create_peer_app
from drimbox.web.assembly import NoTokenVerifier
from support.node import RunningNode, node_config, signed_in
from support.samples import hl7_text, with_cda
from support.site import official_headers, peer_client, series_url, source_site

SECRET = Path("/etc/hostname")
XXE = f"""<?xml version="1.0"?>
<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file://{SECRET}">]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&xxe;</title></ClinicalDocument>""".encode()
LAUGHS = b"""<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]><ClinicalDocument xmlns="urn:hl7-org:v3"><title>&lol9;</title></ClinicalDocument>"""


@pytest.mark.parametrize("document", [XXE, LAUGHS], ids=["xxe", "billion-laughs"])
def test_cda_entity_tricks_are_refused_quickly(document: bytes) -> None:
    started = time.monotonic()
    with pytest.raises(CdaError) as caught:
        parse_report(document)
    assert time.monotonic() - started < 2
    if SECRET.exists():
        assert SECRET.read_text().strip() not in str(caught.value)


@pytest.mark.parametrize("document", [XXE, LAUGHS], ids=["xxe", "billion-laughs"])
def test_whitelist_entity_tricks_are_refused(document: bytes) -> None:
    with pytest.raises(WhitelistError):
        verify_whitelist(document, [])


@pytest.fixture
def node(tmp_path: Path) -> RunningNode:
    config = node_config(tmp_path, None, hl7={"max_message_bytes": 1024 * 1024},
                         pacs={"port": 9, "timeout_s": 1})  # fmt: skip
    return RunningNode(config)


def test_hostile_hl7_traffic_is_answered_and_the_listener_survives(node: RunningNode) -> None:
    with node:
        port = node.hl7_port
        with RisClient("127.0.0.1", port, timeout_s=30) as ris:
            # An XXE inside the CDA: refused (AE), the file's content is never echoed.
            code, detail = parse_ack(ris.send_raw(frame(with_cda(hl7_text("CR_C-ORU.hl7"), XXE))))
            assert code == "AE" and (
                not SECRET.exists() or SECRET.read_text().strip() not in detail
            )
            # 50 MB of garbage in one frame: refused as too large.
            code, _ = parse_ack(ris.send_raw(b"\x0bMSH|" + b"A" * (50 * 1024 * 1024) + b"\x1c\x0d"))
            assert code == "AR"
        # Truncated frames and a peer that disappears mid-message.
        for cut in (1, 100, 5000):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(frame(hl7_text("CR_C-ORU.hl7"))[:cut])
        with RisClient("127.0.0.1", port) as ris:
            assert ris.send(hl7_text("CR_C-ORU.hl7")).code == "AA"  # still serving


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web-rs/studies/..%2F..%2Fetc%2Fpasswd/series/1.2.3",
        "/dicom-web-rs/studies/1.2.3/series/..%2F..%2F..%2Fvar",
        "/dicom-web-rs/studies/1.2.3/series/1.2.3/instances/%2E%2E",
        "/dicom-web-rs/studies/" + "1." * 40 + "1/series/1.2.3",
    ],
)
def test_traversal_and_bad_uids_in_urls_are_refused(tmp_path: Path, path: str) -> None:
    config = node_config(tmp_path, None)
    db = Database(config.store.database_url)
    db.upgrade()
    app = create_peer_app(config, db, NoTokenVerifier(), images=ImageService(config))
    with TestClient(app) as client:
        response = client.get(
            path, headers={"Authorization": "Bearer x", "KOS-SOPInstanceUID": "1.2"}
        )
    assert response.status_code == 400, response.text
    assert "root:" not in response.text
    db.dispose()


# --- bounded inputs: nothing a client sends can make the node hold unbounded memory ----------


def rss_bytes() -> int:
    """Resident memory of this process (the node under test runs in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def closed_by_server(sock: socket.socket, wait_s: float) -> bool:
    """Whether the server closed `sock` (it sent nothing else), waiting up to `wait_s`."""
    sock.settimeout(wait_s)
    try:
        return sock.recv(1024) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def http_exchange(port: int, head: bytes, body: bytes = b"", timeout_s: float = 5) -> bytes:
    """Send a raw request head (and the start of its body), return what the server answered
    within `timeout_s` (b"" if it answered nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(head + body)
        answer = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := sock.recv(65536):
                answer += chunk
        return answer


def test_oversized_bodies_are_refused_while_reading(tmp_path: Path) -> None:
    config = node_config(tmp_path, None, {"DRIMBOX_ROLES__CONSO": "true"},
                         pacs={"port": 9, "timeout_s": 1})  # fmt: skip
    with RunningNode(config) as node:
        port = int(node.viewer_url.rsplit(":", 1)[1])
        before = rss_bytes()
        # A 1 GB launch announced: refused on its headers, before any of it is read.
        announced = http_exchange(
            port,
            b"POST /lancement HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/x-www-form-urlencoded\r\nContent-Length: 1073741824\r\n\r\n",
            b"a" * 4096,
        )
        assert announced.startswith(b"HTTP/1.1 413"), announced[:200]
        assert b"volumineuse" in announced or b"volumineu" in announced
        # The same without a length (chunked): cut as soon as it passes the launch's limit.
        chunk = b"8000\r\n" + b"a" * 0x8000 + b"\r\n"
        chunked = http_exchange(
            port,
            b"POST /lancement HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n",
            chunk * 2,
        )
        assert chunked.startswith(b"HTTP/1.1 413"), chunked[:200]
        # Every route, on both origins: a large body announced is refused unread.
        for url_port, path in ((port, "/admin"), (port, "/deconnexion"),
                               (int(node.peer_url.rsplit(":", 1)[1]), "/health")):  # fmt: skip
            answer = http_exchange(
                url_port,
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n".encode(),
            )
            assert answer.startswith(b"HTTP/1.1 413"), (path, answer[:200])
        assert rss_bytes() - before < 64 * 1024 * 1024
        assert httpx.get(f"{node.viewer_url}/health", timeout=10).status_code < 400


def test_slow_request_headers_are_cut_and_the_origin_keeps_serving(tmp_path: Path) -> None:
    config = node_config(tmp_path, None, http={"header_timeout_s": 1})
    with RunningNode(config) as running:
        port = int(running.viewer_url.rsplit(":", 1)[1])
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
        try:
            for sock in slow:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
            time.sleep(2.5)
            closed = sum(closed_by_server(sock, 2) for sock in slow)
            assert closed == len(slow), f"{len(slow) - closed} slow connections still open"
            # A connection that says nothing at all is cut too.
            with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
                assert silent.recv(1024) == b""
            assert httpx.get(f"{running.viewer_url}/health", timeout=10).status_code < 400
        finally:
            for sock in slow:
                sock.close()


def test_huge_numeric_ids_answer_404(tmp_path: Path) -> None:
    with LocalPsc() as psc:
        admin = {"DRIMBOX_ADMIN__USERS": "899700100011"}
        config = node_config(tmp_path, None, psc.node_environ() | admin)
        with RunningNode(config) as running:
            browser = signed_in(running, "radiologue")
            try:
                base = running.viewer_url
                for report_id in ("99999999999999999999999", "2147483648", "0"):
                    answer = browser.post(f"{base}/admin/comptes-rendus/{report_id}/relancer")
                    assert answer.status_code == 404, (report_id, answer.status_code)
                    assert "Compte rendu introuvable" in answer.text
            finally:
                browser.close()


def test_a_frame_asked_5000_times_is_answered_once(orthanc: LocalOrthanc, tmp_path: Path) -> None:
    with source_site(orthanc, tmp_path) as site, peer_client(site, site.trusted_peer) as client:
        token = site.psc.mint_access_token("radiologue")
        headers = official_headers(site, token)
        listing = client.get(
            f"{series_url(site)}/instances", headers=headers | {"Accept": "application/dicom+json"}
        )
        sop = listing.json()[0]["00080018"]["Value"][0]
        url = f"{series_url(site)}/instances/{sop}/frames/"
        frame_headers = headers | {"Accept": "multipart/related; type=application/octet-stream"}
        one = client.get(url + "1", headers=frame_headers)
        assert one.status_code == 200
        before = rss_bytes()
        many = client.get(url + ",".join(["1"] * 5000), headers=frame_headers)
        assert many.status_code == 200
        assert many.content.count(b"Content-Type: application/octet-stream") == 1
        assert len(many.content) < 2 * len(one.content)
        too_many = client.get(url + ",".join(map(str, range(1, 2000))), headers=frame_headers)
        assert too_many.status_code == 400 and "trames au plus" in too_many.json()["erreur"]
        assert rss_bytes() - before < 64 * 1024 * 1024
        assert client.get(url + "1", headers=frame_headers).status_code == 200


def test_mllp_connection_flood_and_unfinished_blocks_are_bounded(tmp_path: Path) -> None:
    config = node_config(
        tmp_path, None, hl7={"max_message_bytes": 16 * 1024 * 1024, "max_connections": 20,
                             "max_pending_bytes": 32 * 1024 * 1024},
        pacs={"port": 9, "timeout_s": 1},
    )  # fmt: skip
    with RunningNode(config) as running:
        port = running.hl7_port
        # 300 idle connections: the oldest idle ones are closed, never more than 20 kept.
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
        time.sleep(1)
        still_open = sum(not closed_by_server(sock, 0.05) for sock in idle)
        for sock in idle:
            sock.close()
        assert still_open <= 20, f"{still_open} idle MLLP connections kept"
        # 20 connections each sending 12 MB of a message that never ends.
        before = rss_bytes()
        hogs = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        try:
            piece = b"\x0bMSH|" + b"A" * (12 * 1024 * 1024)
            for sock in hogs:
                sock.settimeout(10)
                with contextlib.suppress(ConnectionError):  # refused: the server closed it
                    sock.sendall(piece)
            time.sleep(1)
            grown = rss_bytes() - before
            assert grown < 100 * 1024 * 1024, f"unfinished MLLP blocks hold {grown >> 20} MB"
            with RisClient("127.0.0.1", port, timeout_s=30) as ris:
                assert ris.send(hl7_text("CR_C-ORU.hl7")).code == "AA"  # still serving
        finally:
            for sock in hogs:
                sock.close()
