"""Images made on the fly for tests: nothing downloaded, nothing committed."""

import io

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
