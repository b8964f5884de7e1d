"""WADO-RS retrieval from a Source box: a real HTTPS server with mutual TLS (test PKI) serving
multipart/related responses of real Part-10 files, on loopback under the whitelisted name."""

from __future__ import annotations

import re
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conso.helpers import SOURCE_HOST, UNLISTED_HOST, Study, Trust, make_study
from drimbox.conso.common import CacheStore, FolderStore
from drimbox.conso.retrieval import ACCEPT_DRIM_M, Progress, RetrievalError, SourceRetriever
from drimbox.dicom.cache import SeriesCache
from drimbox.samples import ANS_DIR
from drimbox.sim.pki import Issued
from drimbox.sim.studies import SeriesSpec
from drimbox.trust.tls import PeerCheck, client_ssl_context, server_ssl_context

TOKEN = "eyJhbGciOiJSUzI1NiJ9.test-token.signature"
_PATH = re.compile(r"^/dicom-web-rs/studies/([0-9.]+)/series/([0-9.]+)$")


@dataclass
class SourceBox:
    """What the test Source saw and how it answers."""

    port: int = 0
    connections: int = 0
    requests: list[dict[str, str]] = field(default_factory=list)
    statuses: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # next answers
    extra_part: bytes | None = None  # an instance not in the KOS, sent first
    files: dict[str, list[Path]] = field(default_factory=dict)


@contextmanager
def source_box(
    trust: Trust, study: Study, certificate: Issued | None = None
) -> Iterator[SourceBox]:
    state = SourceBox(files=study.by_series)
    cert = certificate or trust.source
    assert cert.cert_path and cert.key_path
    context = server_ssl_context(cert.cert_path, cert.key_path, trust.ca_file)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append({k: v for k, v in self.headers.items()})
            if state.statuses:
                status, headers = state.statuses.pop(0)
                body = '{"message": "refusé"}'.encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            match = _PATH.match(self.path)
            if not match or match.group(2) not in state.files:
                self.send_error(404)
                return
            boundary = "7544a517-4f5a-4007-9762-690998213829"
            self.send_response(200)
            # The official response's Content-Type, parameters in its order.
            self.send_header(
                "Content-Type",
                'multipart/related;start="<x@resteasy-multipart>";'
                'transfer-syntax=1.2.840.10008.1.2.1;type="application/dicom"; '
                f"boundary={boundary}",
            )
            self.send_header("Connection", "close")
            self.end_headers()
            parts = [p.read_bytes() for p in state.files[match.group(2)]]
            if state.extra_part is not None:
                parts.insert(0, state.extra_part)
            for data in parts:
                self.wfile.write(
                    f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + data
                    + b"\r\n"
                )
                self.wfile.flush()
            self.wfile.write(f"--{boundary}--\r\n".encode())

        def log_message(self, *_: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def get_request(self) -> tuple[Any, Any]:
            sock, address = super().get_request()
            state.connections += 1  # any TCP connection, before TLS
            return context.wrap_socket(sock, server_side=True), address

        def handle_error(self, *_: object) -> None:  # failed handshakes
            pass

    server = Server(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def retriever(trust: Trust, **kwargs: Any) -> SourceRetriever:
    assert trust.conso.cert_path and trust.conso.key_path
    context = client_ssl_context(trust.conso.cert_path, trust.conso.key_path, trust.ca_file)
    resolve = {SOURCE_HOST: "127.0.0.1", UNLISTED_HOST: "127.0.0.1"}
    return SourceRetriever(PeerCheck(trust.whitelist), context, resolve=resolve, timeout_s=10,
                           **kwargs)  # fmt: skip


def study_on(tmp_path: Path, port: int, host: str = SOURCE_HOST, scheme: str = "https") -> Study:
    return make_study(tmp_path / f"study-{host}-{port}", base_url=f"{scheme}://{host}:{port}")


def official_accept() -> str:
    text = (ANS_DIR / "validators" / "wado-rs-series-request.txt").read_text(encoding="utf-8")
    line = next(line for line in text.splitlines() if line.startswith("Accept:"))
    return line.partition(":")[2]


def test_accept_is_the_official_one() -> None:
    assert official_accept() == ACCEPT_DRIM_M


@pytest.fixture
def box_and_study(trust: Trust, tmp_path: Path) -> Iterator[tuple[SourceBox, Study]]:
    # The KOS names the box's real port: generate the study once the port is known.
    placeholder = make_study(tmp_path / "placeholder")
    with source_box(trust, placeholder) as box:
        study = study_on(tmp_path, box.port)
        box.files = study.by_series
        yield box, study


def test_series_land_byte_identical_in_a_folder(
    trust: Trust, box_and_study: tuple[SourceBox, Study], tmp_path: Path
) -> None:
    box, study = box_and_study
    seen: list[Progress] = []
    audited: list[dict[str, Any]] = []
    store = FolderStore(tmp_path / "received")
    with retriever(trust) as client:
        report = client.retrieve_exam(
            study.manifest,
            TOKEN,
            store,
            progress=lambda p: seen.append(replace(p)),
            audit=lambda **event: audited.append(event),
        )
    assert report.complete and report.instances == 5 and not report.errors
    for series in study.manifest.series:
        for _cls, sop in series.instances:
            received = store.series_folder(series.study_uid, series.series_uid) / f"{sop}.dcm"
            assert received.read_bytes() == study.by_sop[sop].read_bytes()
    request = box.requests[0]
    assert request["Accept"] == ACCEPT_DRIM_M
    assert request["Authorization"] == f"Bearer {TOKEN}"
    assert request["KOS-SOPInstanceUID"] == study.manifest.sop_instance_uid
    assert request["Host"] == f"{SOURCE_HOST}:{box.port}"
    assert [p.instances for p in seen if p.series_done == 0][:3] == [1, 2, 3]
    assert seen[-1].instances == 5 and seen[-1].series_done == 2
    assert seen[-1].bytes == sum(p.stat().st_size for p in study.files)
    assert [e["result"] for e in audited] == ["ok", "ok"]
    assert audited[0]["patient_ins"] == study.report.patient.ins and audited[0]["peer"] == "1"
    # Complete series are not fetched twice.
    with retriever(trust) as client:
        again = client.retrieve_exam(study.manifest, TOKEN, store)
    assert all(s.already_stored for s in again.series) and len(box.requests) == 2


def test_series_land_in_the_cache(
    trust: Trust, box_and_study: tuple[SourceBox, Study], tmp_path: Path
) -> None:
    _box, study = box_and_study
    store = CacheStore(SeriesCache(tmp_path / "cache", max_bytes=10**9, ttl_s=3600))
    with retriever(trust) as client:
        report = client.retrieve_exam(study.manifest, TOKEN, store)
    assert report.complete
    for series in study.manifest.series:
        cached = store.instances(series.study_uid, series.series_uid)
        assert {i.sop_instance_uid: i.read() for i in cached} == {
            sop: study.by_sop[sop].read_bytes() for _cls, sop in series.instances
        }


def test_a_host_off_the_whitelist_is_never_contacted(
    trust: Trust, box_and_study: tuple[SourceBox, Study], tmp_path: Path
) -> None:
    box, _ = box_and_study
    foreign = study_on(tmp_path, box.port, host=UNLISTED_HOST)
    plain = study_on(tmp_path, box.port, scheme="http")
    audited: list[dict[str, Any]] = []
    with retriever(trust) as client:
        report = client.retrieve_exam(foreign.manifest, TOKEN, FolderStore(tmp_path / "r"),
                                      audit=lambda **e: audited.append(e))  # fmt: skip
        refused = client.retrieve_exam(plain.manifest, TOKEN, FolderStore(tmp_path / "r"))
    assert box.connections == 0 and box.requests == []
    error = next(iter(report.errors.values()))
    assert error.code == "HORS_LISTE_BLANCHE" and "liste blanche" in error.message
    assert UNLISTED_HOST in error.message
    assert audited[0]["result"] == "refused"
    assert next(iter(refused.errors.values())).code == "URL_NON_SECURISEE"
    assert not (tmp_path / "r").exists()


def test_a_server_certificate_of_another_box_is_refused(
    trust: Trust, study: Study, tmp_path: Path
) -> None:
    with source_box(trust, study, certificate=trust.impostor) as box:
        target = study_on(tmp_path, box.port)
        box.files = target.by_series
        store = FolderStore(tmp_path / "r")
        with retriever(trust) as client, pytest.raises(RetrievalError) as caught:
            client.retrieve_series(target.manifest.series[0], target.manifest, TOKEN, store)
    assert caught.value.code == "CERTIFICAT_NON_CONFORME"
    assert "liste blanche" in caught.value.message
    folder = store.series_folder(target.manifest.study_uid, target.manifest.series[0].series_uid)
    assert list(folder.glob("*.dcm")) == []


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, "NON_AUTHENTIFIE"), (403, "ACCES_REFUSE"), (404, "INTROUVABLE"),
     (406, "FORMAT_NON_ACCEPTE"), (500, "ERREUR_SOURCE")],
)  # fmt: skip
def test_http_errors(
    trust: Trust, box_and_study: tuple[SourceBox, Study], tmp_path: Path, status: int, code: str
) -> None:
    box, study = box_and_study
    box.statuses.append((status, {}))
    with retriever(trust) as client, pytest.raises(RetrievalError) as caught:
        client.retrieve_series(study.manifest.series[0], study.manifest, TOKEN,
                               FolderStore(tmp_path / "r"))  # fmt: skip
    assert caught.value.code == code and caught.value.status == status
    assert "refusé" in caught.value.detail


def test_503_retry_after(
    trust: Trust, box_and_study: tuple[SourceBox, Study], tmp_path: Path
) -> None:
    box, study = box_and_study
    series = study.manifest.series[0]
    box.statuses.append((503, {"Retry-After": "0"}))
    with retriever(trust) as client:
        result = client.retrieve_series(series, study.manifest, TOKEN, FolderStore(tmp_path / "a"))
    assert result.instances == 3 and len(box.requests) == 2  # waited, then retried once
    box.statuses.append((503, {"Retry-After": "120"}))
    with retriever(trust) as client, pytest.raises(RetrievalError) as caught:
        client.retrieve_series(series, study.manifest, TOKEN, FolderStore(tmp_path / "b"))
    assert caught.value.code == "SOURCE_INDISPONIBLE" and caught.value.retry_after == 120
    assert caught.value.retryable and "120 s" in caught.value.message


def test_a_busy_source_is_asked_again_with_backoff_within_a_bound(
    trust: Trust, box_and_study: tuple[SourceBox, Study], tmp_path: Path
) -> None:
    box, study = box_and_study
    series = study.manifest.series[0]
    box.statuses.extend([(503, {"Retry-After": "0"})] * 3)
    started = time.monotonic()
    with retriever(trust) as client:
        result = client.retrieve_series(series, study.manifest, TOKEN, FolderStore(tmp_path / "a"))
    assert result.instances == 3 and len(box.requests) == 4 and client.busy_retries == 3
    assert time.monotonic() - started >= 0.2 * (1 + 2 + 3)  # waits grow at each refusal
    box.requests.clear()
    box.statuses.extend([(503, {"Retry-After": "0"})] * 10)
    with retriever(trust, busy_wait_s=0.5) as client, pytest.raises(RetrievalError) as caught:
        client.retrieve_series(series, study.manifest, TOKEN, FolderStore(tmp_path / "b"))
    assert caught.value.code == "SOURCE_INDISPONIBLE" and 2 <= len(box.requests) <= 4
    box.statuses.clear()


def test_an_instance_not_in_the_kos_is_dropped(
    trust: Trust, box_and_study: tuple[SourceBox, Study], tmp_path: Path
) -> None:
    box, study = box_and_study
    other = make_study(tmp_path / "other", study_uid="1.2.826.0.1.3680043.8.498.77.9.7",
                       series=(SeriesSpec("CT", "x", 1),))  # fmt: skip
    box.extra_part = other.files[0].read_bytes()
    store = FolderStore(tmp_path / "r")
    series = study.manifest.series[0]
    with retriever(trust) as client:
        result = client.retrieve_series(series, study.manifest, TOKEN, store)
    assert result.instances == 3 and len(result.unexpected) == 1 and not result.missing
    folder = store.series_folder(series.study_uid, series.series_uid)
    assert len(list(folder.glob("*.dcm"))) == 3


def test_an_oversized_part_is_cut(
    trust: Trust, box_and_study: tuple[SourceBox, Study], tmp_path: Path
) -> None:
    _box, study = box_and_study
    with retriever(trust, max_instance_bytes=1000) as client, pytest.raises(RetrievalError) as e:
        client.retrieve_series(study.manifest.series[0], study.manifest, TOKEN,
                               FolderStore(tmp_path / "r"))  # fmt: skip
    assert e.value.code == "REPONSE_INVALIDE"


def test_server_context_is_mutual(trust: Trust) -> None:
    assert trust.source.cert_path and trust.source.key_path
    context = server_ssl_context(trust.source.cert_path, trust.source.key_path, trust.ca_file)
    assert context.verify_mode == ssl.CERT_REQUIRED
