"""Benchmark: HL7 receipt → KOS registered in the DMP simulator, and sustained publication rate.

Run: `uv run python bench/publication.py [--instances 1300] [--runs 7] [--reports 200]`.
(a) one 1300-instance study: each run sends a new version of the report, timed until the KOS is
Approved in the DMP simulator (C-FIND, KOS, VIHF + XAdES signatures, ITI-41 over mutual TLS; each
version replaces the previous one with RPLC). Measured twice in the same run against the same
Orthanc: by today's code, and by the code of `--baseline` (default: the commit before issue #17's
work, extracted with `git archive`), each in its own process with its own DMP simulator, node and
database; the ratio is printed. (b) 200 reports of 200 distinct small studies sent at once, timed
until all are published (today's code). The DMP is a local simulator: its own processing is
included, network latency to the real DMP is not. (c) first, the study snapshot alone (C-FIND
study, series, images: `PacsClient.snapshot`) by the box's lean C-FIND path and by pynetdicom's
own, alternated: wall time, the CPU of the box's process and of Orthanc; and Orthanc's REST
`/tools/find` of the same instances for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

# A baseline run imports the old tree's drimbox and test helpers (DRIMBOX_BENCH_TREE).
TREE = Path(os.environ.get("DRIMBOX_BENCH_TREE", Path(__file__).resolve().parents[1]))
sys.path[:0] = [str(TREE / "src"), str(TREE / "tests"), str(Path(__file__).resolve().parent)]

from common import percentile, summary  # noqa: E402

from drimbox.cda import parse_report  # noqa: E402
from drimbox.db import ReportState  # noqa: E402
from drimbox.dicom.pacs import PacsClient, PacsSettings  # noqa: E402
from drimbox.sim.orthanc import LocalOrthanc  # noqa: E402
from drimbox.sim.ris import RisClient  # noqa: E402
from drimbox.sim.studies import SeriesSpec, generate_study_for_report  # noqa: E402
from support.dmp import local_dmp  # noqa: E402
from support.node import RunningNode, node_config  # noqa: E402
from support.samples import cda_of, exam_variant, hl7_text, report_variant  # noqa: E402

PUBLISHED = {ReportState.PUBLISHED.value, ReportState.REPLACED.value}
FINAL = PUBLISHED | {ReportState.PARKED.value, ReportState.REFUSED.value}
REPO = Path(__file__).resolve().parents[1]
# main just before issue #17 (KOS built by highdicom item by item, C-FIND of every SOP class).
BASELINE = "a3b7d14"


def single_study(pacs_port: int, pacs_aet: str, runs: int, first_version: int) -> list[float]:
    """(a) in this process: a node and a DMP simulator of its own, the shared Orthanc."""
    text = hl7_text("CR_C-ORU.hl7")
    work = Path(tempfile.mkdtemp(prefix="drimbox-bench-pub-node-"))
    pacs = {"host": "127.0.0.1", "port": pacs_port, "called_aet": pacs_aet}
    latencies = []
    with local_dmp(work / "dmp") as dmp:
        config = node_config(work / "node", None, dmp.node_environ(), pacs=pacs)
        with RunningNode(config) as node, RisClient("127.0.0.1", node.hl7_port) as ris:
            for run in range(runs):
                started = time.perf_counter()
                assert ris.send(report_variant(text, first_version + run)).code == "AA"
                report_id = node.reports()[-1].id
                done = node.wait_for_report(report_id, FINAL, timeout_s=600)
                latencies.append(time.perf_counter() - started)
                assert done.state in PUBLISHED, done.reason
    shutil.rmtree(work, ignore_errors=True)
    return latencies


def snapshot_figures(pacs: LocalOrthanc, study_uid: str, runs: int) -> None:
    """(c): the snapshot by each C-FIND path, alternated; the results must be identical."""
    settings = PacsSettings(host="127.0.0.1", port=pacs.dicom_port, called_aet=pacs.aet)
    reference = PacsClient(settings, lean_find=False).snapshot(study_uid)
    assert reference is not None
    orthanc = f"/proc/{pacs._process.pid}/stat" if pacs._process else ""
    figures: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    for _ in range(runs):
        for lean in (False, True):
            client = PacsClient(settings, lean_find=lean)
            ours, theirs, started = time.process_time(), _cpu_s(orthanc), time.perf_counter()
            assert client.snapshot(study_uid) == reference
            wall = time.perf_counter() - started
            figures[lean].append((wall, time.process_time() - ours, _cpu_s(orthanc) - theirs))
    rest = []
    for _ in range(runs):
        started = time.perf_counter()
        found = pacs.client.post(
            "/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}}
        ).json()
        rest.append(time.perf_counter() - started)
    count = sum(len(s.instances) for s in reference.series)
    assert len(found) == count
    print(f"\nStudy snapshot ({count} instances), p50 of {runs}, load {os.getloadavg()[0]:.2f}:")
    for lean, label in ((False, "pynetdicom's C-FIND path"), (True, "lean C-FIND path ......")):
        wall, cpu, orthanc_cpu = (percentile([f[i] for f in figures[lean]], 0.5) for i in range(3))
        print(f"  {label}: wall {wall:.3f} s, box CPU {cpu:.3f} s, Orthanc CPU {orthanc_cpu:.3f} s")
    print(f"  Orthanc REST /tools/find (instances): wall {percentile(rest, 0.5):.3f} s")


def _cpu_s(stat_path: str) -> float:
    """User + system CPU seconds of a process (0 when unknown)."""
    if not stat_path:
        return 0.0
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def baseline_tree(commit: str, work: Path) -> Path:
    """The `src` and `tests` of `commit`, extracted under `work`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit, "src", "tests"],
        capture_output=True, check=True,
    )  # fmt: skip
    target = work / f"tree-{commit}"
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target


def measured_in_child(tree: Path | None, pacs: LocalOrthanc, runs: int, first: int) -> list[float]:
    env = dict(os.environ)
    if tree is not None:
        env["DRIMBOX_BENCH_TREE"] = str(tree)
        env["PYTHONPATH"] = os.pathsep.join([str(tree / "src"), env.get("PYTHONPATH", "")])
    child = subprocess.run(
        [sys.executable, __file__, "--child", str(pacs.dicom_port), pacs.aet,
         "--runs", str(runs), "--first-version", str(first)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if child.returncode != 0:
        raise SystemExit(f"measure failed ({tree or 'today'}):\n{child.stderr[-3000:]}")
    latencies: list[float] = json.loads(child.stdout.strip().splitlines()[-1])
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=1300)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--reports", type=int, default=200)
    parser.add_argument("--snapshot-runs", type=int, default=7, help="(c); 0: skip it")
    parser.add_argument("--baseline", default=BASELINE, help="git commit measured as baseline")
    parser.add_argument("--child", nargs=2, metavar=("PACS_PORT", "PACS_AET"), help="internal")
    parser.add_argument("--first-version", type=int, default=50_000, help="internal")
    args = parser.parse_args()
    if args.child:
        latencies = single_study(int(args.child[0]), args.child[1], args.runs, args.first_version)
        print(json.dumps(latencies))
        return

    work = Path(tempfile.mkdtemp(prefix="drimbox-bench-pub-"))
    text = hl7_text("CR_C-ORU.hl7")
    report = parse_report(cda_of(text))
    old_tree = baseline_tree(args.baseline, work)
    with LocalOrthanc() as pacs, local_dmp(work / "dmp") as dmp:
        files = generate_study_for_report(
            work / "big", report, [SeriesSpec("CT", "Thorax", args.instances)], rows=64, columns=64
        )
        pacs.store_files(files)
        exams = [exam_variant(text, index) for index in range(args.reports)]
        for index, exam in enumerate(exams):
            exam_report = parse_report(cda_of(exam))
            pacs.store_files(generate_study_for_report(
                work / f"s{index}", exam_report, [SeriesSpec("CT", "x", 3)], rows=32, columns=32
            ))  # fmt: skip
        print(f"PACS ready: {args.instances}-instance study + {args.reports} small studies")
        if args.snapshot_runs > 0:
            snapshot_figures(pacs, report.study_instance_uid, args.snapshot_runs)

        # Alternated halves, so that the machine's load weighs on both alike.
        half = max(1, args.runs // 2)
        before, today = [], []
        for turn, runs in enumerate((half, half, args.runs - half, args.runs - half)):
            if runs <= 0:
                continue
            tree = old_tree if turn % 2 == 0 else None
            measured = measured_in_child(tree, pacs, runs, 50_000 + 1000 * turn)
            (before if tree else today).extend(measured)
        p50_before, p50_today = percentile(before, 0.5), percentile(today, 0.5)
        print(
            f"\nHL7 receipt → KOS Approved in the DMP ({args.instances} instances), "
            f"load average {os.getloadavg()[0]:.2f}:"
        )
        print(f"  baseline ({args.baseline}) {summary(before)}; p50 {p50_before:.2f} s")
        print(
            f"  today .............. {summary(today)}; p50 {p50_today:.2f} s, "
            f"p95 {percentile(today, 0.95):.2f} s"
        )
        print(f"  ratio today / baseline (p50): {p50_today / p50_before:.2f}")  # fmt: skip

        config = node_config(work / "node", pacs, dmp.node_environ())
        with RunningNode(config) as node, RisClient("127.0.0.1", node.hl7_port) as ris:
            before_count = len(node.reports())
            started = time.perf_counter()
            for exam in exams:
                assert ris.send(exam).code == "AA"
            acked = time.perf_counter() - started
            ids = [r.id for r in node.reports()[before_count:]]
            for report_id in ids:
                done = node.wait_for_report(report_id, FINAL, timeout_s=1200)
                assert done.state in PUBLISHED, done.reason
            elapsed = time.perf_counter() - started
        kos = [d for d in dmp.documents() if d["mime_type"] == "application/dicom"]
        print(
            f"\n{args.reports} reports (distinct exams): all ACKed in {acked:.1f} s, all "
            f"published in {elapsed:.1f} s → {args.reports / elapsed * 60:.0f} reports/minute "
            f"(load average {os.getloadavg()[0]:.2f})"
        )
        print(f"DMP registry: {len(kos)} KOS entries, ITI-41 requests: "
              f"{dmp.stats().get('ITI-41', 0)}")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
