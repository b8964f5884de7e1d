"""The retention purge on a database that has never been purged.

Run: `uv run python bench/retention_purge.py [--reports 500] [--cda-kb 300] [--batch 100]
[--postgres]`. Fills a fresh database (SQLite, or a throw-away PostgreSQL with `--postgres`)
with `--reports` report versions received 400 days ago and replaced since — each with its HL7
message and a CDA of `--cda-kb` KiB (a report with its PDF is ~325 KB) and a KOS —, plus as many
published versions in force (kept), then runs the purge once. Prints the rows purged, the time,
the rows per second, the longest single batch (how long a node's other work may wait on the
purge's transaction) and, on SQLite, the file size before, after, and after `VACUUM` (SQLite
reuses freed pages but gives them back to the disk only on VACUUM).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from drimbox.config import RetentionConfig
from drimbox.db import Database, Hl7Message, Report, ReportState, utcnow
from drimbox.ops.retention import RetentionPurge
from support.postgres import TemporaryPostgres


def fill(db: Database, reports: int, cda_kb: int) -> None:
    cda = os.urandom(cda_kb * 1024)
    old = utcnow() - timedelta(days=400)
    for start in range(0, reports, 200):
        with db.session() as session:
            for n in range(start, min(reports, start + 200)):
                for state in (ReportState.REPLACED, ReportState.PUBLISHED):
                    message = Hl7Message(received_at=old, size_bytes=len(cda), raw=cda,
                                         ack_code="AA")  # fmt: skip
                    session.add(message)
                    session.flush()
                    session.add(Report(message_id=message.id, received_at=old, updated_at=old,
                                       kind="publish", state=state.value, cda=cda,
                                       kos=cda[:20_000], kos_sop_uid=f"1.2.3.{n}.{state.value}",
                                       version_key=f"{state.value}|{n}"))  # fmt: skip


def size_mb(db: Database) -> float:
    return Path(db.url.removeprefix("sqlite:///")).stat().st_size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=500)
    parser.add_argument("--cda-kb", type=int, default=300)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    server = TemporaryPostgres().start() if args.postgres else None
    folder = tempfile.mkdtemp(prefix="drimbox-bench-retention-")
    url = server.create_database("retention") if server else f"sqlite:///{folder}/node.db"
    db = Database(url)
    try:
        db.upgrade()
        fill(db, args.reports, args.cda_kb)
        before = size_mb(db) if db.is_sqlite else 0.0
        batches: list[float] = []
        last = [time.perf_counter()]

        def progress(kind: str, done: int) -> None:
            now = time.perf_counter()
            batches.append(now - last[0])
            last[0] = now

        purge = RetentionPurge(db, RetentionConfig(batch_rows=args.batch), progress)
        started = time.perf_counter()
        last[0] = started
        counts = purge.run()
        elapsed = time.perf_counter() - started
        rows = counts.hl7_messages + counts.reports
        kind = "PostgreSQL" if server else "SQLite"
        print(f"{kind}: {args.reports} replaced + {args.reports} published versions, "
              f"CDA {args.cda_kb} KiB, batches of {args.batch}")  # fmt: skip
        print(f"purged: {counts.hl7_messages} HL7 contents, {counts.reports} report versions "
              f"in {elapsed:.2f} s ({rows / elapsed:.0f} rows/s); longest batch "
              f"{max(batches) * 1000:.0f} ms")  # fmt: skip
        assert counts.reports == args.reports and counts.hl7_messages == 2 * args.reports
        if db.is_sqlite:
            after = size_mb(db)
            db.dispose()
            # Outside the node's engine: it opens every transaction itself (BEGIN IMMEDIATE).
            vacuum = sqlite3.connect(db.url.removeprefix("sqlite:///"), isolation_level=None)
            vacuum.execute("VACUUM")
            vacuum.close()
            print(f"SQLite file: {before:.1f} MB before, {after:.1f} MB after the purge, "
                  f"{size_mb(db):.1f} MB after VACUUM")  # fmt: skip
    finally:
        db.dispose()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
