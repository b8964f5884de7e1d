"""Distinguished names: the whitelist's writing and the certificates' must compare equal."""

from __future__ import annotations

import pytest

from drimbox.sim.pki import subject_name
from drimbox.trust.dn import DistinguishedName, DnSyntaxError, dn_equal

LISTED = "CN=db175.test.mesimagesmedicales.fr,OU=300000001831981,O=MINISTERE DE TEST3198,ST=Côte-d'Or (21),C=FR"  # noqa: E501


def test_certificate_subject_equals_the_listed_dn() -> None:
    name = subject_name("db175.test.mesimagesmedicales.fr", organizational_unit="300000001831981",
                        organization="MINISTERE DE TEST3198", state="Côte-d'Or (21)")  # fmt: skip
    assert dn_equal(LISTED, name)
    assert dn_equal(LISTED, name.rfc4514_string())
    assert DistinguishedName.parse(LISTED) == DistinguishedName.from_name(name)


@pytest.mark.parametrize(
    "variant",
    [
        # reversed order, spaces after commas, other case
        "C=FR, ST=Côte-d'Or (21), O=Ministere de Test3198, OU=300000001831981, "
        "CN=DB175.test.mesimagesmedicales.fr",
        # UTF-8 bytes escaped as hex pairs (RFC 4514), decomposed accent (NFD)
        "CN=db175.test.mesimagesmedicales.fr,OU=300000001831981,O=MINISTERE DE TEST3198,"
        "ST=C\\C3\\B4te-d'Or (21),C=FR",
        "CN=db175.test.mesimagesmedicales.fr,OU=300000001831981,O=MINISTERE DE TEST3198,"
        "ST=Co\u0302te-d'Or (21),C=FR",
        # inner spaces collapsed, OIDs and S= for ST
        "2.5.4.3=db175.test.mesimagesmedicales.fr,OU=300000001831981,O=MINISTERE  DE TEST3198,"
        "S=Côte-d'Or (21),OID.2.5.4.6=FR",
    ],
)
def test_equivalent_writings(variant: str) -> None:
    assert dn_equal(LISTED, variant)


@pytest.mark.parametrize(
    "different",
    [
        "CN=db175.test.mesimagesmedicales.fr,OU=300000001831981,O=MINISTERE DE TEST3198,C=FR",
        LISTED + ",OU=extra",
        LISTED.replace("Côte", "Cote"),
        LISTED.replace("db175", "db176"),
        "CN=db175.test.mesimagesmedicales.fr\\,OU=300000001831981,O=MINISTERE DE TEST3198,"
        "ST=Côte-d'Or (21),C=FR",
        "not a dn",
        "",
    ],
)
def test_different_names(different: str) -> None:
    assert not dn_equal(LISTED, different)


def test_escaped_separators_are_values() -> None:
    dn = DistinguishedName.parse("CN=Dupont\\, Jean,O=A\\+B,C=FR")
    assert dn.values("CN") == ["dupont, jean"] and dn.values("O") == ["a+b"]


def test_syntax_errors() -> None:
    for text in ("CN", "XX=1", "CN=a,,C=FR", "CN=a\\"):
        with pytest.raises(DnSyntaxError):
            DistinguishedName.parse(text)
