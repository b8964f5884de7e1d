"""The Source's per-request access log stays bounded: rotated, oldest generations dropped."""

from __future__ import annotations

from pathlib import Path

from drimbox.source.access import (
    ACCESS_LOG_GENERATIONS,
    RetrievalRecord,
    read_records,
    record_retrieval,
)


def test_the_access_log_is_rotated_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "access-log.jsonl"
    for n in range(40):
        record_retrieval(path, RetrievalRecord(subject=f"s{n}", study_uid="1.2.3"), max_bytes=1000)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ["access-log.jsonl"] + [
        f"access-log.jsonl.{g}" for g in range(1, ACCESS_LOG_GENERATIONS + 1)
    ]
    # Every file stays near the limit (one line past it at most), the newest lines are current.
    sizes = [p.stat().st_size for p in tmp_path.iterdir()]
    assert max(sizes) < 1000 + 600
    assert read_records(path)[-1].subject == "s39"
    older = [read_records(tmp_path / f"access-log.jsonl.{g}") for g in (1, 2)]
    last_rotated = int(older[0][-1].subject[1:])
    first_current = int(read_records(path)[0].subject[1:])
    assert first_current == last_rotated + 1
    assert int(older[1][-1].subject[1:]) + 1 == int(older[0][0].subject[1:])
