"""Schemathesis against the OpenAPI schema of both HTTP origins: whatever the input (paths,
queries, headers, bodies generated from the schema), the box never answers 5xx (a 503 with
Retry-After for an unreachable dependency aside)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from hypothesis import HealthCheck, settings
from starlette.requests import Request
from starlette.routing import Route

from drimbox.db import Database
from drimbox.dicom.retrieve import ImageService
from drimbox.trust.store import WhitelistStore
from drimbox.web.assembly import build_web
from support.node import node_config

FOLDER = Path(tempfile.mkdtemp(prefix="drimbox-schema-"))


def _apps() -> tuple[FastAPI, FastAPI]:
    config = node_config(FOLDER, None, {"DRIMBOX_ROLES__CONSO": "true"},
                         pacs={"port": 9, "timeout_s": 1})  # fmt: skip
    db = Database(config.store.database_url)
    db.upgrade()
    whitelist = WhitelistStore(FOLDER / "none.xml", [], FOLDER / "trust")
    web = build_web(config, db, ImageService(config), whitelist)
    apps = (web.peer.app, web.viewer.app)
    for app in apps:
        # The schema is not published by the box (no /docs in production): served here only.
        async def openapi(_request: Request, app: FastAPI = app) -> JSONResponse:
            return JSONResponse(app.openapi())

        # First in line: the viewer's catch-all route would take it otherwise.
        app.router.routes.insert(0, Route("/openapi.json", openapi))
    return apps


PEER, VIEWER = _apps()
peer_schema = schemathesis.openapi.from_asgi("/openapi.json", PEER)
viewer_schema = schemathesis.openapi.from_asgi("/openapi.json", VIEWER)


def _no_server_error(case: Any) -> None:
    response = case.call()
    if response.status_code == 503:
        assert "retry-after" in {k.lower() for k in response.headers}, response.text
        return
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text}"


@peer_schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_peer_origin_never_fails(case: Any) -> None:
    _no_server_error(case)


@viewer_schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_user_origin_never_fails(case: Any) -> None:
    _no_server_error(case)
