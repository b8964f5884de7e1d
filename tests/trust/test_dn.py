"""Distinguished names: a certificate subject matches a whitelist DN only as the list writes it
(same RDN order, same case); only the string's writing (escapes, type spellings, NFC) varies."""

from __future__ import annotations

import pytest
from cryptography import x509

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
        # spaces after commas
        "CN=db175.test.mesimagesmedicales.fr, OU=300000001831981, O=MINISTERE DE TEST3198, "
        "ST=Côte-d'Or (21), C=FR",
        # UTF-8 bytes escaped as hex pairs (RFC 4514), decomposed accent (NFD)
        "CN=db175.test.mesimagesmedicales.fr,OU=300000001831981,O=MINISTERE DE TEST3198,"
        "ST=C\\C3\\B4te-d'Or (21),C=FR",
        "CN=db175.test.mesimagesmedicales.fr,OU=300000001831981,O=MINISTERE DE TEST3198,"
        "ST=Co\u0302te-d'Or (21),C=FR",
        # OIDs and S= for ST
        "2.5.4.3=db175.test.mesimagesmedicales.fr,OU=300000001831981,O=MINISTERE DE TEST3198,"
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
        # reversed RDN order, other case, inner spaces doubled: other names
        "C=FR,ST=Côte-d'Or (21),O=MINISTERE DE TEST3198,OU=300000001831981,"
        "CN=db175.test.mesimagesmedicales.fr",
        LISTED.replace("MINISTERE DE TEST", "Ministere de Test"),
        LISTED.replace("db175", "DB175"),
        LISTED.replace("MINISTERE DE", "MINISTERE  DE"),
    ],
)
def test_different_names(different: str) -> None:
    assert not dn_equal(LISTED, different)


def test_escaped_separators_are_values() -> None:
    dn = DistinguishedName.parse("CN=Dupont\\, Jean,O=A\\+B,C=FR")
    assert dn.values("CN") == ["Dupont, Jean"] and dn.values("O") == ["A+B"]


def test_a_certificate_with_reversed_rdns_is_another_name() -> None:
    # Same attributes, DER sequence in the other order: its RFC 4514 writing starts with C=FR.
    name = subject_name("db175.test.mesimagesmedicales.fr", organizational_unit="300000001831981",
                        organization="MINISTERE DE TEST3198", state="Côte-d'Or (21)")  # fmt: skip
    reversed_name = x509.Name(list(reversed(list(name))))
    assert reversed_name.rfc4514_string().startswith("C=FR,")
    assert not dn_equal(LISTED, reversed_name)
    assert dn_equal("C=FR,ST=Côte-d'Or (21),O=MINISTERE DE TEST3198,OU=300000001831981,"
                    "CN=db175.test.mesimagesmedicales.fr", reversed_name)  # fmt: skip


def test_multi_valued_rdn_is_a_set_and_escaped_spaces_count() -> None:
    assert dn_equal("CN=a+OU=b,C=FR", "OU=b+CN=a,C=FR")
    assert not dn_equal("CN=a+OU=b,C=FR", "CN=a,OU=b,C=FR")
    assert DistinguishedName.parse("O=TEST\\ ,C=FR").values("O") == ["TEST "]
    assert not dn_equal("O=TEST\\ ,C=FR", "O=TEST,C=FR")


def test_syntax_errors() -> None:
    for text in ("CN", "XX=1", "CN=a,,C=FR", "CN=a\\"):
        with pytest.raises(DnSyntaxError):
            DistinguishedName.parse(text)
