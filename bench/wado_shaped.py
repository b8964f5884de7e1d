"""Benchmark: an uncompressed CT series served by WADO-RS over a shaped 100 Mbit/s link, the
client asking with the official DRIM-M Accept list (JPEG Lossless SV1 first).

Run (as root: network namespaces): `uv run python bench/wado_shaped.py [--instances 1300]
[--runs 2] [--rate-mbit 100]`. The Source's peer app runs in the root namespace; the client
runs in a network namespace of its own, reached through a veth pair whose Source side is shaped
by `tc qdisc … tbf rate 100mbit` (what the images cross, as on a site's WAN link). The PACS
(Orthanc) holds the series in Explicit VR Little Endian, 512×512 16-bit. Measured in the same
run, warm cache: (u) the client accepting only Explicit VR Little Endian (the uncompressed
bytes, what the box sent before issue #17), and (o) the official Accept list (the box re-encodes
each image in JPEG Lossless SV1 (libjpeg-turbo), `TRANSCODE_WORKERS` at a time, streaming each part
as it is ready). Prints both, and (o) against the time the uncompressed bytes take at the link's
rate (target ≤ 0.6). Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless
from wado_series import (
    _series_uid,
    fetch,
    make_series,
    official_accept,
    publish,
    serve,
    source_env,
)

from drimbox.config import load_config
from drimbox.db import Database
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.source.wado import TRANSCODE_WORKERS

JLS_ACCEPT = f'multipart/related; type="application/dicom"; transfer-syntax={JPEGLSLossless}'
PLAIN_ACCEPT = (
    f'multipart/related; type="application/dicom"; transfer-syntax={ExplicitVRLittleEndian}'
)


def ip(*args: str) -> None:
    run = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise SystemExit(f"ip {' '.join(args)}: {run.stderr.strip()} (root needed)")


class ShapedLink:
    """A veth pair into a network namespace; traffic towards the namespace shaped by tbf."""

    def __init__(self, rate_mbit: int) -> None:
        tag = f"{os.getpid() % 100000}"
        self.namespace, self.outer, self.inner = f"drimbox-b{tag}", f"dbo{tag}", f"dbi{tag}"
        third = os.getpid() % 200 + 20
        self.host, self.client = f"10.213.{third}.1", f"10.213.{third}.2"
        self.rate_mbit = rate_mbit

    def __enter__(self) -> ShapedLink:
        ip("netns", "add", self.namespace)
        try:
            ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
            ip("link", "set", self.inner, "netns", self.namespace)
            ip("addr", "add", f"{self.host}/24", "dev", self.outer)
            ip("link", "set", self.outer, "up")
            ip("-n", self.namespace, "addr", "add", f"{self.client}/24", "dev", self.inner)
            ip("-n", self.namespace, "link", "set", self.inner, "up")
            ip("-n", self.namespace, "link", "set", "lo", "up")
            # The Source's side: what it sends to the client leaves at the link's rate.
            shaped = subprocess.run(
                ["tc", "qdisc", "add", "dev", self.outer, "root", "tbf",
                 "rate", f"{self.rate_mbit}mbit", "burst", "256kb", "latency", "50ms"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if shaped.returncode != 0:
                raise SystemExit(f"tc: {shaped.stderr.strip()}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, check=False)

    def fetch(self, url: str, headers: dict[str, str]) -> tuple[float, float, int, int]:
        """`wado_series.fetch` run inside the client's namespace."""
        run = subprocess.run(
            ["ip", "netns", "exec", self.namespace, sys.executable, __file__,
             "--client", url, json.dumps(headers)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if run.returncode != 0:
            raise SystemExit(f"client failed: {run.stderr[-2000:]}")
        wall, first, total, parts = json.loads(run.stdout.strip().splitlines()[-1])
        return float(wall), float(first), int(total), int(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=1300)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--rate-mbit", type=int, default=100)
    parser.add_argument("--client", nargs=2, metavar=("URL", "HEADERS"), help="internal")
    args = parser.parse_args()
    if args.client:
        print(json.dumps(fetch(args.client[0], json.loads(args.client[1]))))
        return
    from support.source import Tokens

    # Stopped (SIGTERM): the namespace and the veth pair are still removed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    print(f"WADO-RS over a {args.rate_mbit} Mbit/s link: {args.instances} CT 512×512 16-bit, "
          f"stored uncompressed; {TRANSCODE_WORKERS} transcoding workers")  # fmt: skip
    report, files = make_series(args.instances, ExplicitVRLittleEndian)
    stored = sum(p.stat().st_size for p in files)
    with (
        tempfile.TemporaryDirectory(prefix="drimbox-bench-shaped-") as tmp,
        LocalOrthanc(work_dir=Path(tmp) / "orthanc") as pacs,
        ShapedLink(args.rate_mbit) as link,
    ):
        pacs.store_files(files)
        tokens = Tokens()
        env = source_env(tmp, pacs, "wado-rs", 4 * 1024**3) | tokens.to_env()
        db = Database(load_config(environ=env).store.database_url)
        db.upgrade()
        study_uid, kos_uid = publish(db, pacs, report)
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        server = context.Process(target=serve, args=(env, queue, link.host), daemon=True)
        server.start()
        try:
            port = queue.get(timeout=60)
            url = (f"http://{link.host}:{port}/dicom-web-rs/studies/{study_uid}/series/"
                   f"{_series_uid(files[0])}")  # fmt: skip
            peer = {"Authorization": f"Bearer {tokens.issue()}", "KOS-SOPInstanceUID": kos_uid}
            plain, official = peer | {"Accept": PLAIN_ACCEPT}, peer | {"Accept": official_accept()}
            jls = peer | {"Accept": JLS_ACCEPT}
            warm = link.fetch(url, plain)  # fills the Source's cache from Orthanc
            print(f"  cold (cache filled): {warm[0]:.1f} s, {warm[2] / 1e6:.0f} MB", flush=True)
            results: dict[str, list[tuple[float, float, int, int]]] = {"u": [], "o": [], "l": []}
            for run in range(args.runs):
                results["u"].append(link.fetch(url, plain))
                results["o"].append(link.fetch(url, official))
                results["l"].append(link.fetch(url, jls))
                print(f"  run {run + 1}: uncompressed {results['u'][-1][0]:.1f} s, official "
                      f"Accept {results['o'][-1][0]:.1f} s, JPEG-LS {results['l'][-1][0]:.1f} s",
                      flush=True)  # fmt: skip
        finally:
            server.terminate()
            server.join(10)
            db.dispose()
    link_seconds = results["u"][0][2] * 8 / (args.rate_mbit * 1e6)
    print(f"\nSeries: {args.instances} instances, {stored / 1e6:.0f} MB stored uncompressed; "
          f"at {args.rate_mbit} Mbit/s those bytes take {link_seconds:.1f} s "
          f"(load average {os.getloadavg()[0]:.2f})")  # fmt: skip
    labels = {
        "u": "(u) Explicit VR LE only",
        "o": "(o) official DRIM-M Accept (.70, libjpeg-turbo)",
        "l": "(l) JPEG-LS only (.80, pyjpegls in process)",
    }
    medians = {}
    for key, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        medians[key] = wall
        total, parts = runs[0][2], runs[0][3]
        print(f"  {labels[key]}: {wall:.1f} s, {total / 1e6:.0f} MB in {parts} parts, "
              f"first part {statistics.median(r[1] for r in runs) * 1000:.0f} ms")  # fmt: skip
    for key in ("o", "l"):
        print(f"  ratio ({key}) / uncompressed bytes at the link's rate: "
              f"{medians[key] / link_seconds:.2f}; ({key}) / (u) measured: "
              f"{medians[key] / medians['u']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
