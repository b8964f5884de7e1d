"""Benchmark: `drimbox pacs speedtest` (the product's measure, issue 20) in each mode against
the same retrieval by the reference tools, on one CT study (512×512, 16-bit, JPEG-LS lossless)
in Orthanc, in the same run:

- c-get: the speed test vs dcmtk `getscu --ignore` (receives, does not store);
- c-move: the speed test (to the box's own SCP) vs dcmtk `movescu` to `storescp --ignore`;
- wado-rs: the speed test vs one streamed httpx GET of Orthanc's DICOMweb study, bytes counted.

Run: `uv run python bench/pacs_speedtest.py [--instances 300] [--runs 3]`. The dcmtk figures
include starting the process (a few ms). Prints medians of wall time, MB/s and, for the speed
test, its own time to first image and whether its byte count matches the files. Not a test: it
asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from wado_series import make_series

from drimbox.config import load_config
from drimbox.ops.speedtest import pacs_speedtest
from drimbox.sim.orthanc import LocalOrthanc, RemoteModality
from drimbox.sim.ports import free_port
from support.source import pacs_environ

BOX_AET = "DRIMBOXBENCH"
STORESCP_AET = "STORESCPBENCH"
# dcmtk leaves Nagle's algorithm on unless told: one small PDU per round trip otherwise.
NODELAY = os.environ | {"TCP_NODELAY": "1"}


def dcmtk(tool: str, pacs: LocalOrthanc, study: str, *options: str) -> float:
    """Wall time of one retrieval of the study by a dcmtk tool (the Debian package's, not
    pynetdicom's namesake in the venv), with TCP_NODELAY as Orthanc gets it."""
    started = time.perf_counter()
    done = subprocess.run(
        [f"/usr/bin/{tool}", "-S", "-aet", BOX_AET, "-aec", pacs.aet, *options,
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
         "127.0.0.1", str(pacs.dicom_port)],
        capture_output=True, text=True, env=NODELAY,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{tool}: {done.stderr or done.stdout}")
    return elapsed


def orthanc_wado(pacs: LocalOrthanc, study: str) -> tuple[float, int]:
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    started = time.perf_counter()
    total = 0
    url = f"{pacs.dicomweb_url}/studies/{study}"
    with httpx.stream("GET", url, headers={"Accept": accept}, timeout=300) as response:
        response.raise_for_status()
        for chunk in response.iter_raw(1024 * 1024):
            total += len(chunk)
    return time.perf_counter() - started, total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"PACS speed test benchmark: {args.instances} CT 512×512 JPEG-LS, {args.runs} runs")
    report, files = make_series(args.instances)
    on_disk = sum(p.stat().st_size for p in files)
    print(f"  study on disk: {on_disk / 1e6:.0f} MB")
    scp_port, storescp_port = free_port(), free_port()
    modalities = {
        "drimbox": RemoteModality(BOX_AET, "127.0.0.1", scp_port),
        "storescp": RemoteModality(STORESCP_AET, "127.0.0.1", storescp_port),
    }
    with (
        tempfile.TemporaryDirectory(prefix="drimbox-bench-") as tmp,
        LocalOrthanc(aet="ORTHANC", work_dir=Path(tmp) / "orthanc", modalities=modalities) as pacs,
    ):
        pacs.store_files(files)
        storescp = subprocess.Popen(
            ["/usr/bin/storescp", "-aet", STORESCP_AET, "+xa", "--ignore", str(storescp_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=NODELAY,
        )  # fmt: skip
        config = load_config(
            environ={
                "DRIMBOX_STORE__DATABASE_URL": f"sqlite:///{tmp}/bench.db",
                **pacs_environ(pacs, BOX_AET, scp_port),
            }
        )
        study = report.study_instance_uid
        ours: dict[str, list[tuple[float, float, int, int]]] = {}
        theirs: dict[str, list[float]] = {}
        try:
            for run in range(-1, args.runs):  # one uncounted warm-up round
                for mode in ("c-get", "c-move", "wado-rs"):
                    result = pacs_speedtest(config, study_uid=study, mode=mode)
                    figures = (result.seconds, result.first_image_s or 0.0, result.bytes,
                               result.images)  # fmt: skip
                    if mode == "c-get":
                        baseline = dcmtk("getscu", pacs, study, "+xt", "--ignore")
                    elif mode == "c-move":
                        baseline = dcmtk("movescu", pacs, study, "-aem", STORESCP_AET)
                    else:
                        baseline = orthanc_wado(pacs, study)[0]
                    label = "warm-up" if run < 0 else f"run {run + 1}"
                    print(f"  {label} {mode}: speed test {result.seconds:.2f} s, reference "
                          f"{baseline:.2f} s", flush=True)  # fmt: skip
                    if run >= 0:
                        ours.setdefault(mode, []).append(figures)
                        theirs.setdefault(mode, []).append(baseline)
        finally:
            storescp.terminate()
            storescp.wait(10)
    references = {"c-get": "dcmtk getscu", "c-move": "dcmtk movescu → storescp",
                  "wado-rs": "httpx GET of Orthanc DICOMweb"}  # fmt: skip
    for mode, runs in ours.items():
        wall = statistics.median(r[0] for r in runs)
        first = statistics.median(r[1] for r in runs)
        nbytes, images = runs[0][2], runs[0][3]
        reference = statistics.median(theirs[mode])
        print(
            f"  {mode}: speed test {wall:.2f} s, {nbytes / wall / 1e6:.0f} MB/s, first image "
            f"{first * 1000:.0f} ms, {images} images, {nbytes / 1e6:.1f} MB "
            f"({nbytes - on_disk:+d} bytes vs files); {references[mode]} {reference:.2f} s, "
            f"{on_disk / reference / 1e6:.0f} MB/s; ratio {wall / reference:.2f}"
        )


if __name__ == "__main__":
    main()
