"""Conso fixtures: the trust space (test PKI, signed whitelist), a generated study and its KOS."""

from __future__ import annotations

from pathlib import Path

import pytest

from conso.helpers import Study, Trust, build_trust, make_study


@pytest.fixture(scope="session")
def trust(tmp_path_factory: pytest.TempPathFactory) -> Trust:
    return build_trust(tmp_path_factory.mktemp("conso-pki"))


@pytest.fixture
def study(tmp_path: Path) -> Study:
    return make_study(tmp_path / "study")
