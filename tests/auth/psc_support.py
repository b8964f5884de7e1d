"""Helpers for the PSC client tests: a tiny relying party (the way the web layer is meant to use
`PscClient`: pending logins kept server-side by state, exchange at the callback, then userinfo)
served by uvicorn on a real loopback socket, and client settings for a simulated PSC."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from drimbox.auth.psc import LoginRequest, PscClient, PscError, PscSettings, PscTokens
from drimbox.sim.psc import LocalPsc


@contextmanager
def serve(app: Any, port: int) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread on 127.0.0.1:port."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class RelyingParty:
    """A minimal box front end: `/login?hint=…` → PSC → `/callback` → JSON of the user."""

    url: str
    client: PscClient
    pending: dict[str, LoginRequest] = field(default_factory=dict)
    sessions: list[PscTokens] = field(default_factory=list)

    @property
    def callback(self) -> str:
        return f"{self.url}/callback"


def relying_party_app(rp: RelyingParty) -> FastAPI:
    app = FastAPI()

    @app.get("/login")
    def login(hint: str | None = None) -> Response:
        request = rp.client.new_login(login_hint=hint)
        rp.pending[request.state] = request
        return RedirectResponse(request.url, status_code=302)

    @app.get("/callback")
    def callback(request: Request) -> Response:
        try:
            code, state = PscClient.callback_parameters(dict(request.query_params))
            # A state is used once: replaying the callback finds nothing pending.
            pending = rp.pending.pop(state, None)
            tokens = rp.client.exchange(
                code,
                state=state,
                expected_state=pending.state if pending else "",
                nonce=pending.nonce if pending else "",
                code_verifier=pending.code_verifier if pending else None,
            )
            user = rp.client.userinfo(tokens.access_token, expected_subject=tokens.subject)
        except PscError as exc:
            return JSONResponse({"reason": exc.reason, "message": exc.message}, status_code=403)
        rp.sessions.append(tokens)
        return JSONResponse(
            {
                "subject_name_id": user.subject_name_id,
                "display_name": user.display_name,
                "acr": tokens.acr,
                "situations": [s.label for s in user.situations()],
                "must_choose": user.must_choose_situation,
            }
        )

    @app.get("/logged-out")
    def logged_out(state: str = "") -> Response:
        return PlainTextResponse(f"déconnecté {state}")

    return app


def client_settings(psc: LocalPsc, redirect_uri: str, **changes: Any) -> PscSettings:
    """The settings of a box registered at `psc`: by certificate (`tls_client_auth`) when the
    simulator was made `with_mtls`, by secret otherwise."""
    values: dict[str, Any] = {
        "client_id": psc.client.client_id,
        "client_secret": psc.client.client_secret,
        "redirect_uri": redirect_uri,
        "discovery_url": psc.discovery_url,
        "jwks_refresh_interval_s": 0.0,
    }
    box = psc.box_certificate
    if box is not None and box.cert_path is not None and box.key_path is not None:
        values |= {
            "client_secret": "",
            "tls_cert": str(box.cert_path),
            "tls_key": str(box.key_path),
            "ca_file": str(psc.ca_file),
            "token_endpoint_auth_method": "tls_client_auth",
        }
    values.update(changes)
    return PscSettings(**values)
