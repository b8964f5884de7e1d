"""Leased claims: how workers take a due row without ever taking the same one twice.

One `UPDATE … WHERE id = (SELECT … LIMIT 1 [FOR UPDATE SKIP LOCKED]) RETURNING id`: atomic on
SQLite (the write lock is taken by the statement) and on PostgreSQL (SKIP LOCKED lets several
nodes share the queue). The claim writes the node's name in `leased_by` and pushes
`next_attempt_at` one lease ahead. A heartbeat renews the lease every third of it while the work
runs, so a slow PACS or DMP call keeps its row, and a node that dies only delays its rows by one
lease. A node that restarts takes its own rows back at once (`reclaim`): a node's name is unique
among the nodes sharing the database, so whatever it held was held by its dead predecessor.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Iterable
from datetime import timedelta
from types import TracebackType
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from drimbox.db.engine import Database, utcnow

log = logging.getLogger(__name__)


def claim_due(
    db: Database,
    model: Any,
    states: Iterable[str],
    lease: timedelta,
    owner: str,
    *,
    column: str = "next_attempt_at",
    count_attempts: bool = True,
) -> int | None:
    """Lease to `owner` the oldest row of `model` whose state is in `states` and that is due
    (`column` passed; an empty `next_attempt_at` means due now, any other empty column never);
    its id."""
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
    values: dict[str, Any] = {column: now + lease, "leased_by": owner}
    if count_attempts:
        values["attempts"] = model.attempts + 1
    claim = (
        update(model).where(model.id == due.scalar_subquery()).values(**values).returning(model.id)
    )
    with db.session() as session:
        claimed: int | None = session.scalar(claim)
        return claimed


def reclaim(db: Database, model: Any, owner: str) -> int:
    """Make every row `owner` holds due again (a restarted node's predecessor died holding them);
    how many."""
    held = update(model).where(model.leased_by == owner)
    return _rows_changed(db, held.values(next_attempt_at=utcnow(), leased_by=None))


def _rows_changed(db: Database, statement: Any) -> int:
    with db.session() as session:
        return int(getattr(session.execute(statement), "rowcount", 0))


class Heartbeat:
    """Renews a row's lease from a thread while the `with` block does its work."""

    def __init__(
        self,
        db: Database,
        model: Any,
        row_id: int,
        owner: str,
        lease: timedelta,
        column: str = "next_attempt_at",
    ) -> None:
        self.db, self.model, self.row_id, self.owner, self.lease = db, model, row_id, owner, lease
        self.column = column
        self.lost = False
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"lease {model.__tablename__} {row_id}", daemon=True
        )

    def _run(self) -> None:
        interval = self.lease.total_seconds() / 3
        while not self._done.wait(interval):
            try:
                held = self.renew()
            except SQLAlchemyError:
                # The database is away: try again at the next beat, the lease may still hold.
                log.warning("lease of %s %s not renewed", self.model.__tablename__, self.row_id)
                continue
            if not held:
                self.lost = True
                log.warning(
                    "lease of %s %s taken over by another node",
                    self.model.__tablename__,
                    self.row_id,
                )
                return

    def renew(self) -> bool:
        """Push the lease one lease ahead; False if the row is no longer held by this node."""
        held = update(self.model).where(
            self.model.id == self.row_id, self.model.leased_by == self.owner
        )
        return bool(_rows_changed(self.db, held.values({self.column: utcnow() + self.lease})))

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()


def backoff(attempts: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff: initial, 2×, 4×… capped."""
    return float(min(max_s, initial_s * 2 ** max(0, attempts - 1)))


async def run_worker(
    run_once: Callable[[], object | None],
    stop: asyncio.Event,
    poll_s: float,
    name: str,
    wake: asyncio.Event | None = None,
) -> None:
    """Call `run_once` (in a thread) until `stop`; wait `poll_s` whenever it finds nothing to do,
    or less when `wake` is set (new work from this node: no polling delay).

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
            waits = [asyncio.ensure_future(stop.wait())]
            if wake is not None:
                waits.append(asyncio.ensure_future(wake.wait()))
            _, idle = await asyncio.wait(waits, timeout=poll_s, return_when=FIRST_COMPLETED)
            for waiting in idle:
                waiting.cancel()
            if wake is not None:
                wake.clear()


class LeasedWorker:
    """A worker over leased rows of `model` in `due_states`: `claim_next` leases one, `process`
    does it under a heartbeat. Subclasses say what `process` does and set `db`, `owner` (the node's
    name) and `lease`; this class runs them one at a time, in a thread, until the node stops."""

    name = "worker"
    poll_s = 1.0
    model: Any
    due_states: tuple[str, ...]
    # The column that says when a row is due and holds its lease; whether a claim is an attempt.
    lease_column = "next_attempt_at"
    count_attempts = True
    db: Database
    owner: str
    lease: timedelta

    def claim_next(self) -> int | None:
        """Take the oldest due row and lease it; None when nothing is due."""
        return claim_due(
            self.db,
            self.model,
            self.due_states,
            self.lease,
            self.owner,
            column=self.lease_column,
            count_attempts=self.count_attempts,
        )

    def process(self, item_id: int) -> object:
        raise NotImplementedError

    def taken_over(self, item_id: int, leased_by: str | None, state: str) -> bool:
        """Whether a row this worker processed was taken over meanwhile (its lease lapsed while
        the node was stalled): its outcome is then not written over the other node's."""
        if leased_by in (None, self.owner) and state in self.due_states:
            return False
        log.warning("%s %s: taken over by %s, outcome dropped", self.name, item_id, leased_by)
        return True

    def run_once(self) -> object | None:
        item_id = self.claim_next()
        if item_id is None:
            return None
        with Heartbeat(self.db, self.model, item_id, self.owner, self.lease, self.lease_column):
            return self.process(item_id)

    def drain(self) -> int:
        """Process everything due now (tests, CLI); how many items were handled."""
        handled = 0
        while self.run_once() is not None:
            handled += 1
        return handled

    async def run_forever(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        await run_worker(self.run_once, stop, self.poll_s, self.name, self._wake)

    def wake(self) -> None:
        """Look for due work now rather than at the next poll (from any thread): this node has
        just stored some. Other nodes still find it by polling."""
        loop, event = getattr(self, "_loop", None), getattr(self, "_wake", None)
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)
