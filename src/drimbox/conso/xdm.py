"""IHE ITI-32 XDM: an exam as a zip to hand over (CD, USB key, secure mail) and read back.

Owns the layout of the archive — `README.TXT`, `INDEX.HTM`, `IHE_XDM/SUBSET01/METADATA.XML` (an
ebRIM `lcm:SubmitObjectsRequest`: a submission set and one DocumentEntry per document with its
SHA-1 `hash`, `size` and `URI`), the documents beside it (the KOS, the CDA reports, the
signature document when there is one) and, on request, the images under
`IHE_XDM/SUBSET01/IMAGES/` (referenced by the KOS, so not XDS documents) — and the import of
such an archive with every check an untrusted zip deserves: entry names (no absolute path, no
`..`, no backslash, no link), sizes and counts bounded while reading (not trusting the declared
sizes), each document's hash and size against METADATA.XML, images only if the KOS references
them. It must not talk to the DMP, a PACS or a peer.
"""

from __future__ import annotations

import hashlib
import html
import stat
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Final

from lxml import etree

from drimbox.cda.model import Code
from drimbox.conso.common import ConsoError, InstanceSource, InstanceStore
from drimbox.conso.history import Manifest, SeriesRef, read_manifest
from drimbox.dicom.cache import describe_instance
from drimbox.dmp import codes
from drimbox.dmp.metadata import DocumentEntry, cx, dtm

ROOT: Final = "IHE_XDM"
SUBSET: Final = f"{ROOT}/SUBSET01"
METADATA: Final = f"{SUBSET}/METADATA.XML"
IMAGES_DIR: Final = "IMAGES"
_RIM: Final = codes.RIM_NS
_LCM: Final = codes.LCM_NS
REPORT_TYPE: Final = Code("18748-4", "2.16.840.1.113883.6.1", "CR d'imagerie médicale")
REPORT_FORMAT: Final = Code(
    "urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013", "1.3.6.1.4.1.19376.1.2.3"
)


class XdmError(ConsoError):
    """An XDM archive refused on import, or that cannot be built."""

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__("XDM_INVALIDE", message, detail=detail)


@dataclass(frozen=True)
class XdmDocument:
    """A document of the exam: its bytes and, when it came from the DMP, its entry."""

    kind: str  # "kos", "report" or "signature"
    data: bytes
    unique_id: str
    entry: DocumentEntry | None = None
    title: str = ""
    slots: Mapping[str, Sequence[str]] = field(default_factory=dict)  # extra ebRIM slots

    @property
    def mime_type(self) -> str:
        if self.entry is not None and self.entry.mime_type:
            return self.entry.mime_type
        return codes.KOS_MIME_TYPE if self.kind == "kos" else "text/xml"


@dataclass(frozen=True)
class XdmPatient:
    ins: str
    ins_oid: str
    name: str = ""


@dataclass(frozen=True)
class XdmLimits:
    """Bounds of an import: a zip bomb or a flood of entries is refused while reading."""

    max_entries: int = 20_000
    max_total_bytes: int = 8 * 1024**3
    max_document_bytes: int = 64 * 1024**2
    max_image_bytes: int = 2 * 1024**3
    max_ratio: int = 200  # uncompressed / compressed, per entry


# --- export -------------------------------------------------------------------------------------


def _rim(name: str) -> str:
    return f"{{{_RIM}}}{name}"


def _slot(parent: etree._Element, name: str, values: Sequence[str]) -> None:
    slot = etree.SubElement(parent, _rim("Slot"), name=name)
    value_list = etree.SubElement(slot, _rim("ValueList"))
    for value in values:
        etree.SubElement(value_list, _rim("Value")).text = value


def _name(parent: etree._Element, text: str) -> None:
    name = etree.SubElement(parent, _rim("Name"))
    etree.SubElement(name, _rim("LocalizedString"), value=text)


def _classify(parent: etree._Element, scheme: str, obj: str, code: Code, n: list[int]) -> None:
    n[0] += 1
    element = etree.SubElement(
        parent,
        _rim("Classification"),
        id=f"cl{n[0]:04d}",
        classificationScheme=scheme,
        classifiedObject=obj,
        nodeRepresentation=code.code,
    )
    _slot(element, "codingScheme", [code.code_system])
    _name(element, code.display_name or code.code)


def _external(
    parent: etree._Element, scheme: str, obj: str, value: str, name: str, n: list[int]
) -> None:
    n[0] += 1
    element = etree.SubElement(
        parent,
        _rim("ExternalIdentifier"),
        id=f"ei{n[0]:04d}",
        identificationScheme=scheme,
        registryObject=obj,
        value=value,
    )
    _name(element, name)


def _codes_of(document: XdmDocument) -> tuple[Code, Code, Code]:
    """(class, type, format) of a document: from its DMP entry when known."""
    entry = document.entry
    if document.kind == "kos":
        defaults = (codes.KOS_CLASS, codes.KOS_TYPE, codes.KOS_FORMAT)
    elif document.kind == "signature":
        defaults = (codes.SIGNATURE_CLASS, codes.SIGNATURE_TYPE, codes.SIGNATURE_FORMAT)
    else:
        defaults = (Code("10", "1.2.250.1.213.1.1.4.1", "Compte rendu"), REPORT_TYPE, REPORT_FORMAT)
    if entry is None:
        return defaults
    return (
        entry.class_code or defaults[0],
        entry.type_code or defaults[1],
        entry.format_code or defaults[2],
    )


def build_metadata(
    patient: XdmPatient,
    documents: Sequence[tuple[XdmDocument, str]],
    *,
    submission_unique_id: str,
    source_id: str,
    now: datetime | None = None,
) -> bytes:
    """METADATA.XML for `documents` given as (document, URI relative to the subset folder)."""
    now = now or datetime.now(UTC)
    patient_id = cx(patient.ins, patient.ins_oid, "NH")
    root = etree.Element(f"{{{_LCM}}}SubmitObjectsRequest", nsmap={"lcm": _LCM, "rim": _RIM})
    objects = etree.SubElement(root, _rim("RegistryObjectList"))
    counter = [0]
    package = etree.SubElement(objects, _rim("RegistryPackage"), id="SubmissionSet01")
    _slot(package, "submissionTime", [dtm(now)])
    _name(package, "Export DRIMbox (XDM)")
    etree.SubElement(
        package,
        _rim("Classification"),
        id="cl0000",
        classificationNode=codes.SUBMISSION_SET_NODE,
        classifiedObject="SubmissionSet01",
    )
    _external(
        package,
        codes.SS_PATIENT_ID,
        "SubmissionSet01",
        patient_id,
        "XDSSubmissionSet.patientId",
        counter,
    )
    _external(
        package,
        codes.SS_SOURCE_ID,
        "SubmissionSet01",
        source_id,
        "XDSSubmissionSet.sourceId",
        counter,
    )
    _external(
        package,
        codes.SS_UNIQUE_ID,
        "SubmissionSet01",
        submission_unique_id,
        "XDSSubmissionSet.uniqueId",
        counter,
    )
    for index, (document, uri) in enumerate(documents, start=1):
        doc_id = f"Document{index:02d}"
        entry = document.entry
        extrinsic = etree.SubElement(
            objects,
            _rim("ExtrinsicObject"),
            id=doc_id,
            mimeType=document.mime_type,
            objectType=codes.DOCUMENT_ENTRY_STABLE,
        )
        _slot(extrinsic, "hash", [hashlib.sha1(document.data).hexdigest()])
        _slot(extrinsic, "size", [str(len(document.data))])
        _slot(extrinsic, "URI", [uri])
        _slot(
            extrinsic,
            "creationTime",
            [dtm(entry.creation_time if entry and entry.creation_time else now)],
        )
        _slot(extrinsic, "languageCode", ["fr-FR"])
        _slot(extrinsic, "sourcePatientId", [patient_id])
        if entry is not None:
            if entry.service_start:
                _slot(extrinsic, "serviceStartTime", [dtm(entry.service_start)])
            if entry.service_stop:
                _slot(extrinsic, "serviceStopTime", [dtm(entry.service_stop)])
            if entry.reference_ids:
                _slot(extrinsic, codes.REFERENCE_ID_LIST, list(entry.reference_ids))
        _slot(extrinsic, "drimboxKind", [document.kind])  # lets an import sort the documents
        for slot_name, values in document.slots.items():
            _slot(extrinsic, slot_name, values)
        _name(extrinsic, document.title or (entry.title if entry else "") or document.kind)
        class_code, type_code, format_code = _codes_of(document)
        _classify(extrinsic, codes.DE_CLASS, doc_id, class_code, counter)
        _classify(extrinsic, codes.DE_TYPE, doc_id, type_code, counter)
        _classify(extrinsic, codes.DE_FORMAT, doc_id, format_code, counter)
        for code in (entry.confidentiality if entry else ()) or (codes.CONFIDENTIALITY_NORMAL,):
            _classify(extrinsic, codes.DE_CONFIDENTIALITY, doc_id, code, counter)
        for code in entry.event_codes if entry else ():
            _classify(extrinsic, codes.DE_EVENT, doc_id, code, counter)
        _external(
            extrinsic,
            codes.DE_PATIENT_ID,
            doc_id,
            patient_id,
            "XDSDocumentEntry.patientId",
            counter,
        )
        _external(
            extrinsic,
            codes.DE_UNIQUE_ID,
            doc_id,
            document.unique_id,
            "XDSDocumentEntry.uniqueId",
            counter,
        )
        association = etree.SubElement(
            objects,
            _rim("Association"),
            id=f"as{index:04d}",
            associationType=codes.ASSOC_HAS_MEMBER,
            sourceObject="SubmissionSet01",
            targetObject=doc_id,
        )
        _slot(association, "SubmissionSetStatus", ["Original"])
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


_FILE_NAMES: Final = {
    "kos": "KOS{n:04d}.DCM",
    "report": "CR{n:04d}.XML",
    "signature": "SIG{n:04d}.XML",
}


def _index_html(
    patient: XdmPatient, documents: Sequence[tuple[XdmDocument, str]], images: int
) -> bytes:
    rows = "\n".join(
        f'<li><a href="{SUBSET}/{html.escape(uri)}">{html.escape(d.title or d.kind)}</a> '
        f"({html.escape(d.mime_type)}, {len(d.data)} octets)</li>"
        for d, uri in documents
    )
    text = (
        '<!DOCTYPE html>\n<html lang="fr"><head><meta charset="utf-8">'
        "<title>Examen d'imagerie — export XDM</title></head><body>"
        f"<h1>Examen d'imagerie de {html.escape(patient.name or patient.ins)}</h1>"
        f"<p>INS : {html.escape(patient.ins)}</p><ul>{rows}</ul>"
        f"<p>{images} image(s) DICOM dans {SUBSET}/{IMAGES_DIR}/.</p></body></html>\n"
    )
    return text.encode("utf-8")


def _readme(source_name: str, now: datetime) -> bytes:
    return (
        "Export IHE XDM (ITI-32) produit par une DRIMbox\r\n"
        f"Émetteur : {source_name}\r\n"
        f"Date : {now:%Y-%m-%d %H:%M} UTC\r\n\r\n"
        f"Contenu : {METADATA} décrit les documents (manifeste KOS, comptes rendus CDA,\r\n"
        "document de signature) ; les images DICOM référencées par le manifeste sont dans\r\n"
        f"{SUBSET}/{IMAGES_DIR}/. Ouvrir INDEX.HTM pour la liste des documents.\r\n"
        "Données de santé à caractère personnel : à conserver et transmettre de façon "
        "sécurisée.\r\n"
    ).encode()


def write_xdm(
    out: Path | IO[bytes],
    patient: XdmPatient,
    documents: Sequence[XdmDocument],
    *,
    images: Sequence[InstanceSource] = (),
    source_id: str,
    source_name: str = "DRIMbox",
    submission_unique_id: str,
    now: datetime | None = None,
) -> None:
    """Write the XDM zip of an exam (`documents` must include exactly one KOS). Images are
    streamed into the zip one at a time."""
    now = now or datetime.now(UTC)
    if sum(1 for d in documents if d.kind == "kos") != 1:
        raise XdmError("Un export XDM contient exactement un manifeste (KOS).")
    counters: dict[str, int] = {}
    placed: list[tuple[XdmDocument, str]] = []
    for document in documents:
        counters[document.kind] = counters.get(document.kind, 0) + 1
        template = _FILE_NAMES.get(document.kind)
        if template is None:
            raise XdmError(f"Type de document inconnu : {document.kind}.")
        placed.append((document, template.format(n=counters[document.kind])))
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        zf.writestr("README.TXT", _readme(source_name, now))
        zf.writestr("INDEX.HTM", _index_html(patient, placed, len(images)))
        for document, uri in placed:
            zf.writestr(f"{SUBSET}/{uri}", document.data)
        zf.writestr(
            METADATA,
            build_metadata(
                patient,
                placed,
                submission_unique_id=submission_unique_id,
                source_id=source_id,
                now=now,
            ),
        )
        for n, image in enumerate(images, start=1):
            # Already-compressed pixel data gains nothing from deflate: stored as is.
            with zf.open(
                zipfile.ZipInfo(f"{SUBSET}/{IMAGES_DIR}/I{n:06d}.DCM", now.timetuple()[:6]),
                "w",
                force_zip64=True,
            ) as handle:
                handle.write(image.read())


# --- import -------------------------------------------------------------------------------------


@dataclass
class XdmImport:
    """What an archive brought: the KOS (parsed), the reports, signature documents, images."""

    manifest: Manifest
    kos: bytes
    reports: list[bytes] = field(default_factory=list)
    signatures: list[bytes] = field(default_factory=list)
    patient_id: str = ""  # CX of METADATA.XML
    images: int = 0
    image_bytes: int = 0


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or name.startswith("/")
        or (len(name) > 1 and name[1] == ":")
        or any(part in ("..", "") for part in name.rstrip("/").split("/"))
        or "\x00" in name
    ):
        raise XdmError(
            "Archive refusée : nom de fichier dangereux dans le zip.", detail=repr(name[:200])
        )
    return path


def _read_entry(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, limits: XdmLimits, budget: list[int]
) -> bytes:
    """An entry's bytes, counting what is really inflated (declared sizes can lie)."""
    out = bytearray()
    with zf.open(info) as handle:
        while True:
            chunk = handle.read(1024 * 1024)
            if not chunk:
                break
            out += chunk
            budget[0] -= len(chunk)
            if len(out) > limit or budget[0] < 0:
                raise XdmError(
                    "Archive refusée : contenu trop volumineux.",
                    detail=f"{info.filename} > {limit}",
                )
            if (
                info.compress_size
                and len(out) > max(info.compress_size, 1) * limits.max_ratio
                and len(out) > 1024 * 1024
            ):
                raise XdmError(
                    "Archive refusée : taux de compression suspect (bombe zip).",
                    detail=info.filename,
                )
    return bytes(out)


@dataclass(frozen=True)
class Described:
    """A document as METADATA.XML announces it."""

    uri: str
    digest: str
    size: int
    kind: str  # kos, report, signature
    mime_type: str
    slots: dict[str, list[str]]
    unique_id: str = ""


def _metadata_documents(xml: bytes) -> tuple[str, list[Described]]:
    """(patient CX, the documents) from METADATA.XML."""
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    try:
        root = etree.fromstring(xml, parser)
    except etree.XMLSyntaxError as exc:
        raise XdmError("Archive refusée : METADATA.XML illisible.", detail=str(exc)) from exc
    patient = ""
    documents: list[Described] = []
    for extrinsic in root.iter(_rim("ExtrinsicObject")):
        slots: dict[str, list[str]] = {}
        for slot in extrinsic.iterfind(_rim("Slot")):
            slots[slot.get("name", "")] = [(v.text or "").strip() for v in slot.iter(_rim("Value"))]
        unique_id = ""
        for external in extrinsic.iterfind(_rim("ExternalIdentifier")):
            if external.get("identificationScheme") == codes.DE_PATIENT_ID:
                patient = patient or external.get("value", "")
            if external.get("identificationScheme") == codes.DE_UNIQUE_ID:
                unique_id = external.get("value", "")
        try:
            uri = slots["URI"][0]
            digest = slots["hash"][0].lower()
            size = int(slots["size"][0])
        except (KeyError, IndexError, ValueError) as exc:
            raise XdmError(
                "Archive refusée : un document de METADATA.XML n'a pas d'URI, d'empreinte ou de "
                "taille.",
                detail=extrinsic.get("id", ""),
            ) from exc
        mime = extrinsic.get("mimeType", "")
        kind = (slots.get("drimboxKind") or [""])[0]
        if not kind:
            kind = "kos" if mime == codes.KOS_MIME_TYPE else "report"
        documents.append(Described(uri, digest, size, kind, mime, slots, unique_id))
    return patient, documents


def open_archive(
    archive: Path | IO[bytes], limits: XdmLimits
) -> tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo]]:
    """The zip and its entries by name, every name checked (no traversal, link or double)."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise XdmError(
            "Archive refusée : ce n'est pas un fichier zip lisible.", detail=str(exc)
        ) from exc
    try:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise XdmError("Archive refusée : trop de fichiers.", detail=str(len(infos)))
        by_name: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            _safe_name(info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise XdmError(
                    "Archive refusée : lien symbolique dans le zip.", detail=info.filename
                )
            if info.filename in by_name:
                raise XdmError("Archive refusée : fichier en double.", detail=info.filename)
            by_name[info.filename] = info
    except BaseException:
        zf.close()
        raise
    return zf, by_name


def read_subset(
    zf: zipfile.ZipFile,
    by_name: Mapping[str, zipfile.ZipInfo],
    subset: str,
    limits: XdmLimits,
    budget: list[int],
) -> tuple[str, list[tuple[Described, bytes]]]:
    """(patient CX, [(document, bytes)]) of one XDM subset folder, every document checked
    against METADATA.XML (present, same size, same SHA-1)."""
    metadata = f"{subset}/METADATA.XML"
    if metadata not in by_name:
        raise XdmError(f"Archive refusée : {metadata} absent (ce n'est pas un export XDM).")
    patient, described = _metadata_documents(
        _read_entry(zf, by_name[metadata], limits.max_document_bytes, limits, budget)
    )
    documents: list[tuple[Described, bytes]] = []
    for document in described:
        name = f"{subset}/{_safe_name(document.uri)}"
        member = by_name.get(name)
        if member is None:
            raise XdmError("Archive refusée : un document annoncé est absent.", detail=document.uri)
        data = _read_entry(zf, member, limits.max_document_bytes, limits, budget)
        if len(data) != document.size or hashlib.sha1(data).hexdigest() != document.digest:
            raise XdmError(
                "Archive refusée : un document a été modifié (empreinte ou taille différente "
                "de METADATA.XML).",
                detail=document.uri,
            )
        documents.append((document, data))
    return patient, documents


def read_xdm(
    archive: Path | IO[bytes],
    *,
    store: InstanceStore | None = None,
    limits: XdmLimits = XdmLimits(),
) -> XdmImport:
    """Validate and read an XDM archive. Documents are checked against METADATA.XML (hash,
    size); images go to `store` (skipped when None) only if the KOS references them.
    Raises `XdmError` (French) at the first problem; images already stored for a refused
    archive are failed (`SeriesWriter.fail`)."""
    zf, by_name = open_archive(archive, limits)
    with zf:
        budget = [limits.max_total_bytes]
        patient, documents = read_subset(zf, by_name, SUBSET, limits, budget)
        kos: bytes | None = None
        result_reports: list[bytes] = []
        signatures: list[bytes] = []
        for document, data in documents:
            if document.kind == "kos":
                if kos is not None:
                    raise XdmError("Archive refusée : plusieurs manifestes (KOS).")
                kos = data
            elif document.kind == "signature":
                signatures.append(data)
            else:
                result_reports.append(data)
        if kos is None:
            raise XdmError("Archive refusée : aucun manifeste (KOS) dans METADATA.XML.")
        manifest = read_manifest(kos)
        imported = XdmImport(manifest, kos, result_reports, signatures, patient)
        referenced = {uid: series for series in manifest.series for _cls, uid in series.instances}
        image_prefix = f"{SUBSET}/{IMAGES_DIR}/"
        image_infos = [
            i for n, i in by_name.items() if n.startswith(image_prefix) and not i.is_dir()
        ]
        if store is not None and image_infos:
            _import_images(zf, image_infos, manifest, referenced, store, limits, budget, imported)
        return imported


def _import_images(
    zf: zipfile.ZipFile,
    infos: list[zipfile.ZipInfo],
    manifest: Manifest,
    referenced: dict[str, SeriesRef],
    store: InstanceStore,
    limits: XdmLimits,
    budget: list[int],
    imported: XdmImport,
) -> None:
    # Two passes so that nothing reaches the store from a refused archive while memory holds
    # one image at a time: check every image, then read them again to store them by series.
    grouped: dict[str, list[zipfile.ZipInfo]] = {}
    for info in infos:
        data = _read_entry(zf, info, limits.max_image_bytes, limits, budget)
        try:
            sop, _cls, _ts = describe_instance(data)
        except Exception as exc:  # pydicom raises many kinds on bad input
            raise XdmError(
                "Archive refusée : image DICOM illisible.", detail=info.filename
            ) from exc
        series = referenced.get(sop)
        if series is None:
            raise XdmError(
                "Archive refusée : une image n'est pas référencée par le manifeste (KOS).",
                detail=f"{info.filename}: {sop}",
            )
        grouped.setdefault(series.series_uid, []).append(info)
    unlimited = [limits.max_total_bytes]
    for series_uid, members in grouped.items():
        writer = store.open_series(manifest.study_uid, series_uid)
        if writer is None:
            continue
        try:
            for info in members:
                data = _read_entry(zf, info, limits.max_image_bytes, limits, unlimited)
                writer.add(data)
                imported.images += 1
                imported.image_bytes += len(data)
        except BaseException as exc:
            writer.fail(exc)
            raise
        writer.finish()
