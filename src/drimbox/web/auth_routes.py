"""Sign-in with Pro Santé Connect on the user-facing origin: login, callback, choice of the
situation d'exercice, logout.

Owns the browser side of the OIDC flow (redirects, the cookies, French pages for every refusal);
the token checks themselves are `auth.psc`'s, the session storage `web.sessions`'. Every route
here is public by nature: it is how a user gets a session.
"""

from __future__ import annotations

import html
import logging
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from drimbox.auth.psc import PscClient, PscError, PscSettings
from drimbox.auth.users import UserInfoError
from drimbox.config import Config
from drimbox.db import Database
from drimbox.trust import audit
from drimbox.web.sessions import DbSessionStore
from drimbox.web.viewer import LOGIN_PATH, SESSION_COOKIE, page

log = logging.getLogger(__name__)

BROWSER_COOKIE = "drimbox_login"
CALLBACK_PATH = "/auth/callback"
SITUATION_PATH = "/auth/situation"
LOGOUT_PATH = "/deconnexion"
PUBLIC_PATHS = frozenset({LOGIN_PATH, CALLBACK_PATH, LOGOUT_PATH})


def psc_settings(config: Config, redirect_uri: str) -> PscSettings:
    psc = config.psc
    return PscSettings(
        client_id=psc.client_id,
        client_secret=psc.client_secret,
        redirect_uri=redirect_uri,
        discovery_url=psc.discovery_url,
        issuer=psc.issuer,
        authorization_endpoint=psc.authorization_endpoint,
        token_endpoint=psc.token_endpoint,
        userinfo_endpoint=psc.userinfo_endpoint,
        jwks_uri=psc.jwks_uri,
        introspection_endpoint=psc.introspection_endpoint,
        end_session_endpoint=psc.end_session_endpoint,
        scope=psc.scope,
        acr_values=psc.acr_values,
        token_endpoint_auth_method=psc.token_endpoint_auth_method,
        use_pkce=psc.use_pkce,
        leeway_s=psc.leeway_s,
        timeout_s=psc.timeout_s,
        ca_file=psc.ca_file,
    )


def safe_return(target: str | None) -> str:
    """Only local paths: an open redirect would hand the session to someone else's site."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    parts = urlsplit(target)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def auth_router(
    psc: PscClient, sessions: DbSessionStore, db: Database, *, secure_cookies: bool
) -> APIRouter:
    router = APIRouter()

    def refused(message: str, status: int = 403) -> HTMLResponse:
        body = (
            f"<p>{html.escape(message)}</p>"
            f'<p><a href="{LOGIN_PATH}">Se reconnecter avec Pro Santé Connect</a></p>'
        )
        return page("Connexion refusée", body, status)

    @router.get(LOGIN_PATH)
    def login(request: Request, next: str | None = None) -> Response:
        try:
            pending = psc.new_login(login_hint=request.query_params.get("login_hint"))
        except PscError as exc:
            return refused(exc.message, 503)
        browser = sessions.remember_login(pending, safe_return(next))
        response = RedirectResponse(pending.url, status_code=303)
        response.set_cookie(
            BROWSER_COOKIE, browser, max_age=600, httponly=True, secure=secure_cookies,
            samesite="lax",
        )  # fmt: skip
        return response

    @router.get(CALLBACK_PATH)
    def callback(request: Request) -> Response:
        try:
            code, state = PscClient.callback_parameters(dict(request.query_params))
            pending = sessions.take_login(state, request.cookies.get(BROWSER_COOKIE, ""))
            if pending is None:
                return refused(
                    "Cette connexion a expiré ou a déjà été utilisée : recommencez.", 400
                )
            tokens = psc.exchange(
                code,
                state=state,
                expected_state=state,
                nonce=pending.nonce,
                code_verifier=pending.code_verifier,
            )
            user = psc.userinfo(tokens.access_token, expected_subject=tokens.subject)
        except PscError as exc:
            log.info("PSC sign-in refused: %s", exc.reason)
            return refused(exc.message)
        cookie = sessions.create(tokens, user, dict(user.claims))
        remote = request.client.host if request.client else ""
        audit.record(db, actor=user.subject_name_id, role="user", action="login", result="ok",
                     remote=remote)  # fmt: skip
        target = pending.return_to
        if user.must_choose_situation:
            target = f"{SITUATION_PATH}?{urlencode({'next': target})}"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE, cookie, httponly=True, secure=secure_cookies, samesite="lax"
        )
        response.delete_cookie(BROWSER_COOKIE)
        return response

    @router.get(SITUATION_PATH)
    def situation_form(request: Request, next: str | None = None) -> Response:
        view = sessions.view(request.cookies.get(SESSION_COOKIE, ""))
        if view is None:
            return RedirectResponse(LOGIN_PATH, status_code=303)
        choices = "".join(
            f'<p><label><input type="radio" name="situation" value="{html.escape(s.key)}"'
            f"{' checked' if index == 0 else ''}> {html.escape(s.label)}</label></p>"
            for index, s in enumerate(view.user.situations())
        )
        body = (
            f"<p>Bonjour {html.escape(view.display_name)}. Vous exercez dans plusieurs "
            "situations : laquelle s'applique à cette consultation ?</p>"
            f'<form method="post"><input type="hidden" name="next" '
            f'value="{html.escape(safe_return(next))}">{choices}'
            '<button type="submit">Continuer</button></form>'
        )
        return page("Situation d'exercice", body)

    @router.post(SITUATION_PATH)
    async def situation_choice(request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE, "")
        view = sessions.view(cookie)
        if view is None:
            return RedirectResponse(LOGIN_PATH, status_code=303)
        form = await request.form()
        key = str(form.get("situation", ""))
        try:
            view.user.situation(key)
        except UserInfoError as exc:
            return page("Situation d'exercice", f"<p>{html.escape(str(exc))}</p>", 400)
        sessions.choose_situation(cookie, key)
        return RedirectResponse(safe_return(str(form.get("next", "/"))), status_code=303)

    @router.get(LOGOUT_PATH)
    def logout(request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE, "")
        tokens = sessions.tokens(cookie) if cookie else None
        if cookie:
            sessions.end(cookie)
        if tokens is not None and tokens.refresh_token:
            try:
                psc.end_session(tokens.refresh_token)
            except PscError as exc:
                log.info("PSC logout: %s", exc.reason)
        response = page(
            "Déconnecté",
            f'<p>Votre session est terminée.</p><p><a href="{LOGIN_PATH}">Se reconnecter</a></p>',
        )
        response.delete_cookie(SESSION_COOKIE)
        return response

    return router
