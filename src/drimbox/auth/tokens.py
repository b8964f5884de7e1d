"""Verification of the bearer tokens that peers forward with their WADO-RS requests.

Owns the `TokenVerifier` protocol (what the image service asks: "who is this token, and is it
valid now?") and `JwtVerifier`, a local verifier of signed JWTs (RS256/ES256) against a JWKS or
public keys: signature, `exp` (and `nbf`/`iat` when present), `iss` and `aud`. Built on joserfc,
authlib's JOSE implementation (authlib's own `authlib.jose` is deprecated in its favour).
It must not fetch anything over the network by itself (the PSC integration will bring JWKS
refresh and token introspection behind the same protocol) nor log token values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

DEFAULT_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256")
MAX_TOKEN_LENGTH = 16 * 1024


class InvalidToken(Exception):
    """The token is missing, malformed, badly signed, expired or not for us (→ HTTP 401).

    The message is French and safe to show: it never contains the token itself.
    """


@dataclass(frozen=True)
class TokenIdentity:
    """Who a verified token speaks for."""

    subject: str
    issuer: str
    expires_at: int
    claims: Mapping[str, Any] = field(default_factory=dict)
    client_id: str = ""  # the OIDC client the token was issued to (audited for peers)


class TokenVerifier(Protocol):
    """Checks a bearer token; raises `InvalidToken` unless it is valid now."""

    def verify(self, token: str) -> TokenIdentity: ...


class JwtVerifier:
    """Verifies JWTs locally against a key set (JWKS), as issued by an OIDC provider.

    - `jwks`: the provider's JWKS document (`{"keys": [...]}`), public keys only.
    - `issuer` and `audience`: the exact `iss` and one of the `aud` values required.
    - `algorithms`: accepted `alg` values (never `none`, never HMAC with a public key).
    - `leeway_s`: clock skew tolerated on `exp`/`nbf`/`iat`.
    """

    def __init__(
        self,
        jwks: Mapping[str, Any],
        *,
        issuer: str,
        audience: str | Sequence[str],
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        leeway_s: int = 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuer:
            raise ValueError("issuer is required: tokens of any other issuer must be refused")
        audiences = [audience] if isinstance(audience, str) else list(audience)
        if not audiences or not all(audiences):
            raise ValueError("at least one audience is required")
        unsafe = {a for a in algorithms if a.lower() == "none" or a.upper().startswith("HS")}
        if unsafe:
            raise ValueError(f"algorithms {sorted(unsafe)} cannot be used with public keys")
        keys = jwks.get("keys")
        if not isinstance(keys, list) or not keys:
            raise ValueError("the JWKS has no keys")
        if any(isinstance(k, Mapping) and "d" in k for k in keys):
            raise ValueError("the JWKS holds a private key: give the public keys only")
        self._keys = KeySet.import_key_set({"keys": list(keys)})
        self._issuer = issuer
        self._audiences = audiences
        self._algorithms = list(algorithms)
        self._leeway = leeway_s
        self._clock = clock

    def verify(self, token: str) -> TokenIdentity:
        if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
            raise InvalidToken("jeton d'accès absent ou mal formé (JWT attendu)")
        try:
            decoded = jwt.decode(token, self._keys, algorithms=self._algorithms)
        except JoseError as exc:
            raise InvalidToken(f"jeton d'accès refusé : signature invalide ({exc.error})") from None
        except (ValueError, TypeError, KeyError):
            raise InvalidToken("jeton d'accès mal formé") from None
        claims = decoded.claims
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self._clock()),
            leeway=self._leeway,
            iss={"essential": True, "value": self._issuer},
            aud={"essential": True, "values": self._audiences},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise InvalidToken(_claim_message(exc)) from None
        # Keycloak (PSC) signs ID and refresh tokens with the same keys: only "Bearer" is an
        # access token.
        typ = claims.get("typ")
        if typ is not None and str(typ).lower() != "bearer":
            raise InvalidToken(f"ce jeton n'est pas un jeton d'accès (type : {str(typ)[:32]})")
        return TokenIdentity(
            subject=str(claims["sub"]),
            issuer=str(claims["iss"]),
            expires_at=int(claims["exp"]),
            claims=dict(claims),
            client_id=str(claims.get("azp") or claims.get("client_id") or ""),
        )


def _claim_message(exc: JoseError) -> str:
    name = exc.error
    if name == "expired_token":
        return "jeton d'accès expiré"
    if name in ("missing_claim", "invalid_claim"):
        return f"jeton d'accès refusé : {exc.description}"
    return f"jeton d'accès refusé ({name})"


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer …` header; raises `InvalidToken` otherwise."""
    if not authorization:
        raise InvalidToken("en-tête Authorization absent : un jeton Bearer est requis")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise InvalidToken("en-tête Authorization invalide : « Bearer <jeton> » attendu")
    return value.strip()
