"""Benchmark: the Conso reading a series from a Source DRIMbox over mutual TLS (whitelisted
peer certificate, PSC token, the official DRIM-M headers), with the box's streaming client
(`drimbox.http.multipart_client`, what `conso.retrieval.SourceRetriever` uses) and, for
reference, with httpx + `MultipartReader` (what it used before); Orthanc's own DICOMweb (plain
HTTP, same series) read by the same streaming client gives the scale.

Run: `uv run python bench/conso_read.py [--instances 300] [--runs 5]`. The Source is a whole
node (`tests/support/site.py`), its cache warmed by a first read. Not a test: asserts nothing.
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).parent))

from wado_series import fetch_async, fetch_httpx

from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.studies import SeriesSpec

Fetch = Callable[[], tuple[float, float, int, int]]


def timed(fetch: Fetch, runs: int) -> tuple[float, int, int]:
    """(median wall s, parts, bytes) over `runs` reads."""
    results = [fetch() for _ in range(runs)]
    return statistics.median(r[0] for r in results), results[0][3], results[0][2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from support.site import official_headers, series_url, source_site

    print(f"Conso reading a Source: {args.instances} CT 512×512 (uncompressed), {args.runs} runs")
    with (
        tempfile.TemporaryDirectory(prefix="drimbox-bench-") as tmp,
        LocalOrthanc(work_dir=Path(tmp) / "orthanc") as orthanc,
        source_site(
            orthanc, Path(tmp), series=(SeriesSpec("CT", "a", args.instances),), size=512
        ) as site,
    ):
        context = ssl.create_default_context(cafile=str(site.ca_file))
        peer = site.trusted_peer
        assert peer.cert_path and peer.key_path
        context.load_cert_chain(str(peer.cert_path), str(peer.key_path))
        url = series_url(site)
        headers = official_headers(site, site.psc.mint_access_token("radiologue"))
        series_uid = site.series_uids[0]
        any_file = next((Path(tmp) / "study").rglob("*.dcm"))
        study_uid = str(dcmread(any_file, stop_before_pixels=True).StudyInstanceUID)
        orthanc_url = f"{orthanc.dicomweb_url}/studies/{study_uid}/series/{series_uid}"
        accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
        readers: dict[str, Fetch] = {
            "(a) Orthanc DICOMweb, plain HTTP": lambda: fetch_async(orthanc_url, accept),
            "(b) Source over mTLS, the box's client": lambda: fetch_async(url, headers, context),
            "(c) Source over mTLS, httpx + MultipartReader": lambda: fetch_httpx(
                url, headers, context
            ),
        }
        fetch_async(url, headers, context)  # warm the Source's cache
        results = {label: timed(read, args.runs) for label, read in readers.items()}
    for label, (wall, parts, size) in results.items():
        print(f"  {label}: {wall:.3f} s, {size / wall / 1e6:.0f} MB/s ({parts} parts)")


if __name__ == "__main__":
    main()
