"""Two Consos reading one Source at its limits (issue 19), over real sockets: a Source node
(real Orthanc behind it, slowed down so that requests overlap) with `[source]
peer_max_requests = 2`, `max_requests = 3`, and two Conso nodes of two sites whose users launch
several consultations at once. Both complete; the Source answers 503 + Retry-After beyond each
share and the Consos' retrievals wait, back off and resume."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from drimbox.conso.retrieval import ACCEPT_DRIM_M, KOS_HEADER
from drimbox.dicom.pacs import InstanceSink
from drimbox.dicom.retrieve import Retriever
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.pki import Issued
from drimbox.source.fairness import PeerShares
from support.history import (
    DN_CONSO,
    DN_CONSO_2,
    HistoryExam,
    HistoryNetwork,
    launch,
    long_history,
    signed_in_user,
    wait_prefetch,
)

PER_PEER, TOTAL, RETRY_AFTER = 2, 3, 1


class SlowPacs:
    """The Source's real PACS retriever, each series held back `delay` seconds first."""

    def __init__(self, inner: Retriever, delay: float) -> None:
        self.inner = inner
        self.method = inner.method
        self.delay = delay

    def retrieve_series(
        self, study_uid: str, series_uid: str, sink: InstanceSink, sop_classes: Sequence[str]
    ) -> int:
        time.sleep(self.delay)
        return self.inner.retrieve_series(study_uid, series_uid, sink, sop_classes)


@pytest.fixture(scope="module")
def network(
    orthanc: LocalOrthanc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HistoryNetwork]:
    with long_history(
        orthanc,
        tmp_path_factory.mktemp("fairness"),
        count=20,
        second_conso=True,
        conso_environ={"DRIMBOX_CONSO__PREFETCH_EXAMS": "3"},
        source_environ={
            "DRIMBOX_SOURCE__PEER_MAX_REQUESTS": str(PER_PEER),
            "DRIMBOX_SOURCE__MAX_REQUESTS": str(TOTAL),
            "DRIMBOX_SOURCE__BUSY_RETRY_AFTER_S": str(RETRY_AFTER),
        },
    ) as built:
        images = built.source.node.images
        assert images is not None
        images.fetcher.retriever = SlowPacs(images.fetcher.retriever, 0.3)
        yield built


def shares(network: HistoryNetwork) -> PeerShares:
    web = network.source.node.web
    assert web is not None
    found: PeerShares = web.peer.app.state.peer_shares
    return found


def idle(counts: PeerShares) -> bool:
    """Every slot given back (a slot is freed just after the last byte of its answer left)."""
    deadline = time.monotonic() + 5
    while counts.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    return not counts.in_flight


def test_two_consos_at_the_source_limits_both_complete(network: HistoryNetwork) -> None:
    second = network.second_conso
    assert second is not None
    counts = shares(network)
    plan = [(network.conso, [0, 1, 2]), (second, [3, 12])]  # 3 launches on B, 2 on C

    def consult(conso: Any, named: int) -> dict[str, Any]:
        with signed_in_user(network, conso=conso) as browser:
            launch_url, _ = launch(browser, StudyInstanceUID=network.exams[named].study_uid)
            state: dict[str, Any] = wait_prefetch(browser, launch_url, timeout_s=180)
            return state

    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(consult, conso, n) for conso, names in plan for n in names]
        states = [f.result() for f in futures]
    for state in states:
        summary = state["prechargement"]
        assert summary["examens"] == summary["prevus"] == 3, state
    assert counts.busiest[DN_CONSO] == PER_PEER and counts.busiest[DN_CONSO_2] >= 1
    assert counts.peak == TOTAL and idle(counts)
    assert counts.refused[DN_CONSO] > 0  # the Source said 503 beyond the share…
    retried = 0
    for node in (network.conso, second):
        web = node.node.web
        assert web is not None and web.conso is not None
        retried += web.conso.retriever().busy_retries
    assert retried >= sum(counts.refused.values())  # …and every refusal was asked again


def _peer_client(network: HistoryNetwork, certificate: Issued) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(network.ca_file))
    assert certificate.cert_path and certificate.key_path
    context.load_cert_chain(str(certificate.cert_path), str(certificate.key_path))
    return httpx.Client(verify=context, timeout=60)


def _series_get(
    network: HistoryNetwork, client: httpx.Client, exam: HistoryExam, n: int
) -> httpx.Response:
    study = exam.study
    return client.get(
        f"{network.source.peer_url}/dicom-web-rs/studies/{study.study_uid}"
        f"/series/{study.series_uids[n]}",
        headers={
            "Accept": ACCEPT_DRIM_M,
            "Authorization": f"Bearer {network.psc.mint_access_token('radiologue')}",
            KOS_HEADER: study.kos_uid,
        },
    )


def test_beyond_its_share_a_peer_gets_503_and_retry_after_others_are_served(
    network: HistoryNetwork,
) -> None:
    """Site B holds its two slots (slow series); its third request gets 503 + Retry-After at
    once, while site C is still served."""
    images = network.source.node.images
    assert images is not None
    slow = images.fetcher.retriever
    assert isinstance(slow, SlowPacs)
    images.cache.purge()
    counts = shares(network)
    slow.delay = 2.0
    try:
        with (
            _peer_client(network, network.conso_certs[0]) as site_b,
            _peer_client(network, network.conso_certs[1]) as site_c,
            ThreadPoolExecutor(2) as pool,
        ):
            held = [pool.submit(_series_get, network, site_b, network.exams[5], n) for n in (0, 1)]
            deadline = time.monotonic() + 10
            while counts.in_flight[DN_CONSO] < PER_PEER:
                assert time.monotonic() < deadline, counts.in_flight
                time.sleep(0.02)
            refused = _series_get(network, site_b, network.exams[6], 0)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == str(RETRY_AFTER)
            assert "DRIMbox source saturée" in refused.json()["erreur"]
            slow.delay = 0.0
            served = _series_get(network, site_c, network.exams[7], 0)
            assert served.status_code == 200
            assert all(f.result().status_code == 200 for f in held)
    finally:
        slow.delay = 0.3
    assert idle(counts)


def test_the_conso_waits_and_resumes_when_the_source_is_busy(network: HistoryNetwork) -> None:
    """While site B's share is taken, its Conso's retrieval of a series is refused, waits the
    Retry-After (backing off), and completes once a slot is free."""
    images = network.source.node.images
    conso = network.conso.node.web.conso if network.conso.node.web else None
    assert images is not None and conso is not None
    counts = shares(network)
    counts.in_flight[DN_CONSO] = PER_PEER  # two requests of site B in flight, as far as it knows
    refused = counts.refused[DN_CONSO]

    def free_once_refused() -> None:  # a slot frees up a second after the first refusal
        deadline = time.monotonic() + 60
        while counts.refused[DN_CONSO] == refused and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(1.0)
        counts.in_flight.pop(DN_CONSO, None)

    release = threading.Thread(target=free_once_refused)
    release.start()
    retriever = conso.retriever()
    before = retriever.busy_retries
    try:
        with signed_in_user(network) as browser:
            launch_url, _ = launch(browser, StudyInstanceUID=network.exams[16].study_uid)
            state = wait_prefetch(browser, launch_url, timeout_s=60)
    finally:
        counts.in_flight.pop(DN_CONSO, None)
        release.join()
    assert state["prechargement"]["examens"] == 3
    assert counts.refused[DN_CONSO] > refused and retriever.busy_retries > before
