"""Usage statistics for the ANS indicators (Ségur KPI): the contextual launches as rows of the ANS
statistics model ("ModelStat": `Nombre_Appel` = 1, `Statut_Appel` = `succes` / `erreur`) and the
monthly usage figures a site is asked for.

Owns the launch rows (`launch_stats`, the only fact not recorded elsewhere) and how the figures
are counted; the other figures are read from the audit trail, which already holds every
publication, withdrawal, image retrieval and export with its result. Months and dates are in
Paris time, as every date the box shows.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Final, TextIO

from sqlalchemy import or_, select

from drimbox.db import AuditEvent, Database, utcnow
from drimbox.db.models import LaunchStat
from drimbox.french import PARIS, paris_time

SUCCESS, ERROR = "succes", "erreur"  # the ModelStat values of `Statut_Appel`
MODELSTAT_COLUMNS: Final = (
    "Date_Appel",
    "Heure_Appel",
    "Noeud",
    "Nombre_Appel",
    "Statut_Appel",
    "Motif_Erreur",
)
# Audit actions counted, with a successful result only. Retrievals served: images (study,
# series, instance) sent to a peer, not its metadata or thumbnails.
_PUBLISHED, _WITHDRAWN, _MADE = "dmp_publish", "dmp_delete", "wado_rs_retrieve"
_SERVED: Final = frozenset({"image_retrieve_study", "image_retrieve_series",
                            "image_retrieve_instance"})  # fmt: skip
_EXPORTS: Final = frozenset({"export_pacs", "xdm_export"})
MAX_REASON: Final = 1000


def record_launch(db: Database, *, ok: bool, reason: str = "") -> None:
    """One launch, as the Conso answered it (`reason`: why it was refused)."""
    with db.session() as session:
        session.add(LaunchStat(at=utcnow(), node=db.node, ok=ok, reason=reason[:MAX_REASON]))


def day_range(first: date, last: date) -> tuple[datetime, datetime]:
    """[first 00:00, the day after last 00:00) in Paris time: both days included. In UTC, as
    stored: SQLite keeps a datetime's digits and drops its zone."""
    start = datetime.combine(first, time(), tzinfo=PARIS)
    end = datetime.combine(last + timedelta(days=1), time(), tzinfo=PARIS)
    return start.astimezone(UTC), end.astimezone(UTC)


def months_back(today: date, months: int) -> date:
    """The first day of the month `months - 1` months before today's: `months` whole months."""
    index = today.year * 12 + today.month - 1 - (months - 1)
    return date(index // 12, index % 12 + 1, 1)


def launch_rows(db: Database, start: datetime, end: datetime) -> list[list[str]]:
    """The ModelStat rows of the launches in [start, end), oldest first."""
    query = (
        select(LaunchStat)
        .where(LaunchStat.at >= start, LaunchStat.at < end)
        .order_by(LaunchStat.at, LaunchStat.id)
    )
    with db.session() as session:
        rows = []
        for launch in session.scalars(query):
            local = paris_time(launch.at)
            rows.append([local.strftime("%d/%m/%Y"), local.strftime("%H:%M:%S"), launch.node,
                         "1", SUCCESS if launch.ok else ERROR, launch.reason])  # fmt: skip
    return rows


@dataclass
class MonthFigures:
    """One month's usage figures (Paris time), in the order of the CSV and console columns."""

    month: str  # AAAA-MM
    launches_ok: int = 0
    launches_refused: int = 0
    kos_published: int = 0
    kos_withdrawn: int = 0
    retrievals_served: int = 0
    retrievals_made: int = 0
    exports: int = 0

    def counts(self) -> list[int]:
        return [getattr(self, f.name) for f in fields(self) if f.name != "month"]

    def values(self) -> list[str | int]:
        return [self.month, *self.counts()]


MONTH_COLUMNS: Final = (
    "Mois",
    "Lancements_Succes",
    "Lancements_Erreur",
    "KOS_Publies",
    "KOS_Retires",
    "Recuperations_Servies",
    "Recuperations_Effectuees",
    "Exports",
)


def monthly(db: Database, start: datetime, end: datetime) -> list[MonthFigures]:
    """The figures of each month that has any in [start, end), oldest first."""
    months: dict[str, MonthFigures] = {}

    def month_of(at: datetime) -> MonthFigures:
        key = paris_time(at).strftime("%Y-%m")
        return months.setdefault(key, MonthFigures(key))

    counted = (_PUBLISHED, _WITHDRAWN, _MADE, *_SERVED, *_EXPORTS)
    with db.session() as session:
        for at, ok in session.execute(
            select(LaunchStat.at, LaunchStat.ok).where(LaunchStat.at >= start, LaunchStat.at < end)
        ):
            figures = month_of(at)
            if ok:
                figures.launches_ok += 1
            else:
                figures.launches_refused += 1
        events = select(AuditEvent.at, AuditEvent.action, AuditEvent.actor_role).where(
            AuditEvent.at >= start,
            AuditEvent.at < end,
            AuditEvent.result == "ok",
            or_(*(AuditEvent.action == action for action in counted)),
        )
        for at, action, role in session.execute(events):
            figures = month_of(at)
            if action == _PUBLISHED:
                figures.kos_published += 1
            elif action == _WITHDRAWN:
                figures.kos_withdrawn += 1
            elif action == _MADE:
                figures.retrievals_made += 1
            elif action in _EXPORTS:
                figures.exports += 1
            elif role == "peer":
                figures.retrievals_served += 1
    return [months[key] for key in sorted(months)]


def write_csv(handle: TextIO, header: Iterable[str], rows: Iterable[Iterable[object]]) -> int:
    """Semicolon-separated (as French spreadsheets read it); returns the rows written."""
    writer = csv.writer(handle, delimiter=";", lineterminator="\r\n")
    writer.writerow(header)
    count = 0
    for row in rows:
        writer.writerow(row)
        count += 1
    return count
