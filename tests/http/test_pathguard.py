"""The path guard: encoded separators and dot segments are refused, real UIDs pass."""

from __future__ import annotations

import pytest

from drimbox.http.pathguard import hides_traversal


@pytest.mark.parametrize(
    "raw",
    [
        b"/dicom-web/studies/..%2F..%2Fetc%2Fpasswd",
        b"/dicom-web/studies/1.2/series/%2e%2e",
        b"/dicom-web/studies/1.2/series/..",
        b"/dicom-web/studies/1.2%5C..%5Cwin.ini",
        b"/dicom-web/studies/1.2%00",
        b"/dicom-web/studies/./1.2",
    ],
)
def test_traversal_is_seen(raw: bytes) -> None:
    assert hides_traversal(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"/dicom-web/studies/1.2.250.1.213.4.5/series/1.2.3/instances/1.2.3.4/frames/1,2",
        b"/dicom-web/studies/1.2.3/rendered",
        b"/dicom-web/studies?PatientID=1%5E2",
    ],
)
def test_uids_pass(raw: bytes) -> None:
    assert not hides_traversal(raw)
