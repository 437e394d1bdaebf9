"""Untrusted image bytes -> an oriented RGB 224x224 array, a thumbnail and facts about it.

Pillow only, no Django imports. Every failure is an `errors.ImageError` carrying the
HTTP status and a machine-readable code, so callers never have to guess; whatever a
hostile file makes Pillow raise becomes one (fuzzed in tests/test_hostile_input.py).

What is accepted, and why:

- Limits, checked before the pixels are decoded: `max_bytes`; `max_pixels` (413), which
  `configure_pillow` also makes Pillow's own decompression-bomb limit, strict, for every
  image and frame the process opens; the structure bounds of `image_structure` (413 or
  400), which bound the decoding time that pixels and bytes do not.
- Decoders: JPEG (an MPO, a JPEG with more pictures after it, counts as its first JPEG),
  PNG, WebP, GIF and BMP, recognised by their content, never by the client's filename or
  Content-Type. Another format Pillow knows is 415; anything else, 400.
- The model sees what a browser shows: EXIF orientation applied; CMYK JPEG as RGB, its
  values read inverted as Photoshop writes them (Pillow and browsers assume so; no ICC
  colour management); 16-bit grey scaled to 8 bits; any transparency (alpha, a transparent
  palette entry or tRNS colour) composited on ALPHA_BACKGROUND; of an animated GIF, WebP
  or PNG, the first frame only.
- Odd but valid images are classified, like any other squeezed to 224x224: 1x1, 10000x1.
  Bytes after the image's end (a ZIP after a JPEG, HTML after a PNG's IEND) are ignored:
  only the pixels are used, and the upload itself is never stored or sent back. A JPEG
  with damaged entropy-coded data may still decode (smeared blocks, as in a browser):
  it is classified too.
- Zero-size, truncated or corrupt files, and polyglots that start as anything but an
  image, are 400.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from .decode_memory import DecodeBudget, decode_cost
from .errors import ImageTooLarge, InvalidImage, UnsupportedFormat
from .image_structure import check_structure
from .model import INPUT_SIZE, unpreprocess

# Decoders we accept; anything else Pillow recognises is refused with 415. The client's
# filename and Content-Type are never consulted.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

THUMBNAIL_SIZE = 160
# JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale in the IDCT (scaling 1/8 keeps each
# 8x8 block's average: a box filter). Keep at least the model input on the shorter side;
# the final bicubic resize does the rest, at a fraction of a full decode's cost.
DRAFT_MIN_SIDE = INPUT_SIZE
# Composite transparent images onto white, as browsers show them on a page.
ALPHA_BACKGROUND = (255, 255, 255)
# Uploads from this size on are hashed in another thread while they decode: hashlib
# runs SHA-256 without the GIL, so a large photo's hash costs the request no time.
HASH_ASIDE_BYTES = 512 * 1024
_GREY16_MODES = ("I;16", "I;16B", "I;16L", "I")
# EXIF orientation -> what shows the picture upright.
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_QUARTER_TURNS = (
    Image.Transpose.TRANSPOSE,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
)


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # (224, 224, 3) uint8 RGB
    width: int  # as shown (after EXIF orientation)
    height: int
    format: str
    sha256: str
    thumbnail: bytes  # JPEG
    thumbnail_ms: float = 0.0


def configure_pillow(max_pixels: int) -> None:
    """Make Pillow's decompression-bomb check ours and strict, in the whole process: any
    image or frame over `max_pixels` raises as it is opened, where Pillow by default only
    warns, and raises only past twice its own limit (89 MP). decode_image also checks the
    size itself, so it stays safe should a `warnings.catch_warnings()` drop the filter."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    budget: DecodeBudget | None = None,
    client: str = "",
) -> DecodedImage:
    if not data:
        raise InvalidImage("The image is empty (0 bytes).")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"The image is {len(data)} bytes; the limit is {max_bytes} bytes.")
    try:
        return _decode(data, max_pixels, budget, client)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own check (configure_pillow), at open or at a frame: its message would
        # quote twice the limit for the worst bombs.
        raise ImageTooLarge(
            f"The image (or a frame of it) has more than {Image.MAX_IMAGE_PIXELS} pixels, "
            "the limit."
        ) from exc


def _decode(data: bytes, max_pixels: int, budget: DecodeBudget | None, client: str) -> DecodedImage:
    digest = _hash_aside(data) if len(data) >= HASH_ASIDE_BYTES else None
    scans = check_structure(data)
    image = _open(data)
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"The image has no pixels ({width}x{height}).")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"The image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}."
        )
    image_format = "JPEG" if image.format == "MPO" else image.format
    try:
        if image_format == "JPEG":
            image.draft("RGB", _draft_size(width, height))  # image.size: the decoded size
        cost = decode_cost(image, scans, (width, height))
        with budget.hold(cost, client) if budget else contextlib.nullcontext():
            image.load()
            transpose = _ORIENTATIONS.get(image.getexif().get(ExifTags.Base.Orientation))
            image = _shrink(image)
            if transpose is not None:
                image = image.transpose(transpose)
            rgb = _to_rgb(image)
            pixels = np.asarray(
                rgb.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC), dtype=np.uint8
            )
            thumbnail_started = time.perf_counter()
            thumbnail = _thumbnail(rgb)
            thumbnail_ms = (time.perf_counter() - thumbnail_started) * 1000
            del image, rgb  # free the decoded pixels before the budget is released
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"The {image_format} image could not be decoded: {exc}.") from exc
    # The size as shown; not the decoded one, which draft mode may have scaled down.
    turned = transpose in _QUARTER_TURNS
    return DecodedImage(
        pixels=pixels,
        width=height if turned else width,
        height=width if turned else height,
        format=image_format,
        sha256=digest.result() if digest else _sha256(data),
        thumbnail=thumbnail,
        thumbnail_ms=thumbnail_ms,
    )


def tensor_image(tensor: np.ndarray) -> DecodedImage:
    """A preprocessed model input (224, 224, 3) float32 as the picture it stands for,
    format TENSOR, hashed over its little-endian float32 bytes: what the history records
    of a client that sent tensors instead of an image file."""
    rgb = unpreprocess(tensor)
    started = time.perf_counter()
    thumbnail = _thumbnail(Image.fromarray(rgb))
    return DecodedImage(
        pixels=rgb,
        width=rgb.shape[1],
        height=rgb.shape[0],
        format="TENSOR",
        sha256=_sha256(np.ascontiguousarray(tensor, dtype="<f4")),  # hashed in place
        thumbnail=thumbnail,
        thumbnail_ms=(time.perf_counter() - started) * 1000,
    )


def _sha256(data: bytes | np.ndarray) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.cache
def _hasher() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="sha256")


def _hash_aside(data: bytes) -> Future[str]:
    return _hasher().submit(_sha256, data)


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (OSError, ValueError, SyntaxError) as exc:
        error = exc
    other = _format_of(data)
    if other:
        raise UnsupportedFormat(
            f"{other} images are not supported; send JPEG, PNG, WebP, GIF or BMP."
        )
    # An allowed decoder recognised the file, then failed: say why (a bad chunk...).
    detail = "" if isinstance(error, UnidentifiedImageError) else f": {error}"
    raise InvalidImage(
        f"The file is not an image Pillow can read (JPEG, PNG, WebP, GIF or BMP){detail}."
    ) from error


def _format_of(data: bytes) -> str:
    """The format Pillow recognises with every decoder, or '' if none (headers only)."""
    try:
        with Image.open(io.BytesIO(data)) as other:
            return other.format or ""
    except Exception:
        return ""


def _draft_size(width: int, height: int) -> tuple[int, int]:
    # Ask for at least DRAFT_MIN_SIDE on the shorter side; draft never upsamples.
    scale = DRAFT_MIN_SIDE / min(width, height)
    return (max(1, int(width * scale)), max(1, int(height * scale)))


def _shrink(image: Image.Image) -> Image.Image:
    """A large decoded picture reduced by an integer factor (a box filter, as JPEG draft
    mode does in the IDCT) to at least twice the model input on its shorter side, before
    any copy of it is made (orientation, RGB, compositing): those copies, at full size,
    were most of decoding's peak. Transparency is premultiplied by Pillow's reduce, so
    compositing after it equals compositing before, to rounding."""
    factor = min(image.size) // (2 * INPUT_SIZE)
    if factor < 2:
        return image
    if image.mode in _GREY16_MODES:
        image = _grey16_to_8bit(image)
    if image.mode not in ("L", "LA", "RGB", "RGBA") or "transparency" in image.info:
        transparent = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "RGB")
    return image.reduce(factor)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded mode as RGB, the way a browser shows it: whatever is transparent (an
    alpha channel, palette entries, a PNG tRNS colour) composited on ALPHA_BACKGROUND."""
    if image.mode in _GREY16_MODES:
        image = _grey16_to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # convert() to the same mode copies every pixel: not for the usual case, RGB already.
    return image if image.mode == "RGB" else image.convert("RGB")


def _grey16_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit grey scaled from 0..65535 to 0..255 (Pillow's convert clips at 255 instead:
    all but the darkest pixels white); a transparent grey level (tRNS) becomes alpha."""
    values = np.asarray(image, dtype=np.float32)
    grey = Image.fromarray(np.clip(values / 257.0 + 0.5, 0, 255).astype(np.uint8))
    transparent = image.info.get("transparency")
    if transparent is not None:
        grey.putalpha(Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8)))
    return grey


def _thumbnail(rgb: Image.Image) -> bytes:
    # Bilinear (antialiased) is plenty for 160 px and half the cost of bicubic; this runs
    # on every request, beside the forward pass, on the same cores.
    # Resized straight from the decoded picture (Image.thumbnail() would need a copy of it
    # first, in place). reducing_gap=1: an integer box reduction first (cheap), then a
    # small bilinear step. Never enlarged.
    scale = min(1.0, THUMBNAIL_SIZE / max(rgb.size))
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    thumb = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=1.0) if scale < 1 else rgb
    out = io.BytesIO()
    thumb.save(out, "JPEG", quality=80)
    return out.getvalue()
