"""Pro Santé Connect (PSC) as the box's OpenID Connect provider: logging users in, and checking
the PSC access tokens that peers forward.

Owns `PscSettings` (client identity, discovery URL or explicit endpoints — PSC's discovery path
`…/.well-known/wallet-openid-configuration` is not the standard one; client authentication by
mutual TLS, RFC 8705 `tls_client_auth`, at the discovery document's `mtls_endpoint_aliases` when
it has them, or by secret for sandboxes), `certificate_problems` (`drimbox config check`: the
client certificate's CN is `client_id`), `PscClient` (authorization
code flow with `scope=openid scope_all`, `acr_values=eidas1`, state, nonce and PKCE; ID token
verification: signature against the JWKS — cached, refreshed when an unknown `kid` shows up —,
`iss`, `aud`/`azp`, `exp`/`iat`, `nonce`, `acr` ≥ eidas1; userinfo; refresh; logout;
RFC 7662 introspection), `PscError` (one `reason` per refusal, a French message for the user),
and `PscIntrospectionVerifier`, the `TokenVerifier` (see `drimbox.auth.tokens`) that checks a
peer's bearer token by introspection with a small cache.

It must not keep sessions or cookies (the web layer stores what `PscClient` returns), decide
what a user may see, or log token values. Built on authlib's OAuth 2.0 parameter helpers
(grant URI, PKCE, client authentication) and joserfc for JWTs (as `drimbox.auth.tokens`); the
HTTP calls go through one `httpx.Client`, so a `PscClient` is safe to share between threads.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote_plus, urlencode

import httpx
from authlib.common.security import generate_token  # type: ignore[import-untyped]
from authlib.oauth2.auth import ClientAuth  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri  # type: ignore[import-untyped]
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]
from cryptography.x509.oid import NameOID
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import KeySet

from drimbox.auth.tokens import MAX_TOKEN_LENGTH, InvalidToken, TokenIdentity
from drimbox.auth.users import PscUser, UserInfoError
from drimbox.config import Config, PscConfig
from drimbox.dmp.structures import key_matches, usage_problem
from drimbox.http.tlspolicy import client_context
from drimbox.trust.keys import load_cert_chain, load_certificate

DEFAULT_SCOPE = "openid scope_all"
DEFAULT_ACR = "eidas1"
# eIDAS levels as PSC (and FranceConnect) name them; any other value (Keycloak's "0"/"1",
# nothing at all) ranks below eidas1.
ACR_LEVELS: dict[str, int] = {"eidas1": 1, "eidas2": 2, "eidas3": 3}
SIGNATURE_ALGORITHMS: tuple[str, ...] = ("RS256", "PS256", "ES256")


def acr_level(acr: object) -> int:
    return ACR_LEVELS.get(acr, 0) if isinstance(acr, str) else 0


def acr_satisfies(acr: object, minimum: str) -> bool:
    """Whether `acr` is at least `minimum` on the eIDAS ladder."""
    return acr_level(acr) >= acr_level(minimum) > 0


class PscErrorReason(StrEnum):
    """Why PSC, or a PSC answer, was refused (stable codes for logs, tests and the UI)."""

    CONFIGURATION = "configuration"
    UNREACHABLE = "unreachable"
    BAD_RESPONSE = "bad_response"
    LOGIN_REFUSED = "login_refused"
    STATE = "state"
    CODE_REFUSED = "code_refused"
    CLIENT_REFUSED = "client_refused"
    SIGNATURE = "signature"
    ISSUER = "issuer"
    AUDIENCE = "audience"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    NONCE = "nonce"
    ACR = "acr"
    SESSION_ENDED = "session_ended"
    USERINFO = "userinfo"


class PscError(Exception):
    """A refused login, token or PSC answer. `message` is French and safe to show to the user
    (it never contains a token); `reason` says which check failed."""

    def __init__(self, reason: PscErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


_UNREACHABLE = (
    "Pro Santé Connect est injoignable pour le moment : réessayez dans quelques instants."
)
_SESSION_ENDED = "Votre session Pro Santé Connect a expiré ou a été fermée : reconnectez-vous."
_CLIENT_REFUSED = (
    "Pro Santé Connect refuse l'identification de cette DRIMbox : vérifier client_id et le "
    "certificat tls_cert (ou client_secret) dans la section [psc] de la configuration."
)
AuthMethod = Literal["tls_client_auth", "client_secret_basic", "client_secret_post"]
# Endpoints a client authenticating by certificate calls at their mutual-TLS alias when the
# discovery document gives one (RFC 8705 §5). The browser is still sent to the plain
# end_session_endpoint; the alias of that one serves the back-channel logout.
_MTLS_ALIASED = ("token_endpoint", "introspection_endpoint", "userinfo_endpoint")


@dataclass(frozen=True)
class PscSettings:
    """How this box talks to PSC (the `[psc]` configuration section).

    Give `discovery_url`, or `issuer` and at least the authorization, token and JWKS endpoints;
    an endpoint given explicitly wins over the discovery document (useful when that document
    names hosts the box cannot reach).
    """

    client_id: str
    client_secret: str
    redirect_uri: str
    # ORG AUTH CLI certificate and key (PEM) for `tls_client_auth` (RFC 8705).
    tls_cert: str = ""
    tls_key: str = ""
    key_passphrase_env: str = ""  # the variable holding tls_key's passphrase (encrypted key)
    discovery_url: str = ""
    issuer: str = ""
    authorization_endpoint: str = ""
    token_endpoint: str = ""
    userinfo_endpoint: str = ""
    jwks_uri: str = ""
    introspection_endpoint: str = ""
    end_session_endpoint: str = ""
    scope: str = DEFAULT_SCOPE
    acr_values: str = DEFAULT_ACR
    token_endpoint_auth_method: AuthMethod = "client_secret_basic"
    use_pkce: bool = True
    # Clock skew tolerated on exp/iat (seconds).
    leeway_s: int = 30
    timeout_s: float = 10.0
    # An unknown `kid` triggers a JWKS download at most this often (a flood of forged tokens
    # must not turn into a flood of requests to PSC).
    jwks_refresh_interval_s: float = 10.0
    # CA bundle (PEM) to verify PSC's TLS certificate; empty: the system's.
    ca_file: str = ""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.client_id:
            problems.append("client_id manquant")
        if self.token_endpoint_auth_method == "tls_client_auth":
            if not self.tls_cert or not self.tls_key:
                problems.append("tls_client_auth demande tls_cert et tls_key (ou [dmp] tls_*)")
        elif not self.client_secret:
            problems.append(
                "client_secret manquant (ou donner tls_cert et tls_key : authentification par "
                "TLS mutuel)"
            )
        if not self.redirect_uri.startswith(("https://", "http://")):
            problems.append("redirect_uri doit être une URL http(s) absolue")
        explicit = (self.issuer, self.authorization_endpoint, self.token_endpoint, self.jwks_uri)
        if not self.discovery_url and not all(explicit):
            problems.append(
                "donner discovery_url, ou bien issuer, authorization_endpoint, token_endpoint "
                "et jwks_uri"
            )
        if "openid" not in self.scope.split():
            problems.append("scope doit contenir « openid »")
        if self.acr_values not in ACR_LEVELS:
            problems.append(f"acr_values inconnu : {self.acr_values!r} (eidas1 attendu)")
        if problems:
            raise PscError(
                PscErrorReason.CONFIGURATION,
                "configuration [psc] invalide : " + "; ".join(problems),
            )

    @classmethod
    def from_config(cls, config: Config, redirect_uri: str) -> PscSettings:
        """The `[psc]` section, with the callback URL of the origin that signs users in."""
        psc = config.psc
        method = psc.token_endpoint_auth_method
        if method == "auto":
            method = "tls_client_auth" if psc.tls_cert else "client_secret_basic"
        mutual = method == "tls_client_auth"
        return cls(
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
            token_endpoint_auth_method=method,
            # An explicit tls_client_auth without [psc] tls_cert: the structure's ORG
            # authentication certificate of [dmp], when PSC registered the client with it.
            tls_cert=psc.tls_cert or (config.dmp.tls_cert if mutual else ""),
            tls_key=psc.tls_key or (config.dmp.tls_key if mutual else ""),
            key_passphrase_env=(
                psc.key_passphrase_env if psc.tls_cert else config.dmp.key_passphrase_env
            ),
            use_pkce=psc.use_pkce,
            leeway_s=psc.leeway_s,
            timeout_s=psc.timeout_s,
            ca_file=psc.ca_file,
        )


@dataclass(frozen=True)
class PscEndpoints:
    """PSC's endpoints once discovery and explicit settings are merged."""

    issuer: str
    authorization: str
    token: str
    jwks: str
    userinfo: str = ""
    introspection: str = ""
    end_session: str = ""
    # Where the box itself ends a session (its mutual-TLS alias); "": `end_session`.
    end_session_backchannel: str = ""


@dataclass(frozen=True)
class LoginRequest:
    """A login being started: send the user to `url`; keep `state`, `nonce` and
    `code_verifier` server-side (they are needed, once, at the callback)."""

    url: str
    state: str
    nonce: str
    code_verifier: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class PscTokens:
    """What a login or a refresh yields. Tokens are kept out of `repr` (logs)."""

    access_token: str = field(repr=False)
    id_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: int
    refresh_expires_at: int | None
    scope: str
    subject: str  # the ID token's `sub`
    acr: str
    session_id: str  # PSC's session (`sid`), for correlating logouts
    id_claims: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def access_expired(self, now: float | None = None, margin_s: int = 30) -> bool:
        """True when the access token is expired or about to (refresh before using it)."""
        return (time.time() if now is None else now) + margin_s >= self.expires_at


@dataclass(frozen=True)
class TokenInfo:
    """An active token as PSC's introspection describes it (RFC 7662)."""

    subject: str
    expires_at: int
    audience: tuple[str, ...] = ()
    client_id: str = ""
    scope: str = ""
    issuer: str = ""
    acr: str = ""
    subject_name_id: str = ""  # "8" + RPPS, when PSC includes it
    username: str = ""
    token_type: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def professional_id(self) -> str:
        """Who the token speaks for, as the DMP and the audit trail name professionals."""
        return self.subject_name_id or self.username or self.subject


class _JwksCache:
    """PSC's signing keys, downloaded on first use and again when a token names an unknown kid
    (PSC rotates its keys), at most once per `min_interval_s`."""

    def __init__(
        self,
        fetch: Callable[[], Mapping[str, Any]],
        min_interval_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._fetch = fetch
        self._min_interval = min_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: KeySet | None = None
        self._kids: set[str] = set()
        self._fetched_at = float("-inf")

    def _load(self) -> None:
        document = self._fetch()
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise PscError(
                PscErrorReason.BAD_RESPONSE, "Réponse inattendue de Pro Santé Connect (JWKS)."
            )
        # Encryption keys and private material have no business here: keep public signing keys.
        public = [
            {k: v for k, v in entry.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
            for entry in entries
            if isinstance(entry, Mapping) and entry.get("use", "sig") == "sig"
        ]
        try:
            keys = KeySet.import_key_set({"keys": public})
        except (JoseError, ValueError, TypeError, KeyError):
            raise PscError(
                PscErrorReason.BAD_RESPONSE, "Réponse inattendue de Pro Santé Connect (JWKS)."
            ) from None
        self._keys = keys
        self._kids = {str(entry["kid"]) for entry in public if "kid" in entry}
        self._fetched_at = self._clock()

    def keys_for(self, kid: str | None) -> KeySet:
        with self._lock:
            stale = self._clock() - self._fetched_at >= self._min_interval
            if self._keys is None or (kid is not None and kid not in self._kids and stale):
                self._load()
            assert self._keys is not None
            if kid is not None and kid not in self._kids:
                raise PscError(
                    PscErrorReason.SIGNATURE,
                    "Le jeton est signé par une clé inconnue de Pro Santé Connect.",
                )
            return self._keys


class PscClient:
    """Talks to Pro Santé Connect for one box (one `client_id`). Share one per process."""

    def __init__(
        self,
        settings: PscSettings,
        *,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._own_http = http is None
        self._mtls = settings.token_endpoint_auth_method == "tls_client_auth"
        if http is None:
            http = httpx.Client(timeout=settings.timeout_s, verify=_ssl_context(settings))
        self._http = http
        if self._mtls:
            # RFC 8705 §2: the client_id in the form, the certificate of the connection as proof.
            self._client_auth = ClientAuth(settings.client_id, None, "none")
        else:
            # RFC 6749 §2.3.1: HTTP Basic carries the form-urlencoded id and secret.
            basic = settings.token_endpoint_auth_method == "client_secret_basic"
            self._client_auth = ClientAuth(
                quote_plus(settings.client_id) if basic else settings.client_id,
                quote_plus(settings.client_secret) if basic else settings.client_secret,
                settings.token_endpoint_auth_method,
            )
        self._endpoints: PscEndpoints | None = None
        self._endpoints_lock = threading.Lock()
        self._jwks = _JwksCache(
            lambda: self._get_json(self.endpoints.jwks, "JWKS"),
            settings.jwks_refresh_interval_s,
            time.monotonic,
        )

    # --- plumbing -----------------------------------------------------------------------------

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            response = self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError:
            raise PscError(PscErrorReason.UNREACHABLE, _UNREACHABLE) from None
        if response.status_code >= 500:
            raise PscError(PscErrorReason.UNREACHABLE, _UNREACHABLE)
        return _json_object(response, what)

    def _post_form(self, url: str, params: Mapping[str, str]) -> httpx.Response:
        """POST a form with the client's credentials (client_secret_basic or _post)."""
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        url, headers, body = self._client_auth.prepare("POST", url, headers, urlencode(params))
        try:
            response = self._http.post(url, content=body, headers=headers)
        except httpx.HTTPError:
            raise PscError(PscErrorReason.UNREACHABLE, _UNREACHABLE) from None
        if response.status_code >= 500:
            raise PscError(PscErrorReason.UNREACHABLE, _UNREACHABLE)
        if response.status_code == 401:
            raise PscError(PscErrorReason.CLIENT_REFUSED, _CLIENT_REFUSED)
        return response

    @property
    def endpoints(self) -> PscEndpoints:
        """The endpoints, from the discovery document (fetched once) and the settings."""
        with self._endpoints_lock:
            if self._endpoints is None:
                self._endpoints = self._resolve_endpoints()
            return self._endpoints

    def _resolve_endpoints(self) -> PscEndpoints:
        s = self.settings
        found: dict[str, Any] = {}
        if s.discovery_url:
            found = self._get_json(s.discovery_url, "document de découverte")
            if s.issuer and found.get("issuer") not in (None, s.issuer):
                raise PscError(
                    PscErrorReason.CONFIGURATION,
                    f"le document de découverte de Pro Santé Connect annonce l'émetteur "
                    f"{found.get('issuer')!r}, la configuration [psc] attend {s.issuer!r}",
                )

        aliases = found.get("mtls_endpoint_aliases")
        aliases = aliases if self._mtls and isinstance(aliases, Mapping) else {}
        for name in _MTLS_ALIASED:
            if isinstance(aliases.get(name), str) and aliases[name]:
                found[name] = aliases[name]

        def pick(explicit: str, name: str) -> str:
            value = explicit or found.get(name) or ""
            return value if isinstance(value, str) else ""

        endpoints = PscEndpoints(
            issuer=pick(s.issuer, "issuer"),
            authorization=pick(s.authorization_endpoint, "authorization_endpoint"),
            token=pick(s.token_endpoint, "token_endpoint"),
            jwks=pick(s.jwks_uri, "jwks_uri"),
            userinfo=pick(s.userinfo_endpoint, "userinfo_endpoint"),
            introspection=pick(s.introspection_endpoint, "introspection_endpoint"),
            end_session=pick(s.end_session_endpoint, "end_session_endpoint"),
        )
        backchannel = aliases.get("end_session_endpoint")
        if not s.end_session_endpoint and isinstance(backchannel, str) and backchannel:
            endpoints = replace(endpoints, end_session_backchannel=backchannel)
        missing = [
            name
            for name in ("issuer", "authorization", "token", "jwks")
            if not getattr(endpoints, name)
        ]
        if missing:
            raise PscError(
                PscErrorReason.CONFIGURATION,
                "configuration [psc] incomplète : point d'accès inconnu " + ", ".join(missing),
            )
        return endpoints

    def _require(self, url: str, name: str) -> str:
        if not url:
            raise PscError(
                PscErrorReason.CONFIGURATION,
                f"configuration [psc] : le point d'accès {name} de Pro Santé Connect est inconnu",
            )
        return url

    # --- login --------------------------------------------------------------------------------

    def new_login(self, *, login_hint: str | None = None) -> LoginRequest:
        """Fresh state, nonce and (with `use_pkce`) PKCE verifier, and the URL to send the
        user to."""
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = generate_token(64) if self.settings.use_pkce else None
        url = self.authorization_url(state, nonce, code_verifier=verifier, login_hint=login_hint)
        return LoginRequest(url, state, nonce, verifier)

    def authorization_url(
        self,
        state: str,
        nonce: str,
        *,
        code_verifier: str | None = None,
        login_hint: str | None = None,
    ) -> str:
        """The URL of PSC's authorization endpoint for this login (OIDC authorization code)."""
        if not state or not nonce:
            raise ValueError("state and nonce are required")
        extra: dict[str, str | None] = {
            "nonce": nonce,
            "acr_values": self.settings.acr_values,
            "login_hint": login_hint,
        }
        if code_verifier:
            extra["code_challenge"] = create_s256_code_challenge(code_verifier)
            extra["code_challenge_method"] = "S256"
        url: str = prepare_grant_uri(
            self.endpoints.authorization,
            self.settings.client_id,
            "code",
            redirect_uri=self.settings.redirect_uri,
            scope=self.settings.scope,
            state=state,
            **extra,
        )
        return url

    @staticmethod
    def callback_parameters(query: Mapping[str, str]) -> tuple[str, str]:
        """(code, state) of PSC's redirect back to `redirect_uri`; raises `PscError` when PSC
        reports an error (user cancelled, …) or the code is missing."""
        error = query.get("error")
        if error:
            detail = query.get("error_description") or error
            raise PscError(
                PscErrorReason.LOGIN_REFUSED,
                f"Connexion Pro Santé Connect annulée ou refusée ({detail}).",
            )
        code = query.get("code", "")
        if not code:
            raise PscError(
                PscErrorReason.BAD_RESPONSE,
                "Réponse inattendue de Pro Santé Connect (code d'autorisation absent).",
            )
        return code, query.get("state", "")

    def exchange(
        self,
        code: str,
        *,
        state: str,
        expected_state: str,
        nonce: str,
        code_verifier: str | None = None,
    ) -> PscTokens:
        """Trade the callback's code for tokens, after checking `state`, and verify the ID token
        (signature, iss, aud, exp, nonce, acr). Each refusal is a `PscError` with its reason."""
        if not expected_state or not hmac.compare_digest(
            state.encode("utf-8"), expected_state.encode("utf-8")
        ):
            raise PscError(
                PscErrorReason.STATE,
                "La réponse de Pro Santé Connect ne correspond à aucune connexion en cours "
                "(paramètre state) : recommencez la connexion.",
            )
        params = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.settings.redirect_uri,
        }
        if code_verifier:
            params["code_verifier"] = code_verifier
        answer = self._token_request(params, refused=PscErrorReason.CODE_REFUSED)
        id_token = answer.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise PscError(
                PscErrorReason.BAD_RESPONSE,
                "Réponse inattendue de Pro Santé Connect (jeton d'identité absent).",
            )
        claims = self.verify_id_token(id_token, nonce=nonce)
        return self._tokens(answer, id_token, claims, previous_refresh=None)

    def refresh(self, refresh_token: str, *, id_token: str = "") -> PscTokens:
        """New tokens from a refresh token. A new ID token, when PSC sends one, is verified
        (without nonce); otherwise `id_token` (the previous one) is carried over, and so is
        the refresh token when PSC does not rotate it."""
        answer = self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token},
            refused=PscErrorReason.SESSION_ENDED,
        )
        new_id = answer.get("id_token")
        if isinstance(new_id, str) and new_id:
            claims = self.verify_id_token(new_id, nonce=None)
            return self._tokens(answer, new_id, claims, previous_refresh=refresh_token)
        return self._tokens(answer, id_token, {}, previous_refresh=refresh_token)

    def _token_request(
        self, params: Mapping[str, str], *, refused: PscErrorReason
    ) -> dict[str, Any]:
        response = self._post_form(self.endpoints.token, params)
        _raise_if_client_refused(response)
        if response.status_code == 400:
            error = _json_object(response, "jeton").get("error", "")
            if error == "invalid_grant":
                if refused is PscErrorReason.SESSION_ENDED:
                    raise PscError(refused, _SESSION_ENDED)
                raise PscError(
                    refused,
                    "Pro Santé Connect a refusé le code de connexion (expiré ou déjà utilisé) : "
                    "recommencez la connexion.",
                )
            raise PscError(
                PscErrorReason.BAD_RESPONSE,
                f"Pro Santé Connect a refusé la demande de jeton ({error or 'erreur inconnue'}).",
            )
        if response.status_code != 200:
            raise PscError(
                PscErrorReason.BAD_RESPONSE,
                f"Réponse inattendue de Pro Santé Connect (HTTP {response.status_code}).",
            )
        answer = _json_object(response, "jeton")
        if not isinstance(answer.get("access_token"), str):
            raise PscError(
                PscErrorReason.BAD_RESPONSE,
                "Réponse inattendue de Pro Santé Connect (jeton d'accès absent).",
            )
        return answer

    def _tokens(
        self,
        answer: Mapping[str, Any],
        id_token: str,
        claims: Mapping[str, Any],
        *,
        previous_refresh: str | None,
    ) -> PscTokens:
        now = int(self._clock())
        refresh = answer.get("refresh_token") or previous_refresh or ""
        refresh_in = answer.get("refresh_expires_in")
        return PscTokens(
            access_token=str(answer["access_token"]),
            id_token=id_token,
            refresh_token=str(refresh),
            expires_at=now + _int(answer.get("expires_in"), 300),
            refresh_expires_at=now + int(refresh_in) if isinstance(refresh_in, int) else None,
            scope=str(answer.get("scope", self.settings.scope)),
            subject=str(claims.get("sub", "")),
            acr=str(claims.get("acr", "")),
            session_id=str(claims.get("sid") or answer.get("session_state") or ""),
            id_claims=dict(claims),
        )

    # --- JWT verification ---------------------------------------------------------------------

    def _verified_claims(self, token: str, what: str) -> dict[str, Any]:
        """Claims of a JWT whose signature verifies against PSC's JWKS."""
        if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
            raise PscError(
                PscErrorReason.SIGNATURE, f"Le {what} de Pro Santé Connect est mal formé."
            )
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, TypeError, KeyError, UnicodeEncodeError):
            raise PscError(
                PscErrorReason.SIGNATURE, f"Le {what} de Pro Santé Connect est mal formé."
            ) from None
        if header.get("alg") not in SIGNATURE_ALGORITHMS:
            raise PscError(
                PscErrorReason.SIGNATURE,
                f"Le {what} utilise un algorithme de signature refusé ({header.get('alg')}).",
            )
        kid = header.get("kid")
        keys = self._jwks.keys_for(kid if isinstance(kid, str) else None)
        try:
            decoded = jwt.decode(token, keys, algorithms=list(SIGNATURE_ALGORITHMS))
        except BadSignatureError:
            raise PscError(
                PscErrorReason.SIGNATURE,
                f"La signature du {what} de Pro Santé Connect est invalide.",
            ) from None
        except (JoseError, ValueError, TypeError, KeyError):
            raise PscError(
                PscErrorReason.SIGNATURE, f"Le {what} de Pro Santé Connect est illisible."
            ) from None
        return dict(decoded.claims)

    def verify_id_token(self, id_token: str, *, nonce: str | None) -> dict[str, Any]:
        """Verify an ID token (OIDC Core 3.1.3.7) and return its claims; `nonce=None` skips the
        nonce check (refresh). Raises `PscError` with the failed check as reason."""
        claims = self._verified_claims(id_token, "jeton d'identité")
        endpoints = self.endpoints
        if claims.get("iss") != endpoints.issuer:
            raise PscError(
                PscErrorReason.ISSUER,
                "Le jeton d'identité n'a pas été émis par le Pro Santé Connect configuré (iss).",
            )
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        client_id = self.settings.client_id
        if not isinstance(audiences, list) or client_id not in audiences:
            raise PscError(
                PscErrorReason.AUDIENCE,
                "Le jeton d'identité n'est pas destiné à cette DRIMbox (aud).",
            )
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != client_id:
            raise PscError(
                PscErrorReason.AUDIENCE,
                "Le jeton d'identité a été délivré à une autre application (azp).",
            )
        now = self._clock()
        leeway = self.settings.leeway_s
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp + leeway < now:
            raise PscError(
                PscErrorReason.EXPIRED, "Le jeton d'identité a expiré : reconnectez-vous."
            )
        iat = claims.get("iat")
        if isinstance(iat, int | float) and iat - leeway > now:
            raise PscError(
                PscErrorReason.NOT_YET_VALID,
                "Le jeton d'identité est daté du futur : vérifier l'horloge de la DRIMbox.",
            )
        if nonce is not None:
            received = claims.get("nonce")
            if not isinstance(received, str) or not hmac.compare_digest(
                received.encode("utf-8"), nonce.encode("utf-8")
            ):
                raise PscError(
                    PscErrorReason.NONCE,
                    "Le jeton d'identité ne correspond pas à cette connexion (nonce) : "
                    "recommencez la connexion.",
                )
        if not acr_satisfies(claims.get("acr"), self.settings.acr_values):
            raise PscError(
                PscErrorReason.ACR,
                "Niveau d'authentification insuffisant : connectez-vous avec votre carte CPS ou "
                f"l'application e-CPS (niveau {self.settings.acr_values} exigé).",
            )
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise PscError(
                PscErrorReason.BAD_RESPONSE, "Le jeton d'identité ne désigne aucun utilisateur."
            )
        return claims

    # --- userinfo -----------------------------------------------------------------------------

    def userinfo(self, access_token: str, *, expected_subject: str | None = None) -> PscUser:
        """The user's professional identity (SubjectNameID, exercices). `expected_subject`,
        the ID token's `sub`, must match (OIDC Core 5.3.2)."""
        url = self._require(self.endpoints.userinfo, "userinfo")
        try:
            response = self._http.get(
                url,
                headers={
                    "Authorization": f"Bearer {access_token}",
                    "Accept": "application/json, application/jwt",
                },
            )
        except httpx.HTTPError:
            raise PscError(PscErrorReason.UNREACHABLE, _UNREACHABLE) from None
        if response.status_code in (401, 403):
            raise PscError(PscErrorReason.SESSION_ENDED, _SESSION_ENDED)
        if response.status_code >= 500:
            raise PscError(PscErrorReason.UNREACHABLE, _UNREACHABLE)
        if response.status_code != 200:
            raise PscError(
                PscErrorReason.BAD_RESPONSE,
                f"Réponse inattendue de Pro Santé Connect (userinfo, HTTP {response.status_code}).",
            )
        media = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if media == "application/jwt":
            claims = self._verified_claims(response.text.strip(), "jeton userinfo")
            if claims.get("iss", self.endpoints.issuer) != self.endpoints.issuer:
                raise PscError(
                    PscErrorReason.ISSUER,
                    "Les informations de l'utilisateur n'ont pas été signées par le Pro Santé "
                    "Connect configuré (iss).",
                )
            aud = claims.get("aud", self.settings.client_id)
            audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if self.settings.client_id not in audiences:
                raise PscError(
                    PscErrorReason.AUDIENCE,
                    "Les informations de l'utilisateur sont destinées à une autre application.",
                )
        else:
            claims = _json_object(response, "userinfo")
        if expected_subject is not None and claims.get("sub") != expected_subject:
            raise PscError(
                PscErrorReason.USERINFO,
                "Les informations de l'utilisateur ne correspondent pas au jeton d'identité (sub).",
            )
        try:
            return PscUser.from_claims(claims)
        except UserInfoError as exc:
            raise PscError(PscErrorReason.USERINFO, str(exc).capitalize() + ".") from None

    # --- logout -------------------------------------------------------------------------------

    def logout_url(
        self, id_token_hint: str, post_logout_redirect: str, *, state: str | None = None
    ) -> str:
        """Where to send the browser to end the PSC session (RP-initiated logout)."""
        url = self._require(self.endpoints.end_session, "end_session")
        params = {
            "id_token_hint": id_token_hint,
            "post_logout_redirect_uri": post_logout_redirect,
            "client_id": self.settings.client_id,
        }
        if state:
            params["state"] = state
        return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"

    def end_session(self, refresh_token: str) -> None:
        """End the PSC session server-side (Keycloak's back-channel logout with the refresh
        token): its refresh token stops working. A session already ended is not an error."""
        endpoints = self.endpoints
        url = self._require(
            endpoints.end_session_backchannel or endpoints.end_session, "end_session"
        )
        response = self._post_form(url, {"refresh_token": refresh_token})
        if response.status_code not in (200, 204, 400):
            raise PscError(
                PscErrorReason.BAD_RESPONSE,
                "Réponse inattendue de Pro Santé Connect (déconnexion, HTTP "
                f"{response.status_code}).",
            )

    # --- introspection ------------------------------------------------------------------------

    def introspect(self, token: str) -> TokenInfo | None:
        """RFC 7662 introspection of a PSC access token: its description when active, None when
        PSC says it is not (expired, revoked, unknown). Raises `PscError` when PSC cannot
        answer."""
        url = self._require(self.endpoints.introspection, "introspection")
        response = self._post_form(url, {"token": token, "token_type_hint": "access_token"})
        _raise_if_client_refused(response)
        if response.status_code != 200:
            raise PscError(
                PscErrorReason.BAD_RESPONSE,
                f"Réponse inattendue de Pro Santé Connect (introspection, HTTP "
                f"{response.status_code}).",
            )
        answer = _json_object(response, "introspection")
        if answer.get("active") is not True:
            return None
        exp = answer.get("exp")
        if not isinstance(exp, int) or exp + self.settings.leeway_s < self._clock():
            # PSC said active but gave no (or a past) expiry: do not trust the token longer.
            return None
        audience = answer.get("aud", ())
        return TokenInfo(
            subject=str(answer.get("sub", "")),
            expires_at=exp,
            audience=(audience,) if isinstance(audience, str) else tuple(map(str, audience)),
            client_id=str(answer.get("client_id") or answer.get("azp") or ""),
            scope=str(answer.get("scope", "")),
            issuer=str(answer.get("iss", "")),
            acr=str(answer.get("acr", "")),
            subject_name_id=str(answer.get("SubjectNameID", "")),
            username=str(answer.get("username") or answer.get("preferred_username") or ""),
            token_type=str(answer.get("token_type", "")),
            claims=answer,
        )


def certificate_problems(psc: PscConfig) -> list[str]:
    """French sentences, one per problem of the `[psc]` client certificate (`drimbox config
    check`): readable, an ORG AUTH CLI certificate (TLS client authentication) whose CN is
    `client_id` — PSC registers the box by that subject —, matching `tls_key`."""
    if not psc.tls_cert:
        return []
    problems: list[str] = []
    try:
        certificate = load_certificate(psc.tls_cert, psc.key_passphrase_env)
    except (OSError, ValueError) as exc:
        return [f"[psc] tls_cert illisible ({psc.tls_cert}) : {exc}"]
    names = [str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if psc.client_id not in names:
        problems.append(
            f"[psc] tls_cert ({psc.tls_cert}) est au nom de « {', '.join(names) or 'sans CN'} », "
            f"pas du client_id « {psc.client_id} » (CN du sujet)"
        )
    usage = usage_problem(certificate, "auth")
    if usage is not None:
        problems.append(f"[psc] tls_cert ({psc.tls_cert}) {usage}")
    if not psc.tls_key:
        problems.append("[psc] tls_key non renseigné")
        return problems
    try:
        if not key_matches(certificate, psc.tls_key, psc.key_passphrase_env):
            problems.append(
                f"[psc] la clé tls_key ({psc.tls_key}) ne correspond pas au certificat tls_cert"
            )
    except (OSError, ValueError, TypeError) as exc:
        problems.append(f"[psc] tls_key illisible ({psc.tls_key}) : {exc}")
    return problems


def _raise_if_client_refused(response: httpx.Response) -> None:
    """PSC did not authenticate this box (RFC 6749 §5.2: `invalid_client`, 401 or 400)."""
    if response.status_code not in (400, 401):
        return
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if response.status_code == 401 or error in ("invalid_client", "unauthorized_client"):
        raise PscError(PscErrorReason.CLIENT_REFUSED, _CLIENT_REFUSED)


def _ssl_context(settings: PscSettings) -> ssl.SSLContext:
    """TLS towards PSC: its CA (the system's by default) and, for `tls_client_auth`, the box's
    ORG AUTH CLI certificate."""
    context = client_context(settings.ca_file)
    if settings.token_endpoint_auth_method == "tls_client_auth":
        try:
            load_cert_chain(
                context, settings.tls_cert, settings.tls_key, settings.key_passphrase_env
            )
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise PscError(
                PscErrorReason.CONFIGURATION,
                f"configuration [psc] : certificat tls_cert ou clé tls_key illisible "
                f"({settings.tls_cert}, {settings.tls_key}) : {exc}",
            ) from None
    return context


def _json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise PscError(
            PscErrorReason.BAD_RESPONSE, f"Réponse inattendue de Pro Santé Connect ({what})."
        )
    return data


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class TokenCheckUnavailable(InvalidToken):
    """The token could not be checked because PSC did not answer (a 503 rather than a 401 for
    a caller that tells them apart; an `InvalidToken` for one that does not)."""


@dataclass
class _Cached:
    identity: TokenIdentity | None
    refusal: str
    until: float


class PscIntrospectionVerifier:
    """A `TokenVerifier` for peers' bearer tokens: asks PSC (introspection) whether the token
    is active, remembers the answer for `cache_ttl_s` (never past the token's `exp`).

    - Only access tokens: PSC (Keycloak) also answers "active" for its refresh and ID tokens,
      with their type in `typ`/`token_type`; anything but "Bearer" is refused, and so is an
      answer naming no type.
    - `allowed_clients`: when given, the token must have been issued to one of these PSC
      clients (the DRIM-M boxes), not to any application of the PSC realm.
    - `min_acr`: the token's `acr` must be at least this level (a token without `acr` is
      refused: PSC's access tokens always carry it).

    The cache is the trade-off: a token revoked at PSC stays accepted up to `cache_ttl_s`.
    `verify` blocks on the network on a cache miss: from async code, call it in a thread.
    `TokenIdentity.subject` is the professional's national id (SubjectNameID), falling back
    to `preferred_username`, then `sub`.
    """

    def __init__(
        self,
        client: PscClient,
        *,
        cache_ttl_s: float = 30.0,
        max_entries: int = 4096,
        allowed_clients: Collection[str] | None = None,
        min_acr: str | None = DEFAULT_ACR,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._ttl = cache_ttl_s
        self._max = max_entries
        self._allowed = frozenset(allowed_clients) if allowed_clients is not None else None
        self._min_acr = min_acr
        self._clock = clock
        self._lock = threading.Lock()
        # Keyed by the token's SHA-256: the cache never holds bearer tokens themselves.
        self._cache: dict[str, _Cached] = {}

    def verify(self, token: str) -> TokenIdentity:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("jeton d'accès absent ou mal formé")
        key = hashlib.sha256(token.encode("utf-8")).hexdigest()
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached.until > now:
            if cached.identity is None:
                raise InvalidToken(cached.refusal)
            return cached.identity
        try:
            info = self._client.introspect(token)
        except PscError as exc:
            # Not cached: the next request asks PSC again.
            raise TokenCheckUnavailable(
                f"impossible de vérifier le jeton d'accès auprès de Pro Santé Connect "
                f"({exc.message})"
            ) from None
        identity, refusal = self._judge(info)
        until = now + self._ttl
        if identity is not None:
            until = min(until, identity.expires_at)
        self._remember(key, _Cached(identity, refusal, until), now)
        if identity is None:
            raise InvalidToken(refusal)
        return identity

    def _judge(self, info: TokenInfo | None) -> tuple[TokenIdentity | None, str]:
        if info is None:
            return None, "jeton d'accès inactif (expiré, révoqué ou inconnu de Pro Santé Connect)"
        kinds = {str(k).lower() for k in (info.token_type, info.claims.get("typ")) if k}
        if kinds != {"bearer"}:
            named = ", ".join(sorted(kinds)) or "non précisé"
            return None, f"ce jeton n'est pas un jeton d'accès (type : {named})"
        if self._allowed is not None and info.client_id not in self._allowed:
            return None, (
                f"jeton d'accès délivré à une application non autorisée "
                f"(client_id « {info.client_id[:64]} »)"
            )
        if self._min_acr and not acr_satisfies(info.acr, self._min_acr):
            return (
                None,
                f"jeton d'accès d'un niveau d'authentification insuffisant ({self._min_acr} exigé)",
            )
        identity = TokenIdentity(
            subject=info.professional_id,
            issuer=info.issuer or self._client.endpoints.issuer,
            expires_at=info.expires_at,
            claims=dict(info.claims),
            client_id=info.client_id,
        )
        return identity, ""

    def _remember(self, key: str, entry: _Cached, now: float) -> None:
        with self._lock:
            self._cache[key] = entry
            if len(self._cache) > self._max:
                for old in [k for k, v in self._cache.items() if v.until <= now]:
                    del self._cache[old]
                while len(self._cache) > self._max:
                    del self._cache[next(iter(self._cache))]
