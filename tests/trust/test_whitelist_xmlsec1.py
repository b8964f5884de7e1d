"""The Debian `xmlsec1` CLI, run from the outside, agrees with `verify_whitelist` on each case.

xmlsec1 checks the signature and the signer's chain to `--trusted-pem` at the current time (no
`--insecure`), with the same reference restrictions as ours. Cases where our policy is stricter on
purpose (SHA-1, expected signer CN/OU, replay) are not xmlsec1's business and are left out.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from drimbox.sim.pki import Issued
from drimbox.sim.whitelist import build_whitelist
from drimbox.trust.errors import WhitelistError
from drimbox.trust.whitelist import verify_whitelist
from support.trust import (
    NOW,
    SIGNED,
    UNSIGNED,
    Ans,
    alter_signature_value,
    change_field,
    domain,
    official_root,
    pem_file,
    remove_domain,
)

Case = Callable[[Ans, Ans, Issued], tuple[bytes, x509.Certificate]]


def _test_list(ans: Ans) -> bytes:
    return ans.signed_list([domain(1), domain(2)], datetime.now(UTC))


CASES: dict[str, Case] = {
    "official": lambda a, f, e: (SIGNED.read_bytes(), official_root()),
    "official-unsigned": lambda a, f, e: (UNSIGNED.read_bytes(), official_root()),
    "official-domaine-text-changed": lambda a, f, e: (
        change_field(SIGNED.read_bytes(), "Denomination", 3), official_root()),
    "official-dn-changed": lambda a, f, e: (
        change_field(SIGNED.read_bytes(), "DNCertificatOperateur", 0), official_root()),
    "official-domaine-removed": lambda a, f, e: (
        remove_domain(SIGNED.read_bytes(), 2), official_root()),
    "official-signature-value-altered": lambda a, f, e: (
        alter_signature_value(SIGNED.read_bytes()), official_root()),
    "official-wrong-anchor": lambda a, f, e: (SIGNED.read_bytes(), a.root.root),
    "test-ans": lambda a, f, e: (_test_list(a), a.root.root),
    "test-ans-db-changed": lambda a, f, e: (change_field(_test_list(a), "db", 1), a.root.root),
    "foreign-signer": lambda a, f, e: (_test_list(f), a.root.root),
    "expired-signer": lambda a, f, e: (
        a.sign(build_whitelist([domain(1)], datetime.now(UTC)), signer=e), a.root.root),
}  # fmt: skip


def xmlsec1_accepts(xml: Path, anchor: Path, at: datetime) -> bool:
    command = ["xmlsec1", "--verify", "--trusted-pem", str(anchor),
               "--verification-gmt-time", f"{at:%Y-%m-%d %H:%M:%S}",
               "--id-attr:Id", "SignedProperties",
               "--enabled-reference-uris", "empty,same-doc", str(xml)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, timeout=60, check=False)
    return result.returncode == 0


def we_accept(xml: bytes, anchor: x509.Certificate, at: datetime) -> bool:
    try:
        verify_whitelist(xml, [anchor], now=at)
    except WhitelistError:
        return False
    return True


@pytest.mark.parametrize("name", list(CASES))
def test_xmlsec1_agrees(
    name: str, tmp_path: Path, ans: Ans, foreign: Ans, expired_signer: Issued
) -> None:
    xml, anchor = CASES[name](ans, foreign, expired_signer)
    path = tmp_path / "list.xml"
    path.write_bytes(xml)
    # Both at one fixed time for the official files (their signer expires in 2029); the lists
    # made here have certificates made now, so "now" is their fixed point.
    at = NOW if name.startswith("official") else datetime.now(UTC)
    ours = we_accept(xml, anchor, at)
    theirs = xmlsec1_accepts(path, pem_file(tmp_path, "anchor", [anchor]), at)
    assert ours == theirs, f"{name}: verify_whitelist={ours}, xmlsec1={theirs}"
    assert ours == (name in ("official", "test-ans"))
