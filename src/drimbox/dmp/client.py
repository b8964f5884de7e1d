"""The DMP client the Source (publication) and Conso (consultation) roles use.

Owns `DmpSettings` (from the `[dmp]` and `[site]` configuration), the HTTP transport (httpx, mutual
TLS 1.2+ with the ORG authentication certificate), one fresh signed VIHF per request, the mapping
of every failure to `DmpError` with a French message for site staff and a retryable flag, and the
transactions: ITI-41 KOS publication (with replacement), ITI-18 queries, ITI-43 retrieve, ITI-57
deletion, TD0.2 and TD0.3. It must not decide when to retry (the outbox does), persist anything,
or build metadata/envelopes itself (`metadata`, `soap`, `mtom`, `vihf`, `xades` do).

Retryability (`DmpError.retryable`):
- retryable: connection refused/reset, DNS failure, timeouts, HTTP 5xx without a SOAP Fault, 408,
  429, 503, and registry/repository "busy"/"out of resources" errors;
- not retryable (a person must act): the DMP refused the request (RegistryResponse Failure, SOAP
  Fault), our certificate is refused, **the DMP's server certificate does not verify** (wrong
  `tls_ca`, DMP certificate changed or interception: retrying cannot fix it and must not hide it),
  local configuration problems (missing certificates, metadata the report lacks).
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import httpx
from lxml import etree

from drimbox.cda.model import Code, Identifier, ImagingReport
from drimbox.dmp import codes, metadata, mtom, soap
from drimbox.dmp.metadata import DocumentEntry, MetadataError, PublicationIds, SourceSite
from drimbox.dmp.structures import Structure, site_structures
from drimbox.dmp.vihf import VihfContext, VihfError, VihfSubject, build_vihf
from drimbox.dmp.xades import (
    DigestAlgorithm,
    SignatureAlgorithm,
    SignatureError,
    SignedDocument,
    XmlSigner,
    build_signature_document,
)
from drimbox.http.tlspolicy import client_context
from drimbox.trust.keys import load_cert_chain

if TYPE_CHECKING:
    from drimbox.config import Config

log = logging.getLogger(__name__)

RETRYABLE_XDS_CODES: Final = frozenset(
    {
        "XDSRegistryBusy",
        "XDSRepositoryBusy",
        "XDSRegistryOutOfResources",
        "XDSRepositoryOutOfResources",
    }
)
DUPLICATE_CODES: Final = frozenset({"XDSDuplicateUniqueIdInRegistry"})

# French messages for the XDS errors site staff are likely to meet.
_XDS_MESSAGES: Final[dict[str, str]] = {
    "XDSRegistryBusy": "Le DMP est momentanément surchargé ; nouvel essai automatique.",
    "XDSRepositoryBusy": "Le DMP est momentanément surchargé ; nouvel essai automatique.",
    "XDSRegistryOutOfResources": "Le DMP manque momentanément de ressources ; nouvel essai.",
    "XDSRepositoryOutOfResources": "Le DMP manque momentanément de ressources ; nouvel essai.",
    "XDSUnknownPatientId": "Le patient n'a pas de DMP (INS inconnu du DMP).",
    "XDSPatientIdDoesNotMatch": "L'identifiant du patient diffère entre les documents envoyés.",
    "XDSDuplicateUniqueIdInRegistry": "Ce document est déjà publié au DMP.",
    "XDSNonIdenticalHash": "Un document de même identifiant mais de contenu différent existe.",
    "XDSRegistryMetadataError": "Le DMP a refusé les métadonnées du document.",
    "XDSRepositoryMetadataError": "Le DMP a refusé les métadonnées du document.",
    "XDSMissingDocument": "Un document annoncé dans la requête est absent.",
    "XDSMissingDocumentMetadata": "Un document envoyé n'a pas de métadonnées.",
    "XDSDocumentUniqueIdError": "Document introuvable dans le DMP.",
    "XDSUnknownRepositoryId": "Entrepôt de documents inconnu du DMP.",
    "XDSRegistryError": "Erreur interne du DMP.",
    "XDSRepositoryError": "Erreur interne du DMP.",
    "XDSTooManyResults": "Trop de documents : précisez la recherche (dates, modalité…).",
    "XDSStoredQueryParamNumber": "Recherche DMP mal formée (paramètres).",
    "XDSMetadataUpdateError": "Le DMP a refusé la mise à jour du document.",
    "XDSMetadataUpdateOperationError": "Le DMP a refusé le changement de statut du document.",
}


class DmpError(Exception):
    """A DMP transaction failed. `message` is French, for site staff; `detail` is technical."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        code: str | None = None,
        detail: str = "",
    ) -> None:
        self.message = message
        self.retryable = retryable
        self.code = code
        self.detail = detail
        super().__init__(f"{message} ({detail})" if detail else message)


@dataclass(frozen=True)
class DmpSettings:
    """Everything the client needs, from the `[dmp]` and `[site]` sections."""

    base_url: str
    structure_id: str
    structure_name: str
    uid_root: str
    timeout_s: float = 30.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    signing_cert: str = ""
    signing_key: str = ""
    key_passphrase_env: str = ""  # the variable holding the keys' passphrase (encrypted keys)
    lps_id: str = ""
    lps_name: str = "DRIMbox"
    lps_version: str = "0.1.0"
    lps_homologation_id: str = ""
    vihf_version: str = "3.0"
    activity_sector: str = "SA07^1.2.250.1.71.4.2.4"
    # rsa-sha1/sha1: what the DMP-accepted request (XDS.xml) signs with (docs/conformance.md).
    signature_algorithm: SignatureAlgorithm = "rsa-sha1"
    digest_algorithm: DigestAlgorithm = "sha1"
    content_type: Code = codes.DEFAULT_CONTENT_TYPE

    @classmethod
    def from_config(cls, config: Config, structure: Structure | None = None) -> DmpSettings:
        """The settings of one structure (default: the first configured, or the single
        structure of `[site]` + `[dmp]`): its id, name and certificates everywhere."""
        dmp, site = config.dmp, config.site
        structure = structure or site_structures(config)[0]
        return cls(
            base_url=dmp.base_url,
            structure_id=structure.id,
            structure_name=structure.name,
            uid_root=site.uid_root,
            timeout_s=dmp.timeout_s,
            tls_cert=structure.tls_cert,
            tls_key=structure.tls_key,
            tls_ca=dmp.tls_ca,
            signing_cert=structure.signing_cert,
            signing_key=structure.signing_key,
            key_passphrase_env=structure.key_passphrase_env,
            lps_id=dmp.lps_id,
            lps_name=dmp.lps_name,
            lps_version=dmp.lps_version,
            lps_homologation_id=dmp.lps_homologation_id,
            vihf_version=dmp.vihf_version,
            activity_sector=structure.activity_sector or dmp.activity_sector,
            signature_algorithm=dmp.signature_algorithm,
            digest_algorithm=dmp.digest_algorithm,
            content_type=structure.content_type or codes.DEFAULT_CONTENT_TYPE,
        )

    @property
    def site(self) -> SourceSite:
        return SourceSite(
            uid_root=self.uid_root,
            structure_id=self.structure_id,
            structure_name=self.structure_name,
            activity_sector=self.activity_sector,
            content_type=self.content_type,
        )

    @property
    def vihf_context(self) -> VihfContext:
        return VihfContext(
            structure_id=self.structure_id,
            activity_sector=self.activity_sector,
            lps_id=self.lps_id,
            lps_name=self.lps_name,
            lps_version=self.lps_version,
            lps_homologation_id=self.lps_homologation_id,
            vihf_version=self.vihf_version,
        )


@dataclass(frozen=True)
class Replacement:
    """The published KOS a new one replaces (RPLC), and its signature document, replaced with
    it so that no orphaned signature stays Approved."""

    entry_uuid: str
    signature_entry_uuid: str | None = None


@dataclass(frozen=True)
class PublishResult:
    entry_uuid: str
    unique_id: str
    submission_set_unique_id: str
    already_published: bool = False  # a retry found the KOS already in the DMP


@dataclass(frozen=True)
class _Reply:
    element: etree._Element
    message: mtom.MtomResponse = field(repr=False)


def tls_context(settings: DmpSettings) -> ssl.SSLContext:
    """Mutual TLS with the DMP: the structure's ORG authentication certificate, the DMP's CAs."""
    try:
        context = client_context(settings.tls_ca)
        if settings.tls_cert:
            load_cert_chain(
                context,
                settings.tls_cert,
                settings.tls_key or settings.tls_cert,
                settings.key_passphrase_env,
            )
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise DmpError(
            "Certificats TLS du DMP illisibles : vérifiez tls_cert, tls_key et tls_ca "
            "dans la section [dmp].",
            retryable=False,
            code="CONFIG",
            detail=str(exc),
        ) from exc
    return context


def load_signer(settings: DmpSettings) -> XmlSigner:
    if not settings.signing_cert or not settings.signing_key:
        raise DmpError(
            "Certificat de signature du DMP non configuré (signing_cert, signing_key).",
            retryable=False,
            code="CONFIG",
        )
    try:
        return XmlSigner.from_files(
            settings.signing_cert,
            settings.signing_key,
            signature_algorithm=settings.signature_algorithm,
            digest_algorithm=settings.digest_algorithm,
            passphrase_env=settings.key_passphrase_env,
        )
    except (OSError, ValueError) as exc:
        raise DmpError(
            "Certificat de signature du DMP illisible (signing_cert, signing_key).",
            retryable=False,
            code="CONFIG",
            detail=str(exc),
        ) from exc


# TLS alerts that mean "the DMP refuses our certificate": a configuration matter.
_CLIENT_CERT_ALERTS: Final = (
    "ALERT_UNKNOWN_CA",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_CERTIFICATE_REVOKED",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_UNSUPPORTED_CERTIFICATE",
    "ALERT_ACCESS_DENIED",
)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def transport_error(exc: httpx.TransportError, transaction: soap.Transaction) -> DmpError:
    """Classify a transport failure (see the module docstring for the rules)."""
    detail = f"{transaction.name}: {type(exc).__name__}: {exc}"
    for link in _chain(exc):
        if isinstance(link, ssl.SSLCertVerificationError):
            return DmpError(
                "Le certificat du serveur DMP n'est pas reconnu : vérifiez tls_ca (autorités "
                "IGC-Santé) et l'adresse du DMP. Aucune donnée n'a été envoyée.",
                retryable=False,
                code="TLS_SERVER_CERTIFICATE",
                detail=detail,
            )
        text = f"{getattr(link, 'reason', '') or ''} {link}".upper()
        if isinstance(link, ssl.SSLError) and any(a in text for a in _CLIENT_CERT_ALERTS):
            return DmpError(
                "Le DMP refuse le certificat d'authentification de la structure (tls_cert) : "
                "certificat expiré, révoqué ou non reconnu.",
                retryable=False,
                code="TLS_CLIENT_CERTIFICATE",
                detail=detail,
            )
    if isinstance(exc, httpx.TimeoutException):
        return DmpError(
            "Le DMP n'a pas répondu à temps ; nouvel essai automatique.",
            retryable=True,
            code="TIMEOUT",
            detail=detail,
        )
    return DmpError(
        "DMP injoignable (réseau, DNS ou service arrêté) ; nouvel essai automatique.",
        retryable=True,
        code="UNREACHABLE",
        detail=detail,
    )


def registry_error(response: soap.RegistryResponse, transaction: soap.Transaction) -> DmpError:
    errors = [e for e in response.errors if e.severity != "Warning"] or list(response.errors)
    code = errors[0].code if errors else None
    retryable = bool(errors) and all(e.code in RETRYABLE_XDS_CODES for e in errors)
    message = _XDS_MESSAGES.get(code or "", f"Le DMP a refusé la demande ({transaction.name}).")
    detail = "; ".join(f"{e.code}: {e.context}" for e in errors) or response.status
    return DmpError(message, retryable=retryable, code=code, detail=detail)


def fault_error(fault: soap.SoapFault, status: int, transaction: soap.Transaction) -> DmpError:
    names = (fault.code, *fault.subcodes)
    busy = status == 503 or any(n in RETRYABLE_XDS_CODES or "Busy" in n for n in names)
    return DmpError(
        "Le DMP a rejeté la requête : " + (fault.reason or "erreur SOAP sans motif"),
        retryable=busy,
        code=fault.subcodes[-1] if fault.subcodes else fault.code,
        detail=f"{transaction.name}: HTTP {status}, {fault}",
    )


class DmpClient:
    """DMP transactions over one HTTP connection pool; one VIHF per request.

    Publication takes its VIHF subject from the report (legal authenticator, INDIRECTE);
    consultation uses the subject the client is bound to (`as_subject`).
    """

    def __init__(
        self,
        settings: DmpSettings,
        *,
        subject: VihfSubject | None = None,
        http: httpx.Client | None = None,
        signer: XmlSigner | None = None,
    ) -> None:
        if not settings.base_url:
            raise DmpError(
                "Aucune adresse de DMP configurée ([dmp] base_url).", retryable=False, code="CONFIG"
            )
        self.settings = settings
        self.subject = subject
        self._signer = signer or load_signer(settings)
        self._owns_http = http is None
        self._http = http or httpx.Client(
            verify=tls_context(settings),
            timeout=httpx.Timeout(settings.timeout_s),
            headers={"User-Agent": f"{settings.lps_name}/{settings.lps_version}"},
        )

    def as_subject(self, subject: VihfSubject) -> DmpClient:
        """A client acting for `subject` that shares this one's connections and signer."""
        return DmpClient(self.settings, subject=subject, http=self._http, signer=self._signer)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> DmpClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- transport --------------------------------------------------------------------------------

    def _require_subject(self, subject: VihfSubject | None) -> VihfSubject:
        chosen = subject or self.subject
        if chosen is None:
            raise DmpError(
                "Aucun professionnel identifié pour cette consultation du DMP.",
                retryable=False,
                code="NO_SUBJECT",
            )
        return chosen

    def _envelope(
        self,
        transaction: soap.Transaction,
        body: etree._Element,
        *,
        patient: tuple[str, str],
        subject: VihfSubject,
    ) -> tuple[str, str, bytes]:
        """(URL, message id, SOAP envelope with WS-Addressing and the signed VIHF)."""
        url = transaction.url(self.settings.base_url)
        try:
            assertion = build_vihf(
                subject,
                patient_ins=patient[0],
                patient_ins_oid=patient[1],
                context=self.settings.vihf_context,
                signer=self._signer,
            )
        except (VihfError, SignatureError) as exc:
            raise DmpError(
                "Impossible de constituer le jeton VIHF (identité du professionnel ou de la "
                "structure incomplète).",
                retryable=False,
                code="VIHF",
                detail=str(exc),
            ) from exc
        message_id = soap.new_message_id()
        envelope = soap.build_envelope(
            action=transaction.action,
            to=url,
            body=body,
            security=[assertion],
            message_id=message_id,
        )
        return url, message_id, envelope

    def _call(
        self,
        transaction: soap.Transaction,
        body: etree._Element,
        *,
        patient: tuple[str, str],
        subject: VihfSubject,
        attachments: Sequence[mtom.Attachment] = (),
        use_mtom: bool = False,
    ) -> _Reply:
        url, message_id, envelope = self._envelope(
            transaction, body, patient=patient, subject=subject
        )
        if attachments or use_mtom:
            packed = mtom.pack(envelope, attachments, action=transaction.action)
            content: bytes | mtom.MtomRequest = packed
            headers = {"Content-Type": packed.content_type, "Content-Length": str(packed.length)}
        else:
            content = envelope
            headers = {
                "Content-Type": f"{mtom.SOAP_CONTENT_TYPE}; charset=UTF-8; "
                f'action="{transaction.action}"'
            }
        started = time.monotonic()
        try:
            response = self._http.post(
                url,
                content=iter(content) if isinstance(content, mtom.MtomRequest) else content,
                headers=headers,
            )
        except httpx.TransportError as exc:
            error = transport_error(exc, transaction)
            log.warning("%s %s failed: %s", transaction.name, message_id, error.detail)
            raise error from exc
        log.info(
            "%s %s -> HTTP %s in %.2fs",
            transaction.name,
            message_id,
            response.status_code,
            time.monotonic() - started,
        )
        return self._read(response, transaction)

    def _read(self, response: httpx.Response, transaction: soap.Transaction) -> _Reply:
        status = response.status_code
        detail = f"{transaction.name}: HTTP {status}"
        try:
            parsed = mtom.parse(response.headers.get("content-type", ""), response.content)
            element = soap.body_of(parsed.root)
        except soap.SoapFault as fault:
            raise fault_error(fault, status, transaction) from fault
        except (soap.SoapError, mtom.MtomError) as exc:
            if status >= 500 or status in (408, 429):
                raise DmpError(
                    "Le DMP est indisponible ; nouvel essai automatique.",
                    retryable=True,
                    code=f"HTTP_{status}",
                    detail=f"{detail}: {exc}",
                ) from exc
            if status >= 400:
                raise DmpError(
                    "Le DMP a refusé la requête (accès non autorisé ou adresse erronée).",
                    retryable=False,
                    code=f"HTTP_{status}",
                    detail=f"{detail}: {exc}",
                ) from exc
            raise DmpError(
                "Réponse du DMP illisible.",
                retryable=False,
                code="BAD_RESPONSE",
                detail=f"{detail}: {exc}",
            ) from exc
        if status >= 500:
            raise DmpError(
                "Le DMP est indisponible ; nouvel essai automatique.",
                retryable=True,
                code=f"HTTP_{status}",
                detail=detail,
            )
        return _Reply(element, parsed)

    def _query(
        self, query: etree._Element, patient: tuple[str, str], subject: VihfSubject | None
    ) -> soap.QueryResponse:
        reply = self._call(
            soap.ITI18, query, patient=patient, subject=self._require_subject(subject)
        )
        try:
            result = soap.parse_query_response(reply.element)
        except soap.SoapError as exc:
            raise DmpError(
                "Réponse du DMP illisible.", retryable=False, code="BAD_RESPONSE", detail=str(exc)
            ) from exc
        if result.response.failure:
            raise registry_error(result.response, soap.ITI18)
        if result.response.partial:
            log.warning("ITI-18 partial success: %s", result.response.errors)
        return result

    # --- publication (Source) -------------------------------------------------------------------

    def kos_request(
        self,
        report: ImagingReport,
        kos_bytes: bytes,
        flags: Mapping[str, bool | str],
        *,
        replaces: Replacement | None = None,
        now: datetime | None = None,
    ) -> metadata.PnrRequest:
        """The ITI-41 request body of a KOS publication: the KOS, its DSG signature document
        and (for a new version) RPLC of the old KOS and of its signature document."""
        kos_uid = _kos_uid(kos_bytes)
        ids = PublicationIds.derive(kos_uid, self.settings.uid_root)
        now = now or datetime.now(UTC)
        try:
            signature = build_signature_document(
                [SignedDocument(kos_uid, kos_bytes)],
                self._signer,
                signing_time=now,
            )
            return metadata.build_kos_submission(
                report,
                kos_bytes=kos_bytes,
                ids=ids,
                signature_xml=signature,
                site=self.settings.site,
                flags=flags,
                submission_time=now,
                signing_time=now,
                replaces_entry_uuid=replaces.entry_uuid if replaces else None,
                replaces_signature_entry_uuid=replaces.signature_entry_uuid if replaces else None,
            )
        except MetadataError as exc:
            raise DmpError(
                f"Publication impossible : {exc}.", retryable=False, code="METADATA"
            ) from exc
        except SignatureError as exc:
            raise DmpError(
                "Signature du document de signature impossible (certificat de signature).",
                retryable=False,
                code="SIGNATURE",
                detail=str(exc),
            ) from exc

    def iti41_envelope(
        self, report: ImagingReport, request: metadata.PnrRequest
    ) -> tuple[bytes, list[mtom.Attachment]]:
        """The SOAP envelope `publish_kos` sends for `request` (documents as XOP references)
        and its MIME parts, without sending them: what a site hands to the ANS validators."""
        subject = self.subject or _report_subject(report)
        patient = (report.patient.ins, report.patient.ins_oid)
        _, _, envelope = self._envelope(soap.ITI41, request.body, patient=patient, subject=subject)
        return envelope, _attachments(request)

    def publish_kos(
        self,
        report: ImagingReport,
        kos_bytes: bytes,
        flags: Mapping[str, bool | str],
        *,
        replaces: Replacement | None = None,
        now: datetime | None = None,
    ) -> PublishResult:
        """ITI-41 of `kos_request` (so that no orphaned signature stays Approved).

        A retry after a lost answer is recognised (same derived ids): when the DMP reports the
        KOS uniqueId as already registered with the same hash, the existing entry is returned.
        """
        request = self.kos_request(report, kos_bytes, flags, replaces=replaces, now=now)
        ids, kos_uid = request.ids, request.ids.kos_unique_id
        subject = self.subject or _report_subject(report)
        patient = (report.patient.ins, report.patient.ins_oid)
        reply = self._call(
            soap.ITI41,
            request.body,
            patient=patient,
            subject=subject,
            attachments=_attachments(request),
        )
        try:
            response = soap.expect_registry_response(reply.element)
        except soap.SoapError as exc:
            raise DmpError(
                "Réponse du DMP illisible.", retryable=False, code="BAD_RESPONSE", detail=str(exc)
            ) from exc
        if response.failure:
            if any(e.code in DUPLICATE_CODES for e in response.errors):
                existing = self._already_published(kos_uid, kos_bytes, patient, subject)
                if existing is not None:
                    return PublishResult(
                        existing.entry_uuid, kos_uid, ids.submission_set_unique_id, True
                    )
            raise registry_error(response, soap.ITI41)
        return PublishResult(ids.kos_entry_uuid, kos_uid, ids.submission_set_unique_id)

    def provide_and_register(
        self,
        body: etree._Element,
        attachments: Sequence[mtom.Attachment],
        *,
        patient: tuple[str, str],
        subject: VihfSubject,
    ) -> soap.RegistryResponse:
        """ITI-41 of a request built by the caller (the RIS simulator publishes its CDA reports
        this way; the box itself publishes KOS through `publish_kos`)."""
        reply = self._call(
            soap.ITI41, body, patient=patient, subject=subject, attachments=attachments
        )
        return soap.expect_registry_response(reply.element)

    def _already_published(
        self, kos_uid: str, kos_bytes: bytes, patient: tuple[str, str], subject: VihfSubject
    ) -> DocumentEntry | None:
        found = self.get_documents(*patient, unique_ids=[kos_uid], subject=subject)
        digest = hashlib.sha1(kos_bytes).hexdigest()
        return next((e for e in found if e.hash == digest), None)

    def signature_of(
        self, kos: DocumentEntry, *, subject: VihfSubject | None = None
    ) -> DocumentEntry | None:
        """The Approved signature document published with this KOS (its uniqueId is derived
        from the KOS's, `PublicationIds`), or None (another box's KOS, or already gone)."""
        ids = PublicationIds.derive(kos.unique_id, self.settings.uid_root)
        found = self.get_documents(
            *kos.patient_ins, unique_ids=[ids.signature_unique_id], subject=subject
        )
        return next((e for e in found if e.status == codes.STATUS_APPROVED), None)

    def _deletion(self, entry: DocumentEntry, also: Sequence[DocumentEntry]) -> etree._Element:
        try:
            return metadata.build_availability_update(
                entry, site=self.settings.site, submission_time=datetime.now(UTC), also=also
            )
        except MetadataError as exc:
            raise DmpError(
                f"Suppression impossible : {exc}.", retryable=False, code="METADATA"
            ) from exc

    def iti57_envelope(
        self,
        entry: DocumentEntry,
        *,
        subject: VihfSubject | None = None,
        also: Sequence[DocumentEntry] = (),
    ) -> bytes:
        """The SOAP envelope `delete` sends, without sending it."""
        chosen = self._require_subject(subject)
        body = self._deletion(entry, also)
        return self._envelope(soap.ITI57, body, patient=entry.patient_ins, subject=chosen)[2]

    def delete(
        self,
        entry: DocumentEntry,
        *,
        subject: VihfSubject | None = None,
        also: Sequence[DocumentEntry] = (),
    ) -> None:
        """ITI-57: set the entry's availability status to Deleted (DMP depublication), with
        `also` (the KOS's signature document) in the same submission."""
        chosen = self._require_subject(subject)
        body = self._deletion(entry, also)
        reply = self._call(soap.ITI57, body, patient=entry.patient_ins, subject=chosen)
        response = soap.parse_registry_response(reply.element)
        if response.failure:
            raise registry_error(response, soap.ITI57)

    # --- consultation (Conso, and the Source looking up what it published) -----------------------

    def find_documents(
        self,
        patient_ins: str,
        ins_oid: str,
        *,
        statuses: Sequence[str] = (codes.STATUS_APPROVED,),
        class_codes: Sequence[Code] = (),
        type_codes: Sequence[Code] = (),
        modalities: Sequence[str] = (),
        regions: Sequence[Code] = (),
        service_from: datetime | None = None,
        service_to: datetime | None = None,
        subject: VihfSubject | None = None,
    ) -> list[DocumentEntry]:
        query = metadata.find_documents_query(
            metadata.cx(patient_ins, ins_oid),
            statuses=statuses,
            class_codes=class_codes,
            type_codes=type_codes,
            modalities=modalities,
            regions=regions,
            service_from=service_from,
            service_to=service_to,
        )
        result = self._query(query, (patient_ins, ins_oid), subject)
        return metadata.parse_document_entries(result.objects)

    def find_by_reference_id(
        self,
        patient_ins: str,
        ins_oid: str,
        *,
        accession: Identifier | None = None,
        study_instance_uid: str | None = None,
        order: Identifier | None = None,
        statuses: Sequence[str] = (codes.STATUS_APPROVED,),
        subject: VihfSubject | None = None,
    ) -> list[DocumentEntry]:
        """FindDocumentsByReferenceId. A study UID is looked up in every form boxes publish it:
        without CX.4, with ours (DICOM's root) or XDS.xml's placeholder authority; when none
        matches, the patient's KOS are read and matched on the UID itself (any authority)."""
        references: list[str] = []
        if accession is not None:
            references.append(
                metadata.reference_id(accession.extension, accession.root, codes.REF_ACCESSION)
            )
        if study_instance_uid:
            for authority in (None, *codes.STUDY_UID_AUTHORITIES):
                references.append(
                    metadata.reference_id(study_instance_uid, authority, codes.REF_STUDY_UID)
                )
        if order is not None:
            references.append(metadata.reference_id(order.extension, order.root, codes.REF_ORDER))
        if not references:
            raise ValueError("give an accession number, a study UID or an order")
        query = metadata.find_by_reference_id_query(
            metadata.cx(patient_ins, ins_oid), references, statuses=statuses
        )
        result = self._query(query, (patient_ins, ins_oid), subject)
        found = metadata.parse_document_entries(result.objects)
        if study_instance_uid and not any(
            e.reference(codes.REF_STUDY_UID) == study_instance_uid for e in found
        ):
            # Another box's authority: match the UID on the patient's KOS (same result set).
            known = {e.entry_uuid for e in found}
            others = self.find_documents(
                patient_ins, ins_oid, statuses=statuses, type_codes=[codes.KOS_TYPE],
                subject=subject,
            )  # fmt: skip
            found += [
                e
                for e in others
                if e.entry_uuid not in known
                and e.reference(codes.REF_STUDY_UID) == study_instance_uid
            ]
        return found

    def get_documents(
        self,
        patient_ins: str,
        ins_oid: str,
        *,
        unique_ids: Sequence[str] = (),
        entry_uuids: Sequence[str] = (),
        subject: VihfSubject | None = None,
    ) -> list[DocumentEntry]:
        query = metadata.get_documents_query(unique_ids=unique_ids, entry_uuids=entry_uuids)
        result = self._query(query, (patient_ins, ins_oid), subject)
        return metadata.parse_document_entries(result.objects)

    def get_associations(
        self,
        patient_ins: str,
        ins_oid: str,
        uuids: Sequence[str],
        *,
        subject: VihfSubject | None = None,
    ) -> list[metadata.AssociationInfo]:
        result = self._query(
            metadata.get_associations_query(uuids), (patient_ins, ins_oid), subject
        )
        return metadata.parse_associations(result.objects)

    def retrieve(
        self,
        repository_unique_id: str,
        document_unique_id: str,
        *,
        patient_ins: str,
        ins_oid: str,
        subject: VihfSubject | None = None,
    ) -> bytes:
        """ITI-43: the document's bytes (MTOM attachment or inline)."""
        body = soap.build_retrieve_request(
            [soap.DocumentRequest(repository_unique_id, document_unique_id)]
        )
        reply = self._call(
            soap.ITI43,
            body,
            patient=(patient_ins, ins_oid),
            subject=self._require_subject(subject),
            use_mtom=True,
        )
        try:
            result = soap.parse_retrieve_response(reply.element, reply.message.resolve)
        except (soap.SoapError, mtom.MtomError) as exc:
            raise DmpError(
                "Réponse du DMP illisible.", retryable=False, code="BAD_RESPONSE", detail=str(exc)
            ) from exc
        if result.response.failure:
            raise registry_error(result.response, soap.ITI43)
        for document in result.documents:
            if document.document_unique_id in ("", document_unique_id):
                return document.content
        raise DmpError(
            _XDS_MESSAGES["XDSDocumentUniqueIdError"],
            retryable=False,
            code="XDSDocumentUniqueIdError",
            detail=f"{document_unique_id} absent de la réponse",
        )

    def patient_status(
        self, patient_ins: str, ins_oid: str, *, subject: VihfSubject | None = None
    ) -> soap.PatientStatus:
        """TD0.2: does the patient have a DMP, and is this professional authorised."""
        body = soap.build_patient_query(
            ins=patient_ins,
            ins_oid=ins_oid,
            sender_root=self.settings.uid_root,
            sender_name=self.settings.lps_name,
        )
        reply = self._call(
            soap.TD02, body, patient=(patient_ins, ins_oid), subject=self._require_subject(subject)
        )
        return soap.parse_patient_status(reply.element)

    def set_authorization(
        self,
        patient_ins: str,
        ins_oid: str,
        *,
        action: str = "AJOUT",
        subject: VihfSubject | None = None,
    ) -> soap.AuthorizationResult:
        """TD0.3: the professional declares a care relationship with the patient."""
        reply = self._call(
            soap.TD03,
            soap.build_set_authorization(action),
            patient=(patient_ins, ins_oid),
            subject=self._require_subject(subject),
        )
        return soap.parse_set_authorization(reply.element)


def _attachments(request: metadata.PnrRequest) -> list[mtom.Attachment]:
    return [mtom.Attachment(d.content_id, d.data, d.mime_type) for d in request.documents]


def _kos_uid(kos_bytes: bytes) -> str:
    from drimbox.dicom.kos import manifest_from_bytes  # pydicom is heavy; only publication needs it

    try:
        uid = str(manifest_from_bytes(kos_bytes).SOPInstanceUID)
    except Exception as exc:  # pydicom raises many kinds on bad input
        raise DmpError(
            "Le KOS à publier est illisible.", retryable=False, code="KOS", detail=str(exc)
        ) from exc
    if not uid:
        raise DmpError("Le KOS à publier n'a pas de SOPInstanceUID.", retryable=False, code="KOS")
    return uid


def _report_subject(report: ImagingReport) -> VihfSubject:
    try:
        return VihfSubject.from_report(report)
    except VihfError as exc:
        raise DmpError(f"Publication impossible : {exc}.", retryable=False, code="VIHF") from exc
