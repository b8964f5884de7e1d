"""Reversibility of the Source: its published KOS exported as IHE XDM and restored from it.

Layout (DRIMbox specification, as the ANS demonstrator exports a Source's published base): one
folder per month of publication, one XDM subset per KOS —

    README.TXT, INDEX.HTM                         (IHE ITI-32: readme and index at the root)
    KA202612/IHE_XDM/SS000001/METADATA.XML        (submission set + one DocumentEntry each)
    KA202612/IHE_XDM/SS000001/KOS_000001.DCM      (the KOS as published)
    KA202612/IHE_XDM/SS000001/SIGN_000001.XML     (its signature document, IHE DSG / XAdES)
    KA202612/IHE_XDM/SS000001/CR_000001_01.XML    (the CDA report(s) the KOS was published with)

The report's reference (CDA id), the RIS flags, the study and the DMP entry travel as slots of the
DocumentEntries, so that an import restores the Source exactly "as published": its updates (RPLC)
and depublications (ITI-57) then work and its images are served. The import also reads the
layout the Conso writes (`IHE_XDM/SUBSET01/…`). It refuses, with a French reason, an archive
whose documents do not match METADATA.XML (hash, size), whose patient ids disagree (metadata, KOS,
report) or whose KOS is not a KOS of a study its report covers; nothing is written then.
"""

from __future__ import annotations

import html
import io
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Final

from pydicom import Dataset
from sqlalchemy import select

from drimbox.cda import CdaError, parse_report
from drimbox.cda.model import ImagingReport
from drimbox.config import Config
from drimbox.conso.xdm import (
    Described,
    XdmDocument,
    XdmError,
    XdmLimits,
    XdmPatient,
    build_metadata,
    open_archive,
    read_subset,
)
from drimbox.db import Database, Report, ReportState, aware, utcnow
from drimbox.dicom.kos import manifest_from_bytes, referenced_instances
from drimbox.dmp import codes
from drimbox.dmp.client import DmpError, DmpSettings, load_signer
from drimbox.dmp.metadata import derived_uid, reference_id
from drimbox.dmp.structures import StructureError, choose_structure, site_structures
from drimbox.dmp.xades import SignedDocument, XmlSigner, build_signature_document
from drimbox.source.intake import identifier_text
from drimbox.trust import audit

KOS_SOP_CLASS: Final = "1.2.840.10008.5.1.4.1.1.88.59"
# Slots of ours on the DocumentEntries (ebRIM allows any slot name; XDM readers ignore them).
S_ENTRY, S_PUBLISHED, S_FLAGS = "drimboxEntryUUID", "drimboxPublishedAt", "drimboxFlags"
S_STUDY, S_DOCUMENT = "drimboxStudyInstanceUID", "drimboxDocumentId"
_SUBSET_METADATA = re.compile(r"^((?:KA\d{6}/)?IHE_XDM/[^/]+)/METADATA\.XML$")


@dataclass
class ExportResult:
    kos: int = 0
    reports: int = 0
    signatures: int = 0
    folders: list[str] = field(default_factory=list)


@dataclass
class ImportResult:
    imported: list[str] = field(default_factory=list)  # KOS SOP instance UIDs
    already: list[str] = field(default_factory=list)
    reports: int = 0


# --- export -------------------------------------------------------------------------------------


def _flags_slot(flags: dict[str, object]) -> list[str]:
    return [f"{name}={'Y' if value is True else 'N'}" for name, value in sorted(flags.items())]


def _flags_of(values: Sequence[str]) -> dict[str, bool]:
    result: dict[str, bool] = {}
    for value in values:
        name, sep, flag = value.partition("=")
        if sep and name and flag in ("Y", "N"):
            result[name] = flag == "Y"
    return result


def _reference_ids(report: ImagingReport) -> list[str]:
    ids = [reference_id(report.study_instance_uid, None, codes.REF_STUDY_UID)]
    if report.accession_number is not None:
        accession = report.accession_number
        ids.append(reference_id(accession.extension, accession.root, codes.REF_ACCESSION))
    return ids


def export_published(
    config: Config, db: Database, out: Path | IO[bytes], *, since: datetime | None = None
) -> ExportResult:
    """Write every KOS the Source has published (since `since`) as an XDM archive."""
    with db.session() as session:
        query = (
            select(Report)
            .where(Report.state == ReportState.PUBLISHED.value)
            .where(Report.kos.is_not(None), Report.cda.is_not(None))
            .order_by(Report.published_at, Report.id)
        )
        if since is not None:  # in UTC, as stored: SQLite keeps a datetime's digits, not its zone
            query = query.where(Report.published_at >= aware(since).astimezone(UTC))
        rows = list(session.scalars(query))
        session.expunge_all()
    groups: dict[str, list[Report]] = {}
    for row in rows:
        groups.setdefault(row.kos_sop_uid or "", []).append(row)
    structures = site_structures(config)
    signers: dict[str, XmlSigner] = {}

    def signer_of(report: Report) -> XmlSigner:
        """The ORG SIGN certificate of the structure that published the KOS (its report's)."""
        assert report.cda is not None
        try:
            structure = choose_structure(
                structures, parse_report(report.cda, report.study_uid or None)
            )
            if structure.id not in signers:
                signers[structure.id] = load_signer(DmpSettings.from_config(config, structure))
        except (DmpError, StructureError) as exc:
            raise XdmError(
                f"Export impossible : {exc} (le document de signature accompagne chaque KOS)."
            ) from exc
        return signers[structure.id]

    result = ExportResult()
    now = datetime.now(UTC)
    counters: dict[str, int] = {}
    index: list[tuple[str, str, str]] = []
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for kos_uid, reports in groups.items():
            first = reports[0]
            assert first.kos is not None and first.cda is not None
            published = _utc(first.published_at or now)
            month = f"KA{published:%Y%m}"
            counters[month] = counters.get(month, 0) + 1
            n = counters[month]
            folder = f"{month}/IHE_XDM/SS{n:06d}"
            signature = build_signature_document(
                [SignedDocument(kos_uid, first.kos)], signer_of(first), signing_time=published
            )
            patient = write_subset(zf, folder, n, reports, signature, config.site.uid_root, now)
            result.kos += 1
            result.signatures += 1
            result.reports += len(reports)
            result.folders.append(folder)
            index.append((folder, patient.ins, first.study_uid))
        zf.writestr("README.TXT", _readme(config.site.name, now, result))
        zf.writestr("INDEX.HTM", _index(config.site.name, index))
    return result


def write_subset(
    zf: zipfile.ZipFile,
    folder: str,
    n: int,
    reports: Sequence[Report],
    signature: bytes | None,
    uid_root: str,
    now: datetime,
) -> XdmPatient:
    """One KOS's XDM subset: the KOS as published, its signature document, the report(s) it was
    published with, and METADATA.XML describing them (with the slots an import restores from)."""
    first = reports[0]
    assert first.kos is not None and first.cda is not None
    kos_uid = first.kos_sop_uid or ""
    published = _utc(first.published_at or now)
    parsed = parse_report(first.cda, first.study_uid or None)
    kos_slots = {
        codes.REFERENCE_ID_LIST: _reference_ids(parsed),
        S_ENTRY: [first.dmp_entry_uuid or ""],
        S_PUBLISHED: [published.isoformat()],
        S_STUDY: [first.study_uid],
    }
    documents: list[tuple[XdmDocument, str]] = [
        (
            XdmDocument(
                "kos", first.kos, kos_uid, title="Manifeste d'imagerie (KOS)", slots=kos_slots
            ),
            f"KOS_{n:06d}.DCM",
        )
    ]
    if signature is not None:
        sign_uid = derived_uid(uid_root, "9", f"xdm-signature|{kos_uid}")
        sign = XdmDocument("signature", signature, sign_uid, title="Document de signature du KOS")
        documents.append((sign, f"SIGN_{n:06d}.XML"))
    for k, row in enumerate(reports, start=1):
        assert row.cda is not None
        slots = {
            S_FLAGS: _flags_slot(dict(row.flags)),
            S_STUDY: [row.study_uid],
            S_DOCUMENT: [row.document_id],
        }
        title = f"Compte rendu {row.document_id}"
        report = XdmDocument("report", row.cda, row.document_id, title=title, slots=slots)
        documents.append((report, f"CR_{n:06d}_{k:02d}.XML"))
    patient = XdmPatient(parsed.patient.ins, parsed.patient.ins_oid, parsed.patient.name.to_dicom())
    for document, uri in documents:
        zf.writestr(f"{folder}/{uri}", document.data)
    submission = derived_uid(uid_root, "8", f"xdm|{kos_uid}|{now.isoformat()}")
    metadata = build_metadata(
        patient, documents, submission_unique_id=submission, source_id=uid_root, now=now
    )
    zf.writestr(f"{folder}/METADATA.XML", metadata)
    return patient


def _readme(site: str, now: datetime, result: ExportResult) -> bytes:
    return (
        "Export IHE XDM (ITI-32) des KOS publiés par la DRIMbox Source\r\n"
        f"Site : {site}\r\n"
        f"Date : {now:%Y-%m-%d %H:%M} UTC\r\n"
        f"Contenu : {result.kos} KOS, {result.signatures} document(s) de signature, "
        f"{result.reports} compte(s) rendu(s).\r\n\r\n"
        "Chaque dossier KAaaaamm/IHE_XDM/SSnnnnnn contient METADATA.XML (métadonnées XDS), le\r\n"
        "manifeste KOS_*.DCM tel que publié au DMP, son document de signature SIGN_*.XML et le\r\n"
        "ou les comptes rendus CDA. Réimport : drimbox xdm import <archive> --config <fichier>.\r\n"
        "Données de santé à caractère personnel : à conserver et transmettre de façon "
        "sécurisée.\r\n"
    ).encode()


def _index(site: str, index: Sequence[tuple[str, str, str]]) -> bytes:
    rows = "\n".join(
        f'<li><a href="{html.escape(folder)}/METADATA.XML">{html.escape(folder)}</a> — '
        f"INS {html.escape(ins)}, examen {html.escape(study)}</li>"
        for folder, ins, study in index
    )
    return (
        '<!DOCTYPE html>\n<html lang="fr"><head><meta charset="utf-8">'
        "<title>KOS publiés — export XDM</title></head><body>"
        f"<h1>KOS publiés par {html.escape(site)}</h1><ul>{rows}</ul></body></html>\n"
    ).encode()


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# --- import -------------------------------------------------------------------------------------


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


def import_published(
    db: Database, archive: Path | IO[bytes], *, limits: XdmLimits | None = None, actor: str = ""
) -> ImportResult:
    """Restore an XDM archive of published KOS into the Source (all or nothing)."""
    restored = read_published(archive, limits or XdmLimits())
    result = ImportResult()
    now = utcnow()
    with db.session() as session:
        for item in restored:
            kos_uid = str(item.kos.SOPInstanceUID)
            present = session.scalar(select(Report.id).where(Report.kos_sop_uid == kos_uid))
            if present is not None:
                result.already.append(kos_uid)
                continue
            count = len(referenced_instances(item.kos))
            for described, cda, parsed in item.reports:
                accession = parsed.accession_number.extension if parsed.accession_number else ""
                document_id = identifier_text(parsed.document_id)
                # The version's unique key: the RIS re-sending it to this node is a re-send.
                key: str | None = f"publish|{document_id}"[:160]
                if session.scalar(select(Report.id).where(Report.version_key == key)):
                    key = None
                session.add(
                    Report(
                        message_id=None,
                        received_at=now,
                        updated_at=now,
                        kind="publish",
                        patient_ins=parsed.patient.ins,
                        patient_ins_oid=parsed.patient.ins_oid,
                        patient_ipp=parsed.patient.ipp.extension if parsed.patient.ipp else "",
                        study_uid=parsed.study_instance_uid,
                        accession=accession,
                        document_id=document_id,
                        version_key=key,
                        set_id=identifier_text(parsed.set_id),
                        version_number=parsed.version_number,
                        document_time=parsed.effective_time,
                        replaced_document_id="",
                        flags=_flags_of(described.slots.get(S_FLAGS, [])),
                        cda=cda,
                        state=ReportState.PUBLISHED.value,
                        reason="importé d'une archive XDM (publié par une autre DRIMbox)",
                        attempts=0,
                        next_attempt_at=None,
                        kos_sop_uid=kos_uid,
                        kos=item.kos_bytes,
                        kos_instance_count=count,
                        dmp_entry_uuid=item.entry_uuid,
                        published_at=item.published_at or now,
                    )
                )
                result.reports += 1
            result.imported.append(kos_uid)
    audit.record(
        db,
        actor=actor or audit.SYSTEM,
        role="operator",
        action="xdm_import",
        result="ok",
        imported=len(result.imported),
        already=len(result.already),
    )
    return result


def export_bytes(config: Config, db: Database, since: datetime | None = None) -> bytes:
    """The archive in memory (tests, small sites)."""
    buffer = io.BytesIO()
    export_published(config, db, buffer, since=since)
    return buffer.getvalue()
