"""WADO-RS for peers against a real Orthanc, over real sockets: the official DRIM-M series
request, each retrieval method, the negative cases, single flight, streaming and the cache."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless

from drimbox.config import Config, load_config
from drimbox.db import Database
from drimbox.db.models import ReportState
from drimbox.dicom.pacs import InstanceSink
from drimbox.dicom.retrieve import ImageService, Retriever
from drimbox.dicom.transcode import transcode
from drimbox.http.multipart import MultipartReader, boundary_of
from drimbox.samples import ANS_DIR
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ports import free_port
from drimbox.sim.studies import SeriesSpec
from drimbox.source.access import access_log_path, read_records
from drimbox.web.app import create_peer_app
from support.source import (
    PublishedStudy,
    Tokens,
    orthanc_moving_to,
    pacs_environ,
    publish_study,
    serving,
    set_state,
)

SAMPLE = ANS_DIR / "validators" / "wado-rs-series-request.txt"
BOX_AET = "DRIMBOX"


def official_request() -> tuple[str, dict[str, str]]:
    """The path and headers of the official series request, as the sample has them."""
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    method, url, _version = lines[0].split(" ")
    assert method == "GET"
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    return url, headers


@pytest.fixture(scope="module")
def scp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def pacs(scp_port: int) -> Iterator[LocalOrthanc]:
    with orthanc_moving_to("ORTHANCW", BOX_AET, scp_port) as orthanc:
        yield orthanc


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'source.db'}")
    database.upgrade()
    yield database
    database.dispose()


def make_config(tmp_path: Path, pacs: LocalOrthanc, scp_port: int, **store: Any) -> Config:
    environ = {
        "DRIMBOX_STORE__DATABASE_URL": f"sqlite:///{tmp_path / 'source.db'}",
        "DRIMBOX_STORE__CACHE_DIR": str(tmp_path / "cache"),
        **pacs_environ(pacs, BOX_AET, scp_port),
        "DRIMBOX_PACS__TIMEOUT_S": "10",
        # Many concurrent requests from one address test the single flight, not the share.
        "DRIMBOX_SOURCE__PEER_MAX_REQUESTS": "64",
        "DRIMBOX_SOURCE__MAX_REQUESTS": "64",
    }
    for key, value in store.items():
        environ[f"DRIMBOX_STORE__{key.upper()}"] = str(value)
    return load_config(environ=environ)


def with_retrieve(config: Config, method: str) -> Config:
    return config.model_copy(update={"pacs": config.pacs.model_copy(update={"retrieve": method})})


def parts_of(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    reader = MultipartReader(boundary_of(response.headers["content-type"]))
    parts = [(dict(p.headers), p.body) for p in reader.feed(response.content)]
    reader.close()
    return parts


def same_pixels(part: bytes, original: Path) -> bool:
    received = dcmread(BytesIO(part))
    stored = dcmread(original)
    return bool(np.array_equal(received.pixel_array, stored.pixel_array))


def peer_headers(tokens: Tokens, study: PublishedStudy, **extra: str) -> dict[str, str]:
    _url, headers = official_request()
    headers = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
    headers["Authorization"] = f"Bearer {tokens.issue()}"
    headers["KOS-SOPInstanceUID"] = study.kos_uid
    headers.update(extra)
    return headers


def series_url(base: str, study: PublishedStudy, series_index: int = 0) -> str:
    return f"{base}/dicom-web-rs/studies/{study.study_uid}/series/{study.series_uids[series_index]}"


@pytest.mark.parametrize("method", ["c-get", "c-move", "c-move-dcmtk", "wado-rs"])
def test_official_series_request_returns_every_instance(
    method: str, tmp_path: Path, pacs: LocalOrthanc, scp_port: int, db: Database
) -> None:
    study = publish_study(
        db,
        pacs,
        tmp_path,
        [SeriesSpec("CT", "Thorax", 6), SeriesSpec("CR", "Face", 1)],
        transfer_syntax=JPEGLSLossless,
    )
    tokens = Tokens()
    config = with_retrieve(make_config(tmp_path, pacs, scp_port), method)
    app = create_peer_app(config, db, tokens.verifier())
    url, _headers = official_request()
    # The sample's own path shape, with our study and series in it.
    path = url.split("/dicom-web-rs/", 1)[1]
    assert path.startswith("studies/") and "/series/" in path
    with serving(app) as base:
        response = httpx.get(
            series_url(base, study), headers=peer_headers(tokens, study), timeout=60
        )
    assert response.status_code == 200, response.text
    # JPEG Lossless SV1 is the client's first choice (q=0.9), JPEG-LS (stored) its second (0.8):
    # re-encoding a compressed image costs a decode and an encode for more bytes, so the box's
    # source quality (0.5) keeps the stored bytes, untouched; the response says their syntax
    # itself, as the official response does.
    assert response.headers["content-type"].startswith(
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEGLSLossless};'
    )
    parts = parts_of(response)
    originals = {
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
        for p in study.by_series[study.series_uids[0]]
    }
    assert len(parts) == len(originals) == 6
    seen = set()
    for part_headers, body in parts:
        ds = dcmread(BytesIO(body))  # a valid Part-10 file
        assert ds.preamble is not None and ds.file_meta.TransferSyntaxUID == JPEGLSLossless
        assert part_headers["content-type"] == (
            f"application/dicom; transfer-syntax={JPEGLSLossless}"
        )
        original = originals[str(ds.SOPInstanceUID)]
        assert same_pixels(body, original)
        assert dcmread(original).PixelData == ds.PixelData  # the stored codestream itself
        seen.add(str(ds.SOPInstanceUID))
    assert seen == set(originals)
    records = read_records(access_log_path(config.store.cache_dir))
    assert [(r.result, r.instances, r.resource) for r in records] == [(200, 6, "series")]
    assert records[0].subject == "899700218896" and records[0].bytes == len(response.content)


def test_a_response_keeps_the_syntax_of_its_first_part(
    tmp_path: Path, pacs: LocalOrthanc, scp_port: int, db: Database
) -> None:
    """A study whose first series is uncompressed and second JPEG-LS, asked with the official
    Accept list: the first part goes in JPEG Lossless (uncompressed re-encoded), and so do the
    JPEG-LS ones after it, as the response's own Content-Type says."""
    study = publish_study(db, pacs, tmp_path, [SeriesSpec("CT", "A", 2), SeriesSpec("CT", "B", 2)])
    second = study.by_series[study.series_uids[1]]
    for path in second:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        (found,) = pacs.client.post("/tools/lookup", content=uid).json()
        pacs.client.delete(f"/instances/{found['ID']}").raise_for_status()
        path.write_bytes(transcode(path.read_bytes(), JPEGLSLossless))
    pacs.store_files(second)
    tokens = Tokens()
    app = create_peer_app(make_config(tmp_path, pacs, scp_port), db, tokens.verifier())
    with serving(app) as base:
        response = httpx.get(
            f"{base}/dicom-web-rs/studies/{study.study_uid}",
            headers=peer_headers(tokens, study),
            timeout=60,
        )
    assert response.status_code == 200, response.text
    assert f"; transfer-syntax={JPEGLosslessSV1};" in response.headers["content-type"]
    parts = parts_of(response)
    assert len(parts) == 4
    for part_headers, body in parts:
        assert part_headers["content-type"].endswith(f"transfer-syntax={JPEGLosslessSV1}")
        assert dcmread(BytesIO(body)).file_meta.TransferSyntaxUID == JPEGLosslessSV1


def test_negative_cases_never_500(
    tmp_path: Path, pacs: LocalOrthanc, scp_port: int, db: Database
) -> None:
    study = publish_study(db, pacs, tmp_path, [SeriesSpec("CT", "A", 2)])
    other = publish_study(db, pacs, tmp_path, [SeriesSpec("CT", "B", 1)])
    tokens = Tokens()
    config = make_config(tmp_path, pacs, scp_port)
    app = create_peer_app(config, db, tokens.verifier())
    with serving(app) as base:
        url = series_url(base, study)

        def get(headers: dict[str, str], target: str = url) -> httpx.Response:
            return httpx.get(target, headers=headers, timeout=30)

        good = peer_headers(tokens, study)
        no_token = {k: v for k, v in good.items() if k != "Authorization"}
        assert get(no_token).status_code == 401
        assert "WWW-Authenticate" in get(no_token).headers
        expired = good | {"Authorization": f"Bearer {tokens.issue(ttl_s=-3600)}"}
        assert get(expired).status_code == 401
        foreign = Tokens()
        assert get(good | {"Authorization": f"Bearer {foreign.issue()}"}).status_code == 401
        assert get(good | {"KOS-SOPInstanceUID": other.kos_uid}).status_code == 404
        not_in_kos = f"{base}/dicom-web-rs/studies/{study.study_uid}/series/{other.series_uids[0]}"
        assert get(good, not_in_kos).status_code == 404
        unsupported = (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50,'
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.100'
        )
        response = get(good | {"Accept": unsupported})
        assert response.status_code == 406
        assert "erreur" in response.json()
        assert (
            get(good | {"Accept": 'multipart/related; type="application/dicom"; q=2'}).status_code
            == 400
        )
        assert (
            get(good | {"Accept": 'multipart/related; type="application/dicom'}).status_code == 400
        )
        assert get(good | {"KOS-SOPInstanceUID": "not a uid"}).status_code == 400
        bad_uid = f"{base}/dicom-web-rs/studies/1.2.x/series/{study.series_uids[0]}"
        assert get(good, bad_uid).status_code == 400
        unknown_instance = url + "/instances/1.2.3.4"
        assert get(good, unknown_instance).status_code == 404
        # A replaced or withdrawn KOS no longer grants anything.
        set_state(db, study.report_id, ReportState.REPLACED.value)
        assert get(good).status_code == 403
        set_state(db, study.report_id, ReportState.WITHDRAWN.value)
        assert get(good).status_code == 403
    results = [r.result for r in read_records(access_log_path(config.store.cache_dir))]
    assert 401 in results and 404 in results and 403 in results


def test_pacs_down_gives_503_with_retry_after(
    tmp_path: Path, pacs: LocalOrthanc, scp_port: int, db: Database
) -> None:
    study = publish_study(db, pacs, tmp_path, [SeriesSpec("CT", "A", 1)])
    tokens = Tokens()
    config = make_config(tmp_path, pacs, scp_port)
    dead = config.model_copy(
        update={"pacs": config.pacs.model_copy(update={"port": free_port(), "timeout_s": 2})}
    )
    for method in ("c-get", "wado-rs"):
        cfg = with_retrieve(dead, method)
        if method == "wado-rs":
            cfg = cfg.model_copy(
                update={
                    "pacs": cfg.pacs.model_copy(
                        update={"dicomweb_url": f"http://127.0.0.1:{free_port()}/dicom-web"}
                    )
                }
            )
        app = create_peer_app(cfg, db, tokens.verifier())
        with serving(app) as base:
            response = httpx.get(series_url(base, study), headers=peer_headers(tokens, study))
        assert response.status_code == 503, (method, response.text)
        assert response.headers["retry-after"]
        assert "indisponibles" in response.json()["erreur"]


def test_transcoding_by_accept_is_lossless(
    tmp_path: Path, pacs: LocalOrthanc, scp_port: int, db: Database
) -> None:
    study = publish_study(
        db, pacs, tmp_path, [SeriesSpec("CT", "A", 2)], transfer_syntax=ExplicitVRLittleEndian
    )
    tokens = Tokens()
    app = create_peer_app(make_config(tmp_path, pacs, scp_port), db, tokens.verifier())
    originals = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in study.files}
    with serving(app) as base:
        for wanted in (JPEGLSLossless, JPEG2000Lossless, ExplicitVRLittleEndian):
            accept = (
                f'multipart/related; type="application/dicom"; transfer-syntax={wanted}; q=0.9,'
                'multipart/related; type="application/dicom"; '
                "transfer-syntax=1.2.840.10008.1.2.4.50;q=1,"
            )
            response = httpx.get(
                series_url(base, study),
                headers=peer_headers(tokens, study, Accept=accept),
                timeout=60,
            )
            assert response.status_code == 200, response.text
            parts = parts_of(response)
            assert len(parts) == 2
            for headers, body in parts:
                ds = dcmread(BytesIO(body))
                assert ds.file_meta.TransferSyntaxUID == wanted
                assert headers["content-type"].endswith(f"transfer-syntax={wanted}")
                assert same_pixels(body, originals[str(ds.SOPInstanceUID)])


def test_instance_metadata_rendered_and_qido(
    tmp_path: Path, pacs: LocalOrthanc, scp_port: int, db: Database
) -> None:
    study = publish_study(
        db, pacs, tmp_path, [SeriesSpec("CT", "A", 3)], transfer_syntax=JPEGLSLossless
    )
    tokens = Tokens()
    app = create_peer_app(make_config(tmp_path, pacs, scp_port), db, tokens.verifier())
    sop = str(dcmread(study.files[1], stop_before_pixels=True).SOPInstanceUID)
    headers = peer_headers(tokens, study)
    json_headers = headers | {"Accept": "application/dicom+json"}
    with serving(app) as base:
        url = series_url(base, study)
        one = httpx.get(f"{url}/instances/{sop}", headers=headers)
        assert one.status_code == 200 and len(parts_of(one)) == 1
        whole = httpx.get(f"{base}/dicom-web-rs/studies/{study.study_uid}", headers=headers)
        assert whole.status_code == 200 and len(parts_of(whole)) == 3
        metadata = httpx.get(f"{url}/metadata", headers=json_headers)
        assert metadata.status_code == 200
        assert metadata.headers["content-type"].startswith("application/dicom+json")
        items = metadata.json()
        assert len(items) == 3
        assert all("7FE00010" not in item for item in items)
        assert {item["00080018"]["Value"][0] for item in items} >= {sop}
        assert items[0]["00280010"] == {"vr": "US", "Value": [64]}
        for kind, magic in (("rendered", b"\xff\xd8"), ("thumbnail", b"\xff\xd8")):
            image = httpx.get(
                f"{url}/instances/{sop}/{kind}", headers=headers | {"Accept": "image/jpeg"}
            )
            assert image.status_code == 200 and image.content.startswith(magic)
        png = httpx.get(
            f"{url}/instances/{sop}/rendered", headers=headers | {"Accept": "image/png"}
        )
        assert png.content.startswith(b"\x89PNG")
        frames = httpx.get(
            f"{url}/instances/{sop}/frames/1",
            headers=headers
            | {"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
        )
        assert frames.status_code == 200
        [(frame_headers, _frame)] = parts_of(frames)
        assert frame_headers["content-type"] == f"image/jls; transfer-syntax={JPEGLSLossless}"
        raw = httpx.get(
            f"{url}/instances/{sop}/frames/1",
            headers=headers | {"Accept": "multipart/related; type=application/octet-stream"},
        )
        [(raw_headers, raw_frame)] = parts_of(raw)
        assert raw_headers["content-type"].startswith("application/octet-stream")
        assert raw_frame == dcmread(study.files[1]).pixel_array.astype("<u2").tobytes()
        studies = httpx.get(f"{base}/dicom-web-rs/studies", headers=json_headers).json()
        assert [s["0020000D"]["Value"][0] for s in studies] == [study.study_uid]
        series = httpx.get(
            f"{base}/dicom-web-rs/studies/{study.study_uid}/series", headers=json_headers
        ).json()
        assert [s["0020000E"]["Value"][0] for s in series] == study.series_uids
        instances = httpx.get(f"{url}/instances", headers=json_headers).json()
        assert len(instances) == 3


class CountingRetriever:
    """Wraps the real retriever: counts PACS retrievals, and can slow the PACS down per
    instance (the sink runs on the retrieval thread, so the PACS waits too)."""

    def __init__(self, inner: Retriever, delay_s: float = 0.0) -> None:
        self.inner = inner
        self.method = inner.method
        self.delay_s = delay_s
        self.calls = 0
        self.finished_at: list[float] = []
        self._lock = threading.Lock()

    def retrieve_series(
        self, study_uid: str, series_uid: str, sink: InstanceSink, sop_classes: Sequence[str]
    ) -> int:
        with self._lock:
            self.calls += 1

        def slow(data: bytes) -> None:
            time.sleep(self.delay_s)
            sink(data)

        try:
            return self.inner.retrieve_series(study_uid, series_uid, slow, sop_classes)
        finally:
            self.finished_at.append(time.monotonic())


def service_with(config: Config, delay_s: float = 0.0) -> tuple[ImageService, CountingRetriever]:
    plain = ImageService(config)
    counting = CountingRetriever(plain.retriever, delay_s)
    return ImageService(config, retriever=counting), counting


def test_ten_concurrent_requests_make_one_pacs_retrieval(
    tmp_path: Path, pacs: LocalOrthanc, scp_port: int, db: Database
) -> None:
    study = publish_study(db, pacs, tmp_path, [SeriesSpec("CT", "A", 8)])
    tokens = Tokens()
    config = make_config(tmp_path, pacs, scp_port)
    images, counting = service_with(config, delay_s=0.05)
    app = create_peer_app(config, db, tokens.verifier(), images=images)
    results: list[httpx.Response] = []
    with serving(app) as base:
        url = series_url(base, study)
        barrier = threading.Barrier(10)

        def fetch() -> None:
            headers = peer_headers(tokens, study)
            barrier.wait()
            results.append(httpx.get(url, headers=headers, timeout=60))

        threads = [threading.Thread(target=fetch) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert [r.status_code for r in results] == [200] * 10
    assert all(len(parts_of(r)) == 8 for r in results)
    assert counting.calls == 1
    assert images.fetcher.retrievals == 1
    usage = images.cache.usage()
    assert usage.misses == 1 and usage.hits == 9


def test_first_part_leaves_before_the_pacs_has_sent_the_last_instance(
    tmp_path: Path, pacs: LocalOrthanc, scp_port: int, db: Database
) -> None:
    study = publish_study(db, pacs, tmp_path, [SeriesSpec("CT", "A", 10)])
    tokens = Tokens()
    config = with_retrieve(make_config(tmp_path, pacs, scp_port), "wado-rs")
    images, counting = service_with(config, delay_s=0.15)  # a slow PACS: ≥ 1.5 s in all
    app = create_peer_app(config, db, tokens.verifier(), images=images)
    with serving(app) as base:
        started = time.monotonic()
        first_part_at: float | None = None
        count = 0
        with httpx.stream(
            "GET", series_url(base, study), headers=peer_headers(tokens, study), timeout=60
        ) as response:
            assert response.status_code == 200
            reader = MultipartReader(boundary_of(response.headers["content-type"]))
            for chunk in response.iter_raw():
                for _part in reader.feed(chunk):
                    count += 1
                    if first_part_at is None:
                        first_part_at = time.monotonic()
            reader.close()
    assert count == 10
    assert first_part_at is not None and counting.finished_at
    pacs_done = counting.finished_at[0]
    # The first part was in the client's hands while the PACS still had ~9 instances to send.
    assert first_part_at < pacs_done - 0.8, (first_part_at - started, pacs_done - started)


def test_cache_size_limit_holds_under_a_larger_load(
    tmp_path: Path, pacs: LocalOrthanc, scp_port: int, db: Database
) -> None:
    specs = [SeriesSpec("CT", f"S{i}", 4) for i in range(6)] + [SeriesSpec("CT", "big", 30)]
    study = publish_study(db, pacs, tmp_path, specs)
    sizes = {uid: sum(p.stat().st_size for p in paths) for uid, paths in study.by_series.items()}
    small = max(sizes[uid] for uid in study.series_uids[:6])
    limit = int(small * 2.5)  # room for two small series, not three; the big one never fits
    tokens = Tokens()
    config = make_config(tmp_path, pacs, scp_port, cache_max_bytes=limit)
    images, counting = service_with(config)
    app = create_peer_app(config, db, tokens.verifier(), images=images)
    with serving(app) as base:
        for index, uid in enumerate(study.series_uids):
            response = httpx.get(
                series_url(base, study, index), headers=peer_headers(tokens, study), timeout=60
            )
            assert response.status_code == 200
            assert len(parts_of(response)) == len(study.by_series[uid])
            usage = images.cache.usage()
            assert usage.bytes <= limit, (index, usage)
            assert images.cache.disk_bytes() <= limit
        assert images.cache.usage().evictions >= 4
        # LRU: after two small series, both are served from the cache, no PACS retrieval.
        for index in (4, 5):
            httpx.get(series_url(base, study, index), headers=peer_headers(tokens, study))
        calls = counting.calls
        for index in (4, 5, 4):
            response = httpx.get(
                series_url(base, study, index), headers=peer_headers(tokens, study), timeout=60
            )
            assert response.status_code == 200
        assert counting.calls == calls
        assert images.cache.usage().bytes <= limit
