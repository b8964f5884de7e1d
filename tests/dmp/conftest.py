"""Fixtures of the DMP client tests: a test PKI, the ORG signer, exam C's report and a real KOS."""

from __future__ import annotations

import pytest

from drimbox.cda.model import ImagingReport
from drimbox.dicom.kos import KosSite, build_manifest, manifest_to_bytes
from drimbox.dmp.xades import XmlSigner
from drimbox.sim.pki import Issued, TestPki
from support.factories import make_report, make_snapshot

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
    site = KosSite(
        uid_root=SITE_ROOT,
        public_base_url="https://drimbox.ambroise.example",
        institution_name="Centre de radiologie Ambroise",
    )
    return manifest_to_bytes(build_manifest(report, make_snapshot(report), site))


@pytest.fixture
def kos_bytes(report: ImagingReport) -> bytes:
    return make_kos(report)
