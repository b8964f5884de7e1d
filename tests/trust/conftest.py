"""Trust-space fixtures: a test IGC-Santé (root → intermediate → "ANS" signer), a foreign PKI
with the same names, an expired signer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from drimbox.sim.pki import Issued, TestPki
from drimbox.sim.whitelist import issue_ans_signer
from support.trust import Ans


@pytest.fixture(scope="session")
def ans() -> Ans:
    root = TestPki("TEST AC RACINE IGC-SANTE ELEMENTAIRE")
    intermediate = root.intermediate("TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS")
    return Ans(root, intermediate, issue_ans_signer(intermediate))


@pytest.fixture(scope="session")
def foreign() -> Ans:
    """Same names, different keys: what an impostor would build."""
    root = TestPki("TEST AC RACINE IGC-SANTE ELEMENTAIRE")
    intermediate = root.intermediate("TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS")
    return Ans(root, intermediate, issue_ans_signer(intermediate))


@pytest.fixture(scope="session")
def expired_signer(ans: Ans) -> Issued:
    return issue_ans_signer(
        ans.intermediate, not_before=datetime.now(UTC) - timedelta(days=400), days=30
    )
