"""XDM reversibility of the Source: export the published KOS from one node, import them into a
fresh one, then update and depublish from there — over real sockets (MLLP, Orthanc, the DMP
simulator over mutual TLS) — and refuse archives that do not hold."""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from drimbox.cli import app
from drimbox.conso.xdm import XdmDocument, XdmError, XdmPatient, write_xdm
from drimbox.db import Database, Report, ReportState
from drimbox.samples import ans_file
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.source.grants import Grants
from drimbox.source.xdm import import_published
from support.dmp import DmpEnvironment
from support.node import RunningNode, node_config
from support.process import config_environ
from support.publishing import DONE, cli, node_that_sent, send
from support.samples import cda_of, cda_version, hl7_text

CR_C = hl7_text("CR_C-ORU.hl7")
STUDY_C = "1.2.250.1.213.4.5.2.1.103"


def kos_entries(dmp: DmpEnvironment) -> dict[str, dict[str, object]]:
    return {d["unique_id"]: d for d in dmp.documents() if d["mime_type"] == "application/dicom"}


def published_archive(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> tuple[Path, Report]:
    """Node A publishes report C and exports its published KOS with the CLI."""
    with node_that_sent(pacs, dmp, tmp_path, CR_C) as (node, published):
        config = node.config
    assert published.state == ReportState.PUBLISHED.value, published.reason
    archive = tmp_path / "export.zip"
    output = cli(config_environ(config), "xdm", "export", "-o", str(archive))
    assert "1 KOS" in output
    later = tmp_path / "later.zip"
    none = cli(config_environ(config), "xdm", "export", "-o", str(later), "--since", "2999-01-01")
    assert "0 KOS" in none and zipfile.ZipFile(later).namelist() == ["README.TXT", "INDEX.HTM"]
    return archive, published


def test_export_import_then_update_and_depublish(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    archive, published = published_archive(pacs, dmp, tmp_path)
    names = zipfile.ZipFile(archive).namelist()
    assert {"README.TXT", "INDEX.HTM"} <= set(names)
    folder = next(n for n in names if n.endswith("METADATA.XML")).rsplit("/", 1)[0]
    assert re.fullmatch(r"KA\d{6}/IHE_XDM/SS000001", folder)
    assert {f"{folder}/KOS_000001.DCM", f"{folder}/SIGN_000001.XML"} <= set(names)
    with zipfile.ZipFile(archive) as zf:
        assert zf.read(f"{folder}/KOS_000001.DCM") == published.kos

    fresh = tmp_path / "b"
    fresh.mkdir()
    config_b = node_config(fresh, pacs, dmp.node_environ())
    output = cli(config_environ(config_b), "xdm", "import", str(archive), "--config", "-")
    assert "1 KOS publié(s) importé(s)" in output
    again = cli(config_environ(config_b), "xdm", "import", str(archive), "--config", "-")
    assert "1 déjà présent(s)" in again

    with RunningNode(config_b) as node:
        [restored] = node.reports()
        assert restored.state == ReportState.PUBLISHED.value
        assert restored.kos_sop_uid == published.kos_sop_uid
        # Its images are served to peers holding the KOS (the image service's grant).
        content = Grants(node.node.db).for_peer(STUDY_C, published.kos_sop_uid or "")
        assert sum(len(s) for s in content.series.values()) == 7
        # The RIS re-sending the imported version is a re-send, not a new publication.
        assert send(node, CR_C) == [restored.id]
        # An update published from the new node replaces the imported KOS (RPLC) …
        send(node, cda_version(CR_C, "2", 2))
        update = node.wait_for_report(node.reports()[-1].id, DONE)
        assert update.state == ReportState.PUBLISHED.value, update.reason
        node.wait_for_report(restored.id, {ReportState.REPLACED.value})
        # … and a depublication deletes it.
        send(node, hl7_text("CR_C_Depublication-ORU.hl7"))
        node.wait_for_report(update.id, {ReportState.WITHDRAWN.value})
    entries = kos_entries(dmp)
    assert entries[published.kos_sop_uid or ""]["status"] == "Deprecated"
    assert entries[update.kos_sop_uid or ""]["replaces"] == published.dmp_entry_uuid
    assert entries[update.kos_sop_uid or ""]["status"] == "Deleted"


def _rewrite(archive: Path, out: Path, change: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            for suffix, replacement in change.items():
                if name.endswith(suffix):
                    data = replacement
            target.writestr(name, data)
    return out


def _metadata(archive: Path) -> bytes:
    with zipfile.ZipFile(archive) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith("METADATA.XML")))


def test_archives_that_do_not_hold_are_refused(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    archive, published = published_archive(pacs, dmp, tmp_path)
    assert published.kos is not None
    db = Database(f"sqlite:///{tmp_path / 'fresh.db'}")
    db.upgrade()
    metadata = _metadata(archive)
    other_ins = b"180036512345646"  # a valid NIR, another patient
    kos_hash = re.search(rb'name="hash">\s*<rim:ValueList>\s*<rim:Value>([0-9a-f]+)', metadata)
    assert kos_hash is not None
    not_a_kos = ans_file("cda/CR_C.xml").read_bytes()
    forged_metadata = metadata.replace(
        kos_hash.group(1), hashlib.sha1(not_a_kos).hexdigest().encode(), 1
    ).replace(f">{len(published.kos)}<".encode(), f">{len(not_a_kos)}<".encode(), 1)
    cases = {
        "modifié": {"KOS_000001.DCM": published.kos[:-4] + b"\0\0\0\0"},
        "identifiants patient discordants": {
            "METADATA.XML": metadata.replace(b"279035121518989", other_ins)
        },
        "illisible": {"KOS_000001.DCM": not_a_kos, "METADATA.XML": forged_metadata},
        "absent": {"SIGN_000001.XML": b""},
    }
    for n, (reason, change) in enumerate(cases.items()):
        if reason == "absent":
            bad = tmp_path / f"bad{n}.zip"
            with zipfile.ZipFile(archive) as source, zipfile.ZipFile(bad, "w") as target:
                for name in source.namelist():
                    if not name.endswith("SIGN_000001.XML"):
                        target.writestr(name, source.read(name))
        else:
            bad = _rewrite(archive, tmp_path / f"bad{n}.zip", change)
        with pytest.raises(XdmError) as refused:
            import_published(db, bad)
        assert refused.value.message.startswith("Archive refusée"), refused.value.message
        assert reason in str(refused.value), (reason, str(refused.value))
    (tmp_path / "empty.toml").write_text("")
    runner = CliRunner().invoke(
        app,
        ["xdm", "import", str(tmp_path / "bad0.zip"), "--config", str(tmp_path / "empty.toml")],
        env={"DRIMBOX_STORE__DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}"},
    )
    assert runner.exit_code == 1 and "Archive refusée" in runner.output
    with db.session() as session:
        assert list(session.scalars(select(Report))) == []  # nothing restored from a bad one

    # The layout the Conso writes (IHE_XDM/SUBSET01) is read too.
    conso = tmp_path / "conso.zip"
    write_xdm(
        conso,
        XdmPatient("279035121518989", "1.2.250.1.213.1.4.10"),
        [
            XdmDocument("kos", published.kos, published.kos_sop_uid or ""),
            XdmDocument("report", cda_of(CR_C), "1.2.4"),
        ],
        source_id="1.2.250.1.999.77",
        submission_unique_id="1.2.250.1.999.77.5",
    )
    result = import_published(db, conso)
    assert result.imported == [published.kos_sop_uid] and result.reports == 1
    with db.session() as session:
        [row] = session.scalars(select(Report))
        assert (row.state, row.study_uid) == (ReportState.PUBLISHED.value, STUDY_C)
