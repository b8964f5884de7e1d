"""Filters of the stored exam history: modality, anatomic region, date range.

Owns `HistoryFilter`, its defaults from the contextual launch (`Modality`, `AnatomicRegion`,
`StudyDate`) and its reading from the history page's GET form (`modalite`, `region`, `du`, `au`;
`filtre=1` says the form was sent, so that an empty field means "any" rather than "the
launch's"). Pure: it filters what the DMP already answered, never queries it again.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Final

from drimbox.conso.launch import LaunchContext

P_SENT: Final = "filtre"
P_MODALITY: Final = "modalite"
P_REGION: Final = "region"
P_FROM: Final = "du"
P_TO: Final = "au"


def _fold(text: str) -> str:
    """Case- and accent-insensitive form of a region name (`Thorax` = `thorax`, `Crâne` =
    `crane`)."""
    decomposed = unicodedata.normalize("NFKD", text.strip().casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


@dataclass(frozen=True)
class HistoryFilter:
    """What the history shows; None is "any". Date bounds are inclusive days."""

    modality: str | None = None
    region: str | None = None
    date_from: date | None = None
    date_to: date | None = None

    @classmethod
    def from_launch(cls, launch: LaunchContext) -> HistoryFilter:
        return cls(launch.modality, launch.anatomic_region, launch.study_date, launch.study_date)

    @property
    def active(self) -> bool:
        return any((self.modality, self.region, self.date_from, self.date_to))

    def matches(self, when: date | None, modalities: Iterable[str], regions: Iterable[str]) -> bool:
        if self.modality and self.modality.upper() not in {m.upper() for m in modalities}:
            return False
        if self.region and _fold(self.region) not in {_fold(r) for r in regions}:
            return False
        if self.date_from is None and self.date_to is None:
            return True
        if when is None:
            return False  # an undated exam cannot be said to be in the range
        return (self.date_from is None or when >= self.date_from) and (
            self.date_to is None or when <= self.date_to
        )

    def as_query(self) -> dict[str, str]:
        """The GET form's fields for this filter (to keep it across links)."""
        return {
            P_SENT: "1",
            P_MODALITY: self.modality or "",
            P_REGION: self.region or "",
            P_FROM: self.date_from.isoformat() if self.date_from else "",
            P_TO: self.date_to.isoformat() if self.date_to else "",
        }


def filter_from_query(
    params: Mapping[str, str], launch: LaunchContext
) -> tuple[HistoryFilter, list[str]]:
    """The filter the page asks for (the launch's until the form is sent), and a French sentence
    per faulty field (that field is then ignored)."""
    if params.get(P_SENT) is None:
        return HistoryFilter.from_launch(launch), []
    errors: list[str] = []

    def day(name: str, label: str) -> date | None:
        value = (params.get(name) or "").strip()
        if not value:
            return None
        try:
            return date.fromisoformat(value)
        except ValueError:
            shown = value if len(value) <= 40 else value[:39] + "…"
            errors.append(f"Date {label} invalide (reçu « {shown} ») : format AAAA-MM-JJ attendu.")
            return None

    date_from, date_to = day(P_FROM, "de début"), day(P_TO, "de fin")
    if date_from and date_to and date_from > date_to:
        errors.append("La date de début est après la date de fin : période ignorée.")
        date_from = date_to = None
    # Cut, then strip: a cut can end on a space, and the filter must read back as it was shown.
    modality = (params.get(P_MODALITY) or "").strip().upper()[:16].strip() or None
    region = (params.get(P_REGION) or "").strip()[:128].strip() or None
    return HistoryFilter(modality, region, date_from, date_to), errors
