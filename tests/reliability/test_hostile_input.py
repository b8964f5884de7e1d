"""Hostile input: XML entity tricks, huge and truncated messages, traversal in UIDs — each gets a
clear refusal and the service stays up."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from drimbox.cda import CdaError, parse_report
from drimbox.db import Database
from drimbox.dicom.retrieve import ImageService
from drimbox.hl7.mllp import frame
from drimbox.sim.ris import RisClient, parse_ack
from drimbox.trust.whitelist import WhitelistError, verify_whitelist
from drimbox.web.app import create_peer_app
from drimbox.web.assembly import NoTokenVerifier
from support.node import RunningNode, node_config
from support.samples import hl7_text, with_cda

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
