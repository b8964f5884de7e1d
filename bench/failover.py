"""Benchmark: failover of a Source site, two nodes on one PostgreSQL versus one node.

Run: `uv run python bench/failover.py [--reports 200] [--lease-s 30] [--restart-delay-s 5]`.
Real `drimbox serve` processes on one PostgreSQL database (tests/support/cluster.py), HAProxy in
front of their MLLP ports, Orthanc holding one small study per report, the DMP simulator over
mutual TLS. Four RIS connections send the reports through HAProxy (re-sending what is not ACKed,
as a RIS does). Scenarios, each on a fresh database and DMP:
- two nodes, no kill (baseline);
- two nodes, `kill -9` of node-a once half the reports are ACKed while it holds work: node-b
  takes node-a's work when its leases lapse (`[source] lease_s`);
- one node, no kill (baseline);
- one node, `kill -9` midway, restarted after `--restart-delay-s` (systemd's `RestartSec=5s`):
  it takes its own work back at start.
Printed per scenario: time to settle after the kill (kill → every report published), how long
the work the killed node held took, the checks that everything was published exactly once
(database rows, KOS registered in the DMP, ITI-41 calls) and that every node's /status and
/metrics agree once settled (the killed node restarted first), then the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from sqlalchemy import func, select

from drimbox.db import AuditEvent, Database, DmpJob, Hl7Message, Report, ReportState
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.web.metrics_app import WAITING_JOBS
from support.cluster import Cluster, RisSenders, count, source_environ, store_exams, wait_until
from support.dmp import local_dmp
from support.postgres import TemporaryPostgres
from support.samples import exam_variant, hl7_text

PUBLISHED = (ReportState.PUBLISHED.value, ReportState.REPLACED.value)
ENDED = (*PUBLISHED, ReportState.REFUSED.value, ReportState.PARKED.value)
VICTIM = "node-a"


@dataclass
class Scenario:
    name: str
    nodes: list[str]
    kill: bool
    restart_delay_s: float | None = None  # None: the killed node stays down until settled


@dataclass
class Outcome:
    scenario: Scenario
    total_s: float = 0.0  # first message sent → every report published
    settle_s: float | None = None  # kill → every report published
    held_at_kill: int = 0  # reports whose work (the report or its DMP job) it had leased
    held_done_s: float | None = None  # kill → the last of those published
    published_by: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def held_by(db: Database, node: str) -> set[int]:
    """The reports whose work `node` holds: the report itself or its DMP job."""
    with db.session() as session:
        reports = session.scalars(
            select(Report.id).where(Report.leased_by == node, Report.state.not_in(ENDED))
        )
        jobs = session.scalars(
            select(DmpJob.report_id).where(DmpJob.leased_by == node, DmpJob.state.in_(WAITING_JOBS))
        )
        return set(reports) | set(jobs)


def run(
    scenario: Scenario,
    work: Path,
    pacs: LocalOrthanc,
    postgres: TemporaryPostgres,
    exams: list[str],
    lease_s: float,
) -> Outcome:
    outcome = Outcome(scenario)
    total = len(exams)
    folder = work / scenario.name
    with local_dmp(folder / "dmp") as dmp:
        url = postgres.create_database(scenario.name.replace("-", "_"))
        environ = source_environ(folder, url, pacs, dmp) | {"DRIMBOX_SOURCE__LEASE_S": str(lease_s)}
        db = Database(url)
        cluster = Cluster(folder / "site", environ, scenario.nodes).start()
        try:
            balancer = cluster.start_balancer()
            started = time.monotonic()
            senders = RisSenders(balancer, exams, max_attempts=400).start()
            killed_at = killed_wall = None
            held: set[int] = set()
            if scenario.kill:
                wait_until(lambda: len(senders.acked) >= total // 2, 600, "half the reports ACKed")
                wait_until(lambda: held_by(db, VICTIM), 120, f"{VICTIM} holds work")
                held = held_by(db, VICTIM)
                cluster.nodes[VICTIM].kill()
                killed_at, killed_wall = time.monotonic(), datetime.now(UTC)
                if scenario.restart_delay_s is not None:
                    time.sleep(scenario.restart_delay_s)
                    cluster.nodes[VICTIM].start()
            senders.join(900)
            published = select(func.count()).where(Report.state.in_(PUBLISHED))
            wait_until(lambda: count(db, published) >= total, 900, "every report published")
            settled = time.monotonic()
            outcome.total_s = settled - started
            if killed_at is not None and killed_wall is not None:
                outcome.settle_s = settled - killed_at
                outcome.held_at_kill = len(held)
                with db.session() as session:
                    last = session.scalar(
                        select(func.max(Report.published_at)).where(Report.id.in_(held))
                    )
                outcome.held_done_s = (last - killed_wall).total_seconds() if last else None
                if scenario.restart_delay_s is None:
                    cluster.nodes[VICTIM].start()  # back, so both nodes can be compared
            check_once(outcome, db, dmp.documents(), dmp.stats(), total, senders)
            check_coherent(outcome, cluster, total)
        finally:
            cluster.stop()
            db.dispose()
    return outcome


def check_once(
    outcome: Outcome,
    db: Database,
    documents: list[dict[str, object]],
    stats: dict[str, object],
    total: int,
    senders: RisSenders,
) -> None:
    problems = outcome.problems
    with db.session() as session:
        reports = list(session.scalars(select(Report)))
        messages = set(session.scalars(select(Hl7Message.control_id)))
        for node, done in session.execute(
            select(AuditEvent.node, func.count())
            .where(AuditEvent.action == "dmp_publish")
            .group_by(AuditEvent.node)
        ):
            outcome.published_by[node] = done
    if senders.unanswered:
        problems.append(f"{len(senders.unanswered)} messages never ACKed")
    if not set(senders.acked) <= messages:
        problems.append("an ACKed message is missing from the database")
    if len(reports) != total or any(r.state not in PUBLISHED for r in reports):
        problems.append(f"{len(reports)} report rows for {total}, not all published")
    kos = sorted(str(d["unique_id"]) for d in documents if d["mime_type"] == "application/dicom")
    if kos != sorted(str(r.kos_sop_uid) for r in reports):
        problems.append(f"{len(kos)} KOS registered in the DMP for {total} reports")
    if stats.get("ITI-41:Success", 0) != total:
        problems.append(f"{stats.get('ITI-41:Success')} ITI-41 registrations for {total}")
    if sum(outcome.published_by.values()) != total:
        problems.append(f"{sum(outcome.published_by.values())} dmp_publish audit events")


def check_coherent(outcome: Outcome, cluster: Cluster, total: int) -> None:
    """Once settled, every node tells the same about the site: nothing waiting or leased,
    `total` reports published and jobs done, each under its own name."""
    for name in cluster.nodes:
        status = cluster.status(name)
        work = status["checks"]["work"]
        samples = cluster.metrics(name)
        found = {
            "node": status["node"],
            "work ok": work["ok"],
            "leased": work["leased_by"],
            "waiting": work["reports"]["waiting"] + work["jobs"]["waiting"],
            "published": samples.value("drimbox_reports", node=name, state="published"),
            "jobs done": samples.value("drimbox_outbox_jobs", node=name, state="done"),
            "items": sum(
                samples.value("drimbox_work_items", node=name, queue=queue, status=state)
                for queue in ("reports", "jobs")
                for state in ("waiting", "leased", "lapsed")
            ),
        }
        expected = {
            "node": name,
            "work ok": True,
            "leased": {},
            "waiting": 0,
            "published": total,
            "jobs done": total,
            "items": 0,
        }
        if found != expected:
            outcome.problems.append(f"{name}: /status or /metrics {found} != {expected}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=200)
    parser.add_argument("--lease-s", type=float, default=30.0, help="[source] lease_s")
    parser.add_argument("--restart-delay-s", type=float, default=5.0, help="RestartSec")
    parser.add_argument("--only", nargs="*", help="scenarios to run (all by default)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (node logs)")
    args = parser.parse_args()
    scenarios = [
        Scenario("two-nodes", ["node-a", "node-b"], kill=False),
        Scenario("two-nodes-kill", ["node-a", "node-b"], kill=True),
        Scenario("one-node", [VICTIM], kill=False),
        Scenario("one-node-kill", [VICTIM], kill=True, restart_delay_s=args.restart_delay_s),
    ]
    scenarios = [s for s in scenarios if not args.only or s.name in args.only]
    work = Path(tempfile.mkdtemp(prefix="drimbox-bench-failover-"))
    exams = [exam_variant(hl7_text("CR_C-ORU.hl7"), index) for index in range(args.reports)]
    postgres = TemporaryPostgres().start()
    outcomes = []
    try:
        with LocalOrthanc() as pacs:
            store_exams(pacs, work / "studies", exams)
            print(f"{args.reports} reports, [source] lease_s = {args.lease_s:g} s", flush=True)
            for scenario in scenarios:
                outcome = run(scenario, work, pacs, postgres, exams, args.lease_s)
                outcomes.append(outcome)
                print(f"  {scenario.name}: {describe(outcome)}", flush=True)
    finally:
        postgres.stop()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| scenario | all published | settled after the kill | killed node's work | "
          "published once, /status and /metrics coherent |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    for outcome in outcomes:
        held = (
            f"{outcome.held_at_kill} items, published {outcome.held_done_s:.1f} s after"
            if outcome.held_done_s is not None
            else "—"
        )
        settle = f"{outcome.settle_s:.1f} s" if outcome.settle_s is not None else "—"
        checks = "yes" if not outcome.problems else "; ".join(outcome.problems)
        print(f"| {outcome.scenario.name} | {outcome.total_s:.1f} s | {settle} | {held} | "
              f"{checks} |")  # fmt: skip
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"\nload average at the end: {load} ({os.cpu_count()} cores)")
    if any(outcome.problems for outcome in outcomes):
        sys.exit(1)


def describe(outcome: Outcome) -> str:
    by_node = ", ".join(f"{node} {done}" for node, done in sorted(outcome.published_by.items()))
    text = f"all published in {outcome.total_s:.1f} s (published by {by_node})"
    if outcome.settle_s is not None:
        text += f"; settled {outcome.settle_s:.1f} s after the kill"
    if outcome.held_done_s is not None:
        text += f"; its {outcome.held_at_kill} held items: {outcome.held_done_s:.1f} s"
    return text + ("" if not outcome.problems else f"; PROBLEMS: {outcome.problems}")


if __name__ == "__main__":
    main()
