"""The DMP simulator's HTTP application: four SOAP 1.2 endpoints and a read-only JSON view.

`POST /registry` (ITI-18, ITI-57), `POST /repository` (ITI-41, ITI-43), `POST /patients`
(TD0.2), `POST /habilitations` (TD0.3): each request is parsed (MTOM or plain), its
WS-Addressing headers and VIHF are checked, then it is dispatched on `wsa:Action`.
`GET /sim/health`, `GET /sim/stats`, `GET /sim/registry/documents?patient_id=<INS>` and
`GET /sim/registry/documents/{unique_id}/content` serve tests and the demo.
Part of the test/demo simulator of the national DMP; never deploy it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from lxml import etree
from starlette.concurrency import run_in_threadpool

from drimbox.sim.dmp import ebrim as E
from drimbox.sim.dmp.patients import PatientServices
from drimbox.sim.dmp.publication import Publication
from drimbox.sim.dmp.queries import Consultation
from drimbox.sim.dmp.registry import Registry, entry_view
from drimbox.sim.dmp.settings import DmpSimSettings
from drimbox.sim.dmp.soap import (
    RS,
    SoapFault,
    SoapRequest,
    SoapResponse,
    build_fault,
    build_response,
    check_addressing,
    read_soap_request,
)
from drimbox.sim.dmp.vihf import Vihf, check_client_certificate, check_vihf
from drimbox.trust.tls import peer_certificate_from_scope

log = logging.getLogger(__name__)

ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ITI43 = "urn:ihe:iti:2007:RetrieveDocumentSet"
ITI18 = "urn:ihe:iti:2007:RegistryStoredQuery"
ITI57 = "urn:ihe:iti:2010:UpdateDocumentSet"
TD02 = "urn:hl7-org:v3:PRPA_IN201307UV02"
TD03 = "urn:si-dmp-habilitations:HabilitationsEndPoint:setAuthorization"

Handler = Callable[[SoapRequest, Vihf, dt.datetime], etree._Element]


@dataclass(frozen=True)
class Operation:
    name: str
    response_action: str
    handler: Handler
    always_mtom: bool = False


class DmpSimulator:
    """The simulator's state: settings, registry, and the handler of each transaction."""

    def __init__(self, settings: DmpSimSettings) -> None:
        self.settings = settings
        self.registry = Registry(settings.database_path)
        with self.registry.session() as session:
            for ins, professional in settings.authorisations:
                self.registry.grant(session, ins, professional)
        self.publication = Publication(settings, self.registry)
        self.consultation = Consultation(settings, self.registry)
        self.patients = PatientServices(settings, self.registry)
        self.operations: dict[str, dict[str, Operation]] = {
            "/registry": {
                ITI18: Operation(
                    "ITI-18",
                    "urn:ihe:iti:2007:RegistryStoredQueryResponse",
                    lambda r, v, n: self.consultation.stored_query(r.body, v),
                ),
                ITI57: Operation(
                    "ITI-57",
                    "urn:ihe:iti:2010:UpdateDocumentSetResponse",
                    lambda r, v, n: self._write(self.publication.update_document_set, r, v, n),
                ),
            },
            "/repository": {
                ITI41: Operation(
                    "ITI-41",
                    "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse",
                    lambda r, v, n: self._write(self.publication.provide_and_register, r, v, n),
                ),
                ITI43: Operation(
                    "ITI-43",
                    "urn:ihe:iti:2007:RetrieveDocumentSetResponse",
                    lambda r, v, n: self.consultation.retrieve(r.body, v),
                    always_mtom=True,
                ),
            },
            "/patients": {
                TD02: Operation(
                    "TD0.2",
                    "urn:hl7-org:v3:PRPA_IN201306UV02",
                    lambda r, v, n: self.patients.test_existence(r.body, v, n),
                ),
            },
            "/habilitations": {
                TD03: Operation(
                    "TD0.3",
                    "urn:si-dmp-habilitations:HabilitationsEndPoint:setAuthorizationResponse",
                    lambda r, v, n: self.patients.set_authorization(r.body, v),
                ),
            },
        }

    def _write(
        self,
        transaction: Callable[[etree._Element, Vihf, dt.datetime], list[E.RegistryError]],
        request: SoapRequest,
        vihf: Vihf,
        now: dt.datetime,
    ) -> etree._Element:
        """ITI-41 / ITI-57: a user (any mode but INDIRECTE) needs an authorisation, like for a
        consultation; the author's structure publishing in INDIRECTE mode does not."""
        if not vihf.is_publication:
            with self.registry.session() as session:
                denied = self.consultation.check_access(session, vihf)
            if denied is not None:
                return E.registry_response([denied])
        return E.registry_response(transaction(request.body, vihf, now))

    def handle(
        self,
        path: str,
        content_type: str,
        body: bytes,
        client_certificate: x509.Certificate | None = None,
    ) -> SoapResponse:
        self.registry.count(f"POST {path}")
        request: SoapRequest | None = None
        name = "?"
        try:
            request = read_soap_request(content_type, body)
            check_addressing(request, path)
            operation = self.operations[path].get(request.action)
            if operation is None:
                raise SoapFault(
                    "DMPActionNonSupportee",
                    f"Action « {request.action} » non supportée par le service {path}.",
                    subcode="wsa:ActionNotSupported",
                )
            name = operation.name
            now = dt.datetime.now(dt.UTC)
            vihf = check_vihf(request, self.settings, now)
            check_client_certificate(client_certificate, vihf)
            # Which Authentification_Mode each operation was asked in (tests read it).
            self.registry.count(f"{name} mode {vihf.mode}")
            payload = operation.handler(request, vihf, now)
        except SoapFault as fault:
            log.info("DMP simulator: fault %s on %s: %s", fault.code, path, fault.reason)
            self.registry.count(f"{name}:Fault")
            self.registry.count(f"Fault:{fault.code}")
            return build_fault(fault, request.message_id if request else "")
        status = payload.get("status") or ""
        inner = payload.find(f"{{{RS}}}RegistryResponse")
        if inner is not None:
            status = inner.get("status", "")
        outcome = status.rsplit(":", 1)[-1] if status else "OK"
        self.registry.count(name)
        self.registry.count(f"{name}:{outcome}")
        return build_response(
            operation.response_action,
            request.message_id,
            payload,
            mtom=request.mtom or operation.always_mtom,
        )


def create_dmp_app(settings: DmpSimSettings) -> FastAPI:
    """The ASGI application of one simulated DMP (its registry opened / created now)."""
    simulator = DmpSimulator(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        simulator.registry.dispose()

    app = FastAPI(title="DMP simulator (DRIMbox tests and demo — never deploy)", lifespan=lifespan)
    app.state.simulator = simulator

    async def soap_endpoint(request: Request) -> Response:
        body = await request.body()
        result = await run_in_threadpool(
            simulator.handle,
            request.url.path,
            request.headers.get("content-type", ""),
            body,
            peer_certificate_from_scope(request.scope),
        )
        return Response(
            result.content,
            status_code=result.status_code,
            headers={"Content-Type": result.content_type},
        )

    for path in simulator.operations:
        app.add_api_route(path, soap_endpoint, methods=["POST"], include_in_schema=False)

    @app.get("/sim/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/sim/stats")
    def stats() -> dict[str, int]:
        return simulator.registry.counters()

    @app.get("/sim/registry/documents")
    def documents(request: Request, patient_id: str | None = None) -> list[dict[str, Any]]:
        registry = simulator.registry
        with registry.session() as session:
            if patient_id is None:
                rows = registry.entries(session)
            elif "^" in patient_id:
                rows = registry.entries(session, patient_id=patient_id)
            else:
                rows = registry.entries(session, ins=patient_id)
            return [
                entry_view(
                    row,
                    str(request.url_for("document_content", unique_id=row.unique_id)),
                )
                for row in rows
            ]

    @app.get("/sim/registry/documents/{unique_id}/content", name="document_content")
    def document_content(unique_id: str) -> Response:
        registry = simulator.registry
        with registry.session() as session:
            row = registry.entry_by_unique_id(session, unique_id)
            data = registry.content(session, unique_id)
        if row is None or data is None:
            raise HTTPException(status_code=404, detail=f"document {unique_id} inconnu")
        return Response(data, media_type=row.mime_type)

    return app
