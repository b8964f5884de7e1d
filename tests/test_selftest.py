"""`drimbox selftest` passes on the bundled ANS samples and names the file of a corrupted one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drimbox.cli import app
from drimbox.samples import ANS_DIR


def test_passes_on_the_bundled_samples() -> None:
    result = CliRunner().invoke(app, ["selftest"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "13 contrôles réussis" in result.output


@pytest.mark.parametrize(
    ("relative", "corrupt"),
    [
        ("cda/CR_C.xml", lambda data: data[: len(data) // 2]),
        ("whitelist/LISTEBLANCHE_DRIM-M_SIGNEE_TEST.xml",
         lambda data: data.replace(b"db3.test", b"db6.test", 1)),
        ("hl7/CR_G1-ORU.hl7", lambda data: data.replace(b"ORU^R01", b"ADT^A01", 1)),
        ("validators/wado-rs-series-request.txt", lambda data: data.replace(b"KOS-", b"XOS-")),
    ],
)  # fmt: skip
def test_fails_naming_the_corrupted_file(tmp_path: Path, relative: str, corrupt: object) -> None:
    copy = tmp_path / "ans"
    shutil.copytree(ANS_DIR, copy)
    target = copy / relative
    target.chmod(0o644)
    target.write_bytes(corrupt(target.read_bytes()))  # type: ignore[operator]
    result = CliRunner().invoke(app, ["selftest", "--samples", str(copy)], env={"COLUMNS": "250"})
    assert result.exit_code == 1
    assert "ÉCHEC" in result.output
    assert f"en échec : {relative}" in result.output
