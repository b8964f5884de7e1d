"""Benchmark: cold DIMSE retrieval of a series by the box (issue 17 §2) against dcmtk moving the
same JPEG-LS bytes from the same Orthanc, in one run:

- c-get: C-GET (`[pacs] retrieve = "c-get"`), the instances received by the box's lean path
  (`drimbox.dicom.cget`); c-get-pynetdicom: the same C-GET received by pynetdicom's own path
  (the fallback, what c-get was before), for comparison;
- c-move: C-MOVE to the box's own SCP (`"c-move"`), its C-STOREs received by the lean path
  (`drimbox.dicom.cget.serve_stores`); c-move-pynetdicom: the same received by pynetdicom
  (what c-move was before);
- c-move-dcmtk: dcmtk movescu to the box's supervised storescp, each file handed to the sink
  by the spool watcher (`"c-move-dcmtk"`);
- references: dcmtk `movescu` → `storescp +xa` writing the files (what the box's storescp does)
  and → `storescp +xa --ignore` (receives, stores nothing); all dcmtk with TCP_NODELAY.

Each mode is measured as the product's `drimbox pacs speedtest` (the sink counts and drops; a
storescp started per test) and as a node fills its cache (`ImageService`, receivers started
once, instances written into the cache). Then two series retrieved at once by c-get, c-move and
c-move-dcmtk, against the same two one after the other: two peers reading two cold series must
not queue behind each other. Prints medians, MB/s, the ratios to dcmtk and the load average. Run:
`uv run python bench/dimse_retrieval.py [--instances 300] [--runs 3]`. Not a test: it asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from pacs_speedtest import BOX_AET, NODELAY, STORESCP_AET, dcmtk
from wado_series import make_series

from drimbox.config import Config, load_config
from drimbox.dicom.pacs import PacsClient, PacsSettings
from drimbox.dicom.retrieve import ImageService, build_retriever, pacs_settings, storescp_process
from drimbox.dicom.scp import StoreScp
from drimbox.ops.speedtest import pacs_speedtest
from drimbox.sim.orthanc import LocalOrthanc, RemoteModality
from drimbox.sim.ports import free_port
from support.source import pacs_environ

BOX_DCMTK_AET = "DRIMBOXBENCHRX"
MODES = ("c-get", "c-get-pynetdicom", "c-move", "c-move-pynetdicom", "c-move-dcmtk")


def movescu(pacs: LocalOrthanc, study: str, destination: str) -> float:
    return dcmtk("movescu", pacs, study, "-aem", destination)


def storescp(port: int, aet: str, *options: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        ["/usr/bin/storescp", "-aet", aet, "+xa", "-pdu", "131072", *options, str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=NODELAY,
    )  # fmt: skip
    time.sleep(0.3)
    return process


@contextmanager
def pynetdicom_paths(wanted: bool) -> Iterator[None]:
    """While active, every `PacsClient` retrieves and every `StoreScp` receives through
    pynetdicom (`lean_retrieve=False`, `lean=False`): what c-get and c-move were before the
    lean paths."""
    if not wanted:
        yield
        return
    client_init, scp_init = PacsClient.__init__, StoreScp.__init__

    def client(self: PacsClient, settings: PacsSettings, **options: bool) -> None:
        client_init(self, settings, **{**options, "lean_retrieve": False})

    def scp(self: StoreScp, *args: Any, **options: Any) -> None:
        scp_init(self, *args, **{**options, "lean": False})

    PacsClient.__init__ = client  # type: ignore[method-assign]
    StoreScp.__init__ = scp  # type: ignore[method-assign]
    try:
        yield
    finally:
        PacsClient.__init__ = client_init  # type: ignore[method-assign]
        StoreScp.__init__ = scp_init  # type: ignore[method-assign]


def two_at_once(config: Config, method: str, studies: list[str], spool: Path) -> None:
    """Two series by `method` (c-get, c-move or c-move-dcmtk), one after the other then at
    once."""
    client = PacsClient(pacs_settings(config))
    series = [(s, str(client.find_series(s)[0].SeriesInstanceUID)) for s in studies]
    classes = {uid: client.sop_classes(study, uid) for study, uid in series}
    receiver = storescp_process(config, spool)
    receiver.start()
    p = config.pacs
    scp = StoreScp(p.calling_aet, p.scp_host, p.scp_port)
    scp.start()
    try:
        retriever = build_retriever(config, method, client, scp=scp, storescp=receiver)
        counts: list[int] = []

        def one(study: str, uid: str) -> None:
            counts.append(retriever.retrieve_series(study, uid, lambda data: None, classes[uid]))

        started = time.perf_counter()
        for study, uid in series:
            one(study, uid)
        sequential = time.perf_counter() - started
        threads = [threading.Thread(target=one, args=pair) for pair in series]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        parallel = time.perf_counter() - started
    finally:
        receiver.stop()
        scp.stop()
    print(
        f"  two series ({counts[0]} + {counts[1]} images) by {method}: one after the other "
        f"{sequential:.2f} s, at once {parallel:.2f} s (ratio {parallel / sequential:.2f}; "
        f"{counts[2] + counts[3]} images received at once)"
    )


def into_the_cache(config: Config, method: str, study: str, runs: int) -> list[float]:
    """Cold series into a node's cache (`ImageService`, long-lived receivers as in a node):
    from the request until the entry is complete, the instances written into the cache; the
    SOP classes given, as the Source's WADO-RS gives those of its KOS."""
    method_config = config.model_copy(
        update={"pacs": config.pacs.model_copy(update={"retrieve": method})}
    )
    client = PacsClient(pacs_settings(config))
    series = str(client.find_series(study)[0].SeriesInstanceUID)
    # As the Source's WADO-RS does, with the SOP classes its KOS names (no C-FIND for c-get).
    sop_classes = client.sop_classes(study, series)

    async def measure() -> list[float]:
        service = ImageService(method_config)
        await service.start()
        times: list[float] = []
        try:
            for _ in range(runs + 1):  # the first one uncounted
                started = time.perf_counter()
                async with service.fetcher.series(study, series, sop_classes) as entry:
                    while not entry.complete and entry.error is None:
                        await asyncio.sleep(0.002)
                    if entry.error is not None:
                        raise entry.error
                times.append(time.perf_counter() - started)
                service.cache.drop(study, series)
        finally:
            await service.stop()
        return times[1:]

    return asyncio.run(measure())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()
    print(
        f"DIMSE retrieval benchmark: {args.instances} CT 512×512 JPEG-LS, {args.runs} runs, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    report, files = make_series(args.instances)
    other, other_files = make_series(args.instances + 1)
    on_disk = sum(p.stat().st_size for p in files)
    print(f"  series on disk: {on_disk / 1e6:.0f} MB")
    scp_port, box_storescp_port, ref_port, ref_ignore_port = (free_port() for _ in range(4))
    modalities = {
        "drimbox": RemoteModality(BOX_AET, "127.0.0.1", scp_port),
        "drimboxrx": RemoteModality(BOX_DCMTK_AET, "127.0.0.1", box_storescp_port),
        "storescp": RemoteModality(STORESCP_AET, "127.0.0.1", ref_port),
        "ignore": RemoteModality(STORESCP_AET + "I", "127.0.0.1", ref_ignore_port),
    }
    with (
        tempfile.TemporaryDirectory(prefix="drimbox-bench-") as tmp,
        LocalOrthanc(aet="ORTHANC", work_dir=Path(tmp) / "orthanc", modalities=modalities) as pacs,
    ):
        pacs.store_files(files)
        pacs.store_files(other_files)
        received = Path(tmp) / "storescp"
        received.mkdir()
        references = [
            storescp(ref_port, STORESCP_AET, "-od", str(received)),
            storescp(ref_ignore_port, STORESCP_AET + "I", "--ignore"),
        ]
        config = load_config(
            environ={
                "DRIMBOX_STORE__DATABASE_URL": f"sqlite:///{tmp}/bench.db",
                "DRIMBOX_STORE__CACHE_DIR": f"{tmp}/cache",
                "DRIMBOX_PACS__STORESCP_AET": BOX_DCMTK_AET,
                "DRIMBOX_PACS__STORESCP_PORT": str(box_storescp_port),
                **pacs_environ(pacs, BOX_AET, scp_port),
            }
        )
        study = report.study_instance_uid
        ours: dict[str, list[tuple[float, float, int]]] = {}
        theirs: dict[str, list[float]] = {}
        try:
            for run in range(-1, args.runs):  # one uncounted warm-up round
                for mode in MODES:
                    with pynetdicom_paths(mode.endswith("-pynetdicom")):
                        result = pacs_speedtest(
                            config, study_uid=study, mode=mode.removesuffix("-pynetdicom")
                        )
                    if run >= 0:
                        ours.setdefault(mode, []).append(
                            (result.seconds, result.first_image_s or 0.0, result.images)
                        )
                for label, aet in (("files", STORESCP_AET), ("--ignore", STORESCP_AET + "I")):
                    seconds = movescu(pacs, study, aet)
                    shutil.rmtree(received)
                    received.mkdir()
                    if run >= 0:
                        theirs.setdefault(label, []).append(seconds)
                print(
                    f"  {'warm-up' if run < 0 else f'run {run + 1}'}: "
                    + ", ".join(f"{m} {ours[m][-1][0]:.2f} s" for m in ours if run >= 0)
                    + (
                        f"; dcmtk files {theirs['files'][-1]:.2f} s, "
                        f"--ignore {theirs['--ignore'][-1]:.2f} s"
                        if run >= 0
                        else ""
                    ),
                    flush=True,
                )
            node = {}
            for mode in ours:
                with pynetdicom_paths(mode.endswith("-pynetdicom")):
                    node[mode] = into_the_cache(
                        config, mode.removesuffix("-pynetdicom"), study, args.runs
                    )
            for method in ("c-get", "c-move", "c-move-dcmtk"):
                spool = Path(tmp) / f"spool-{method}"
                two_at_once(config, method, [study, other.study_instance_uid], spool)
        finally:
            for process in references:
                process.terminate()
                process.wait(10)
    reference = statistics.median(theirs["files"])
    ignore = statistics.median(theirs["--ignore"])
    print(
        f"  dcmtk movescu → storescp: writing files {reference:.2f} s "
        f"({on_disk / reference / 1e6:.0f} MB/s), --ignore {ignore:.2f} s"
    )
    for mode, runs in ours.items():
        wall = statistics.median(r[0] for r in runs)
        first = statistics.median(r[1] for r in runs)
        print(
            f"  {mode}: {wall:.2f} s, {on_disk / wall / 1e6:.0f} MB/s, first image "
            f"{first * 1000:.0f} ms, {runs[0][2]} images; ratio to dcmtk {wall / reference:.2f} "
            f"(to --ignore {wall / ignore:.2f})"
        )
    for mode, times in node.items():
        wall = statistics.median(times)
        print(
            f"  node cache, {mode}: cold series into the cache {wall:.2f} s "
            f"({on_disk / wall / 1e6:.0f} MB/s); ratio to dcmtk writing files "
            f"{wall / reference:.2f}"
        )
    load = os.getloadavg()
    print(f"  load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
