"""`verify_whitelist`: the official lists, lists signed at test time, and every way to break one."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drimbox.sim.pki import Issued
from drimbox.sim.whitelist import build_whitelist
from drimbox.trust.errors import Reason, WhitelistError
from drimbox.trust.whitelist import (
    ExpectedSigner,
    embedded_anchors,
    verify_command,
    verify_whitelist,
)
from drimbox.trust.xades_verify import RSA_SHA1
from support.trust import (
    NOW,
    SIGNED,
    UNSIGNED,
    Ans,
    alter_signature_value,
    change_field,
    domain,
    official_certificates,
    official_root,
    pem_file,
    remove_domain,
)

FIELDS = ["Identifiant", "db", "vi", "Denomination", "DNCertificatOperateur", "SupportContact",
          "DateMAJ"]  # fmt: skip


def refused(xml: bytes, anchors: list, reason: Reason, **kwargs: object) -> WhitelistError:  # type: ignore[type-arg]
    with pytest.raises(WhitelistError) as caught:
        verify_whitelist(xml, anchors, **kwargs)  # type: ignore[arg-type]
    assert caught.value.reason is reason, caught.value
    return caught.value


# -- the official lists --------------------------------------------------------------------------


def test_official_signed_list_verifies_with_its_embedded_root() -> None:
    whitelist = verify_whitelist(
        SIGNED.read_bytes(), [official_root()], now=NOW, expected_signer=ExpectedSigner.ans()
    )
    assert whitelist.generated_at == datetime(2026, 6, 19, 18, 6, 52, tzinfo=UTC)
    assert len(whitelist.domains) == 17
    assert whitelist.version_format == "1.0.0"
    first = whitelist.domains[0]
    assert (first.identifier, first.db, first.vi, first.name) == (
        "3", "db3.test.mesimagesmedicales.fr", "vi3.test.mesimagesmedicales.fr", "ANS",
    )  # fmt: skip
    assert first.updated_at == datetime(2024, 12, 10, 11, 27, 12, tzinfo=UTC)
    assert whitelist.signer.subject.startswith("CN=Liste Blanche DRIM-M,OU=318751275100020")
    assert whitelist.signer.signing_time == datetime(2026, 9, 17, 8, 27, 36, tzinfo=UTC)
    assert len(whitelist.signer.chain) == 3


def test_official_list_verifies_with_the_intermediate_as_anchor() -> None:
    intermediate = official_certificates()[1]
    assert verify_whitelist(SIGNED.read_bytes(), [intermediate], now=NOW).domains


def test_official_unsigned_list_is_refused() -> None:
    error = refused(UNSIGNED.read_bytes(), [official_root()], Reason.UNSIGNED, now=NOW)
    assert "pas signée" in error.message


def test_lookups_on_the_official_list() -> None:
    whitelist = verify_whitelist(SIGNED.read_bytes(), [official_root()], now=NOW)
    db175 = whitelist.by_db("DB175.test.mesimagesmedicales.fr.")
    assert db175 is not None and db175.name == "E-MEDIA"
    assert whitelist.by_db("db175.test.mesimagesmedicales.fr:443") is db175
    assert whitelist.by_vi("vi175.test.mesimagesmedicales.fr") is db175
    assert whitelist.by_identifier("175") is db175
    # The same name escaped and spaced otherwise; reversed or in another case it is another name.
    subject = ("CN=db175.test.mesimagesmedicales.fr, OU=300000001831981, O=MINISTERE DE TEST3198,"
               "ST=C\\C3\\B4te-d'Or (21),C=FR")  # fmt: skip
    assert whitelist.by_dn(subject) is db175
    assert whitelist.by_dn(db175.operator_dn.lower()) is None
    reversed_subject = ",".join(reversed(db175.operator_dn.split(",")))
    assert whitelist.by_dn(reversed_subject) is None
    assert whitelist.by_dn("CN=db175.test.mesimagesmedicales.fr,OU=300000001831981,C=FR") is None
    assert whitelist.by_db("db999.test.mesimagesmedicales.fr") is None
    assert whitelist.by_dn("not a DN") is None


# -- alterations of the official list ------------------------------------------------------------


@pytest.mark.parametrize("field", FIELDS)
def test_changing_any_domaine_text_is_refused(field: str) -> None:
    altered = change_field(SIGNED.read_bytes(), field, occurrence=4)
    refused(altered, [official_root()], Reason.ALTERED_CONTENT, now=NOW)


def test_changing_the_generation_date_is_refused() -> None:
    altered = change_field(SIGNED.read_bytes(), "DateDeGeneration")
    refused(altered, [official_root()], Reason.ALTERED_CONTENT, now=NOW)


@pytest.mark.parametrize("occurrence", [0, 5, -1])
def test_removing_a_domaine_is_refused(occurrence: int) -> None:
    altered = remove_domain(SIGNED.read_bytes(), occurrence)
    refused(altered, [official_root()], Reason.ALTERED_CONTENT, now=NOW)


def test_altered_signature_value_is_refused() -> None:
    altered = alter_signature_value(SIGNED.read_bytes())
    refused(altered, [official_root()], Reason.BAD_SIGNATURE_VALUE, now=NOW)


def test_altered_signing_time_is_refused() -> None:
    altered = change_field(SIGNED.read_bytes(), "xades:SigningTime")
    refused(altered, [official_root()], Reason.ALTERED_CONTENT, now=NOW)


def test_comment_cannot_truncate_a_value() -> None:
    # exc-c14n drops comments, so this still verifies: the value read must be the whole one.
    xml = SIGNED.read_bytes().replace(
        b"<DNCertificatOperateur>CN=db3.test.mesimagesmedicales.fr,",
        b"<DNCertificatOperateur>CN=db3.test.mesimagesmedicales.fr<!-- -->,",
    )
    whitelist = verify_whitelist(xml, [official_root()], now=NOW)
    assert whitelist.domains[0].operator_dn.endswith("ST=Paris (75),C=FR")


def test_a_second_signature_cannot_smuggle_a_domaine() -> None:
    # The XPath filter subtracts every ds:Signature: content hidden in one would be unsigned.
    smuggled = (b'<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><Domaine>'
                b"<Identifiant>666</Identifiant><db>evil.example.org</db>"
                b"<DNCertificatOperateur>CN=evil,C=FR</DNCertificatOperateur>"
                b"</Domaine></ds:Signature>")  # fmt: skip
    xml = SIGNED.read_bytes().replace(b"<Domaine>", smuggled + b"<Domaine>", 1)
    refused(xml, [official_root()], Reason.SIGNATURE_STRUCTURE, now=NOW)


def test_doctype_is_refused() -> None:
    xml = SIGNED.read_bytes().replace(
        b"<ListeBlancheDRIM-M ", b'<!DOCTYPE x [<!ENTITY e "db3">]><ListeBlancheDRIM-M ', 1
    )
    refused(xml, [official_root()], Reason.MALFORMED, now=NOW)


def test_oversized_list_is_refused() -> None:
    refused(SIGNED.read_bytes(), [official_root()], Reason.TOO_LARGE, now=NOW, max_bytes=1000)


def test_unexpected_signer_is_refused() -> None:
    refused(SIGNED.read_bytes(), [official_root()], Reason.UNEXPECTED_SIGNER, now=NOW,
            expected_signer=ExpectedSigner(common_name="Autre signataire"))  # fmt: skip


def test_official_list_refused_after_its_signer_expired() -> None:
    later = datetime(2029, 9, 15, tzinfo=UTC)
    refused(SIGNED.read_bytes(), [official_root()], Reason.SIGNER_EXPIRED, now=later)


# -- lists signed at test time -------------------------------------------------------------------


def test_list_signed_by_the_test_ans_verifies(ans: Ans) -> None:
    generated = datetime.now(UTC).replace(microsecond=0)
    domains = [domain(1), domain(2, vi=""), domain(3)]
    xml = ans.signed_list(domains, generated)
    whitelist = verify_whitelist(xml, [ans.root.root], expected_signer=ExpectedSigner.ans())
    assert whitelist.generated_at == generated
    assert whitelist.domains == tuple(domains)
    assert whitelist.by_vi("") is None
    assert whitelist.signer.chain[-1] == ans.root.root.subject.rfc4514_string()


def test_test_list_without_namespace_verifies(ans: Ans) -> None:
    xml = ans.sign(build_whitelist([domain(1)], datetime.now(UTC), namespace=None))
    assert verify_whitelist(xml, [ans.root.root]).domains[0].identifier == "1"


def test_list_signed_by_a_key_not_chained_to_the_anchors_is_refused(ans: Ans, foreign: Ans) -> None:
    xml = foreign.signed_list([domain(1)], datetime.now(UTC))
    error = refused(xml, [ans.root.root], Reason.UNTRUSTED_SIGNER)
    assert "autorités de confiance" in error.message


def test_list_signed_by_an_expired_signer_is_refused(ans: Ans, expired_signer: Issued) -> None:
    xml = ans.sign(build_whitelist([domain(1)], datetime.now(UTC)), signer=expired_signer)
    refused(xml, [ans.root.root], Reason.SIGNER_EXPIRED)


def test_sha1_is_refused_unless_allowed(ans: Ans) -> None:
    unsigned = build_whitelist([domain(1)], datetime.now(UTC))
    xml = ans.sign(unsigned, signature_method=RSA_SHA1)
    refused(xml, [ans.root.root], Reason.WEAK_ALGORITHM)
    assert verify_whitelist(xml, [ans.root.root], allow_sha1=True).domains


def test_list_dated_in_the_future_is_refused(ans: Ans) -> None:
    xml = ans.signed_list([domain(1)], datetime.now(UTC) + timedelta(days=30))
    refused(xml, [ans.root.root], Reason.INVALID_CONTENT)


def test_bad_dn_in_a_signed_list_is_refused(ans: Ans) -> None:
    xml = ans.signed_list([domain(1)], datetime.now(UTC))
    xml = ans.sign(re.sub(rb"<ds:Signature.*</ds:Signature>", b"", xml, flags=re.S)
                   .replace(b"CN=db1", b"XX=db1"))  # fmt: skip
    refused(xml, [ans.root.root], Reason.INVALID_CONTENT)


# -- drimbox whitelist verify --------------------------------------------------------------------


def test_verify_command_on_the_official_list_uses_embedded_anchors() -> None:
    code, text = verify_command(SIGNED, [], now=NOW)
    assert code == 0, text
    assert "VALIDE" in text and "Nombre de domaines : 17" in text
    assert "19/06/2026 18:06:52 UTC" in text
    assert "CN=Liste Blanche DRIM-M" in text and "14/09/2029" in text
    assert "aucune ancre de confiance fournie" in text
    assert embedded_anchors(SIGNED.read_bytes()) == [official_root()]


def test_verify_command_with_an_anchor(tmp_path: Path, ans: Ans) -> None:
    anchor = pem_file(tmp_path, "root", [official_root()])
    code, text = verify_command(SIGNED, [anchor], now=NOW)
    assert code == 0 and "aucune ancre" not in text
    wrong = pem_file(tmp_path, "test-root", [ans.root.root])
    code, text = verify_command(SIGNED, [wrong], now=NOW)
    assert code == 1 and "REFUSÉE" in text and "autorités de confiance" in text


def test_verify_command_refuses_the_unsigned_list() -> None:
    code, text = verify_command(UNSIGNED, [])
    assert code == 1
    assert "REFUSÉE" in text and "n'est pas signée" in text


def test_verify_command_on_a_missing_file(tmp_path: Path) -> None:
    code, text = verify_command(tmp_path / "absent.xml", [])
    assert code == 2 and "Impossible de lire" in text
