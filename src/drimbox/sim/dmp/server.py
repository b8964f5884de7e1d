"""Running the DMP simulator: `LocalDmp` (uvicorn in a thread, for tests and the demo) and
`run_dmp_simulator` (blocking, behind `drimbox sim dmp`).

`LocalDmp` listens on a free loopback port, optionally with TLS (mutual when a client CA is
given: CERT_REQUIRED, so a client without a certificate from that CA fails the handshake). It
can be stopped and started again on the same port and database file, which is how tests
simulate an outage of the national service. Never deploy it.
"""

from __future__ import annotations

import ssl
from dataclasses import replace
from pathlib import Path

import uvicorn

from drimbox.sim.dmp.app import create_dmp_app
from drimbox.sim.dmp.settings import DmpSimSettings
from drimbox.sim.ports import free_port
from drimbox.sim.serving import ThreadedService
from drimbox.trust.tls import MtlsH11Protocol


class DmpSimulatorError(RuntimeError):
    """The simulator could not start."""


def _uvicorn_config(settings: DmpSimSettings, host: str, port: int) -> uvicorn.Config:
    tls: dict[str, object] = {}
    if settings.tls_cert is not None:
        tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
        if settings.client_ca is not None:
            tls["ssl_ca_certs"] = str(settings.client_ca)
            tls["ssl_cert_reqs"] = ssl.CERT_REQUIRED
            # Puts the client certificate in each request's scope: the VIHF is tied to it.
            tls["http"] = MtlsH11Protocol
    return uvicorn.Config(
        create_dmp_app(settings),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        **tls,  # type: ignore[arg-type]
    )


class LocalDmp(ThreadedService):
    """A simulated DMP on 127.0.0.1. `with LocalDmp(settings) as dmp: dmp.url …`."""

    label = "DMP"
    error = DmpSimulatorError

    def __init__(
        self,
        settings: DmpSimSettings,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        if (settings.tls_cert is None) != (settings.tls_key is None):
            raise DmpSimulatorError("tls_cert and tls_key go together")
        super().__init__(host, port or free_port(), start_timeout)
        self.settings = settings

    @property
    def url(self) -> str:
        """Base URL: the services are `<url>/registry`, `/repository`, `/patients`,
        `/habilitations`."""
        scheme = "https" if self.settings.tls_cert is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def server_config(self) -> uvicorn.Config:
        return _uvicorn_config(self.settings, self.host, self.port)

    def with_settings(self, **changes: object) -> LocalDmp:
        """Another simulator on the same port and database, with some settings changed."""
        return LocalDmp(replace(self.settings, **changes), host=self.host, port=self.port)  # type: ignore[arg-type]


def run_dmp_simulator(
    host: str,
    port: int,
    db_path: Path,
    trusted_certs: list[Path],
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    client_ca: Path | None = None,
) -> None:
    """Serve a simulated DMP until interrupted (`drimbox sim dmp`)."""
    settings = DmpSimSettings(
        database_path=Path(db_path),
        trusted_vihf_certs=DmpSimSettings.load_certs(trusted_certs),
        tls_cert=tls_cert,
        tls_key=tls_key,
        client_ca=client_ca,
    )
    uvicorn.Server(_uvicorn_config(settings, host, port)).run()
