"""Purging the image cache of a running node, from the CLI (another process) and from the
console, while a peer reads: the reader of the moment gets every image, the disk is freed once it
is done, the next reader gets the series fetched again from the PACS (never a 200 without the
images)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO

from drimbox.dicom.cache import DATA_FILE, SeriesCache
from drimbox.http.multipart import MultipartReader, boundary_of
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.studies import SeriesSpec
from support.node import signed_in
from support.process import config_environ
from support.site import Site, official_headers, peer_client, series_url, source_site

ADMIN = "899700100011"  # the PSC simulator's `radiologue`
INSTANCES = 40  # 512×512×2 bytes each: 20 MB, more than the sockets buffer


@pytest.fixture
def site(orthanc: LocalOrthanc, tmp_path: Path) -> Iterator[Site]:
    with source_site(
        orthanc, tmp_path, series=(SeriesSpec("CT", "a", INSTANCES),), size=512,
        environ_extra={"DRIMBOX_ADMIN__USERS": ADMIN},
    ) as running:  # fmt: skip
        yield running


def _cache(site: Site) -> SeriesCache:
    assert site.node.node.images is not None
    return site.node.node.images.cache


def _sop_uids(body: bytes, content_type: str) -> list[str]:
    parts = MultipartReader(boundary_of(content_type)).feed(body)
    return [str(dcmread(DicomBytesIO(part.body)).SOPInstanceUID) for part in parts]


def _open_deleted_cache_files(cache: SeriesCache) -> list[str]:
    """Data files of `cache` this process still holds open after their deletion (disk not
    freed)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(cache.directory)) and target.endswith(f"{DATA_FILE} (deleted)"):
            found.append(target)
    return found


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


def _purge_while_reading(site: Site, purge: Callable[[], None]) -> None:
    token = site.psc.mint_access_token("radiologue")
    headers = official_headers(site, token)
    cache = _cache(site)
    assert site.node.node.images is not None
    fetcher = site.node.node.images.fetcher
    with peer_client(site, site.trusted_peer) as client:
        warm = client.get(series_url(site), headers=headers)
        assert warm.status_code == 200
        expected = _sop_uids(warm.content, warm.headers["content-type"])
        assert len(expected) == INSTANCES
        _wait_until(lambda: cache.usage().reading == 0, "the first read released the series")
        assert cache.usage().series == 1 and fetcher.retrievals == 1

        with client.stream("GET", series_url(site), headers=headers) as response:
            assert response.status_code == 200
            raw = response.iter_raw(65536)
            body = [next(raw)]
            # The node is still sending (the series does not fit in the socket buffers).
            assert cache.usage().reading == 1
            purge()
            assert cache.usage().series == 0  # gone from the index at once
            body.extend(raw)
        # The reader of the moment got every image, intact.
        assert _sop_uids(b"".join(body), response.headers["content-type"]) == expected
        # Its file is closed and deleted once it is done: the disk is freed.
        _wait_until(lambda: not _open_deleted_cache_files(cache), "the purged file is closed")
        assert cache.disk_bytes() == 0

        # The next reader gets the series again, fetched anew from the PACS.
        again = client.get(series_url(site), headers=headers)
        assert again.status_code == 200
        assert _sop_uids(again.content, again.headers["content-type"]) == expected
        assert fetcher.retrievals == 2


def test_cli_purge_while_a_peer_reads(site: Site) -> None:
    environ = os.environ | config_environ(site.node.config)

    def purge() -> None:
        result = subprocess.run(
            [sys.executable, "-m", "drimbox", "cache", "purge"],
            env=environ, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Cache vidé : 1 série supprimée" in result.stdout

    _purge_while_reading(site, purge)


def test_console_purge_while_a_peer_reads(site: Site) -> None:
    browser = signed_in(site.node, ADMIN)

    def purge() -> None:
        page = browser.post(
            f"{site.node.viewer_url}/admin/cache/purger",
            headers={"Origin": site.node.viewer_url},
        )
        assert page.status_code == 200 and "Cache vidé : 1 série supprimée" in page.text

    try:
        _purge_while_reading(site, purge)
    finally:
        browser.close()


def test_cli_purge_of_an_unread_series_frees_its_disk_at_once(site: Site) -> None:
    token = site.psc.mint_access_token("radiologue")
    cache = _cache(site)
    with peer_client(site, site.trusted_peer) as client:
        assert (
            client.get(series_url(site), headers=official_headers(site, token)).status_code == 200
        )
    _wait_until(lambda: cache.usage().reading == 0, "the read released the series")
    environ = os.environ | config_environ(site.node.config)
    subprocess.run([sys.executable, "-m", "drimbox", "cache", "purge"], env=environ,
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    # No file of the purged series is held open by the node: the disk is free right away.
    assert _open_deleted_cache_files(cache) == []
    assert cache.disk_bytes() == 0 and cache.usage().series == 0
