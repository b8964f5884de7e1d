"""Server-side sessions of signed-in users, shared by every node through the database.

Owns the session cookie's meaning (a random id; the database keeps only its SHA-256), the
encryption at rest of the PSC tokens (AES-GCM with the node's secret key), expiry, the studies a
session was granted (IID links, Conso exams), and the one-use login requests of the PSC flow. It
must not talk to PSC itself: `web.auth_routes` does.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete

from drimbox.auth.psc import LoginRequest, PscTokens
from drimbox.auth.users import PscUser
from drimbox.db import Database, LoginRequestRow, UserSession, aware, utcnow
from drimbox.trust.keys import KeyFileError, permission_problem
from drimbox.web.viewer import ViewerSession

LOGIN_TTL = timedelta(minutes=10)


def load_secret_key(path: Path) -> bytes:
    """The node's 256-bit key, created (0600) on first use; refused when other accounts may
    read it (`drimbox.trust.keys`)."""
    if path.exists():
        problem = permission_problem(path)
        if problem is not None:
            raise KeyFileError(problem)
        key = path.read_bytes()
        if len(key) != 32:
            raise ValueError(f"clé secrète invalide ({path}) : 32 octets attendus")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = AESGCM.generate_key(bit_length=256)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key)
    return key


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class PendingLogin:
    nonce: str
    code_verifier: str | None
    return_to: str


@dataclass(frozen=True)
class SessionView:
    """What a request needs to know of its user."""

    cookie: str
    subject: str
    subject_name_id: str
    display_name: str
    userinfo: dict[str, Any]
    situation_key: str | None
    studies: frozenset[str]
    expires_at: datetime

    @property
    def user(self) -> PscUser:
        return PscUser.from_claims(self.userinfo)


class DbSessionStore:
    """Sessions and pending logins in the node's database (all nodes of a site share them)."""

    def __init__(self, db: Database, key: bytes, *, max_age: timedelta) -> None:
        self.db = db
        self._aead = AESGCM(key)
        self.max_age = max_age

    # -- the PSC login flow ----------------------------------------------------------------
    def remember_login(self, request: LoginRequest, return_to: str) -> str:
        """Keep a login under way; returns the browser-binding cookie value to set."""
        browser = secrets.token_urlsafe(24)
        with self.db.session() as session:
            session.add(
                LoginRequestRow(
                    state=request.state,
                    nonce=request.nonce,
                    code_verifier=request.code_verifier,
                    return_to=return_to,
                    browser_hash=_hash(browser),
                    expires_at=utcnow() + LOGIN_TTL,
                )
            )
        return browser

    def take_login(self, state: str, browser: str) -> PendingLogin | None:
        """The pending login for `state`, consumed (a replayed callback finds nothing)."""
        with self.db.session() as session:
            row = session.get(LoginRequestRow, state)
            if row is None:
                return None
            session.delete(row)
            if aware(row.expires_at) < utcnow() or row.browser_hash != _hash(browser):
                return None
            return PendingLogin(row.nonce, row.code_verifier, row.return_to)

    # -- sessions --------------------------------------------------------------------------
    def create(self, tokens: PscTokens, user: PscUser, claims: dict[str, Any]) -> str:
        cookie = secrets.token_urlsafe(32)
        now = utcnow()
        with self.db.session() as session:
            session.execute(delete(LoginRequestRow).where(LoginRequestRow.expires_at < now))
            session.add(
                UserSession(
                    id_hash=_hash(cookie),
                    subject=tokens.subject,
                    subject_name_id=user.subject_name_id,
                    display_name=user.display_name,
                    userinfo=claims,
                    situation_key=None,
                    tokens=self._seal(tokens),
                    access_expires_at=datetime.fromtimestamp(tokens.expires_at, now.tzinfo),
                    studies=[],
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + self.max_age,
                )
            )
        return cookie

    def view(self, cookie: str) -> SessionView | None:
        if not cookie:
            return None
        with self.db.session() as session:
            row = session.get(UserSession, _hash(cookie))
            if row is None or row.ended_at is not None or aware(row.expires_at) < utcnow():
                return None
            return SessionView(
                cookie=cookie,
                subject=row.subject,
                subject_name_id=row.subject_name_id,
                display_name=row.display_name,
                userinfo=dict(row.userinfo),
                situation_key=row.situation_key,
                studies=frozenset(row.studies),
                expires_at=aware(row.expires_at),
            )

    def tokens(self, cookie: str) -> PscTokens | None:
        with self.db.session() as session:
            row = session.get(UserSession, _hash(cookie))
            return None if row is None or row.ended_at else self._open(row.tokens)

    def update_tokens(self, cookie: str, tokens: PscTokens) -> None:
        with self.db.session() as session:
            row = session.get(UserSession, _hash(cookie))
            if row is not None:
                row.tokens = self._seal(tokens)
                row.access_expires_at = datetime.fromtimestamp(tokens.expires_at, utcnow().tzinfo)

    def choose_situation(self, cookie: str, key: str) -> None:
        with self.db.session() as session:
            row = session.get(UserSession, _hash(cookie))
            if row is not None:
                row.situation_key = key

    def end(self, cookie: str) -> None:
        with self.db.session() as session:
            row = session.get(UserSession, _hash(cookie))
            if row is not None and row.ended_at is None:
                row.ended_at = utcnow()

    # -- the viewer's SessionStore protocol -------------------------------------------------
    def get(self, session_id: str) -> ViewerSession | None:
        view = self.view(session_id)
        if view is None:
            return None
        return ViewerSession(
            id=session_id,
            subject=view.subject_name_id,
            display_name=view.display_name,
            expires_at=view.expires_at.timestamp(),
            studies=set(view.studies),
            userinfo=view.userinfo,
            situation_key=view.situation_key,
        )

    def grant(self, session_id: str, study_uid: str) -> None:
        with self.db.session() as session:
            row = session.get(UserSession, _hash(session_id))
            if row is not None and study_uid not in row.studies:
                row.studies = [*row.studies, study_uid]
                row.last_seen_at = utcnow()

    # -- tokens at rest ---------------------------------------------------------------------
    def _seal(self, tokens: PscTokens) -> bytes:
        payload = json.dumps(
            {
                "access_token": tokens.access_token,
                "id_token": tokens.id_token,
                "refresh_token": tokens.refresh_token,
                "expires_at": tokens.expires_at,
                "refresh_expires_at": tokens.refresh_expires_at,
                "scope": tokens.scope,
                "subject": tokens.subject,
                "acr": tokens.acr,
                "session_id": tokens.session_id,
            }
        ).encode()
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, payload, b"drimbox-session")

    def _open(self, sealed: bytes) -> PscTokens:
        data = json.loads(self._aead.decrypt(sealed[:12], sealed[12:], b"drimbox-session"))
        return PscTokens(**data)
