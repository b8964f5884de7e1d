"""The Conso's web side on the user origin: contextual launch, the patient's exam history,
reports, the viewer hand-over, background prefetch of the images and export to the local PACS.

Routes (French pages; every one but the launch itself needs a session):

- `POST /lancement` — the RIS/DPI form (ANS field names, `conso.launch`): 400 page listing each
  invalid field, else the launch is stored with an expiry and answered `303` to
  `/consultation/<id>` (an unguessable id). Public by nature: the RIS posts it from the user's
  browser before any sign-in; it reveals nothing. Any page of any site can post it, so only a
  launch whose `Origin` (else `Referer`) is in `[conso] launch_origins` goes on at once; any
  other gets a confirmation page naming the patient, nothing stored nor asked of the DMP, whose
  button posts the same form to `POST /lancement/confirmer` (from this origin: checked by
  `web.origins.SameOriginPosts` like every POST of the origin).
- `GET /consultation/<id>` — sign-in first (`/connexion?next=…`); the first session to open the
  launch is bound to it, no other session sees it. The history is read from the DMP as the user
  (TD0.2/TD0.3, ITI-18, ITI-43, `conso.history`) once, stored per launch, and the images of the
  named exam and its relevant priors are prefetched in the background, within the launch's
  budget (`conso.prefetch`), from their Source (`conso.retrieval`: whitelisted `db` hosts only,
  mutual TLS, the user's PSC token and the KOS UID) into the node's cache. The exam the launch
  names is shown first; the launch's modality, region and date are the initial filters of the
  history, which `?filtre=1&modalite=&region=&du=&au=` changes on the stored rows
  (`conso.filters`), never with a new DMP query. Every launch, accepted or refused (when posted
  or when opened), is in the audit trail with its reason.
- `GET /consultation/<id>/etat` — JSON progress of prefetch and exports (polled by the page).
- `GET /consultation/<id>/compte-rendu/<exam>` — the report: its embedded PDF or its text.
- `GET /consultation/<id>/ouvrir/<study>`, `GET /consultation/<id>/comparer?etude=a&etude=b` —
  grant the studies to the session, fetch those outside the prefetch (progress on the history
  page) and open OHIF (`/viewer?StudyInstanceUIDs=…`).
- `POST /consultation/<id>/export/<study>` — export under the launch's IPP (`conso.export`) to
  the destination chosen in the row (`destination_<study>`, or `destination`): the PACS by
  default, or an `[[export_destinations]]` entry; progress and a French report on the page.

Owns `ConsoService` (launch storage, history loading, prefetch and export jobs, and the
registration of each exam's Source with the image service so that `/dicom-web` serves Conso
exams from the cache, never from the local PACS). Prefetch and export progress live in this
process's memory (the page falls back to "en attente" on another node). It must not verify
tokens (sessions do), nor build DMP or WADO-RS requests itself (the `conso` package does).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import secrets
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, Final
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from lxml import etree
from sqlalchemy import select
from sqlalchemy.orm import Session

from drimbox.auth.users import UserInfoError
from drimbox.cda.model import INS_OIDS
from drimbox.config import PACS_DESTINATION, Config, ExportDestinationConfig
from drimbox.conso.common import Auditor, ConsoError, db_auditor
from drimbox.conso.export import (
    CStoreTarget,
    ExportReport,
    LocalIdentity,
    StowRsTarget,
    Target,
    export_exam,
)
from drimbox.conso.filters import filter_from_query
from drimbox.conso.history import ExamHistory, HistoryQuery, Manifest, read_manifest
from drimbox.conso.imported import imported_exams
from drimbox.conso.launch import InvalidLaunch, LaunchContext, form_fields, parse_launch
from drimbox.conso.prefetch import Budget, Candidate, prefetch_order
from drimbox.conso.retrieval import RetrievalError, SourceRetriever
from drimbox.conso.xdm import XdmDocument, XdmPatient, write_xdm
from drimbox.db import Database, aware, row_id, utcnow
from drimbox.db.models import ConsoExam, ConsoLaunch, UserPreference, UserSession
from drimbox.dicom.cache import CachedInstance
from drimbox.dicom.pacs import InstanceSink, PacsClient
from drimbox.dicom.retrieve import (
    ImageService,
    RemoteSourceError,
    dicomweb_tls,
    pacs_settings,
    trusted_authorities,
)
from drimbox.dmp.client import DmpClient, DmpSettings
from drimbox.dmp.vihf import AUTH_REINFORCED_INDIRECT, VihfSubject
from drimbox.logs import ref
from drimbox.ops.stats import record_launch
from drimbox.source.grants import session_hash
from drimbox.trust import audit
from drimbox.trust.store import WhitelistStore
from drimbox.trust.tls import PeerCheck, PeerRefused, client_ssl_context
from drimbox.web.origins import request_origin
from drimbox.web.pages import french_date, french_number, french_size, message, render
from drimbox.web.sessions import DbSessionStore, SessionView
from drimbox.web.viewer import LOGIN_PATH, SESSION_COOKIE

log = logging.getLogger(__name__)

LAUNCH_PATH: Final = "/lancement"
# The confirmation page of a launch from an undeclared origin posts the form again here.
LAUNCH_CONFIRM_PATH: Final = "/lancement/confirmer"
CONSULTATION_PATH: Final = "/consultation"
SITUATION_PATH: Final = "/auth/situation"
PUBLIC_PATHS: Final = frozenset({LAUNCH_PATH, LAUNCH_CONFIRM_PATH})
# The audit trail's actor of a launch: the RIS posts it from the browser before any sign-in.
LAUNCH_ACTOR: Final = "anonyme (lancement contextuel)"
OPEN_WITHIN: Final = timedelta(minutes=15)  # a launch not opened by then is gone
KEEP_FOR: Final = timedelta(hours=12)  # an opened launch lives as long as a session at most
# VIHF Authentification_Mode of a professional signed in with Pro Santé Connect (CPS/e-CPS): the
# DMP's reinforced indirect mode (NATIONAL-RULES.md), not DIRECTE (a card read by the workstation).
AUTHENTICATION_MODE: Final = AUTH_REINFORCED_INDIRECT
COMPARE_PROTOCOL: Final = "@ohif/hpCompare"  # OHIF's two-study side-by-side hanging protocol
CDA_NS: Final = "urn:hl7-org:v3"

_ERROR_STATUS: Final = {
    "OPPOSITION": 403,
    "ACCES_REFUSE": 403,
    "PAS_DE_DMP": 404,
    "DMP_INJOIGNABLE": 503,
    "DMP_NON_CONFIGURE": 503,
}
_ERROR_TITLES: Final = {
    "OPPOSITION": "Consultation du DMP impossible",
    "ACCES_REFUSE": "Accès refusé au DMP",
    "PAS_DE_DMP": "Pas de DMP pour ce patient",
    "DMP_INJOIGNABLE": "DMP injoignable",
    "DMP_NON_CONFIGURE": "DMP non configuré",
}
_SEX: Final = {"M": "Masculin", "F": "Féminin", "U": "Inconnu"}


# -- the stored launch ------------------------------------------------------------------------


def context_to_json(context: LaunchContext) -> dict[str, Any]:
    data = asdict(context)
    for key, value in data.items():
        if isinstance(value, date):
            data[key] = value.isoformat()
        elif isinstance(value, tuple):
            data[key] = list(value)
    return data


def context_from_json(data: dict[str, Any]) -> LaunchContext:
    values = dict(data)
    values["birth_date"] = date.fromisoformat(values["birth_date"])
    if values.get("study_date"):
        values["study_date"] = date.fromisoformat(values["study_date"])
    values["given_names"] = tuple(values.get("given_names", ()))
    return LaunchContext(**values)


def format_ins(ins: str) -> str:
    """ "2 79 03 51 215 189 89": the INS as it is printed on a Vitale card."""
    if len(ins) != 15:
        return ins
    return " ".join((ins[0], ins[1:3], ins[3:5], ins[5:7], ins[7:10], ins[10:13], ins[13:]))


@dataclass(frozen=True)
class ExamRow:
    """One stored history row (what the page and the routes need of `ConsoExam`)."""

    id: int
    study_uid: str
    accession: str
    kos: bytes | None
    has_report: bool
    summary: dict[str, Any]

    @property
    def manifest(self) -> Manifest | None:
        return read_manifest(self.kos) if self.kos else None


@dataclass(frozen=True)
class Launch:
    id: str
    context: LaunchContext
    session_hash: str | None
    history_loaded: bool
    exams: tuple[ExamRow, ...] = ()
    notice: str = ""  # why the history may be incomplete (the DMP was unreachable)
    all_traits: bool = False  # the signed-in professional's choice (`UserPreference`)

    def exam(self, study_uid: str) -> ExamRow | None:
        return next((e for e in self.exams if e.study_uid == study_uid and e.kos), None)


class LaunchRefused(Exception):
    """The launch cannot be shown to this session: `status` (404, 403, 410), a French message
    and the launch's patient when it is known (for the audit trail)."""

    def __init__(self, status: int, title: str, message: str, *, patient_ins: str = "") -> None:
        self.status = status
        self.title = title
        self.patient_ins = patient_ins
        super().__init__(message)


# -- progress of background work ----------------------------------------------------------


@dataclass
class Job:
    """Progress of one background task (prefetch of an exam, or its export)."""

    state: str = "en_attente"  # en_attente, en_cours, termine, erreur, refuse
    done: int = 0
    total: int = 0
    message: str = ""
    detail: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "etat": self.state,
            "faits": self.done,
            "total": self.total,
            "message": self.message,
            "details": list(self.detail),
        }


READY: Final = "Images prêtes."
ON_DEMAND: Final = "Hors du préchargement : les images seront récupérées à l'ouverture de l'examen."


def _stopped(reason: str, *, partly: bool = False) -> str:
    """The job message of an exam the prefetch stopped at (`reason`: why)."""
    if partly:
        return (
            f"Préchargement partiel ({reason}) : le reste des images sera récupéré à "
            "l'ouverture de l'examen."
        )
    return f"Hors du préchargement ({reason}) : les images seront récupérées à son ouverture."


@dataclass
class PrefetchSummary:
    """What one launch's prefetch planned and has done so far: the exams it made ready, and
    the bytes of the series it made ready (fetched now or already in the cache)."""

    budget: Budget
    planned: int
    exams: int = 0
    bytes: int = 0

    def as_json(self) -> dict[str, int]:
        return {
            "prevus": self.planned,
            "examens": self.exams,
            "octets": self.bytes,
            "budget_examens": self.budget.exams,
            "budget_octets": self.budget.max_bytes,
        }


def _candidate(exam: ExamRow) -> Candidate:
    s = exam.summary
    return Candidate(
        key=exam.id,
        study_uid=exam.study_uid,
        accession=exam.accession,
        date=str(s.get("date") or ""),
        modalities=tuple(s.get("modalities", [])),
        regions=tuple(s.get("regions", [])),
    )


# -- where a Conso exam's images come from --------------------------------------------------


class _SinkWriter:
    def __init__(self, sink: InstanceSink) -> None:
        self._sink = sink

    def add(self, data: bytes | memoryview) -> None:
        self._sink(data)

    def finish(self) -> None:
        pass

    def fail(self, error: BaseException) -> None:
        pass


class _SinkStore:
    """An `InstanceStore` that hands instances to the image service's cache entry."""

    def __init__(self, sink: InstanceSink) -> None:
        self._sink = sink

    def open_series(self, study_uid: str, series_uid: str) -> _SinkWriter:
        return _SinkWriter(self._sink)


class ExamSource:
    """A `RemoteSeriesSource`: one Conso exam's series, fetched from the Source named by its
    KOS with the user's current PSC access token."""

    def __init__(
        self,
        manifest: Manifest,
        retriever: SourceRetriever,
        token: Callable[[], str | None],
        audit: Auditor,
    ) -> None:
        self.manifest = manifest
        self._retriever = retriever
        self._token = token
        self._audit = audit

    @property
    def series_uids(self) -> Sequence[str]:
        return [s.series_uid for s in self.manifest.series]

    def fetch_series(self, study_uid: str, series_uid: str, sink: InstanceSink) -> int:
        series = next((s for s in self.manifest.series if s.series_uid == series_uid), None)
        if series is None or study_uid != self.manifest.study_uid:
            raise RemoteSourceError("Série absente du manifeste (KOS) de cet examen.")
        token = self._token()
        if not token:
            raise RemoteSourceError("Session expirée : reconnectez-vous pour voir ces images.")
        try:
            result = self._retriever.retrieve_series(
                series, self.manifest, token, _SinkStore(sink), audit=self._audit
            )
        except RetrievalError as error:
            raise RemoteSourceError(error.message) from error
        return result.instances


def report_body(cda: bytes) -> tuple[str, bytes | str]:
    """The readable body of a CDA report: ("pdf", bytes), ("text", str) or ("none", "")."""
    try:
        root = etree.fromstring(
            cda, parser=etree.XMLParser(resolve_entities=False, no_network=True)
        )
    except etree.XMLSyntaxError:
        return "none", ""
    ns = {"h": CDA_NS}
    for text in root.iterfind(".//h:nonXMLBody/h:text", ns):
        media = (text.get("mediaType") or "").lower()
        content = "".join(str(t) for t in text.itertext()).strip()
        if media == "application/pdf" and text.get("representation", "").upper() == "B64":
            try:
                return "pdf", base64.b64decode("".join(content.split()))
            except (ValueError, binascii.Error):
                return "none", ""
        if media.startswith("text/"):
            return "text", content
    sections = []
    for section in root.iterfind(".//h:structuredBody//h:section", ns):
        title = section.findtext("h:title", default="", namespaces=ns).strip()
        body = section.find("h:text", ns)
        content = (
            " ".join("".join(str(t) for t in body.itertext()).split()) if body is not None else ""
        )
        sections.append(f"{title}\n{content}".strip())
    text = "\n\n".join(s for s in sections if s)
    return ("text", text) if text else ("none", "")


# -- the service ----------------------------------------------------------------------------


class ConsoService:
    """The Conso's state for one node: launches and exams in the database, background jobs in
    memory, the DMP client and the Source retriever shared by every user."""

    def __init__(
        self,
        config: Config,
        db: Database,
        sessions: DbSessionStore,
        images: ImageService,
        whitelist: WhitelistStore | None,
        *,
        open_within: timedelta = OPEN_WITHIN,
        keep_for: timedelta = KEEP_FOR,
        threads: int = 4,
        access_token: Callable[[str], str | None] | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.sessions = sessions
        # The user's PSC access token for a session cookie, refreshed when it is about to
        # expire (`web.auth_routes.SessionTokens`); without PSC, the stored one.
        self.access_token = access_token or self._stored_access_token
        self.images = images
        self.open_within = open_within
        self.keep_for = keep_for
        self.peer_check = (
            PeerCheck(whitelist.current, whitelist.revocation) if whitelist is not None else None
        )
        self._dmp: DmpClient | None = None
        self._retriever: SourceRetriever | None = None
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="drimbox-conso")
        # Exams opened outside the prefetch: never queued behind other launches' prefetch.
        self._on_demand = ThreadPoolExecutor(threads, thread_name_prefix="drimbox-conso-open")
        self.prefetch: dict[str, dict[int, Job]] = {}  # launch id → exam id → job
        self.summaries: dict[str, PrefetchSummary] = {}  # launch id → what its prefetch did
        self.exports: dict[str, dict[int, Job]] = {}
        self.export_reports: dict[tuple[str, int], ExportReport] = {}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._on_demand.shutdown(wait=False, cancel_futures=True)
        if self._dmp is not None:
            self._dmp.close()
        if self._retriever is not None:
            self._retriever.close()

    # -- clients (built on first use: a node without DMP or PKI still serves its pages) ----

    def dmp(self) -> DmpClient:
        with self._lock:
            if self._dmp is None:
                if not self.config.dmp.base_url:
                    raise ConsoError(
                        "DMP_NON_CONFIGURE",
                        "Aucun DMP n'est configuré sur cette DRIMbox ([dmp] base_url) : "
                        "contactez le service informatique du site.",
                    )
                self._dmp = DmpClient(DmpSettings.from_config(self.config))
            return self._dmp

    def retriever(self) -> SourceRetriever:
        trust = self.config.trust
        with self._lock:
            if self._retriever is None:
                if self.peer_check is None or not trust.tls_cert:
                    raise RetrievalError(
                        "CONFIGURATION",
                        "Cette DRIMbox n'a pas de liste blanche ou de certificat ([trust]) : "
                        "elle ne peut pas récupérer d'images auprès des autres sites.",
                    )
                context = client_ssl_context(
                    trust.tls_cert,
                    trust.tls_key,
                    trust.tls_ca or trust.anchors,
                    trust.key_passphrase_env,
                )
                self._retriever = SourceRetriever(self.peer_check, context)
            return self._retriever

    # -- launches ----------------------------------------------------------------------------

    def store_launch(self, context: LaunchContext) -> str:
        launch_id = secrets.token_urlsafe(32)
        now = utcnow()
        with self.db.session() as session:
            session.add(
                ConsoLaunch(
                    id=launch_id,
                    created_at=now,
                    open_by=now + self.open_within,
                    expires_at=now + self.open_within,
                    session_hash=None,
                    patient_ins=context.ins,
                    context=context_to_json(context),
                )
            )
        return launch_id

    def open_launch(self, launch_id: str, cookie: str) -> Launch:
        """The launch for this session, binding it on first opening. Raises `LaunchRefused`."""
        now = utcnow()
        mine = session_hash(cookie)
        with self.db.session() as session:
            row = session.get(ConsoLaunch, launch_id) if len(launch_id) <= 64 else None
            if row is None:
                raise LaunchRefused(
                    404,
                    "Lancement inconnu",
                    "Ce lien de consultation est inconnu : relancez la consultation depuis "
                    "votre logiciel (RIS ou dossier patient).",
                )
            if row.session_hash is None:
                if aware(row.open_by) < now:
                    raise LaunchRefused(
                        410,
                        "Lancement expiré",
                        "Ce lancement a expiré (il doit être ouvert dans les "
                        f"{int(self.open_within.total_seconds() // 60)} minutes) : relancez la "
                        "consultation depuis votre logiciel.",
                        patient_ins=row.patient_ins,
                    )
                row.session_hash = mine
                row.opened_at = now
                row.expires_at = now + self.keep_for
            elif row.session_hash != mine and not _same_user(session, row.session_hash, mine):
                raise LaunchRefused(
                    403,
                    "Lancement déjà ouvert",
                    "Ce lancement a été ouvert dans une autre session : relancez la consultation "
                    "depuis votre logiciel.",
                    patient_ins=row.patient_ins,
                )
            elif aware(row.expires_at) < now:
                raise LaunchRefused(
                    410,
                    "Consultation expirée",
                    "Cette consultation a expiré : relancez-la depuis votre logiciel.",
                    patient_ins=row.patient_ins,
                )
            else:
                row.session_hash = mine  # the same user signed in again (after a logout)
            exams = session.scalars(
                select(ConsoExam)
                .where(ConsoExam.launch_id == launch_id)
                .order_by(ConsoExam.position)
            ).all()
            own = session.get(UserSession, mine)
            choice = session.get(UserPreference, own.subject_name_id) if own else None
            return Launch(
                id=row.id,
                context=context_from_json(row.context),
                session_hash=row.session_hash,
                history_loaded=row.history_loaded_at is not None,
                notice=row.history_notice or "",
                exams=tuple(
                    ExamRow(e.id, e.study_uid, e.accession, e.kos, e.report is not None, e.summary)
                    for e in exams
                ),
                all_traits=choice is not None and choice.all_traits,
            )

    def set_all_traits(self, view: SessionView, value: bool) -> None:
        """Keep the professional's choice of identity traits, for every launch to come."""
        with self.db.session() as session:
            session.merge(
                UserPreference(subject=view.subject_name_id, all_traits=value, updated_at=utcnow())
            )

    def report(self, launch: Launch, exam_id: int) -> bytes | None:
        with self.db.session() as session:
            row = session.get(ConsoExam, exam_id)
            if row is None or row.launch_id != launch.id:
                return None
            return row.report

    # -- history ------------------------------------------------------------------------------

    def subject(self, view: SessionView) -> VihfSubject:
        """The DMP subject of the signed-in user in their situation d'exercice; raises
        `UserInfoError` when the situation must still be chosen."""
        user = view.user
        return user.situation(view.situation_key).vihf_subject(
            user,
            authentication_mode=AUTHENTICATION_MODE,
            fallback_sector=self.config.dmp.activity_sector,
        )

    def situation_of_launch(self, launch: Launch, view: SessionView) -> str | None:
        """The key of the user's situation d'exercice the launch names (its `Situation` field:
        a situation key, or the structure's national or technical identifier), when exactly
        one matches: the DPI knows where its user works, no need to ask."""
        wanted = (launch.context.situation or "").strip()
        if not wanted:
            return None
        matches = {
            situation.key
            for situation in view.user.situations()
            if wanted == situation.key
            or (
                situation.activity is not None
                and wanted
                in (situation.activity.national_structure_id, situation.activity.structure_id)
            )
        }
        return matches.pop() if len(matches) == 1 else None

    def load_history(self, launch: Launch, view: SessionView) -> Launch:
        """Read the history from the DMP as the user, store it, start the prefetch."""
        audit = db_auditor(self.db, view.subject_name_id)
        history = ExamHistory(self.dmp(), self.subject(view), audit=audit).load(
            HistoryQuery.from_launch(launch.context),
            with_reports=True,
            imported=imported_exams(self.db, launch.context.ins),
        )
        now = utcnow()
        retrieved: list[tuple[str, str, str]] = []  # (action, study, KOS UID): audited after
        with self.db.session() as session:
            for old in session.scalars(select(ConsoExam).where(ConsoExam.launch_id == launch.id)):
                session.delete(old)
            for position, exam in enumerate(history.exams):
                manifest = exam.manifest
                if manifest is not None and exam.kos_entry is not None:  # not pre-integrated
                    retrieved.append(
                        ("dmp_retrieve_kos", exam.study_uid, manifest.sop_instance_uid)
                    )
                if exam.report_bytes is not None and exam.report_entry is not None:
                    retrieved.append(("dmp_retrieve_cda", exam.study_uid, ""))
                session.add(
                    ConsoExam(
                        launch_id=launch.id,
                        position=position,
                        study_uid=exam.study_uid[:64],
                        accession=exam.accession[:64],
                        kos_sop_uid=manifest.sop_instance_uid if manifest else None,
                        kos=manifest.data if manifest else None,
                        report=exam.report_bytes,
                        summary={
                            "date": exam.date.isoformat() if exam.date else "",
                            "modalities": list(exam.modalities),
                            "regions": list(exam.regions),
                            "description": exam.description,
                            "site": exam.site,
                            "warnings": list(exam.warnings),
                            "instances": manifest.instance_count if manifest else 0,
                            "sources": list(manifest.source_base_urls) if manifest else [],
                        },
                        created_at=now,
                    )
                )
            row = session.get(ConsoLaunch, launch.id)
            assert row is not None
            row.history_loaded_at = now
            row.history_notice = history.notice
        # Written once the exams are committed: SQLite allows one writer at a time.
        for action, study_uid, kos_uid in retrieved:
            audit(
                action=action,
                result="ok",
                patient_ins=launch.context.ins,
                study_uid=study_uid,
                kos_uid=kos_uid,
            )
        loaded = self.open_launch(launch.id, view.cookie)
        self.start_prefetch(loaded, view)
        return loaded

    # -- images -------------------------------------------------------------------------------

    def refusal(self, manifest: Manifest) -> str | None:
        """Why this exam's images cannot be fetched before any network contact, or None."""
        for series in manifest.series:
            parts = urlsplit(series.retrieve_url)
            if not series.retrieve_url:
                return "Le manifeste n'indique pas où récupérer les images (RetrieveURL absente)."
            if parts.scheme != "https":
                return "Adresse des images non sécurisée (https obligatoire) : non contactée."
            if self.peer_check is None:
                return "Aucune liste blanche DRIM-M en vigueur sur cette DRIMbox."
            try:
                self.peer_check.check_outgoing_host(series.retrieve_url)
            except PeerRefused:
                return (
                    f"La DRIMbox « {parts.hostname} » qui détient ces images n'est pas dans la "
                    "liste blanche DRIM-M en vigueur : aucune demande ne lui a été envoyée."
                )
        return None

    def _stored_access_token(self, cookie: str) -> str | None:
        tokens = self.sessions.tokens(cookie)
        return tokens.access_token if tokens is not None else None

    def register(self, launch: Launch, view: SessionView) -> None:
        """Tell the image service where each exam of the launch comes from (with this user's
        token): `/dicom-web` then serves them from the cache, filled from their Source."""
        try:
            retriever = self.retriever()
        except RetrievalError:
            return
        audit = db_auditor(self.db, view.subject_name_id)
        cookie = view.cookie

        def token() -> str | None:
            return self.access_token(cookie)

        for exam in launch.exams:
            manifest = exam.manifest
            if manifest is not None and self.refusal(manifest) is None:
                self.images.remote.register(
                    exam.study_uid, ExamSource(manifest, retriever, token, audit)
                )

    def budget(self) -> Budget:
        conso = self.config.conso
        return Budget(conso.prefetch_exams, conso.prefetch_max_bytes)

    def start_prefetch(self, launch: Launch, view: SessionView) -> None:
        """Plan the launch's prefetch (`conso.prefetch`: the named exam, then the relevant
        priors, within the budget) and run it in the background, one exam after the other;
        the other exams wait to be opened (`fetch_on_demand`)."""
        self.register(launch, view)
        jobs: dict[int, Job] = {}
        candidates: list[Candidate] = []
        for exam in launch.exams:
            manifest = exam.manifest
            if manifest is None:
                jobs[exam.id] = Job("sans_images", message="Pas d'images partagées (pas de KOS).")
                continue
            job = Job(total=manifest.instance_count)
            reason = self.refusal(manifest)
            if reason is not None:
                job.state, job.message = "refuse", reason
            else:
                candidates.append(_candidate(exam))
            jobs[exam.id] = job
        context = launch.context
        order = prefetch_order(
            candidates,
            study_uid=context.study_instance_uid,
            accession=context.accession_number,
            modality=context.modality,
        )
        budget = self.budget()
        planned = [c.key for position, c in enumerate(order) if budget.allows_exam(position)]
        for candidate in order[len(planned) :]:
            jobs[candidate.key].state = "a_la_demande"
            jobs[candidate.key].message = ON_DEMAND
        summary = PrefetchSummary(budget, planned=len(planned))
        with self._lock:
            self.prefetch[launch.id] = jobs
            self.summaries[launch.id] = summary
        if planned:
            exams = {e.id: e for e in launch.exams}
            self._executor.submit(
                self._prefetch_launch, launch.id, [(exams[k], jobs[k]) for k in planned], summary
            )

    def _prefetch_launch(
        self, launch_id: str, planned: list[tuple[ExamRow, Job]], summary: PrefetchSummary
    ) -> None:
        for position, (exam, job) in enumerate(planned):
            with self._lock:
                if self.summaries.get(launch_id) is not summary:
                    return  # the history was read again: a newer plan runs
            reason = self._prefetch_stop(launch_id, summary, position, summary.bytes)
            if reason is not None:
                with self._lock:
                    if job.state == "en_attente":
                        job.state, job.message = "a_la_demande", _stopped(reason)
                continue
            if not self._claim(job):
                continue  # opened meanwhile: fetched on demand

            def stop(spent: int, position: int = position) -> str | None:
                return self._prefetch_stop(launch_id, summary, position, summary.bytes + spent)

            summary.bytes += self._fetch_exam(exam, job, stop=stop, prefetch=launch_id)
            if job.state == "termine":
                summary.exams += 1

    def _prefetch_stop(
        self, launch_id: str, summary: PrefetchSummary, position: int, spent: int
    ) -> str | None:
        """Why the launch's prefetch must not start another series (`spent` bytes into it),
        or None: its byte budget, or a cache with no room left but other users' viewed
        images (never evicted for a prefetch). The first exam is always fetched whole."""
        budget = summary.budget
        if not budget.allows_more(position, spent):
            return f"limite de {french_size(budget.max_bytes)} par consultation atteinte"
        if position and self.images.cache.prefetch_room(launch_id) <= 0:
            return "cache de cette DRIMbox occupé par les images consultées par d'autres"
        return None

    def _claim(self, job: Job) -> bool:
        """Start `job` unless it is running or done (the launch's worker and an opening may
        race for one exam)."""
        with self._lock:
            if job.state in ("en_cours", "termine", "refuse", "sans_images"):
                return False
            job.state, job.message, job.done = "en_cours", "", 0
            return True

    def fetch_on_demand(self, launch: Launch, study_uids: Sequence[str]) -> None:
        """The exams the user opens or compares that are not (or no longer) prefetched: fetched
        now, their progress shown on the history page like the prefetch's."""
        jobs = self.current_jobs(launch)[0]
        for uid in study_uids:
            exam = launch.exam(uid)
            job = jobs.get(exam.id) if exam is not None else None
            if exam is not None and job is not None and self._claim(job):
                self._on_demand.submit(self._fetch_exam, exam, job)

    def _fetch_exam(
        self,
        exam: ExamRow,
        job: Job,
        *,
        stop: Callable[[int], str | None] | None = None,
        prefetch: str | None = None,
    ) -> int:
        """Every series of the exam into the cache, `job` kept up to date. For a prefetch (the
        launch's id), `stop(bytes so far)` is asked before each series (why not, or None).
        Returns the bytes of the exam's series now in the cache."""
        manifest = exam.manifest
        assert manifest is not None
        job.state = "en_cours"
        done: dict[str, int] = {}
        errors: list[str] = []
        spent = 0
        for series in manifest.series:
            reason = stop(spent) if stop is not None else None
            if reason is not None:
                job.state, job.message = "a_la_demande", _stopped(reason, partly=True)
                return spent

            def count(n: int, uid: str = series.series_uid) -> None:
                done[uid] = n
                job.done = sum(done.values())

            try:
                instances = self.images.fetcher.remote_series(
                    manifest.study_uid,
                    series.series_uid,
                    wait="done",
                    on_instance=count,
                    prefetch=prefetch,
                )
                spent += sum(i.size for i in instances)
            except RemoteSourceError as exc:
                errors.append(str(exc))
            except Exception as exc:
                log.warning("prefetch of %s failed", series.series_uid, exc_info=exc)
                errors.append("Erreur inattendue pendant la récupération des images.")
        if errors:
            job.state, job.message = "erreur", errors[0]
        else:
            job.state, job.message = "termine", READY
        return spent

    @contextlib.contextmanager
    def pinned_instances(self, manifest: Manifest) -> Iterator[list[CachedInstance]]:
        """Every instance of the exam, fetched if needed, pinned in the cache while in use."""
        cache = self.images.cache
        entries = []
        instances: list[CachedInstance] = []
        try:
            for series in manifest.series:
                self.images.fetcher.remote_series(manifest.study_uid, series.series_uid)
                entry, created = cache.get_or_begin(manifest.study_uid, series.series_uid)
                entries.append(entry)
                if created or not entry.complete:
                    if created:
                        cache.fail(entry, LookupError("lookup only"))
                    raise ConsoError(
                        "IMAGES_ABSENTES",
                        "Les images de cet examen ne sont plus en cache : réessayez.",
                    )
                instances.extend(entry.instances)
            yield instances
        finally:
            for entry in entries:
                cache.release(entry)

    # -- export -------------------------------------------------------------------------------

    def start_export(
        self, launch: Launch, exam: ExamRow, view: SessionView, destination: str = PACS_DESTINATION
    ) -> None:
        job = Job("en_cours", message="Export en cours…")
        with self._lock:
            running = self.exports.setdefault(launch.id, {}).get(exam.id)
            if running is not None and running.state == "en_cours":
                return
            self.exports[launch.id][exam.id] = job
        self.register(launch, view)
        self._executor.submit(self._export, launch, exam, job, view.subject_name_id, destination)

    def _export(
        self, launch: Launch, exam: ExamRow, job: Job, actor: str, destination: str
    ) -> None:
        manifest = exam.manifest
        assert manifest is not None
        identity = LocalIdentity.from_launch(launch.context)
        try:
            target = export_target(self.config, destination)
        except ValueError as exc:  # e.g. an unreadable [pacs] dicomweb_ca_file
            job.state, job.message = "erreur", f"Export impossible (configuration) : {exc}"
            return

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        try:
            with self.pinned_instances(manifest) as instances:
                job.total = len(instances)
                report = export_exam(
                    instances,
                    identity,
                    target,
                    study_uid=manifest.study_uid,
                    progress=progress,
                    audit=db_auditor(self.db, actor),
                )
        except (ConsoError, RemoteSourceError) as exc:
            job.state = "erreur"
            job.message = exc.message if isinstance(exc, ConsoError) else str(exc)
            return
        except Exception as exc:
            log.warning("export of %s failed", manifest.study_uid, exc_info=exc)
            job.state, job.message = "erreur", "Erreur inattendue pendant l'export."
            return
        self.export_reports[(launch.id, exam.id)] = report
        stored, failed = len(report.stored), report.failed
        job.done = stored + len(failed)
        job.message = (
            f"{stored} image(s) enregistrée(s) vers {report.destination} sous l'IPP "
            f"{identity.patient_id}" + (f" ; {len(failed)} en échec." if failed else ".")
        )
        job.detail = [f"{uid} : {why}" for uid, why in list(failed.items())[:20]]
        job.state = "termine" if report.complete else "erreur"

    # -- progress for the page ----------------------------------------------------------------

    def jobs(self, launch_id: str) -> tuple[dict[int, Job], dict[int, Job]]:
        with self._lock:
            return dict(self.prefetch.get(launch_id, {})), dict(self.exports.get(launch_id, {}))

    def current_jobs(self, launch: Launch) -> tuple[dict[int, Job], dict[int, Job]]:
        """The launch's jobs, a finished prefetch whose images have left the cache since
        (purge, eviction, expiry) shown as such: the page must not say "Images prêtes"."""
        prefetch, exports = self.jobs(launch.id)
        cache = self.images.cache
        for exam in launch.exams:
            job, manifest = prefetch.get(exam.id), exam.manifest
            if job is None or job.state != "termine" or manifest is None:
                continue
            if not all(cache.holds(manifest.study_uid, s.series_uid) for s in manifest.series):
                job.state, job.done = "hors_cache", 0
                job.message = (
                    "Images retirées du cache de cette DRIMbox : elles seront récupérées de "
                    "nouveau à l'ouverture."
                )
        return prefetch, exports


def _same_user(session: Session, bound: str, mine: str) -> bool:
    """The launch's session and this one belong to the same professional (PSC subject): a
    user who signs in again after a logout or a refused refresh gets the launch back."""
    old, new = session.get(UserSession, bound), session.get(UserSession, mine)
    return old is not None and new is not None and old.subject == new.subject


# -- pages ----------------------------------------------------------------------------------

JOB_LABELS: Final = {
    "en_attente": "en attente",
    "en_cours": "en cours",
    "termine": "terminé",
    "erreur": "erreur",
    "refuse": "non contacté",
    "sans_images": "pas d'images",
    "hors_cache": "à récupérer de nouveau",
    "a_la_demande": "à l'ouverture",
}


# The INS identity traits (requirement INS/va1.36, spec §4.6.2), in the order and wording of
# every Conso page: the five shown by default, then those the user may ask for.
TRAITS_DEFAULT: Final = (
    "Nom de naissance",
    "Premier prénom de naissance",
    "Date de naissance",
    "Sexe",
    "Lieu de naissance (code INSEE)",
)
TRAITS_MORE: Final = (
    "Matricule INS",
    "Nature du matricule",
    "Prénoms de naissance",
    "Prénom utilisé",
    "Nom utilisé",
)


def identity_traits(context: LaunchContext, *, all_traits: bool = False) -> list[tuple[str, str]]:
    """The patient's INS identity traits as (label, value); a trait not transmitted is shown
    as such rather than left out, so that the block keeps its shape."""
    missing = "non transmis"
    traits = [
        context.family_name.upper(),
        context.given_names[0] if context.given_names else missing,
        french_date(context.birth_date),
        _SEX.get(context.gender, context.gender),
        context.district,
    ]
    if all_traits:
        nature = INS_OIDS.get(context.ins_oid, "")
        traits += [
            format_ins(context.ins),
            f"{nature} ({context.ins_oid})" if nature else context.ins_oid,
            " ".join(context.given_names) or missing,
            context.used_given_name or missing,
            (context.used_name or "").upper() or missing,
        ]
    return list(zip(TRAITS_DEFAULT + TRAITS_MORE, traits, strict=False))


def patient_banner(launch: Launch) -> dict[str, Any]:
    return patient_block(launch.context, all_traits=launch.all_traits)


def patient_block(context: LaunchContext, *, all_traits: bool = False) -> dict[str, Any]:
    """What `_patient.html` shows of the launch's patient."""
    first = context.given_names[0] if context.given_names else ""
    return {
        "name": f"{context.family_name.upper()} {first}".strip(),
        "traits": identity_traits(context, all_traits=all_traits),
        "all_traits": all_traits,
        "ipp": context.local_patient_id,
    }


def _job_view(job: Job | None) -> dict[str, Any]:
    job = job or Job()
    text = JOB_LABELS.get(job.state, job.state)
    if job.total:
        text += f" — {job.done}/{job.total}"
    if job.message:
        text += f" — {job.message}"
    return {"state": job.state, "done": job.done, "total": job.total, "text": text,
            "detail": list(job.detail)}  # fmt: skip


def _counts(series: int, images: int) -> str:
    if not series:
        return ""
    return (
        f"{french_number(series)} série{'s' if series > 1 else ''}, "
        f"{french_number(images)} image{'s' if images > 1 else ''}"
    )


def _exam_time(exam: ExamRow) -> datetime | None:
    when = exam.summary.get("date")
    return datetime.fromisoformat(when) if when else None


def _exam_day(exam: ExamRow) -> date | None:
    when = _exam_time(exam)
    return when.date() if when else None


def viewer_url(studies: Sequence[str], *, compare: bool = False) -> str:
    """OHIF on these studies (side by side with OHIF's comparison protocol)."""
    target = "/viewer?StudyInstanceUIDs=" + ",".join(quote(uid) for uid in studies)
    if compare:
        target += f"&hangingProtocolId={quote(COMPARE_PROTOCOL)}"
    return target


def _named_exam(launch: Launch) -> ExamRow | None:
    """The exam the launch names (`StudyInstanceUID`, else `AccessionNumber`), if in the
    history."""
    context = launch.context
    if context.study_instance_uid:
        found = next((e for e in launch.exams if e.study_uid == context.study_instance_uid), None)
        if found is not None:
            return found
    if context.accession_number:
        return next((e for e in launch.exams if e.accession == context.accession_number), None)
    return None


def _history_page(
    request: Request, service: ConsoService, launch: Launch, view: SessionView, notice: str = ""
) -> Response:
    base = f"{CONSULTATION_PATH}/{quote(launch.id)}"
    prefetch, exports = service.current_jobs(launch)
    # Filtered here, on the stored history: no new DMP query.
    wanted, problems = filter_from_query(request.query_params, launch.context)
    shown = [
        exam
        for exam in launch.exams
        if wanted.matches(
            _exam_day(exam), exam.summary.get("modalities", []), exam.summary.get("regions", [])
        )
    ]

    def row(exam: ExamRow) -> dict[str, Any]:
        s = exam.summary
        manifest = exam.manifest
        series = len(manifest.series) if manifest is not None else 0
        uid = quote(exam.study_uid)
        return {
            "id": exam.id,
            "study_uid": exam.study_uid,
            "when": french_date(_exam_time(exam)),  # with its time: two exams a day
            "modalities": ", ".join(s.get("modalities", [])),
            "regions": ", ".join(s.get("regions", [])),
            "title": s.get("description") or "Examen",
            "accession": exam.accession,
            "counts": _counts(series, manifest.instance_count if manifest is not None else 0),
            "warnings": s.get("warnings", []),
            "site": s.get("site", ""),
            "report_url": f"{base}/compte-rendu/{exam.id}" if exam.has_report else "",
            "images": exam.kos is not None and prefetch.get(exam.id, Job()).state != "refuse",
            "prefetch": _job_view(prefetch.get(exam.id)),
            "export": _job_view(exports[exam.id]) if exam.id in exports else None,
            "open_url": f"{base}/ouvrir/{uid}",
            "export_url": f"{base}/export/{uid}",
            "xdm_url": f"{base}/xdm/{uid}",
        }  # fmt: skip

    def choices(key: str, current: str | None) -> list[str]:
        values = {v for e in launch.exams for v in e.summary.get(key, [])}
        return sorted(values | ({current} if current else set()), key=str.casefold)

    named = _named_exam(launch)
    context = launch.context
    named_row = row(named) if named is not None else None
    if named_row is not None and named_row["images"]:
        # The named exam opens at once, in the viewer framed above the history: its study is
        # granted to this session now, its series come from the prefetch (named first) or,
        # missing from the cache, from its Source when OHIF asks for them.
        service.register(launch, view)
        service.sessions.grant(view.cookie, named_row["study_uid"])
        named_row["frame_url"] = viewer_url([named_row["study_uid"]])
    return render(
        request,
        "history.html",
        status=400 if problems else 200,
        title="Historique des examens",
        user=view.display_name,
        poll_url=f"{base}/etat",
        patient=patient_banner(launch),
        traits_url=f"{base}/traits",
        exams=[row(exam) for exam in shown],
        total=len(launch.exams),
        named=named_row,
        named_missing=named is None
        and bool(context.study_instance_uid or context.accession_number),
        filter=wanted,
        filter_errors=problems,
        modalities=choices("modalities", wanted.modality),
        regions=choices("regions", wanted.region),
        base=base,
        notice=notice or launch.notice,
        destinations=export_destinations(service.config),
        prefetch_note=_prefetch_note(prefetch, service.budget()),
    )


def _prefetch_note(jobs: dict[int, Job], budget: Budget) -> str:
    """One sentence above the history: how many exams are ready, and that the others are
    fetched when opened (and why)."""
    states = [job.state for job in jobs.values()]
    ready = states.count("termine")
    coming = states.count("en_attente") + states.count("en_cours")
    later = states.count("a_la_demande") + states.count("hors_cache")
    parts = [f"Images prêtes : {_exams(ready)}"]
    if coming:
        parts.append(f"en cours de préchargement : {_exams(coming)}")
    text = " ; ".join(parts) + "."
    if later:
        why = (
            f"préchargement limité à {_exams(budget.exams)} et {french_size(budget.max_bytes)} "
            "par consultation : l'examen demandé puis les antériorités de même modalité et "
            "région, les plus récentes d'abord"
            if budget.exams
            else "préchargement désactivé sur cette DRIMbox"
        )
        text += (
            f" {_exams(later, capital=True)} {'seront' if later > 1 else 'sera'} "
            f"récupéré{'s' if later > 1 else ''} à l'ouverture ({why})."
        )
    return text


def _exams(count: int, *, capital: bool = False) -> str:
    word = "examen" + ("s" if count > 1 else "")
    text = f"{french_number(count)} {word}" if count else f"aucun {word}"
    return text[:1].upper() + text[1:] if capital else text


def _error_page(
    request: Request,
    title: str,
    text: str,
    status: int,
    *,
    launch: Launch | None = None,
    user: str = "",
) -> Response:
    retry = (
        [(f"{CONSULTATION_PATH}/{quote(launch.id)}?actualiser=1", "Réessayer")]
        if launch is not None
        else []
    )
    return message(
        request,
        title,
        text,
        status=status,
        alert=True,
        links=retry,
        user=user,
        patient=patient_banner(launch) if launch is not None else None,
    )


def _remote(request: Request) -> str:
    return request.client.host if request.client else ""


def _no_such_exam(request: Request, launch: Launch, user: str) -> Response:
    return _error_page(
        request,
        "Examen introuvable",
        "Cet examen n'a pas d'images partagées pour ce patient.",
        404,
        launch=launch,
        user=user,
    )


# -- routes ---------------------------------------------------------------------------------


def conso_router(service: ConsoService) -> APIRouter:
    router = APIRouter()
    sessions = service.sessions

    def login(request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{LOGIN_PATH}?{urlencode({'next': target})}", status_code=303)

    def signed_in(request: Request) -> SessionView | None:
        return sessions.view(request.cookies.get(SESSION_COOKIE, ""))

    def opened(request: Request, launch_id: str) -> tuple[SessionView, Launch] | Response:
        view = signed_in(request)
        if view is None:
            return login(request)
        try:
            return view, service.open_launch(launch_id, view.cookie)
        except LaunchRefused as refused:
            audit.record(service.db, actor=view.subject_name_id, role="user",
                         action="launch_open", result="refused", patient_ins=refused.patient_ins,
                         remote=_remote(request), status=refused.status, reason=str(refused),
                         launch=ref(launch_id))  # fmt: skip
            return _error_page(
                request, refused.title, str(refused), refused.status, user=view.display_name
            )

    @router.post(LAUNCH_PATH)
    async def launch(request: Request) -> Response:
        body = await request.body()
        try:
            context = parse_launch(body)
        except InvalidLaunch as invalid:
            return refused_launch(request, invalid)
        origin = request_origin(request.headers)
        if origin not in service.config.conso.launch_origins:
            # Any page can post this form: nothing reaches the DMP before the user confirms.
            audit.record(service.db, actor=LAUNCH_ACTOR, role="user", action="launch",
                         result="refused", patient_ins=context.ins, remote=_remote(request),
                         reason=f"origine non déclarée ({origin or 'absente'}) : confirmation "
                         "demandée à l'utilisateur", origin=origin)  # fmt: skip
            return render(
                request,
                "launch_confirm.html",
                title="Ouvrir le dossier de ce patient ?",
                patient=patient_block(context),
                origin=origin,
                fields=form_fields(body),
                confirm_url=LAUNCH_CONFIRM_PATH,
            )
        return accepted_launch(request, context, "lancement accepté")

    @router.post(LAUNCH_CONFIRM_PATH)
    async def confirm_launch(request: Request) -> Response:
        """The launch form posted again by the confirmation page (same origin: checked by
        `SameOriginPosts`, as every POST of the origin)."""
        try:
            context = parse_launch(await request.body())
        except InvalidLaunch as invalid:
            return refused_launch(request, invalid)
        return accepted_launch(request, context, "lancement confirmé par l'utilisateur")

    def refused_launch(request: Request, invalid: InvalidLaunch) -> Response:
        # Posted from the user's browser before any sign-in: nobody to name yet.
        audit.record(service.db, actor=LAUNCH_ACTOR, role="user", action="launch",
                     result="refused", patient_ins=invalid.ins, remote=_remote(request),
                     reason=[e.message for e in invalid.errors])  # fmt: skip
        # The fields only, never their values: the statistics leave the site.
        faulty = ", ".join(dict.fromkeys(e.field or e.message for e in invalid.errors))
        record_launch(service.db, ok=False, reason=f"formulaire invalide : {faulty}")
        return message(
            request,
            "Lancement refusé",
            "Le logiciel qui a lancé la consultation a envoyé un formulaire incomplet ou "
            "invalide :",
            status=400,
            alert=True,
            items=[e.message for e in invalid.errors],
            after=[
                "Corrigez la demande (ou signalez-la au service informatique) puis relancez "
                "la consultation."
            ],
        )

    def accepted_launch(request: Request, context: LaunchContext, reason: str) -> Response:
        launch_id = service.store_launch(context)
        audit.record(service.db, actor=LAUNCH_ACTOR, role="user", action="launch", result="ok",
                     patient_ins=context.ins, study_uid=context.study_instance_uid or "",
                     remote=_remote(request), launch=ref(launch_id),
                     reason=reason, consent=context.consent,
                     accession=context.accession_number or "", modality=context.modality or "",
                     study_date=context.study_date.isoformat() if context.study_date else "",
                     region=context.anatomic_region or "")  # fmt: skip
        record_launch(service.db, ok=True)
        return RedirectResponse(f"{CONSULTATION_PATH}/{launch_id}", status_code=303)

    @router.get(CONSULTATION_PATH + "/{launch_id}")
    def consultation(request: Request, launch_id: str, actualiser: str = "") -> Response:
        found = opened(request, launch_id)
        if isinstance(found, Response):
            return found
        view, current = found
        if view.situation_key is None and (key := service.situation_of_launch(current, view)):
            service.sessions.choose_situation(view.cookie, key)
            view = replace(view, situation_key=key)
        try:
            service.subject(view)
        except UserInfoError as exc:
            if not view.user.situations():
                return _error_page(request, "Accès impossible", f"{str(exc)[:1].upper()}"
                                   f"{str(exc)[1:]}.", 403, user=view.display_name)  # fmt: skip
            target = f"{CONSULTATION_PATH}/{launch_id}"
            return RedirectResponse(
                f"{SITUATION_PATH}?{urlencode({'next': target})}", status_code=303
            )
        if not current.history_loaded or actualiser:
            try:
                current = service.load_history(current, view)
            except ConsoError as error:
                return _error_page(
                    request,
                    _ERROR_TITLES.get(error.code, "Consultation du DMP impossible"),
                    error.message,
                    _ERROR_STATUS.get(error.code, 502),
                    launch=current,
                    user=view.display_name,
                )
        else:
            # The stored history shown again (no DMP call): still a look at the patient's exams.
            audit.record(service.db, actor=view.subject_name_id, role="user",
                         action="history_view", result="ok", patient_ins=current.context.ins,
                         remote=_remote(request), launch=ref(launch_id),
                         exams=len(current.exams))  # fmt: skip
            if current.id not in service.prefetch:
                service.start_prefetch(current, view)  # another node loaded it, or a restart
        return _history_page(request, service, current, view)

    @router.post(CONSULTATION_PATH + "/{launch_id}/traits")
    async def traits(request: Request, launch_id: str) -> Response:
        """The professional's choice of identity traits (all, or the five by default), kept
        for them across launches, sessions and nodes."""
        found = opened(request, launch_id)
        if isinstance(found, Response):
            return found
        view, current = found
        choice = parse_qs((await request.body()).decode("ascii", "replace")).get("tous", [""])
        if choice[-1] not in ("0", "1"):
            return _error_page(request, "Choix invalide",
                               "Choix des traits d'identité invalide : « tous » vaut 0 ou 1.",
                               400, launch=current, user=view.display_name)  # fmt: skip
        service.set_all_traits(view, choice[-1] == "1")
        return RedirectResponse(
            f"{CONSULTATION_PATH}/{quote(current.id)}#identite", status_code=303
        )

    @router.get(CONSULTATION_PATH + "/{launch_id}/etat")
    def progress(request: Request, launch_id: str) -> Response:
        view = signed_in(request)
        if view is None:
            return JSONResponse({"erreur": "session absente"}, status_code=401)
        try:
            current = service.open_launch(launch_id, view.cookie)
        except LaunchRefused as refused:
            return JSONResponse({"erreur": str(refused)}, status_code=refused.status)
        prefetch, exports = service.current_jobs(current)
        summary = service.summaries.get(current.id)
        return JSONResponse(
            {
                "images": {str(k): v.as_json() for k, v in prefetch.items()},
                "exports": {str(k): v.as_json() for k, v in exports.items()},
                "prechargement": summary.as_json() if summary is not None else None,
            },
            headers={"Cache-Control": "no-store"},
        )

    @router.get(CONSULTATION_PATH + "/{launch_id}/compte-rendu/{exam_id}")
    def report(request: Request, launch_id: str, exam_id: str) -> Response:
        found = opened(request, launch_id)
        if isinstance(found, Response):
            return found
        view, current = found
        number = row_id(exam_id)
        cda = service.report(current, number) if number is not None else None
        if cda is None:
            return _error_page(
                request, "Compte rendu introuvable",
                "Ce compte rendu n'existe pas pour ce patient.", 404,
                launch=current, user=view.display_name,
            )  # fmt: skip
        exam = next((e for e in current.exams if e.id == number), None)
        db_auditor(service.db, view.subject_name_id)(
            action="report_view",
            result="ok",
            patient_ins=current.context.ins,
            study_uid=exam.study_uid if exam else "",
        )
        kind, content = report_body(cda)
        if kind == "pdf" and isinstance(content, bytes):
            return Response(
                content,
                media_type="application/pdf",
                headers={
                    "Content-Disposition": 'inline; filename="compte-rendu.pdf"',
                    "Cache-Control": "no-store",
                },
            )
        text = content if isinstance(content, str) and content else "(compte rendu sans texte)"
        return render(
            request,
            "report.html",
            title="Compte rendu",
            user=view.display_name,
            patient=patient_banner(current),
            text=text,
            back=f"{CONSULTATION_PATH}/{quote(current.id)}",
        )

    def open_viewer(
        request: Request, launch_id: str, studies: list[str], compare: bool
    ) -> Response:
        found = opened(request, launch_id)
        if isinstance(found, Response):
            return found
        view, current = found
        exams = [current.exam(uid) for uid in studies]
        if not studies or any(e is None for e in exams):
            return _no_such_exam(request, current, view.display_name)
        service.register(current, view)
        for uid in studies:
            sessions.grant(view.cookie, uid)
        service.fetch_on_demand(current, studies)
        return RedirectResponse(viewer_url(studies, compare=compare), status_code=303)

    @router.get(CONSULTATION_PATH + "/{launch_id}/ouvrir/{study_uid}")
    def open_one(request: Request, launch_id: str, study_uid: str) -> Response:
        return open_viewer(request, launch_id, [study_uid], False)

    @router.get(CONSULTATION_PATH + "/{launch_id}/comparer")
    def compare(request: Request, launch_id: str) -> Response:
        studies = list(dict.fromkeys(request.query_params.getlist("etude")))
        if len(studies) != 2:
            found = opened(request, launch_id)
            if isinstance(found, Response):
                return found
            view, current = found
            return _history_page(
                request,
                service,
                current,
                view,
                notice=f"Comparaison impossible : vous avez sélectionné {len(studies)} examen"
                f"{'s' if len(studies) > 1 else ''}. Cochez exactement deux examens avec images, "
                "puis « Comparer les deux examens sélectionnés ».",
            )
        return open_viewer(request, launch_id, studies, True)

    @router.post(CONSULTATION_PATH + "/{launch_id}/export/{study_uid}")
    async def export(request: Request, launch_id: str, study_uid: str) -> Response:
        # The history page names each row's choice `destination_<study>`; API clients send
        # `destination`. Absent: the PACS.
        form = await request.form()
        chosen = form.get(f"destination_{study_uid}") or form.get("destination")
        destination = chosen if isinstance(chosen, str) and chosen else PACS_DESTINATION
        return await run_in_threadpool(start_export, request, launch_id, study_uid, destination)

    def start_export(
        request: Request, launch_id: str, study_uid: str, destination: str
    ) -> Response:
        if signed_in(request) is None:
            return JSONResponse({"erreur": "session absente"}, status_code=401)
        found = opened(request, launch_id)
        if isinstance(found, Response):
            return found
        view, current = found
        exam = current.exam(study_uid)
        if exam is None:
            return _no_such_exam(request, current, view.display_name)
        if not current.context.local_patient_id:
            return _error_page(
                request,
                "Export impossible",
                "L'identifiant local du patient (IPP) n'a pas été transmis au lancement.",
                400,
                launch=current,
                user=view.display_name,
            )
        known = export_destinations(service.config)
        if destination not in known:
            return _error_page(
                request,
                "Export impossible",
                f"Destination d'export inconnue : « {destination} ». Destinations configurées : "
                + ", ".join(f"« {name} »" for name in known)
                + ".",
                400,
                launch=current,
                user=view.display_name,
            )
        service.start_export(current, exam, view, destination)
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"export": "en_cours"}, status_code=202)
        return RedirectResponse(
            f"{CONSULTATION_PATH}/{quote(current.id)}#export-state-{exam.id}", status_code=303
        )

    @router.get(CONSULTATION_PATH + "/{launch_id}/xdm/{study_uid}")
    def xdm(request: Request, launch_id: str, study_uid: str) -> Response:
        """The exam as an IHE XDM archive (ITI-32): KOS, report and images, for a physical medium
        or a secure transfer."""
        found = opened(request, launch_id)
        if isinstance(found, Response):
            return found
        view, current = found
        exam = current.exam(study_uid)
        if exam is None or exam.kos is None or exam.manifest is None:
            return _no_such_exam(request, current, view.display_name)
        documents = [XdmDocument("kos", exam.kos, exam.manifest.sop_instance_uid,
                                 title="Manifeste d'images")]  # fmt: skip
        cda = service.report(current, exam.id) if exam.has_report else None
        if cda is not None:
            documents.append(XdmDocument("report", cda, f"{exam.study_uid}.cr",
                                         title="Compte rendu"))  # fmt: skip
        context = current.context
        archive = tempfile.SpooledTemporaryFile(max_size=64 * 1024**2)  # noqa: SIM115
        try:
            service.register(current, view)
            with service.pinned_instances(exam.manifest) as instances:
                write_xdm(
                    archive,
                    XdmPatient(context.ins, context.ins_oid, context.display_name),
                    documents,
                    images=instances,
                    source_id=service.config.site.uid_root,
                    submission_unique_id=f"{service.config.site.uid_root}.8.{exam.id}",
                )
        except (ConsoError, RemoteSourceError) as exc:
            archive.close()
            return _error_page(request, "Archive impossible", str(exc), 503, launch=current,
                               user=view.display_name)  # fmt: skip
        db_auditor(service.db, view.subject_name_id)(
            action="xdm_export", result="ok", patient_ins=context.ins, study_uid=exam.study_uid,
            nbytes=archive.tell(),
        )  # fmt: skip
        archive.seek(0)

        def chunks() -> Iterator[bytes]:
            with archive:
                while block := archive.read(1024 * 1024):
                    yield block

        name = f"examen-{exam.accession or exam.id}.zip"
        return StreamingResponse(
            chunks(),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{name}"',
                     "Cache-Control": "no-store"},
        )  # fmt: skip

    return router


def export_destinations(config: Config) -> list[str]:
    """The names offered in « Exporter vers », the PACS first (the default)."""
    return [PACS_DESTINATION, *(d.name for d in config.export_destinations)]


def export_target(config: Config, destination: str = PACS_DESTINATION) -> Target:
    """Where an export goes: the local PACS by C-STORE or by its DICOMweb STOW-RS (`[conso]
    export`), or the `[[export_destinations]]` entry of that name. Raises `ValueError` (French)
    for an unknown name or an unreadable CA file."""
    if destination == PACS_DESTINATION:
        if config.conso.export == "stow-rs":
            return StowRsTarget(config.pacs.dicomweb_url, verify=dicomweb_tls(config))
        return CStoreTarget(PacsClient(pacs_settings(config)))
    found = [d for d in config.export_destinations if d.name == destination]
    if not found:
        raise ValueError(f"destination d'export inconnue « {destination} »")
    return _destination_target(config, found[0])


def _destination_target(config: Config, destination: ExportDestinationConfig) -> Target:
    if destination.kind == "stow-rs":
        key = f"« {destination.name} » ca_file"
        verify = trusted_authorities(destination.ca_file, key)
        return StowRsTarget(destination.url, verify=verify, name=destination.name)
    settings = replace(
        pacs_settings(config),
        host=destination.host,
        port=destination.port,
        called_aet=destination.called_aet,
        calling_aet=destination.calling_aet or config.pacs.calling_aet,
    )
    return CStoreTarget(PacsClient(settings), name=destination.name)
