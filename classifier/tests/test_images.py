"""The image decoder's contract (classifier.images), one test per kind of image accepted or
refused. Over 300 lines because each format, limit and oddity is a test of its own; the
hostile inputs (fuzzing, polyglots) are in test_hostile_input.py."""

import hashlib
import io
import struct
import time

import numpy as np
import pytest
from PIL import Image, ImageFile

from classifier.errors import ImageTooLarge, InvalidImage, UnsupportedFormat
from classifier.image_structure import (
    MAX_JPEG_FILL,
    MAX_JPEG_MARKERS,
    MAX_JPEG_SCANS,
    MAX_PNG_CHUNKS,
)
from classifier.images import (
    HASH_ASIDE_BYTES,
    configure_pillow,
    decode_image,
)

from . import imagegen

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_pixels": 40_000_000}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_allowed_formats_decode_to_the_model_input(fmt):
    data = imagegen.encode(imagegen.pattern(1, (300, 200)), fmt)
    decoded = decode_image(data, **LIMITS)
    assert decoded.pixels.shape == (224, 224, 3)
    assert decoded.pixels.dtype == np.uint8
    assert (decoded.width, decoded.height) == (300, 200)
    assert decoded.format == fmt
    assert len(decoded.sha256) == 64
    assert Image.open(io.BytesIO(decoded.thumbnail)).format == "JPEG"
    assert max(Image.open(io.BytesIO(decoded.thumbnail)).size) <= 160


def test_ordinary_images_are_resized_like_the_classic_keras_example():
    image = imagegen.pattern(2, (500, 375))
    data = imagegen.encode(image, "PNG")
    expected = np.asarray(image.resize((224, 224), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(decode_image(data, **LIMITS).pixels, expected)


def test_big_jpeg_is_decoded_at_reduced_scale_but_keeps_its_reported_size():
    data = imagegen.jpeg(1, (4000, 3000))
    decoded = decode_image(data, **LIMITS)
    assert (decoded.width, decoded.height) == (4000, 3000)
    full = np.asarray(
        Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC),
        dtype=np.float32,
    )
    # Draft mode changes pixels slightly, not the picture.
    assert np.abs(decoded.pixels.astype(np.float32) - full).mean() < 3.0


@pytest.mark.parametrize("aside", [False, True])
def test_sha256_is_of_the_upload_small_or_hashed_while_decoding(aside):
    # Uploads from HASH_ASIDE_BYTES on are hashed in another thread during the decode.
    data = imagegen.encode(imagegen.pattern(3, (300, 200)), "PNG")
    if aside:
        data += bytes(HASH_ASIDE_BYTES)  # trailing bytes: still this upload's hash
    assert (len(data) >= HASH_ASIDE_BYTES) is aside
    assert decode_image(data, **LIMITS).sha256 == hashlib.sha256(data).hexdigest()


def test_transparent_png_is_composited_on_white():
    rgba = Image.new("RGBA", (50, 50), (255, 0, 0, 0))
    decoded = decode_image(imagegen.encode(rgba, "PNG"), **LIMITS)
    assert decoded.pixels.min() == 255


def test_empty_file_is_rejected():
    with pytest.raises(InvalidImage, match="empty"):
        decode_image(b"", **LIMITS)


def test_text_file_is_not_an_image():
    with pytest.raises(InvalidImage) as caught:
        decode_image(b"<html>hello</html>", **LIMITS)
    assert caught.value.status == 400


def test_tiff_is_refused_as_unsupported():
    with pytest.raises(UnsupportedFormat) as caught:
        decode_image(imagegen.encode(imagegen.pattern(0), "TIFF"), **LIMITS)
    assert caught.value.status == 415
    assert "TIFF" in caught.value.message


def test_truncated_jpeg_is_rejected_with_400():
    data = imagegen.jpeg(0, (640, 480))
    with pytest.raises(InvalidImage) as caught:
        decode_image(data[: len(data) // 2], **LIMITS)
    assert caught.value.status == 400


def test_too_many_pixels_is_rejected_before_decoding():
    data = imagegen.encode(Image.new("RGB", (3000, 2000)), "PNG")
    with pytest.raises(ImageTooLarge) as caught:
        decode_image(data, max_bytes=LIMITS["max_bytes"], max_pixels=5_000_000)
    assert caught.value.status == 413


def test_too_many_bytes_is_rejected():
    with pytest.raises(ImageTooLarge):
        decode_image(imagegen.jpeg(0), max_bytes=100, max_pixels=LIMITS["max_pixels"])


def test_near_square_jpeg_keeps_its_orientation_when_decoded_at_reduced_scale():
    # Draft mode decodes 1000x999 as 250x250: its size must still be reported as stored.
    decoded = decode_image(imagegen.jpeg(0, (1000, 999)), **LIMITS)
    assert (decoded.width, decoded.height) == (1000, 999)


# --- What the model sees, mode by mode: the 224x224 uint8 array itself -------------------

WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)
# The halves of the model input, clear of the bicubic ringing around a sharp middle edge.
LEFT, RIGHT = np.s_[:, :100], np.s_[:, 124:]


def model_input(data: bytes) -> np.ndarray:
    pixels = decode_image(data, **LIMITS).pixels
    assert pixels.shape == (224, 224, 3)
    assert pixels.dtype == np.uint8
    return pixels


def assert_colour(region: np.ndarray, colour: tuple[int, int, int], tolerance: int = 0):
    worst = np.abs(region.reshape(-1, 3).astype(int) - np.array(colour)).max()
    assert worst <= tolerance, f"{region.reshape(-1, 3)[0].tolist()} is not {colour}"


def halves(mode: str, left, right, size: tuple[int, int] = (64, 48)) -> Image.Image:
    width, height = size
    image = Image.new(mode, size, left)
    # An image, not a colour: pasting a colour into I;16 writes zeros.
    image.paste(Image.new(mode, (width - width // 2, height), right), (width // 2, 0))
    return image


def two_colour_palette(left: int, right: int) -> Image.Image:
    image = halves("P", left, right)
    image.putpalette(RED + BLUE)  # entry 0 red, 1 blue
    return image


@pytest.mark.parametrize(("fmt", "tolerance"), [("PNG", 0), ("JPEG", 2)])
def test_grayscale_gives_three_equal_channels(fmt, tolerance):
    pixels = model_input(imagegen.encode(halves("L", 30, 200, (640, 480)), fmt))
    assert_colour(pixels[LEFT], (30, 30, 30), tolerance)
    assert_colour(pixels[RIGHT], (200, 200, 200), tolerance)


def test_16_bit_grayscale_png_is_scaled_to_8_bits_not_clipped():
    data = imagegen.encode(halves("I;16", 0x1000, 0xC000), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    pixels = model_input(data)
    assert_colour(pixels[LEFT], (16, 16, 16))  # 4096 / 257
    assert_colour(pixels[RIGHT], (191, 191, 191))  # 49152 / 257


def test_16_bit_grayscale_png_with_a_transparent_level_is_white_there():
    pixels = model_input(
        imagegen.encode(halves("I;16", 0x1000, 0xC000), "PNG", transparency=0x1000)
    )
    assert_colour(pixels[LEFT], WHITE)
    assert_colour(pixels[RIGHT], (191, 191, 191))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_a_transparent_entry_is_white_there(fmt):
    pixels = model_input(imagegen.encode(two_colour_palette(0, 1), fmt, transparency=0))
    assert_colour(pixels[LEFT], WHITE)
    assert_colour(pixels[RIGHT], BLUE)


def test_palette_with_partly_transparent_entries_is_blended_with_white():
    # PNG tRNS for a palette: entry 0 fully transparent, entry 1 half.
    data = imagegen.encode(two_colour_palette(0, 1), "PNG", transparency=b"\x00\x80")
    pixels = model_input(data)
    assert_colour(pixels[LEFT], WHITE)
    assert_colour(pixels[RIGHT], (127, 127, 255), tolerance=1)


@pytest.mark.parametrize(
    ("mode", "transparent", "opaque"), [("L", 30, 200), ("RGB", (10, 20, 30), RED)]
)
def test_a_transparent_colour_is_white(mode, transparent, opaque):
    image = halves(mode, transparent, opaque)
    pixels = model_input(imagegen.encode(image, "PNG", transparency=transparent))
    assert_colour(pixels[LEFT], WHITE)
    expected = opaque if mode == "RGB" else (opaque,) * 3
    assert_colour(pixels[RIGHT], expected)


def test_grayscale_with_alpha_is_composited_on_white():
    pixels = model_input(imagegen.encode(halves("LA", (50, 128), (50, 255)), "PNG"))
    assert_colour(pixels[LEFT], (152, 152, 152), tolerance=1)  # 50 * 128/255 + 255 * 127/255
    assert_colour(pixels[RIGHT], (50, 50, 50))


@pytest.mark.parametrize(
    ("fmt", "encode"),
    [
        ("PNG", lambda image: imagegen.encode(image, "PNG")),
        ("WEBP", lambda image: imagegen.encode(image, "WEBP", lossless=True)),
        ("BMP", imagegen.bmp_with_alpha),
    ],
)
def test_rgba_is_composited_on_white(fmt, encode):
    data = encode(halves("RGBA", (255, 0, 0, 128), (0, 0, 255, 0)))
    assert Image.open(io.BytesIO(data)).mode == "RGBA"
    pixels = model_input(data)
    assert_colour(pixels[LEFT], (255, 127, 127), tolerance=1)
    assert_colour(pixels[RIGHT], WHITE)


@pytest.mark.parametrize("progressive", [False, True])
def test_cmyk_jpeg_with_adobe_inverted_values(progressive):
    # Pillow writes CMYK JPEGs as Photoshop does: an Adobe marker and inverted values.
    image = halves("CMYK", (0, 255, 255, 0), (0, 0, 0, 128), (640, 480))
    data = imagegen.encode(image, "JPEG", quality=95, progressive=progressive)
    assert b"Adobe" in data
    pixels = model_input(data)
    assert_colour(pixels[LEFT], RED, tolerance=3)
    assert_colour(pixels[RIGHT], (127, 127, 127), tolerance=3)


QUADRANT_COLOURS = np.array([[RED, (0, 255, 0)], [BLUE, (255, 255, 0)]], dtype=np.uint8)
# EXIF orientation -> how the stored picture must be turned to be shown (EXIF 2.3, 4.6.4).
SHOWN = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # turned 180
    4: lambda a: a[::-1, :],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the top-left diagonal
    6: lambda a: np.rot90(a, -1),  # turned 90 clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the other diagonal
    8: lambda a: np.rot90(a, 1),  # turned 90 counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(SHOWN))
def test_exif_orientation_is_applied(orientation):
    # A 2x2 grid of colours, stored 300x200 in a JPEG with this orientation.
    stored = Image.fromarray(QUADRANT_COLOURS).resize((300, 200), Image.Resampling.NEAREST)
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_image(imagegen.encode(stored, "JPEG", quality=95, exif=exif), **LIMITS)
    turned = orientation >= 5
    assert (decoded.width, decoded.height) == ((200, 300) if turned else (300, 200))
    expected = SHOWN[orientation](QUADRANT_COLOURS)
    for row, rows in enumerate((np.s_[20:90], np.s_[134:204])):
        for column, columns in enumerate((np.s_[20:90], np.s_[134:204])):
            assert_colour(decoded.pixels[rows, columns], tuple(expected[row, column]), 6)


@pytest.mark.parametrize(
    ("fmt", "params", "tolerance"),
    [("GIF", {}, 0), ("WEBP", {}, 6), ("PNG", {}, 0), ("MPO", {"quality": 95}, 3)],
)
def test_animated_images_show_their_first_frame_only(fmt, params, tolerance):
    data = imagegen.animated(fmt, [RED, BLUE, (0, 255, 0)], **params)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    decoded = decode_image(data, **LIMITS)
    assert decoded.format == ("JPEG" if fmt == "MPO" else fmt)
    assert_colour(decoded.pixels, RED, tolerance)  # nothing of the later frames


@pytest.mark.parametrize("size", [(1, 1), (10000, 1), (1, 10000)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
def test_one_pixel_and_one_line_images_are_classified_stretched(fmt, size):
    decoded = decode_image(imagegen.encode(Image.new("RGB", size, RED), fmt), **LIMITS)
    assert (decoded.width, decoded.height) == size
    assert_colour(decoded.pixels, RED, tolerance=2)


# --- Limits: Pillow's decompression-bomb check, JPEG scans and markers ------------------

# decode_image's own pixel check out of the way, to see Pillow's.
NO_OWN_PIXEL_LIMIT = {"max_bytes": LIMITS["max_bytes"], "max_pixels": 10**12}


@pytest.fixture
def pillow_limit_10k(monkeypatch):
    """configure_pillow(10_000) for one test; the start-up limit is restored after it."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    configure_pillow(10_000)


def test_pillow_limit_is_strict_at_the_configured_number_of_pixels(pillow_limit_10k):
    assert decode_image(imagegen.png(0, (100, 100)), **NO_OWN_PIXEL_LIMIT).width == 100
    # Just over: Pillow only warns by default. Twice over: Pillow's own error.
    for size in [(101, 100), (300, 300)]:
        with pytest.raises(ImageTooLarge) as caught:
            decode_image(imagegen.png(0, size), **NO_OWN_PIXEL_LIMIT)
        assert caught.value.status == 413
        assert "10000 pixels" in caught.value.message


@pytest.mark.parametrize("size", [(101, 100), (1000, 1000)], ids=["just-over", "far-over"])
@pytest.mark.parametrize(
    "make",
    [
        imagegen.png_declaring,
        imagegen.jpeg_declaring,
        imagegen.bmp_declaring,
        imagegen.webp_declaring,
        lambda w, h: imagegen.gif_declaring((w, h), (1, 1)),
        lambda w, h: imagegen.gif_declaring((10, 10), (w, h)),  # a frame past the screen
    ],
    ids=["png", "jpeg", "bmp", "webp", "gif-screen", "gif-frame"],
)
def test_declared_size_over_the_pillow_limit_is_413(pillow_limit_10k, make, size):
    with pytest.raises(ImageTooLarge) as caught:
        decode_image(make(*size), **NO_OWN_PIXEL_LIMIT)
    assert caught.value.status == 413


@pytest.mark.parametrize("bomb", [Image.DecompressionBombWarning, Image.DecompressionBombError])
def test_a_bomb_found_while_decoding_is_413_too(monkeypatch, bomb):
    # Pillow checks a frame's size when it reaches the frame; for the first frame of our
    # formats that is at open today, but a decoder may find one while loading.
    def load(self):
        raise bomb("Image size (50000000 pixels) exceeds limit of 40000000 pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(ImageTooLarge) as caught:
        decode_image(imagegen.png(0, (64, 48)), **LIMITS)
    assert caught.value.status == 413


def test_progressive_jpeg_up_to_the_scan_limit_decodes_and_one_more_is_413():
    plain = imagegen.progressive_jpeg((64, 48))
    assert plain.count(b"\xff\xda") == 10  # Pillow's (libjpeg's) progressive script
    extra = MAX_JPEG_SCANS - 10
    assert decode_image(imagegen.progressive_jpeg((64, 48), repeat_last_scan=extra), **LIMITS)
    with pytest.raises(ImageTooLarge, match="scans"):
        decode_image(imagegen.progressive_jpeg((64, 48), repeat_last_scan=extra + 1), **LIMITS)


@pytest.mark.timeout(20, method="thread")  # libjpeg cannot be interrupted by a signal
def test_scan_bomb_is_refused_at_once():
    # 12 MP, 2000 scans, 110 kB: 14 s of decoding without the limit.
    data = imagegen.progressive_jpeg((4000, 3000), repeat_last_scan=2000)
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge):
        decode_image(data, **LIMITS)
    assert time.perf_counter() - started < 1.0


def test_scans_in_metadata_or_after_the_end_do_not_count():
    plain = imagegen.progressive_jpeg((64, 48))
    last_scan = plain[plain.rindex(b"\xff\xda") : -2]
    comment = b"\xff\xda" * 300
    in_comment = plain[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + plain[2:]
    after_the_end = plain + last_scan * 300  # e.g. a ZIP or a video appended
    for data in (in_comment, after_the_end):
        assert decode_image(data, **LIMITS).pixels.shape == (224, 224, 3)


def test_a_tem_marker_cannot_hide_scans():
    # TEM has no length field: read as one, its next 2 bytes (FF DA) would skip 65 kB.
    plain = imagegen.progressive_jpeg((64, 48))
    last_scan = plain[plain.rindex(b"\xff\xda") : -2]
    data = plain[:-2] + (b"\xff\x01" + last_scan) * MAX_JPEG_SCANS + plain[-2:]
    with pytest.raises(ImageTooLarge, match="scans"):
        decode_image(data, **LIMITS)


def test_a_flood_of_empty_jpeg_segments_is_413():
    plain = imagegen.jpeg(0, (64, 48))
    empty_comments = b"\xff\xfe\x00\x02" * MAX_JPEG_MARKERS
    assert decode_image(plain[:2] + empty_comments[: 4 * 900] + plain[2:], **LIMITS)
    with pytest.raises(ImageTooLarge, match="markers"):
        decode_image(plain[:2] + empty_comments + plain[2:], **LIMITS)


@pytest.mark.timeout(30)
def test_a_flood_of_jpeg_fill_bytes_is_refused_at_once():
    plain = imagegen.jpeg(0, (64, 48))
    assert decode_image(plain[:2] + b"\xff" * 100 + plain[2:], **LIMITS)  # a little: fine
    flood = plain[:2] + b"\xff" * (10 * 1024 * 1024 - len(plain)) + plain[2:]
    started = time.perf_counter()
    with pytest.raises(InvalidImage, match="fill bytes"):
        decode_image(flood, **LIMITS)
    assert time.perf_counter() - started < 0.5  # Pillow alone: ~4 s
    assert MAX_JPEG_FILL < 10 * 1024 * 1024


@pytest.mark.timeout(30)
def test_a_flood_of_png_chunks_is_refused_at_once():
    empty = imagegen.png_chunk(b"tEXt", b"")
    plain = imagegen.png(0, (64, 48))
    header_end = 8 + 25  # signature + IHDR
    assert decode_image(plain[:header_end] + empty * 1000 + plain[header_end:], **LIMITS)
    flood = plain[:header_end] + empty * (MAX_PNG_CHUNKS + 1) + plain[header_end:]
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="chunks"):
        decode_image(flood, **LIMITS)
    assert time.perf_counter() - started < 0.5  # Pillow alone: 2 s for 10 MB of them


def test_a_large_rgba_picture_is_composited_after_it_is_shrunk():
    # Compositing a shrunk picture on white equals shrinking the composited one (Pillow's
    # reduce premultiplies alpha), to rounding.
    rng = np.random.default_rng(3)
    rgba = Image.fromarray(rng.integers(0, 256, (1400, 1800, 4), dtype=np.uint8), "RGBA")
    data = imagegen.encode(rgba, "PNG", compress_level=1)
    composited = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    expected = np.asarray(
        composited.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC), dtype=np.int16
    )
    got = decode_image(data, max_bytes=10**8, max_pixels=10**8).pixels.astype(np.int16)
    assert np.abs(got - expected).mean() < 2.0
