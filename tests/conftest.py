"""Suite-wide fixtures: a real Orthanc PACS (Debian package) started once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from drimbox.sim.orthanc import LocalOrthanc, orthanc_available
from support.dmp import DmpEnvironment, local_dmp
from support.tools import missing


@pytest.fixture(scope="session")
def orthanc() -> Iterator[LocalOrthanc]:
    """A loopback Orthanc (AET ORTHANC); a missing Orthanc fails the test."""
    if not orthanc_available():
        missing("Orthanc not installed (Debian packages orthanc, orthanc-dicomweb)")
    with LocalOrthanc(aet="ORTHANC") as pacs:
        yield pacs


@pytest.fixture
def pacs(orthanc: LocalOrthanc) -> Iterator[LocalOrthanc]:
    """The session's Orthanc, emptied so that each test sees only its own studies."""
    orthanc.delete_all()
    yield orthanc
    orthanc.delete_all()


@pytest.fixture
def dmp(tmp_path: Path) -> Iterator[DmpEnvironment]:
    """A DMP simulator over mutual TLS with the site's certificates (made for this test)."""
    with local_dmp(tmp_path / "dmp") as environment:
        yield environment
