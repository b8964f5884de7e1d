"""Benchmark: a 1300-image CT series (512×512, 16-bit, JPEG-LS lossless, ~230 MB) retrieved by
WADO-RS: (a) from Orthanc's own DICOMweb, (b) from our Source with an empty cache (retrieval
from Orthanc by `[pacs] retrieve`, streamed on), (c) from our Source with a warm cache.

Run: `uv run python bench/wado_series.py [--instances 1300] [--runs 5] [--retrieve wado-rs]`.
The Source runs in a process of its own (as a node does), the client is the same httpx loop for
all three; runs alternate a, b, c. Prints medians of wall time, MB/s, time to first part, and
the ratios b/a and c/a. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from pydicom.uid import JPEGLSLossless

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from drimbox.config import Config, load_config
from drimbox.db import Database
from drimbox.http.multipart import MultipartReader, boundary_of
from drimbox.http.multipart_client import (
    PartScanner,
    get_request,
    open_multipart,
    parse_response_head,
)
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.studies import SeriesSpec, generate_study_for_report

OUT = Path(__file__).parent / "out" / "wado-series"
OFFICIAL_ACCEPT = (
    Path(__file__).parents[1] / "src/drimbox/samples/ans/validators/wado-rs-series-request.txt"
)


def official_accept() -> str:
    for line in OFFICIAL_ACCEPT.read_text(encoding="utf-8").splitlines():
        if line.startswith("Accept:"):
            return line.partition(":")[2].strip()
    raise RuntimeError("no Accept line in the sample")


def make_series(count: int, syntax: str = JPEGLSLossless) -> tuple[Any, list[Path]]:
    from support.factories import make_report

    plain = syntax != JPEGLSLossless  # another study: both may be held by one Orthanc
    suffix = f"{count}{'.1' if plain else ''}"
    report = make_report(study_instance_uid=f"1.2.826.0.1.3680043.8.498.77.6.{suffix}")
    folder = OUT / f"ct-{count}{'-' + syntax if plain else ''}"
    done = folder / ".complete"
    if done.exists():
        return report, sorted(folder.rglob("*.dcm"))
    started = time.perf_counter()
    files = generate_study_for_report(
        folder,
        report,
        [SeriesSpec("CT", "Thorax", count)],
        rows=512,
        columns=512,
        transfer_syntax=syntax,
    )
    done.touch()
    print(f"  generated {count} images ({syntax}) in {time.perf_counter() - started:.1f} s")
    return report, files


def publish(db: Database, pacs: LocalOrthanc, report: Any) -> tuple[str, str]:
    from support.source import publish_existing

    return publish_existing(db, pacs, report)


def source_env(tmp: str, pacs: LocalOrthanc, retrieve: str, cache_bytes: int) -> dict[str, str]:
    """The benchmarked Source's settings: its database and cache under `tmp`, the PACS."""
    return {
        "DRIMBOX_STORE__DATABASE_URL": f"sqlite:///{tmp}/source.db",
        "DRIMBOX_STORE__CACHE_DIR": f"{tmp}/cache",
        "DRIMBOX_STORE__CACHE_MAX_BYTES": str(cache_bytes),
        "DRIMBOX_PACS__HOST": "127.0.0.1",
        "DRIMBOX_PACS__PORT": str(pacs.dicom_port),
        "DRIMBOX_PACS__CALLED_AET": pacs.aet,
        "DRIMBOX_PACS__RETRIEVE": retrieve,
        "DRIMBOX_PACS__DICOMWEB_URL": pacs.dicomweb_url,
    }


def serve(config_env: dict[str, str], queue: Any, host: str = "127.0.0.1") -> None:
    """The Source node's peer app in its own process; `POST /bench/purge` empties its cache."""
    from drimbox.dicom.retrieve import ImageService
    from drimbox.http.server import HttpServer
    from drimbox.web.app import create_peer_app
    from support.source import Tokens

    config = load_config(environ=config_env)
    db = Database(config.store.database_url)
    tokens = Tokens.from_env(config_env)

    async def main() -> None:
        images = ImageService(config)
        app = create_peer_app(config, db, tokens.verifier(), images=images)

        @app.post("/bench/purge")
        async def purge() -> dict[str, int]:
            result = images.cache.purge()
            return {"series": result.series, "retrievals": images.fetcher.retrievals}

        server = HttpServer(app, host, 0)
        await server.start()
        queue.put(server.port)
        await asyncio.Event().wait()

    asyncio.run(main())


def fetch_curl(url: str, headers: dict[str, str]) -> tuple[float, float, int, int]:
    """The same with curl (a C client: measures the servers rather than the client)."""
    command = [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{time_starttransfer} %{time_total} %{size_download}",
    ]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    first, total, size = out.split()
    return float(total), float(first), int(float(size)), 0


def fetch(url: str, headers: dict[str, str]) -> tuple[float, float, int, int]:
    """(wall s, first part s, body bytes, parts) for one multipart GET: a blocking socket
    feeding the box's own `PartScanner` (as the Source reads its PACS, without the event
    loop). As light as curl on the CPU, which matters when the client, Orthanc and the box
    share 2 cores, and it sees the exact time of the first complete part."""
    started = time.perf_counter()
    request = get_request(url, headers)
    with socket.create_connection((request.host, request.port), timeout=300) as sock:
        sock.sendall(request.data)
        received = bytearray()
        while (end := received.find(b"\r\n\r\n")) < 0:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError(f"{url}: connection closed before the response head")
            received += data
        head = parse_response_head(bytes(received[: end + 4]))
        if head.status != 200:
            raise RuntimeError(f"{url}: HTTP {head.status} {bytes(received[end:])[:300]!r}")
        scanner = PartScanner(boundary_of(head.headers["content-type"]), head.framing, head.length)
        scanner.feed(bytes(received[end + 4 :]))
        first = 0.0
        total = parts = 0
        while True:
            while (part := scanner.next_part()) is not None:
                if not first:
                    first = time.perf_counter() - started
                parts += 1
                total += len(part.body)
            if scanner.finished:
                break
            scanner.make_room()
            count = sock.recv_into(scanner.writable())
            if count:
                scanner.received(count)
            else:
                scanner.eof()
    return time.perf_counter() - started, first, total, parts


def fetch_async(
    url: str, headers: dict[str, str], context: ssl.SSLContext | None = None
) -> tuple[float, float, int, int]:
    """The same with the box's asyncio client (`open_multipart`, as the Source reads its
    PACS): its event loop costs the client some CPU more."""
    return asyncio.run(_fetch_async(url, headers, context))


async def _fetch_async(
    url: str, headers: dict[str, str], context: ssl.SSLContext | None
) -> tuple[float, float, int, int]:
    started = time.perf_counter()
    first = 0.0
    total = parts = 0
    async with open_multipart(url, headers, timeout_s=300, ssl_context=context) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status} {await response.text(300)}")
        async for part in response.parts():
            if not first:
                first = time.perf_counter() - started
            parts += 1
            total += len(part.body)
    return time.perf_counter() - started, first, total, parts


def fetch_httpx(
    url: str, headers: dict[str, str], context: ssl.SSLContext | None = None
) -> tuple[float, float, int, int]:
    """The same with httpx and the incremental `MultipartReader` (a heavier Python client)."""
    started = time.perf_counter()
    first = 0.0
    total = 0
    parts = 0
    client = httpx.Client(timeout=300, verify=context if context is not None else True)
    with client, client.stream("GET", url, headers=headers) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code} {r.read()[:300]!r}")
        reader = MultipartReader(boundary_of(r.headers["content-type"]))
        for chunk in r.iter_raw(1024 * 1024):
            total += len(chunk)
            for _ in reader.feed(chunk):
                parts += 1
                if not first:
                    first = time.perf_counter() - started
        reader.close()
    return time.perf_counter() - started, first, total, parts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=1300)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--warmup", type=int, default=2, help="uncounted rounds first (both servers' caches)"
    )
    parser.add_argument("--retrieve", default="wado-rs", choices=["wado-rs", "c-get", "c-move"])
    parser.add_argument(
        "--client",
        default="lean",
        choices=["lean", "async", "httpx", "curl"],
        help="lean (default), async and httpx parse parts (exact time to first part); curl: "
        "time to first byte",
    )
    args = parser.parse_args()
    from support.source import Tokens

    print(f"WADO-RS series benchmark: {args.instances} CT 512×512 JPEG-LS, {args.runs} runs")
    report, files = make_series(args.instances)
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    print(f"  series on disk: {size_mb:.0f} MB")
    with (
        tempfile.TemporaryDirectory(prefix="drimbox-bench-") as tmp,
        LocalOrthanc(aet="ORTHANC", work_dir=Path(tmp) / "orthanc") as pacs,
    ):
        started = time.perf_counter()
        pacs.store_files(files)
        print(f"  loaded into Orthanc in {time.perf_counter() - started:.1f} s")
        tokens = Tokens()
        env = source_env(tmp, pacs, args.retrieve, 2 * 1024**3) | tokens.to_env()
        config: Config = load_config(environ=env)
        db = Database(config.store.database_url)
        db.upgrade()
        study_uid, kos_uid = publish(db, pacs, report)
        series_uid = str(_series_uid(files[0]))
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        server = context.Process(target=serve, args=(env, queue), daemon=True)
        server.start()
        try:
            port = queue.get(timeout=60)
            source = f"http://127.0.0.1:{port}"
            path = f"/studies/{study_uid}/series/{series_uid}"
            orthanc_headers = {
                "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'
            }
            peer_headers = {
                "Accept": official_accept(),
                "Authorization": f"Bearer {tokens.issue()}",
                "KOS-SOPInstanceUID": kos_uid,
            }
            results: dict[str, list[tuple[float, float, int, int]]] = {"a": [], "b": [], "c": []}
            get = {
                "lean": fetch,
                "async": fetch_async,
                "httpx": fetch_httpx,
                "curl": fetch_curl,
            }[args.client]
            for run in range(-args.warmup, args.runs):
                a = get(pacs.dicomweb_url + path, orthanc_headers)
                httpx.post(source + "/bench/purge").raise_for_status()
                b = get(source + "/dicom-web-rs" + path, peer_headers)
                c = get(source + "/dicom-web-rs" + path, peer_headers)
                label = "warm-up" if run < 0 else f"run {run + 1}"
                print(f"  {label}: a {a[0]:.2f} s, b {b[0]:.2f} s, c {c[0]:.2f} s", flush=True)
                if run >= 0:
                    for key, measure in zip("abc", (a, b, c), strict=True):
                        results[key].append(measure)
        finally:
            server.terminate()
            server.join(10)
            db.dispose()
    medians = {}
    labels = {
        "a": "(a) Orthanc DICOMweb",
        "b": f"(b) Source, cold cache ({args.retrieve})",
        "c": "(c) Source, warm cache",
    }
    for key, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        first = statistics.median(r[1] for r in runs)
        total = runs[0][2]
        parts = runs[0][3]
        medians[key] = wall
        print(
            f"  {labels[key]}: {wall:.2f} s, {total / wall / 1e6:.0f} MB/s, first part "
            f"{first * 1000:.0f} ms ({parts} parts, {total / 1e6:.0f} MB)"
        )
    print(
        f"  ratio b/a = {medians['b'] / medians['a']:.2f}, c/a = {medians['c'] / medians['a']:.2f}"
    )


def _series_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


if __name__ == "__main__":
    main()
