"""A structural check of a TIFF file before OpenSlide parses it.

OpenSlide 4.0.1 aborts the whole process (GLib's ``g_malloc`` failing on a size taken from the
file) when a tile or strip byte count is larger than memory can hold: it allocates a buffer of
that size to hash the smallest level, before it could notice the count runs past the end of
the file. A classic TIFF whose byte counts are typed LONG8 gets there with any count, since
OpenSlide then reads 8 bytes from a 4-byte field. No caller can catch an abort, so
:func:`tiff_defect` walks the file's IFDs (a few KB of reads) and names such a defect first;
everything else is left to OpenSlide, which copes with much (a wrong count on a tag it does not
use, a damaged macro image) and reports the rest itself.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

#: StripOffsets, StripByteCounts, TileOffsets, TileByteCounts.
_OFFSET_TAGS = frozenset({273, 324})
_COUNT_TAGS = frozenset({279, 325})
#: Tile byte counts: OpenSlide allocates each tile's count to hash the smallest level.
_TILE_BYTE_COUNTS = 325
#: 64-bit integer field types (LONG8, SLONG8): BigTIFF only; OpenSlide reads them from a
#: classic TIFF's 4-byte field anyway (IFD8, type 18, it refuses).
_WIDE_TYPES = frozenset({16, 17})
#: Bytes per value of the types a byte count may have.
_COUNT_TYPE_FORMATS = {3: "H", 4: "I", 16: "Q"}

#: A byte count at least this large that also runs past the end of the file is refused: an
#: allocation of that size may fail, and OpenSlide then aborts (smaller impossible counts make
#: OpenSlide report a read error, which it does).
HUGE_BYTE_COUNT = 2**31

#: Most IFDs and entries per IFD walked (real slides have a few IFDs of a few dozen entries).
MAX_IFDS = 10_000
MAX_ENTRIES = 4_096


def is_tiff(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) starts a TIFF or BigTIFF."""
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def tiff_defect(path: Path) -> str | None:
    """The first defect of the TIFF at ``path`` that would make OpenSlide abort, or ``None``
    (also for a file that is not a TIFF, and for an IFD chain that breaks off: OpenSlide
    reports those itself).

    Raises
    ------
    OSError
        If the file cannot be read.
    """
    with path.open("rb") as handle:
        file_size = handle.seek(0, 2)
        handle.seek(0)
        header = handle.read(16)
        if not is_tiff(header):
            return None
        order = "<" if header[:2] == b"II" else ">"
        big = header[2:4] in (b"+\x00", b"\x00+")
        offset_format, entry_size = ("Q", 20) if big else ("I", 12)
        offset_size = struct.calcsize(offset_format)
        first = 8 if big else 4
        if len(header) < first + offset_size:
            return None
        (next_ifd,) = struct.unpack_from(order + offset_format, header, first)
        seen: set[int] = set()
        number = 0
        while next_ifd and next_ifd not in seen and number < MAX_IFDS:
            seen.add(next_ifd)
            handle.seek(next_ifd)
            count_bytes = handle.read(8 if big else 2)
            if len(count_bytes) < (8 if big else 2):
                return None
            (entries,) = struct.unpack(order + ("Q" if big else "H"), count_bytes)
            if entries > MAX_ENTRIES:
                return None
            table = handle.read(entries * entry_size + offset_size)
            if len(table) < entries * entry_size + offset_size:
                return None
            for index in range(entries):
                start = index * entry_size
                code, field_type = struct.unpack_from(order + "HH", table, start)
                if code not in _OFFSET_TAGS and code not in _COUNT_TAGS:
                    continue
                if not big and field_type in _WIDE_TYPES:
                    return (
                        f"IFD {number} tag {code} has the 64-bit field type {field_type}, "
                        "which only BigTIFF allows"
                    )
                if code == _TILE_BYTE_COUNTS:
                    (count,) = struct.unpack_from(order + offset_format, table, start + 4)
                    value_field = table[start + 4 + offset_size : start + entry_size]
                    largest = _largest_count(
                        handle, order, field_type, count, value_field, file_size
                    )
                    if largest is not None and largest >= HUGE_BYTE_COUNT and largest > file_size:
                        return (
                            f"IFD {number} tag {code} gives a byte count of {largest:,} in a "
                            f"{file_size:,}-byte file"
                        )
            (next_ifd,) = struct.unpack_from(order + offset_format, table, entries * entry_size)
            number += 1
    return None


def _largest_count(
    handle: BinaryIO,
    order: str,
    field_type: int,
    count: int,
    value_field: bytes,
    file_size: int,
) -> int | None:
    """The largest of an entry's byte counts, or ``None`` if they cannot be read (an unusual
    type, or more values than the file holds: OpenSlide refuses those itself)."""
    value_format = _COUNT_TYPE_FORMATS.get(field_type)
    if value_format is None or count == 0:
        return None
    size = struct.calcsize(value_format) * count
    if size <= len(value_field):
        data = value_field[:size]
    else:
        (offset,) = struct.unpack(order + ("Q" if len(value_field) == 8 else "I"), value_field)
        if offset + size > file_size:
            return None
        handle.seek(offset)
        data = handle.read(size)
        if len(data) < size:
            return None
    return max(struct.unpack(f"{order}{count}{value_format}", data))
