"""The patient's exam history from the DMP, as the signed-in professional sees it.

Owns the consultation sequence — TD0.2 (does the DMP exist, is this professional authorised),
TD0.3 `AJOUT` when the DMP says the authorisation is missing, ITI-18 FindDocuments (KOS and
imaging reports, with modality/region/date filters) or FindDocumentsByReferenceId (study UID,
accession), ITI-43 of each KOS (and of the reports when asked) — and the pairing of KOS and
reports into `Exam` rows through their referenceIdList (study UID first, then accession).
Every DMP failure becomes a `ConsoError` whose code the web layer maps to a page:
`OPPOSITION`, `PAS_DE_DMP`, `ACCES_REFUSE`, `DMP_INJOIGNABLE`, `DMP_ERREUR`.

It must not choose the professional (the caller gives the `VihfSubject` of the PSC user), keep
state between calls, nor contact Source boxes (`retrieval` does).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Final
from urllib.parse import urlsplit

from pydicom.dataset import Dataset

from drimbox.cda.model import Code, Identifier, ImagingReport
from drimbox.cda.parser import CdaError, parse_report
from drimbox.conso.common import Auditor, ConsoError, no_audit
from drimbox.conso.launch import LaunchContext
from drimbox.dicom.kos import manifest_from_bytes
from drimbox.dicom.model import is_uid
from drimbox.dmp import codes
from drimbox.dmp.client import DmpClient, DmpError
from drimbox.dmp.metadata import DocumentEntry
from drimbox.dmp.vihf import VihfSubject
from drimbox.errors import InternalError
from drimbox.logs import ref

log = logging.getLogger(__name__)

# Imaging reports as the RIS publishes them (ClinicalDocument/code, LOINC "CR d'imagerie").
REPORT_TYPE_CODES: Final[tuple[Code, ...]] = (
    Code("18748-4", "2.16.840.1.113883.6.1", "CR d'imagerie médicale"),
)
AUTHORISED: Final = "VALIDE"
FORBIDDEN: Final = frozenset({"INTERDIT", "BLOQUE", "REFUSE"})

# DMP errors that mean "this professional may not see this DMP".
_ACCESS_CODES: Final = frozenset({"DMPAccesRefuse", "HTTP_401", "HTTP_403"})
_NO_DMP_CODES: Final = frozenset({"XDSUnknownPatientId"})


@dataclass(frozen=True)
class HistoryQuery:
    """Whose history, with which filters. `date_from`/`date_to` bound the exam date
    (inclusive days). `accession_issuer` (an OID) lets the DMP match the accession exactly;
    without it the accession is matched on the value alone, here."""

    ins: str
    ins_oid: str
    consent: bool = True
    modality: str | None = None
    region: Code | None = None
    date_from: date | None = None
    date_to: date | None = None
    accession: str | None = None
    accession_issuer: str | None = None
    study_uid: str | None = None

    @classmethod
    def from_launch(cls, launch: LaunchContext, *, focus: bool = False) -> HistoryQuery:
        """The whole history of the launched patient; with `focus`, only the exam the RIS named
        (study UID / accession / modality / date of the launch)."""
        if not focus:
            return cls(launch.ins, launch.ins_oid, launch.consent)
        return cls(
            launch.ins,
            launch.ins_oid,
            launch.consent,
            modality=launch.modality,
            date_from=launch.study_date,
            date_to=launch.study_date,
            accession=launch.accession_number,
            study_uid=launch.study_instance_uid,
        )


@dataclass(frozen=True)
class SeriesRef:
    """One series of a KOS: where to fetch it and which instances it must contain."""

    study_uid: str
    series_uid: str
    retrieve_url: str
    instances: tuple[tuple[str, str], ...]  # (SOP Class UID, SOP Instance UID)

    @property
    def source_base_url(self) -> str:
        parts = urlsplit(self.retrieve_url)
        return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


@dataclass(frozen=True)
class Manifest:
    """What the Conso needs of a KOS: identity, study, series and their RetrieveURLs."""

    sop_instance_uid: str
    patient_id: str
    study_uid: str
    accession: str
    description: str
    series: tuple[SeriesRef, ...]
    data: bytes = field(repr=False)

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)

    @property
    def source_base_urls(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.source_base_url for s in self.series if s.source_base_url))


def read_manifest(data: bytes) -> Manifest:
    """Parse a KOS (Part-10 bytes) into a `Manifest`. Raises `ConsoError` (`KOS_ILLISIBLE`)."""
    try:
        ds = manifest_from_bytes(data)
        # pydicom decodes lazily: decode every element now, so that what bad bytes make it
        # raise (it raises many kinds) is a refusal here and anything later a bug of ours.
        for element in ds.iterall():
            _ = element.value
    except Exception as exc:
        raise ConsoError(
            "KOS_ILLISIBLE", "Le manifeste (KOS) de l'examen est illisible.", detail=str(exc)
        ) from exc
    try:
        return _manifest(ds, data)
    except ConsoError:
        raise
    except Exception as exc:
        log.exception("unexpected error while reading a KOS")
        raise KosInternalError(
            "KOS_ILLISIBLE", "Le manifeste (KOS) de l'examen est illisible.", detail=repr(exc)
        ) from exc


class KosInternalError(ConsoError, InternalError):
    """A decoded KOS the reader failed on: a bug of the box, not of the KOS."""


def _manifest(ds: Dataset, data: bytes) -> Manifest:
    series: list[SeriesRef] = []
    study_uid = str(ds.get("StudyInstanceUID", ""))
    for study_item in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
        item_study = str(study_item.get("StudyInstanceUID", study_uid))
        for series_item in study_item.get("ReferencedSeriesSequence", []):
            series.append(
                SeriesRef(
                    study_uid=item_study,
                    series_uid=str(series_item.get("SeriesInstanceUID", "")),
                    retrieve_url=str(series_item.get("RetrieveURL", "") or ""),
                    instances=tuple(
                        (
                            str(ref.get("ReferencedSOPClassUID", "")),
                            str(ref.get("ReferencedSOPInstanceUID", "")),
                        )
                        for ref in series_item.get("ReferencedSOPSequence", [])
                    ),
                )
            )
    accession = ""
    for request in ds.get("ReferencedRequestSequence", []):
        accession = accession or str(request.get("AccessionNumber", "") or "")
    description = ""
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "TEXT":
            description = str(item.get("TextValue", ""))
            break
    if not study_uid or not series:
        raise ConsoError(
            "KOS_ILLISIBLE",
            "Le manifeste (KOS) de l'examen ne référence aucune série.",
            detail=f"KOS {ds.get('SOPInstanceUID', '?')}",
        )
    # These UIDs go into the Source's URLs and the cache's paths: a damaged one is refused
    # here rather than sent on, and nothing decoded from bad bytes is passed off as a UID.
    uids = [study_uid] + [u for s in series for u in (s.study_uid, s.series_uid)]
    uids += [uid for s in series for _sop_class, uid in s.instances]
    if bad := next((uid for uid in uids if not is_uid(uid)), None):
        raise ConsoError(
            "KOS_ILLISIBLE",
            "Le manifeste (KOS) de l'examen contient un UID DICOM invalide.",
            detail=f"KOS {ds.get('SOPInstanceUID', '?')} : « {bad[:80]!r} »",
        )
    return Manifest(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        patient_id=str(ds.get("PatientID", "")),
        study_uid=study_uid,
        accession=accession,
        description=description,
        series=tuple(series),
        data=data,
    )


@dataclass
class Exam:
    """One row of the history: a KOS and/or a report of the same exam."""

    study_uid: str
    accession: str
    date: datetime | None
    modalities: tuple[str, ...]
    regions: tuple[str, ...]
    description: str
    site: str  # the author institution's name
    kos_entry: DocumentEntry | None = None
    report_entry: DocumentEntry | None = None
    manifest: Manifest | None = None
    report_bytes: bytes | None = field(default=None, repr=False)
    report: ImagingReport | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def source_base_urls(self) -> tuple[str, ...]:
        return self.manifest.source_base_urls if self.manifest else ()

    @property
    def has_images(self) -> bool:
        return self.manifest is not None


@dataclass(frozen=True)
class History:
    ins: str
    ins_oid: str
    exams: tuple[Exam, ...]
    authorisation_added: bool  # TD0.3 was needed (and done) for this consultation
    notice: str = ""  # why the history may be incomplete (French), shown above it


DMP_UNREACHABLE_NOTICE: Final = (
    "Le DMP n'a pas pu être joint : seuls les examens pré-intégrés sur cette DRIMbox sont "
    "affichés. Réessayez plus tard pour l'historique complet."
)


def _newest_first(exams: Sequence[Exam]) -> tuple[Exam, ...]:
    return tuple(
        sorted(exams, key=lambda e: e.date or datetime.min.replace(tzinfo=UTC), reverse=True)
    )


def _wanted(exam: Exam, query: HistoryQuery) -> bool:
    """Whether a pre-integrated exam passes the query's filters (the DMP applies them to its
    own entries)."""
    day = exam.date.date() if exam.date else None
    return (
        (not query.study_uid or exam.study_uid == query.study_uid)
        and (not query.accession or exam.accession == query.accession)
        and (not query.modality or query.modality in exam.modalities)
        and (not query.date_from or (day is not None and day >= query.date_from))
        and (not query.date_to or (day is not None and day <= query.date_to))
    )


def _dmp_error(exc: DmpError) -> ConsoError:
    code = exc.code or ""
    if code in _NO_DMP_CODES:
        return ConsoError("PAS_DE_DMP", "Ce patient n'a pas de DMP.", detail=exc.detail)
    if code in _ACCESS_CODES or "AccesRefuse" in code:
        return ConsoError(
            "ACCES_REFUSE",
            "Accès refusé au DMP de ce patient (pas d'autorisation, ou le patient s'y est opposé).",
            detail=f"{code}: {exc.detail}",
        )
    if exc.retryable:
        return ConsoError(
            "DMP_INJOIGNABLE",
            "DMP injoignable pour le moment : réessayez dans quelques minutes.",
            detail=f"{code}: {exc.detail}",
            retryable=True,
        )
    return ConsoError(
        "DMP_ERREUR", f"Le DMP a refusé la demande : {exc.message}", detail=exc.detail
    )


def _name_of_institution(xon: str) -> str:
    return xon.split("^", 1)[0].replace("\\T\\", "&").strip()


def _regions(entry: DocumentEntry | None) -> tuple[str, ...]:
    """The anatomic regions among the eventCodeList, without the CCAM act that shares a
    coding scheme with them (the history shows the act as the exam's description)."""
    if entry is None:
        return ()
    return tuple(
        dict.fromkeys(
            c.display_name or c.code
            for c in entry.event_codes
            if c.code_system in _REGION_SYSTEMS
            and not (c.code_system == codes.CCAM_SYSTEM and _CCAM_ACT.fullmatch(c.code))
        )
    )


_MODALITY_SYSTEMS: Final = frozenset({codes.MODALITY_VALUE_SET, "1.2.840.10008.2.16.4"})
_REGION_SYSTEMS: Final = frozenset({*codes.REGION_SYSTEMS_KEPT, "2.16.840.1.113883.6.96"})
_CCAM_ACT: Final = re.compile(r"[A-Z]{4}\d{3}")  # an act (ACQH004), not a region


def _entry_modalities(entry: DocumentEntry | None) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(
        dict.fromkeys(c.code for c in entry.event_codes if c.code_system in _MODALITY_SYSTEMS)
    )


class ExamHistory:
    """Reads a patient's imaging history from the DMP for one professional.

    `dmp` is the node's `DmpClient` (connections and signer shared); `subject` the signed-in
    professional; `audit` records each query (who, which patient, result)."""

    def __init__(
        self,
        dmp: DmpClient,
        subject: VihfSubject,
        *,
        audit: Auditor = no_audit,
        report_type_codes: Sequence[Code] = REPORT_TYPE_CODES,
        add_authorisation: bool = True,
    ) -> None:
        self._dmp = dmp.as_subject(subject)
        self.subject = subject
        self._audit = audit
        self._report_types = tuple(report_type_codes)
        self._add_authorisation = add_authorisation

    # -- access ----------------------------------------------------------------------------

    def check_access(self, ins: str, ins_oid: str) -> bool:
        """TD0.2, then TD0.3 when the authorisation is missing. Returns whether TD0.3 was done.
        Raises `ConsoError` PAS_DE_DMP, ACCES_REFUSE or DMP_INJOIGNABLE."""
        try:
            status = self._dmp.patient_status(ins, ins_oid)
        except DmpError as exc:
            raise _dmp_error(exc) from exc
        if not status.exists:
            raise ConsoError(
                "PAS_DE_DMP",
                "Ce patient n'a pas de DMP : aucun examen partagé à afficher.",
                detail=f"TD0.2 {status.query_response_code} {status.detail}".strip(),
            )
        state = (status.authorization or "").upper()
        if state == AUTHORISED:
            return False
        if state in FORBIDDEN:
            raise ConsoError(
                "ACCES_REFUSE",
                "Le patient a interdit l'accès de ce professionnel à son DMP.",
                detail=f"TD0.2 AUTORISATION={state}",
            )
        if not self._add_authorisation:
            raise ConsoError(
                "ACCES_REFUSE",
                "Vous n'êtes pas autorisé à consulter le DMP de ce patient.",
                detail=f"TD0.2 AUTORISATION={state or '(absent)'}",
            )
        try:
            result = self._dmp.set_authorization(ins, ins_oid, action="AJOUT")
        except DmpError as exc:
            raise _dmp_error(exc) from exc
        if result.status.upper() != "OK":
            raise ConsoError(
                "ACCES_REFUSE",
                "Le DMP a refusé d'enregistrer votre autorisation d'accès à ce dossier.",
                detail=f"TD0.3 {result.status}: {result.detail}",
            )
        return True

    # -- queries ---------------------------------------------------------------------------

    def _find(self, query: HistoryQuery) -> tuple[list[DocumentEntry], list[DocumentEntry]]:
        ins, oid = query.ins, query.ins_oid
        start = datetime.combine(query.date_from, time.min, tzinfo=UTC) if query.date_from else None
        stop = (
            datetime.combine(query.date_to + timedelta(days=1), time.min, tzinfo=UTC)
            if query.date_to
            else None
        )
        try:
            if query.study_uid or (query.accession and query.accession_issuer):
                accession = (
                    Identifier(query.accession_issuer, query.accession)
                    if query.accession and query.accession_issuer
                    else None
                )
                found = self._dmp.find_by_reference_id(
                    ins, oid, accession=accession, study_instance_uid=query.study_uid
                )
                kos = [e for e in found if e.is_kos]
                reports = [e for e in found if self._is_report(e)]
            else:
                kos = self._dmp.find_documents(
                    ins,
                    oid,
                    type_codes=[codes.KOS_TYPE],
                    modalities=[query.modality] if query.modality else [],
                    regions=[query.region] if query.region else [],
                    service_from=start,
                    service_to=stop,
                )
                # Reports without event-code filters: a RIS may code modality/region
                # differently from the KOS; pairing with the filtered KOS selects them.
                reports = self._dmp.find_documents(
                    ins, oid, type_codes=self._report_types, service_from=start, service_to=stop
                )
        except DmpError as exc:
            raise _dmp_error(exc) from exc
        return kos, reports

    def _is_report(self, entry: DocumentEntry) -> bool:
        return entry.type_code is not None and any(
            entry.type_code.code == t.code and entry.type_code.code_system == t.code_system
            for t in self._report_types
        )

    def _retrieve(self, entry: DocumentEntry, ins: str, oid: str) -> bytes:
        try:
            return self._dmp.retrieve(
                entry.repository_unique_id, entry.unique_id, patient_ins=ins, ins_oid=oid
            )
        except DmpError as exc:
            raise _dmp_error(exc) from exc

    def load(
        self,
        query: HistoryQuery,
        *,
        with_reports: bool = False,
        imported: Sequence[Exam] = (),
    ) -> History:
        """The exams of the patient, most recent first. With `with_reports`, each report's CDA
        is retrieved and parsed too (its text/PDF body for the history page). `imported`: the
        patient's pre-integrated exams (`conso.imported`), listed unless the DMP gave the same
        KOS, and alone (with a notice) when the DMP cannot be reached."""
        imported = [exam for exam in imported if _wanted(exam, query)]
        if not query.consent:
            raise ConsoError(
                "OPPOSITION",
                "Le patient n'a pas été informé ou s'est opposé à la consultation de son DMP : "
                "consultation impossible.",
            )
        try:
            added = self.check_access(query.ins, query.ins_oid)
            kos_entries, report_entries = self._find(query)
            exams = self._pair(kos_entries, report_entries, query)
            for exam in exams:
                if exam.kos_entry is not None:
                    self._attach_manifest(exam, query)
                if with_reports and exam.report_entry is not None:
                    self._attach_report(exam, query)
        except ConsoError as error:
            self._audit(
                action="dmp_history",
                result="refused" if error.code in ("PAS_DE_DMP", "ACCES_REFUSE") else "error",
                patient_ins=query.ins,
                code=error.code,
            )
            if error.code != "DMP_INJOIGNABLE" or not imported:
                raise
            alone = _newest_first(imported)
            return History(query.ins, query.ins_oid, alone, False, DMP_UNREACHABLE_NOTICE)
        known = {e.manifest.sop_instance_uid for e in exams if e.manifest is not None}
        exams += [e for e in imported if e.manifest and e.manifest.sop_instance_uid not in known]
        self._audit(
            action="dmp_history",
            result="ok",
            patient_ins=query.ins,
            exams=len(exams),
            authorisation_added=added,
        )
        return History(query.ins, query.ins_oid, _newest_first(exams), added)

    def _pair(
        self, kos_entries: list[DocumentEntry], reports: list[DocumentEntry], query: HistoryQuery
    ) -> list[Exam]:
        exams: list[Exam] = []
        by_study: dict[str, Exam] = {}
        by_accession: dict[str, Exam] = {}
        for entry in kos_entries:
            exam = self._exam(entry, None)
            exams.append(exam)
            if exam.study_uid:
                by_study.setdefault(exam.study_uid, exam)
            if exam.accession:
                by_accession.setdefault(exam.accession, exam)
        filtered = bool(query.modality or query.region)
        for entry in reports:
            study = entry.reference(codes.REF_STUDY_UID) or ""
            accession = entry.reference(codes.REF_ACCESSION) or ""
            match = by_study.get(study) if study else None
            if match is None and accession:
                match = by_accession.get(accession)
            if match is not None and match.report_entry is None:
                match.report_entry = entry
                match.description = match.description or entry.title
                match.date = match.date or entry.service_start
                continue
            if match is not None:  # a second report for one exam (addendum): keep it visible
                log.info("second report %s for study %s", entry.unique_id, match.study_uid)
            if filtered:
                continue  # no KOS matched the modality/region filter
            exams.append(self._exam(None, entry))
        if query.accession:
            exams = [e for e in exams if e.accession == query.accession]
        if query.study_uid:
            exams = [e for e in exams if e.study_uid == query.study_uid]
        return exams

    @staticmethod
    def _exam(kos: DocumentEntry | None, report: DocumentEntry | None) -> Exam:
        entry = kos or report
        assert entry is not None
        institutions = entry.author_institutions
        return Exam(
            study_uid=entry.reference(codes.REF_STUDY_UID) or "",
            accession=entry.reference(codes.REF_ACCESSION) or "",
            date=entry.service_start,
            modalities=_entry_modalities(entry),
            regions=_regions(entry),
            description=report.title if report is not None else "",
            site=_name_of_institution(institutions[0]) if institutions else "",
            kos_entry=kos,
            report_entry=report,
        )

    def _attach_manifest(self, exam: Exam, query: HistoryQuery) -> None:
        assert exam.kos_entry is not None
        try:
            manifest = read_manifest(self._retrieve(exam.kos_entry, query.ins, query.ins_oid))
        except ConsoError as error:
            if error.code != "KOS_ILLISIBLE":
                raise
            exam.warnings.append(error.message)
            return
        # Identity safety: a KOS filed under this INS must carry it (ARCHITECTURE §2.3).
        if manifest.patient_id and manifest.patient_id != query.ins:
            exam.warnings.append(
                "Le manifeste de cet examen désigne un autre patient : images non proposées."
            )
            log.warning(
                "KOS %s of patient %s carries the PatientID of patient %s",
                manifest.sop_instance_uid,
                ref(query.ins),
                ref(manifest.patient_id),
            )
            return
        exam.manifest = manifest
        exam.study_uid = exam.study_uid or manifest.study_uid
        exam.accession = exam.accession or manifest.accession
        if manifest.description and not exam.description:
            exam.description = manifest.description

    def _attach_report(self, exam: Exam, query: HistoryQuery) -> None:
        assert exam.report_entry is not None
        data = self._retrieve(exam.report_entry, query.ins, query.ins_oid)
        exam.report_bytes = data
        try:
            report = parse_report(data)
        except CdaError as exc:
            exam.warnings.append("Le compte rendu n'a pas pu être lu (CDA non conforme).")
            log.warning("report %s unreadable: %s", exam.report_entry.unique_id, exc)
            return
        exam.report = report
        if report.act_code is not None and report.act_code.display_name:
            exam.description = report.act_code.display_name
        if not exam.regions and report.regions:
            exam.regions = tuple(c.display_name or c.code for c in report.regions)
        if not exam.modalities and report.modalities:
            exam.modalities = tuple(c.code for c in report.modalities)


def load_history(
    dmp: DmpClient,
    subject: VihfSubject,
    query: HistoryQuery,
    *,
    with_reports: bool = False,
    audit: Auditor = no_audit,
) -> History:
    """One-call form of `ExamHistory(dmp, subject, audit=audit).load(query, ...)`."""
    return ExamHistory(dmp, subject, audit=audit).load(query, with_reports=with_reports)
