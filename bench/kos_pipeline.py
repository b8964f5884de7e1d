"""Benchmark: HL7 receipt → KOS built for a 1300-instance study in Orthanc, and MLLP intake rate.

Run: `uv run python bench/kos_pipeline.py [--instances 1300] [--runs 5]`. Prints figures and the
baseline measured in the same run: Orthanc answering the same image-level C-FIND queries to dcmtk
`findscu` (what any C-FIND client pays), so that our overhead on top of the PACS shows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydicom import dcmread

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from common import summary, timed

from drimbox.db import ReportState
from drimbox.hl7.message import parse_report_message
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ris import RisClient
from drimbox.sim.studies import SeriesSpec, generate_study_for_report
from support.node import RunningNode, node_config
from support.samples import hl7_text, report_variant

# Once its KOS is built, a report goes on to the DMP outbox (publishing, then parked or
# published): any of these means "KOS built".
BUILT = {ReportState.KOS_BUILT.value, ReportState.PUBLISHING.value, ReportState.PARKED.value,
         ReportState.PUBLISHED.value}  # fmt: skip
SETTLED = BUILT | {ReportState.REFUSED.value}


def findscu_baseline(pacs: LocalOrthanc, study_uid: str, series_uids: list[str]) -> float:
    """dcmtk findscu: the study's series, then each series' instances (what the box asks)."""
    findscu = shutil.which("findscu")
    if findscu is None:
        raise SystemExit("findscu (dcmtk) is required for the baseline")
    base = [findscu, "-S", "-aec", pacs.aet, "127.0.0.1", str(pacs.dicom_port)]
    env = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk stalls ~70 ms per PDU on loopback without
    started = time.perf_counter()
    series_query = ["-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid}"]
    subprocess.run([*base, *series_query, "-k", "SeriesInstanceUID"],
                   check=True, capture_output=True, env=env)  # fmt: skip
    for series_uid in series_uids:
        subprocess.run(
            [*base, "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study_uid}",
             "-k", f"SeriesInstanceUID={series_uid}", "-k", "SOPInstanceUID",
             "-k", "SOPClassUID", "-k", "InstanceNumber"],
            check=True, capture_output=True, env=env,
        )  # fmt: skip
    return time.perf_counter() - started


def orthanc_rest_baseline(pacs: LocalOrthanc, study_uid: str) -> float:
    """Orthanc's own REST lookup of every instance of the study (its fastest native path)."""
    started = time.perf_counter()
    response = pacs.client.post(
        "/tools/find",
        json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
    )
    response.raise_for_status()
    assert len(response.json()) > 0
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=1300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="drimbox-bench-"))
    text = hl7_text("CR_C-ORU.hl7")
    report = parse_report_message(text).report
    assert report is not None
    # 1300 instances: 1180 + 100 + 20; smaller studies (the suite's tiny run) keep the shape.
    mip, topogram = max(1, min(100, args.instances // 4)), max(1, min(20, args.instances // 10))
    series = [
        SeriesSpec("CT", "Thorax", max(1, args.instances - mip - topogram)),
        SeriesSpec("CT", "Thorax MIP", mip),
        SeriesSpec("CT", "Topogramme", topogram),
    ]
    print(f"Study: {args.instances} CT instances in {len(series)} series (128x128: C-FIND only)")
    files, seconds = timed(
        lambda: generate_study_for_report(work / "study", report, series, rows=128, columns=128)
    )
    print(f"  generated in {seconds:.1f} s")
    with LocalOrthanc() as pacs:
        _, seconds = timed(lambda: pacs.store_files(files))
        print(f"  stored in Orthanc in {seconds:.1f} s")
        series_uids = sorted({dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in files})

        baseline = [findscu_baseline(pacs, report.study_instance_uid, series_uids)
                    for _ in range(args.runs)]  # fmt: skip

        rest = [orthanc_rest_baseline(pacs, report.study_instance_uid) for _ in range(args.runs)]

        latencies, ack_times = [], []
        node_cfg = node_config(work / "node", pacs)
        with RunningNode(node_cfg) as node, RisClient("127.0.0.1", node.hl7_port) as ris:
            for run in range(args.runs):
                started = time.perf_counter()
                ack = ris.send(report_variant(text, 10_000 + run))
                ack_times.append(time.perf_counter() - started)
                assert ack.code == "AA", ack.ack
                report_id = node.reports()[-1].id
                built = node.wait_for_report(report_id, SETTLED, timeout_s=300)
                latencies.append(time.perf_counter() - started)
                assert built.state in BUILT and built.kos is not None, built.reason
                assert built.kos_instance_count == args.instances

        print("\nHL7 receipt → KOS built (1300 instances):")
        print(f"  DRIMbox, whole pipeline ...... {summary(latencies)}")
        print(f"  of which ACK (stored) ........ {summary(ack_times)}")
        print(f"  Orthanc C-FIND (dcmtk findscu) {summary(baseline)}")
        print(f"  Orthanc REST /tools/find ..... {summary(rest)}")
        ratio = sorted(latencies)[len(latencies) // 2] / sorted(baseline)[len(baseline) // 2]
        print(f"  ratio DRIMbox / C-FIND alone . {ratio:.2f}")
        ratio = sorted(latencies)[len(latencies) // 2] / sorted(rest)[len(rest) // 2]
        print(f"  ratio DRIMbox / Orthanc REST . {ratio:.2f}")

    # Intake rate: the listener alone (no PACS work), 10 connections, distinct report versions.
    messages = [report_variant(text, index) for index in range(args.burst)]
    size_mb = sum(len(m.encode()) for m in messages) / 1e6
    with RunningNode(node_config(work / "intake", None, roles={"source": True},
                                 pacs={"port": 9, "timeout_s": 1})) as node:  # fmt: skip

        def sender(chunk: list[str]) -> int:
            with RisClient("127.0.0.1", node.hl7_port, timeout_s=120) as ris:
                return sum(ris.send(m).code == "AA" for m in chunk)

        started = time.perf_counter()
        with ThreadPoolExecutor(10) as pool:
            accepted = sum(pool.map(sender, [messages[i::10] for i in range(10)]))
        elapsed = time.perf_counter() - started
    print(f"\nMLLP intake: {accepted}/{args.burst} messages ({size_mb:.0f} MB) ACKed AA "
          f"in {elapsed:.2f} s → {accepted / elapsed:.0f} messages/s, "
          f"{size_mb / elapsed:.0f} MB/s (10 connections, SQLite synchronous=FULL)")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
