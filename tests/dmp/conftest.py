"""Fixtures of the DMP client tests: a test PKI, the ORG signer, exam C's report and a real KOS."""

from __future__ import annotations

import pytest

from drimbox.cda.model import ImagingReport
from drimbox.dicom.kos import KosSite, build_manifest, manifest_to_bytes
from drimbox.dicom.model import InstanceRef, SeriesSnapshot, StudySnapshot
from drimbox.dmp.xades import XmlSigner
from drimbox.sim.pki import Issued, TestPki
from support.factories import CR_C_ACCESSION, CR_C_INS, CR_C_STUDY_UID, make_report

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SITE_ROOT = "1.2.250.1.999.77.1"


@pytest.fixture(scope="session")
def pki() -> TestPki:
    return TestPki()


@pytest.fixture(scope="session")
def signing(pki: TestPki) -> Issued:
    return pki.issue(
        "DRIMbox",
        usage="sign",
        organizational_unit="499700367909006",
        organization="CABINET M DOC0036790",
        state="Paris (75)",
    )


@pytest.fixture(scope="session")
def signer(signing: Issued) -> XmlSigner:
    return XmlSigner(signing.certificate, signing.key_pem)


@pytest.fixture
def report() -> ImagingReport:
    return make_report()


def make_kos(report: ImagingReport) -> bytes:
    """A real KOS of exam C, built from a snapshot as the PACS would describe the study."""
    series = SeriesSnapshot(
        series_instance_uid=f"{CR_C_STUDY_UID}.1",
        modality="CT",
        series_number=1,
        series_description="Crâne",
        instances=tuple(InstanceRef(CT_IMAGE, f"{CR_C_STUDY_UID}.1.{n}", n) for n in range(1, 4)),
    )
    study = StudySnapshot(
        study_instance_uid=CR_C_STUDY_UID,
        patient_id=CR_C_INS,
        issuer_of_patient_id="ASIP-SANTE-INS-NIR",
        other_patient_ids=(),
        patient_name="PAT-TROIS^DOMINIQUE",
        patient_birth_date="19790328",
        patient_sex="F",
        accession_number=CR_C_ACCESSION.extension,
        study_date="20210108",
        study_time="100000",
        study_description="TDM cérébrale",
        study_id="1",
        referring_physician_name="",
        series=(series,),
    )
    site = KosSite(
        uid_root=SITE_ROOT,
        public_base_url="https://drimbox.ambroise.example",
        institution_name="Centre de radiologie Ambroise",
    )
    return manifest_to_bytes(build_manifest(report, study, site))


@pytest.fixture
def kos_bytes(report: ImagingReport) -> bytes:
    return make_kos(report)
