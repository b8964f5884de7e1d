"""Reading a node's `/metrics` as Prometheus would (the text format, parsed by the library)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families


class Samples(dict[tuple[str, frozenset[tuple[str, str]]], float]):
    """One scrape: sample value by (name, labels)."""

    def get_value(self, name: str, **labels: str) -> float | None:
        return self.get((name, frozenset(labels.items())))

    def value(self, name: str, **labels: str) -> float:
        """The sample whose labels include `labels`; 0 when there is none (a counter not yet
        moved); an error when several match."""
        found = [v for (n, ls), v in self.items() if n == name and set(labels.items()) <= set(ls)]
        assert len(found) <= 1, f"{name} {labels}: {len(found)} samples"
        return found[0] if found else 0.0

    def names(self) -> set[str]:
        return {name for name, _ in self}


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = Samples()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def families(url: str) -> set[str]:
    """The metric families a scrape declares, samples or not (a counter without `_total`); the
    creation time of a counter or histogram (`…_created`, read as a family of its own) is left
    out."""
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    declared = {family.name for family in text_string_to_metric_families(response.text)}
    return {n for n in declared if not (n.endswith("_created") and n[:-8] in declared)}


def wait_for_metrics(url: str, ready: Callable[[Samples], bool], timeout_s: float = 30) -> Samples:
    """Scrape until `ready` (the counters of a request move right after its last byte)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(url)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)
