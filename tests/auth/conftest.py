"""Fixtures for the PSC client tests: a simulated PSC and the test relying party, both on real
loopback sockets (see `psc_support`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from psc_support import RelyingParty, client_settings, relying_party_app, serve

from drimbox.auth.psc import PscClient
from drimbox.sim.ports import free_port
from drimbox.sim.psc import LocalPsc


@pytest.fixture(scope="module")
def psc() -> Iterator[LocalPsc]:
    with LocalPsc() as simulator:
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
