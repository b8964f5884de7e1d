"""Assembles a node's two HTTP origins from its configuration.

- the peer origin (`[http]`, the whitelist's `db` name): WADO-RS for DRIM-M peers over mutual TLS
  (when `[trust] tls_cert` is set), `/health` and `/status`;
- the metrics port (`[metrics]`, off by default): `/metrics` for Prometheus;
- the user origin (`[viewer]`, the `vi` name): Pro Santé Connect sign-in, OHIF and its DICOMweb,
  the IID links, the Conso pages when `[roles] conso` is on (`web.conso_routes`: contextual
  launch, exam history, prefetch and export), and the `extra_routers` (administration).

Owns the choice of token verifier and session store; the routes themselves live elsewhere.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter

from drimbox.auth.psc import PscClient, PscIntrospectionVerifier
from drimbox.auth.tokens import InvalidToken, TokenIdentity, TokenVerifier
from drimbox.config import Config
from drimbox.conso.launch import MAX_FORM_BYTES
from drimbox.db import Database
from drimbox.dicom.pacs import PacsClient
from drimbox.dicom.retrieve import ImageService
from drimbox.http.server import HttpServer
from drimbox.http.tlspolicy import client_context, server_context
from drimbox.source.pipeline import pacs_settings
from drimbox.trust.keys import load_cert_chain
from drimbox.trust.store import WhitelistStore
from drimbox.trust.tally import AccessTally
from drimbox.trust.tls import MtlsH11Protocol, PeerCheck, server_ssl_context
from drimbox.web.admin_routes import admin_router
from drimbox.web.app import PEER_PREFIX, VIEWER_PREFIX, create_peer_app, create_viewer_app
from drimbox.web.auth_routes import CALLBACK_PATH, SessionTokens, auth_router, psc_settings
from drimbox.web.conso_routes import (
    LAUNCH_CONFIRM_PATH,
    LAUNCH_PATH,
    ConsoService,
    conso_router,
)
from drimbox.web.metrics_app import ServedMetricsMiddleware, create_metrics_app
from drimbox.web.sessions import DbSessionStore, load_secret_key
from drimbox.web.status import StatusSources, status_router
from drimbox.web.viewer import ViewerAuth


class NoTokenVerifier:
    """Used when `[psc]` is not configured: every peer token is refused, with the reason."""

    def verify(self, token: str) -> TokenIdentity:
        raise InvalidToken("vérification des jetons non configurée sur cette DRIMbox ([psc])")


def psc_client(config: Config) -> PscClient | None:
    if not config.psc.configured:
        return None
    redirect = config.psc.redirect_uri or f"{config.viewer.public_url}{CALLBACK_PATH}"
    return PscClient(psc_settings(config, redirect))


def peer_verifier(client: PscClient | None, config: Config) -> TokenVerifier:
    if client is None:
        return NoTokenVerifier()
    return PscIntrospectionVerifier(
        client,
        cache_ttl_s=config.psc.introspection_cache_s,
        allowed_clients=config.psc.accepted_peer_clients,
    )


def dmp_status_client(config: Config) -> httpx.Client | None:
    """An HTTP client with the site's DMP TLS material, for the status check."""
    dmp = config.dmp
    if not dmp.base_url:
        return None
    context = client_context(dmp.tls_ca)
    if dmp.tls_cert:
        load_cert_chain(context, dmp.tls_cert, dmp.tls_key or dmp.tls_cert, dmp.key_passphrase_env)
    return httpx.Client(verify=context, timeout=5.0)


@dataclass
class WebServers:
    peer: HttpServer
    viewer: HttpServer
    sessions: DbSessionStore
    conso: ConsoService | None = None
    session_tokens: SessionTokens | None = None
    metrics: HttpServer | None = None  # `[metrics] enabled`

    def servers(self) -> list[HttpServer]:
        return [self.peer, self.viewer, *([self.metrics] if self.metrics else [])]

    def close(self) -> None:
        """Stop the background work of the pages (after the servers stopped)."""
        if self.conso is not None:
            self.conso.close()


def _server(config: Config, app: Any, host: str, port: int, **options: Any) -> HttpServer:
    """A listener of the node, with the limits every origin applies ([http])."""
    return HttpServer(app, host, port, header_timeout_s=config.http.header_timeout_s,
                      max_body_bytes=config.http.max_body_bytes, **options)  # fmt: skip


def transport_problems(config: Config) -> list[str]:
    """Why the node must not start as configured (French): the peer origin never falls back to
    plain HTTP silently — only with `[http] insecure_plain_http` (demo, tests)."""
    if config.trust.tls_cert or config.http.insecure_plain_http:
        return []
    return [
        "l'origine des pairs (port [http]) servirait les images en HTTP clair : configurez le "
        "TLS mutuel ([trust] tls_cert, tls_key, tls_ca), ou, pour une démonstration seulement, "
        "[http] insecure_plain_http = true"
    ]


def viewer_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The user origin's own HTTPS (`[viewer] tls_cert`), under the box's TLS policy."""
    viewer = config.viewer
    if not viewer.tls_cert:
        return None
    context = server_context()
    load_cert_chain(context, viewer.tls_cert, viewer.tls_key, viewer.key_passphrase_env)
    return context


def build_web(
    config: Config,
    db: Database,
    images: ImageService,
    whitelist: WhitelistStore | None,
    *,
    extra_routers: list[APIRouter] | None = None,
) -> WebServers:
    client = psc_client(config)
    trust = config.trust
    peer_check = (
        PeerCheck(whitelist.current, whitelist.revocation) if whitelist is not None else None
    )
    # One count of image accesses for both origins: the console writes it before showing it.
    tally = AccessTally(db)
    peer_app = create_peer_app(
        config,
        db,
        peer_verifier(client, config),
        images=images,
        peer_check=peer_check,
        tally=tally,
    )
    status = StatusSources(
        config=config,
        db=db,
        pacs=PacsClient(pacs_settings(config)) if config.roles.source else None,
        whitelist=whitelist,
        cache=images.cache,
        dmp_http=dmp_status_client(config),
    )
    peer_app.include_router(status_router(status))
    metrics = images.metrics
    peer_app.add_middleware(
        ServedMetricsMiddleware, metrics=metrics, prefix=PEER_PREFIX, channel="peer"
    )
    peer_tls = None
    if trust.tls_cert:
        peer_tls = server_ssl_context(
            trust.tls_cert, trust.tls_key, trust.tls_ca, trust.key_passphrase_env
        )
    peer = _server(
        config,
        peer_app,
        config.http.host,
        config.http.port,
        ssl=peer_tls,
        http_protocol=MtlsH11Protocol if peer_tls is not None else None,
    )
    sessions = DbSessionStore(
        db,
        load_secret_key(Path(config.store.secret_key_file)),
        max_age=timedelta(hours=config.psc.session_max_h),
    )
    routers = list(extra_routers or [])
    session_tokens = SessionTokens(sessions, client) if client is not None else None
    routers.append(
        admin_router(
            config, db, sessions, status=status, whitelist=whitelist, cache=images.cache,
            access_token=session_tokens.access_token if session_tokens else None,
            tally=tally,
        )
    )  # fmt: skip
    conso = None
    if config.roles.conso:
        conso = ConsoService(
            config,
            db,
            sessions,
            images,
            whitelist,
            access_token=session_tokens.access_token if session_tokens else None,
        )
        routers.insert(0, conso_router(conso))
    if client is not None:
        secure = config.viewer.public_url.startswith("https://")
        routers.insert(0, auth_router(client, sessions, db, secure_cookies=secure))
    viewer_app = create_viewer_app(
        config, db, ViewerAuth(sessions), images=images, routers=routers, tally=tally
    )
    viewer_app.add_middleware(
        ServedMetricsMiddleware, metrics=metrics, prefix=VIEWER_PREFIX, channel="viewer"
    )
    # A launch form is a few hundred bytes: refused past its own limit while it is read.
    viewer = _server(config, viewer_app, config.viewer.host, config.viewer.port,
                     ssl=viewer_ssl_context(config),
                     path_body_limits={LAUNCH_PATH: MAX_FORM_BYTES,
                                       LAUNCH_CONFIRM_PATH: MAX_FORM_BYTES})  # fmt: skip
    metrics_server = None
    if config.metrics.enabled:
        metrics_app = create_metrics_app(config, metrics, status)
        metrics_server = _server(config, metrics_app, config.metrics.host, config.metrics.port)
    return WebServers(peer, viewer, sessions, conso, session_tokens, metrics_server)
