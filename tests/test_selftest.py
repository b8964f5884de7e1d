"""`drimbox selftest` passes on the bundled ANS samples and names the file of a corrupted one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from drimbox import selftest
from drimbox.cli import app
from drimbox.dicom.kos import manifest_from_bytes, manifest_to_bytes
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


def _without_issuer_qualifiers(kos: Any) -> None:
    del kos.IssuerOfPatientIDQualifiersSequence


def _continuous(kos: Any) -> None:
    kos.ContinuityOfContent = "CONTINUOUS"


def _dns_entity(kos: Any) -> None:
    kos.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityIDType = "DNS"


def _named_reference(kos: Any) -> None:
    from pydicom import Dataset

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "260753009", "SCT", "Source"
    kos.ContentSequence[-1].ConceptNameCodeSequence = [code]


def _without_requested_procedure(kos: Any) -> None:
    del kos.ReferencedRequestSequence


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (_without_issuer_qualifiers, "construit : IssuerOfPatientIDQualifiersSequence"),
        (_continuous, "ContinuityOfContent : ['CONTINUOUS'] au lieu de ['SEPARATE']"),
        (_dns_entity, "IssuerOfPatientIDQualifiersSequence>UniversalEntityIDType : ['DNS']"),
        (_named_reference, "ContentSequence>ConceptNameCodeSequence>CodeValue"),
        (_without_requested_procedure, "absent du KOS construit : ReferencedRequestSequence"),
    ],
)  # fmt: skip
def test_a_kos_departing_from_the_reference_dump_fails(
    monkeypatch: pytest.MonkeyPatch, mutate: Any, named: str
) -> None:
    """The probes: a KOS without a module's sequence, with another continuity, another entity
    id type or a named reference item — each one fails the KOS check, naming the difference."""
    built = manifest_from_bytes(selftest.sample_kos())
    mutate(built)
    monkeypatch.setattr(selftest, "sample_kos", lambda folder=ANS_DIR: manifest_to_bytes(built))
    [kos_check] = [r for r in selftest.run_selftest() if r.file.endswith("Manifest_KOS_dump.xml")]
    assert not kos_check.ok
    assert named in kos_check.detail, kos_check.detail
