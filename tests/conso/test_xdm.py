"""XDM (IHE ITI-32) export and import: round trip, and the archives an import must refuse."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest
from lxml import etree

from conso.helpers import Study, make_study
from drimbox.conso.common import FileInstance, FolderStore
from drimbox.conso.xdm import (
    METADATA,
    SUBSET,
    XdmDocument,
    XdmError,
    XdmLimits,
    XdmPatient,
    read_xdm,
    write_xdm,
)
from drimbox.dmp import codes
from drimbox.samples import ANS_DIR
from support.factories import CR_C_INS, CR_C_INS_OID

CDA = (ANS_DIR / "cda" / "CR_C.xml").read_bytes()
SIGNATURE = b"<ds:Signature xmlns:ds='http://www.w3.org/2000/09/xmldsig#'/>"
PATIENT = XdmPatient(CR_C_INS, CR_C_INS_OID, "PAT-TROIS DOMINIQUE")


def export(study: Study, *, images: bool = True) -> bytes:
    buffer = io.BytesIO()
    write_xdm(
        buffer,
        PATIENT,
        [
            XdmDocument("kos", study.kos, study.manifest.sop_instance_uid, title="Manifeste"),
            XdmDocument("report", CDA, "1.2.250.1.213.4.5.4.403", title="Compte rendu"),
            XdmDocument("signature", SIGNATURE, "1.2.250.1.999.77.4.1"),
        ],
        images=[FileInstance.of(p) for p in study.files] if images else [],
        source_id="1.2.250.1.999.77",
        submission_unique_id="1.2.250.1.999.77.7.1",
    )
    return buffer.getvalue()


def rewrite(
    archive: bytes, change: dict[str, bytes | None], add: dict[str, bytes] | None = None
) -> bytes:
    """The archive with entries replaced (or removed when None) and others added."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            if info.filename in change:
                if change[info.filename] is not None:
                    target.writestr(info.filename, change[info.filename])  # type: ignore[arg-type]
            else:
                target.writestr(info, source.read(info))
        for name, data in (add or {}).items():
            target.writestr(name, data)
    return out.getvalue()


def test_round_trip(study: Study, tmp_path: Path) -> None:
    archive = export(study)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        names = set(zf.namelist())
        metadata = etree.fromstring(zf.read(METADATA))
    assert {"README.TXT", "INDEX.HTM", METADATA, f"{SUBSET}/KOS0001.DCM", f"{SUBSET}/CR0001.XML",
            f"{SUBSET}/SIG0001.XML"} <= names  # fmt: skip
    assert metadata.tag == f"{{{codes.LCM_NS}}}SubmitObjectsRequest"
    entries = list(metadata.iter(f"{{{codes.RIM_NS}}}ExtrinsicObject"))
    assert len(entries) == 3
    kos_entry = next(e for e in entries if e.get("mimeType") == "application/dicom")
    slots = {
        s.get("name"): [v.text for v in s.iter(f"{{{codes.RIM_NS}}}Value")]
        for s in kos_entry.iterfind(f"{{{codes.RIM_NS}}}Slot")
    }
    assert slots["hash"] == [hashlib.sha1(study.kos).hexdigest()]
    assert slots["size"] == [str(len(study.kos))] and slots["URI"] == ["KOS0001.DCM"]

    store = FolderStore(tmp_path / "imported")
    imported = read_xdm(io.BytesIO(archive), store=store)
    assert imported.kos == study.kos and imported.reports == [CDA]
    assert imported.signatures == [SIGNATURE]
    assert imported.patient_id == f"{CR_C_INS}^^^&{CR_C_INS_OID}&ISO^NH"
    assert imported.images == 5 and imported.manifest.study_uid == study.report.study_instance_uid
    for series in imported.manifest.series:
        for item in store.instances(series.study_uid, series.series_uid):
            assert item.read() == study.by_sop[item.sop_instance_uid].read_bytes()


def test_archive_to_a_file_without_images(study: Study, tmp_path: Path) -> None:
    path = tmp_path / "exam.zip"
    path.write_bytes(export(study, images=False))
    imported = read_xdm(path)
    assert imported.images == 0 and imported.reports == [CDA]


def test_path_traversal_is_refused(study: Study) -> None:
    archive = export(study, images=False)
    for name in ("IHE_XDM/SUBSET01/../../evil.sh", "/etc/passwd", "IHE_XDM\\SUBSET01\\x"):
        with pytest.raises(XdmError, match="nom de fichier dangereux"):
            read_xdm(io.BytesIO(rewrite(archive, {}, {name: b"x"})))
    # A METADATA.XML URI that climbs out of the subset.
    metadata = zipfile.ZipFile(io.BytesIO(archive)).read(METADATA)
    climbing = metadata.replace(b">CR0001.XML<", b">../../README.TXT<")
    with pytest.raises(XdmError, match="dangereux"):
        read_xdm(io.BytesIO(rewrite(archive, {METADATA: climbing})))


def test_hash_mismatch_is_refused(study: Study) -> None:
    archive = export(study, images=False)
    tampered = CDA.replace(b"PAT-TROIS", b"PAT-QUATR")
    with pytest.raises(XdmError, match="modifié"):
        read_xdm(io.BytesIO(rewrite(archive, {f"{SUBSET}/CR0001.XML": tampered})))
    with pytest.raises(XdmError, match="absent"):
        read_xdm(io.BytesIO(rewrite(archive, {f"{SUBSET}/CR0001.XML": None})))


def test_oversized_and_bombs_are_refused(study: Study) -> None:
    archive = export(study)
    with pytest.raises(XdmError, match="volumineux"):
        read_xdm(io.BytesIO(archive), limits=XdmLimits(max_document_bytes=1000))
    with pytest.raises(XdmError, match="volumineux"):
        read_xdm(io.BytesIO(archive), store=FolderStore(Path("/nonexistent")),
                 limits=XdmLimits(max_total_bytes=20_000))  # fmt: skip
    with pytest.raises(XdmError, match="trop de fichiers"):
        read_xdm(io.BytesIO(archive), limits=XdmLimits(max_entries=3))
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(METADATA, b"<a/>" + b" " * 50_000_000)
    with pytest.raises(XdmError, match=r"bombe|volumineux"):
        read_xdm(io.BytesIO(bomb.getvalue()))


def test_an_image_the_kos_does_not_reference_is_refused(study: Study, tmp_path: Path) -> None:
    other = make_study(tmp_path / "other", study_uid="1.2.826.0.1.3680043.8.498.77.9.6")
    archive = rewrite(
        export(study), {}, {f"{SUBSET}/IMAGES/X000001.DCM": other.files[0].read_bytes()}
    )
    store = FolderStore(tmp_path / "imported")
    with pytest.raises(XdmError, match="pas référencée"):
        read_xdm(io.BytesIO(archive), store=store)
    assert not (tmp_path / "imported").exists()  # nothing stored from a refused archive


def test_not_a_zip_and_not_xdm() -> None:
    with pytest.raises(XdmError, match="zip"):
        read_xdm(io.BytesIO(b"PK not really"))
    empty = io.BytesIO()
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("README.TXT", b"hello")
    with pytest.raises(XdmError, match="METADATA"):
        read_xdm(io.BytesIO(empty.getvalue()))


def test_xdm_import_command(study: Study, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from drimbox.cli import app

    archive = tmp_path / "examen.zip"
    archive.write_bytes(export(study))
    runner = CliRunner()
    result = runner.invoke(app, ["xdm", "import", str(archive), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "Archive valide" in result.output and study.manifest.study_uid in result.output
    assert (tmp_path / "out" / "kos.dcm").read_bytes() == study.kos
    assert len(list((tmp_path / "out" / "images").rglob("*.dcm"))) == len(study.files)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    refused = runner.invoke(app, ["xdm", "import", str(broken)])
    assert refused.exit_code == 1 and "archive refusée" in refused.output
