"""`PscClient` against the PSC simulator over real sockets: the login flow end to end (browser
played by httpx following redirects), every refusal of the ID token with its reason, refresh,
logout, userinfo mapping, introspection, and the introspection-based `TokenVerifier`."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from psc_support import RelyingParty, client_settings

from drimbox.auth.psc import (
    PscClient,
    PscError,
    PscErrorReason,
    PscIntrospectionVerifier,
    PscSettings,
    PscTokens,
    TokenCheckUnavailable,
)
from drimbox.auth.tokens import InvalidToken, TokenVerifier
from drimbox.sim.ports import free_port
from drimbox.sim.psc import LocalPsc, PscSimSettings, SimClient

REASON = PscErrorReason


def browse(url: str) -> httpx.Response:
    with httpx.Client(follow_redirects=True, timeout=10) as browser:
        return browser.get(url)


def reason_of(call: Callable[[], object]) -> PscErrorReason:
    with pytest.raises(PscError) as caught:
        call()
    assert caught.value.message  # a French sentence for the user, never empty
    return caught.value.reason


# --- the login flow ---------------------------------------------------------------------------


def test_login_hint_flow_end_to_end(rp: RelyingParty, psc: LocalPsc) -> None:
    answer = browse(f"{rp.url}/login?hint=radiologue")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "subject_name_id": "899700100011",
        "display_name": "Claire RADIOLOGUE",
        "acr": "eidas1",
        "situations": [
            "Médecin – Radio-diagnostic, CABINET D'IMAGERIE DU PARC (75015 PARIS)",
        ],
        "must_choose": False,
    }
    # The authorization request carried what PSC expects.
    to_psc = answer.history[0].headers["location"]
    assert to_psc.startswith(f"{psc.url}/auth?")
    query = parse_qs(urlsplit(to_psc).query)
    assert query["scope"] == ["openid scope_all"]
    assert query["acr_values"] == ["eidas1"]
    assert query["response_type"] == ["code"]
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["state"][0]) >= 32 and len(query["nonce"][0]) >= 32
    # PSC came back with the same state, to our callback.
    back = answer.history[1].headers["location"]
    assert back.startswith(rp.callback)
    assert parse_qs(urlsplit(back).query)["state"] == query["state"]


def test_login_through_the_login_page(rp: RelyingParty) -> None:
    with httpx.Client(follow_redirects=True, timeout=10) as browser:
        page = browser.get(f"{rp.url}/login")
        assert page.status_code == 200
        assert "Choisissez le professionnel de test" in page.text
        assert "Marc GENERALISTE" in page.text
        action = re.search(r'<form method="post" action="([^"]+)"', page.text)
        request_id = re.search(r'name="request_id" value="([^"]+)"', page.text)
        assert action and request_id
        answer = browser.post(
            action.group(1),
            data={"request_id": request_id.group(1), "user": "medecin-deux-situations"},
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["subject_name_id"] == "899700100022"
    assert body["must_choose"] is True
    assert len(body["situations"]) == 2


def test_cancelled_login_is_refused(rp: RelyingParty) -> None:
    with httpx.Client(follow_redirects=True, timeout=10) as browser:
        page = browser.get(f"{rp.url}/login")
        action = re.search(r'<form method="post" action="([^"]+)"', page.text)
        request_id = re.search(r'name="request_id" value="([^"]+)"', page.text)
        assert action and request_id
        answer = browser.post(
            action.group(1), data={"request_id": request_id.group(1), "cancel": "1"}
        )
    assert answer.status_code == 403
    assert answer.json()["reason"] == REASON.LOGIN_REFUSED


def test_low_acr_user_is_refused(rp: RelyingParty) -> None:
    answer = browse(f"{rp.url}/login?hint=authentification-faible")
    assert answer.status_code == 403
    assert answer.json()["reason"] == REASON.ACR
    assert "carte CPS" in answer.json()["message"]


def test_replayed_callback_is_refused_by_state(rp: RelyingParty) -> None:
    first = browse(f"{rp.url}/login?hint=radiologue")
    assert first.status_code == 200
    callback_url = str(first.url)
    replay = browse(callback_url)
    assert replay.status_code == 403
    assert replay.json()["reason"] == REASON.STATE


def test_mismatched_state_is_refused_before_the_code_is_spent(
    client: PscClient, psc: LocalPsc, rp: RelyingParty
) -> None:
    code = psc.authorize("radiologue", redirect_uri=rp.callback, nonce="n-1")
    assert (
        reason_of(lambda: client.exchange(code, state="forged", expected_state="mine", nonce="n-1"))
        == REASON.STATE
    )
    assert (
        reason_of(lambda: client.exchange(code, state="x", expected_state="", nonce="n-1"))
        == REASON.STATE
    )
    # The state check happened before the token request: the code still works.
    tokens = client.exchange(code, state="mine", expected_state="mine", nonce="n-1")
    assert tokens.subject.endswith(":899700100011")


def test_code_works_once(client: PscClient, psc: LocalPsc, rp: RelyingParty) -> None:
    code = psc.authorize("radiologue", redirect_uri=rp.callback, nonce="n")
    tokens = client.exchange(code, state="s", expected_state="s", nonce="n")
    again = lambda: client.exchange(code, state="s", expected_state="s", nonce="n")  # noqa: E731
    assert reason_of(again) == REASON.CODE_REFUSED
    # A replayed code ends the session it opened (RFC 6749 §4.1.2).
    assert reason_of(lambda: client.refresh(tokens.refresh_token)) == REASON.SESSION_ENDED


def test_wrong_nonce_is_refused(client: PscClient, psc: LocalPsc, rp: RelyingParty) -> None:
    code = psc.authorize("radiologue", redirect_uri=rp.callback, nonce="sent-by-someone-else")
    call = lambda: client.exchange(code, state="s", expected_state="s", nonce="mine")  # noqa: E731
    assert reason_of(call) == REASON.NONCE


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 600}, REASON.EXPIRED),
        ({"exp": None}, REASON.EXPIRED),
        ({"aud": "une-autre-application"}, REASON.AUDIENCE),
        ({"aud": ["drimbox-sim", "autre"], "azp": "autre"}, REASON.AUDIENCE),
        ({"iss": "https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet"}, REASON.ISSUER),
        ({"acr": "0"}, REASON.ACR),
        ({"acr": None}, REASON.ACR),
        ({"iat": int(time.time()) + 3600}, REASON.NOT_YET_VALID),
        ({"nonce": None}, REASON.NONCE),
    ],
    ids=[
        "expired",
        "no-exp",
        "wrong-audience",
        "other-azp",
        "wrong-issuer",
        "low-acr",
        "no-acr",
        "issued-in-future",
        "no-nonce",
    ],
)
def test_tampered_id_token_is_refused(
    client: PscClient,
    psc: LocalPsc,
    rp: RelyingParty,
    claims: dict[str, object],
    reason: PscErrorReason,
) -> None:
    code = psc.authorize("radiologue", redirect_uri=rp.callback, nonce="n", id_token_claims=claims)
    call = lambda: client.exchange(code, state="s", expected_state="s", nonce="n")  # noqa: E731
    assert reason_of(call) == reason


@pytest.mark.parametrize("same_kid", [False, True], ids=["unknown-key", "forged-with-known-kid"])
def test_id_token_signed_by_another_key_is_refused(
    client: PscClient, psc: LocalPsc, rp: RelyingParty, same_kid: bool
) -> None:
    key = psc.foreign_key(same_kid=same_kid)
    code = psc.authorize("radiologue", redirect_uri=rp.callback, nonce="n", signing_key=key)
    call = lambda: client.exchange(code, state="s", expected_state="s", nonce="n")  # noqa: E731
    assert reason_of(call) == REASON.SIGNATURE


def test_minted_id_tokens_are_checked_one_by_one(client: PscClient, psc: LocalPsc) -> None:
    good = psc.mint_id_token("radiologue", nonce="n")
    assert client.verify_id_token(good, nonce="n")["acr"] == "eidas1"
    expired = psc.mint_id_token("radiologue", nonce="n", claims={"exp": int(time.time()) - 100})
    assert reason_of(lambda: client.verify_id_token(expired, nonce="n")) == REASON.EXPIRED
    other = psc.mint_id_token("radiologue", nonce="n", client_id="autre")
    assert reason_of(lambda: client.verify_id_token(other, nonce="n")) == REASON.AUDIENCE
    assert reason_of(lambda: client.verify_id_token("pas.un.jeton", nonce="n")) == REASON.SIGNATURE
    assert reason_of(lambda: client.verify_id_token("abc", nonce="n")) == REASON.SIGNATURE


def test_key_rotation_is_followed(psc: LocalPsc) -> None:
    port = free_port()
    redirect = f"http://127.0.0.1:{port}/callback"
    with PscClient(client_settings(psc, redirect)) as client:
        before = psc.mint_id_token("radiologue", nonce="n")
        client.verify_id_token(before, nonce="n")
        psc.rotate_key()
        after = psc.mint_id_token("radiologue", nonce="n")
        # The new kid is unknown to the cache: the client downloads the JWKS again.
        assert client.verify_id_token(after, nonce="n")["sub"]
        assert client.verify_id_token(before, nonce="n")["sub"]  # previous key still published


def test_jwks_downloads_are_rate_limited(psc: LocalPsc) -> None:
    settings = client_settings(psc, "http://127.0.0.1:1/cb", jwks_refresh_interval_s=3600)
    with PscClient(settings) as client:
        client.verify_id_token(psc.mint_id_token("radiologue", nonce="n"), nonce="n")
        psc.rotate_key()
        # Within the interval an unknown kid is refused without asking PSC again.
        fresh = psc.mint_id_token("radiologue", nonce="n")
        assert reason_of(lambda: client.verify_id_token(fresh, nonce="n")) == REASON.SIGNATURE


# --- refresh and logout -----------------------------------------------------------------------


def login(
    client: PscClient, psc: LocalPsc, rp: RelyingParty, user: str = "radiologue"
) -> PscTokens:
    code = psc.authorize(user, redirect_uri=rp.callback, nonce="n")
    return client.exchange(code, state="s", expected_state="s", nonce="n")


def test_refresh(client: PscClient, psc: LocalPsc, rp: RelyingParty) -> None:
    tokens = login(client, psc, rp)
    renewed = client.refresh(tokens.refresh_token)
    assert renewed.access_token != tokens.access_token
    assert renewed.refresh_token != tokens.refresh_token
    assert renewed.subject == tokens.subject and renewed.acr == "eidas1"
    assert renewed.session_id == tokens.session_id
    assert renewed.expires_at >= tokens.expires_at
    assert "access_token" not in repr(renewed) and renewed.access_token not in repr(renewed)
    # The simulator rotates refresh tokens: the old one is spent.
    assert reason_of(lambda: client.refresh(tokens.refresh_token)) == REASON.SESSION_ENDED
    assert client.userinfo(renewed.access_token).subject_name_id == "899700100011"


def test_front_channel_logout(client: PscClient, psc: LocalPsc, rp: RelyingParty) -> None:
    tokens = login(client, psc, rp)
    url = client.logout_url(tokens.id_token, f"{rp.url}/logged-out", state="au-revoir")
    page = browse(url)
    assert page.status_code == 200 and page.text == "déconnecté au-revoir"
    assert reason_of(lambda: client.refresh(tokens.refresh_token)) == REASON.SESSION_ENDED
    assert reason_of(lambda: client.userinfo(tokens.access_token)) == REASON.SESSION_ENDED
    assert client.introspect(tokens.access_token) is None


def test_back_channel_logout(client: PscClient, psc: LocalPsc, rp: RelyingParty) -> None:
    tokens = login(client, psc, rp)
    client.end_session(tokens.refresh_token)
    assert reason_of(lambda: client.refresh(tokens.refresh_token)) == REASON.SESSION_ENDED
    client.end_session(tokens.refresh_token)  # already ended: not an error


# --- userinfo ---------------------------------------------------------------------------------


def test_userinfo_of_the_two_situation_physician(
    client: PscClient, psc: LocalPsc, rp: RelyingParty
) -> None:
    tokens = login(client, psc, rp, "medecin-deux-situations")
    user = client.userinfo(tokens.access_token, expected_subject=tokens.subject)
    assert user.subject_name_id == "899700100022"
    assert user.subject == tokens.subject != user.subject_name_id
    assert user.display_name == "Marc GENERALISTE"
    assert user.must_choose_situation
    cabinet, hospital = user.situations()
    assert cabinet.activity and cabinet.activity.name == "CABINET MEDICAL DES TILLEULS"
    assert hospital.activity and hospital.activity.sector_code == "SA01"
    assert cabinet.key != hospital.key
    assert user.situation(hospital.key) == hospital
    role = hospital.role
    assert (role.profession.code, role.profession.code_system) == ("10", "1.2.250.1.71.1.2.7")
    assert role.specialty is not None
    assert (role.specialty.code, role.specialty.code_system) == ("SM26", "1.2.250.1.71.4.2.5")
    subject = hospital.vihf_subject(user, authentication_mode="DIRECTE")
    assert subject.name_id == "899700100022"
    assert subject.structure_id == "1690000000"
    assert subject.activity_sector == "SA01^1.2.250.1.71.4.2.4"


def test_userinfo_must_match_the_id_token(
    client: PscClient, psc: LocalPsc, rp: RelyingParty
) -> None:
    tokens = login(client, psc, rp)
    call = lambda: client.userinfo(tokens.access_token, expected_subject="f:autre")  # noqa: E731
    assert reason_of(call) == REASON.USERINFO
    expired = psc.mint_access_token("radiologue", lifetime_s=-120)
    assert reason_of(lambda: client.userinfo(expired)) == REASON.SESSION_ENDED


def test_signed_userinfo() -> None:
    settings = PscSimSettings(signed_userinfo=True)
    with LocalPsc(settings) as psc:
        redirect = "http://127.0.0.1:1/callback"
        with PscClient(client_settings(psc, redirect)) as client:
            tokens = psc.issue_tokens("radiologue")
            user = client.userinfo(tokens["access_token"])
            assert user.subject_name_id == "899700100011"
            assert user.exercices[0].specialty_code == "SM44"


# --- introspection ----------------------------------------------------------------------------


def test_introspection_of_valid_expired_and_revoked_tokens(
    client: PscClient, psc: LocalPsc
) -> None:
    valid = psc.issue_tokens("radiologue")["access_token"]
    info = client.introspect(valid)
    assert info is not None
    assert info.subject_name_id == "899700100011" == info.professional_id
    assert info.client_id == psc.client.client_id
    assert info.audience == (psc.client.client_id,)
    assert info.expires_at > time.time()
    assert info.acr == "eidas1" and info.issuer == psc.issuer

    expired = psc.mint_access_token("radiologue", lifetime_s=-120)
    assert client.introspect(expired) is None

    revoked = psc.issue_tokens("radiologue")["access_token"]
    assert client.introspect(revoked) is not None
    psc.revoke(revoked)
    assert client.introspect(revoked) is None

    forged = psc.mint_access_token("radiologue", key=psc.foreign_key(same_kid=True))
    assert client.introspect(forged) is None
    assert client.introspect("n'importe quoi") is None


def test_introspection_with_a_wrong_secret() -> None:
    with LocalPsc() as sandbox:  # a sandbox still registering the box by its secret
        settings = client_settings(sandbox, "http://127.0.0.1:1/cb", client_secret="mauvais")
        with PscClient(settings) as client:
            assert reason_of(lambda: client.introspect("x")) == REASON.CLIENT_REFUSED
        with PscClient(client_settings(sandbox, "http://127.0.0.1:1/cb")) as client:
            token = sandbox.issue_tokens("radiologue")["access_token"]
            assert client.introspect(token) is not None


# --- mutual TLS (RFC 8705 tls_client_auth) ----------------------------------------------------


def test_mtls_client_calls_the_mtls_aliases(client: PscClient, psc: LocalPsc) -> None:
    assert client.settings.token_endpoint_auth_method == "tls_client_auth"
    assert not client.settings.client_secret
    endpoints = client.endpoints
    for url in (endpoints.token, endpoints.introspection, endpoints.userinfo):
        assert url.startswith(f"{psc.mtls_url}/auth/realms/esante-wallet/"), url
    # The browser keeps the plain authorization and logout endpoints.
    assert endpoints.authorization == f"{psc.url}/auth"
    assert endpoints.end_session.startswith(psc.url)
    assert endpoints.end_session_backchannel.startswith(psc.mtls_url)


def test_mtls_registered_client_without_its_certificate_is_refused(
    psc: LocalPsc, rp: RelyingParty
) -> None:
    """A box registered by certificate cannot fall back on a secret, nor call the plain
    endpoints: PSC's `invalid_client`, whichever the endpoint."""
    token = psc.issue_tokens("radiologue")["access_token"]
    secret_only = client_settings(
        psc,
        rp.callback,
        tls_cert="",
        tls_key="",
        client_secret=psc.client.client_secret,
        token_endpoint_auth_method="client_secret_basic",
    )
    with PscClient(secret_only) as client:
        assert not client.endpoints.token.startswith(psc.mtls_url)
        assert reason_of(lambda: client.introspect(token)) == REASON.CLIENT_REFUSED
        code = psc.authorize("radiologue", redirect_uri=rp.callback, nonce="n")
        exchange = lambda: client.exchange(code, state="s", expected_state="s", nonce="n")  # noqa: E731
        assert reason_of(exchange) == REASON.CLIENT_REFUSED
    # The certificate on the plain endpoint (no TLS there): refused as well.
    plain = psc.discovery_url.rsplit("/.well-known", 1)[0] + "/protocol/openid-connect"
    on_plain = client_settings(
        psc,
        rp.callback,
        token_endpoint=f"{plain}/token",
        introspection_endpoint=f"{plain}/token/introspect",
    )
    with PscClient(on_plain) as client:
        assert reason_of(lambda: client.introspect(token)) == REASON.CLIENT_REFUSED


def test_mtls_certificate_from_an_untrusted_ca_fails_the_handshake(
    psc: LocalPsc, rp: RelyingParty, tmp_path: Path
) -> None:
    from drimbox.sim.pki import TestPki

    token = psc.issue_tokens("radiologue")["access_token"]
    stranger = TestPki().issue(psc.client.client_id, usage="auth", organizational_unit="1")
    stranger = stranger.write(tmp_path, "autre")
    settings = client_settings(
        psc, rp.callback, tls_cert=str(stranger.cert_path), tls_key=str(stranger.key_path)
    )
    with PscClient(settings) as client:
        assert reason_of(lambda: client.introspect(token)) == REASON.UNREACHABLE


def test_mtls_certificate_with_a_wrong_subject_from_the_right_ca(tmp_path: Path) -> None:
    from drimbox.sim.pki import TestPki

    pki = TestPki()
    with LocalPsc.with_mtls(tmp_path, pki) as psc:
        token = psc.issue_tokens("radiologue")["access_token"]
        wrong = pki.issue("autre-client", usage="auth", organizational_unit="11111111111111")
        wrong = wrong.write(tmp_path, "autre")
        settings = client_settings(
            psc, "http://127.0.0.1:1/cb", tls_cert=str(wrong.cert_path), tls_key=str(wrong.key_path)
        )
        with PscClient(settings) as client:
            assert reason_of(lambda: client.introspect(token)) == REASON.CLIENT_REFUSED
        with PscClient(client_settings(psc, "http://127.0.0.1:1/cb")) as client:
            assert client.introspect(token) is not None


def test_mtls_settings_need_the_certificate_and_its_key() -> None:
    def mtls(**files: str) -> PscSettings:
        return PscSettings(
            client_id="c",
            client_secret="",
            redirect_uri="http://127.0.0.1:1/cb",
            discovery_url="http://127.0.0.1:1/d",
            token_endpoint_auth_method="tls_client_auth",
            **files,
        )

    with pytest.raises(PscError) as caught:
        mtls(tls_cert="/nulle/part.crt")
    assert "tls_cert et tls_key" in caught.value.message
    unreadable = mtls(tls_cert="/nulle/part.crt", tls_key="/nulle/part.key")
    assert reason_of(lambda: PscClient(unreadable)) == REASON.CONFIGURATION


def test_introspection_verifier(client: PscClient, psc: LocalPsc) -> None:
    verifier: TokenVerifier = PscIntrospectionVerifier(client, cache_ttl_s=0)
    token = psc.issue_tokens("radiologue")["access_token"]
    identity = verifier.verify(token)
    assert identity.subject == "899700100011"
    assert identity.issuer == psc.issuer
    assert identity.claims["client_id"] == psc.client.client_id

    psc.revoke(token)
    with pytest.raises(InvalidToken, match="inactif"):
        verifier.verify(token)
    with pytest.raises(InvalidToken, match="inactif"):
        verifier.verify(psc.mint_access_token("radiologue", lifetime_s=-120))
    with pytest.raises(InvalidToken):
        verifier.verify("")


def test_introspection_verifier_policies(client: PscClient, psc: LocalPsc) -> None:
    only_others = PscIntrospectionVerifier(client, cache_ttl_s=0, allowed_clients={"box-b"})
    token = psc.issue_tokens("radiologue")["access_token"]
    with pytest.raises(InvalidToken, match="client_id"):
        only_others.verify(token)
    weak = psc.issue_tokens("authentification-faible")["access_token"]
    with pytest.raises(InvalidToken, match="niveau d'authentification"):
        PscIntrospectionVerifier(client, cache_ttl_s=0).verify(weak)


def test_introspection_verifier_cache_survives_a_psc_outage() -> None:
    with LocalPsc() as psc:
        settings = client_settings(psc, "http://127.0.0.1:1/cb", timeout_s=2)
        with PscClient(settings) as client:
            verifier = PscIntrospectionVerifier(client, cache_ttl_s=60)
            known = psc.issue_tokens("radiologue")["access_token"]
            unknown = psc.issue_tokens("radiologue")["access_token"]
            assert verifier.verify(known).subject == "899700100011"
            psc.stop()
            # Cached: answered without PSC. Not cached: "cannot check", distinguishable.
            assert verifier.verify(known).subject == "899700100011"
            with pytest.raises(TokenCheckUnavailable, match="injoignable"):
                verifier.verify(unknown)


# --- settings, discovery, transport -----------------------------------------------------------


def test_explicit_endpoints_without_discovery(psc: LocalPsc) -> None:
    issuer = psc.issuer
    mtls = f"{psc.mtls_url}/auth/realms/esante-wallet/protocol/openid-connect"
    assert psc.box_certificate is not None
    settings = PscSettings(
        client_id=psc.client.client_id,
        client_secret="",
        redirect_uri="http://127.0.0.1:1/cb",
        issuer=issuer,
        authorization_endpoint=f"{psc.url}/auth",
        token_endpoint=f"{mtls}/token",
        jwks_uri=f"{issuer}/protocol/openid-connect/certs",
        introspection_endpoint=f"{mtls}/token/introspect",
        token_endpoint_auth_method="tls_client_auth",
        tls_cert=str(psc.box_certificate.cert_path),
        tls_key=str(psc.box_certificate.key_path),
        ca_file=str(psc.ca_file),
    )
    with PscClient(settings) as client:
        code = psc.authorize("radiologue", redirect_uri="http://127.0.0.1:1/cb", nonce="n")
        tokens = client.exchange(code, state="s", expected_state="s", nonce="n")
        assert client.introspect(tokens.access_token) is not None
        # No userinfo endpoint configured nor discovered: a configuration error, said so.
        assert reason_of(lambda: client.userinfo(tokens.access_token)) == REASON.CONFIGURATION


def test_discovery_issuer_must_match_the_configuration(psc: LocalPsc) -> None:
    settings = client_settings(psc, "http://127.0.0.1:1/cb", issuer="https://autre.example/")
    with PscClient(settings) as client:
        assert reason_of(lambda: client.endpoints) == REASON.CONFIGURATION


def test_invalid_settings_are_explained() -> None:
    with pytest.raises(PscError) as caught:
        PscSettings(client_id="", client_secret="", redirect_uri="/cb", acr_values="eidas0")
    assert caught.value.reason == REASON.CONFIGURATION
    for word in ("client_id", "client_secret", "redirect_uri", "discovery_url", "acr_values"):
        assert word in caught.value.message


def test_unreachable_psc() -> None:
    port = free_port()
    settings = PscSettings(
        client_id="c",
        client_secret="s",
        redirect_uri="http://127.0.0.1:1/cb",
        discovery_url=f"http://127.0.0.1:{port}/auth/realms/esante-wallet/.well-known/wallet-openid-configuration",
        timeout_s=2,
    )
    with PscClient(settings) as client:
        assert reason_of(lambda: client.new_login()) == REASON.UNREACHABLE


def test_client_secret_post_and_special_characters() -> None:
    secret = "s3cr:t+/é%"
    sim = PscSimSettings(clients=(SimClient("box:a b", secret),))
    with LocalPsc(sim) as psc:
        for method in ("client_secret_basic", "client_secret_post"):
            settings = client_settings(
                psc, "http://127.0.0.1:1/cb", token_endpoint_auth_method=method
            )
            with PscClient(settings) as client:
                token = psc.issue_tokens("radiologue")["access_token"]
                assert client.introspect(token) is not None, method


def test_https_with_a_private_ca(tmp_path: Path) -> None:
    from drimbox.sim.pki import TestPki

    pki = TestPki("AC TEST PSC")
    server = pki.issue("psc.test", usage="server", dns_names=("127.0.0.1",)).write(tmp_path, "psc")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca.cert_pem)
    sim = PscSimSettings(tls_cert=server.cert_path, tls_key=server.key_path)
    with LocalPsc(sim) as psc:
        assert psc.discovery_url.startswith("https://")
        with PscClient(client_settings(psc, "http://127.0.0.1:1/cb", ca_file=str(ca))) as client:
            tokens = psc.issue_tokens("radiologue", nonce="n")
            assert client.verify_id_token(tokens["id_token"], nonce="n")["sub"]
        with PscClient(client_settings(psc, "http://127.0.0.1:1/cb")) as untrusting:
            assert reason_of(lambda: untrusting.endpoints) == REASON.UNREACHABLE
