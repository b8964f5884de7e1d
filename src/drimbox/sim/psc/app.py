"""The web face of the Pro Santé Connect simulator (FastAPI).

Serves what a relying party meets at PSC, at the paths of PSC's Keycloak realm: the discovery
document at PSC's non-standard `…/.well-known/wallet-openid-configuration`, the authorization
endpoint `/auth` (on its own host at PSC) with a small French page to pick a test user (or
`login_hint=<user id>` to skip it), and under `/auth/realms/esante-wallet/protocol/openid-connect/`
`token`, `token/introspect`, `userinfo`, `certs` (JWKS) and `logout`. `GET /sim/users` lists the
test users. With a mutual-TLS listener (see `server`), the same app also answers there and the
discovery document names it in `mtls_endpoint_aliases` (RFC 8705 §5): a client registered by its
certificate subject (`tls_client_auth`) is refused (`invalid_client`, 401) on a connection
without that certificate, even with a secret. All state lives in `PscProvider`; this module
only speaks HTTP. Never deploy it.
"""

from __future__ import annotations

import base64
import binascii
import html
import secrets
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from drimbox.sim.psc.provider import OAuthFailure, PscProvider
from drimbox.sim.psc.settings import SimClient, SimUser
from drimbox.trust.tls import peer_certificate_from_scope

WELL_KNOWN = ".well-known/wallet-openid-configuration"
OIDC = "protocol/openid-connect"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
MAX_PENDING_LOGINS = 1000
AUTH_METHODS = ["tls_client_auth", "client_secret_basic", "client_secret_post"]


@dataclass(frozen=True)
class PscPaths:
    """Where each endpoint lives, from the simulator's public base URL (and the base URL of its
    mutual-TLS listener, when it has one)."""

    base_url: str
    realm: str
    mtls_base_url: str = ""

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/auth/realms/{self.realm}"

    @property
    def discovery(self) -> str:
        return f"{self.issuer}/{WELL_KNOWN}"

    @property
    def authorization(self) -> str:
        return f"{self.base_url}/auth"

    def oidc(self, name: str) -> str:
        return f"{self.issuer}/{OIDC}/{name}"

    def mtls(self, name: str) -> str:
        return f"{self.mtls_base_url}/auth/realms/{self.realm}/{OIDC}/{name}"


# What a client authenticating by certificate calls on the mutual-TLS listener (RFC 8705 §5).
MTLS_ALIASED = {
    "token_endpoint": "token",
    "introspection_endpoint": "token/introspect",
    "userinfo_endpoint": "userinfo",
    "end_session_endpoint": "logout",
}


def discovery_document(paths: PscPaths) -> dict[str, Any]:
    document: dict[str, Any] = {
        "issuer": paths.issuer,
        "authorization_endpoint": paths.authorization,
        "token_endpoint": paths.oidc("token"),
        "introspection_endpoint": paths.oidc("token/introspect"),
        "userinfo_endpoint": paths.oidc("userinfo"),
        "end_session_endpoint": paths.oidc("logout"),
        "jwks_uri": paths.oidc("certs"),
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "userinfo_signing_alg_values_supported": ["RS256"],
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "scopes_supported": ["openid", "scope_all"],
        "acr_values_supported": ["eidas1"],
        "claims_supported": [
            "sub",
            "iss",
            "aud",
            "acr",
            "preferred_username",
            "given_name",
            "family_name",
            "SubjectNameID",
            "SubjectRefPro",
        ],
        "code_challenge_methods_supported": ["S256", "plain"],
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
    }
    if paths.mtls_base_url:
        document["mtls_endpoint_aliases"] = {
            key: paths.mtls(name) for key, name in MTLS_ALIASED.items()
        }
    return document


def _with_params(uri: str, params: dict[str, str]) -> str:
    return f"{uri}{'&' if '?' in uri else '?'}{urlencode(params)}"


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    text = f"""<!doctype html>
<html lang="fr"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; color: #1e1e1e; }}
h1 {{ font-size: 1.4rem; }} .note {{ color: #666; font-size: .9rem; }}
button {{ display: block; width: 100%; text-align: left; margin: .5rem 0; padding: .8rem;
  border: 1px solid #bbb; border-radius: 6px; background: #fff; cursor: pointer; }}
button:hover {{ background: #eef3ff; }} .cancel {{ text-align: center; background: #f4f4f4; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{body}
<p class="note">Simulateur Pro Santé Connect — tests et démonstration uniquement.</p>
</body></html>"""
    return HTMLResponse(text, status_code=status, headers=NO_STORE)


def _error_page(message: str, status: int = 400) -> HTMLResponse:
    return _page("Connexion impossible", f"<p>{html.escape(message)}</p>", status)


def _oauth_error(failure: OAuthFailure) -> JSONResponse:
    headers = dict(NO_STORE)
    if failure.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="esante-wallet"'
    return JSONResponse(
        {"error": failure.error, "error_description": failure.description},
        status_code=failure.status,
        headers=headers,
    )


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str, str | None]:
    """(client_id, secret or None): client_secret_basic (RFC 6749 §2.3.1: form-urlencoded,
    then Basic), client_secret_post, or the bare `client_id` of `tls_client_auth` (RFC 8705
    §2), whose proof is the connection's certificate."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthFailure("invalid_client", "Malformed Basic credentials", 401) from None
        client_id, sep, secret = decoded.partition(":")
        if not sep:
            raise OAuthFailure("invalid_client", "Malformed Basic credentials", 401)
        return unquote_plus(client_id), unquote_plus(secret)
    if form.get("client_id"):
        return form["client_id"], form.get("client_secret")
    raise OAuthFailure("invalid_client", "Client authentication required", 401)


def _authenticated(provider: PscProvider, request: Request, form: dict[str, str]) -> SimClient:
    """The calling client, by its secret or by the TLS client certificate of the connection."""
    client_id, secret = _client_credentials(request, form)
    return provider.authenticate_client(
        client_id, secret, peer_certificate_from_scope(request.scope)
    )


async def _form(request: Request) -> dict[str, str]:
    if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
        return {}
    data = await request.form()
    return {k: v for k, v in data.items() if isinstance(v, str)}


@dataclass(frozen=True)
class _PendingLogin:
    client_id: str
    redirect_uri: str
    state: str
    nonce: str
    scope: str
    code_challenge: str | None
    code_challenge_method: str | None


def create_psc_app(provider: PscProvider, paths: PscPaths) -> FastAPI:
    """The simulator's ASGI app around one provider."""
    app = FastAPI(title="Simulateur Pro Santé Connect", docs_url=None, redoc_url=None)
    settings = provider.settings
    pending: dict[str, _PendingLogin] = {}
    pending_lock = threading.Lock()
    realm = f"/auth/realms/{settings.realm}"

    def redirect_with_code(login: _PendingLogin, user: SimUser) -> RedirectResponse:
        code = provider.new_code(
            user.id,
            client_id=login.client_id,
            redirect_uri=login.redirect_uri,
            nonce=login.nonce,
            scope=login.scope,
            code_challenge=login.code_challenge,
            code_challenge_method=login.code_challenge_method,
        )
        params = {"state": login.state, "code": code, "iss": paths.issuer}
        return RedirectResponse(_with_params(login.redirect_uri, params), status_code=303)

    def redirect_error(redirect_uri: str, state: str, error: str, text: str) -> RedirectResponse:
        params = {"error": error, "error_description": text}
        if state:
            params["state"] = state
        return RedirectResponse(_with_params(redirect_uri, params), status_code=303)

    @app.get(f"{realm}/{WELL_KNOWN}")
    def discovery() -> JSONResponse:
        return JSONResponse(discovery_document(paths))

    @app.get(f"{realm}/{OIDC}/certs")
    def certs() -> JSONResponse:
        return JSONResponse(provider.jwks())

    @app.get("/sim/users")
    def users() -> JSONResponse:
        return JSONResponse(
            [
                {
                    "id": u.id,
                    "SubjectNameID": u.subject_name_id,
                    "name": f"{u.given_name} {u.family_name}",
                    "acr": u.acr,
                    "description": u.summary(),
                }
                for u in settings.all_users()
            ]
        )

    @app.get("/auth")
    def authorize(request: Request) -> Response:
        q = request.query_params
        client = settings.client(q.get("client_id", ""))
        redirect_uri = q.get("redirect_uri", "")
        if client is None:
            return _error_page("Application inconnue de Pro Santé Connect (client_id).")
        if not redirect_uri or not client.accepts_redirect(redirect_uri):
            return _error_page("Adresse de retour (redirect_uri) non enregistrée pour ce client.")
        state, nonce = q.get("state", ""), q.get("nonce", "")
        if q.get("response_type") != "code":
            return redirect_error(
                redirect_uri, state, "unsupported_response_type", "only response_type=code"
            )
        scope = q.get("scope", "")
        if "openid" not in scope.split():
            return redirect_error(redirect_uri, state, "invalid_scope", "openid scope required")
        if not state or not nonce:
            return redirect_error(
                redirect_uri, state, "invalid_request", "state and nonce required"
            )
        challenge = q.get("code_challenge") or None
        method = q.get("code_challenge_method") or ("plain" if challenge else None)
        if challenge is None and settings.require_pkce:
            return redirect_error(redirect_uri, state, "invalid_request", "PKCE required")
        if method not in (None, "S256", "plain"):
            return redirect_error(
                redirect_uri, state, "invalid_request", "unsupported code_challenge_method"
            )
        # acr_values is accepted as is: the simulator reports each user's real level, so a
        # client that forgets to check `acr` is caught by the low-level test user.
        login = _PendingLogin(
            client.client_id, redirect_uri, state, nonce, scope, challenge, method
        )
        hint = q.get("login_hint", "")
        if hint:
            user = settings.user(hint)
            if user is None:
                return redirect_error(redirect_uri, state, "login_required", "unknown login_hint")
            return redirect_with_code(login, user)
        request_id = secrets.token_urlsafe(16)
        with pending_lock:
            # Abandoned login pages must not grow a long-running demo simulator forever.
            while len(pending) >= MAX_PENDING_LOGINS:
                del pending[next(iter(pending))]
            pending[request_id] = login
        return _login_page(request_id, client, settings.all_users(), f"{paths.base_url}/auth/login")

    @app.post("/auth/login")
    async def login(request: Request) -> Response:
        form = await _form(request)
        with pending_lock:
            found = pending.pop(form.get("request_id", ""), None)
        if found is None:
            return _error_page("Demande de connexion expirée ou déjà utilisée : recommencez.")
        if "cancel" in form:
            return redirect_error(
                found.redirect_uri, found.state, "access_denied", "Connexion annulée"
            )
        user = settings.user(form.get("user", ""))
        if user is None:
            return _error_page("Utilisateur de test inconnu.")
        return redirect_with_code(found, user)

    @app.post(f"{realm}/{OIDC}/token")
    async def token(request: Request) -> Response:
        form = await _form(request)
        try:
            client = _authenticated(provider, request, form)
            grant_type = form.get("grant_type", "")
            if grant_type == "authorization_code":
                answer = provider.redeem_code(
                    form.get("code", ""),
                    client=client,
                    redirect_uri=form.get("redirect_uri", ""),
                    code_verifier=form.get("code_verifier") or None,
                )
            elif grant_type == "refresh_token":
                answer = provider.refresh(form.get("refresh_token", ""), client=client)
            else:
                raise OAuthFailure("unsupported_grant_type", f"grant_type {grant_type!r}")
        except OAuthFailure as failure:
            return _oauth_error(failure)
        return JSONResponse(answer, headers=NO_STORE)

    @app.post(f"{realm}/{OIDC}/token/introspect")
    async def introspect(request: Request) -> Response:
        form = await _form(request)
        try:
            _authenticated(provider, request, form)
        except OAuthFailure as failure:
            return _oauth_error(failure)
        return JSONResponse(provider.introspect(form.get("token", "")), headers=NO_STORE)

    @app.api_route(f"{realm}/{OIDC}/userinfo", methods=["GET", "POST"])
    async def userinfo(request: Request) -> Response:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        access = value.strip() if scheme.lower() == "bearer" else ""
        if not access and request.method == "POST":
            access = (await _form(request)).get("access_token", "")
        found = provider.userinfo(access) if access else None
        if found is None:
            return JSONResponse(
                {"error": "invalid_token", "error_description": "Token verification failed"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        claims, client_id = found
        if settings.signed_userinfo:
            return Response(
                provider.sign_userinfo(claims, client_id),
                media_type="application/jwt",
                headers=NO_STORE,
            )
        return JSONResponse(claims, headers=NO_STORE)

    @app.api_route(f"{realm}/{OIDC}/logout", methods=["GET", "POST"])
    async def logout(request: Request) -> Response:
        params: dict[str, str] = dict(request.query_params)
        form = await _form(request) if request.method == "POST" else {}
        if form.get("refresh_token"):
            # Back-channel logout of a confidential client (Keycloak's POST with credentials).
            try:
                caller = _authenticated(provider, request, form)
            except OAuthFailure as failure:
                return _oauth_error(failure)
            session = provider.session_of_refresh_token(form["refresh_token"])
            if session is None or session[1] != caller.client_id:
                return _oauth_error(OAuthFailure("invalid_grant", "Invalid refresh token"))
            provider.end_session(session[0])
            return Response(status_code=204)
        params.update(form)
        hint = params.get("id_token_hint", "")
        session = provider.session_of_id_token(hint) if hint else None
        if hint and session is None:
            return _error_page("Jeton de session (id_token_hint) invalide.")
        client_id = session[1] if session else params.get("client_id", "")
        target = params.get("post_logout_redirect_uri", "")
        client = settings.client(client_id)
        if target and (client is None or not client.accepts_post_logout(target)):
            return _error_page("Adresse de retour après déconnexion non enregistrée.")
        if session is not None:
            provider.end_session(session[0])
        if target:
            state = params.get("state", "")
            return RedirectResponse(
                _with_params(target, {"state": state}) if state else target, status_code=303
            )
        text = "Vous êtes déconnecté de Pro Santé Connect." if session else "Aucune session."
        return _page("Déconnexion", f"<p>{html.escape(text)}</p>")

    return app


def _login_page(
    request_id: str, client: SimClient, users: list[SimUser], action: str
) -> HTMLResponse:
    buttons = "\n".join(
        f'<button type="submit" name="user" value="{html.escape(u.id)}">'
        f"<strong>{html.escape(u.given_name)} {html.escape(u.family_name)}</strong> "
        f"({html.escape(u.subject_name_id)})<br><small>{html.escape(u.summary())}"
        f"{'' if u.acr == 'eidas1' else ' — niveau ' + html.escape(u.acr)}</small></button>"
        for u in users
    )
    body = f"""<p>L'application <strong>{html.escape(client.client_id)}</strong> demande votre
identification. Choisissez le professionnel de test avec lequel vous connecter
(carte CPS ou e-CPS simulée).</p>
<form method="post" action="{html.escape(action)}">
<input type="hidden" name="request_id" value="{html.escape(request_id)}">
{buttons}
<button type="submit" name="cancel" value="1" class="cancel">Annuler</button>
</form>"""
    return _page("Pro Santé Connect — connexion", body)
