"""Which exams of a launch are prefetched, in which order, and how much.

A patient followed for years can have a hundred exams of a few hundred MB each: prefetching
the whole history would pull tens of GB from many Sources, flush other users' images from the
cache and make the exam the radiologist wants wait behind old ones. So a launch prefetches, in
this order: the exam the launch names (StudyInstanceUID, else AccessionNumber), then the priors
most likely to be compared (same modality and same region, then same modality or region; most
recent first), then the rest; within a budget of exams and bytes (`[conso] prefetch_exams`,
`prefetch_max_bytes`). Exams outside the budget are fetched when the user opens them.

Pure planning: no I/O, no threads (the web layer's `ConsoService` runs the plan).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

_OLDEST: Final = datetime.min.isoformat()


@dataclass(frozen=True)
class Candidate:
    """One exam with images, as the planner needs it (`key`: the caller's exam id)."""

    key: int
    study_uid: str
    accession: str
    date: str  # ISO 8601, "" when unknown
    modalities: tuple[str, ...]
    regions: tuple[str, ...]


@dataclass(frozen=True)
class Budget:
    """What one launch may prefetch ahead: `exams` (the named one included) and `max_bytes`
    (checked between series; the named exam is always fetched whole)."""

    exams: int
    max_bytes: int

    def allows_exam(self, position: int) -> bool:
        return position < self.exams

    def allows_more(self, position: int, spent: int) -> bool:
        """Whether another series may start, `spent` bytes into the launch (the named exam,
        at position 0 with a named launch, is never cut)."""
        return position == 0 or spent < self.max_bytes


def named_key(
    candidates: Sequence[Candidate], study_uid: str | None, accession: str | None
) -> int | None:
    """The exam the launch names: by StudyInstanceUID, else by AccessionNumber."""
    if study_uid:
        for candidate in candidates:
            if candidate.study_uid == study_uid:
                return candidate.key
    if accession:
        for candidate in candidates:
            if candidate.accession == accession:
                return candidate.key
    return None


def _norm(values: Sequence[str]) -> set[str]:
    return {v.strip().casefold() for v in values if v.strip()}


def prefetch_order(
    candidates: Sequence[Candidate],
    *,
    study_uid: str | None = None,
    accession: str | None = None,
    modality: str | None = None,
) -> list[Candidate]:
    """The candidates in prefetch order: the named exam first, then by relevance to it (same
    modality and region, then one of them, then the rest), most recent first within each tier.
    Without a named exam the launch's `modality` is the reference, else recency alone."""
    key = named_key(candidates, study_uid, accession)
    named = next((c for c in candidates if c.key == key), None)
    modalities = _norm(named.modalities) if named else _norm([modality or ""])
    regions = _norm(named.regions) if named else set()

    def tier(candidate: Candidate) -> int:
        if candidate.key == key:
            return 0
        same_modality = bool(modalities & _norm(candidate.modalities))
        same_region = bool(regions & _norm(candidate.regions))
        if same_modality and same_region:
            return 1
        return 2 if same_modality or same_region else 3

    by_recency = sorted(candidates, key=lambda c: c.date or _OLDEST, reverse=True)
    return sorted(by_recency, key=tier)  # stable: most recent first within a tier
