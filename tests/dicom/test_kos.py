"""KOS manifest: built from a real Orthanc's answers for a synthetic exam C, checked by dciodvfy."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from drimbox.cda.model import Identifier, PersonName
from drimbox.dicom.kos import (
    KOS_SOP_CLASS_UID,
    IdentityMismatch,
    KosError,
    KosSite,
    build_manifest,
    check_identity,
    describe_manifest,
    manifest_from_bytes,
    manifest_to_bytes,
)
from drimbox.dicom.model import InstanceRef, SeriesSnapshot, StudySnapshot
from drimbox.dicom.pacs import PacsClient, PacsSettings
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.studies import SeriesSpec, generate_study
from support.factories import (
    CR_C_ACCESSION,
    CR_C_INS,
    CR_C_INS_OID,
    CR_C_IPP,
    CR_C_ORDER,
    CR_C_STUDY_UID,
    make_patient,
    make_report,
)
from support.tools import require_tool

SITE = KosSite(
    uid_root="1.2.250.1.999.77.1",
    public_base_url="https://drimbox.ambroise.example/",
    institution_name="Centre de radiologie Ambroise",
    retrieve_location_uid="1.2.250.1.999.77.2",
)


def generate_cr_c(out_dir: Path) -> list[Path]:
    """The images of exam C as a PACS would hold them: INS as PatientID, IPP as other id."""
    return generate_study(
        out_dir,
        patient_id=CR_C_INS,
        issuer_of_patient_id="ASIP-SANTE-INS-NIR",
        other_patient_ids=[(CR_C_IPP.extension, CR_C_IPP.root)],
        patient_name="PAT-TROIS^DOMINIQUE",
        birth_date="19790328",
        sex="F",
        study_uid=CR_C_STUDY_UID,
        accession=CR_C_ACCESSION.extension,
        study_date="20210108",
        study_description="TDM cérébrale",
        series=[
            SeriesSpec("CT", "Crâne sans injection", 5, body_part="HEAD"),
            SeriesSpec("CT", "Crâne avec injection", 4, body_part="HEAD"),
            SeriesSpec("MR", "Complément IRM T1", 3, body_part="HEAD"),
        ],
        rows=64,
        columns=64,
    )


@pytest.fixture(scope="module")
def cr_c_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return generate_cr_c(tmp_path_factory.mktemp("cr_c"))


@pytest.fixture(scope="module")
def stored_cr_c(orthanc: LocalOrthanc, cr_c_files: list[Path]) -> Iterator[list[Path]]:
    """Exam C stored with dcmtk's storescu, as a modality would (C-STORE)."""
    storescu = require_tool("storescu", "dcmtk")
    result = subprocess.run(
        [storescu, "-aet", "MODALITY", "-aec", orthanc.aet, "-xe", "127.0.0.1",
         str(orthanc.dicom_port), *map(str, cr_c_files)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    yield cr_c_files


@pytest.fixture(scope="module")
def pacs(orthanc: LocalOrthanc) -> PacsClient:
    return PacsClient(
        PacsSettings(host="127.0.0.1", port=orthanc.dicom_port, called_aet=orthanc.aet)
    )


@pytest.fixture(scope="module")
def snapshot(pacs: PacsClient, stored_cr_c: list[Path]) -> StudySnapshot:
    pacs.echo()
    snap = pacs.snapshot(CR_C_STUDY_UID)
    assert snap is not None
    return snap


def _references(kos: Dataset) -> dict[str, set[str]]:
    refs: dict[str, set[str]] = {}
    for study_item in kos.CurrentRequestedProcedureEvidenceSequence:
        for series in study_item.ReferencedSeriesSequence:
            refs[series.SeriesInstanceUID] = {
                i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence
            }
    return refs


def test_manifest_of_stored_study_is_valid_and_complete(
    snapshot: StudySnapshot, stored_cr_c: list[Path], tmp_path: Path
) -> None:
    stored = [pydicom.dcmread(p, stop_before_pixels=True) for p in stored_cr_c]
    expected: dict[str, set[str]] = {}
    for ds in stored:
        expected.setdefault(ds.SeriesInstanceUID, set()).add(ds.SOPInstanceUID)
    assert {s.series_instance_uid: {i.sop_instance_uid for i in s.instances}
            for s in snapshot.series} == expected  # fmt: skip

    kos = build_manifest(make_report(), snapshot, SITE)
    path = tmp_path / "kos.dcm"
    path.write_bytes(manifest_to_bytes(kos))

    dciodvfy = require_tool("dciodvfy", "dicom3tools")
    check = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
    report_lines = (check.stdout + check.stderr).splitlines()
    for line in report_lines:
        if line.startswith("Warning"):
            print("dciodvfy:", line)
    errors = [line for line in report_lines if line.startswith("Error")]
    assert errors == [], "\n".join(report_lines)
    dump = subprocess.run(["dcmdump", str(path)], capture_output=True, text=True, check=False)
    assert dump.returncode == 0, dump.stderr
    assert "113030" in dump.stdout

    ko = pydicom.dcmread(path)
    assert ko.SOPClassUID == KOS_SOP_CLASS_UID
    assert ko.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ko.Modality == "KO"
    assert ko.ConceptNameCodeSequence[0].CodeValue == "113030"
    assert ko.ConceptNameCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert ko.ContinuityOfContent == "SEPARATE"
    assert ko.SOPInstanceUID.startswith(SITE.uid_root + ".")
    assert ko.SeriesInstanceUID.startswith(SITE.uid_root + ".")
    assert ko.StudyInstanceUID == CR_C_STUDY_UID

    assert ko.PatientID == CR_C_INS
    assert ko.IssuerOfPatientID == "ASIP-SANTE-INS-NIR"
    assert ko.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == CR_C_INS_OID
    assert ko.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityIDType == "ISO"
    other = ko.OtherPatientIDsSequence[0]
    assert (other.PatientID, other.IssuerOfPatientID) == (CR_C_IPP.extension, CR_C_IPP.root)
    assert str(ko.PatientName) == "PAT-TROIS^DOMINIQUE"
    assert (ko.PatientBirthDate, ko.PatientSex) == ("19790328", "F")

    request = ko.ReferencedRequestSequence[0]
    assert request.StudyInstanceUID == CR_C_STUDY_UID
    assert request.AccessionNumber == "ACN103"
    assert request.IssuerOfAccessionNumberSequence[0].UniversalEntityID == CR_C_ACCESSION.root
    assert request.PlacerOrderNumberImagingServiceRequest == "OPN103"
    assert request.OrderPlacerIdentifierSequence[0].UniversalEntityID == CR_C_ORDER.root

    assert _references(ko) == expected
    for series in ko.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence:
        assert series.RetrieveURL == (
            "https://drimbox.ambroise.example/dicom-web-rs/studies/"
            f"{CR_C_STUDY_UID}/series/{series.SeriesInstanceUID}"
        )
        assert series.RetrieveLocationUID == SITE.retrieve_location_uid
    items = [i for i in ko.ContentSequence if i.ValueType == "IMAGE"]
    assert {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in items} == {
        ds.SOPInstanceUID for ds in stored
    }
    assert all(i.RelationshipType == "CONTAINS" for i in items)

    text = describe_manifest(ko)
    assert "12 instances" in text and "3 series" in text and "ACN103" in text
    assert text.count("/dicom-web-rs/studies/") == 3


def test_same_report_and_study_give_the_same_uids(snapshot: StudySnapshot) -> None:
    first = build_manifest(make_report(), snapshot, SITE)
    again = build_manifest(make_report(), snapshot, SITE)
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    assert manifest_from_bytes(manifest_to_bytes(first)).SOPInstanceUID == first.SOPInstanceUID

    new_version = make_report(
        document_id=Identifier(root="1.2.250.1.213.4.5.4.4031"), version_number=2
    )
    replaced = build_manifest(new_version, snapshot, SITE)
    assert replaced.SOPInstanceUID != first.SOPInstanceUID
    fewer = dataclasses.replace(snapshot, series=snapshot.series[:2])
    assert build_manifest(make_report(), fewer, SITE).SOPInstanceUID != first.SOPInstanceUID


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"patient_id": "999999999999999", "other_patient_ids": ()}, "patient differs"),
        ({"patient_birth_date": "19800101"}, "birth date differs"),
        ({"patient_sex": "M"}, "sex differs"),
        ({"patient_name": "DUPONT^MARIE"}, "family name differs"),
        ({"accession_number": "ACN999"}, "accession number differs"),
        ({"study_instance_uid": "1.2.3.4"}, "StudyInstanceUID differs"),
    ],
)
def test_identity_mismatch_is_refused(
    snapshot: StudySnapshot, change: dict[str, object], expected: str
) -> None:
    other = dataclasses.replace(snapshot, **change)  # type: ignore[arg-type]
    assert check_identity(make_report(), snapshot) == []
    with pytest.raises(IdentityMismatch) as excinfo:
        build_manifest(make_report(), other, SITE)
    assert len(excinfo.value.reasons) == 1
    assert expected in excinfo.value.reasons[0]
    assert expected in str(excinfo.value)


def test_identity_tolerates_ipp_as_patient_id_and_name_spelling(snapshot: StudySnapshot) -> None:
    pacs_with_ipp = dataclasses.replace(
        snapshot, patient_id="IPP101", other_patient_ids=(), patient_name="pat trois^Dominique"
    )
    assert check_identity(make_report(), pacs_with_ipp) == []
    accented = make_report(patient=make_patient(name=PersonName(family="PAT-TROÎS")))
    assert check_identity(accented, snapshot) == []
    no_birth = dataclasses.replace(snapshot, patient_birth_date="", patient_sex="")
    assert check_identity(make_report(), no_birth) == []
    born_elsewhere = make_report(patient=make_patient(birth_date=date(1979, 3, 29)))
    assert any("birth date" in r for r in check_identity(born_elsewhere, snapshot))


def test_empty_study_and_bad_site_are_refused(snapshot: StudySnapshot) -> None:
    empty = dataclasses.replace(snapshot, series=())
    with pytest.raises(KosError, match="no instance"):
        build_manifest(make_report(), empty, SITE)
    with pytest.raises(KosError, match="characters long"):
        KosSite(uid_root="1.2.250." + "1234567890." * 4 + "1", public_base_url="https://x",
                institution_name="x")  # fmt: skip
    with pytest.raises(KosError, match="not a valid OID"):
        KosSite(uid_root="1.2.abc", public_base_url="https://x", institution_name="x")
    with pytest.raises(KosError, match="INS"):
        build_manifest(make_report(patient=make_patient(ins_oid="1.2.3")), snapshot, SITE)


def _without_creation_times(kos: Dataset) -> bytes:
    """The encoded manifest, its creation stamps (highdicom's clock, not `created`) fixed."""
    kos.InstanceCreationDate, kos.InstanceCreationTime = "20240102", "030405"
    kos.ContributingEquipmentSequence[0].ContributionDateTime = "20240102030405"
    return manifest_to_bytes(kos)


def test_fast_manifest_is_byte_for_byte_highdicoms_own(snapshot: StudySnapshot) -> None:
    """The references are encoded without highdicom's per-item machinery: the result must be
    exactly what highdicom builds when it validates every reference itself."""
    extra = SeriesSnapshot(
        series_instance_uid="1.2.250.1.999.77.9.1", modality="SR", series_number=99,
        series_description="", instances=(
            InstanceRef("1.2.840.10008.5.1.4.1.1.88.59", "1.2.250.1.999.77.9.1.1", 1),
            InstanceRef("1.2.840.10008.5.1.4.1.1.11.1", "1.2.250.1.999.77.9.1.22", 2),
        ),
    )  # fmt: skip
    for study in (snapshot, dataclasses.replace(snapshot, series=(*snapshot.series, extra))):
        for description in ("TDM cérébrale", ""):
            shown = dataclasses.replace(study, study_description=description)
            when = datetime(2024, 1, 2, 3, 4, 5, 678900)
            fast = build_manifest(make_report(), shown, SITE, created=when)
            slow = build_manifest(make_report(), shown, SITE, created=when,
                                  validate_every_item=True)  # fmt: skip
            assert _without_creation_times(fast) == _without_creation_times(slow)
    # Read back, the fast manifest is the same dataset (its sequences parse).
    again = manifest_from_bytes(manifest_to_bytes(fast))
    # The description (the report's act, the PACS having none), 12 images, 2 composites.
    assert [i.ValueType for i in again.ContentSequence] == ["TEXT"] + ["IMAGE"] * 12 + [
        "COMPOSITE"
    ] * 2
    assert again.ContentSequence[0].TextValue == "CT Head W contrast IV"
    assert len(fast.ContentSequence) == 15


def test_a_bad_uid_from_the_pacs_is_refused(snapshot: StudySnapshot) -> None:
    first = snapshot.series[0]
    broken = dataclasses.replace(
        first, instances=(InstanceRef("1.2.840.10008.5.1.4.1.1.2", "1.2.03.x", 1),)
    )
    with pytest.raises(KosError, match=r"invalid UID '1\.2\.03\.x'"):
        build_manifest(make_report(), dataclasses.replace(snapshot, series=(broken,)), SITE)
