"""Rules of the suite itself, checked by running pytest on a probe file with the suite's
configuration: a skip is a failure (the setup installs every component)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import pytest

def test_skips_at_run_time():
    pytest.skip("component X not installed")

@pytest.mark.skipif(True, reason="component Y not installed")
def test_skipped_by_mark():
    pass

def test_passes():
    pass
"""


def test_a_skipped_test_fails_the_run(tmp_path: Path) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
         str(REPO / "pyproject.toml"), "--rootdir", str(REPO), str(probe)],
        capture_output=True, text=True, timeout=300, check=False, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 failed, 1 passed, 1 error" in run.stdout, run.stdout
    assert "skipped, which the suite forbids: Skipped: component X not installed" in run.stdout
    assert "component Y not installed" in run.stdout
