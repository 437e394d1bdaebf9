"""Hostile and broken uploads through the real API (django.test.Client, the real model):
every answer is JSON, 200 or a 4xx with an error code; never a 500, never a hung worker.

The timeouts use pytest-timeout's thread method: a decoder stuck in C never returns to
Python, so a signal could not interrupt it. Over 300 lines: the table of hostile files is
the test, one row each.
"""

import base64
import json
import os
import random
import struct
import subprocess
import sys
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from classifier.image_structure import MAX_JPEG_MARKERS
from classifier.images import ALLOWED_FORMATS
from classifier.models import Prediction

from . import imagegen
from .helpers import assert_error as assert_json_error
from .helpers import upload

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(60, method="thread")]

PROJECT = Path(__file__).resolve().parents[2]
IMAGE_ERRORS = {"invalid_image", "image_too_large", "unsupported_format"}


def post(client, data: bytes, name: str = "upload.jpg", content_type: str = "image/jpeg"):
    return client.post("/predict", {"image": upload(data, name, content_type)})


# --- Pillow is strict in every process -----------------------------------------------


@pytest.fixture(autouse=True)
def _bomb_warnings_are_errors():
    """As in a server. pytest-django sets Django up (so configure_pillow runs) inside
    pytest's own warnings capture, which drops the filter afterwards; the fresh-process
    test below checks what start-up does."""
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def test_pillow_pixel_limit_is_ours_after_start_up(settings):
    # Pillow's default would be 89 MP, and None would disable the check.
    assert Image.MAX_IMAGE_PIXELS is not None
    assert Image.MAX_IMAGE_PIXELS == settings.CLASSIFIER_MAX_PIXELS


def test_any_django_process_configures_pillow_at_start_up():
    # Not only servers: a management command or a worker opening an image is held too.
    script = (
        "import warnings, django\n"
        "django.setup()\n"
        "from PIL import Image\n"
        "print(Image.MAX_IMAGE_PIXELS)\n"
        "try:\n"
        "    warnings.warn('x', Image.DecompressionBombWarning)\n"
        "except Image.DecompressionBombWarning:\n"
        "    print('raised')\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "webapp.settings",
        "CLASSIFIER_MAX_PIXELS": "1234567",
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.split() == ["1234567", "raised"]


# --- Every bad input we know of, with the answer it must get --------------------------


def _png_with(chunks: bytes, *, after_idat: bool = False) -> bytes:
    png = imagegen.png(0, (64, 48))
    at = len(png) - 12 if after_idat else 33  # before IEND, or right after IHDR
    return png[:at] + chunks + png[at:]


def _ztxt(size: int) -> bytes:
    return imagegen.png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"a" * size))


def _iccp(size: int) -> bytes:
    return imagegen.png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * size))


def _jpeg_xor(start: int, length: int, mask: int) -> bytes:
    """_JPEG with `length` bytes of its entropy-coded data from `start` XOR `mask`."""
    damaged = bytes(byte ^ mask for byte in _JPEG[start : start + length])
    return _JPEG[:start] + damaged + _JPEG[start + length :]


def _gif_without_frames() -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0, 0, 0) + b";"


def _gif_frame_past_screen(side: int) -> bytes:
    return imagegen.gif_declaring((10, 10), (side, side))


def _scan_bomb() -> bytes:
    return imagegen.progressive_jpeg((4000, 3000), repeat_last_scan=2000)


def _segment_flood() -> bytes:
    return _JPEG[:2] + b"\xff\xfe\x00\x02" * (MAX_JPEG_MARKERS + 1) + _JPEG[2:]


_JPEG = imagegen.jpeg(0, (320, 240))
_PNG = imagegen.png(0, (64, 48))
_GIF = imagegen.animated("GIF", [(255, 0, 0), (0, 0, 255)])
_HTML = b"<!doctype html><html><script>alert(1)</script></html>"

INVALID = (400, "invalid_image")
TOO_LARGE = (413, "image_too_large")
UNSUPPORTED = (415, "unsupported_format")


def classified(fmt: str) -> tuple[int, str]:
    return (200, fmt)


# (what, the bytes, (status, error code or the format a 200 reports))
BAD_INPUTS: list[tuple[str, Callable[[], bytes], tuple[int, str]]] = [
    ("empty file", lambda: b"", INVALID),
    ("text file", lambda: b"hello, not an image\n", INVALID),
    ("SVG", lambda: b'<svg xmlns="http://www.w3.org/2000/svg"/>', INVALID),
    ("PDF", lambda: imagegen.encode(imagegen.pattern(0), "PDF"), INVALID),
    ("JPEG cut in half", lambda: _JPEG[: len(_JPEG) // 2], INVALID),
    ("JPEG cut in its first scan", lambda: _JPEG[: _JPEG.index(b"\xff\xda") + 20], INVALID),
    ("JPEG, SOI only", lambda: _JPEG[:2], INVALID),
    ("JPEG, 200 bytes of entropy data XOR 0x55", lambda: _jpeg_xor(1400, 200, 0x55), INVALID),
    ("PNG cut in half", lambda: _PNG[: len(_PNG) // 2], INVALID),
    ("PNG, bad IHDR CRC", lambda: _PNG[:29] + bytes([_PNG[29] ^ 1]) + _PNG[30:], INVALID),
    ("GIF cut in half", lambda: _GIF[: len(_GIF) // 2], INVALID),
    ("GIF header only", lambda: _GIF[:13], INVALID),
    ("GIF with no frames", _gif_without_frames, INVALID),
    ("PNG 0x0", lambda: imagegen.png_declaring(0, 0), INVALID),
    ("GIF 0x0", lambda: imagegen.gif_declaring((0, 0), (0, 0)), INVALID),
    ("JPEG 0x0", lambda: imagegen.jpeg_declaring(0, 0), INVALID),
    ("JPEG 64x0", lambda: imagegen.jpeg_declaring(64, 0), INVALID),
    ("BMP 0x0", lambda: imagegen.bmp_declaring(0, 0), INVALID),
    ("PNG signature then HTML", lambda: imagegen.PNG_SIGNATURE + _HTML, INVALID),
    ("HTML then a PNG", lambda: _HTML + _PNG, INVALID),
    ("PNG, 8 MB zTXt chunk", lambda: _png_with(_ztxt(8_000_000)), INVALID),
    ("PNG, 8 MB zTXt after IDAT", lambda: _png_with(_ztxt(8_000_000), after_idat=True), INVALID),
    ("PNG, 8 MB iCCP chunk", lambda: _png_with(_iccp(8_000_000)), INVALID),
    ("PNG, 80 zTXt chunks of 1 MB", lambda: _png_with(_ztxt(1_000_000) * 80), INVALID),
    ("PNG declaring 100000x100000", lambda: imagegen.png_declaring(100_000, 100_000), TOO_LARGE),
    ("PNG declaring 6325x6325 (40.006 MP)", lambda: imagegen.png_declaring(6325, 6325), TOO_LARGE),
    ("GIF declaring 65535x65535", lambda: imagegen.gif_declaring((65535,) * 2, (1, 1)), TOO_LARGE),
    ("GIF frame 7000x7000, screen 10x10", lambda: _gif_frame_past_screen(7000), TOO_LARGE),
    ("GIF frame 6325x6325, screen 10x10", lambda: _gif_frame_past_screen(6325), TOO_LARGE),
    ("JPEG declaring 65500x65500", lambda: imagegen.jpeg_declaring(65_500, 65_500), TOO_LARGE),
    ("JPEG declaring 6325x6325", lambda: imagegen.jpeg_declaring(6325, 6325), TOO_LARGE),
    ("BMP declaring 100000x100000", lambda: imagegen.bmp_declaring(100_000, 100_000), TOO_LARGE),
    ("WebP canvas 16383x16383", lambda: imagegen.webp_declaring(16383, 16383), TOO_LARGE),
    ("WebP canvas 6325x6325", lambda: imagegen.webp_declaring(6325, 6325), TOO_LARGE),
    ("JPEG 12 MP, 2010 scans in 110 kB", _scan_bomb, TOO_LARGE),
    ("JPEG, 1001 empty segments", _segment_flood, TOO_LARGE),
    ("TIFF", lambda: imagegen.encode(imagegen.pattern(0), "TIFF"), UNSUPPORTED),
    ("ICO", lambda: imagegen.encode(imagegen.pattern(0), "ICO"), UNSUPPORTED),
    # Valid, if odd: classified.
    ("PNG 1x1", lambda: imagegen.png(0, (1, 1)), classified("PNG")),
    ("PNG 10000x1", lambda: imagegen.png(0, (10000, 1)), classified("PNG")),
    ("JPEG 1x10000", lambda: imagegen.jpeg(0, (1, 10000)), classified("JPEG")),
    ("GIF 1x1", lambda: imagegen.encode(Image.new("P", (1, 1)), "GIF"), classified("GIF")),
    ("JPEG with a ZIP appended", lambda: _JPEG + b"PK\x03\x04" + bytes(200), classified("JPEG")),
    ("PNG with HTML after IEND", lambda: _PNG + _HTML, classified("PNG")),
    (
        "JPEG, 50 bytes of entropy data inverted",
        lambda: _jpeg_xor(2000, 50, 0xFF),
        classified("JPEG"),
    ),
    ("animated GIF", lambda: _GIF, classified("GIF")),
]


@pytest.mark.parametrize(
    ("make", "expected"),
    [pytest.param(make, expected, id=name) for name, make, expected in BAD_INPUTS],
)
def test_bad_input_gets_a_clean_answer(client, ready_engine, make, expected):
    status, code = expected
    started = time.perf_counter()
    response = post(client, make())
    elapsed = time.perf_counter() - started
    if status == 200:
        assert response.status_code == 200, response.content[:300]
        assert response.json()["results"][0]["format"] == code
        assert Prediction.objects.count() == 1
    else:
        assert_json_error(response, status, code)
        assert Prediction.objects.count() == 0
    assert elapsed < 10, f"{elapsed:.1f} s"


def test_content_not_the_filename_or_content_type_decides(client, ready_engine):
    response = post(client, imagegen.png(1), "photo.jpg", "image/jpeg")
    assert response.status_code == 200
    assert response.json()["results"][0]["format"] == "PNG"
    tiff = imagegen.encode(imagegen.pattern(0), "TIFF")
    body = assert_json_error(
        post(client, tiff, "photo.png", "image/png"), 415, "unsupported_format"
    )
    assert "TIFF" in body["error"]["message"]


def test_one_bomb_among_good_images_rejects_the_request_and_stores_nothing(client, ready_engine):
    files = [
        upload(imagegen.jpeg(0), "good.jpg"),
        upload(imagegen.png_declaring(100_000, 100_000), "bomb.png", ""),
    ]
    body = assert_json_error(client.post("/predict", {"image": files}), 413, "image_too_large")
    assert "Image 2 (bomb.png)" in body["error"]["message"]
    assert Prediction.objects.count() == 0


# --- The same limits for base64 in JSON -----------------------------------------------


def post_json(client, images: list[bytes]):
    payload = {"images": [base64.b64encode(data).decode() for data in images]}
    return client.post("/predict", json.dumps(payload), content_type="application/json")


def test_json_bomb_is_413(client, ready_engine):
    response = post_json(client, [imagegen.png_declaring(6325, 6325)])
    assert_json_error(response, 413, "image_too_large")


def test_json_image_over_the_byte_limit_is_413(client, ready_engine, settings):
    settings.CLASSIFIER_MAX_IMAGE_BYTES = 1000
    assert_json_error(post_json(client, [imagegen.jpeg(0)]), 413, "image_too_large")


def test_json_body_over_the_request_limit_is_413(client, ready_engine, settings):
    settings.CLASSIFIER_MAX_REQUEST_BYTES = 2000
    response = post_json(client, [imagegen.jpeg(0, (640, 480))])
    assert_json_error(response, 413, "request_too_large")


def test_json_with_too_many_images_is_413(client, ready_engine, settings):
    settings.CLASSIFIER_MAX_IMAGES = 2
    response = post_json(client, [imagegen.png(0, (8, 8))] * 3)
    assert_json_error(response, 413, "too_many_images")


# --- Fuzzing: mutated JPEG, PNG and GIF files, a fixed seed --------------------------

FUZZ_SEED = 20261125
FUZZ_CASES = 360
INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF)


def jpeg_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, bytes) of header fields worth editing: each segment's length, and the
    frame header's height and width. A well-formed source is walked up to its first scan."""
    fields, at = [], 2
    while at + 4 <= len(data) and data[at] == 0xFF and data[at + 1] != 0xDA:
        fields.append((at + 2, 2))
        if data[at + 1] in (0xC0, 0xC2):  # SOF0, SOF2
            fields += [(at + 5, 2), (at + 7, 2)]
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return fields


def png_fields(data: bytes) -> list[tuple[int, int]]:
    """Each chunk's length; IHDR's width, height, bit depth, colour type, interlace."""
    fields, at = [], 8
    while at + 8 <= len(data):
        fields.append((at, 4))
        if data[at + 4 : at + 8] == b"IHDR":
            fields += [(at + 8, 4), (at + 12, 4), (at + 16, 1), (at + 17, 1), (at + 20, 1)]
        at += 12 + int.from_bytes(data[at : at + 4], "big")
    return fields


def gif_fields(data: bytes) -> list[tuple[int, int]]:
    """The screen's width and height; each frame's left, top, width, height, flags and
    LZW code size. A well-formed source is walked block by block."""
    fields = [(6, 2), (8, 2)]
    if len(data) < 13:
        return fields
    at = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while at < len(data) and data[at] in (0x21, 0x2C):
        if data[at] == 0x2C:
            fields += [(at + offset, 2) for offset in (1, 3, 5, 7)] + [(at + 9, 1)]
            flags, at = data[at + 9], at + 10
            at += (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1
            fields.append((at - 1, 1))
        else:
            at += 2
        while at < len(data) and data[at]:  # sub-blocks
            at += data[at] + 1
        at += 1
    return fields


def _fix_png_crcs(data: bytearray) -> None:
    """Recompute each chunk's CRC, so that an edited field is read, not refused."""
    at = 8
    while at + 12 <= len(data):
        end = at + 8 + int.from_bytes(data[at : at + 4], "big")
        if end + 4 > len(data):
            return
        data[end : end + 4] = struct.pack(">I", zlib.crc32(data[at + 4 : end]))
        at = end + 4


def mutate(rng: random.Random, fmt: str, data: bytes) -> tuple[bytes, str]:
    out = bytearray(data)
    operation = rng.choice(["flip", "insert", "delete", "truncate", "repeat", "field", "field"])
    at = rng.randrange(len(out))
    if operation == "flip":
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif operation == "insert":
        out[at:at] = rng.randbytes(rng.randint(1, 16))
    elif operation == "delete":
        del out[at : at + rng.randint(1, 64)]
    elif operation == "truncate":
        del out[max(1, at) :]
    elif operation == "repeat":  # a chunk, scan or sub-block over again
        out[at:at] = out[at : at + rng.randint(1, 200)] * rng.randint(1, 20)
    else:
        walk = {"JPEG": jpeg_fields, "PNG": png_fields, "GIF": gif_fields}[fmt]
        offset, width = rng.choice(walk(data) or [(at, 1)])  # no field left: any byte
        value = rng.choice(INTERESTING) % (1 << (8 * width))
        order = "little" if fmt == "GIF" else "big"
        out[offset : offset + width] = value.to_bytes(width, order)
        if fmt == "PNG":
            _fix_png_crcs(out)
    return bytes(out), operation


def fuzz_sources() -> list[tuple[str, bytes]]:
    photo = imagegen.pattern(3, (64, 48))
    frames = [photo.convert("P"), imagegen.pattern(4, (64, 48)).convert("P")]
    return [
        ("JPEG", imagegen.encode(photo, "JPEG", quality=85)),
        ("JPEG", imagegen.encode(photo, "JPEG", quality=85, progressive=True)),
        ("PNG", imagegen.encode(photo, "PNG")),
        ("PNG", imagegen.encode(frames[0], "PNG", transparency=0)),
        ("GIF", imagegen.encode(frames[0], "GIF", save_all=True, append_images=frames[1:])),
    ]


def fuzz_cases() -> list[tuple[str, bytes]]:
    rng = random.Random(FUZZ_SEED)
    sources = fuzz_sources()
    cases = []
    for number in range(FUZZ_CASES):
        fmt, data = sources[number % len(sources)]
        operations = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            if len(data) > 1:
                data, operation = mutate(rng, fmt, data)
                operations.append(operation)
        cases.append((f"#{number} {fmt} {'+'.join(operations)}", data))
    return cases


@pytest.mark.timeout(180, method="thread")
def test_fuzzed_files_get_200_or_a_json_4xx_and_the_server_stays_well(
    client, ready_engine, settings
):
    settings.CLASSIFIER_BATCH_WAIT_MS = 0  # one client: no company to wait for
    outcomes: Counter[str] = Counter()
    wrong = []
    for name, data in fuzz_cases():
        response = post(client, data)
        status = response.status_code
        is_json = response["Content-Type"] == "application/json"
        body = response.json() if is_json else {}
        if status == 200 and body.get("success") is True:
            outcomes["200"] += 1
            if body["results"][0]["format"] not in ALLOWED_FORMATS:
                wrong.append((name, status, body["results"][0]["format"]))
        elif 400 <= status < 500 and body.get("success") is False:
            code = body["error"]["code"]
            outcomes[f"{status} {code}"] += 1
            if code not in IMAGE_ERRORS:
                wrong.append((name, status, code))
        else:
            wrong.append((name, status, response.content[:200]))
    assert not wrong, wrong
    # The mutants must reach both sides, or this test would prove little.
    assert outcomes["200"] >= FUZZ_CASES // 10, outcomes
    assert outcomes["400 invalid_image"] >= FUZZ_CASES // 4, outcomes
    assert Prediction.objects.count() == outcomes["200"]  # rejected ones left no row
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    response = post(client, imagegen.jpeg(5, (500, 375)))
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 5
