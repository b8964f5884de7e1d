"""Export of a retrieved exam to the site's own PACS (or another configured DICOM destination:
a workstation, a STOW-RS endpoint), under the site's patient identity.

Owns the relabelling of each instance for the local PACS — PatientID := the local IPP of the
contextual launch, IssuerOfPatientID := the local issuer (with its qualifiers when it is an OID),
the INS kept in OtherPatientIDsSequence with its issuer (`ASIP-SANTE-INS-…`, INS OID, ISO), the
Source site's own patient ids dropped — and the transfer: C-STORE through the PACS adapter
(`drimbox.dicom.pacs.store_instances`, the only place associations are opened) or STOW-RS to a
DICOMweb URL. Pixel data is never decoded nor re-encoded. The result says, per instance, what
was stored and why anything failed.

It must not fetch images (retrieval does) nor pick the patient: an instance of another study
than the exported one is refused (identity safety).
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Final

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset

from drimbox.conso.common import Auditor, ConsoError, InstanceSource, no_audit
from drimbox.conso.launch import LaunchContext, is_oid
from drimbox.dicom.kos import INS_ISSUERS
from drimbox.dicom.pacs import PacsClient, PacsError, StoreOutcome, store_instances
from drimbox.http.multipart import new_boundary
from drimbox.http.tlspolicy import client_context

log = logging.getLogger(__name__)

STOW_BATCH: Final = 50  # instances per STOW-RS request: bounded requests, few round trips
_REFERENCED_SOP_SEQUENCE: Final = "00081199"
_FAILED_SOP_SEQUENCE: Final = "00081198"
_REFERENCED_SOP_INSTANCE_UID: Final = "00081155"
_FAILURE_REASON: Final = "00081197"


@dataclass(frozen=True)
class LocalIdentity:
    """Who the patient is in the local PACS (the IPP) and nationally (the INS)."""

    patient_id: str
    issuer: str
    ins: str
    ins_oid: str

    @classmethod
    def from_launch(cls, launch: LaunchContext) -> LocalIdentity:
        return cls(
            launch.local_patient_id, launch.local_patient_id_issuer, launch.ins, launch.ins_oid
        )


def _entity(oid: str) -> Dataset:
    item = Dataset()
    item.UniversalEntityID = oid
    item.UniversalEntityIDType = "ISO"
    return item


def relabel(data: bytes, identity: LocalIdentity, *, study_uid: str | None = None) -> Dataset:
    """The instance with the local identity set (see the module docstring). Raises
    `ValueError` (French) for an unreadable instance or one of another study."""
    try:
        ds = dcmread(BytesIO(data))
    except Exception as exc:  # pydicom raises many kinds on bad input
        raise ValueError(f"instance illisible ({exc})") from exc
    if study_uid and str(ds.get("StudyInstanceUID", "")) != study_uid:
        raise ValueError(
            f"instance d'une autre étude ({ds.get('StudyInstanceUID', '?')}) : non exportée"
        )
    ds.PatientID = identity.patient_id
    ds.IssuerOfPatientID = identity.issuer
    if is_oid(identity.issuer):
        ds.IssuerOfPatientIDQualifiersSequence = [_entity(identity.issuer)]
    elif "IssuerOfPatientIDQualifiersSequence" in ds:
        # The Source's qualifiers describe the INS issuer: wrong for the local IPP.
        del ds.IssuerOfPatientIDQualifiersSequence
    ins = Dataset()
    ins.PatientID = identity.ins
    ins.IssuerOfPatientID = INS_ISSUERS.get(identity.ins_oid, identity.ins_oid)
    ins.TypeOfPatientID = "TEXT"
    ins.IssuerOfPatientIDQualifiersSequence = [_entity(identity.ins_oid)]
    # Only the INS: the Source site's IPP means nothing here and could collide with a local one.
    ds.OtherPatientIDsSequence = [ins]
    if "OtherPatientIDs" in ds:  # retired (0010,1000), still filled by some PACS
        del ds.OtherPatientIDs
    return ds


@dataclass(frozen=True)
class InstanceOutcome:
    sop_instance_uid: str
    stored: bool
    message: str = ""  # French, why it failed


@dataclass
class ExportReport:
    """Per instance, what happened; `stored`/`failed` for the page."""

    destination: str
    outcomes: list[InstanceOutcome] = field(default_factory=list)

    @property
    def stored(self) -> list[str]:
        return [o.sop_instance_uid for o in self.outcomes if o.stored]

    @property
    def failed(self) -> dict[str, str]:
        return {o.sop_instance_uid: o.message for o in self.outcomes if not o.stored}

    @property
    def complete(self) -> bool:
        return bool(self.outcomes) and all(o.stored for o in self.outcomes)


ExportProgress = Callable[[int, int], None]
"""Called with (instances handled so far, total)."""


class CStoreTarget:
    """A DICOM destination over DIMSE: the local PACS (`[pacs]`) or a workstation."""

    def __init__(self, client: PacsClient, *, name: str = "PACS") -> None:
        self.client = client
        self.name = name

    @property
    def label(self) -> str:
        return f"{self.name} ({self.client.settings.label})"

    def send(
        self,
        instances: Sequence[InstanceSource],
        prepare: Callable[[InstanceSource], Dataset | None],
        done: Callable[[InstanceOutcome], None],
    ) -> None:
        contexts = [(i.sop_class_uid, i.transfer_syntax) for i in instances]

        def datasets() -> Iterator[Dataset]:
            for instance in instances:
                ds = prepare(instance)
                if ds is not None:
                    yield ds

        def on_outcome(outcome: StoreOutcome) -> None:
            done(InstanceOutcome(outcome.sop_instance_uid, outcome.stored, outcome.message))

        try:
            store_instances(self.client, contexts, datasets(), on_outcome)
        except PacsError as exc:
            raise ConsoError(
                "PACS_INJOIGNABLE", f"Export impossible vers « {self.name} » : {exc}"
            ) from exc


class StowRsTarget:
    """A DICOMweb STOW-RS endpoint (`<base>/studies`), e.g. a PACS's DICOMweb URL."""

    def __init__(
        self,
        base_url: str,
        *,
        http: httpx.Client | None = None,
        verify: ssl.SSLContext | None = None,
        name: str = "PACS",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self._http = http or httpx.Client(
            verify=verify if verify is not None else client_context(), timeout=httpx.Timeout(120.0)
        )

    @property
    def label(self) -> str:
        return f"{self.name} (STOW-RS {self.base_url})"

    def send(
        self,
        instances: Sequence[InstanceSource],
        prepare: Callable[[InstanceSource], Dataset | None],
        done: Callable[[InstanceOutcome], None],
    ) -> None:
        batch: list[Dataset] = []
        for instance in instances:
            ds = prepare(instance)
            if ds is not None:
                batch.append(ds)
            if len(batch) >= STOW_BATCH:
                self._post(batch, done)
                batch = []
        if batch:
            self._post(batch, done)

    def _post(self, batch: list[Dataset], done: Callable[[InstanceOutcome], None]) -> None:
        boundary = new_boundary()

        def body() -> Iterator[bytes]:
            for ds in batch:
                buffer = BytesIO()
                ds.save_as(buffer, enforce_file_format=True)
                yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
                yield buffer.getvalue()
                yield b"\r\n"
            yield f"--{boundary}--\r\n".encode("ascii")

        uids = [str(ds.SOPInstanceUID) for ds in batch]
        try:
            response = self._http.post(
                f"{self.base_url}/studies",
                content=body(),
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; '
                    f"boundary={boundary}",
                    "Accept": "application/dicom+json",
                },
            )
        except httpx.HTTPError as exc:
            raise ConsoError(
                "PACS_INJOIGNABLE",
                f"Export impossible : le serveur DICOMweb {self.base_url} est injoignable.",
                detail=str(exc),
            ) from exc
        stored, failed = _stow_result(response)
        for uid in uids:
            if uid in failed:
                done(InstanceOutcome(uid, False, f"refusé par le PACS ({failed[uid]})"))
            elif uid in stored or (response.status_code == 200 and not stored):
                done(InstanceOutcome(uid, True))
            else:
                done(
                    InstanceOutcome(
                        uid, False, f"non confirmé par le PACS (HTTP {response.status_code})"
                    )
                )


def _stow_result(response: httpx.Response) -> tuple[set[str], dict[str, str]]:
    """(stored SOP UIDs, failed SOP UID → reason) of a STOW-RS answer (PS3.18 §10.5.3)."""
    try:
        payload: Any = json.loads(response.content or b"{}")
    except ValueError:
        return set(), {}
    if isinstance(payload, list):
        payload = payload[0] if payload else {}
    if not isinstance(payload, dict):
        return set(), {}

    def items(tag: str) -> list[dict[str, Any]]:
        value = payload.get(tag, {}).get("Value", [])
        return [v for v in value if isinstance(v, dict)]

    def text(item: dict[str, Any], tag: str) -> str:
        values = item.get(tag, {}).get("Value", [""])
        return str(values[0]) if values else ""

    stored = {text(i, _REFERENCED_SOP_INSTANCE_UID) for i in items(_REFERENCED_SOP_SEQUENCE)}
    failed = {
        text(i, _REFERENCED_SOP_INSTANCE_UID): f"motif {text(i, _FAILURE_REASON)}"
        for i in items(_FAILED_SOP_SEQUENCE)
    }
    return stored, failed


Target = CStoreTarget | StowRsTarget


def export_exam(
    instances: Sequence[InstanceSource],
    identity: LocalIdentity,
    target: Target,
    *,
    study_uid: str,
    progress: ExportProgress | None = None,
    audit: Auditor = no_audit,
) -> ExportReport:
    """Send every instance to `target` under `identity`; never raises for one bad instance
    (it is reported), raises `ConsoError` when the destination cannot be reached at all."""
    if not identity.patient_id:
        raise ConsoError(
            "IPP_ABSENT",
            "Export impossible : l'identifiant local du patient (IPP) n'a pas été transmis "
            "au lancement.",
        )
    report = ExportReport(target.label)
    total = len(instances)

    def done(outcome: InstanceOutcome) -> None:
        report.outcomes.append(outcome)
        if progress is not None:
            progress(len(report.outcomes), total)

    def prepare(instance: InstanceSource) -> Dataset | None:
        try:
            return relabel(instance.read(), identity, study_uid=study_uid)
        except (ValueError, OSError) as exc:
            done(InstanceOutcome(instance.sop_instance_uid, False, str(exc)))
            return None

    try:
        target.send(instances, prepare, done)
    finally:
        seen = {o.sop_instance_uid for o in report.outcomes}
        for instance in instances:
            if instance.sop_instance_uid not in seen:
                report.outcomes.append(
                    InstanceOutcome(
                        instance.sop_instance_uid, False, "non envoyé (transfert interrompu)"
                    )
                )
        audit(
            action="export_pacs",
            result="ok" if report.complete else "error",
            patient_ins=identity.ins,
            study_uid=study_uid,
            destination=report.destination,
            stored=len(report.stored),
            failed=len(report.failed),
        )
    return report
