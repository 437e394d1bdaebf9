"""Bounds on an image file's structure, checked before Pillow parses it: what pixels and
bytes do not bound (decoding passes, segments, chunks). No Django imports."""

from __future__ import annotations

import re

from .errors import ImageTooLarge, InvalidImage

# Each scan of a progressive JPEG is another pass over every block of the picture, and a
# scan can take a few bytes: a small file can keep a decoder busy for minutes, whatever
# the pixel limit. Encoders write 1 (baseline) to about 20 (18 for progressive CMYK); the
# limit leaves room above that, and what it costs at 40 MP is in docs/benchmarks.md.
MAX_JPEG_SCANS = 100
# Pillow parses a JPEG's segments in Python, one at a time: millions of empty ones take
# seconds. Encoders write tens (a table or two per scan, metadata in pieces of <= 64 kB).
MAX_JPEG_MARKERS = 1000
# Fill bytes (0xFF) before a marker: encoders write none or a few; Pillow's Python
# parser reads them one at a time.
MAX_JPEG_FILL = 64 * 1024
# Pillow parses a PNG's chunks in Python too. A 10 MB PNG in libpng's 8 kB IDAT chunks
# has ~1300.
MAX_PNG_CHUNKS = 20_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What Pillow takes for a JPEG (SOI, then a marker).
JPEG_START = b"\xff\xd8\xff"
# A marker as libjpeg finds one: 0xFF, any fill 0xFFs, then a code that is neither a
# stuffed zero nor a restart marker; entropy-coded data cannot contain one. (Written with
# a literal first byte, which lets `re` skip ahead to it, much faster than `\xff+`.)
_JPEG_MARKER = re.compile(rb"\xff\xff*([^\x00\xd0-\xd7\xff])")
_JPEG_EOI, _JPEG_SOS, _JPEG_TEM = 0xD9, 0xDA, 0x01


def check_structure(data: bytes) -> int:
    """Refuse a JPEG or PNG whose structure alone would keep the decoders busy. A JPEG's
    count of scans (0 for other formats): more than one makes libjpeg keep every DCT
    coefficient of the picture until the last (decode_memory.decode_cost)."""
    if data.startswith(JPEG_START):
        return check_jpeg_markers(data)
    if data.startswith(PNG_SIGNATURE):
        check_png_chunks(data)
    return 0


def check_jpeg_markers(data: bytes) -> int:
    """Refuse a JPEG whose structure alone would keep the decoders busy for seconds, before
    Pillow and libjpeg parse it: over MAX_JPEG_SCANS scans or MAX_JPEG_MARKERS markers.

    Markers are found as libjpeg finds them: a segment is skipped by its length, anything
    else up to the next marker, until EOI. So an EXIF thumbnail's scans or bytes after the
    image do not count, and no padding or TEM marker can hide a scan from the count.
    Returns the number of scans."""
    markers = scans = 0
    position = 2  # after SOI
    while match := _JPEG_MARKER.search(data, position):
        marker, position = match.group(1)[0], match.end()
        if match.end() - match.start() - 2 > MAX_JPEG_FILL:
            raise InvalidImage(
                f"The JPEG has more than {MAX_JPEG_FILL} fill bytes before a marker."
            )
        if marker == _JPEG_EOI:
            return scans
        markers += 1
        scans += marker == _JPEG_SOS
        if scans > MAX_JPEG_SCANS:
            raise ImageTooLarge(
                f"The JPEG has more than {MAX_JPEG_SCANS} scans (decoding passes); "
                f"the limit is {MAX_JPEG_SCANS}."
            )
        if markers > MAX_JPEG_MARKERS:
            raise ImageTooLarge(
                f"The JPEG has more than {MAX_JPEG_MARKERS} markers; "
                f"the limit is {MAX_JPEG_MARKERS}."
            )
        if marker != _JPEG_TEM:  # the one marker without a length, besides RSTn
            # libjpeg reads the 2 length bytes even when they say less.
            position += max(2, int.from_bytes(data[position : position + 2], "big"))
    return scans


def check_png_chunks(data: bytes) -> None:
    """Refuse a PNG of more than MAX_PNG_CHUNKS chunks before Pillow walks them. Chunks are
    skipped by their lengths, up to IEND; what a bad length leads to is Pillow's to find."""
    position, chunks = len(PNG_SIGNATURE), 0
    while position + 8 <= len(data):
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise ImageTooLarge(
                f"The PNG has more than {MAX_PNG_CHUNKS} chunks; the limit is {MAX_PNG_CHUNKS}."
            )
        if data[position + 4 : position + 8] == b"IEND":
            return
        position += 12 + int.from_bytes(data[position : position + 4], "big")
