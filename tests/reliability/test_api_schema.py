"""Schemathesis against the OpenAPI schema of both HTTP origins of a running node, behind its
doors: whatever the input (paths, queries, headers, bodies generated from the schema), the box
never answers 5xx (a 503 with Retry-After for an unreachable dependency aside).

The node is a real one (`source_site`): exam C published to the DMP simulator, mutual TLS on
the peer origin, Pro Santé Connect sign-in on the user origin. Each operation is called
- on the peer origin with the whitelisted client certificate, a valid PSC token and the
  published KOS's UID; once with generated UIDs, once with the published study's;
- on the user origin anonymously, signed in as a non-administrator, and as an administrator.
The test counts the calls that got past authentication and fails when too few did: a fuzzing
that only meets the sign-in and TLS gates proves little."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from drimbox.sim.orthanc import LocalOrthanc
from drimbox.web.pages import LOGOUT_PATH
from drimbox.web.viewer import LOGIN_PATH, SESSION_COOKIE
from support.node import signed_in
from support.site import Site, source_site

ADMIN = "899700100011"  # the PSC simulator's `radiologue`
EXAMPLES = 8
# Not fuzzed while signed in: it would end the session the other calls use.
SESSION_ENDING = {LOGOUT_PATH}
REFUSED = {401, 403}
# SQLite and PostgreSQL integers end at 2**63 - 1 and 2**31 - 1: ids past them must be refused.
EDGE_INTEGERS = (0, -1, 2**31, 2**63, 10**30)


@pytest.fixture(scope="module")
def site(orthanc: LocalOrthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    extra = {"DRIMBOX_ROLES__CONSO": "true", "DRIMBOX_ADMIN__USERS": ADMIN}
    with source_site(orthanc, tmp_path_factory.mktemp("api"), environ_extra=extra) as running:
        yield running


def _schema(app: Any) -> Any:
    # The box does not publish its schema (no /docs in production): read from the app itself.
    return schemathesis.openapi.from_dict(app.openapi())


def _fuzz(
    schema: Any,
    base_url: str,
    session: requests.Session,
    counts: Counter[str],
    *,
    fixed: dict[str, str] | None = None,
    skip: frozenset[str] = frozenset(),
) -> None:
    """Every operation of `schema`, EXAMPLES generated cases; then again with the `fixed` path
    parameters it has (the published study), and with each integer path parameter at the
    edges of the databases' integers (fuzzing rarely draws them)."""
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in skip:
            continue
        names = {p.name for p in operation.path_parameters}
        variants: list[tuple[dict[str, Any] | None, int]] = [(None, EXAMPLES)]
        if fixed and names & fixed.keys():
            variants.append(({k: v for k, v in fixed.items() if k in names}, EXAMPLES))
        for parameter in operation.path_parameters:
            if parameter.definition.get("schema", {}).get("type") == "integer":
                variants += [({parameter.name: value}, 1) for value in EDGE_INTEGERS]
        for path_parameters, examples in variants:
            _run(operation.as_strategy(path_parameters=path_parameters), examples,
                 base_url, session, counts)  # fmt: skip


def _run(
    strategy: Any, examples: int, base_url: str, session: requests.Session, counts: Counter[str]
) -> None:
    @given(case=strategy)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def call(case: Any) -> None:
        # verify and cert again: schemathesis passes its own `verify` otherwise.
        response = case.call(base_url=base_url, session=session, allow_redirects=False,
                             verify=session.verify, cert=session.cert)  # fmt: skip
        counts["calls"] += 1
        if response.status_code not in REFUSED and not _to_sign_in(response):
            counts["authenticated"] += 1
            counts["answered"] += 200 <= response.status_code < 300
            if case.operation.path.startswith("/admin") and response.status_code < 400:
                counts["admin"] += 1
        if response.status_code == 503:
            assert "retry-after" in {k.lower() for k in response.headers}, response.text
            return
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} {case.query}: {response.status_code} "
            f"{response.text[:2000]}"
        )

    call()


def _to_sign_in(response: Any) -> bool:
    # Schemathesis' response keeps each header as a list of values.
    location = response.headers.get("location") or []
    return response.status_code in (302, 303, 307) and any(
        value.startswith(LOGIN_PATH) for value in location
    )


def test_peer_origin_behind_mutual_tls_and_a_token(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    session = requests.Session()
    assert site.trusted_peer.cert_path and site.trusted_peer.key_path
    session.cert = (str(site.trusted_peer.cert_path), str(site.trusted_peer.key_path))
    session.verify = str(site.ca_file)
    token = site.psc.mint_access_token("radiologue")
    session.headers.update({"Authorization": f"Bearer {token}", "KOS-SOPInstanceUID": site.kos_uid})
    web = site.node.node.web
    assert web is not None
    counts: Counter[str] = Counter()
    fixed = {"study_uid": site.study_uid, "series_uid": site.series_uids[0]}
    _fuzz(_schema(web.peer.app), site.node.peer_url, session, counts, fixed=fixed)
    with capsys.disabled():
        print(f"\npeer origin: {counts['authenticated']} of {counts['calls']} calls authenticated, "
              f"{counts['answered']} answered 2xx")  # fmt: skip
    assert counts["authenticated"] >= counts["calls"] // 2, counts
    assert counts["answered"] > 0, counts  # the published study was served


@pytest.mark.parametrize("user", ["anonymous", "medecin-deux-situations", "radiologue"])
def test_user_origin_anonymous_signed_in_and_administrator(
    site: Site, user: str, capsys: pytest.CaptureFixture[str]
) -> None:
    session = requests.Session()
    # As a browser posts the origin's own forms (the cross-site check is not the gate fuzzed).
    session.headers["Origin"] = site.node.viewer_url
    if user != "anonymous":
        browser = signed_in(site.node, user)
        cookie = browser.cookies.get(SESSION_COOKIE)
        browser.close()
        assert cookie, f"{user} could not sign in"
        session.cookies.set(SESSION_COOKIE, cookie)
    web = site.node.node.web
    assert web is not None
    counts: Counter[str] = Counter()
    skip = frozenset(SESSION_ENDING) if user != "anonymous" else frozenset()
    fixed = {"study_uid": site.study_uid, "series_uid": site.series_uids[0]}
    _fuzz(_schema(web.viewer.app), site.node.viewer_url, session, counts, fixed=fixed,
          skip=skip)  # fmt: skip
    with capsys.disabled():
        print(f"\nuser origin, {user}: {counts['authenticated']} of {counts['calls']} calls "
              f"authenticated, {counts['answered']} answered 2xx")  # fmt: skip
    if user != "anonymous":
        assert counts["authenticated"] >= counts["calls"] // 2, counts
    # The console answers its administrators only.
    assert (counts["admin"] > 0) == (user == "radiologue"), counts
