import io

import numpy as np
import pytest
from PIL import Image

from classifier.images import ImageTooLarge, InvalidImage, UnsupportedFormat, decode_image

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


def test_exif_orientation_is_applied():
    image = imagegen.pattern(0, (300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    decoded = decode_image(imagegen.encode(image, "JPEG", exif=exif), **LIMITS)
    assert (decoded.width, decoded.height) == (200, 300)


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
