"""Running the Pro Santé Connect simulator: `LocalPsc` (uvicorn in a thread, for tests and the
demo) and `run_psc_simulator` (blocking, behind `drimbox sim psc`).

`LocalPsc` listens on a free loopback port (HTTPS when given a certificate), publishes PSC's
endpoints under its URL, and hands tests the provider's helpers to mint tokens with chosen
claims. Keys live in memory for the life of the object: stopping and starting again keeps them
(and the sessions), as a restart of the real service would not invalidate issued tokens.
Never deploy it.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import uvicorn
from joserfc.jwk import RSAKey

from drimbox.sim.ports import free_port
from drimbox.sim.psc.app import PscPaths, create_psc_app
from drimbox.sim.psc.provider import PscProvider
from drimbox.sim.psc.settings import DEFAULT_CLIENT, PscSimSettings, SimClient, load_users
from drimbox.sim.serving import ThreadedService
from drimbox.trust.tls import MtlsH11Protocol


class PscSimulatorError(RuntimeError):
    """The simulator could not start."""


def _uvicorn_config(app: Any, settings: PscSimSettings, host: str, port: int) -> uvicorn.Config:
    tls: dict[str, Any] = {}
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
        if settings.client_ca is not None:
            # Optional, as PSC: browsers reach the same host without a certificate.
            tls |= {"ssl_ca_certs": str(settings.client_ca), "ssl_cert_reqs": ssl.CERT_OPTIONAL,
                    "http": MtlsH11Protocol}  # fmt: skip
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        **tls,
    )


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
        start_timeout: float = 15.0,
    ) -> None:
        self.settings = settings or PscSimSettings()
        if (self.settings.tls_cert is None) != (self.settings.tls_key is None):
            raise PscSimulatorError("tls_cert and tls_key go together")
        super().__init__(host, port or free_port(), start_timeout)
        self.paths = PscPaths(
            (self.settings.public_url or self.url).rstrip("/"), self.settings.realm
        )
        self.provider = PscProvider(self.settings, self.paths.issuer)

    # --- where it is --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The listening base URL (the authorization endpoint is `<url>/auth`)."""
        scheme = "https" if self.settings.tls_cert is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

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

    # --- lifecycle ----------------------------------------------------------------------------

    def server_config(self) -> uvicorn.Config:
        app = create_psc_app(self.provider, self.paths)
        return _uvicorn_config(app, self.settings, self.host, self.port)

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
    redirect_uris: tuple[str, ...] = DEFAULT_CLIENT.redirect_uris,
    users_file: Path | None = None,
    access_token_lifetime_s: int = 300,
    refresh_token_lifetime_s: int = 1800,
    signed_userinfo: bool = False,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> None:
    """Serve a simulated PSC until interrupted (`drimbox sim psc`)."""
    settings = PscSimSettings(
        clients=(SimClient(client_id, client_secret, redirect_uris, redirect_uris),),
        access_token_lifetime_s=access_token_lifetime_s,
        refresh_token_lifetime_s=refresh_token_lifetime_s,
        signed_userinfo=signed_userinfo,
        public_url=public_url,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    if users_file is not None:
        settings.users = load_users(users_file)
    psc = LocalPsc(settings, host=host, port=port)
    app = create_psc_app(psc.provider, psc.paths)
    uvicorn.Server(_uvicorn_config(app, settings, host, port)).run()
