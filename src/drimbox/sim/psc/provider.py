"""The state of the Pro Santé Connect simulator: signing keys, codes, sessions, tokens.

Owns what an OpenID provider remembers (authorization codes, sessions, refresh tokens, revoked
access tokens), how it issues RS256 tokens shaped like PSC's (Keycloak realm "esante-wallet"),
and the helpers tests use to mint tokens with chosen claims (expired, wrong audience, signed by
another key, low acr). Keys are generated in memory at start, never written. It knows nothing
of HTTP (`drimbox.sim.psc.app` is the web face). Part of a test/demo simulator: never deploy it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

from drimbox.sim.psc.settings import PscSimSettings, SimClient, SimUser
from drimbox.trust.dn import DistinguishedName

ALGORITHM = "RS256"


class OAuthFailure(Exception):
    """An OAuth error answer: `error` code (RFC 6749 §5.2), description, HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status


@dataclass
class _Session:
    sid: str
    user: SimUser
    client_id: str
    auth_time: int
    acr: str
    active: bool = True


@dataclass
class _Code:
    session: _Session
    redirect_uri: str
    nonce: str | None
    scope: str
    expires_at: float
    code_challenge: str | None
    code_challenge_method: str | None
    # Test hooks: claims merged into the ID token (None deletes one) and the key that signs it.
    id_token_claims: Mapping[str, Any] | None = None
    signing_key: RSAKey | None = None
    used: bool = False


@dataclass
class _Refresh:
    session: _Session
    scope: str
    nonce: str | None
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _at_hash(access_token: str) -> str:
    # OIDC Core 3.1.3.6: left half of the SHA-256 of the access token, for RS256.
    return _b64(hashlib.sha256(access_token.encode("ascii")).digest()[:16])


def _s256(verifier: str) -> str:
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def _apply(claims: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    for name, value in (overrides or {}).items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


class PscProvider:
    """An in-memory OpenID provider. Thread-safe: uvicorn's thread and the test thread share it."""

    def __init__(
        self,
        settings: PscSimSettings,
        issuer: str,
        *,
        clock: Callable[[], float] = time.time,
        key_size: int = 2048,
    ) -> None:
        self.settings = settings
        self.issuer = issuer.rstrip("/")
        self._clock = clock
        self._key_size = key_size
        self._lock = threading.Lock()
        self._keys: list[RSAKey] = [RSAKey.generate_key(key_size, auto_kid=True)]
        self._codes: dict[str, _Code] = {}
        self._sessions: dict[str, _Session] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._revoked_jti: set[str] = set()

    # --- keys ---------------------------------------------------------------------------------

    @property
    def signing_key(self) -> RSAKey:
        return self._keys[-1]

    def jwks(self) -> dict[str, Any]:
        """The public keys: the current one and the previous one (tokens signed before a
        rotation stay verifiable until they expire)."""
        with self._lock:
            return {
                "keys": [
                    k.as_dict(private=False, use="sig", alg=ALGORITHM) for k in self._keys[-2:]
                ]
            }

    def rotate_key(self) -> RSAKey:
        """Sign with a new key from now on (its kid is new: clients must refresh their JWKS)."""
        key = RSAKey.generate_key(self._key_size, auto_kid=True)
        with self._lock:
            self._keys.append(key)
        return key

    def foreign_key(self, *, same_kid: bool = False) -> RSAKey:
        """A key the provider does not publish; with `same_kid`, it claims the current key's kid
        (a forged signature rather than an unknown key)."""
        key = RSAKey.generate_key(self._key_size, auto_kid=not same_kid)
        if same_kid:
            key = RSAKey.import_key(key.as_dict(private=True, kid=self.signing_key.kid))
        return key

    def _sign(self, claims: Mapping[str, Any], key: RSAKey | None = None) -> str:
        key = key or self.signing_key
        return jwt.encode({"alg": ALGORITHM, "typ": "JWT", "kid": key.kid}, dict(claims), key)

    def _decode_own(self, token: str) -> dict[str, Any] | None:
        """Claims of a token this provider signed (any published key), None otherwise."""
        if token.count(".") != 2 or len(token) > 16 * 1024:
            return None
        with self._lock:
            keys = KeySet([*self._keys])
        try:
            return dict(jwt.decode(token, keys, algorithms=[ALGORITHM]).claims)
        except (JoseError, ValueError, TypeError, KeyError):
            return None

    # --- clients and users --------------------------------------------------------------------

    def authenticate_client(
        self, client_id: str, client_secret: str | None, certificate: x509.Certificate | None
    ) -> SimClient:
        """The client a token-endpoint request authenticates as, or `invalid_client` (401).

        A client registered with a certificate subject (RFC 8705 `tls_client_auth`) must come
        with that certificate on the TLS connection; a secret does not stand in for it, as at PSC.
        Any other client must give its secret."""
        client = self.settings.client(client_id)
        refused = OAuthFailure(
            "invalid_client", "Invalid client or Invalid client credentials", 401
        )
        if client is None:
            raise refused
        if client.tls_client_auth_subject_dn:
            if certificate is None:
                raise OAuthFailure("invalid_client", "Client certificate missing", 401)
            if not DistinguishedName.of(certificate).matches(client.tls_client_auth_subject_dn):
                raise OAuthFailure(
                    "invalid_client", "Certificate subject does not match the client", 401
                )
            return client
        if (
            client_secret is None
            or not client.client_secret  # a client registered without a secret has none to match
            or not hmac.compare_digest(client.client_secret.encode(), client_secret.encode())
        ):
            raise refused
        return client

    def user(self, user_id: str) -> SimUser:
        user = self.settings.user(user_id)
        if user is None:
            raise OAuthFailure("invalid_request", f"unknown test user {user_id!r}")
        return user

    # --- authorization code -------------------------------------------------------------------

    def new_code(
        self,
        user_id: str,
        *,
        client_id: str,
        redirect_uri: str,
        nonce: str | None,
        scope: str = "openid scope_all",
        code_challenge: str | None = None,
        code_challenge_method: str | None = None,
        id_token_claims: Mapping[str, Any] | None = None,
        signing_key: RSAKey | None = None,
    ) -> str:
        """Authenticate `user_id` for `client_id` (a new session) and return an authorization
        code. `id_token_claims`/`signing_key` let tests tamper with the ID token it yields."""
        now = self._clock()
        session = self._open_session(user_id, client_id)
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._codes[code] = _Code(
                session=session,
                redirect_uri=redirect_uri,
                nonce=nonce,
                scope=scope,
                expires_at=now + self.settings.code_lifetime_s,
                code_challenge=code_challenge,
                code_challenge_method=code_challenge_method,
                id_token_claims=id_token_claims,
                signing_key=signing_key,
            )
        return code

    def redeem_code(
        self, code: str, *, client: SimClient, redirect_uri: str, code_verifier: str | None
    ) -> dict[str, Any]:
        """The token response for a code (RFC 6749 §4.1.3); a code works once."""
        with self._lock:
            grant = self._codes.get(code)
            if grant is not None and grant.used:
                # RFC 6749 §4.1.2: a replayed code revokes what it issued.
                grant.session.active = False
            if grant is None or grant.used:
                raise OAuthFailure("invalid_grant", "Code not valid")
            grant.used = True
        if grant.expires_at < self._clock():
            raise OAuthFailure("invalid_grant", "Code not valid")
        if grant.session.client_id != client.client_id:
            raise OAuthFailure("invalid_grant", "Code issued to another client")
        if grant.redirect_uri != redirect_uri:
            raise OAuthFailure("invalid_grant", "Incorrect redirect_uri")
        if grant.code_challenge is not None:
            if not code_verifier:
                raise OAuthFailure("invalid_grant", "PKCE code verifier not specified")
            expected = (
                _s256(code_verifier) if grant.code_challenge_method == "S256" else code_verifier
            )
            if not hmac.compare_digest(expected, grant.code_challenge):
                raise OAuthFailure("invalid_grant", "PKCE verification failed")
        return self._token_response(
            grant.session,
            grant.scope,
            grant.nonce,
            id_token_claims=grant.id_token_claims,
            signing_key=grant.signing_key,
        )

    # --- tokens -------------------------------------------------------------------------------

    def _token_response(
        self,
        session: _Session,
        scope: str,
        nonce: str | None,
        *,
        id_token_claims: Mapping[str, Any] | None = None,
        signing_key: RSAKey | None = None,
    ) -> dict[str, Any]:
        now = self._clock()
        access = self._access_token(session, scope, now)
        refresh = secrets.token_urlsafe(48)
        with self._lock:
            self._refresh[refresh] = _Refresh(
                session, scope, nonce, now + self.settings.refresh_token_lifetime_s
            )
        answer: dict[str, Any] = {
            "access_token": access,
            "expires_in": self.settings.access_token_lifetime_s,
            "refresh_expires_in": self.settings.refresh_token_lifetime_s,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "session_state": session.sid,
            "scope": scope,
        }
        if "openid" in scope.split():
            claims = self._id_claims(session, nonce, now, access)
            answer["id_token"] = self._sign(_apply(claims, id_token_claims), signing_key)
        return answer

    def _access_token(
        self,
        session: _Session,
        scope: str,
        now: float,
        *,
        lifetime_s: int | None = None,
        claims: Mapping[str, Any] | None = None,
        key: RSAKey | None = None,
    ) -> str:
        user = session.user
        lifetime = self.settings.access_token_lifetime_s if lifetime_s is None else lifetime_s
        body: dict[str, Any] = {
            "exp": int(now) + lifetime,
            "iat": int(now),
            "auth_time": session.auth_time,
            "jti": str(uuid.uuid4()),
            "iss": self.issuer,
            "aud": session.client_id,
            "sub": user.subject,
            "typ": "Bearer",
            "azp": session.client_id,
            "sid": session.sid,
            "acr": session.acr,
            "scope": scope,
            "preferred_username": user.subject_name_id,
            "SubjectNameID": user.subject_name_id,
        }
        return self._sign(_apply(body, claims), key)

    def _id_claims(
        self, session: _Session, nonce: str | None, now: float, access_token: str | None
    ) -> dict[str, Any]:
        user = session.user
        claims: dict[str, Any] = {
            "exp": int(now) + self.settings.id_token_lifetime_s,
            "iat": int(now),
            "auth_time": session.auth_time,
            "jti": str(uuid.uuid4()),
            "iss": self.issuer,
            "aud": session.client_id,
            "sub": user.subject,
            "typ": "ID",
            "azp": session.client_id,
            "sid": session.sid,
            "acr": session.acr,
            "preferred_username": user.subject_name_id,
            "given_name": user.given_name,
            "family_name": user.family_name,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            claims["at_hash"] = _at_hash(access_token)
        return claims

    def refresh(self, refresh_token: str, *, client: SimClient) -> dict[str, Any]:
        """The token response of a refresh_token grant (the old refresh token is rotated)."""
        with self._lock:
            grant = self._refresh.get(refresh_token)
            if grant is not None and self.settings.rotate_refresh_tokens:
                del self._refresh[refresh_token]
        if grant is None or not grant.session.active or grant.expires_at < self._clock():
            raise OAuthFailure("invalid_grant", "Session not active")
        if grant.session.client_id != client.client_id:
            raise OAuthFailure("invalid_grant", "Token issued to another client")
        return self._token_response(grant.session, grant.scope, grant.nonce)

    def _active_access_claims(self, token: str) -> dict[str, Any] | None:
        return self._active_claims(token, "Bearer")

    def _active_claims(self, token: str, typ: str) -> dict[str, Any] | None:
        """Claims of a live, unrevoked token of kind `typ` ("Bearer" or "ID") it signed."""
        claims = self._decode_own(token)
        if claims is None or claims.get("typ") != typ:
            return None
        if int(claims.get("exp", 0)) < self._clock():
            return None
        with self._lock:
            if claims.get("jti") in self._revoked_jti:
                return None
            session = self._sessions.get(str(claims.get("sid", "")))
        if session is None or not session.active:
            return None
        return claims

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662: `{"active": false}` for anything not currently valid."""
        claims = self._active_access_claims(token)
        if claims is not None:
            return {
                **claims,
                "active": True,
                "client_id": claims.get("azp"),
                "username": claims.get("preferred_username"),
                "token_type": "Bearer",
            }
        # Like Keycloak, PSC also answers "active" for its other tokens, with their type: the
        # caller must check it (a refresh or ID token is not a credential for an API).
        id_claims = self._active_claims(token, "ID")
        if id_claims is not None:
            return {**id_claims, "active": True, "client_id": id_claims.get("azp")}
        with self._lock:
            grant = self._refresh.get(token)
        if grant is not None and grant.session.active and grant.expires_at >= self._clock():
            user = grant.session.user
            return {
                "active": True,
                "typ": "Refresh",
                "token_type": "Refresh",
                "sub": user.subject,
                "client_id": grant.session.client_id,
                "exp": int(grant.expires_at),
                "sid": grant.session.sid,
                "scope": grant.scope,
            }
        return {"active": False}

    def userinfo(self, access_token: str) -> tuple[dict[str, Any], str] | None:
        """The user's claims and the client the token was issued to; None if the token is not
        a currently valid access token."""
        claims = self._active_access_claims(access_token)
        if claims is None:
            return None
        with self._lock:
            session = self._sessions[str(claims["sid"])]
        return session.user.userinfo(), session.client_id

    def sign_userinfo(self, claims: Mapping[str, Any], client_id: str) -> str:
        now = int(self._clock())
        return self._sign({**claims, "iss": self.issuer, "aud": client_id, "iat": now})

    # --- ending sessions ----------------------------------------------------------------------

    def end_session(self, sid: str) -> bool:
        """End a session: its refresh tokens stop working, its access tokens turn inactive."""
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                return False
            session.active = False
            for token in [t for t, g in self._refresh.items() if g.session.sid == sid]:
                del self._refresh[token]
        return True

    def session_of_id_token(self, id_token: str) -> tuple[str, str] | None:
        """(sid, client_id) of an ID token this provider issued (expired ones included: a
        logout often comes after the ID token's expiry)."""
        claims = self._decode_own(id_token)
        if claims is None or "sid" not in claims:
            return None
        aud = claims.get("aud")
        client_id = aud if isinstance(aud, str) else str(claims.get("azp", ""))
        return str(claims["sid"]), client_id

    def session_of_refresh_token(self, refresh_token: str) -> tuple[str, str] | None:
        with self._lock:
            grant = self._refresh.get(refresh_token)
        if grant is None:
            return None
        return grant.session.sid, grant.session.client_id

    def revoke(self, token: str) -> None:
        """Revoke one access token (by jti) or one refresh token."""
        claims = self._decode_own(token)
        with self._lock:
            if claims is not None and "jti" in claims:
                self._revoked_jti.add(str(claims["jti"]))
            self._refresh.pop(token, None)

    def _open_session(self, user_id: str, client_id: str) -> _Session:
        """A new live session of `user_id` at `client_id` (unknown user: `self.user` raises)."""
        user = self.user(user_id)
        session = _Session(uuid.uuid4().hex, user, client_id, int(self._clock()), user.acr)
        with self._lock:
            self._sessions[session.sid] = session
        return session

    # --- test helpers -------------------------------------------------------------------------

    def issue_tokens(
        self,
        user_id: str,
        *,
        client_id: str,
        nonce: str | None = None,
        scope: str = "openid scope_all",
    ) -> dict[str, Any]:
        """A whole login without a browser: the token response a client would get."""
        session = self._open_session(user_id, client_id)
        return self._token_response(session, scope, nonce)

    def mint_access_token(
        self,
        user_id: str,
        *,
        client_id: str,
        lifetime_s: int | None = None,
        claims: Mapping[str, Any] | None = None,
        key: RSAKey | None = None,
    ) -> str:
        """An access token of a new live session, with chosen claims (None deletes one),
        lifetime (negative: already expired) and signing key."""
        session = self._open_session(user_id, client_id)
        return self._access_token(
            session,
            "openid scope_all",
            self._clock(),
            lifetime_s=lifetime_s,
            claims=claims,
            key=key,
        )

    def mint_id_token(
        self,
        user_id: str,
        *,
        client_id: str,
        nonce: str | None = None,
        claims: Mapping[str, Any] | None = None,
        key: RSAKey | None = None,
    ) -> str:
        """An ID token with chosen claims (e.g. `{"exp": past}`, `{"aud": "other"}`,
        `{"acr": "0"}`) and signing key (`foreign_key()` for a wrong signature)."""
        session = self._open_session(user_id, client_id)
        body = self._id_claims(session, nonce, self._clock(), None)
        return self._sign(_apply(body, claims), key)
