"""Publishing reports through a running node: studies in Orthanc, reports over MLLP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from typer.testing import CliRunner

from drimbox.cli import app
from drimbox.db import Report, ReportState
from drimbox.hl7.message import parse_report_message
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ris import RisClient
from drimbox.sim.studies import SeriesSpec, generate_study_for_report
from support.dmp import DmpEnvironment
from support.node import RunningNode, node_config

SERIES = (SeriesSpec("CT", "Crâne", 4), SeriesSpec("CT", "Crâne injecté", 3))
DONE = {
    ReportState.PUBLISHED.value,
    ReportState.PARKED.value,
    ReportState.REFUSED.value,
    ReportState.APPLIED.value,
    ReportState.REPLACED.value,
    ReportState.WITHDRAWN.value,
    ReportState.NOT_FOR_DMP.value,
    ReportState.SUPERSEDED.value,
}


def store_study_for(
    pacs: LocalOrthanc,
    tmp_path: Path,
    message: str,
    series: tuple[SeriesSpec, ...] = SERIES,
    study_uid: str | None = None,
    uid_root: str | None = None,
) -> list[Path]:
    """Store in Orthanc a study matching the message's report (or its study `study_uid`);
    another `uid_root` gives new series and instances (images added later)."""
    report = parse_report_message(message).report
    assert report is not None
    if study_uid is not None:
        report = replace(report, study_instance_uid=study_uid)
    folder = tmp_path / f"study-{report.study_instance_uid}-{len(list(tmp_path.iterdir()))}"
    extra = {"uid_root": uid_root} if uid_root else {}
    files = generate_study_for_report(folder, report, list(series), rows=32, columns=32, **extra)
    pacs.store_files(files)
    return files


def send(node: RunningNode, *messages: str) -> list[int]:
    with RisClient("127.0.0.1", node.hl7_port) as ris:
        for message in messages:
            ack = ris.send(message)
            assert ack.code == "AA", ack.ack
    return [r.id for r in node.reports()]


def cli(config_env: dict[str, str], *args: str) -> str:
    """Run the `drimbox` command with a node's configuration (environment + an empty file)."""
    empty = Path(config_env["DRIMBOX_STORE__CACHE_DIR"]).parent / "empty.toml"
    empty.write_text("")
    args = tuple(str(empty) if a == "-" else a for a in args)
    if "--config" not in args and "-o" in args:
        args = (*args, "--config", str(empty))
    result = CliRunner().invoke(app, list(args), env=config_env)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # rich wraps long lines at the terminal's width


@contextmanager
def node_that_sent(
    pacs: LocalOrthanc,
    dmp: DmpEnvironment,
    tmp_path: Path,
    message: str,
    **sections: dict[str, str],
) -> Iterator[tuple[RunningNode, Report]]:
    """A node (in `tmp_path`) that received `message`, whose study is in the PACS, and is done
    with it; the node runs while the block does."""
    store_study_for(pacs, tmp_path, message)
    folder = tmp_path / "node"
    folder.mkdir()
    with RunningNode(node_config(folder, pacs, dmp.node_environ(), **sections)) as node:
        [first] = send(node, message)
        yield node, node.wait_for_report(first, DONE)
