"""Benchmark: HL7 receipt → KOS registered in the DMP simulator, and sustained publication rate.

Run: `uv run python bench/publication.py [--instances 1300] [--runs 7] [--reports 200]`.
(a) one 1300-instance study: each run sends a new version of the report, timed until the KOS is
Approved in the DMP simulator (C-FIND, KOS, VIHF + XAdES signatures, ITI-41 over mutual TLS; each
version replaces the previous one with RPLC); (b) 200 reports of 200 distinct small studies sent
at once, timed until all are published. The DMP is a local simulator: its own processing is
included, network latency to the real DMP is not.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from common import percentile, summary

from drimbox.cda import parse_report
from drimbox.db import ReportState
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ris import RisClient
from drimbox.sim.studies import SeriesSpec, generate_study_for_report
from support.dmp import local_dmp
from support.node import RunningNode, node_config
from support.samples import cda_of, exam_variant, hl7_text, report_variant

PUBLISHED = {ReportState.PUBLISHED.value, ReportState.REPLACED.value}
FINAL = PUBLISHED | {ReportState.PARKED.value, ReportState.REFUSED.value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=1300)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--reports", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="drimbox-bench-pub-"))
    text = hl7_text("CR_C-ORU.hl7")
    report = parse_report(cda_of(text))
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

        config = node_config(work / "node", pacs, dmp.node_environ())
        latencies = []
        with RunningNode(config) as node, RisClient("127.0.0.1", node.hl7_port) as ris:
            for run in range(args.runs):
                started = time.perf_counter()
                assert ris.send(report_variant(text, 50_000 + run)).code == "AA"
                report_id = node.reports()[-1].id
                done = node.wait_for_report(report_id, FINAL, timeout_s=600)
                latencies.append(time.perf_counter() - started)
                assert done.state in PUBLISHED, done.reason
            print(f"\nHL7 receipt → KOS Approved in the DMP ({args.instances} instances):")
            print(f"  {summary(latencies)}; p50 {percentile(latencies, 0.5):.2f} s, "
                  f"p95 {percentile(latencies, 0.95):.2f} s")  # fmt: skip

            before = len(node.reports())
            started = time.perf_counter()
            for exam in exams:
                assert ris.send(exam).code == "AA"
            acked = time.perf_counter() - started
            ids = [r.id for r in node.reports()[before:]]
            for report_id in ids:
                done = node.wait_for_report(report_id, FINAL, timeout_s=1200)
                assert done.state in PUBLISHED, done.reason
            elapsed = time.perf_counter() - started
        kos = [d for d in dmp.documents() if d["mime_type"] == "application/dicom"]
        print(
            f"\n{args.reports} reports (distinct exams): all ACKed in {acked:.1f} s, all "
            f"published in {elapsed:.1f} s → {args.reports / elapsed * 60:.0f} reports/minute"
        )
        print(f"DMP registry: {len(kos)} KOS entries, ITI-41 requests: "
              f"{dmp.stats().get('ITI-41', 0)}")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
