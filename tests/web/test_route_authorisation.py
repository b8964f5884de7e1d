"""Every route of both origins that is not explicitly public refuses an unauthenticated caller."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from drimbox.db import Database
from drimbox.dicom.retrieve import ImageService
from drimbox.sim.psc import LocalPsc
from drimbox.trust.store import WhitelistStore
from drimbox.web.assembly import build_web
from drimbox.web.auth_routes import PUBLIC_PATHS as AUTH_PUBLIC
from drimbox.web.conso_routes import PUBLIC_PATHS as CONSO_PUBLIC
from drimbox.web.status import PUBLIC_PATHS as STATUS_PUBLIC
from drimbox.web.viewer import PUBLIC_PATHS as VIEWER_PUBLIC
from support.node import node_config

# Public by design: sign-in, health, the viewer's static shell (no patient data), and the
# Conso's contextual launch (the RIS posts it before sign-in; it only stores the form).
PUBLIC = AUTH_PUBLIC | STATUS_PUBLIC | CONSO_PUBLIC | VIEWER_PUBLIC
UID = "1.2.250.1.999.1"


def sample_path(path: str) -> str:
    path = re.sub(r"\{path:path\}", "viewer", path)
    path = re.sub(r"\{frames?\}", "1", path)
    path = re.sub(r"\{\w+_id\}", "1", path)
    return re.sub(r"\{[^}]+\}", UID, path)


def routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, path) of every route, included routers flattened (FastAPI keeps them nested)."""

    def walk(items: list[Any], prefix: str) -> Iterator[tuple[str, str]]:
        for route in items:
            if isinstance(route, APIRoute):
                for method in sorted(route.methods - {"HEAD"}):
                    yield method, prefix + route.path
            elif hasattr(route, "original_router"):
                inner = prefix + getattr(route.include_context, "prefix", "")
                yield from walk(list(route.original_router.routes), inner)

    yield from walk(list(app.routes), "")


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[tuple[FastAPI, FastAPI]]:
    with LocalPsc() as psc:
        config = node_config(tmp_path, None, {
            **psc.node_environ(),
            "DRIMBOX_ROLES__CONSO": "true",
        })  # fmt: skip
        db = Database(config.store.database_url)
        db.upgrade()
        whitelist = WhitelistStore(tmp_path / "none.xml", [], tmp_path / "trust")
        web = build_web(config, db, ImageService(config), whitelist)
        yield web.peer.app, web.viewer.app
        db.dispose()


def test_every_non_public_route_refuses_anonymous_callers(apps: tuple[FastAPI, FastAPI]) -> None:
    checked = 0
    for app in apps:
        with TestClient(app, follow_redirects=False) as client:
            for method, path in routes(app):
                if path in PUBLIC:
                    continue
                response = client.request(method, sample_path(path))
                location = response.headers.get("location", "")
                refused = response.status_code in (401, 403) or (
                    response.status_code in (302, 303) and location.startswith("/connexion")
                )
                assert refused, f"{method} {path} answered {response.status_code} anonymously"
                checked += 1
    assert checked >= 15  # the walk really covered the route tables


def test_public_routes_hold_no_patient_data(apps: tuple[FastAPI, FastAPI]) -> None:
    peer, _viewer = apps
    with TestClient(peer, client=("127.0.0.1", 50000)) as client:  # local monitoring
        status = client.get("/status").json()
        assert client.get("/health").json() == {"status": "ok"}  # nothing else, to anyone
    assert "patient" not in str(status).lower()
    with TestClient(peer, client=("192.0.2.7", 50000)) as outsider:
        refused = outsider.get("/status")
        assert outsider.get("/health").json() == {"status": "ok"}
    assert refused.status_code == 403 and "liste blanche" in refused.json()["erreur"]
