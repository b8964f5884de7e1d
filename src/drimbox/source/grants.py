"""What a published KOS grants: which series and instances of which study may be served.

Owns the database lookups behind the access checks of the image service: the KOS named by a
peer's `KOS-SOPInstanceUID` must be the *published* KOS of that study (a replaced or withdrawn
KOS grants nothing any more), the study's current published KOS for the local viewer, and the
IHE IID check (study published with that report), and the Conso's exams: the KOS the DMP gave
to a signed-in user for a contextual launch bound to their session (`for_conso`), and whether a
study came from another site (`is_conso_study`: its images come from that site's Source, never
from the local PACS). The parsed content of a KOS is cached (a KOS never changes); its state is
read from the database on every request. It must not check tokens or sessions (the callers do)
nor talk to the PACS.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select

from drimbox.cda import CdaError, parse_report
from drimbox.cda.model import RPPS_OID
from drimbox.db import Database, Report, utcnow
from drimbox.db.models import ConsoExam, ConsoLaunch, ReportState
from drimbox.dicom.kos import manifest_from_bytes
from drimbox.source.lifecycle import effective_confidentiality

PUBLISHED = ReportState.PUBLISHED.value
# What this site's own viewer shows: published KOS, and those kept off the DMP (DESTDMP=N) whose
# report still carries the viewer link. Peers only ever get published ones.
VIEWABLE = (PUBLISHED, ReportState.NOT_FOR_DMP.value)


def session_hash(session_id: str) -> str:
    """How the database names a session (`user_sessions.id_hash`): the cookie's SHA-256."""
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True)
class IidReport:
    """The report an IHE IID link names, as its access rule sees it."""

    report_id: int
    patient_ins: str
    # Confidentiality flags raised on the exam's KOS (MASQUE_PS, INVISIBLE_PATIENT…).
    confidentiality: frozenset[str]
    # National ids ("8" + RPPS) of the CDA's authors and legal authenticator.
    authors: frozenset[str]
    # Their organisations' national ids (FINESS/SIRET-based, as the CDA writes them).
    structures: frozenset[str]


class GrantError(Exception):
    """Access refused; `status` is the HTTP status to answer (403 or 404), message in French."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class KosContent:
    """The instances a KOS references for its study: series UID → {SOP instance UID: class}."""

    kos_sop_uid: str
    study_uid: str
    series: Mapping[str, Mapping[str, str]]
    patient_id: str = ""
    accession: str = ""

    def sop_classes(self, series_uid: str) -> list[str]:
        return list(dict.fromkeys(self.series.get(series_uid, {}).values()))

    @property
    def instance_count(self) -> int:
        return sum(len(s) for s in self.series.values())

    def series_of(self, sop_uid: str) -> str | None:
        for series_uid, instances in self.series.items():
            if sop_uid in instances:
                return series_uid
        return None


def parse_kos(data: bytes) -> KosContent:
    ds = manifest_from_bytes(data)
    study_uid = str(ds.StudyInstanceUID)
    series: dict[str, dict[str, str]] = {}
    for study_item in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
        if str(study_item.get("StudyInstanceUID", "")) != study_uid:
            continue  # evidence of another study never grants access to it through this one
        for series_item in study_item.get("ReferencedSeriesSequence", []):
            instances = series.setdefault(str(series_item.SeriesInstanceUID), {})
            for sop in series_item.get("ReferencedSOPSequence", []):
                instances[str(sop.ReferencedSOPInstanceUID)] = str(sop.ReferencedSOPClassUID)
    return KosContent(
        kos_sop_uid=str(ds.SOPInstanceUID),
        study_uid=study_uid,
        series={k: dict(v) for k, v in series.items()},
        patient_id=str(ds.get("PatientID", "")),
        accession=str(ds.get("AccessionNumber", "")),
    )


class Grants:
    """Access decisions from the Source's report table."""

    def __init__(self, db: Database, *, cache_size: int = 256) -> None:
        self.db = db
        self._parsed: OrderedDict[str, KosContent] = OrderedDict()
        self._lock = threading.Lock()
        self._cache_size = cache_size

    def _content(self, kos_uid: str, data: bytes) -> KosContent:
        with self._lock:
            if kos_uid in self._parsed:
                self._parsed.move_to_end(kos_uid)
                return self._parsed[kos_uid]
        content = parse_kos(data)
        with self._lock:
            self._parsed[kos_uid] = content
            while len(self._parsed) > self._cache_size:
                self._parsed.popitem(last=False)
        return content

    def for_peer(self, study_uid: str, kos_uid: str) -> KosContent:
        """The content of `kos_uid` if it is the published KOS of `study_uid` (blocking)."""
        with self.db.session() as session:
            rows = list(
                session.execute(
                    select(Report.state, Report.kos, Report.study_uid)
                    .where(Report.kos_sop_uid == kos_uid)
                    .order_by(Report.id.desc())
                )
            )
        same_study = [r for r in rows if r.study_uid == study_uid]
        published = [r for r in same_study if r.state == PUBLISHED and r.kos]
        if published:
            kos = published[0].kos
            assert kos is not None
            content = self._content(kos_uid, kos)
            if content.study_uid != study_uid:
                raise GrantError(404, "ce KOS ne concerne pas cette étude")
            return content
        if same_study:
            raise GrantError(
                403, "ce KOS n'est plus publié (remplacé ou retiré) : il ne donne plus accès"
            )
        raise GrantError(404, "KOS inconnu pour cette étude")

    def kos_of_peer(self, kos_uid: str) -> KosContent:
        """The content of a published KOS whatever its study (QIDO /studies of a peer)."""
        with self.db.session() as session:
            row = session.execute(
                select(Report.kos, Report.study_uid)
                .where(Report.kos_sop_uid == kos_uid, Report.state == PUBLISHED)
                .order_by(Report.id.desc())
                .limit(1)
            ).first()
        if row is None or not row.kos:
            raise GrantError(404, "KOS inconnu ou non publié")
        return self._content(kos_uid, row.kos)

    def for_study(self, study_uid: str) -> KosContent | None:
        """The study's current published KOS (the local viewer shows what was published)."""
        with self.db.session() as session:
            row = session.execute(
                select(Report.kos_sop_uid, Report.kos)
                .where(Report.study_uid == study_uid, Report.state.in_(VIEWABLE))
                .order_by(Report.id.desc())
                .limit(1)
            ).first()
        if row is None or not row.kos or not row.kos_sop_uid:
            return None
        return self._content(row.kos_sop_uid, row.kos)

    def for_conso(self, session_id: str, study_uid: str) -> KosContent | None:
        """The KOS of a Conso exam of `study_uid` that the DMP gave to this session (through a
        launch bound to it and not expired), or None."""
        now = utcnow()
        with self.db.session() as session:
            row = session.execute(
                select(ConsoExam.kos_sop_uid, ConsoExam.kos)
                .join(ConsoLaunch, ConsoLaunch.id == ConsoExam.launch_id)
                .where(
                    ConsoExam.study_uid == study_uid,
                    ConsoExam.kos.is_not(None),
                    ConsoLaunch.session_hash == session_hash(session_id),
                    ConsoLaunch.expires_at > now,
                )
                .order_by(ConsoExam.id.desc())
                .limit(1)
            ).first()
        if row is None or not row.kos or not row.kos_sop_uid:
            return None
        content = self._content(row.kos_sop_uid, row.kos)
        return content if content.study_uid == study_uid else None

    def for_viewer(self, session_id: str, study_uid: str) -> KosContent | None:
        """What the viewer may show of a study granted to a session: the Conso exam's KOS when
        the study came from the DMP for this session, else the study's published KOS."""
        return self.for_conso(session_id, study_uid) or self.for_study(study_uid)

    def is_conso_study(self, study_uid: str) -> bool:
        """Whether a study's images belong to another site: a Conso exam that this site's own
        Source did not publish. The image service never asks the local PACS for those."""
        with self.db.session() as session:
            conso = session.scalar(
                select(ConsoExam.id).where(ConsoExam.study_uid == study_uid).limit(1)
            )
            if conso is None:
                return False
            local = session.scalar(
                select(Report.id)
                .where(Report.study_uid == study_uid, Report.kos_sop_uid.is_not(None))
                .limit(1)
            )
        return local is None

    def iid_report_published(self, study_uid: str, accession: str, document_id: str) -> bool:
        """IHE IID: the study was published with that report (document id and accession), or
        kept off the DMP by DESTDMP=N — the report's link still shows its images."""
        return self.iid_report(study_uid, accession, document_id) is not None

    def iid_report(self, study_uid: str, accession: str, document_id: str) -> IidReport | None:
        """The report an IHE IID link names, if the study was published with it (document id
        and accession) or kept off the DMP by DESTDMP=N, with what its access rule needs: the
        confidentiality of the link's KOS and of the exam's current one, and the report's
        authors and structures (blocking)."""
        with self.db.session() as session:
            rows = session.scalars(
                select(Report)
                .where(Report.study_uid == study_uid, Report.state.in_(VIEWABLE))
                .order_by(Report.id.desc())
            ).all()
            matched = [
                r
                for r in rows
                if _same_document(r.document_id, document_id)
                and (not accession or r.accession == accession)
            ]
            if not matched:
                return None
            flags: set[str] = set()
            for row in {matched[0].id: matched[0], rows[0].id: rows[0]}.values():
                flags |= effective_confidentiality(session, row)
            report, cda = matched[0], matched[0].cda
            report_id, ins = report.id, report.patient_ins
        authors: set[str] = set()
        structures: set[str] = set()
        if cda:
            try:
                parsed = parse_report(cda, study_uid)
            except CdaError:
                parsed = None  # published, hence parsed once: no author to exempt
            if parsed is not None:
                people = [*parsed.authors, parsed.legal_authenticator]
                for person in people:
                    if person is None:
                        continue
                    if person.id.root == RPPS_OID and person.id.extension:
                        authors.add(person.id.extension)
                    if person.organization is not None and person.organization.id.extension:
                        structures.add(person.organization.id.extension)
        return IidReport(
            report_id, ins, frozenset(flags), frozenset(authors), frozenset(structures)
        )


def _same_document(stored: str, given: str) -> bool:
    # The intake stores the CDA id as "root^extension" (or the root alone), as links carry it.
    return bool(given) and stored == given
