"""Benchmark: the Conso reading a series from a Source DRIMbox over mutual TLS (whitelisted
peer certificate, PSC token, the official DRIM-M headers), with the box's streaming client
(`drimbox.web.multipart_client`, what `conso.retrieval.SourceRetriever` uses) and, for
reference, with httpx + `MultipartReader` (what it used before); Orthanc's own DICOMweb (plain
HTTP, same series) read by the same streaming client gives the scale.

Run: `uv run python bench/conso_read.py [--instances 300] [--runs 5]`. The Source is a whole
node (`tests/support/site.py`), its cache warmed by a first read. Not a test: asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from pydicom import dcmread

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.studies import SeriesSpec
from drimbox.web.multipart import MultipartReader, boundary_of
from drimbox.web.multipart_client import open_multipart

Read = Callable[[], tuple[int, int]]


def lean(url: str, headers: dict[str, str], context: ssl.SSLContext | None) -> Read:
    async def read() -> tuple[int, int]:
        parts = size = 0
        async with open_multipart(url, headers, ssl_context=context, timeout_s=60) as response:
            async for part in response.parts():
                parts += 1
                size += len(part.body)
        return parts, size

    return lambda: asyncio.run(read())


def with_httpx(url: str, headers: dict[str, str], context: ssl.SSLContext) -> Read:
    def read() -> tuple[int, int]:
        parts = size = 0
        with (
            httpx.Client(verify=context, timeout=60) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            reader = MultipartReader(boundary_of(response.headers["content-type"]))
            for chunk in response.iter_bytes(256 * 1024):
                for part in reader.feed(chunk):
                    parts += 1
                    size += len(part.body)
            reader.close()
        return parts, size

    return read


def timed(read: Read, runs: int) -> tuple[float, int, int]:
    walls = []
    parts = size = 0
    for _ in range(runs):
        started = time.perf_counter()
        parts, size = read()
        walls.append(time.perf_counter() - started)
    return statistics.median(walls), parts, size


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
        readers = {
            "(a) Orthanc DICOMweb, plain HTTP": lean(orthanc_url, accept, None),
            "(b) Source over mTLS, the box's client": lean(url, headers, context),
            "(c) Source over mTLS, httpx + MultipartReader": with_httpx(url, headers, context),
        }
        readers["(b) Source over mTLS, the box's client"]()  # warm the Source's cache
        results = {label: timed(read, args.runs) for label, read in readers.items()}
    for label, (wall, parts, size) in results.items():
        print(f"  {label}: {wall:.3f} s, {size / wall / 1e6:.0f} MB/s ({parts} parts)")


if __name__ == "__main__":
    main()
