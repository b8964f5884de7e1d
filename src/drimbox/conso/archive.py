"""Reading an archive of published KOS: a Source's `drimbox xdm export` (one
`KAaaaamm/IHE_XDM/SSnnnnnn` subset per KOS), the ANS layout and the Conso's (`IHE_XDM/SUBSET01`).

Shared by the Source, which restores the KOS as published (reversibility), and the Conso, which
pre-integrates them into its history (homologation). Every subset is checked before anything is
written: hashes and sizes against METADATA.XML, one KOS that is a KOS, at least one report of
its study, and one patient id across metadata, KOS and reports; a refusal is an `XdmError` with
a French reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Final

from pydicom import Dataset

from drimbox.cda import CdaError, parse_report
from drimbox.cda.model import ImagingReport
from drimbox.conso.xdm import Described, XdmError, XdmLimits, open_archive, read_subset
from drimbox.db import Database
from drimbox.dicom.kos import manifest_from_bytes, referenced_instances
from drimbox.trust import audit

KOS_SOP_CLASS: Final = "1.2.840.10008.5.1.4.1.1.88.59"
# Slots of ours on the DocumentEntries (ebRIM allows any slot name; XDM readers ignore them).
S_ENTRY, S_PUBLISHED, S_FLAGS = "drimboxEntryUUID", "drimboxPublishedAt", "drimboxFlags"
S_STUDY, S_DOCUMENT = "drimboxStudyInstanceUID", "drimboxDocumentId"
_SUBSET_METADATA = re.compile(r"^((?:KA\d{6}/)?IHE_XDM/[^/]+)/METADATA\.XML$")


@dataclass
class Restored:
    """One KOS of an archive, checked, with its report(s), as an import restores it."""

    kos: Dataset
    kos_bytes: bytes
    reports: list[tuple[Described, bytes, ImagingReport]]
    entry_uuid: str | None
    published_at: datetime | None


def _ins_of(cx_value: str) -> str:
    return cx_value.split("^", 1)[0]


def _check_subset(
    subset: str, patient_cx: str, documents: list[tuple[Described, bytes]]
) -> Restored:
    kos_docs = [(d, b) for d, b in documents if d.kind == "kos"]
    if len(kos_docs) != 1:
        raise XdmError(f"Archive refusée : {subset} doit contenir exactement un KOS.")
    described, kos_bytes = kos_docs[0]
    try:
        kos = manifest_from_bytes(kos_bytes)
    except Exception as exc:  # pydicom raises many kinds on bad input
        raise XdmError(f"Archive refusée : KOS illisible dans {subset}.", detail=str(exc)) from exc
    if str(kos.get("SOPClassUID", "")) != KOS_SOP_CLASS or not referenced_instances(kos):
        raise XdmError(f"Archive refusée : {subset} : le document KOS n'est pas un manifeste KOS.")
    kos_uid = str(kos.SOPInstanceUID)
    if described.unique_id and described.unique_id != kos_uid:
        raise XdmError(
            f"Archive refusée : {subset} : l'identifiant du KOS ({kos_uid}) diffère de celui de "
            f"METADATA.XML ({described.unique_id})."
        )
    reports: list[tuple[Described, bytes, ImagingReport]] = []
    study = str(kos.StudyInstanceUID)
    for document, data in documents:
        if document.kind != "report":
            continue
        try:
            parsed = parse_report(data, study)
        except CdaError as exc:
            raise XdmError(
                f"Archive refusée : {subset} : compte rendu illisible ou sans l'examen {study} du "
                "KOS.",
                detail=str(exc),
            ) from exc
        reports.append((document, data, parsed))
    if not reports:
        raise XdmError(
            f"Archive refusée : {subset} : aucun compte rendu (CDA) avec le KOS — il faut le "
            "compte rendu pour mettre à jour ou dépublier le KOS ensuite."
        )
    ids = {
        "METADATA.XML": _ins_of(patient_cx),
        "KOS": str(kos.get("PatientID", "")),
        **{f"CR {d.uri}": parsed.patient.ins for d, _, parsed in reports},
    }
    if len(set(ids.values())) != 1:
        detail = ", ".join(f"{where} {value or '(vide)'}" for where, value in ids.items())
        raise XdmError(f"Archive refusée : {subset} : identifiants patient discordants ({detail}).")
    entry = (described.slots.get(S_ENTRY) or [""])[0] or None
    published = (described.slots.get(S_PUBLISHED) or [""])[0]
    try:
        published_at = datetime.fromisoformat(published) if published else None
    except ValueError:
        published_at = None
    return Restored(kos, kos_bytes, reports, entry, published_at)


def read_published(archive: Path | IO[bytes], limits: XdmLimits) -> list[Restored]:
    """Every subset of an archive of published KOS, checked (raises `XdmError`, French)."""
    zf, by_name = open_archive(archive, limits)
    with zf:
        subsets = sorted(m.group(1) for n in by_name if (m := _SUBSET_METADATA.match(n)))
        if not subsets:
            raise XdmError(
                "Archive refusée : aucun METADATA.XML sous IHE_XDM/ (ce n'est pas un export XDM)."
            )
        budget = [limits.max_total_bytes]
        return [
            _check_subset(subset, *read_subset(zf, by_name, subset, limits, budget))
            for subset in subsets
        ]


def audit_import(db: Database, action: str, actor: str, imported: int, already: int) -> None:
    """The audit event of an archive's import (by the site staff, from the command line)."""
    audit.record(
        db,
        actor=actor or audit.SYSTEM,
        role="operator",
        action=action,
        result="ok",
        imported=imported,
        already=already,
    )
