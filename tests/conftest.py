"""Suite-wide fixtures: a real Orthanc PACS (Debian package) started once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from drimbox.sim.orthanc import LocalOrthanc, orthanc_available


@pytest.fixture(scope="session")
def orthanc() -> Iterator[LocalOrthanc]:
    """A loopback Orthanc (AET ORTHANC). Missing Orthanc: skip locally, fail in CI."""
    if not orthanc_available():
        if os.environ.get("CI"):
            pytest.fail(
                "Orthanc must be installed in CI (Debian packages orthanc, orthanc-dicomweb)"
            )
        pytest.skip("Orthanc not installed (Debian packages orthanc, orthanc-dicomweb)")
    with LocalOrthanc(aet="ORTHANC") as pacs:
        yield pacs
