"""Running the Pro Santé Connect simulator: `LocalPsc` (uvicorn in a thread, for tests and the
demo) and `run_psc_simulator` (blocking, behind `drimbox sim psc`).

`LocalPsc` listens on a free loopback port (HTTPS when given a certificate), publishes PSC's
endpoints under its URL, and hands tests the provider's helpers to mint tokens with chosen
claims. Given a client CA, it also listens on a second port for mutual TLS (client certificate
asked, not required: a request without one gets PSC's OAuth error, not a failed handshake), named
in the discovery document's `mtls_endpoint_aliases`; `LocalPsc.with_mtls` registers the client by
the subject of a fresh ORG AUTH CLI certificate from the test PKI, as PSC registers a DRIMbox.
Keys live in memory for the life of the object: stopping and starting again keeps them
(and the sessions), as a restart of the real service would not invalidate issued tokens.
Never deploy it.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Self

import uvicorn
from cryptography.hazmat.primitives.serialization import Encoding
from joserfc.jwk import RSAKey

from drimbox.sim.pki import Issued, TestPki
from drimbox.sim.ports import free_port
from drimbox.sim.psc.app import PscPaths, create_psc_app
from drimbox.sim.psc.provider import PscProvider
from drimbox.sim.psc.settings import DEFAULT_CLIENT, PscSimSettings, SimClient, load_users
from drimbox.sim.serving import ThreadedService
from drimbox.trust.tls import MtlsH11Protocol

# The SIRET in the test client certificate's OU (PSC registers a DRIMbox operator by it).
DEMO_SIRET = "49970036790900"


class PscSimulatorError(RuntimeError):
    """The simulator could not start."""


def _uvicorn_config(
    app: Any, settings: PscSimSettings, host: str, port: int, *, mtls_listener: bool = False
) -> uvicorn.Config:
    cert, key = (
        (settings.mtls_cert, settings.mtls_key)
        if mtls_listener
        else (settings.tls_cert, settings.tls_key)
    )
    tls: dict[str, Any] = {}
    if cert is not None and key is not None:
        tls = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
        # The client certificate is asked on the mutual-TLS listener, or on the only one when
        # there is no second: asked, not required, as PSC (browsers reach the same host without
        # one, and a request without it gets the OAuth error, not a failed handshake).
        if settings.client_ca is not None and (mtls_listener or settings.mtls_cert is None):
            tls |= {
                "ssl_ca_certs": str(settings.client_ca),
                "ssl_cert_reqs": ssl.CERT_OPTIONAL,
                "http": MtlsH11Protocol,
            }
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        **tls,
    )


class _MtlsListener(ThreadedService):
    """The simulator's second listener, where clients authenticate by certificate."""

    label = "PSC (TLS mutuel)"
    error = PscSimulatorError

    def __init__(self, psc: LocalPsc, port: int) -> None:
        super().__init__(psc.host, port, psc.start_timeout)
        self._psc = psc

    def server_config(self) -> uvicorn.Config:
        app = create_psc_app(self._psc.provider, self._psc.paths)
        return _uvicorn_config(app, self._psc.settings, self.host, self.port, mtls_listener=True)


class LocalPsc(ThreadedService):
    """A simulated Pro Santé Connect on 127.0.0.1. `with LocalPsc() as psc: psc.discovery_url`."""

    label = "PSC"
    error = PscSimulatorError

    def __init__(
        self,
        settings: PscSimSettings | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        mtls_port: int | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.settings = settings or PscSimSettings()
        if (self.settings.tls_cert is None) != (self.settings.tls_key is None):
            raise PscSimulatorError("tls_cert and tls_key go together")
        if (self.settings.mtls_cert is None) != (self.settings.mtls_key is None):
            raise PscSimulatorError("mtls_cert and mtls_key go together")
        if self.settings.client_ca is not None and not (
            self.settings.mtls_cert or self.settings.tls_cert
        ):
            raise PscSimulatorError("client_ca needs tls_cert or mtls_cert (a TLS listener)")
        super().__init__(host, port or free_port(), start_timeout)
        self._mtls: _MtlsListener | None = None
        mtls_url = ""
        if self.settings.client_ca is not None and self.settings.mtls_cert is not None:
            self._mtls = _MtlsListener(self, mtls_port or free_port())
            mtls_url = f"https://{host}:{self._mtls.port}"
        self.paths = PscPaths(
            (self.settings.public_url or self.url).rstrip("/"), self.settings.realm, mtls_url
        )
        self.provider = PscProvider(self.settings, self.paths.issuer)
        # Set by `with_mtls`: the box's side of the registration.
        self.box_certificate: Issued | None = None
        self.ca_file: Path | None = None

    @classmethod
    def with_mtls(
        cls,
        folder: Path,
        pki: TestPki,
        settings: PscSimSettings | None = None,
        *,
        siret: str = DEMO_SIRET,
        **kwargs: Any,
    ) -> LocalPsc:
        """A simulator with a mutual-TLS listener (server certificate from `pki`; the CA chain
        written as `psc-ca.crt`, kept in `ca_file`), whose first client is registered by the
        subject of a fresh ORG AUTH CLI certificate (CN = the client id, OU = `siret`), written
        under `folder` as `psc-client.crt/.key` and kept in `box_certificate`."""
        settings = settings or PscSimSettings()
        first = settings.clients[0] if settings.clients else DEFAULT_CLIENT
        box = pki.issue(
            first.client_id,
            usage="auth",
            organizational_unit=siret,
            organization="OPERATEUR DRIMBOX DE TEST",
            state="Paris (75)",
        ).write(folder, "psc-client")
        server = pki.issue("psc.test", usage="server", dns_names=("localhost", "127.0.0.1"))
        server = server.write(folder, "psc-server")
        ca_file = folder / "psc-ca.crt"
        ca_file.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in pki.chain))
        registered = replace(first, tls_client_auth_subject_dn=box.subject)
        settings = replace(
            settings,
            clients=(registered, *settings.clients[1:]),
            mtls_cert=server.cert_path,
            mtls_key=server.key_path,
            client_ca=ca_file,
        )
        psc = cls(settings, **kwargs)
        psc.box_certificate = box
        psc.ca_file = ca_file
        return psc

    # --- where it is --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The listening base URL (the authorization endpoint is `<url>/auth`)."""
        scheme = "https" if self.settings.tls_cert is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def mtls_url(self) -> str:
        """The mutual-TLS listener's base URL ("" without one)."""
        return self.paths.mtls_base_url

    @property
    def issuer(self) -> str:
        return self.paths.issuer

    @property
    def discovery_url(self) -> str:
        """PSC's non-standard discovery path (`…/.well-known/wallet-openid-configuration`)."""
        return self.paths.discovery

    @property
    def client(self) -> SimClient:
        """The first registered client (the one tests and the demo use by default)."""
        return self.settings.clients[0] if self.settings.clients else DEFAULT_CLIENT

    def node_environ(self) -> dict[str, str]:
        """The `DRIMBOX_PSC__*` variables of a box signing in with this simulator's first
        client: its certificate after `with_mtls`, its secret otherwise (sandbox mode)."""
        environ = {
            "DRIMBOX_PSC__CLIENT_ID": self.client.client_id,
            "DRIMBOX_PSC__DISCOVERY_URL": self.discovery_url,
        }
        if self.ca_file is not None:
            environ["DRIMBOX_PSC__CA_FILE"] = str(self.ca_file)
        box = self.box_certificate
        if box is not None and box.cert_path is not None and box.key_path is not None:
            environ["DRIMBOX_PSC__TLS_CERT"] = str(box.cert_path)
            environ["DRIMBOX_PSC__TLS_KEY"] = str(box.key_path)
        else:
            environ["DRIMBOX_PSC__CLIENT_SECRET"] = self.client.client_secret
        return environ

    # --- lifecycle ----------------------------------------------------------------------------

    def server_config(self) -> uvicorn.Config:
        app = create_psc_app(self.provider, self.paths)
        return _uvicorn_config(app, self.settings, self.host, self.port)

    def start(self) -> Self:
        if self._mtls is not None:
            self._mtls.start()
        return super().start()

    def stop(self) -> None:
        super().stop()
        if self._mtls is not None:
            self._mtls.stop()

    # --- test helpers (delegated to the provider) ---------------------------------------------

    def authorize(
        self,
        user_id: str,
        *,
        redirect_uri: str,
        nonce: str | None,
        client_id: str | None = None,
        code_challenge: str | None = None,
        code_challenge_method: str | None = None,
        id_token_claims: Mapping[str, Any] | None = None,
        signing_key: RSAKey | None = None,
    ) -> str:
        """An authorization code as if `user_id` had logged in, without the browser leg.
        `id_token_claims` (None deletes a claim) and `signing_key` tamper with the ID token
        the code will yield at the token endpoint."""
        return self.provider.new_code(
            user_id,
            client_id=client_id or self.client.client_id,
            redirect_uri=redirect_uri,
            nonce=nonce,
            code_challenge=code_challenge,
            code_challenge_method=code_challenge_method,
            id_token_claims=id_token_claims,
            signing_key=signing_key,
        )

    def issue_tokens(
        self, user_id: str, *, client_id: str | None = None, nonce: str | None = None
    ) -> dict[str, Any]:
        """The token response of a whole login of `user_id` (no browser)."""
        return self.provider.issue_tokens(
            user_id, client_id=client_id or self.client.client_id, nonce=nonce
        )

    def mint_access_token(
        self,
        user_id: str,
        *,
        client_id: str | None = None,
        lifetime_s: int | None = None,
        claims: Mapping[str, Any] | None = None,
        key: RSAKey | None = None,
    ) -> str:
        """An access token; `lifetime_s < 0` makes it already expired."""
        return self.provider.mint_access_token(
            user_id,
            client_id=client_id or self.client.client_id,
            lifetime_s=lifetime_s,
            claims=claims,
            key=key,
        )

    def mint_id_token(
        self,
        user_id: str,
        *,
        client_id: str | None = None,
        nonce: str | None = None,
        claims: Mapping[str, Any] | None = None,
        key: RSAKey | None = None,
    ) -> str:
        """An ID token with chosen claims and signing key."""
        return self.provider.mint_id_token(
            user_id,
            client_id=client_id or self.client.client_id,
            nonce=nonce,
            claims=claims,
            key=key,
        )

    def foreign_key(self, *, same_kid: bool = False) -> RSAKey:
        """A key PSC does not publish (`same_kid`: forging the current key's kid)."""
        return self.provider.foreign_key(same_kid=same_kid)

    def rotate_key(self) -> RSAKey:
        return self.provider.rotate_key()

    def revoke(self, token: str) -> None:
        """Revoke one access or refresh token."""
        self.provider.revoke(token)


def run_psc_simulator(
    host: str = "127.0.0.1",
    port: int = 8091,
    *,
    public_url: str | None = None,
    client_id: str = DEFAULT_CLIENT.client_id,
    client_secret: str = DEFAULT_CLIENT.client_secret,
    client_subject: str = "",
    redirect_uris: tuple[str, ...] = DEFAULT_CLIENT.redirect_uris,
    users_file: Path | None = None,
    access_token_lifetime_s: int = 300,
    refresh_token_lifetime_s: int = 1800,
    signed_userinfo: bool = False,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    client_ca: Path | None = None,
    mtls_port: int | None = None,
) -> None:
    """Serve a simulated PSC until interrupted (`drimbox sim psc`); with `client_ca`, the
    mutual-TLS listener on `mtls_port` uses the same certificate as the first one."""
    client = SimClient(
        client_id,
        client_secret,
        redirect_uris,
        redirect_uris,
        tls_client_auth_subject_dn=client_subject,
    )
    settings = PscSimSettings(
        clients=(client,),
        access_token_lifetime_s=access_token_lifetime_s,
        refresh_token_lifetime_s=refresh_token_lifetime_s,
        signed_userinfo=signed_userinfo,
        public_url=public_url,
        tls_cert=tls_cert,
        tls_key=tls_key,
        client_ca=client_ca,
        mtls_cert=tls_cert if client_ca is not None else None,
        mtls_key=tls_key if client_ca is not None else None,
    )
    if users_file is not None:
        settings.users = load_users(users_file)
    with LocalPsc(settings, host=host, port=port, mtls_port=mtls_port):
        threading.Event().wait()
