"""`WhitelistStore`: refresh from HTTP or a file, replay refused, the last valid list stays."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drimbox.sim.whitelist import LocalWhitelistServer
from drimbox.trust.errors import Reason
from drimbox.trust.store import STATE_FILE, WhitelistStore
from support.trust import SIGNED, UNSIGNED, Ans, alter_signature_value, domain, official_root


def test_refresh_over_http_and_replay_refused(tmp_path: Path, ans: Ans) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    old = ans.signed_list([domain(1)], now - timedelta(days=2))
    new = ans.signed_list([domain(1), domain(2)], now - timedelta(days=1))
    with LocalWhitelistServer() as server:
        store = WhitelistStore(server.url, [ans.root.root], tmp_path / "state")
        assert store.current() is None and store.age() is None

        server.publish(old)
        assert store.refresh().status == "updated"
        server.publish(new)
        result = store.refresh()
        assert result.status == "updated" and result.whitelist is store.current()
        assert [d.identifier for d in store.current().domains] == ["1", "2"]  # type: ignore[union-attr]

        server.publish(new)
        assert store.refresh().status == "unchanged"

        server.publish(old)  # a replay of a genuine, validly signed, older list
        replay = store.refresh()
        assert replay.status == "refused" and replay.refusal is not None
        assert replay.refusal.reason is Reason.OLDER_THAN_CURRENT
        assert len(store.current().domains) == 2  # type: ignore[union-attr]
        assert (tmp_path / "state" / STATE_FILE).read_bytes() == new
        assert store.refusals[-1].reason is Reason.OLDER_THAN_CURRENT
        assert store.last_refresh is not None and store.last_success is not None
        age = store.age()
        assert age is not None and timedelta(days=1) <= age < timedelta(days=1, minutes=5)


def test_invalid_lists_leave_the_last_valid_one_in_force(tmp_path: Path, ans: Ans) -> None:
    good = ans.signed_list([domain(1)], datetime.now(UTC) - timedelta(hours=1))
    with LocalWhitelistServer() as server:
        store = WhitelistStore(server.url, [ans.root.root], tmp_path, max_bytes=100_000)
        server.publish(good)
        store.refresh()
        for body, status, reason in (
            (UNSIGNED.read_bytes(), 200, Reason.UNSIGNED),
            (alter_signature_value(good), 200, Reason.BAD_SIGNATURE_VALUE),
            (b"<html>maintenance</html>", 200, Reason.MALFORMED),
            (b"", 503, Reason.UNREACHABLE),
            (good * 50, 200, Reason.TOO_LARGE),
        ):
            server.publish(body, status=status)
            result = store.refresh()
            assert result.status == "refused", reason
            assert result.refusal is not None and result.refusal.reason is reason
            assert store.current() is not None and store.current().raw == good  # type: ignore[union-attr]
        assert [r.reason for r in store.refusals][-2:] == [Reason.UNREACHABLE, Reason.TOO_LARGE]
        assert all(r.message for r in store.refusals)


def test_unreachable_server_is_a_refusal_not_a_crash(tmp_path: Path, ans: Ans) -> None:
    store = WhitelistStore("http://127.0.0.1:9/liste.xml", [ans.root.root], tmp_path, timeout_s=2)
    result = store.refresh()
    assert result.status == "refused" and result.refusal is not None
    assert result.refusal.reason is Reason.UNREACHABLE


def test_file_source_and_restart(tmp_path: Path) -> None:
    store = WhitelistStore(SIGNED, [official_root()], tmp_path / "state")
    assert store.refresh().status == "updated"
    # A new process: the stored list is re-verified and in force before any refresh.
    restarted = WhitelistStore(tmp_path / "missing.xml", [official_root()], tmp_path / "state")
    current = restarted.current()
    assert current is not None and len(current.domains) == 17
    assert restarted.refresh().status == "refused"  # the source is missing…
    assert restarted.current() is current  # …and the stored list stays


def test_stored_list_is_reverified_at_start(tmp_path: Path, ans: Ans) -> None:
    WhitelistStore(SIGNED, [official_root()], tmp_path).refresh()
    # Anchors changed (e.g. moving from the TEST to the production IGC-Santé): not trusted anymore.
    store = WhitelistStore(SIGNED, [ans.root.root], tmp_path)
    assert store.current() is None
    assert store.refusals[0].reason is Reason.UNTRUSTED_SIGNER


def test_run_forever_refreshes_until_stopped(tmp_path: Path, ans: Ans) -> None:
    first = ans.signed_list([domain(1)], datetime.now(UTC) - timedelta(hours=2))
    second = ans.signed_list([domain(1), domain(2)], datetime.now(UTC) - timedelta(hours=1))

    async def scenario(server: LocalWhitelistServer) -> None:
        store = WhitelistStore(server.url, [ans.root.root], tmp_path)
        stop = asyncio.Event()
        task = asyncio.create_task(store.run_forever(stop, interval_s=0.05))
        for _ in range(200):
            await asyncio.sleep(0.02)
            if store.current() is not None:
                break
        server.publish(second)
        for _ in range(200):
            await asyncio.sleep(0.02)
            current = store.current()
            if current is not None and len(current.domains) == 2:
                break
        stop.set()
        await asyncio.wait_for(task, timeout=5)
        assert store.current() is not None and len(store.current().domains) == 2  # type: ignore[union-attr]

    with LocalWhitelistServer() as server:
        server.publish(first)
        asyncio.run(scenario(server))
