"""README's demo command works end to end (`drimbox demo --exit-after`), and a second run reuses
the folder."""

from __future__ import annotations

import re
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
        env={"PATH": "/usr/bin:/bin"},  # not a terminal, no COLUMNS: rich's 80 by default
        check=False,
    )


def test_demo_publishes_the_sample_reports(tmp_path: Path) -> None:
    assert orthanc_available()
    first = run_demo(tmp_path / "demo")
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count("publié au DMP") == 2
    assert "152 images chargées dans le PACS" in first.stdout  # a CT and an MR, 7 series
    # Piped, each item stays on its line: the command can be copied, the links opened.
    lines = first.stdout.splitlines()
    config = str(tmp_path / "demo" / "site-a" / "drimbox.toml")
    assert f"  En ligne de commande : uv run drimbox reports list --config {config}" in lines
    assert any(re.fullmatch(r"  Lien du compte rendu .* : http://localhost:\d+/\S+idCDA=\S+", line)
               for line in lines)  # fmt: skip
    # Users named as on the sign-in page; why site A is localhost and site B 127.0.0.1.
    assert any(line.startswith("    - Claire RADIOLOGUE (899700100011) : ") for line in lines)
    assert "cookies ne distinguent pas les ports" in first.stdout
    again = run_demo(tmp_path / "demo")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "dossier réutilisé" in again.stdout
    assert again.stdout.count("publié au DMP") == 2  # re-sent reports are not published twice
