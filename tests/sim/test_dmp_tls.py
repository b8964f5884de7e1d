"""The DMP simulator behind mutual TLS: only clients with a certificate from the configured CA
get through the handshake."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from test_dmp_requests import make_publication, make_vihf, post

from drimbox.sim.dmp import DmpSimSettings, LocalDmp
from drimbox.sim.pki import Issued, TestPki


@dataclass
class Material:
    ca_path: Path
    server: Issued
    client: Issued
    stranger: Issued
    signer: Issued


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    folder = tmp_path_factory.mktemp("pki")
    pki = TestPki()
    ca_path = folder / "ca.crt"
    ca_path.write_bytes(pki.ca.cert_pem)
    other = TestPki("AC AUTRE")
    return Material(
        ca_path=ca_path,
        server=pki.issue("dmp.test", usage="server", dns_names=("127.0.0.1", "localhost")).write(
            folder, "server"
        ),
        client=pki.issue("DRIMbox", usage="auth", organizational_unit="499700367909006").write(
            folder, "client"
        ),
        stranger=other.issue("DRIMbox", usage="auth", organizational_unit="499700367909006").write(
            folder, "stranger"
        ),
        signer=pki.issue("DRIMbox", usage="sign", organizational_unit="499700367909006"),
    )


@pytest.fixture
def dmp(tmp_path: Path, material: Material) -> Iterator[LocalDmp]:
    settings = DmpSimSettings(
        database_path=tmp_path / "dmp.db",
        trusted_vihf_certs=[material.ca_path.read_bytes()],
        tls_cert=material.server.cert_path,
        tls_key=material.server.key_path,
        client_ca=material.ca_path,
    )
    with LocalDmp(settings) as simulator:
        yield simulator


def context(material: Material, client: Issued | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(material.ca_path))
    if client is not None:
        assert client.cert_path is not None and client.key_path is not None
        ctx.load_cert_chain(str(client.cert_path), str(client.key_path))
    return ctx


def test_a_client_of_the_trusted_ca_is_served(dmp: LocalDmp, material: Material) -> None:
    assert dmp.url.startswith("https://127.0.0.1:")
    with httpx.Client(base_url=dmp.url, verify=context(material, material.client)) as client:
        assert client.get("/sim/health").json() == {"status": "ok"}
        publication = make_publication(material.signer)
        answer = post(
            client, "repository", publication.envelope(make_vihf(material.signer)), mtom=True
        )
        assert answer.status == "Success", answer.error_contexts


@pytest.mark.parametrize("who", ["nobody", "stranger"])
def test_other_clients_fail_the_handshake(dmp: LocalDmp, material: Material, who: str) -> None:
    client_cert = None if who == "nobody" else material.stranger
    with (
        httpx.Client(base_url=dmp.url, verify=context(material, client_cert)) as client,
        pytest.raises(httpx.TransportError),
    ):
        # TLS 1.3 reports the refused certificate on the first read: either way no answer comes.
        client.get("/sim/health")


def test_restart_on_the_same_port_keeps_tls(dmp: LocalDmp, material: Material) -> None:
    port = dmp.port
    dmp.restart()
    assert dmp.port == port
    with httpx.Client(base_url=dmp.url, verify=context(material, material.client)) as client:
        assert client.get("/sim/health").status_code == 200
