"""The PACS adapter: the only module that opens DICOM associations (pynetdicom) to the site's PACS.

Owns the association settings (AE titles, timeouts, PDU size, TCP_NODELAY), C-ECHO and the Study
Root C-FIND queries, and turns what the PACS answers into `StudySnapshot`s. Failures become a
`PacsError` whose message names the PACS (AE title, host:port) and says what went wrong.
It must not build KOS manifests, know about reports or the DMP, or leak DIMSE statuses or
pynetdicom objects to its callers.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

from drimbox.dicom.model import InstanceRef, SeriesSnapshot, StudySnapshot

log = logging.getLogger(__name__)

# SOP classes proposed (pynetdicom's sop_class module builds its names dynamically: untyped).
Verification = UID("1.2.840.10008.1.1")
StudyRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.2.1")

# C-FIND statuses (PS3.4 C.4.1.1.4): Pending with/without all optional keys supported.
_PENDING = frozenset({0xFF00, 0xFF01})
_SUCCESS = 0x0000
_CANCEL = 0xFE00

# Return keys asked at each level (empty value = "send me this attribute").
STUDY_RETURN_KEYS: tuple[str, ...] = (
    "StudyInstanceUID",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "StudyID",
    "ReferringPhysicianName",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_RETURN_KEYS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
)
INSTANCE_RETURN_KEYS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
)


class PacsError(Exception):
    """The PACS could not be reached or did not answer as expected (message for a site's IT)."""


@dataclass(frozen=True)
class PacsSettings:
    """How the box reaches the PACS (DIMSE). Timeouts are in seconds.

    - `called_aet`: the PACS's AE title; `calling_aet`: the box's own AE title, which the PACS
      must know (most PACS refuse unknown callers).
    - `connection_timeout`: TCP connect; `acse_timeout`: waiting for the association answer;
      `dimse_timeout`: waiting for each DIMSE response (a C-FIND on a large study is slow on some
      PACS); `network_timeout`: an idle association is closed after this.
    - `max_pdu`: the largest PDU the box accepts, in bytes; 0 means unlimited. 256 KiB keeps the
      number of PDUs (and of recv calls) low for image transfers while bounding memory.
    """

    host: str
    port: int
    called_aet: str
    calling_aet: str = "DRIMBOX"
    connection_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 120.0
    network_timeout: float = 120.0
    max_pdu: int = 262144

    def __post_init__(self) -> None:
        for name, aet in (("called_aet", self.called_aet), ("calling_aet", self.calling_aet)):
            if not aet or len(aet) > 16 or "\\" in aet:
                raise ValueError(f"{name} {aet!r} is not a valid AE title (1 to 16 characters)")
        if not 0 < self.port < 65536:
            raise ValueError(f"PACS port {self.port} is not a valid TCP port")
        if self.max_pdu < 0:
            raise ValueError("max_pdu must be 0 (unlimited) or a positive number of bytes")

    @property
    def label(self) -> str:
        """How error messages name the PACS: `ORTHANC@pacs.example:104`."""
        return f"{self.called_aet}@{self.host}:{self.port}"


class _NoDelayAE(AE):
    """An AE whose client sockets have TCP_NODELAY set before connecting.

    Without it, DIMSE's small writes (PDV headers, command sets) wait for delayed ACKs (~40-70 ms
    per message on loopback, ARCHITECTURE §2.6). pynetdicom 3.0 has no public socket-option
    setting; `_create_socket` is its per-association hook that builds the bound socket.
    """

    def _create_socket(self, assoc: Any, address: Any, tls_args: Any) -> AssociationSocket:
        sock = super()._create_socket(assoc, address, tls_args)
        if sock.socket is not None:
            sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


class PacsSession:
    """One open association; all queries made through it reuse it. Get one from `PacsClient`."""

    def __init__(self, assoc: Association, settings: PacsSettings) -> None:
        self._assoc = assoc
        self._settings = settings

    @property
    def tcp_nodelay(self) -> bool:
        """Whether the association's socket has TCP_NODELAY (for diagnostics and tests)."""
        wrapper = self._assoc.dul.socket
        if wrapper is None or wrapper.socket is None:
            return False
        return bool(wrapper.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def echo(self) -> None:
        status = self._assoc.send_c_echo()
        code = self._status_code(status, "C-ECHO")
        if code != _SUCCESS:
            raise PacsError(f"PACS {self._settings.label} : C-ECHO refusé (statut 0x{code:04X})")

    def find(
        self, level: str, return_keys: tuple[str, ...], keys: Mapping[str, Any]
    ) -> list[Dataset]:
        """Study Root C-FIND at `level`; `keys` are matching keys by DICOM keyword."""
        identifier = Dataset()
        identifier.QueryRetrieveLevel = level
        identifier.SpecificCharacterSet = "ISO_IR 192"  # accept UTF-8 answers
        for keyword in return_keys:
            setattr(identifier, keyword, "")
        if level == "STUDY":
            # An empty sequence as return key asks for every item (PS3.4 C.2.2.2.6).
            identifier.OtherPatientIDsSequence = []
        unknown = [kw for kw in keys if tag_for_keyword(kw) is None]
        if unknown:
            raise PacsError(
                f"clé(s) DICOM inconnue(s) dans la requête C-FIND : {', '.join(unknown)}"
            )
        for keyword, value in keys.items():
            try:
                setattr(identifier, keyword, value)
            except (ValueError, TypeError) as exc:
                raise PacsError(f"clé C-FIND invalide {keyword}={value!r} : {exc}") from exc

        results: list[Dataset] = []
        responses = self._assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
        for status, answer in responses:
            code = self._status_code(status, f"C-FIND {level}")
            if code in _PENDING:
                if answer is not None:
                    results.append(answer)
                continue
            if code == _SUCCESS:
                break
            comment = status.get("ErrorComment", "")
            label = "annulé" if code == _CANCEL else f"en échec (statut 0x{code:04X})"
            raise PacsError(
                f"PACS {self._settings.label} : C-FIND niveau {level} {label}"
                + (f" ({comment})" if comment else "")
            )
        return results

    def _status_code(self, status: Dataset, what: str) -> int:
        # An empty status means no response at all: DIMSE timeout, abort or dropped connection.
        if "Status" not in status:
            s = self._settings
            raise PacsError(
                f"PACS {s.label} : pas de réponse à la requête {what} en {s.dimse_timeout:.0f} s "
                "ou association fermée"
            )
        code: int = status.Status
        return code


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int_or_none(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _other_patient_ids(ds: Dataset) -> tuple[str, ...]:
    ids: list[str] = []
    for item in ds.get("OtherPatientIDsSequence", None) or []:
        pid = _text(item, "PatientID")
        if pid:
            ids.append(pid)
    # The retired OtherPatientIDs (0010,1000) is still what some PACS fill in.
    legacy = ds.get("OtherPatientIDs")
    if legacy:
        values = legacy if isinstance(legacy, MultiValue) else [legacy]
        ids.extend(str(v).strip() for v in values if str(v).strip())
    return tuple(dict.fromkeys(ids))


class PacsClient:
    """Queries the site's PACS over DIMSE. Each public call opens and releases one association."""

    def __init__(self, settings: PacsSettings) -> None:
        self.settings = settings

    def _new_ae(self) -> _NoDelayAE:
        s = self.settings
        ae = _NoDelayAE(ae_title=s.calling_aet)
        ae.connection_timeout = s.connection_timeout
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        ae.network_timeout = s.network_timeout
        ae.maximum_pdu_size = s.max_pdu
        ae.add_requested_context(Verification)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        return ae

    @contextmanager
    def session(self) -> Iterator[PacsSession]:
        """Open one association (released on exit, aborted on error)."""
        s = self.settings
        assoc = self._new_ae().associate(s.host, s.port, ae_title=s.called_aet)
        if not assoc.is_established:
            raise PacsError(self._association_failure(assoc))
        try:
            yield PacsSession(assoc, s)
        except BaseException:
            assoc.abort()
            raise
        else:
            assoc.release()

    def _association_failure(self, assoc: Association) -> str:
        s = self.settings
        where = f"PACS {s.label} (AE Title de la DRIMbox : {s.calling_aet})"
        primitive = getattr(assoc.acceptor, "primitive", None)
        if assoc.is_rejected and primitive is not None:
            return (
                f"{where} : association refusée : {primitive.reason_str} "
                f"({primitive.result_str}, {primitive.source_str}) ; vérifiez que le PACS connaît "
                f"l'AE Title {s.calling_aet!r} et que le sien est bien {s.called_aet!r}"
            )
        if primitive is None and not _tcp_reachable(s.host, s.port, s.connection_timeout):
            return (
                f"{where} injoignable : aucune connexion TCP possible sur "
                f"{s.host}:{s.port} (PACS arrêté, hôte/port erronés ou pare-feu)"
            )
        if primitive is None:
            return (
                f"{where} : connexion TCP acceptée mais pas de réponse à l'association en "
                f"{s.acse_timeout:.0f} s (ce port est-il un service DICOM ?)"
            )
        return f"{where} : association interrompue (aucun contexte de présentation commun ?)"

    def echo(self) -> None:
        """C-ECHO: raises `PacsError` unless the PACS answers Success."""
        with self.session() as session:
            session.echo()

    def find_studies(self, **keys: Any) -> list[Dataset]:
        """Study-level C-FIND; `keys` are DICOM keywords (e.g. `PatientID="123"`)."""
        with self.session() as session:
            return session.find("STUDY", STUDY_RETURN_KEYS, keys)

    def find_series(self, study_uid: str) -> list[Dataset]:
        with self.session() as session:
            return session.find("SERIES", SERIES_RETURN_KEYS, {"StudyInstanceUID": study_uid})

    def find_instances(self, study_uid: str, series_uid: str) -> list[Dataset]:
        with self.session() as session:
            return session.find(
                "IMAGE",
                INSTANCE_RETURN_KEYS,
                {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid},
            )

    def snapshot(self, study_uid: str) -> StudySnapshot | None:
        """What the PACS holds for `study_uid` (None if unknown), queried over one association."""
        with self.session() as session:
            studies = session.find("STUDY", STUDY_RETURN_KEYS, {"StudyInstanceUID": study_uid})
            studies = [d for d in studies if _text(d, "StudyInstanceUID") == study_uid]
            if not studies:
                return None
            if len(studies) > 1:
                raise PacsError(
                    f"PACS {self.settings.label} returned {len(studies)} studies for "
                    f"StudyInstanceUID {study_uid}: the PACS index is inconsistent"
                )
            study = studies[0]
            series_list: list[SeriesSnapshot] = []
            series_answers = session.find(
                "SERIES", SERIES_RETURN_KEYS, {"StudyInstanceUID": study_uid}
            )
            for series in series_answers:
                series_uid = _text(series, "SeriesInstanceUID")
                if not series_uid:
                    continue
                answers = session.find(
                    "IMAGE",
                    INSTANCE_RETURN_KEYS,
                    {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid},
                )
                refs = {
                    _text(a, "SOPInstanceUID"): InstanceRef(
                        sop_class_uid=_text(a, "SOPClassUID"),
                        sop_instance_uid=_text(a, "SOPInstanceUID"),
                        instance_number=_int_or_none(a, "InstanceNumber"),
                    )
                    for a in answers
                    if _text(a, "SOPInstanceUID")
                }
                instances = sorted(
                    refs.values(),
                    key=lambda r: (
                        r.instance_number is None,
                        r.instance_number or 0,
                        r.sop_instance_uid,
                    ),
                )
                series_list.append(
                    SeriesSnapshot(
                        series_instance_uid=series_uid,
                        modality=_text(series, "Modality"),
                        series_number=_int_or_none(series, "SeriesNumber"),
                        series_description=_text(series, "SeriesDescription"),
                        instances=tuple(instances),
                    )
                )
            series_list.sort(
                key=lambda s: (s.series_number is None, s.series_number or 0, s.series_instance_uid)
            )
            return StudySnapshot(
                study_instance_uid=study_uid,
                patient_id=_text(study, "PatientID"),
                issuer_of_patient_id=_text(study, "IssuerOfPatientID"),
                other_patient_ids=_other_patient_ids(study),
                patient_name=_text(study, "PatientName"),
                patient_birth_date=_text(study, "PatientBirthDate"),
                patient_sex=_text(study, "PatientSex"),
                accession_number=_text(study, "AccessionNumber"),
                study_date=_text(study, "StudyDate"),
                study_time=_text(study, "StudyTime"),
                study_description=_text(study, "StudyDescription"),
                study_id=_text(study, "StudyID"),
                referring_physician_name=_text(study, "ReferringPhysicianName"),
                series=tuple(series_list),
            )


def _tcp_reachable(host: str, port: int, timeout: float) -> bool:
    """Tell "nothing listens there" from "a DICOM peer that did not answer" in error messages."""
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 5.0)):
            return True
    except OSError:
        return False
