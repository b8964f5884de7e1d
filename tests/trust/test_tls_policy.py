"""The box's TLS policy over real sockets: TLS 1.2 at least, no CBC suite, TLS 1.3 chosen when
the other side has it — for the mutual-TLS server and for every client context."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from drimbox.http.tlspolicy import client_context
from drimbox.sim.pki import Issued, TestPki
from drimbox.trust.tls import client_ssl_context, server_ssl_context

CBC_ONLY = "ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES128-SHA:AES128-SHA256"


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Issued, Issued]:
    folder = tmp_path_factory.mktemp("pki")
    pki = TestPki()
    server = pki.issue("localhost", usage="server", dns_names=("localhost", "127.0.0.1"))
    client = pki.issue("db2.test.fr", usage="auth", organizational_unit="300000001830002")
    return (pki.ca.write(folder, "ca").cert_path or folder,
            server.write(folder, "server"), client.write(folder, "client"))  # fmt: skip


@contextmanager
def tls_server(context: ssl.SSLContext) -> Iterator[tuple[int, list[str]]]:
    """Accepts connections on loopback, handshakes, records the version or the error."""
    listener = socket.create_server(("127.0.0.1", 0))
    outcomes: list[str] = []

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(raw, server_side=True) as conn:
                    outcomes.append(str(conn.version()))
                    conn.sendall(b"ok")
            except (ssl.SSLError, OSError) as exc:
                outcomes.append(f"refused: {exc}")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], outcomes
    finally:
        listener.close()
        thread.join(5)


def handshake(port: int, context: ssl.SSLContext) -> tuple[str, str]:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        conn.recv(2)
        cipher = conn.cipher()
        return str(conn.version()), cipher[0] if cipher else ""


def peer_client(material: tuple[Path, Issued, Issued]) -> ssl.SSLContext:
    """A peer's client that offers what we ask (not our policy), with a whitelisted-style cert."""
    ca, _server, client = material
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(ca))
    assert client.cert_path and client.key_path
    context.load_cert_chain(str(client.cert_path), str(client.key_path))
    return context


def test_server_refuses_cbc_only_clients_and_prefers_tls13(
    material: tuple[Path, Issued, Issued],
) -> None:
    ca, server, _client = material
    assert server.cert_path and server.key_path
    with tls_server(server_ssl_context(server.cert_path, server.key_path, ca)) as (port, seen):
        cbc = peer_client(material)
        cbc.maximum_version = ssl.TLSVersion.TLSv1_2
        cbc.set_ciphers(CBC_ONLY)
        with pytest.raises(ssl.SSLError):
            handshake(port, cbc)
        modern = peer_client(material)
        assert handshake(port, modern)[0] == "TLSv1.3"
        tls12 = peer_client(material)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        version, cipher = handshake(port, tls12)
        assert version == "TLSv1.2" and ("GCM" in cipher or "CHACHA20" in cipher)
    assert seen[0].startswith("refused") and seen[1:] == ["TLSv1.3", "TLSv1.2"]


@pytest.mark.parametrize("which", ["mutual TLS client", "verifying client"])
def test_our_clients_refuse_a_cbc_only_server(
    material: tuple[Path, Issued, Issued], which: str
) -> None:
    ca, server, client = material
    assert server.cert_path and server.key_path and client.cert_path and client.key_path
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    old.load_cert_chain(str(server.cert_path), str(server.key_path))
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.set_ciphers(CBC_ONLY)
    ours = (
        client_ssl_context(client.cert_path, client.key_path, ca)
        if which == "mutual TLS client"
        else client_context(str(ca))
    )
    with tls_server(old) as (port, seen), pytest.raises(ssl.SSLError):
        handshake(port, ours)
    assert seen and seen[0].startswith("refused")
