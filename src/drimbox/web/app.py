"""The two HTTP applications of a node, as FastAPI apps the `HttpServer` runs.

- `create_peer_app`: the `db…` origin that DRIM-M peers call: WADO-RS under `/dicom-web-rs`
  (later `/status`, `/health`), each peer's share bounded (`source.fairness`).
- `create_viewer_app`: the `vi…` origin: OHIF at the root, `/dicom-web` for it, IHE IID links.

Both take the node's `ImageService` when given (one cache and one single flight for the node),
else build their own; the service is started and stopped with the app (reference-counted).
This module only assembles: the routes live in `drimbox.source` and `drimbox.web.viewer`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from drimbox.auth.tokens import TokenVerifier
from drimbox.config import Config
from drimbox.db import Database
from drimbox.dicom.retrieve import ImageService
from drimbox.http.accesslog import AccessLog
from drimbox.http.headers import PEER_POLICY, SecurityHeaders, inline_script_hashes, viewer_policy
from drimbox.http.pathguard import PathGuard
from drimbox.source.access import access_log_path
from drimbox.source.fairness import PeerLimiter, PeerShares
from drimbox.source.grants import Grants
from drimbox.source.wado import Authorizer, PeerAuthorizer, WadoRoutes, install, peer_dn
from drimbox.trust.tally import AccessTally
from drimbox.trust.tls import PeerCheck
from drimbox.web.conso_routes import LAUNCH_PATH
from drimbox.web.iid import install_iid_route
from drimbox.web.origins import SameOriginPosts
from drimbox.web.pages import STATIC_DIR, STATIC_PATH
from drimbox.web.viewer import (
    SessionStore,
    ViewerAuth,
    ViewerAuthorizer,
    install_viewer_routes,
)

PEER_PREFIX = "/dicom-web-rs"
VIEWER_PREFIX = "/dicom-web"


def _lifespan(images: ImageService, routes: WadoRoutes):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await images.start()
        tally = routes.tally
        flusher = asyncio.create_task(tally.run()) if tally is not None else None
        try:
            yield
        finally:
            if flusher is not None and tally is not None:
                flusher.cancel()
                await asyncio.gather(flusher, return_exceptions=True)
                # After the server has finished its requests: nothing counted is left out.
                await asyncio.to_thread(tally.close)
            await images.stop()

    return lifespan


def _common(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"status": 400, "erreur": "requête invalide"}, status_code=400)


def create_peer_app(
    config: Config,
    db: Database,
    verifier: TokenVerifier,
    *,
    images: ImageService | None = None,
    peer_check: PeerCheck | None = None,
    tally: AccessTally | None = None,
) -> FastAPI:
    """The peer-facing application (WADO-RS, DRIM-M flavour). `tally`: the node's count of
    image accesses for the audit trail (its own when not given)."""
    images = images or ImageService(config)
    authorizer = PeerAuthorizer(verifier, Grants(db), peer_check)
    app = _image_app(
        "DRIMbox — service d'images (WADO-RS)", config, db, images, authorizer, tally=tally
    )
    source = config.source
    app.state.peer_shares = PeerShares(
        per_peer=source.peer_max_requests,
        total=source.max_requests,
        retry_after_s=source.busy_retry_after_s,
    )
    app.add_middleware(PeerLimiter, prefix=PEER_PREFIX, shares=app.state.peer_shares)
    app.add_middleware(SecurityHeaders, policy=PEER_POLICY)
    app.add_middleware(AccessLog, origin="peer", peer_of=peer_dn)
    return app


def create_viewer_app(
    config: Config,
    db: Database,
    auth: ViewerAuth,
    *,
    images: ImageService | None = None,
    routers: Sequence[APIRouter] = (),
    tally: AccessTally | None = None,
) -> FastAPI:
    """The viewer origin (OHIF, its DICOMweb endpoints, IID). `routers` (sign-in, Conso,
    administration) are mounted before OHIF's catch-all route."""
    images = images or ImageService(config)
    grants = Grants(db)
    app = _image_app(
        "DRIMbox — visionneuse",
        config,
        db,
        images,
        ViewerAuthorizer(auth, grants),
        VIEWER_PREFIX,
        tally=tally,
    )
    for router in routers:
        app.include_router(router)
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="drimbox-static")
    install_iid_route(app, auth=auth, grants=grants, professions=config.viewer.iid_professions)
    install_viewer_routes(
        app,
        ohif_dir=Path(config.viewer.ohif_dir),
        auth=auth,
        grants=grants,
        admins=frozenset(config.admin.users),
    )
    # Every POST of the origin comes from its own pages; the launch from the RIS has its rule.
    app.add_middleware(SameOriginPosts, public_url=config.viewer.public_url, exempt={LAUNCH_PATH})
    hashes = inline_script_hashes(Path(config.viewer.ohif_dir) / "index.html")
    app.add_middleware(
        SecurityHeaders,
        policy=viewer_policy(hashes),
        script_policy=viewer_policy(hashes, worker=True),
        hsts=config.viewer.public_url.startswith("https://"),
        frame_options="SAMEORIGIN",
    )
    app.add_middleware(
        AccessLog, origin="viewer", cookie=auth.cookie_name, user_of=_user_of(auth.sessions)
    )
    return app


def _user_of(sessions: SessionStore) -> Callable[[str], str]:
    def user_of(cookie: str) -> str:
        session = sessions.get(cookie)
        return session.subject if session is not None else ""

    return user_of


def _image_app(
    title: str,
    config: Config,
    db: Database,
    images: ImageService,
    authorizer: Authorizer,
    prefix: str = PEER_PREFIX,
    *,
    tally: AccessTally | None = None,
) -> FastAPI:
    """An application serving `images` over DICOMweb under `prefix`, every access checked by
    `authorizer` and recorded (access log, audit trail)."""
    routes = WadoRoutes(
        images,
        authorizer,
        access_log=access_log_path(config.store.cache_dir),
        audit_db=db,
        tally=tally,
    )
    app = FastAPI(
        title=title,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=_lifespan(images, routes),
    )
    _common(app)
    install(app, prefix, routes)
    app.add_middleware(PathGuard, prefix=prefix)
    app.state.images = images
    app.state.wado = routes
    return app
