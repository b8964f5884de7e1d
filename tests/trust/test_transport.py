"""Encrypted flows over real sockets: the peer origin refuses to start in plain HTTP outside the
demo; the user origin serves HTTPS itself; MLLP over TLS; DICOM TLS to the PACS (a pynetdicom
TLS SCP); the SCP accepts associations only from the configured PACS hosts."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from typer.testing import CliRunner

from drimbox.cli import app
from drimbox.dicom.pacs import PacsClient, PacsError
from drimbox.dicom.retrieve import pacs_settings
from drimbox.dicom.scp import StoreScp
from drimbox.http.tlspolicy import server_context
from drimbox.node import Node
from drimbox.sim.pki import Issued, TestPki
from drimbox.sim.ris import parse_ack
from support.node import RunningNode, node_config
from support.samples import hl7_text

START, END = b"\x0b", b"\x1c\x0d"


@pytest.fixture(scope="module")
def pki_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Issued]:
    folder = tmp_path_factory.mktemp("pki")
    pki = TestPki()
    server = pki.issue("localhost", usage="server", dns_names=("localhost", "127.0.0.1"))
    ca = pki.ca.write(folder, "ca").cert_path
    assert ca is not None
    return ca, server.write(folder, "server")


def test_the_peer_origin_never_falls_back_to_plain_http(tmp_path: Path) -> None:
    config = node_config(tmp_path, None, {"DRIMBOX_HTTP__INSECURE_PLAIN_HTTP": "false"})
    node = Node(config)
    with pytest.raises(ValueError, match="HTTP clair") as refused:
        asyncio.run(node.start())
    assert "[trust] tls_cert" in str(refused.value) and node.web is None
    node.db.dispose()
    file = tmp_path / "plain.toml"
    file.write_text("[roles]\nsource = false\nconso = true\n")
    checked = CliRunner().invoke(app, ["config", "check", str(file)])
    assert checked.exit_code == 2 and "insecure_plain_http" in " ".join(checked.output.split())


def test_user_origin_https_and_mllp_over_tls(
    tmp_path: Path, pki_files: tuple[Path, Issued]
) -> None:
    ca, server = pki_files
    config = node_config(tmp_path, None, {
        "DRIMBOX_VIEWER__TLS_CERT": str(server.cert_path),
        "DRIMBOX_VIEWER__TLS_KEY": str(server.key_path),
        "DRIMBOX_HL7__TLS_CERT": str(server.cert_path),
        "DRIMBOX_HL7__TLS_KEY": str(server.key_path),
        "DRIMBOX_PACS__PORT": "9",
        "DRIMBOX_PACS__TIMEOUT_S": "1",
    })  # fmt: skip
    with RunningNode(config) as node:
        assert node.viewer_url.startswith("https://")
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca))) as browser:
            page = browser.get(f"{node.viewer_url}/connexion", follow_redirects=False)
        assert page.status_code < 500
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the TLS port
            httpx.get(node.viewer_url.replace("https://", "http://"), timeout=5)
        # MLLP over TLS: the RIS's report is ACKed through the TLS session.
        context = ssl.create_default_context(cafile=str(ca))
        with (
            socket.create_connection(("127.0.0.1", node.hl7_port), timeout=30) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.version() == "TLSv1.3"
            tls.sendall(START + hl7_text("CR_C-ORU.hl7").encode() + END)
            answer = b""
            while not answer.endswith(END):
                chunk = tls.recv(65536)
                assert chunk, "connection closed before the ACK"
                answer += chunk
        assert parse_ack(answer[1:-2].decode())[0] == "AA"
        # A plain MLLP client gets nothing: its bytes are not a TLS handshake.
        with socket.create_connection(("127.0.0.1", node.hl7_port), timeout=30) as plain:
            plain.sendall(START + b"MSH|^~\\&|RIS" + END)
            assert END not in plain.recv(65536)


@pytest.fixture
def tls_pacs(pki_files: tuple[Path, Issued]) -> Iterator[int]:
    """A DICOM TLS SCP answering C-ECHO, as a PACS with DICOM TLS enabled."""
    _ca, server = pki_files
    context = server_context()
    assert server.cert_path and server.key_path
    context.load_cert_chain(str(server.cert_path), str(server.key_path))
    ae = AE(ae_title="TLSPACS")
    ae.add_supported_context(Verification)
    scp = ae.start_server(("127.0.0.1", 0), block=False, ssl_context=context)
    try:
        yield int(scp.server_address[1])
    finally:
        scp.shutdown()


def test_dicom_tls_to_the_pacs(
    tmp_path: Path, pki_files: tuple[Path, Issued], tls_pacs: int
) -> None:
    ca, _server = pki_files
    pacs = {"DRIMBOX_PACS__HOST": "localhost", "DRIMBOX_PACS__PORT": str(tls_pacs),
            "DRIMBOX_PACS__CALLED_AET": "TLSPACS", "DRIMBOX_PACS__TIMEOUT_S": "5"}  # fmt: skip
    secure = node_config(tmp_path, None, pacs | {"DRIMBOX_PACS__TLS": "true",
                                                 "DRIMBOX_PACS__TLS_CA": str(ca)})  # fmt: skip
    PacsClient(pacs_settings(secure)).echo()  # a real TLS handshake, then the association
    with pytest.raises(PacsError):
        PacsClient(pacs_settings(node_config(tmp_path, None, pacs))).echo()  # plain TCP
    untrusted = node_config(tmp_path, None, pacs | {"DRIMBOX_PACS__TLS": "true"})  # system CAs
    with pytest.raises(PacsError):
        PacsClient(pacs_settings(untrusted)).echo()


def associate(port: int, calling: str = "PACS") -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DRIMBOX")
    established = bool(assoc.is_established)
    if established:
        assoc.release()
    return established


def test_scp_accepts_only_the_configured_hosts() -> None:

    for hosts, accepted in ((["192.0.2.0/24"], False), (["127.0.0.1"], True), ([], True)):
        scp = StoreScp("DRIMBOX", "127.0.0.1", 0, senders=["PACS"], sender_hosts=hosts)
        scp.start()
        try:
            assert associate(scp.bound_port) is accepted, hosts
        finally:
            scp.stop()


def test_the_node_scp_takes_rejection_notes_only_from_the_pacs_host(tmp_path: Path) -> None:
    """The running Source's SCP, where IOCM rejection notes arrive: the PACS's AE title from
    another host than `[pacs] scp_sender_hosts` is refused before any PDU."""
    config = node_config(tmp_path, None, {
        "DRIMBOX_PACS__CALLED_AET": "PACS",
        "DRIMBOX_PACS__PORT": "9",
        "DRIMBOX_PACS__TIMEOUT_S": "1",
        "DRIMBOX_PACS__SCP_SENDER_HOSTS": "192.0.2.10",
    })  # fmt: skip
    with RunningNode(config) as node:
        assert node.node.scp is not None
        assert not associate(node.node.scp.bound_port)
    allowed = node_config(tmp_path, None, {
        "DRIMBOX_PACS__CALLED_AET": "PACS",
        "DRIMBOX_PACS__PORT": "9",
        "DRIMBOX_PACS__TIMEOUT_S": "1",
        "DRIMBOX_PACS__SCP_SENDER_HOSTS": "127.0.0.0/8",
    })  # fmt: skip
    with RunningNode(allowed) as node:
        assert node.node.scp is not None
        assert associate(node.node.scp.bound_port)
        assert not associate(node.node.scp.bound_port, calling="INTRUDER")  # AE title still checked
