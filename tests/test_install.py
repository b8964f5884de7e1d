"""`scripts/install.sh` staged under a folder (DESTDIR) as a site runs it: twice (the second run
changes nothing and keeps the edited configuration), then from a newer checkout (a new release,
the previous one kept for a rollback); the systemd unit passes `systemd-analyze verify`."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.tools import require_tool

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("src", "scripts", "deploy", "docs", "pyproject.toml", "uv.lock", "README.md")


@dataclass
class Staged:
    destdir: Path
    first: str
    second: str

    @property
    def unit(self) -> Path:
        return self.destdir / "etc/systemd/system/drimbox.service"

    @property
    def config(self) -> Path:
        return self.destdir / "etc/drimbox/drimbox.toml"

    @property
    def prefix(self) -> Path:
        return self.destdir / "opt/drimbox"


def install(checkout: Path, destdir: Path) -> str:
    done = subprocess.run(
        [str(checkout / "scripts/install.sh")],
        env=os.environ | {"DESTDIR": str(destdir)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def tree(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and link under `folder`: (size, mode, mtime)."""
    state = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        state[str(path.relative_to(folder))] = (info.st_size, info.st_mode, info.st_mtime_ns)
    return state


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Staged]:
    destdir = tmp_path_factory.mktemp("install")
    first = install(ROOT, destdir)
    config = destdir / "etc/drimbox/drimbox.toml"
    config.write_text(config.read_text() + "# réglage local du site\n")
    before = tree(destdir)
    second = install(ROOT, destdir)
    assert tree(destdir) == before, "the second run changed files"
    yield Staged(destdir, first, second)


def test_a_second_run_changes_nothing(staged: Staged) -> None:
    assert "écrit : " in staged.first and "déjà installée" not in staged.first
    assert "déjà installée" in staged.second
    assert "configuration existante conservée" in staged.second
    assert "écrit : " not in staged.second
    assert staged.config.read_text().endswith("# réglage local du site\n")
    assert oct(staged.config.stat().st_mode & 0o777) == "0o640"


def test_unit_is_verified_and_hardened(staged: Staged) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    verified = subprocess.run(
        [analyze, "verify", str(staged.unit)], capture_output=True, text=True, timeout=60
    )
    # Unknown or misspelt keys are warnings on stderr: none allowed.
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr
    unit = staged.unit.read_text()
    for setting in (
        "User=drimbox",
        "Restart=on-failure",
        "RestartPreventExitStatus=2 3",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "StateDirectory=drimbox",
        "StandardError=journal",
    ):
        assert f"\n{setting}\n" in unit, setting
    assert f"ExecStart={staged.prefix}/current/venv/bin/drimbox serve" in unit
    security = subprocess.run(
        [analyze, "security", "--offline=true", str(staged.unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    [level] = [line for line in security.stdout.splitlines() if "Overall exposure" in line]
    assert float(level.split(":")[1].split()[0]) < 3.0, level


def test_installed_command_uses_the_service_configuration(staged: Staged, tmp_path: Path) -> None:
    command = staged.destdir / "usr/local/bin/drimbox"
    environ = os.environ | {
        "DRIMBOX_CONFIG": str(staged.config),
        "COLUMNS": "200",
        # The staged configuration points at /var/lib/drimbox; this machine's is not ours.
        "DRIMBOX_STORE__DATABASE_URL": f"sqlite:///{tmp_path / 'drimbox.db'}",
    }
    checked = subprocess.run(
        [str(command), "config", "check", str(staged.config)],
        env=environ, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "HTTP : 0.0.0.0:443" in checked.stdout and "rôles : source" in checked.stdout
    upgraded = subprocess.run(
        [str(command), "db", "upgrade"], env=environ, capture_output=True, text=True, timeout=120
    )
    assert upgraded.returncode == 0, upgraded.stderr
    assert (tmp_path / "drimbox.db").exists()
    assert (staged.prefix / "ohif/index.html").exists()


def test_upgrade_from_a_newer_checkout_keeps_the_previous_release(
    staged: Staged, tmp_path: Path
) -> None:
    newer = tmp_path / "checkout"
    for name in SHIPPED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, newer / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, newer / name)
    shutil.copytree(ROOT / "var/ohif", newer / "var/ohif", symlinks=True)
    module = newer / "src/drimbox/__init__.py"
    module.write_text(module.read_text() + "# a newer release\n")
    old = os.readlink(staged.prefix / "current")
    output = install(newer, staged.destdir)
    new = os.readlink(staged.prefix / "current")
    assert new != old and new in output
    releases = {p.name for p in (staged.prefix / "releases").iterdir()}
    assert {Path(old).name, Path(new).name} <= releases
    # Rollback is a link away: the previous release still runs.
    previous = staged.prefix / old / "venv/bin/drimbox"
    assert (
        subprocess.run([str(previous), "--help"], capture_output=True, timeout=60).returncode == 0
    )
    assert "configuration existante conservée" in output
