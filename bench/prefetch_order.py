"""Prefetch of a long history: time until the exam the RIS named is viewable.

Run: `uv run python bench/prefetch_order.py [--exams 40] [--instances 10] [--size 128]`. Builds
the network of the prefetch tests (`tests/support/history.py`: a Source node with a real Orthanc
holding `--exams` exams of the patient, all published to the DMP simulator; a Conso node; the PSC
simulator), then launches the Conso twice for the same patient, naming the 7th most recent exam
(a CT thorax), with both caches emptied before each run:

- **ordered** (issue 19): the named exam first, then its relevant priors, within the budget
  (`[conso] prefetch_exams` = 4, 2 GB);
- **everything** (the behaviour before issue 19): every exam of the history submitted to the
  Conso's 4-thread pool in the DMP's order (most recent first), nothing named, no budget.

Prints, for each: the time from the history page to the named exam complete in the Conso's cache
(what OHIF then reads without waiting), to the end of the prefetch, the exams and bytes
prefetched, and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from sqlalchemy import select

from drimbox.db.models import ConsoExam
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.studies import SeriesSpec
from drimbox.web.conso_routes import ConsoService, Job, Launch
from drimbox.web.sessions import SessionView
from support.history import HistoryNetwork, launch, long_history, signed_in_user


def prefetch_everything(service: ConsoService) -> None:
    """The Conso's prefetch as it was before issue 19: each exam of the history, in the DMP's
    order, handed to the service's thread pool at once."""

    def start(launch: Launch, view: SessionView) -> None:
        service.register(launch, view)
        jobs = {e.id: Job(total=e.manifest.instance_count) for e in launch.exams if e.manifest}
        with service._lock:
            service.prefetch[launch.id] = jobs
        for exam in launch.exams:
            if exam.id in jobs:
                service._executor.submit(service._fetch_exam, exam, jobs[exam.id])

    service.start_prefetch = start  # type: ignore[method-assign]


def run(network: HistoryNetwork, label: str) -> dict[str, Any]:
    for node in (network.conso, network.source):
        images = node.node.images
        assert images is not None
        images.cache.purge()
    named = network.named.study_uid
    with signed_in_user(network) as browser:
        started = time.perf_counter()
        launch_url, _page = launch(browser, StudyInstanceUID=named if label == "ordered" else "")
        shown = time.perf_counter()
        exam_id = _exam_id(network, launch_url.rsplit("/", 1)[-1], named)
        viewable = done = 0.0
        while not done:
            jobs = browser.get(f"{launch_url}/etat").json()["images"]
            now = time.perf_counter()
            states = {int(k): j["etat"] for k, j in jobs.items()}
            if not viewable and states.get(exam_id) == "termine":
                viewable = now
            if viewable and all(s not in ("en_attente", "en_cours") for s in states.values()):
                done = now
            time.sleep(0.02)
    images = network.conso.node.images
    assert images is not None
    usage = images.cache.usage()
    return {
        "history": shown - started,
        "viewable": viewable - shown,
        "done": done - shown,
        "exams": len({e.study_uid for e in images.cache._entries.values()}),
        "bytes": usage.bytes,
    }


def _exam_id(network: HistoryNetwork, launch_id: str, study_uid: str) -> int:
    with network.conso.node.db.session() as session:
        found = session.scalars(
            select(ConsoExam.id).where(
                ConsoExam.launch_id == launch_id, ConsoExam.study_uid == study_uid
            )
        ).first()
    assert found is not None
    return int(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exams", type=int, default=40)
    parser.add_argument("--instances", type=int, default=10, help="instances per series (2)")
    parser.add_argument("--size", type=int, default=128, help="rows and columns")
    args = parser.parse_args()
    load_before = os.getloadavg()
    series = (SeriesSpec("CT", "a", args.instances), SeriesSpec("CT", "b", args.instances))
    with (
        tempfile.TemporaryDirectory(prefix="drimbox-bench-prefetch-") as tmp,
        LocalOrthanc(work_dir=Path(tmp) / "orthanc") as orthanc,
        long_history(
            orthanc, Path(tmp), count=args.exams, series=series, size=args.size
        ) as network,
    ):
        web = network.conso.node.web
        assert web is not None and web.conso is not None
        results = {"ordered": run(network, "ordered")}
        prefetch_everything(web.conso)
        results["everything"] = run(network, "everything")
    load_after = os.getloadavg()
    print(
        f"Prefetch of a {args.exams}-exam history ({len(series)} series × {args.instances} CT "
        f"{args.size}×{args.size} per exam), the named exam 7th most recent"
    )
    for label, r in results.items():
        print(
            f"  {label:>10}: history page {r['history']:.2f} s; then named exam viewable after "
            f"{r['viewable']:.2f} s, prefetch done after {r['done']:.2f} s; "
            f"{r['exams']} exams, {r['bytes'] / 1e6:.1f} MB prefetched"
        )
    print(
        f"  load average (1, 5, 15 min): before {', '.join(f'{v:.2f}' for v in load_before)}; "
        f"after {', '.join(f'{v:.2f}' for v in load_after)} ({os.cpu_count()} cores)"
    )


if __name__ == "__main__":
    main()
