"""JWT verification with keys generated at run time: RS256 and ES256, exp, iss, aud, sub."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from drimbox.auth.tokens import InvalidToken, JwtVerifier, bearer_token

ISS = "https://auth.esante.gouv.fr/auth/realms/esante-wallet"
AUD = "drimbox"


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "sub": "f:550dc1c8:899700218896",
        "iss": ISS,
        "aud": AUD,
        "exp": now + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def rsa() -> RSAKey:
    return RSAKey.generate_key(2048, auto_kid=True)


@pytest.fixture(scope="module")
def ec() -> ECKey:
    return ECKey.generate_key("P-256", auto_kid=True)


@pytest.fixture(scope="module")
def verifier(rsa: RSAKey, ec: ECKey) -> JwtVerifier:
    jwks = {"keys": [rsa.as_dict(private=False), ec.as_dict(private=False)]}
    return JwtVerifier(jwks, issuer=ISS, audience=AUD)


def test_valid_rs256_and_es256(verifier: JwtVerifier, rsa: RSAKey, ec: ECKey) -> None:
    for alg, key in (("RS256", rsa), ("ES256", ec)):
        token = jwt.encode({"alg": alg, "kid": key.kid}, claims(), key)
        identity = verifier.verify(token)
        assert identity.subject == "f:550dc1c8:899700218896"
        assert identity.issuer == ISS


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"exp": int(time.time()) - 3600}, "expiré"),
        ({"exp": None}, "exp"),
        ({"iss": "https://evil.example"}, "iss"),
        ({"aud": "someone-else"}, "aud"),
        ({"sub": None}, "sub"),
        ({"typ": "Refresh"}, "pas un jeton d'accès"),
        ({"typ": "ID"}, "pas un jeton d'accès"),
    ],
)
def test_refused_claims(
    verifier: JwtVerifier, rsa: RSAKey, changes: dict[str, object], message: str
) -> None:
    token = jwt.encode({"alg": "RS256", "kid": rsa.kid}, claims(**changes), rsa)
    with pytest.raises(InvalidToken, match=message):
        verifier.verify(token)


def test_refused_signatures(verifier: JwtVerifier, rsa: RSAKey) -> None:
    stranger = RSAKey.generate_key(2048, auto_kid=True)
    with pytest.raises(InvalidToken):
        verifier.verify(jwt.encode({"alg": "RS256", "kid": stranger.kid}, claims(), stranger))
    # HMAC signed with the public key's bytes (the classic algorithm confusion) is refused.
    signing_input = (
        _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        + "."
        + _b64(json.dumps(claims()).encode())
    )
    mac = hmac.new(rsa.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidToken):
        verifier.verify(f"{signing_input}.{_b64(mac)}")
    token = jwt.encode({"alg": "RS256", "kid": rsa.kid}, claims(), rsa)
    header, payload, signature = token.split(".")
    with pytest.raises(InvalidToken):
        verifier.verify(f"{header}.{payload}x.{signature}")
    for garbage in ("", "abc", "a.b.c", "." * 2, "x" * 20000):
        with pytest.raises(InvalidToken):
            verifier.verify(garbage)


def test_configuration_mistakes(rsa: RSAKey) -> None:
    public = {"keys": [rsa.as_dict(private=False)]}
    with pytest.raises(ValueError, match="issuer"):
        JwtVerifier(public, issuer="", audience=AUD)
    with pytest.raises(ValueError, match="audience"):
        JwtVerifier(public, issuer=ISS, audience=[])
    with pytest.raises(ValueError, match="private"):
        JwtVerifier({"keys": [rsa.as_dict(private=True)]}, issuer=ISS, audience=AUD)
    with pytest.raises(ValueError, match="cannot be used"):
        JwtVerifier(public, issuer=ISS, audience=AUD, algorithms=["HS256"])


def test_bearer_header() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer  x ") == "x"
    for bad in (None, "", "Basic dXNlcg==", "Bearer", "Bearer  "):
        with pytest.raises(InvalidToken):
            bearer_token(bad)
