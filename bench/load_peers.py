"""Load: concurrent DRIM-M peers fetching series over mutual TLS from one Source node.

Run: `uv run python bench/load_peers.py [--clients 50] [--requests 20]`. A Source site is built as
in the end-to-end tests (Orthanc, DMP and PSC simulators, whitelist signed at run time, the node
with mTLS); each client is a peer with its own TLS connection and a PSC token, fetching random
series of the published exam with the official DRIM-M headers. Prints errors, latency
percentiles, throughput and the process's peak RSS (node and clients share this process).
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from common import percentile

from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.studies import SeriesSpec
from support.site import official_headers, peer_client, series_url, source_site


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    series = tuple(SeriesSpec("CT", f"série {n}", 40) for n in range(6))
    with (
        LocalOrthanc() as orthanc,
        source_site(
            orthanc,
            Path(tempfile.mkdtemp(prefix="drimbox-load-")),
            series,
            size=128,
            # Every client shares one certificate: the fair share is raised to load the node.
            environ_extra={
                "DRIMBOX_SOURCE__PEER_MAX_REQUESTS": str(args.clients),
                "DRIMBOX_SOURCE__MAX_REQUESTS": str(args.clients),
            },
        ) as site,
    ):
        token = site.psc.mint_access_token("radiologue", lifetime_s=3600)
        headers = official_headers(site, token)

        def client_run(seed: int) -> list[tuple[float, int, int]]:
            rng = random.Random(seed)
            results = []
            with peer_client(site, site.trusted_peer) as client:
                for _ in range(args.requests):
                    index = rng.randrange(len(site.series_uids))
                    started = time.perf_counter()
                    response = client.get(series_url(site, index), headers=headers)
                    results.append(
                        (time.perf_counter() - started, response.status_code, len(response.content))
                    )
            return results

        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            runs = list(pool.map(client_run, range(args.clients)))
        elapsed = time.perf_counter() - started
    results = [r for run in runs for r in run]
    latencies = [r[0] for r in results]
    errors = [r for r in results if r[1] != 200]
    total_mb = sum(r[2] for r in results) / 1e6
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.clients} peers × {args.requests} series requests over mTLS "
          f"({len(site.series_uids)} series of 40 CT 128×128, uncompressed)")  # fmt: skip
    print(f"  errors: {len(errors)} / {len(results)}")
    print(f"  latency: p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
          f"p95 {percentile(latencies, 0.95) * 1000:.0f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms")  # fmt: skip
    print(f"  throughput: {len(results) / elapsed:.1f} requests/s, {total_mb / elapsed:.0f} MB/s "
          f"({total_mb:.0f} MB in {elapsed:.1f} s)")  # fmt: skip
    print(f"  peak RSS (node + clients, one process): {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
