"""A simulated DMP over mutual TLS, with the site's certificates from a test PKI made now."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from drimbox.sim.dmp.server import LocalDmp
from drimbox.sim.dmp.settings import DmpSimSettings
from drimbox.sim.pki import SiteCertificates, TestPki, site_certificates

# The organisation of the official CDA's legal authenticator (CR_C.xml): the site's structure, so
# the DMP's certificates name it (OU) like the VIHF and the metadata do.
STRUCTURE = "101235555"


@dataclass
class DmpEnvironment:
    dmp: LocalDmp
    certs: SiteCertificates

    def node_environ(self) -> dict[str, str]:
        """DRIMBOX_DMP__* overrides that point a node at this DMP with the site's certificates."""
        c = self.certs
        return {
            "DRIMBOX_DMP__BASE_URL": self.dmp.url,
            "DRIMBOX_DMP__TLS_CERT": str(c.auth.cert_path),
            "DRIMBOX_DMP__TLS_KEY": str(c.auth.key_path),
            "DRIMBOX_DMP__TLS_CA": str(c.ca.cert_path),
            "DRIMBOX_DMP__SIGNING_CERT": str(c.signing.cert_path),
            "DRIMBOX_DMP__SIGNING_KEY": str(c.signing.key_path),
            "DRIMBOX_DMP__LPS_ID": "DRIMBOX-TEST",
            "DRIMBOX_DMP__LPS_HOMOLOGATION_ID": "HOMOLOG-TEST",
            "DRIMBOX_DMP__RETRY_INITIAL_S": "0.2",
            "DRIMBOX_DMP__RETRY_MAX_S": "1",
            "DRIMBOX_SITE__STRUCTURE_ID": STRUCTURE,
        }

    def _client(self) -> httpx.Client:
        c = self.certs
        context = ssl.create_default_context(cafile=str(c.ca.cert_path))
        context.load_cert_chain(str(c.auth.cert_path), str(c.auth.key_path))
        return httpx.Client(verify=context)

    def documents(self, patient_ins: str = "279035121518989") -> list[dict[str, Any]]:
        """The simulator's read-only registry view (plain HTTP client with the site's cert)."""
        with self._client() as client:
            response = client.get(
                f"{self.dmp.url}/sim/registry/documents", params={"patient_id": patient_ins}
            )
            response.raise_for_status()
            result: list[dict[str, Any]] = response.json()
            return result

    def post(self, url: str, content: bytes, content_type: str) -> httpx.Response:
        """A raw request to the DMP with the site's client certificate."""
        with self._client() as client:
            return client.post(url, content=content, headers={"Content-Type": content_type})

    def content(self, unique_id: str) -> bytes:
        """The bytes the simulator stored for the entry `unique_id`."""
        with self._client() as client:
            response = client.get(f"{self.dmp.url}/sim/registry/documents/{unique_id}/content")
            response.raise_for_status()
            return response.content

    def stats(self) -> dict[str, Any]:
        with self._client() as client:
            response = client.get(f"{self.dmp.url}/sim/stats")
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result


@contextmanager
def local_dmp(
    folder: Path, pki: TestPki | None = None, **settings: Any
) -> Iterator[DmpEnvironment]:
    certs = site_certificates(folder / "pki", pki, structure_id=STRUCTURE)
    assert certs.server.cert_path and certs.server.key_path and certs.ca.cert_path
    sim_settings = DmpSimSettings(
        database_path=folder / "dmp.db",
        trusted_vihf_certs=[certs.ca.cert_pem],
        tls_cert=certs.server.cert_path,
        tls_key=certs.server.key_path,
        client_ca=certs.ca.cert_path,
        **settings,
    )
    with LocalDmp(sim_settings) as dmp:
        yield DmpEnvironment(dmp, certs)
