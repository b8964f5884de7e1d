"""Leased claims: how workers take a due row without ever taking the same one twice.

One `UPDATE … WHERE id = (SELECT … LIMIT 1 [FOR UPDATE SKIP LOCKED]) RETURNING id`: atomic on
SQLite (the write lock is taken by the statement) and on PostgreSQL (SKIP LOCKED lets several
nodes share the queue). The lease pushes `next_attempt_at` ahead, so that a worker that dies
mid-job only delays the row until the lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update

from drimbox.db.engine import Database, utcnow

log = logging.getLogger(__name__)


def claim_due(
    db: Database,
    model: Any,
    states: Iterable[str],
    lease: timedelta,
    *,
    column: str = "next_attempt_at",
    count_attempts: bool = True,
) -> int | None:
    """Lease the oldest row of `model` whose state is in `states` and that is due (`column`
    passed; an empty `next_attempt_at` means due now, any other empty column never); its id."""
    now = utcnow()
    due_at = getattr(model, column)
    is_due = due_at <= now
    if column == "next_attempt_at":
        is_due = or_(due_at.is_(None), is_due)
    due = (
        select(model.id)
        .where(model.state.in_(list(states)))
        .where(is_due)
        .order_by(model.id)
        .limit(1)
    )
    if not db.is_sqlite:
        due = due.with_for_update(skip_locked=True)
    values: dict[str, Any] = {column: now + lease}
    if count_attempts:
        values["attempts"] = model.attempts + 1
    claim = (
        update(model).where(model.id == due.scalar_subquery()).values(**values).returning(model.id)
    )
    with db.session() as session:
        claimed: int | None = session.scalar(claim)
        return claimed


def backoff(attempts: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff: initial, 2×, 4×… capped."""
    return float(min(max_s, initial_s * 2 ** max(0, attempts - 1)))


async def run_worker(
    run_once: Callable[[], object | None], stop: asyncio.Event, poll_s: float, name: str
) -> None:
    """Call `run_once` (in a thread) until `stop`; wait `poll_s` whenever it finds nothing to do.

    A bug on one item is logged and does not stop the worker: the item's lease expires and it is
    tried again later.
    """
    while not stop.is_set():
        try:
            result = await asyncio.to_thread(run_once)
        except Exception:
            log.exception("%s failure", name)
            result = None
        if result is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_s)


class LeasedWorker:
    """A worker over leased rows: `claim_next` leases one, `process` does it. Subclasses say how;
    this class runs them one at a time, in a thread, until the node stops."""

    name = "worker"
    poll_s = 1.0

    def claim_next(self) -> int | None:
        raise NotImplementedError

    def process(self, item_id: int) -> object:
        raise NotImplementedError

    def run_once(self) -> object | None:
        item_id = self.claim_next()
        return None if item_id is None else self.process(item_id)

    def drain(self) -> int:
        """Process everything due now (tests, CLI); how many items were handled."""
        handled = 0
        while self.run_once() is not None:
            handled += 1
        return handled

    async def run_forever(self, stop: asyncio.Event) -> None:
        await run_worker(self.run_once, stop, self.poll_s, self.name)
