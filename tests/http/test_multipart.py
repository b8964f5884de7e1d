"""The incremental multipart/related reader: any chunking gives the same parts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drimbox.http.multipart import (
    MultipartError,
    MultipartReader,
    boundary_of,
    closing,
    new_boundary,
    part_header,
)


def body_of(boundary: str, payloads: list[bytes]) -> bytes:
    out = b""
    for index, payload in enumerate(payloads):
        out += (b"\r\n" if index else b"") + part_header(boundary, "application/dicom") + payload
    return out + closing(boundary)


@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    st.lists(st.integers(1, 97), min_size=1, max_size=30),
)
def test_any_chunking_gives_the_same_parts(payloads: list[bytes], cuts: list[int]) -> None:
    boundary = new_boundary()
    body = body_of(boundary, payloads)
    reader = MultipartReader(boundary)
    parts = []
    position = 0
    index = 0
    while position < len(body):
        size = cuts[index % len(cuts)]
        parts.extend(reader.feed(body[position : position + size]))
        position += size
        index += 1
    reader.close()
    assert [p.body for p in parts] == payloads
    assert all(p.content_type == "application/dicom" for p in parts)


def test_truncated_and_malformed() -> None:
    boundary = "b"
    body = body_of(boundary, [b"one", b"two"])
    reader = MultipartReader(boundary)
    list(reader.feed(body[:-10]))
    with pytest.raises(MultipartError):
        reader.close()
    with pytest.raises(MultipartError):
        list(MultipartReader("b").feed(b"--b\r\nno header end" + b"\r\n--b--"))
    assert boundary_of('multipart/related; type="application/dicom"; boundary="a b"') == "a b"
    assert boundary_of("multipart/related;boundary=xyz;type=x") == "xyz"
    with pytest.raises(MultipartError):
        boundary_of("multipart/related")
