"""Fixtures for the PSC client tests: a simulated PSC and the test relying party, both on real
loopback sockets (see `psc_support`). The relying party authenticates to PSC by mutual TLS
(`tls_client_auth`, the production mode), with a certificate of a test PKI made here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from psc_support import RelyingParty, client_settings, relying_party_app, serve

from drimbox.auth.psc import PscClient
from drimbox.sim.pki import TestPki
from drimbox.sim.ports import free_port
from drimbox.sim.psc import LocalPsc


@pytest.fixture(scope="module")
def psc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPsc]:
    with LocalPsc.with_mtls(tmp_path_factory.mktemp("psc"), TestPki()) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def rp(psc: LocalPsc) -> Iterator[RelyingParty]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with PscClient(client_settings(psc, f"{url}/callback")) as client:
        party = RelyingParty(url, client)
        with serve(relying_party_app(party), port):
            yield party


@pytest.fixture
def client(rp: RelyingParty) -> PscClient:
    return rp.client
