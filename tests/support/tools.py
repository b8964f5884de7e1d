"""External programs the tests use to check from the outside (dcmtk, dicom3tools…)."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str, package: str) -> str:
    """Path of `name`; a missing tool skips a local run but fails CI (setup installs it)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed (Debian package {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
