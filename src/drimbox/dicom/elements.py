"""Walking little-endian DICOM datasets straight from their bytes.

Where the box needs a handful of elements out of many datasets (the two UIDs of each instance
dcmtk's storescp writes, the UIDs and number of each C-FIND answer), pydicom's parsing and value
conversion cost ~30× more than skipping the elements here. Callers fall back to pydicom for
what this does not follow (big endian, deflated, an implicit-length sequence inside UN).
"""

from __future__ import annotations

import struct
from collections.abc import Container

LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")

Element = tuple[bytes, int, int]
"""(VR as encoded, b"" when implicit; offset of the value; length, UNDEFINED for a sequence
of undefined length)."""


class TruncatedData(ValueError):
    """The bytes end before an element, item or sequence does."""


def walk(
    data: bytes,
    pos: int,
    end: int,
    explicit: bool,
    found: dict[int, Element] | None = None,
    wanted: Container[int] | None = None,
    *,
    top: bool = True,
) -> int:
    """Skip elements from `pos`, recording the top-level ones in `wanted` (all when None) into
    `found`; returns where an item delimiter ended the walk or (top level) where the last
    element ends, which is past `end` when the data is cut. Raises `ValueError` for a repeated
    top-level tag or what is not understood, `TruncatedData` for an item or sequence cut short.
    """
    while pos + 8 <= end:
        group, element = _TAG.unpack_from(data, pos)
        tag = group << 16 | element
        if tag == _ITEM_END:
            return pos + 8
        if explicit:
            vr = data[pos + 4 : pos + 6]
            if vr in LONG_VRS:
                (length,) = _U32.unpack_from(data, pos + 8)
                value_at = pos + 12
            else:
                (length,) = _U16.unpack_from(data, pos + 6)
                value_at = pos + 8
        else:
            vr = b""
            (length,) = _U32.unpack_from(data, pos + 4)
            value_at = pos + 8
        if top and found is not None and (wanted is None or tag in wanted):
            if tag in found:
                raise ValueError(f"element ({group:04X},{element:04X}) repeated")
            found[tag] = (vr, value_at, length)
        if length == UNDEFINED:
            pos = _skip_sequence(data, value_at, end, explicit)
        else:
            pos = value_at + length
    if top:
        return pos
    raise TruncatedData("élément non terminé")


def _skip_sequence(data: bytes, pos: int, end: int, explicit: bool) -> int:
    """Past an undefined-length sequence starting at its first item."""
    while pos + 8 <= end:
        group, element = _TAG.unpack_from(data, pos)
        (length,) = _U32.unpack_from(data, pos + 4)
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return pos + 8
        if tag != _ITEM:
            raise ValueError("not an item")
        if length == UNDEFINED:
            pos = walk(data, pos + 8, end, explicit, top=False)
        else:
            pos += 8 + length
    raise TruncatedData("séquence non terminée")
