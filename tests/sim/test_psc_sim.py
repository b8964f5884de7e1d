"""The PSC simulator over real sockets, spoken to with plain HTTP (not the box's `PscClient`):
PSC's discovery path, the authorization endpoint's checks, the token endpoint (client
authentication, PKCE, code replay, refresh rotation), introspection, userinfo, logout, and the
TOML test users."""

from __future__ import annotations

import base64
import hashlib
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from drimbox.sim.psc import LocalPsc, PscSimSettings, SimClient, load_users

CALLBACK = "http://127.0.0.1:9/callback"
AUTH = ("drimbox-sim", "drimbox-sim-secret")


@pytest.fixture(scope="module")
def psc() -> Iterator[LocalPsc]:
    settings = PscSimSettings(
        clients=(
            SimClient("drimbox-sim", "drimbox-sim-secret", (CALLBACK,), ("http://127.0.0.1:9/*",)),
            SimClient("box-b", "secret-b"),
        )
    )
    with LocalPsc(settings) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def meta(psc: LocalPsc) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(psc.discovery_url).json()
    return document


def authorize(psc: LocalPsc, **params: str) -> httpx.Response:
    query = {
        "client_id": "drimbox-sim",
        "redirect_uri": CALLBACK,
        "response_type": "code",
        "scope": "openid scope_all",
        "acr_values": "eidas1",
        "state": "st",
        "nonce": "no",
        "login_hint": "radiologue",
    }
    query.update(params)
    return httpx.get(f"{psc.url}/auth", params={k: v for k, v in query.items() if v})


def redirect_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code in (302, 303), response.text
    location = response.headers["location"]
    assert location.startswith(CALLBACK)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def token(meta: dict[str, Any], auth: Any = AUTH, **form: str) -> httpx.Response:
    return httpx.post(meta["token_endpoint"], data=form, auth=auth)


def code_for(psc: LocalPsc, **params: str) -> str:
    return redirect_params(authorize(psc, **params))["code"]


def test_discovery_at_psc_path(psc: LocalPsc, meta: dict[str, Any]) -> None:
    assert psc.discovery_url.endswith(
        "/auth/realms/esante-wallet/.well-known/wallet-openid-configuration"
    )
    assert meta["issuer"] == psc.issuer == f"{psc.url}/auth/realms/esante-wallet"
    assert meta["authorization_endpoint"] == f"{psc.url}/auth"
    assert meta["token_endpoint"].endswith("/protocol/openid-connect/token")
    assert meta["introspection_endpoint"].endswith("/protocol/openid-connect/token/introspect")
    assert "eidas1" in meta["acr_values_supported"]
    assert "scope_all" in meta["scopes_supported"]
    # Only PSC's own path: a client hard-wired to the standard one fails here, as at PSC.
    standard = f"{psc.issuer}/.well-known/openid-configuration"
    assert httpx.get(standard).status_code == 404
    keys = httpx.get(meta["jwks_uri"]).json()["keys"]
    assert keys and all("d" not in k and k["alg"] == "RS256" for k in keys)


def test_authorization_endpoint_checks(psc: LocalPsc) -> None:
    assert authorize(psc, client_id="inconnu").status_code == 400
    assert authorize(psc, redirect_uri="http://evil.example/cb").status_code == 400
    assert redirect_params(authorize(psc, nonce=""))["error"] == "invalid_request"
    assert redirect_params(authorize(psc, scope="profile"))["error"] == "invalid_scope"
    assert redirect_params(authorize(psc, response_type="token"))["error"] == (
        "unsupported_response_type"
    )
    assert redirect_params(authorize(psc, login_hint="personne"))["error"] == "login_required"
    ok = redirect_params(authorize(psc))
    assert ok["state"] == "st" and ok["iss"] == psc.issuer and ok["code"]
    page = authorize(psc, login_hint="")
    assert page.status_code == 200 and "Claire RADIOLOGUE" in page.text
    assert "niveau 0" in page.text  # the weak user is labelled as such


def test_code_exchange_and_claims(psc: LocalPsc, meta: dict[str, Any]) -> None:
    answer = token(meta, grant_type="authorization_code", code=code_for(psc), redirect_uri=CALLBACK)
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300
    keys = KeySet.import_key_set(httpx.get(meta["jwks_uri"]).json())
    claims = jwt.decode(body["id_token"], keys).claims
    assert claims["iss"] == psc.issuer and claims["aud"] == "drimbox-sim"
    assert claims["nonce"] == "no" and claims["acr"] == "eidas1"
    assert claims["sub"].endswith(":899700100011")
    # at_hash binds the ID token to its access token (OIDC Core 3.1.3.6).
    digest = hashlib.sha256(body["access_token"].encode()).digest()[:16]
    assert claims["at_hash"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    access = jwt.decode(body["access_token"], keys).claims
    assert access["SubjectNameID"] == "899700100011" and access["azp"] == "drimbox-sim"


def test_client_authentication(psc: LocalPsc, meta: dict[str, Any]) -> None:
    code = code_for(psc)
    bad = token(meta, auth=("drimbox-sim", "faux"), grant_type="authorization_code", code=code)
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    assert token(meta, auth=None, grant_type="authorization_code", code=code).status_code == 401
    # client_secret_post
    post = token(
        meta,
        auth=None,
        grant_type="authorization_code",
        code=code,
        redirect_uri=CALLBACK,
        client_id="drimbox-sim",
        client_secret="drimbox-sim-secret",
    )
    assert post.status_code == 200
    # A code is bound to the client it was issued to.
    other = token(
        meta,
        auth=("box-b", "secret-b"),
        grant_type="authorization_code",
        code=code_for(psc),
        redirect_uri=CALLBACK,
    )
    assert other.json()["error"] == "invalid_grant"


def test_redirect_uri_must_match(psc: LocalPsc, meta: dict[str, Any]) -> None:
    answer = token(
        meta, grant_type="authorization_code", code=code_for(psc), redirect_uri=CALLBACK + "x"
    )
    assert answer.json()["error"] == "invalid_grant"


def test_pkce(psc: LocalPsc, meta: dict[str, Any]) -> None:
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    params = {"code_challenge": challenge.rstrip(b"=").decode(), "code_challenge_method": "S256"}
    grant = {"grant_type": "authorization_code", "redirect_uri": CALLBACK}
    missing = token(meta, code=code_for(psc, **params), **grant)
    assert missing.json()["error"] == "invalid_grant"
    wrong = token(meta, code=code_for(psc, **params), code_verifier="w" * 50, **grant)
    assert wrong.json()["error"] == "invalid_grant"
    right = token(meta, code=code_for(psc, **params), code_verifier=verifier, **grant)
    assert right.status_code == 200


def test_replayed_code_revokes_the_session(psc: LocalPsc, meta: dict[str, Any]) -> None:
    code = code_for(psc)
    first = token(meta, grant_type="authorization_code", code=code, redirect_uri=CALLBACK).json()
    replay = token(meta, grant_type="authorization_code", code=code, redirect_uri=CALLBACK)
    assert replay.json()["error"] == "invalid_grant"
    refresh = token(meta, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert refresh.json()["error"] == "invalid_grant"
    assert introspect(meta, first["access_token"]) == {"active": False}


def test_refresh_rotation(psc: LocalPsc, meta: dict[str, Any]) -> None:
    first = psc.issue_tokens("radiologue")
    second = token(meta, grant_type="refresh_token", refresh_token=first["refresh_token"]).json()
    assert second["refresh_token"] != first["refresh_token"] and "id_token" in second
    again = token(meta, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert again.json()["error"] == "invalid_grant"
    foreign = token(
        meta,
        auth=("box-b", "secret-b"),
        grant_type="refresh_token",
        refresh_token=second["refresh_token"],
    )
    assert foreign.json()["error"] == "invalid_grant"
    assert token(meta, grant_type="password").json()["error"] == "unsupported_grant_type"


def introspect(meta: dict[str, Any], value: str, auth: Any = AUTH) -> Any:
    return httpx.post(meta["introspection_endpoint"], data={"token": value}, auth=auth).json()


def test_introspection(psc: LocalPsc, meta: dict[str, Any]) -> None:
    tokens = psc.issue_tokens("medecin-deux-situations")
    # Another box (a peer) introspects a token issued to this one, as the Source does.
    active = introspect(meta, tokens["access_token"], auth=("box-b", "secret-b"))
    assert active["active"] is True
    assert active["client_id"] == "drimbox-sim" and active["username"] == "899700100022"
    assert active["exp"] > active["iat"]
    refresh = introspect(meta, tokens["refresh_token"])
    assert refresh["active"] is True and refresh["token_type"] == "Refresh"
    expired = psc.mint_access_token("radiologue", lifetime_s=-1)
    assert introspect(meta, expired) == {"active": False}
    assert introspect(meta, "garbage") == {"active": False}
    psc.revoke(tokens["access_token"])
    assert introspect(meta, tokens["access_token"]) == {"active": False}
    unauthenticated = httpx.post(meta["introspection_endpoint"], data={"token": "x"})
    assert unauthenticated.status_code == 401


def test_userinfo(psc: LocalPsc, meta: dict[str, Any]) -> None:
    tokens = psc.issue_tokens("medecin-deux-situations")
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    info = httpx.get(meta["userinfo_endpoint"], headers=headers).json()
    assert info["SubjectNameID"] == "899700100022"
    assert info["preferred_username"] == "899700100022"
    (exercice,) = info["SubjectRefPro"]["exercices"]
    assert exercice["codeProfession"] == "10" and exercice["codeSavoirFaire"] == "SM26"
    assert [a["raisonSocialeSite"] for a in exercice["activities"]] == [
        "CABINET MEDICAL DES TILLEULS",
        "CENTRE HOSPITALIER DE TEST",
    ]
    missing = httpx.get(meta["userinfo_endpoint"])
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    by_post = httpx.post(meta["userinfo_endpoint"], data={"access_token": tokens["access_token"]})
    assert by_post.status_code == 200


def test_logout(psc: LocalPsc, meta: dict[str, Any]) -> None:
    tokens = psc.issue_tokens("radiologue")
    url = meta["end_session_endpoint"]
    refused = httpx.get(
        url,
        params={
            "id_token_hint": tokens["id_token"],
            "post_logout_redirect_uri": "http://evil.example/",
        },
    )
    assert refused.status_code == 400
    done = httpx.get(
        url,
        params={
            "id_token_hint": tokens["id_token"],
            "post_logout_redirect_uri": "http://127.0.0.1:9/bye",
            "state": "s1",
        },
    )
    assert done.status_code == 303
    assert done.headers["location"] == "http://127.0.0.1:9/bye?state=s1"
    refresh = token(meta, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert refresh.json()["error"] == "invalid_grant"
    assert introspect(meta, tokens["access_token"]) == {"active": False}
    assert httpx.get(url).status_code == 200  # nothing to end: a page, not an error


def test_sim_users_listing(psc: LocalPsc) -> None:
    users = {u["id"]: u for u in httpx.get(f"{psc.url}/sim/users").json()}
    assert set(users) == {
        "radiologue",
        "medecin-deux-situations",
        "authentification-faible",
        "sans-situation",
        "pharmacien",
        "infirmier",
        "medecin-sans-structure",
        "medecin-autre-structure",
    }
    assert users["authentification-faible"]["acr"] != "eidas1"


def test_users_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text(
        """
[[users]]
id = "manip"
subject_name_id = "899700100099"
given_name = "Lou"
family_name = "MANIP"
[[users.exercices]]
profession_code = "98"
[[users.exercices.activities]]
name = "CENTRE IRM"
structure_id = "R99"
""",
        encoding="utf-8",
    )
    (user,) = load_users(path)
    assert user.acr == "eidas1"
    assert user.userinfo()["SubjectRefPro"]["exercices"][0]["activities"][0]["raisonSocialeSite"]
    with LocalPsc(PscSimSettings(users=load_users(path))) as psc:
        assert psc.issue_tokens("manip")["access_token"]
    path.write_text("[[users]]\nid = 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="mal décrit"):
        load_users(path)


# --- mutual TLS (RFC 8705 tls_client_auth) ------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_psc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPsc]:
    from drimbox.sim.pki import TestPki

    settings = PscSimSettings(
        clients=(SimClient("drimbox-sim", "drimbox-sim-secret", (CALLBACK,)),)
    )
    folder = tmp_path_factory.mktemp("psc-mtls")
    with LocalPsc.with_mtls(folder, TestPki(), settings) as simulator:
        yield simulator


def test_mtls_registration_and_discovery(mtls_psc: LocalPsc) -> None:
    box = mtls_psc.box_certificate
    assert box is not None and mtls_psc.client.tls_client_auth_subject_dn == box.subject
    assert box.subject.startswith("CN=drimbox-sim,OU=49970036790900")
    document = httpx.get(mtls_psc.discovery_url).json()
    assert document["token_endpoint_auth_methods_supported"][0] == "tls_client_auth"
    assert "tls_client_auth" in document["introspection_endpoint_auth_methods_supported"]
    aliases = document["mtls_endpoint_aliases"]
    assert mtls_psc.mtls_url.startswith("https://")
    assert aliases["token_endpoint"] == document["token_endpoint"].replace(
        mtls_psc.url, mtls_psc.mtls_url
    )
    assert aliases["introspection_endpoint"].startswith(mtls_psc.mtls_url)
    # The browser's endpoint stays where it was.
    assert document["authorization_endpoint"] == f"{mtls_psc.url}/auth"


def test_mtls_token_and_introspection_need_the_registered_certificate(
    mtls_psc: LocalPsc,
) -> None:
    aliases = httpx.get(mtls_psc.discovery_url).json()["mtls_endpoint_aliases"]
    box = mtls_psc.box_certificate
    assert box is not None and mtls_psc.ca_file is not None
    ca = str(mtls_psc.ca_file)
    code = code_for(mtls_psc)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}

    def refused(response: httpx.Response) -> None:
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "invalid_client"

    bare = ssl.create_default_context(cafile=ca)
    with httpx.Client(verify=bare) as no_cert:
        # No certificate, with or without the secret: PSC's invalid_client.
        refused(no_cert.post(aliases["token_endpoint"], data={**form, "client_id": "drimbox-sim"}))
        refused(no_cert.post(aliases["token_endpoint"], data=form, auth=AUTH))
        refused(no_cert.post(aliases["introspection_endpoint"], data={"token": "x"}, auth=AUTH))
    # The plain listener has no certificate to show.
    meta = httpx.get(mtls_psc.discovery_url).json()
    refused(token(meta, **form))
    with_cert = ssl.create_default_context(cafile=ca)
    assert box.cert_path is not None and box.key_path is not None
    with_cert.load_cert_chain(box.cert_path, box.key_path)
    with httpx.Client(verify=with_cert) as client:
        answer = client.post(aliases["token_endpoint"], data={**form, "client_id": "drimbox-sim"})
        assert answer.status_code == 200, answer.text
        access = answer.json()["access_token"]
        info = client.post(
            aliases["introspection_endpoint"], data={"token": access, "client_id": "drimbox-sim"}
        ).json()
        assert info["active"] is True and info["client_id"] == "drimbox-sim"
        # Userinfo is a bearer call: it works on the mutual-TLS listener too.
        userinfo = client.get(
            aliases["userinfo_endpoint"], headers={"Authorization": f"Bearer {access}"}
        )
        assert userinfo.json()["SubjectNameID"] == "899700100011"


def test_the_sim_psc_command_serves_a_client_registered_by_certificate(tmp_path: Path) -> None:
    """`drimbox sim psc --client-ca … --client-subject …`: the mutual-TLS listener is announced
    and only the registered certificate authenticates the client there."""
    from drimbox.sim.pki import TestPki
    from drimbox.sim.ports import free_port

    pki = TestPki()
    server = pki.issue("psc.test", usage="server", dns_names=("127.0.0.1",)).write(tmp_path, "s")
    box = pki.issue("drimbox-cli", usage="auth", organizational_unit="1").write(tmp_path, "box")
    ca = pki.ca.write(tmp_path, "ca")
    assert server.cert_path and server.key_path and ca.cert_path and box.cert_path
    assert box.key_path
    port, mtls_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "drimbox", "sim", "psc", "--port", str(port),
        "--client-id", "drimbox-cli", "--client-subject", box.subject,
        "--tls-cert", str(server.cert_path), "--tls-key", str(server.key_path),
        "--client-ca", str(ca.cert_path), "--mtls-port", str(mtls_port),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    trusted = ssl.create_default_context(cafile=str(ca.cert_path))
    realm = f"https://127.0.0.1:{port}/auth/realms/esante-wallet"
    discovery = f"{realm}/.well-known/wallet-openid-configuration"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                document = httpx.get(discovery, verify=trusted, timeout=5).json()
                break
            except httpx.TransportError:
                assert process.poll() is None, "the simulator exited"
                assert time.monotonic() < deadline, "the simulator did not start"
                time.sleep(0.1)
        token_url = document["mtls_endpoint_aliases"]["token_endpoint"]
        assert token_url.startswith(f"https://127.0.0.1:{mtls_port}/")
        form = {"grant_type": "refresh_token", "refresh_token": "x", "client_id": "drimbox-cli"}
        bare = httpx.post(token_url, data=form, verify=trusted)
        assert bare.status_code == 401 and bare.json()["error"] == "invalid_client"
        with_cert = ssl.create_default_context(cafile=str(ca.cert_path))
        with_cert.load_cert_chain(box.cert_path, box.key_path)
        # Authenticated: the made-up refresh token is what PSC then refuses.
        known = httpx.post(token_url, data=form, verify=with_cert)
        assert known.status_code == 400 and known.json()["error"] == "invalid_grant"
    finally:
        process.terminate()
        process.wait(timeout=15)
