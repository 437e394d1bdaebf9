"""Images made on the fly for tests: nothing downloaded, nothing committed."""

import io
import struct
import zlib

import numpy as np
from PIL import Image

PALETTE = [(230, 30, 30), (20, 40, 220), (30, 200, 60), (10, 10, 10), (250, 250, 250)]


def pattern(index: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A distinct synthetic picture per index (colour, gradient, stripes)."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(index)
    base = np.array(PALETTE[index % len(PALETTE)], dtype=np.float32)
    freq = 0.02 + 0.03 * (index % 4)
    wave = 0.5 + 0.5 * np.sin(freq * (xx * rng.uniform(0.2, 1) + yy * rng.uniform(0.2, 1)))
    pixels = base * (0.4 + 0.6 * wave[..., None])
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def jpeg(index: int = 0, size: tuple[int, int] = (320, 240), **params) -> bytes:
    return encode(pattern(index, size), "JPEG", quality=90, **params)


def png(index: int = 0, size: tuple[int, int] = (320, 240)) -> bytes:
    return encode(pattern(index, size), "PNG")


def sideways_jpeg(size: tuple[int, int], left, right) -> bytes:
    """A JPEG stored `size`, its left half `left` and right half `right`, with EXIF
    orientation 6 (turn 90 degrees clockwise to show): a phone's portrait photo, stored
    landscape. Shown, it is portrait with `left` on top."""
    width, height = size
    image = Image.new("RGB", size, right)
    image.paste(left, (0, 0, width // 2, height))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=95, exif=exif)


def noisy_jpeg(size: tuple[int, int]) -> bytes:
    """Coloured noise at JPEG quality 100: about 2 bytes a pixel, the heaviest a camera's
    JPEG of that size gets."""
    width, height = size
    pixels = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), np.uint8)
    return encode(Image.fromarray(pixels, "RGB"), "JPEG", quality=100)


# --- Hostile and unusual files: headers edited by hand, each one small to send ---------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a correct CRC, so that Pillow reads past it."""
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_declaring(width: int, height: int, *, extra_chunks: bytes = b"") -> bytes:
    """An 8-bit RGB PNG whose header declares `width` x `height`, with one pixel of data:
    a few bytes to send, the whole declared size to decode. `extra_chunks` go before IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + extra_chunks
        + png_chunk(b"IDAT", zlib.compress(b"\x00\x80\x80\x80"))
        + png_chunk(b"IEND", b"")
    )


def gif_declaring(screen: tuple[int, int], frame: tuple[int, int]) -> bytes:
    """A GIF whose logical screen and first frame declare these sizes; Pillow grows the
    image to a frame larger than the screen. Its LZW data holds no pixel: it never decodes."""
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", *screen, 0x80, 0, 0)  # a global table of 2 colours
        + b"\x00\x00\x00\xff\xff\xff"
        + b","
        + struct.pack("<HHHHB", 0, 0, *frame, 0)
        + b"\x02\x01\x2c\x00"  # minimum code size 2; one sub-block: codes 4 (clear), 5 (end)
        + b";"
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small baseline JPEG whose frame header (SOF0) is edited to `width` x `height`."""
    data = bytearray(jpeg(0, (64, 48)))
    at = data.index(b"\xff\xc0") + 5  # marker, length, precision
    data[at : at + 4] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    """A small BMP whose info header is edited to `width` x `height`."""
    data = bytearray(encode(Image.new("RGB", (8, 8)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def webp_declaring(width: int, height: int) -> bytes:
    """An animated WebP (which has a VP8X header) whose canvas is edited to this size."""
    frames = [Image.new("RGB", (64, 48), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = bytearray(encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    assert data[12:16] == b"VP8X"
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


def progressive_jpeg(size: tuple[int, int], *, repeat_last_scan: int = 0) -> bytes:
    """A progressive JPEG of a flat grey, its last scan repeated: a few bytes each, and
    each one more decoding pass over the whole picture (libjpeg only warns)."""
    data = encode(Image.new("RGB", size, (120, 130, 140)), "JPEG", progressive=True)
    last_scan = data[data.rindex(b"\xff\xda") : -2]  # SOS to EOI: nothing else has FFDA
    return data[:-2] + last_scan * repeat_last_scan + data[-2:]


def animated(fmt: str, colours: list[tuple[int, int, int]], **params) -> bytes:
    """One solid 64x48 frame per colour."""
    frames = [Image.new("RGB", (64, 48), colour) for colour in colours]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)


def bmp_with_alpha(image: Image.Image) -> bytes:
    """A 32-bit BMP with an alpha channel (BITMAPV4HEADER and bit fields), as other
    programs write them; Pillow reads these but writes BMPs without alpha."""
    width, height = image.size
    pixels = image.convert("RGBA").transpose(Image.Transpose.FLIP_TOP_BOTTOM).tobytes("raw", "BGRA")
    header = (
        struct.pack("<IiiHHIIiiII", 108, width, height, 1, 32, 3, len(pixels), 2835, 2835, 0, 0)
        + struct.pack("<4I", 0xFF0000, 0xFF00, 0xFF, 0xFF000000)  # R, G, B, A masks
        + b"BGRs"  # colour space: sRGB
        + bytes(48)  # end points and gammas, unused for sRGB
    )
    offset = 14 + len(header)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + pixels


# Classes a model can learn apart: each a kind of picture, every image of it different.
CLASSES = ("sunsets", "stripes", "rings", "leaves")


def class_picture(kind: str, index: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """Image `index` of the class `kind` (CLASSES): its own colours, angle, scale and noise."""
    width, height = size
    rng = np.random.default_rng([CLASSES.index(kind), index])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    noise = rng.normal(0, 12, (height, width, 1))
    if kind == "sunsets":  # warm vertical gradient, a bright disk
        top, bottom = np.array([250, 120, 40]), np.array([90, 20, 90])
        t = (yy / height)[..., None]
        pixels = top * (1 - t) + bottom * t
        cx, cy, r = rng.uniform(0.2, 0.8) * width, rng.uniform(0.3, 0.7) * height, height / 6
        pixels[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (255, 230, 120)
    elif kind == "stripes":  # black and white bars at some angle
        angle = rng.uniform(0, np.pi)
        bars = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * rng.uniform(0.3, 0.6)) > 0
        pixels = np.where(bars[..., None], 235.0, 20.0) * np.ones(3)
    elif kind == "rings":  # blue-green concentric rings
        cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
        radius = np.hypot(xx - cx, yy - cy)
        ring = 0.5 + 0.5 * np.sin(radius * rng.uniform(0.25, 0.5))
        pixels = np.array([20, 90, 200]) * ring[..., None] + np.array([10, 160, 120]) * (
            1 - ring[..., None]
        )
    else:  # leaves: green blotches on brown
        pixels = np.ones((height, width, 3)) * np.array([110, 80, 40])
        for _ in range(12):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            rx, ry = rng.uniform(8, 25), rng.uniform(4, 12)
            inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
            pixels[inside] = rng.uniform([20, 120, 20], [80, 200, 70])
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), "RGB")


def night_sunset(index: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A sunset as people may also photograph it: a dark blue sky and a pale disk low
    down. A head trained on `sunsets` (class_picture) alone has never seen one."""
    width, height = size
    rng = np.random.default_rng([99, index])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = np.array([10, 15, 60]), np.array([40, 60, 140])
    t = (yy / height)[..., None]
    pixels = top * (1 - t) + bottom * t
    cx, cy, r = rng.uniform(0.2, 0.8) * width, rng.uniform(0.6, 0.8) * height, height / 7
    pixels[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (230, 230, 210)
    noise = rng.normal(0, 12, (height, width, 1))
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), "RGB")


def data_set(root, per_class: int = 20, classes=CLASSES) -> None:
    """A folder per class under `root`, `per_class` images each (JPEG and PNG, of
    varied sizes), as `manage.py train_head` reads them."""
    from pathlib import Path

    for kind in classes:
        folder = Path(root) / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (160 + 8 * (i % 5), 120 + 6 * (i % 3))
            picture = class_picture(kind, i, size)
            fmt = "PNG" if i % 4 == 0 else "JPEG"
            (folder / f"{kind}-{i:03d}.{fmt.lower()}").write_bytes(encode(picture, fmt))
