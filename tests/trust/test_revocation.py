"""Revocation over real sockets: CRLs served by a local HTTP server, found through the CRL
distribution point of the certificates or configured, verified, cached on disk; a revoked peer
or whitelist signer refused, a stale or unreachable CRL reported."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drimbox.sim.pki import Issued, TestPki
from drimbox.sim.whitelist import LocalWhitelistServer, build_whitelist, issue_ans_signer
from drimbox.sim.whitelist import sign_whitelist as sign
from drimbox.trust.errors import Reason
from drimbox.trust.revocation import RevocationStore
from drimbox.trust.store import WhitelistStore
from drimbox.trust.tls import PeerCheck, PeerRefused
from support.trust import domain


def peer(pki: TestPki, n: int) -> Issued:
    return pki.issue(f"db{n}.test.fr", usage="auth", organizational_unit=f"30000000183{n:04d}",
                     organization=f"SITE {n}", state="Paris (75)")  # fmt: skip


def test_revoked_peer_refused_and_crl_cached(tmp_path: Path) -> None:
    with LocalWhitelistServer() as server:
        pki = TestPki(crl_url=server.url_for("ac.crl"))
        revoked, other = peer(pki, 1), peer(pki, 2)
        pki.revoke(revoked.certificate)
        server.publish(pki.crl_der())
        store = RevocationStore([pki.root], tmp_path)
        assert store.sources == []  # a root has no distribution point
        store.note(revoked.certificate)  # a peer met: its CRL is followed from now on
        assert [s.location for s in store.sources] == [server.url_for("ac.crl")]
        assert store.revoked(revoked.certificate) is None  # nothing downloaded yet
        assert "indisponible" in store.problems()[0]
        store.refresh()
        assert server.requests == 1 and store.problems() == []
        entry = store.revoked(revoked.certificate)
        assert entry is not None and "révoqué le" in entry.message
        assert store.revoked(other.certificate) is None and store.covers(other.certificate)

        signer = issue_ans_signer(pki)
        listed = [domain(n, db=f"db{n}.test.fr", operator_dn=c.subject)
                  for n, c in ((1, revoked), (2, other))]  # fmt: skip
        whitelist_xml = sign(build_whitelist(listed, datetime.now(UTC)), signer, pki.chain)
        wl_store = WhitelistStore(tmp_path / "wl.xml", [pki.root], tmp_path / "wl")
        (tmp_path / "wl.xml").write_bytes(whitelist_xml)
        whitelist = wl_store.refresh().whitelist
        assert whitelist is not None
        check = PeerCheck(whitelist, store)
        assert check.check_incoming(other.certificate).identifier == "2"
        with pytest.raises(PeerRefused, match="révoqué"):
            check.check_incoming(revoked.certificate)
        assert PeerCheck(whitelist).check_incoming(revoked.certificate).identifier == "1"

    # The server is gone: a new process still knows the revoked certificate (disk cache), and
    # the failed download is a warning.
    restarted = RevocationStore([pki.root], tmp_path, sources=[server.url_for("ac.crl")])
    assert restarted.revoked(revoked.certificate) is not None
    restarted.refresh()
    assert restarted.revoked(revoked.certificate) is not None
    assert "en échec" in restarted.problems()[0]


def test_forged_older_and_stale_crls(tmp_path: Path) -> None:
    pki, impostor = TestPki(), TestPki()
    victim = peer(pki, 3)
    crl_file = tmp_path / "ac.crl"
    store = RevocationStore([pki.root], tmp_path / "state", sources=[str(crl_file)],
                            follow_distribution_points=False)  # fmt: skip
    store.note(victim.certificate)  # not followed: only the configured file
    assert len(store.sources) == 1
    held_at = datetime.now(UTC) - timedelta(minutes=10)
    crl_file.write_bytes(pki.crl_der(last_update=held_at))
    store.refresh()
    assert store.problems() == []
    # Signed by another CA with the same name: refused, the held CRL kept.
    pki.revoke(victim.certificate)
    crl_file.write_bytes(pki.crl_der(signer=impostor.ca))
    store.refresh()
    assert store.revoked(victim.certificate) is None
    assert "autorité inconnue" in store.problems()[0]
    # Older than the one held (a replay): refused.
    crl_file.write_bytes(pki.crl_der(last_update=held_at - timedelta(days=1)))
    store.refresh()
    assert store.revoked(victim.certificate) is None and "rejeu" in store.problems()[0]
    # Past its nextUpdate: still used (the victim is refused), reported as stale.
    now = datetime.now(UTC)
    crl_file.write_bytes(
        pki.crl_der(last_update=now - timedelta(minutes=3), next_update=now - timedelta(minutes=1))
    )
    store.refresh()
    assert store.revoked(victim.certificate) is not None
    assert "périmée" in store.problems()[0]
    crl_file.write_bytes(b"not a CRL")
    store.refresh()
    assert "pas une liste de révocation" in store.problems()[0]


def test_whitelist_signed_by_a_revoked_signer_is_refused(tmp_path: Path) -> None:
    with LocalWhitelistServer() as lists, LocalWhitelistServer() as crls:
        pki = TestPki(crl_url=crls.url_for("ac.crl"))
        good, compromised = issue_ans_signer(pki), issue_ans_signer(pki)
        pki.revoke(compromised.certificate)
        crls.publish(pki.crl_der())
        revocation = RevocationStore([pki.root], tmp_path)
        revocation.note(good.certificate)
        revocation.refresh()
        store = WhitelistStore(lists.url, [pki.root], tmp_path / "wl", revocation=revocation)
        now = datetime.now(UTC)
        first = sign(build_whitelist([domain(1)], now - timedelta(hours=2)), good, pki.chain)
        lists.publish(first)
        assert store.refresh().status == "updated"
        newer = sign(build_whitelist([domain(1), domain(2)], now), compromised, pki.chain)
        lists.publish(newer)
        result = store.refresh()
        assert result.status == "refused" and result.refusal is not None
        assert result.refusal.reason is Reason.SIGNER_REVOKED
        assert "révoqué" in result.refusal.message
        assert store.current() is not None and store.current().raw == first  # type: ignore[union-attr]
        # Without revocation checking the same list would have been taken.
        unchecked = WhitelistStore(lists.url, [pki.root], tmp_path / "other")
        assert unchecked.refresh().status == "updated"


def test_whitelist_signed_under_a_revoked_intermediate_ca_is_refused(tmp_path: Path) -> None:
    with LocalWhitelistServer() as crls:
        root = TestPki("TEST AC RACINE IGC-SANTE ELEMENTAIRE", crl_url=crls.url_for("root.crl"))
        intermediate = root.intermediate("TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS")
        signer = issue_ans_signer(intermediate)
        root.revoke(intermediate.ca.certificate)
        crls.publish(root.crl_der())
        revocation = RevocationStore([root.root], tmp_path)
        revocation.note(intermediate.ca.certificate)  # its distribution point: the root's CRL
        revocation.refresh()
        listed = sign(build_whitelist([domain(1)], datetime.now(UTC)), signer, intermediate.chain)
        (tmp_path / "wl.xml").write_bytes(listed)
        store = WhitelistStore(tmp_path / "wl.xml", [root.root], tmp_path / "wl",
                               revocation=revocation)  # fmt: skip
        result = store.refresh()
        assert result.status == "refused" and result.refusal is not None
        assert result.refusal.reason is Reason.SIGNER_REVOKED
        assert "ORGANISATIONS" in result.refusal.detail and store.current() is None
