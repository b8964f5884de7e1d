"""Benchmark (issue 17 §4): the Conso's prefetch of a whole study from a Source DRIMbox over
mutual TLS into the Conso's cache, against the same client reading the same study from Orthanc's
own DICOMweb into the same cache.

Run: `uv run python bench/conso_prefetch.py [--instances 1300] [--runs 5] [--retrieve wado-rs]
[--syntax jpegls|plain]`. The study (one CT series, 512×512, 16-bit; JPEG-LS lossless by default,
what the issue measured) is held by Orthanc, and published by a Source node
(`tests/support/site.py`: whitelist, PSC token, mutual TLS, the official DRIM-M headers); a second
node with the same configuration and database serves it from a process of its own (as on a site: the
Source and the Conso are different machines), reading its PACS by `--retrieve`. Each round, in this
order, each into an emptied Conso cache (cache writes counted): (a) the box's streaming client reads
Orthanc's DICOMweb series (plain HTTP, `transfer-syntax=*`) and hands each part to the Conso's cache
writer; (b) the Conso's `SourceRetriever.retrieve_exam` (what the prefetch runs) from the Source
just purged (what `drimbox cache purge` does against the running node: its cold path, PACS retrieval
included); (c) the same again, the Source now warm. Prints medians, MB/s and the ratios b/a, c/a
with the machine's load average. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import multiprocessing
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from queue import Empty
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from drimbox.config import Config
from drimbox.conso.common import CacheStore, InstanceStore
from drimbox.conso.history import Manifest, read_manifest
from drimbox.conso.retrieval import SourceRetriever
from drimbox.dicom.cache import SeriesCache, describe_instance, purge_cache
from drimbox.http.multipart_client import open_multipart
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ports import free_port
from drimbox.sim.studies import SeriesSpec
from drimbox.trust.store import whitelist_store
from drimbox.trust.tls import PeerCheck, client_ssl_context

Read = Callable[[InstanceStore], tuple[int, int]]


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


async def _read_orthanc(url: str, study_uid: str, series_uid: str, store: InstanceStore) -> int:
    """The Conso's client and cache writer on Orthanc's series (what `_Reading.take` does)."""
    writer = store.open_series(study_uid, series_uid)
    assert writer is not None
    size = 0
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    try:
        async with open_multipart(url, accept, timeout_s=300) as response:
            assert response.status == 200, response.status
            async for part in response.parts():
                describe_instance(part.body)
                writer.add(part.body)
                size += len(part.body)
    except BaseException as exc:
        writer.fail(exc)
        raise
    writer.finish()
    return size


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Measure = tuple[float, int, int, float, float, float]


def timed(read: Read, cache: SeriesCache, pids: tuple[int, ...]) -> Measure:
    """(seconds, instances, bytes, client CPU s, Source CPU s, Orthanc CPU s) of one read into
    `cache`, emptied first; `pids`: the Source's process (0: none) and Orthanc's."""
    cache.purge()
    before = [cpu_seconds(pid) if pid else 0.0 for pid in pids]
    client = time.process_time()
    started = time.perf_counter()
    instances, size = read(CacheStore(cache))
    wall = time.perf_counter() - started
    client = time.process_time() - client
    after = [cpu_seconds(pid) if pid else 0.0 for pid in pids]
    source, pacs = (b - a for a, b in zip(before, after, strict=True))
    return wall, instances, size, client, source, pacs


def serve_source(config: Config, queue: Any) -> None:
    """A Source node in this process (spawned): its peer origin's URL goes into `queue`."""
    from drimbox.node import Node

    async def run() -> None:
        node = Node(config)
        await node.start()
        assert node.web is not None
        queue.put(node.web.peer.url)
        await asyncio.Event().wait()

    asyncio.run(run())


def conso_config(site: object, folder: Path) -> Config:
    from support.node import node_config
    from support.site import peer_view

    environ = peer_view(site, folder, site.trusted_peer)  # type: ignore[arg-type, attr-defined]
    return node_config(folder, None, environ)


@dataclass(frozen=True)
class Rounds:
    """What the Conso's process measures (everything picklable: it is spawned)."""

    config: Config
    manifest: Manifest
    token: str
    orthanc_url: str
    source_cache: Path
    conso_cache: Path
    source_pid: int
    orthanc_pid: int
    runs: int
    warmup: int
    profile: bool


def conso_rounds(rounds: Rounds, queue: Any) -> None:
    """The Conso, in a process of its own as on a site: each round (a, b, c) into `queue`."""
    config, manifest = rounds.config, rounds.manifest
    store = whitelist_store(config)
    assert store is not None and store.refresh() is not None
    trust = config.trust
    assert trust.tls_cert and trust.tls_key
    context = client_ssl_context(trust.tls_cert, trust.tls_key, trust.tls_ca)
    retriever = SourceRetriever(PeerCheck(store.current, store.revocation), context, timeout_s=300)
    cache = SeriesCache(rounds.conso_cache, 8 * 1024**3, 3600)

    def from_orthanc(target: InstanceStore) -> tuple[int, int]:
        total = count = 0
        for series in manifest.series:
            url = f"{rounds.orthanc_url}/studies/{series.study_uid}/series/{series.series_uid}"
            total += asyncio.run(_read_orthanc(url, series.study_uid, series.series_uid, target))
            count += len(series.instances)
        return count, total

    def from_source(target: InstanceStore) -> tuple[int, int]:
        report = retriever.retrieve_exam(manifest, rounds.token, target)
        assert report.complete, report.errors
        return report.instances, report.bytes

    pids = (rounds.source_pid, rounds.orthanc_pid)
    for run in range(-rounds.warmup, rounds.runs):
        a = timed(from_orthanc, cache, (0, rounds.orthanc_pid))
        purge_cache(rounds.source_cache)  # what `drimbox cache purge` does to a running node
        b = timed(from_source, cache, pids)
        c = timed(from_source, cache, pids)
        queue.put((run, a, b, c))
    if rounds.profile:
        profiler = cProfile.Profile()
        profiler.runcall(timed, from_source, cache, pids)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    cache.purge()
    queue.put(None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=1300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--retrieve", default="wado-rs", choices=["wado-rs", "c-get"])
    parser.add_argument("--syntax", default="jpegls", choices=["jpegls", "plain"])
    parser.add_argument(
        "--profile", action="store_true", help="then print the Conso's profile of one warm read"
    )
    args = parser.parse_args()
    from support.site import source_site

    syntax = JPEGLSLossless if args.syntax == "jpegls" else ExplicitVRLittleEndian
    print(
        f"Conso prefetch: {args.instances} CT 512×512 ({args.syntax}), Source cold path "
        f"{args.retrieve}, {args.runs} runs; load average {load()}",
        flush=True,
    )
    extra = {"DRIMBOX_PACS__RETRIEVE": args.retrieve}
    spawn = multiprocessing.get_context("spawn")
    results: dict[str, list[Measure]] = {"a": [], "b": [], "c": []}
    with (
        tempfile.TemporaryDirectory(prefix="drimbox-bench-") as tmp,
        LocalOrthanc(work_dir=Path(tmp) / "orthanc") as orthanc,
    ):
        extra["DRIMBOX_PACS__DICOMWEB_URL"] = orthanc.dicomweb_url
        started = time.perf_counter()
        with source_site(
            orthanc,
            Path(tmp),
            series=(SeriesSpec("CT", "Thorax", args.instances),),
            size=512,
            transfer_syntax=syntax,
            environ_extra=extra,
        ) as site:
            elapsed = time.perf_counter() - started
            print(f"  study generated, stored and published in {elapsed:.0f} s", flush=True)
            # The serving node: the publishing one's settings (its workers polling at the
            # default pace, not a test's), its own cache and ports.
            source_cache = Path(tmp) / "source-cache"
            published = site.node.config
            serving = published.model_copy(
                update={
                    "store": published.store.model_copy(update={"cache_dir": source_cache}),
                    "viewer": published.viewer.model_copy(update={"port": free_port()}),
                    "source": type(published.source)(),
                }
            )
            queue = spawn.Queue()
            server = spawn.Process(target=serve_source, args=(serving, queue), daemon=True)
            server.start()
            try:
                port = queue.get(timeout=120).rsplit(":", 1)[1]
                kos = next(r.kos for r in site.node.reports() if r.kos)
                # The KOS names the site's public URL; the Source listens on loopback.
                manifest = _on_loopback(read_manifest(kos), f"https://localhost:{port}")
                assert orthanc.pid is not None and server.pid is not None
                rounds = Rounds(
                    conso_config(site, Path(tmp) / "conso"),
                    manifest,
                    site.psc.mint_access_token("radiologue"),
                    orthanc.dicomweb_url,
                    source_cache,
                    Path(tmp) / "conso-cache",
                    server.pid,
                    orthanc.pid,
                    args.runs,
                    args.warmup,
                    args.profile,
                )
                conso = spawn.Process(target=conso_rounds, args=(rounds, queue))
                conso.start()
                while (measured := _next(queue, conso)) is not None:
                    run, a, b, c = measured
                    label = "warm-up" if run < 0 else f"run {run + 1}"
                    print(
                        f"  {label}: a {a[0]:.2f} s, b {b[0]:.2f} s, c {c[0]:.2f} s "
                        f"(load {load()})",
                        flush=True,
                    )
                    if run >= 0:
                        for key, measure in zip("abc", (a, b, c), strict=True):
                            results[key].append(measure)
                conso.join(60)
            finally:
                server.terminate()
                server.join(10)
    report(results, args.retrieve)


def _next(queue: Any, conso: Any) -> Any:
    """The Conso's next round (None: done); fails when its process died."""
    while True:
        try:
            return queue.get(timeout=1)
        except Empty:
            if not conso.is_alive():
                raise RuntimeError(f"the Conso's process died (exit {conso.exitcode})") from None


def report(results: dict[str, list[Measure]], retrieve: str) -> None:
    labels = {
        "a": "(a) Orthanc DICOMweb → Conso cache",
        "b": f"(b) Source cold ({retrieve}) over mTLS → Conso cache",
        "c": "(c) Source warm over mTLS → Conso cache",
    }
    medians = {}
    for key, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        medians[key] = wall
        instances, size = runs[0][1], runs[0][2]
        client, source, pacs = (statistics.median(r[i] for r in runs) for i in (3, 4, 5))
        print(
            f"  {labels[key]}: {wall:.2f} s, {size / wall / 1e6:.0f} MB/s written "
            f"({instances} instances, {size / 1e6:.0f} MB); CPU s: Conso {client:.2f}, "
            f"Source {source:.2f}, Orthanc {pacs:.2f}"
        )
    print(
        f"  ratio cold b/a = {medians['b'] / medians['a']:.2f}, warm c/a = "
        f"{medians['c'] / medians['a']:.2f}; load average at the end {load()}"
    )


def _on_loopback(manifest: Manifest, base: str) -> Manifest:
    series = []
    for ref in manifest.series:
        path = ref.retrieve_url.removeprefix(ref.source_base_url)
        series.append(replace(ref, retrieve_url=base + path))
    return replace(manifest, series=tuple(series))


if __name__ == "__main__":
    main()
