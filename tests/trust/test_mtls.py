"""Mutual TLS between boxes over real loopback sockets, and the whitelist check of the peer.

A box is accepted when its certificate comes from the configured CA, is valid, and its subject is
the `DNCertificatOperateur` of a whitelist entry. Expired and foreign-CA certificates never get
past the handshake; a good certificate whose DN is not listed is refused by `PeerCheck`.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from drimbox.http.multipart_client import FetchError, open_multipart
from drimbox.sim.pki import Issued, TestPki
from drimbox.trust.tls import (
    MtlsH11Protocol,
    PeerCheck,
    PeerRefused,
    client_ssl_context,
    peer_certificate,
    peer_certificate_from_scope,
    server_ssl_context,
)
from drimbox.trust.whitelist import Domain, Whitelist, verify_whitelist
from support.trust import Ans, domain

SERVER_HOST = "db1.test.mesimagesmedicales.fr"


def _issue(pki: TestPki, entry: Domain, folder: Path, name: str, **kwargs: Any) -> Issued:
    """A certificate whose subject is the entry's DN (as IGC-Santé would issue it)."""
    dn = {k: v for k, _, v in (p.partition("=") for p in entry.operator_dn.split(","))}
    issued = pki.issue(dn["CN"], organizational_unit=dn["OU"], organization=dn["O"],
                       state=dn["ST"], **kwargs)  # fmt: skip
    return issued.write(folder, name)


@dataclass
class Network:
    whitelist: Whitelist
    ca_file: Path
    server: Issued
    accepted: Issued  # db2, on the list
    unknown: Issued  # right CA, DN not on the list
    expired: Issued  # db2's DN, expired
    foreign: Issued  # db2's DN, another CA
    impostor_server: Issued  # SAN of db1, DN of an unlisted box


@pytest.fixture(scope="module")
def network(ans: Ans, tmp_path_factory: pytest.TempPathFactory) -> Network:
    folder = tmp_path_factory.mktemp("mtls")
    pki, other = TestPki("AC IGC-SANTE TEST"), TestPki("AC PIRATE")
    db1, db2, db9 = domain(1), domain(2), domain(9)
    xml = ans.signed_list([db1, db2], datetime.now(UTC) - timedelta(minutes=1))
    past = datetime.now(UTC) - timedelta(days=400)
    sans = (SERVER_HOST, "127.0.0.1")
    return Network(
        whitelist=verify_whitelist(xml, [ans.root.root]),
        ca_file=pki.ca.write(folder, "ca").cert_path,  # type: ignore[arg-type]
        server=_issue(pki, db1, folder, "server", usage="server", dns_names=sans),
        accepted=_issue(pki, db2, folder, "accepted", usage="auth"),
        unknown=_issue(pki, db9, folder, "unknown", usage="auth"),
        expired=_issue(pki, db2, folder, "expired", usage="auth", not_before=past, days=30),
        foreign=_issue(other, db2, folder, "foreign", usage="auth"),
        impostor_server=_issue(pki, db9, folder, "impostor", usage="server", dns_names=sans),
    )


@dataclass
class Seen:
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


async def _serve(context: ssl.SSLContext, check: PeerCheck, seen: Seen) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            entry = check.check_incoming(peer_certificate(writer.transport))
        except PeerRefused as refusal:
            seen.refused.append(refusal.detail)
            writer.write(b"REFUSED\n")
        else:
            seen.accepted.append(entry.identifier)
            writer.write(f"OK {entry.identifier}\n".encode())
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)


async def _call(port: int, context: ssl.SSLContext) -> str:
    """What the server says to this client; "handshake failed: …" when TLS refuses it."""
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=SERVER_HOST
        )
        line = await asyncio.wait_for(reader.readline(), timeout=5)
        writer.close()
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as exc:
        return f"handshake failed: {exc}"
    # With TLS 1.3 the server judges the client certificate after the client's handshake ends:
    # a refusal then arrives as an alert on the first read, or as an empty read.
    return line.decode().strip() or "handshake failed: connection closed"


def _conversation(network: Network, client: Issued) -> tuple[str, Seen]:
    seen = Seen()

    async def scenario() -> str:
        server_context = server_ssl_context(
            network.server.cert_path,  # type: ignore[arg-type]
            network.server.key_path,  # type: ignore[arg-type]
            network.ca_file,
        )
        server = await _serve(server_context, PeerCheck(lambda: network.whitelist), seen)
        port = server.sockets[0].getsockname()[1]
        client_context = client_ssl_context(
            client.cert_path,  # type: ignore[arg-type]
            client.key_path,  # type: ignore[arg-type]
            network.ca_file,
        )
        try:
            return await _call(port, client_context)
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(scenario()), seen


def test_listed_peer_is_accepted(network: Network) -> None:
    answer, seen = _conversation(network, network.accepted)
    assert answer == "OK 2" and seen.accepted == ["2"]


def test_unlisted_peer_from_the_right_ca_is_refused_by_peer_check(network: Network) -> None:
    answer, seen = _conversation(network, network.unknown)
    assert answer == "REFUSED"
    assert seen.accepted == [] and "db9.test.mesimagesmedicales.fr" in seen.refused[0]


@pytest.mark.parametrize("who", ["expired", "foreign"])
def test_expired_or_foreign_certificate_is_refused_at_the_handshake(
    network: Network, who: str
) -> None:
    answer, seen = _conversation(network, getattr(network, who))
    assert answer.startswith("handshake failed"), answer
    assert seen == Seen()  # the application never saw the connection


def test_tls_below_1_2_is_refused(network: Network) -> None:
    context = server_ssl_context(network.server.cert_path, network.server.key_path,  # type: ignore[arg-type]
                                 network.ca_file)  # fmt: skip
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED


# -- outgoing calls ------------------------------------------------------------------------------


def _server_certificate(network: Network, server: Issued) -> Any:
    async def scenario() -> Any:
        context = server_ssl_context(server.cert_path, server.key_path, network.ca_file)  # type: ignore[arg-type]
        listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=context)
        port = listener.sockets[0].getsockname()[1]
        client = client_ssl_context(network.accepted.cert_path, network.accepted.key_path,  # type: ignore[arg-type]
                                    network.ca_file)  # fmt: skip
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client,
                                                  server_hostname=SERVER_HOST)  # fmt: skip
        certificate = peer_certificate(writer.transport)
        writer.close()
        listener.close()
        await listener.wait_closed()
        return certificate

    return asyncio.run(scenario())


def test_outgoing_call_to_a_listed_box(network: Network) -> None:
    check = PeerCheck(network.whitelist)
    certificate = _server_certificate(network, network.server)
    url = f"https://{SERVER_HOST}/wado-rs/studies/1.2.3"
    assert check.check_outgoing(url, certificate).identifier == "1"


def test_outgoing_call_refused_when_dn_or_host_do_not_match(network: Network) -> None:
    check = PeerCheck(network.whitelist)
    impostor = _server_certificate(network, network.impostor_server)
    with pytest.raises(PeerRefused, match="liste blanche"):
        check.check_outgoing(f"https://{SERVER_HOST}/wado-rs", impostor)
    good = _server_certificate(network, network.server)
    with pytest.raises(PeerRefused, match="pas dans la liste blanche"):
        check.check_outgoing("https://db9.test.mesimagesmedicales.fr/wado-rs", good)
    with pytest.raises(PeerRefused):
        PeerCheck(lambda: None).check_outgoing(f"https://{SERVER_HOST}/", good)


# -- ASGI: uvicorn with MtlsH11Protocol, httpx as the calling box --------------------------------


@pytest.fixture
def uvicorn_box(network: Network) -> Iterator[int]:
    check = PeerCheck(network.whitelist)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            entry = check.check_incoming(peer_certificate_from_scope(scope))
            status, body = 200, f"bonjour {entry.name}".encode()
        except PeerRefused as refusal:
            status, body = 403, refusal.message.encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http=MtlsH11Protocol,
        lifespan="off",
        log_level="warning",
        ssl_context_factory=lambda _config, _default: server_ssl_context(
            network.server.cert_path,  # type: ignore[arg-type]
            network.server.key_path,  # type: ignore[arg-type]
            network.ca_file,
        ),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(timeout=10)


def _get(network: Network, client: Issued, port: int) -> tuple[int, str, Any]:
    """(status, body, server certificate): the certificate is read while the connection is
    open, before the body, as a box must do before trusting what a peer sends."""
    context = client_ssl_context(client.cert_path, client.key_path, network.ca_file)  # type: ignore[arg-type]

    async def get() -> tuple[int, str, Any]:
        # Connect to loopback while checking the certificate against the box's whitelisted name.
        url = f"https://{SERVER_HOST}:{port}/"
        async with open_multipart(
            url, {}, ssl_context=context, connect_to="127.0.0.1", timeout_s=10
        ) as response:
            ssl_object = response.ssl_object
            certificate = peer_certificate(ssl_object) if ssl_object is not None else None
            return response.status, await response.text(), certificate

    return asyncio.run(get())


def test_asgi_app_reads_the_peer_certificate(network: Network, uvicorn_box: int) -> None:
    status, text, server_certificate = _get(network, network.accepted, uvicorn_box)
    assert status == 200 and text == "bonjour Éditeur 2"
    assert server_certificate is not None
    url = f"https://{SERVER_HOST}/"
    assert PeerCheck(network.whitelist).check_outgoing(url, server_certificate).identifier == "1"

    refused, text, _ = _get(network, network.unknown, uvicorn_box)
    assert refused == 403 and "liste blanche" in text


def test_asgi_handshake_refuses_a_foreign_certificate(network: Network, uvicorn_box: int) -> None:
    with pytest.raises(FetchError):
        _get(network, network.foreign, uvicorn_box)
