"""Sign-in with Pro Santé Connect on the user-facing origin: login, callback, choice of the
situation d'exercice, logout.

Owns the browser side of the OIDC flow (redirects, the cookies, French pages for every refusal);
the token checks themselves are `auth.psc`'s, the session storage `web.sessions`'. Every route
here is public by nature: it is how a user gets a session.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import replace
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from drimbox.auth.psc import PscClient, PscError, PscErrorReason, PscSettings
from drimbox.auth.users import UserInfoError
from drimbox.config import Config
from drimbox.db import Database
from drimbox.trust import audit
from drimbox.web.pages import LOGOUT_PATH, message, render
from drimbox.web.sessions import DbSessionStore
from drimbox.web.viewer import LOGIN_PATH, SESSION_COOKIE

log = logging.getLogger(__name__)

BROWSER_COOKIE = "drimbox_login"
CALLBACK_PATH = "/auth/callback"
SITUATION_PATH = "/auth/situation"
PUBLIC_PATHS = frozenset({LOGIN_PATH, CALLBACK_PATH, LOGOUT_PATH})


def psc_settings(config: Config, redirect_uri: str) -> PscSettings:
    return PscSettings.from_config(config, redirect_uri)


class SessionTokens:
    """A signed-in user's PSC access token, kept valid: refreshed with the session's refresh
    token shortly before it expires (PSC access tokens live minutes; a prefetch, an export or
    a viewing session lasts longer). One refresh at a time per session in this process; a
    refresh made by another node of the site is picked up from the database. None when the
    session has ended or PSC refuses the refresh (the user must sign in again)."""

    def __init__(self, sessions: DbSessionStore, psc: PscClient, *, margin_s: int = 30) -> None:
        self.sessions = sessions
        self.psc = psc
        self.margin_s = margin_s
        self.refreshes = 0
        self._locks = [threading.Lock() for _ in range(64)]

    def _lock(self, cookie: str) -> threading.Lock:
        digest = hashlib.sha256(cookie.encode()).digest()
        return self._locks[digest[0] % len(self._locks)]

    def access_token(self, cookie: str) -> str | None:
        tokens = self.sessions.tokens(cookie)
        if tokens is None or not tokens.access_expired(margin_s=self.margin_s):
            return tokens.access_token if tokens is not None else None
        with self._lock(cookie):
            tokens = self.sessions.tokens(cookie)  # refreshed meanwhile by another thread?
            if tokens is None or not tokens.access_expired(margin_s=self.margin_s):
                return tokens.access_token if tokens is not None else None
            refresh_ended = tokens.refresh_expires_at is not None and (
                tokens.refresh_expires_at <= time.time()
            )
            if not tokens.refresh_token or refresh_ended:
                return None
            try:
                fresh = self.psc.refresh(tokens.refresh_token, id_token=tokens.id_token)
            except PscError as exc:
                log.info("PSC token refresh refused: %s", exc.reason)
                if exc.reason == PscErrorReason.SESSION_ENDED:
                    self.sessions.end(cookie)  # ended at PSC (logout elsewhere): here too
                return None
            if fresh.subject and fresh.subject != tokens.subject:
                log.warning("PSC refresh answered for another subject: session not updated")
                return None
            fresh = replace(  # a refresh without ID token says nothing of who it is for
                fresh,
                subject=fresh.subject or tokens.subject,
                acr=fresh.acr or tokens.acr,
                session_id=fresh.session_id or tokens.session_id,
                id_claims=fresh.id_claims or tokens.id_claims,
            )
            self.sessions.update_tokens(cookie, fresh)
            self.refreshes += 1
            return fresh.access_token


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

    def sign_in_again(return_to: str) -> str:
        """The sign-in link that brings the user back to where they were (the launch's
        history, the image link), not to the origin's root."""
        target = safe_return(return_to)
        return LOGIN_PATH + (f"?{urlencode({'next': target})}" if target != "/" else "")

    def refused(
        request: Request, text: str, status: int = 403, return_to: str = "/"
    ) -> HTMLResponse:
        return message(
            request,
            "Connexion refusée",
            text,
            status=status,
            alert=True,
            links=[(sign_in_again(return_to), "Se reconnecter avec Pro Santé Connect")],
        )

    @router.get(LOGIN_PATH)
    def login(request: Request, next: str | None = None) -> Response:
        try:
            pending = psc.new_login(login_hint=request.query_params.get("login_hint"))
        except PscError as exc:
            return refused(request, exc.message, 503, next or "/")
        browser = sessions.remember_login(pending, safe_return(next))
        response = RedirectResponse(pending.url, status_code=303)
        response.set_cookie(
            BROWSER_COOKIE, browser, max_age=600, httponly=True, secure=secure_cookies,
            samesite="lax",
        )  # fmt: skip
        return response

    @router.get(CALLBACK_PATH)
    def callback(request: Request) -> Response:
        return_to = "/"
        try:
            code, state = PscClient.callback_parameters(dict(request.query_params))
            pending = sessions.take_login(state, request.cookies.get(BROWSER_COOKIE, ""))
            if pending is None:
                return refused(
                    request, "Cette connexion a expiré ou a déjà été utilisée : recommencez.", 400
                )
            return_to = pending.return_to
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
            return refused(request, exc.message, return_to=return_to)
        if not user.situations():
            log.info("PSC sign-in refused: no situation d'exercice")
            return refused(
                request,
                "Votre compte Pro Santé Connect ne déclare aucune situation d'exercice (lieu "
                "et mode d'exercice dans l'Annuaire Santé) : l'accès aux examens n'est pas "
                "possible. Faites mettre à jour votre inscription auprès de votre ordre ou de "
                "votre structure, puis reconnectez-vous.",
                return_to=return_to,
            )
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
        situations = view.user.situations()
        if not situations:
            return message(
                request,
                "Accès impossible",
                "Votre compte Pro Santé Connect ne déclare aucune situation d'exercice : "
                "l'accès aux examens n'est pas possible.",
                status=403,
                alert=True,
                user=view.display_name,
            )
        return render(
            request,
            "situation.html",
            title="Situation d'exercice",
            user=view.display_name,
            situations=[{"key": s.key, "label": s.label} for s in situations],
            next=safe_return(next),
        )

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
            return message(request, "Situation d'exercice", str(exc), status=400, alert=True)
        sessions.choose_situation(cookie, key)
        return RedirectResponse(safe_return(str(form.get("next", "/"))), status_code=303)

    @router.get(LOGOUT_PATH)
    def logout_page(request: Request, next: str | None = None) -> Response:
        """A link cannot end a session (any site could link here): the page asks, and its
        button posts."""
        view = sessions.view(request.cookies.get(SESSION_COOKIE, ""))
        if view is None:
            return message(
                request,
                "Déconnecté",
                "Votre session est terminée.",
                links=[(sign_in_again(next or "/"), "Se reconnecter")],
            )
        return render(request, "logout.html", title="Se déconnecter", user=view.display_name,
                      next=safe_return(next))  # fmt: skip

    @router.post(LOGOUT_PATH)
    async def logout(request: Request) -> Response:
        form = await request.form()
        next = str(form.get("next", "/"))
        cookie = request.cookies.get(SESSION_COOKIE, "")
        tokens = sessions.tokens(cookie) if cookie else None
        if cookie:
            sessions.end(cookie)
        if tokens is not None and tokens.refresh_token:
            try:
                psc.end_session(tokens.refresh_token)
            except PscError as exc:
                log.info("PSC logout: %s", exc.reason)
        response = message(
            request,
            "Déconnecté",
            "Votre session est terminée.",
            links=[(sign_in_again(next or "/"), "Se reconnecter")],
        )
        response.delete_cookie(SESSION_COOKIE)
        return response

    return router
