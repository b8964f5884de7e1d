"""README's demo command works end to end (`drimbox demo --exit-after`), and a second run reuses
the folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from drimbox.sim.orthanc import orthanc_available


def run_demo(folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drimbox", "demo", "--folder", str(folder), "--exit-after", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_demo_publishes_the_sample_reports(tmp_path: Path) -> None:
    assert orthanc_available()
    first = run_demo(tmp_path / "demo")
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count("publié au DMP") == 2
    assert "images chargées dans le PACS" in first.stdout
    again = run_demo(tmp_path / "demo")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "dossier réutilisé" in again.stdout
    assert again.stdout.count("publié au DMP") == 2  # re-sent reports are not published twice
