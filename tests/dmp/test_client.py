"""The DMP client over real sockets: a local HTTPS server that demands a client certificate."""

from __future__ import annotations

import hashlib
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from drimbox.cda.model import Code, ImagingReport
from drimbox.config import Config, DmpConfig, SiteConfig
from drimbox.dicom.kos import manifest_from_bytes
from drimbox.dmp import codes, mtom, soap
from drimbox.dmp.client import DmpClient, DmpError, DmpSettings
from drimbox.dmp.metadata import PublicationIds
from drimbox.dmp.vihf import AUTH_REINFORCED_INDIRECT, VihfSubject, verify_vihf
from drimbox.sim.pki import Issued, TestPki
from drimbox.sim.ports import free_port
from support.factories import CR_C_INS, CR_C_INS_OID

SITE_ROOT = "1.2.250.1.999.77.1"
ENV = codes.SOAP_NS
SOAP_TYPE = "application/soap+xml; charset=utf-8"


@dataclass(frozen=True)
class Received:
    path: str
    content_type: str
    body: bytes
    peer_subject: str


Responder = Callable[[Received], tuple[int, str, bytes]]


@dataclass
class LocalDmp:
    url: str
    responder: Responder
    requests: list[Received] = field(default_factory=list)


def _envelope(body: str) -> bytes:
    return f'<s:Envelope xmlns:s="{ENV}"><s:Body>{body}</s:Body></s:Envelope>'.encode()


def _registry_response(status: str = codes.RESPONSE_SUCCESS, error: str | None = None) -> bytes:
    errors = ""
    if error:
        errors = (
            f'<rs:RegistryErrorList><rs:RegistryError errorCode="{error}" codeContext="détail" '
            'severity="urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"/>'
            "</rs:RegistryErrorList>"
        )
    return _envelope(
        f'<rs:RegistryResponse xmlns:rs="{codes.RS_NS}" status="{status}">{errors}'
        "</rs:RegistryResponse>"
    )


def _ok(_: Received) -> tuple[int, str, bytes]:
    return 200, SOAP_TYPE, _registry_response()


@contextmanager
def serving(server_cert: Issued, client_ca: Path, responder: Responder = _ok) -> Iterator[LocalDmp]:
    """An HTTPS server on 127.0.0.1 that requires a client certificate issued by `client_ca`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert server_cert.cert_path and server_cert.key_path
    context.load_cert_chain(server_cert.cert_path, server_cert.key_path)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(client_ca))
    state = LocalDmp(url="", responder=responder)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            peer = self.connection.getpeercert()
            subject = dict(item[0] for item in peer["subject"]) if peer else {}
            received = Received(
                self.path, self.headers.get("Content-Type", ""), body, subject.get("commonName", "")
            )
            state.requests.append(received)
            status, content_type, payload = state.responder(received)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.handle_error = lambda *_: None  # type: ignore[method-assign]  # failed handshakes
    state.url = f"https://127.0.0.1:{server.server_address[1]}/si-dmp-server/v2/services"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Material:
    folder: Path
    ca_file: Path
    server: Issued
    auth: Issued
    signing: Issued


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    folder = tmp_path_factory.mktemp("pki")
    pki = TestPki()
    pki.ca.write(folder, "ca")
    return Material(
        folder=folder,
        ca_file=folder / "ca.crt",
        server=pki.issue("dmp.local", usage="server", dns_names=("127.0.0.1",)).write(
            folder, "server"
        ),
        auth=pki.issue("DRIMbox auth", usage="auth", organizational_unit="499700367909006").write(
            folder, "auth"
        ),
        signing=pki.issue(
            "DRIMbox", usage="sign", organizational_unit="499700367909006", organization="CABINET"
        ).write(folder, "sign"),
    )


def _settings(material: Material, base_url: str, **changes: Any) -> DmpSettings:
    settings = DmpSettings(
        base_url=base_url,
        structure_id="499700367909006",
        structure_name="Centre de radiologie Ambroise",
        uid_root=SITE_ROOT,
        timeout_s=5.0,
        tls_cert=str(material.auth.cert_path),
        tls_key=str(material.auth.key_path),
        tls_ca=str(material.ca_file),
        signing_cert=str(material.signing.cert_path),
        signing_key=str(material.signing.key_path),
        lps_id="DRIMBOX-TEST",
        lps_homologation_id="HOMOL-TEST",
    )
    return replace(settings, **changes)


def _consultant() -> VihfSubject:
    return VihfSubject(
        name_id="ANS-PSC-0001",
        display_name="Jeanne MEDECIN",
        profession=Code("10", codes.PROFESSION_SYSTEM, "Médecin"),
        authentication_mode=AUTH_REINFORCED_INDIRECT,
    )


def test_settings_from_config() -> None:
    config = Config(
        site=SiteConfig(structure_id="499700367909006", uid_root=SITE_ROOT),
        dmp=DmpConfig(base_url="https://dmp.example/services", signature_algorithm="rsa-sha1"),
    )
    settings = DmpSettings.from_config(config)
    assert settings.base_url == "https://dmp.example/services"
    assert settings.structure_id == "499700367909006"
    assert settings.uid_root == SITE_ROOT
    assert settings.signature_algorithm == "rsa-sha1"


def test_publication_over_mutual_tls(
    material: Material, report: ImagingReport, kos_bytes: bytes
) -> None:
    with (
        serving(material.server, material.ca_file) as dmp,
        DmpClient(_settings(material, dmp.url)) as client,
    ):
        result = client.publish_kos(report, kos_bytes, {"MASQUE_PS": True})
    kos_uid = str(manifest_from_bytes(kos_bytes).SOPInstanceUID)
    ids = PublicationIds.derive(kos_uid, SITE_ROOT)
    assert (result.entry_uuid, result.unique_id) == (ids.kos_entry_uuid, kos_uid)
    assert result.submission_set_unique_id == ids.submission_set_unique_id
    (request,) = dmp.requests
    assert request.peer_subject == "DRIMbox auth"  # our ORG auth certificate was presented
    assert request.path.endswith("/repository")
    assert request.content_type.startswith("multipart/related")
    message = mtom.parse(request.content_type, request.body)
    assert kos_bytes in [a.data for a in message.attachments.values()]
    claims = verify_vihf(message.root, [_ca(material)])
    assert claims.name_id == "801234560801" and claims.authentication_mode == "INDIRECTE"
    body = soap.body_of(message.root)
    assert body.tag == f"{{{codes.XDSB_NS}}}ProvideAndRegisterDocumentSetRequest"


def _ca(material: Material) -> x509.Certificate:
    return x509.load_pem_x509_certificate(material.ca_file.read_bytes())


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        ("XDSRegistryBusy", True),
        ("XDSRegistryMetadataError", False),
        ("XDSUnknownPatientId", False),
    ],
)
def test_registry_failures(
    material: Material, report: ImagingReport, kos_bytes: bytes, error: str, retryable: bool
) -> None:
    def failure(_: Received) -> tuple[int, str, bytes]:
        return 200, SOAP_TYPE, _registry_response(codes.RESPONSE_FAILURE, error)

    with (
        serving(material.server, material.ca_file, failure) as dmp,
        DmpClient(_settings(material, dmp.url)) as client,
        pytest.raises(DmpError) as caught,
    ):
        client.publish_kos(report, kos_bytes, {})
    assert caught.value.code == error
    assert caught.value.retryable is retryable
    assert caught.value.message  # French, for site staff


def test_retry_of_a_published_kos_is_recognised(
    material: Material, report: ImagingReport, kos_bytes: bytes
) -> None:
    kos_uid = str(manifest_from_bytes(kos_bytes).SOPInstanceUID)
    sha1 = hashlib.sha1(kos_bytes).hexdigest()
    existing = "urn:uuid:11111111-2222-4333-8444-555555555555"
    rim = codes.RIM_NS
    found = _envelope(
        f'<q:AdhocQueryResponse xmlns:q="{codes.QUERY_NS}" xmlns="{rim}" '
        f'status="{codes.RESPONSE_SUCCESS}"><RegistryObjectList>'
        f'<ExtrinsicObject id="{existing}" mimeType="application/dicom" '
        f'status="{codes.STATUS_APPROVED}"><Slot name="hash"><ValueList><Value>{sha1.upper()}'
        "</Value></ValueList></Slot>"
        f'<ExternalIdentifier id="e" registryObject="{existing}" '
        f'identificationScheme="{codes.DE_UNIQUE_ID}" value="{kos_uid}"/>'
        "</ExtrinsicObject></RegistryObjectList></q:AdhocQueryResponse>"
    )

    def respond(request: Received) -> tuple[int, str, bytes]:
        if request.path.endswith("/repository"):
            failure = _registry_response(codes.RESPONSE_FAILURE, "XDSDuplicateUniqueIdInRegistry")
            return 200, SOAP_TYPE, failure
        return 200, SOAP_TYPE, found

    with (
        serving(material.server, material.ca_file, respond) as dmp,
        DmpClient(_settings(material, dmp.url)) as client,
    ):
        result = client.publish_kos(report, kos_bytes, {})
    assert result.already_published and result.entry_uuid == existing
    assert [r.path.rsplit("/", 1)[1] for r in dmp.requests] == ["repository", "registry"]


def test_retrieve_reads_the_mtom_attachment(material: Material, kos_bytes: bytes) -> None:
    def respond(_: Received) -> tuple[int, str, bytes]:
        xdsb = codes.XDSB_NS
        envelope = _envelope(
            f'<xdsb:RetrieveDocumentSetResponse xmlns:xdsb="{xdsb}" xmlns:rs="{codes.RS_NS}">'
            f'<rs:RegistryResponse status="{codes.RESPONSE_SUCCESS}"/><xdsb:DocumentResponse>'
            "<xdsb:RepositoryUniqueId>1.2.250.1.213.1.1.9.1</xdsb:RepositoryUniqueId>"
            "<xdsb:DocumentUniqueId>1.2.3</xdsb:DocumentUniqueId>"
            "<xdsb:mimeType>application/dicom</xdsb:mimeType><xdsb:Document>"
            f'<xop:Include xmlns:xop="{codes.XOP_NS}" href="cid:kos%40dmp"/></xdsb:Document>'
            "</xdsb:DocumentResponse></xdsb:RetrieveDocumentSetResponse>"
        )
        packed = mtom.pack(envelope, [mtom.Attachment("kos@dmp", kos_bytes, "application/dicom")])
        return 200, packed.content_type, packed.body()

    with (
        serving(material.server, material.ca_file, respond) as dmp,
        DmpClient(_settings(material, dmp.url), subject=_consultant()) as client,
    ):
        data = client.retrieve(
            "1.2.250.1.213.1.1.9.1", "1.2.3", patient_ins=CR_C_INS, ins_oid=CR_C_INS_OID
        )
    assert data == kos_bytes
    (request,) = dmp.requests
    assert request.content_type.startswith("multipart/related")  # ITI-43 request is MTOM too


def test_consultation_needs_a_subject(material: Material) -> None:
    with (
        serving(material.server, material.ca_file) as dmp,
        DmpClient(_settings(material, dmp.url)) as client,
        pytest.raises(DmpError) as caught,
    ):
        client.find_documents(CR_C_INS, CR_C_INS_OID)
        assert caught.value.code == "NO_SUBJECT" and not caught.value.retryable
        assert dmp.requests == []


def test_soap_fault_is_not_retryable(material: Material) -> None:
    fault = _envelope(
        "<s:Fault><s:Code><s:Value>s:Sender</s:Value></s:Code>"
        '<s:Reason><s:Text xml:lang="fr">VIHF refusé</s:Text></s:Reason></s:Fault>'
    )
    with (
        serving(material.server, material.ca_file, lambda _: (500, SOAP_TYPE, fault)) as dmp,
        DmpClient(_settings(material, dmp.url), subject=_consultant()) as client,
        pytest.raises(DmpError) as caught,
    ):
        client.find_documents(CR_C_INS, CR_C_INS_OID)
    assert not caught.value.retryable
    assert "VIHF refusé" in caught.value.message


def test_http_503_without_soap_is_retryable(material: Material) -> None:
    with (
        serving(
            material.server,
            material.ca_file,
            lambda _: (503, "text/html", b"<html>maintenance</html>"),
        ) as dmp,
        DmpClient(_settings(material, dmp.url), subject=_consultant()) as client,
        pytest.raises(DmpError) as caught,
    ):
        client.patient_status(CR_C_INS, CR_C_INS_OID)
    assert caught.value.retryable and caught.value.code == "HTTP_503"


def test_server_certificate_from_another_ca_is_not_retryable(material: Material) -> None:
    """A DMP whose certificate does not chain to tls_ca: a configuration (or interception)
    problem that retries cannot fix; the site must look at it."""
    other = TestPki("AC INCONNUE").issue("dmp.local", usage="server", dns_names=("127.0.0.1",))
    other = other.write(material.folder, "other-server")
    with (
        serving(other, material.ca_file) as dmp,
        DmpClient(_settings(material, dmp.url), subject=_consultant()) as client,
        pytest.raises(DmpError) as caught,
    ):
        client.patient_status(CR_C_INS, CR_C_INS_OID)
    assert caught.value.code == "TLS_SERVER_CERTIFICATE"
    assert caught.value.retryable is False


def test_client_certificate_refused_is_not_retryable(material: Material) -> None:
    stranger = (
        TestPki("AC ETRANGERE").issue("Intrus", usage="auth").write(material.folder, "intrus")
    )
    with (
        serving(material.server, material.ca_file) as dmp,
        DmpClient(
            _settings(
                material, dmp.url, tls_cert=str(stranger.cert_path), tls_key=str(stranger.key_path)
            ),
            subject=_consultant(),
        ) as client,
        pytest.raises(DmpError) as caught,
    ):
        client.patient_status(CR_C_INS, CR_C_INS_OID)
    assert caught.value.code == "TLS_CLIENT_CERTIFICATE"
    assert caught.value.retryable is False


def test_connection_refused_is_retryable(material: Material) -> None:
    port = free_port()  # nobody listens there
    with (
        DmpClient(
            _settings(material, f"https://127.0.0.1:{port}"), subject=_consultant()
        ) as client,
        pytest.raises(DmpError) as caught,
    ):
        client.patient_status(CR_C_INS, CR_C_INS_OID)
    assert caught.value.retryable is True and caught.value.code == "UNREACHABLE"


def test_as_subject_binds_the_consulting_user(material: Material) -> None:
    answer = _envelope(
        f'<PRPA_IN201308UV02 xmlns="{codes.HL7_NS}"><controlActProcess><subject><registrationEvent>'
        '<subject1><patient><subjectOf><observation><code code="AUTORISATION"/>'
        '<value code="VALIDE"/></observation></subjectOf></patient></subject1>'
        '</registrationEvent></subject><queryAck><queryResponseCode code="OK"/></queryAck>'
        "</controlActProcess></PRPA_IN201308UV02>"
    )
    with (
        serving(material.server, material.ca_file, lambda _: (200, SOAP_TYPE, answer)) as dmp,
        DmpClient(_settings(material, dmp.url)) as client,
    ):
        status = client.as_subject(_consultant()).patient_status(CR_C_INS, CR_C_INS_OID)
    assert status.exists and status.authorization == "VALIDE"
    (request,) = dmp.requests
    assert request.path.endswith("/patients")
    claims = verify_vihf(request.body, [_ca(material)])
    assert claims.name_id == "ANS-PSC-0001" and claims.authentication_mode == "INDIRECTE_RENFORCEE"
    assert claims.authn_context_decl == "APP_BROWSER_AUTH"
