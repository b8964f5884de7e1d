"""KOS pre-integrated into the Conso (issue 14 §6, homologation scenarios), over real sockets: a
Source node (real Orthanc) exports its published KOS with `drimbox xdm export`; a Conso node
imports the archive with `drimbox xdm import`; with the DMP simulator stopped, a contextual
launch for the patient lists the exam, says the DMP could not be reached, and its images are
retrieved from the Source named by the KOS's RetrieveURL. Archives the Conso cannot use are
refused with a French reason."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from drimbox.cli import app
from drimbox.conso.xdm import XdmDocument, XdmPatient, write_xdm
from drimbox.db import Report
from drimbox.db.models import ConsoImportedKos
from drimbox.dicom.kos import manifest_from_bytes, manifest_to_bytes
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.trust import audit
from support.factories import CR_C_INS, CR_C_INS_OID
from support.history import HistoryNetwork, launch, long_history, signed_in_user, wait_prefetch
from support.process import config_environ
from support.publishing import cli
from support.samples import cda_of, hl7_text

STUDY_C = "1.2.250.1.213.4.5.2.1.103"  # the study of the ANS sample report CR_C


@pytest.fixture(scope="module")
def network(
    orthanc: LocalOrthanc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HistoryNetwork]:
    with long_history(orthanc, tmp_path_factory.mktemp("preintegrated"), count=1) as built:
        yield built


def conso_environ(network: HistoryNetwork) -> dict[str, str]:
    return config_environ(network.conso.config) | {
        "DRIMBOX_ROLES__SOURCE": "false",
        "DRIMBOX_ROLES__CONSO": "true",
    }


def exported_archive(network: HistoryNetwork) -> Path:
    """The Source's published KOS, with the report it was published with (the ANS sample CR_C
    made the report of the generated study), exported by the CLI."""
    exam = network.exams[0]
    cda = cda_of(hl7_text("CR_C-ORU.hl7")).replace(STUDY_C.encode(), exam.study_uid.encode())
    with network.source.node.db.session() as session:
        row = session.get(Report, exam.study.report_id)
        assert row is not None
        row.cda = cda
    archive = network.tmp / "source-export.zip"
    output = cli(config_environ(network.source.config), "xdm", "export", "-o", str(archive))
    assert "1 KOS" in output
    return archive


def test_an_imported_archive_is_the_history_when_the_dmp_is_down(network: HistoryNetwork) -> None:
    exam = network.exams[0]
    archive = exported_archive(network)
    env = conso_environ(network)
    output = cli(env, "xdm", "import", str(archive), "--config", "-")
    assert "1 examen(s) ajouté(s)" in output and "pré-intégrée à la Conso" in output
    assert "1 déjà présent(s)" in cli(env, "xdm", "import", str(archive), "--config", "-")
    with network.conso.node.db.session() as session:
        [stored] = session.scalars(select(ConsoImportedKos))
        assert (stored.patient_ins, stored.study_uid) == (CR_C_INS, exam.study_uid)
        assert stored.kos_sop_uid == exam.study.kos_uid and stored.report is not None
        # The Conso node restored nothing into a Source.
        assert list(session.scalars(select(Report))) == []

    network.dmp.dmp.stop()
    start = max((int(e["id"]) for e in audit.events(network.conso.node.db)), default=0)
    with signed_in_user(network) as browser:
        launch_url, page = launch(browser)
        text = unescape(page.text)
        assert "Le DMP n'a pas pu être joint" in text
        assert f'value="{exam.study_uid}"' in page.text  # the exam's row
        assert "pré-intégré" in text
        state = wait_prefetch(browser, launch_url)
        [job] = state["images"].values()
        assert job["etat"] == "termine", job
    retrieved = [
        e
        for e in audit.events(network.conso.node.db)
        if e["action"] == "wado_rs_retrieve" and int(e["id"]) > start
    ]
    assert {e["study_uid"] for e in retrieved} == {exam.study_uid}
    assert len(retrieved) == len(exam.study.series_uids)
    assert all(e["result"] == "ok" for e in retrieved)
    # Nothing claims the KOS came from the DMP.
    events = audit.events(network.conso.node.db)
    assert not [e for e in events if e["action"] == "dmp_retrieve_kos" and int(e["id"]) > start]


def test_archives_the_conso_cannot_use_are_refused(network: HistoryNetwork) -> None:
    exam = network.exams[0]
    with network.source.node.db.session() as session:
        row = session.get(Report, exam.study.report_id)
        assert row is not None and row.kos is not None
        kos = manifest_from_bytes(row.kos)
    before = stored_kos(network)
    for item in kos.CurrentRequestedProcedureEvidenceSequence:
        for series in item.ReferencedSeriesSequence:
            del series.RetrieveURL
    cda = cda_of(hl7_text("CR_C-ORU.hl7")).replace(STUDY_C.encode(), exam.study_uid.encode())
    bad = network.tmp / "sans-retrieve-url.zip"
    write_xdm(
        bad,
        XdmPatient(CR_C_INS, CR_C_INS_OID),
        [
            XdmDocument("kos", manifest_to_bytes(kos), str(kos.SOPInstanceUID)),
            XdmDocument("report", cda, "1.2.4"),
        ],
        source_id="1.2.250.1.999.77",
        submission_unique_id="1.2.250.1.999.77.6",
    )
    not_xdm = network.tmp / "pas-xdm.zip"
    with zipfile.ZipFile(not_xdm, "w") as zf:
        zf.writestr("README.TXT", "rien")
    env = conso_environ(network)
    empty = Path(env["DRIMBOX_STORE__CACHE_DIR"]).parent / "empty.toml"
    empty.write_text("")
    for archive, reason in ((bad, "RetrieveURL absente"), (not_xdm, "aucun METADATA.XML")):
        result = CliRunner().invoke(
            app, ["xdm", "import", str(archive), "--config", str(empty)], env=env
        )
        output = " ".join(result.output.split())
        assert result.exit_code == 1 and "Archive refusée" in output, output
        assert reason in output and "Traceback" not in output, output
    # The target follows the node's roles: a role it lacks, or an unknown one, is refused.
    for option, reason in (("source", "n'a pas le rôle source"), ("pacs", "inconnu")):
        args = ["xdm", "import", str(bad), "--config", str(empty), "--vers", option]
        result = CliRunner().invoke(app, args, env=env)
        output = " ".join(result.output.split())
        assert result.exit_code == 1 and reason in output, output
    assert stored_kos(network) == before  # nothing stored from a refused archive


def stored_kos(network: HistoryNetwork) -> list[tuple[str, bytes]]:
    with network.conso.node.db.session() as session:
        rows = session.scalars(select(ConsoImportedKos).order_by(ConsoImportedKos.id))
        return [(row.kos_sop_uid, row.kos) for row in rows]
