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
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from sqlalchemy import select

from drimbox.cda import parse_report
from drimbox.cda.model import ImagingReport
from drimbox.config import Config
from drimbox.conso.archive import (
    S_DOCUMENT,
    S_ENTRY,
    S_FLAGS,
    S_PUBLISHED,
    S_STUDY,
    audit_import,
    read_published,
)
from drimbox.conso.xdm import XdmDocument, XdmError, XdmLimits, XdmPatient, build_metadata
from drimbox.db import Database, Report, ReportState, aware, utcnow
from drimbox.dicom.kos import referenced_instances
from drimbox.dmp import codes
from drimbox.dmp.client import DmpError, DmpSettings, load_signer
from drimbox.dmp.metadata import derived_uid, reference_id
from drimbox.dmp.structures import StructureError, choose_structure, site_structures
from drimbox.dmp.xades import SignedDocument, XmlSigner, build_signature_document
from drimbox.source.intake import identifier_text


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
    audit_import(db, "xdm_import", actor, len(result.imported), len(result.already))
    return result


def export_bytes(config: Config, db: Database, since: datetime | None = None) -> bytes:
    """The archive in memory (tests, small sites)."""
    buffer = io.BytesIO()
    export_published(config, db, buffer, since=since)
    return buffer.getvalue()
