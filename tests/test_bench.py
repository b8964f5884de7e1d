"""Every `bench/` script runs once on a tiny input, so that the benchmarks never rot: they
assert nothing about speed (no timed assertion in the suite), only that they still run to the
end against today's code and print their figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
# Each script with the smallest arguments it accepts (its own defaults are the real sizes).
TINY: dict[str, list[str]] = {
    "conso_prefetch.py": ["--instances", "4", "--runs", "1", "--warmup", "0"],
    "conso_read.py": ["--instances", "4", "--runs", "1"],
    "dimse_retrieval.py": ["--instances", "4", "--runs", "1"],
    "failover.py": ["--reports", "2", "--lease-s", "5", "--restart-delay-s", "0.5",
                    "--only", "one-node-kill"],
    "kos_pipeline.py": ["--instances", "20", "--runs", "1", "--burst", "2"],
    "load_conso.py": ["--users", "1"],
    "load_peers.py": ["--clients", "1", "--requests", "1"],
    "pacs_speedtest.py": ["--instances", "4", "--runs", "1"],
    "prefetch_order.py": ["--exams", "8", "--instances", "1", "--size", "16"],
    "publication.py": ["--instances", "4", "--runs", "1", "--reports", "2", "--snapshot-runs", "1"],
    "retention_purge.py": ["--reports", "4", "--cda-kb", "1", "--batch", "2"],
    "wado_series.py": ["--instances", "2", "--runs", "1", "--warmup", "0"],
    "wado_shaped.py": ["--instances", "2", "--runs", "1"],
}  # fmt: skip


def test_every_bench_script_is_run_here() -> None:
    scripts = {p.name for p in BENCH.glob("*.py")} - {"common.py", "__init__.py"}
    assert scripts == set(TINY), "a bench script without its tiny run here (or one gone)"


@pytest.mark.parametrize("script", sorted(TINY))
def test_bench_script_runs_on_a_tiny_input(script: str) -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH / script), *TINY[script]],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert run.stdout.strip(), "no figures printed"
