"""The on-disk series cache: streaming readers, LRU by size, pins, TTL, purge, restart."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from drimbox.dicom.cache import SeriesCache, _file_meta, describe_instance, purge_cache
from drimbox.sim.studies import SeriesSpec, generate_study

STUDY = "1.2.826.0.1.3680043.8.498.77.7.1"


def instances(tmp_path: Path, count: int = 3) -> list[bytes]:
    paths = generate_study(
        tmp_path / "src",
        patient_id="P",
        patient_name="A^B",
        birth_date="20000101",
        sex="M",
        study_uid=STUDY,
        accession="A",
        series=[SeriesSpec("CT", "x", count)],
        rows=32,
        columns=32,
    )
    return [p.read_bytes() for p in paths]


def fill(
    cache: SeriesCache, series: str, payloads: list[bytes], prefetch: str | None = None
) -> None:
    entry, created = cache.get_or_begin(STUDY, series, prefetch=prefetch)
    assert created
    for data in payloads:
        cache.add(entry, data)
    cache.finish(entry)
    cache.release(entry)


def test_readers_follow_a_filling_series(tmp_path: Path) -> None:
    payloads = instances(tmp_path, 4)
    cache = SeriesCache(tmp_path / "cache", 10**9, 3600)
    entry, created = cache.get_or_begin(STUDY, "1.2.3")
    assert created
    seen: list[tuple[float, bytes]] = []

    async def read() -> None:
        async for instance in entry.follow():
            seen.append((time.monotonic(), instance.read()))

    def producer() -> None:
        for data in payloads:
            time.sleep(0.05)
            cache.add(entry, data)
        cache.finish(entry)

    thread = threading.Thread(target=producer)
    thread.start()
    asyncio.run(read())
    thread.join()
    assert [data for _, data in seen] == payloads
    assert seen[-1][0] - seen[0][0] > 0.1  # each instance was read as it came
    sop, _cls, syntax = describe_instance(payloads[0])
    assert entry.instances[0].sop_instance_uid == sop and syntax == ExplicitVRLittleEndian
    cache.release(entry)


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"UN"):
        return struct.pack("<HH2s2xI", 2, tag, vr, len(value)) + value
    return struct.pack("<HH2sH", 2, tag, vr, len(value)) + value


@pytest.mark.parametrize(
    "order",
    [
        (0x0001, 0x0002, 0x0003, 0x0010, 0x0012, 0x0013),  # as written by the field
        (0x0002, 0x0003, 0x0010),  # only the three wanted
        (0x0001, 0x0003, 0x0002, 0x0010),  # class after instance: still in order up to 0010
    ],
)
def test_header_reader_agrees_with_pydicom(tmp_path: Path, order: tuple[int, ...]) -> None:
    """The quick group-0002 reader gives what pydicom reads, and stops at the transfer syntax
    (whatever follows it, even garbage, is not read)."""
    values = {
        0x0001: (b"OB", b"\0\1"),
        0x0002: (b"UI", b"1.2.840.10008.5.1.4.1.1.2\0"),
        0x0003: (b"UI", b"1.2.826.0.1.3680043.8.498.1.2.3\0"),
        0x0010: (b"UI", b"1.2.840.10008.1.2.4.80"),
        0x0012: (b"UI", b"1.2.3.4\0"),
        0x0013: (b"SH", b"ORTHANC "),
    }
    meta = b"".join(_element(tag, *values[tag]) for tag in order)
    data = b"\0" * 128 + b"DICM" + meta + b"\x08\x00\x18\x00UI\x00\x00"
    described = _file_meta(memoryview(data))
    ds = dcmread(BytesIO(data), stop_before_pixels=True)
    expected = (
        ds.file_meta.MediaStorageSOPInstanceUID,
        ds.file_meta.MediaStorageSOPClassUID,
        ds.file_meta.TransferSyntaxUID,
    )
    assert described == expected
    garbage = b"\0" * 128 + b"DICM" + _element(0x0003, *values[0x0003])
    garbage += _element(0x0010, *values[0x0010]) + b"\x02\x00\x12\x00UI\xff\xff"
    assert _file_meta(garbage) == (expected[0], "", expected[2])


def test_header_reader_leaves_odd_headers_to_pydicom(tmp_path: Path) -> None:
    """An element past the transfer syntax before it (out of order), a cut header, no DICM:
    the quick reader gives up and `describe_instance` asks pydicom."""
    payload = instances(tmp_path, 1)[0]
    assert _file_meta(payload) == describe_instance(payload)
    assert _file_meta(payload[:140]) is None  # cut inside group 0002
    assert _file_meta(b"\0" * 128 + b"DIC?" + payload[132:]) is None
    sop = b"1.2.826.0.1.3680043.8.498.1.2.3\0"
    odd = b"\0" * 128 + b"DICM" + _element(0x0002, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0")
    odd += _element(0x0003, b"UI", sop) + _element(0x0012, b"UI", b"1.2.3.4\0")
    odd += _element(0x0010, b"UI", b"1.2.840.10008.1.2.1\0")
    odd += b"\x08\x00\x18\x00UI" + struct.pack("<H", len(sop)) + sop
    assert _file_meta(odd) is None
    expected = (sop.decode().rstrip("\0"), "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    assert describe_instance(odd) == expected


def test_lru_eviction_respects_pins_and_limit(tmp_path: Path) -> None:
    payloads = instances(tmp_path, 2)
    size = sum(len(p) for p in payloads)
    cache = SeriesCache(tmp_path / "cache", int(size * 2.5), 3600)
    fill(cache, "1.1", payloads)
    fill(cache, "1.2", payloads)
    pinned, created = cache.get_or_begin(STUDY, "1.1")  # a reader on 1.1: now most recent
    assert not created
    fill(cache, "1.3", payloads)  # over the limit: 1.2 (least recently used) goes
    assert cache.usage().bytes <= int(size * 2.5)
    with cache.pinned(STUDY, "1.2") as (_entry, created_again):
        assert created_again
        cache.fail(_entry, RuntimeError("PACS down"))
    assert cache.disk_bytes() <= int(size * 2.5)
    assert pinned.instances[0].read() == payloads[0]
    cache.release(pinned)
    assert cache.usage().evictions >= 1


def test_a_prefetch_never_evicts_viewed_series_and_unopened_prefetches_go_first(
    tmp_path: Path,
) -> None:
    payloads = instances(tmp_path, 2)
    size = sum(len(p) for p in payloads)
    now = [1000.0]
    cache = SeriesCache(tmp_path / "cache", size * 3, 3600, protect_viewed_s=600,
                        clock=lambda: now[0])  # fmt: skip
    fill(cache, "2.1", payloads)  # viewed by a user (any reader)
    fill(cache, "2.2", payloads, prefetch="launch-a")  # prefetched by another launch, unopened
    fill(cache, "2.3", payloads, prefetch="launch-a")
    with cache.pinned(STUDY, "2.3"):  # then opened: a viewed series now
        pass
    now[0] += 10
    assert cache.prefetch_room("launch-b") == size  # 2.2 may go, not the viewed ones
    fill(cache, "2.4", payloads, prefetch="launch-b")
    assert [cache.holds(STUDY, s) for s in ("2.1", "2.2", "2.3", "2.4")] == [
        True, False, True, True,
    ]  # fmt: skip
    assert cache.prefetch_room("launch-b") <= 0  # its own and the viewed series stay
    fill(cache, "2.5", payloads, prefetch="launch-b")  # over the limit rather than evicting
    assert all(cache.holds(STUDY, s) for s in ("2.1", "2.3", "2.4", "2.5"))
    assert cache.usage().bytes == 4 * size
    # A reader's own fill may evict: the unopened prefetches first, then the least recently
    # viewed, once nothing else is left.
    fill(cache, "2.6", payloads)
    assert not cache.holds(STUDY, "2.4") and not cache.holds(STUDY, "2.5")
    assert all(cache.holds(STUDY, s) for s in ("2.1", "2.3", "2.6"))
    now[0] += 601  # nothing viewed recently any more: a prefetch may evict (LRU)
    assert cache.prefetch_room("launch-c") == size * 3
    fill(cache, "2.7", payloads, prefetch="launch-c")
    assert not cache.holds(STUDY, "2.1")
    assert all(cache.holds(STUDY, s) for s in ("2.3", "2.6", "2.7"))


def test_ttl_purge_and_restart(tmp_path: Path) -> None:
    payloads = instances(tmp_path, 2)
    now = [1000.0]
    cache = SeriesCache(tmp_path / "cache", 10**9, 60, clock=lambda: now[0])
    fill(cache, "2.1", payloads)
    fill(cache, "2.2", payloads)
    # A new cache object on the same folder (a restart) finds the complete series again.
    again = SeriesCache(tmp_path / "cache", 10**9, 60, clock=lambda: now[0])
    assert again.usage().series == 2
    with again.pinned(STUDY, "2.1") as (entry, created):
        assert not created and [i.read() for i in entry.instances] == payloads
    now[0] += 120  # past the TTL: the series is fetched again
    with again.pinned(STUDY, "2.1") as (entry, created):
        assert created
        again.fail(entry, RuntimeError("test"))
    assert again.usage().expired == 1
    assert again.purge(expired_only=True).series == 1  # 2.2 expired too
    assert again.usage().series == 0
    fill(again, "2.3", payloads)
    result = purge_cache(tmp_path / "cache")
    assert result.series == 1 and result.bytes == sum(len(p) for p in payloads)
    assert SeriesCache(tmp_path / "cache", 10**9, 60).usage().series == 0


def test_reserved_blocks_are_released_when_a_series_completes(tmp_path: Path) -> None:
    payloads = instances(tmp_path, 3)
    cache = SeriesCache(tmp_path / "cache", 10**9, 3600)
    entry, _created = cache.get_or_begin(STUDY, "1.5")
    cache.add(entry, memoryview(payloads[0]))  # a view of a receive buffer will do
    # Filling: blocks are reserved ahead of the writes, readers see only what was added.
    assert entry.data_path.stat().st_size >= len(payloads[0])
    assert entry.instances[0].read() == payloads[0]
    for data in payloads[1:]:
        cache.add(entry, data)
    cache.finish(entry)
    cache.release(entry)
    assert entry.data_path.stat().st_size == sum(len(p) for p in payloads)
    assert cache.disk_bytes() == sum(len(p) for p in payloads)
    reloaded = SeriesCache(tmp_path / "cache", 10**9, 3600)
    with reloaded.pinned(STUDY, "1.5") as (again, created):
        assert not created
        assert [i.read() for i in again.instances] == payloads


def test_batches_wait_for_enough_bytes_or_a_short_while(tmp_path: Path) -> None:
    payloads = instances(tmp_path, 6)
    size = len(payloads[0])
    cache = SeriesCache(tmp_path / "cache", 10**9, 3600)
    entry, _created = cache.get_or_begin(STUDY, "1.6")
    batches: list[list[int]] = []

    async def read(min_bytes: int, max_wait_s: float) -> None:
        async for batch in entry.follow_batches(min_bytes, max_wait_s):
            batches.append([i.offset for i in batch])

    def producer(delay_s: float) -> None:
        for data in payloads:
            time.sleep(delay_s)
            cache.add(entry, data)
        cache.finish(entry)

    # Fast filler, three instances per batch: the first alone (time to first byte), then
    # batches of at least three, the rest at the end.
    thread = threading.Thread(target=producer, args=(0.02,))
    thread.start()
    asyncio.run(read(3 * size, 10.0))
    thread.join()
    assert len(batches[0]) == 1
    assert all(len(b) >= 3 for b in batches[1:-1])
    assert sum(len(b) for b in batches) == 6
    # A slow filler never holds an instance back longer than max_wait_s.
    cache.release(entry)
    cache.drop(STUDY)
    entry, _created = cache.get_or_begin(STUDY, "1.6")
    batches.clear()
    thread = threading.Thread(target=producer, args=(0.1,))
    thread.start()
    asyncio.run(read(10**9, 0.02))
    thread.join()
    assert [len(b) for b in batches] == [1] * 6
    cache.release(entry)
