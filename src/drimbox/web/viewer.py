"""The Source viewer origin: OHIF v3 (prebuilt) at the root, its DICOMweb endpoints under
`/dicom-web` on the same origin, IHE IID links and the session gate.

Owns the static hosting of OHIF (SPA fallback: a path whose last segment has no dot gets
`index.html`; `.wasm` as application/wasm; gzip; immutable caching of hashed files), our own
`/app-config.js` (VIEWER.md), the session interface (`ViewerAuth`, `SessionStore`) and the
viewer's access policy: a signed-in user sees only the studies granted to their session — opened
through an IID link whose report was published, or from the exam history of a Conso launch bound
to the session — and only what the study's KOS references (the published one, or the one the DMP
gave for that launch).

Sessions: until the Pro Santé Connect issue lands, sessions are created by code
(`MemorySessionStore.create`, as the future OIDC callback will) and carried by the cookie
`drimbox_session`; without one, pages redirect to `/connexion` (a French placeholder) and data
endpoints answer 401. Nothing patient-related is served without a session. It must not verify
tokens nor publish anything.
"""

from __future__ import annotations

import asyncio
import gzip
import mimetypes
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from drimbox.source.grants import Grants
from drimbox.source.wado import Scope, Visible, WadoError
from drimbox.web.pages import favicon, message, render

SESSION_COOKIE = "drimbox_session"
LOGIN_PATH = "/connexion"
# The home page (no patient data: it says how to open exams), the icon, OHIF's configuration.
PUBLIC_PATHS = frozenset({"/", "/favicon.ico", "/app-config.js"})
_HASHED = re.compile(r"(^|\.)[0-9a-f]{8,}\.")  # app.bundle.<hash>.js, <hash>.wasm
_COMPRESSIBLE = (".js", ".css", ".html", ".json", ".wasm", ".svg", ".txt", ".map", ".mjs")
_MEDIA_TYPES = {".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript"}

APP_CONFIG_JS = """// OHIF's i18next reads ?lng=, then the "i18next" cookie: French unless the
// user chose another language in OHIF's preferences (which writes that cookie).
if (!/(^|;\\s*)i18next=/.test(document.cookie)) {
  document.cookie = 'i18next=fr; path=/; max-age=31536000; SameSite=Lax';
}
window.config = {
  routerBasename: null,
  extensions: [], modes: [],
  showStudyList: false,
  investigationalUseDialog: { option: 'never' },
  customizationService: { 'ohif.tours': { $set: [] } },
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true, showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'drimbox',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'drimbox',
    configuration: {
      friendlyName: 'DRIMbox', name: 'drimbox',
      qidoRoot: '/dicom-web', wadoRoot: '/dicom-web', wadoUriRoot: '/dicom-web',
      qidoSupportsIncludeField: false, imageRendering: 'wadors', thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true, supportsFuzzyMatching: false, supportsWildcard: true,
      omitQuotationForMultipartRequest: true, bulkDataURI: { enabled: true },
    },
  }],
};
"""


@dataclass
class ViewerSession:
    """A signed-in user of the viewer origin; `studies` are those opened through IID links."""

    id: str
    subject: str
    display_name: str
    expires_at: float
    studies: set[str] = field(default_factory=set)
    # The PSC userinfo claims (profession, situations d'exercice) and the situation chosen.
    userinfo: dict[str, Any] = field(default_factory=dict)
    situation_key: str | None = None


class SessionStore(Protocol):
    def get(self, session_id: str) -> ViewerSession | None: ...

    def grant(self, session_id: str, study_uid: str) -> None: ...


class MemorySessionStore:
    """Sessions in memory (one node; the PSC issue brings the shared store)."""

    def __init__(self) -> None:
        self._sessions: dict[str, ViewerSession] = {}
        self._lock = threading.Lock()

    def create(
        self,
        subject: str,
        display_name: str = "",
        ttl_s: float = 8 * 3600,
        *,
        userinfo: dict[str, Any] | None = None,
    ) -> ViewerSession:
        session = ViewerSession(
            id=secrets.token_urlsafe(32),
            subject=subject,
            display_name=display_name,
            expires_at=time.time() + ttl_s,
            userinfo=dict(userinfo or {}),
        )
        with self._lock:
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> ViewerSession | None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires_at < time.time():
                del self._sessions[session_id]
                return None
            return session

    def grant(self, session_id: str, study_uid: str) -> None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None:
                session.studies.add(study_uid)

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)


class ViewerAuth:
    """The viewer origin's session gate: the cookie `drimbox_session` names a session."""

    def __init__(self, sessions: SessionStore, *, cookie_name: str = SESSION_COOKIE) -> None:
        self.sessions = sessions
        self.cookie_name = cookie_name

    def session(self, request: Request) -> ViewerSession | None:
        session_id = request.cookies.get(self.cookie_name, "")
        return self.sessions.get(session_id) if session_id else None

    def login_redirect(self, request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{LOGIN_PATH}?{urlencode({'next': target})}", status_code=303)


class ViewerAuthorizer:
    """The `/dicom-web` access policy of the viewer origin (see the module docstring)."""

    channel = "viewer"

    def __init__(self, auth: ViewerAuth, grants: Grants) -> None:
        self.auth = auth
        self.grants = grants

    def _session(self, request: Request) -> ViewerSession:
        session = self.auth.session(request)
        if session is None:
            raise WadoError(401, "session expirée ou absente : reconnectez-vous")
        return session

    async def scope(self, request: Request, study_uid: str) -> Scope:
        session = self._session(request)
        if study_uid not in session.studies:
            raise WadoError(
                404, "étude inconnue ou non ouverte depuis un lien ou l'historique du patient"
            )
        content = await asyncio.to_thread(self.grants.for_viewer, session.id, study_uid)
        if content is None:
            raise WadoError(404, "cette étude n'est plus publiée")
        return Scope(session.subject, content)

    async def visible(self, request: Request) -> Visible:
        session = self._session(request)
        contents = []
        for study_uid in sorted(session.studies):
            content = await asyncio.to_thread(self.grants.for_viewer, session.id, study_uid)
            if content is not None:
                contents.append(content)
        return Visible(session.subject, contents)

    def caller_hint(self, request: Request) -> tuple[str, str]:
        session = self.auth.session(request)
        return (session.subject if session else ""), ""


class StaticApp:
    """OHIF's files, with gzip computed once per file and kept in memory."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._gzipped: dict[tuple[Path, float], bytes] = {}
        self._lock = threading.Lock()

    @property
    def installed(self) -> bool:
        return (self.root / "index.html").is_file()

    def resolve(self, relative: str) -> Path | None:
        candidate = (self.root / relative).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate

    def _gzip(self, path: Path) -> bytes:
        key = (path, path.stat().st_mtime)
        with self._lock:
            cached = self._gzipped.get(key)
        if cached is None:
            cached = gzip.compress(path.read_bytes(), compresslevel=6, mtime=0)
            with self._lock:
                self._gzipped[key] = cached
        return cached

    async def serve(self, request: Request, path: Path, *, no_cache: bool = False) -> Response:
        suffix = path.suffix.lower()
        media_type = _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(path.name)[0]
        headers = {
            "Cache-Control": "no-cache"
            if no_cache or not _HASHED.search(path.name)
            else "public, max-age=31536000, immutable",
            "Vary": "Accept-Encoding",
        }
        wants_gzip = "gzip" in request.headers.get("accept-encoding", "")
        if wants_gzip and suffix in _COMPRESSIBLE:
            body = await asyncio.to_thread(self._gzip, path)
            headers["Content-Encoding"] = "gzip"
        else:
            body = await asyncio.to_thread(path.read_bytes)
        return Response(body, media_type=media_type or "application/octet-stream", headers=headers)


def install_viewer_routes(
    app: FastAPI,
    *,
    ohif_dir: Path,
    auth: ViewerAuth,
    grants: Grants,
    admins: frozenset[str] = frozenset(),
) -> None:
    """Login placeholder, app-config and OHIF with SPA fallback (register last: the fallback
    route catches every other GET; `web.iid` installs the IID route before)."""
    static = StaticApp(ohif_dir)

    @app.get(LOGIN_PATH, response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        return message(
            request,
            "Connexion requise",
            "L'accès aux images nécessite une connexion avec Pro Santé Connect (carte CPS ou "
            "e-CPS).",
            "La connexion Pro Santé Connect n'est pas configurée sur cette DRIMbox : contactez "
            "le service informatique du site.",
            status=401,
        )

    @app.get("/")
    async def home(request: Request) -> Response:
        """The origin's own French page: OHIF only ever opens a given study."""
        session = auth.session(request)
        return render(
            request,
            "home.html",
            title="DRIMbox",
            user=session.display_name if session else "",
            admin=session is not None and session.subject in admins,
            login_path=LOGIN_PATH,
        )

    @app.get("/favicon.ico")
    async def icon() -> Response:
        return favicon()

    @app.get("/app-config.js")
    async def app_config() -> Response:
        return Response(
            APP_CONFIG_JS, media_type="text/javascript", headers={"Cache-Control": "no-cache"}
        )

    @app.get("/{path:path}")
    async def ohif(request: Request, path: str) -> Response:
        last = path.rsplit("/", 1)[-1]
        if "." in last:  # an asset: the file or a real 404 (no fallback)
            found = static.resolve(path)
            if found is None:
                return Response("introuvable", status_code=404, media_type="text/plain")
            return await static.serve(request, found)
        # An application route: patient data follows, so a session is required.
        if auth.session(request) is None:
            return auth.login_redirect(request)
        if not static.installed:
            return message(
                request,
                "Visionneuse non installée",
                "La visionneuse OHIF n'est pas installée sur cette DRIMbox "
                "(scripts/install-ohif.sh).",
                status=503,
            )
        return await static.serve(request, static.root / "index.html", no_cache=True)
