"""How much memory decoding an image takes, known from its header before it decodes, and
the budget that bounds it in a process and per client (docs/design.md#decode-memory).

Pillow only, no Django imports; errors are classifier.errors classes.
"""

from __future__ import annotations

import contextlib
import threading

from PIL import Image

from .errors import DecoderBusy, ImageTooLarge

# Decoding's peak memory per pixel of the picture as stored, by format and mode, measured
# with images._shrink in place (docs/design.md#decode-memory); JPEG per pixel of its draft size.
# Unlisted pairs count as MAX_BYTES_PER_PIXEL; a picture with transparency (a tRNS colour or
# palette entry) counts as its format's RGBA.
DECODE_BYTES_PER_PIXEL = {
    ("PNG", "RGB"): 4.7,
    ("PNG", "RGBA"): 9,
    ("PNG", "L"): 1.5,
    ("PNG", "LA"): 4,
    ("PNG", "P"): 6,
    ("PNG", "1"): 4,
    ("PNG", "I;16"): 16,
    ("PNG", "I;16B"): 16,
    ("GIF", "P"): 6,
    ("GIF", "L"): 2,
    ("BMP", "RGB"): 5,
    ("BMP", "RGBA"): 9,
    ("BMP", "P"): 6,
    ("BMP", "L"): 2,
    ("BMP", "1"): 4,
    # libwebp decodes the whole picture into a canvas of its own, which Pillow then copies.
    ("WEBP", "RGB"): 18,
    ("WEBP", "RGBA"): 18,
}
JPEG_BYTES_PER_PIXEL = 20  # of the draft size
MAX_BYTES_PER_PIXEL = 32
# The most of the decode budget one client holds at once (DecodeBudget).
CLIENT_SHARE = 0.5


class DecodeBudget:
    """Bounds the memory that decoding takes in a process, and each client's share of it.

    Every image holds its estimated peak (`decode_cost`) while it decodes; one that does
    not fit waits for room up to `timeout_s`, then DecoderBusy (503). A client (its network,
    access.client_network) holds at most `capacity * CLIENT_SHARE` at once, so one client's
    large images leave the rest to everybody else; an image costing more than that share
    is refused outright (ImageTooLarge, 413), as no wait would ever make room for it.
    """

    def __init__(self, capacity: int, timeout_s: float) -> None:
        self.capacity = capacity
        self.share = int(capacity * CLIENT_SHARE)
        self.timeout_s = timeout_s
        self.in_use = 0
        self._clients: dict[str, int] = {}
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, cost: int, client: str = ""):
        if cost > self.share:
            raise ImageTooLarge(
                f"This image would take ~{_mb(cost)} MB to decode; the most one image may "
                f"take is {_mb(self.share)} MB."
            )

        def fits() -> bool:
            mine = self._clients.get(client, 0)
            return self.in_use + cost <= self.capacity and mine + cost <= self.share

        with self._changed:
            if not self._changed.wait_for(fits, timeout=self.timeout_s):
                raise DecoderBusy(
                    f"The server is decoding other large images ({_mb(self.in_use)} of "
                    f"{_mb(self.capacity)} MB in use, {_mb(self._clients.get(client, 0))} MB "
                    "of them yours); retry shortly."
                )
            self.in_use += cost
            self._clients[client] = self._clients.get(client, 0) + cost
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= cost
                left = self._clients[client] - cost
                if left:
                    self._clients[client] = left
                else:
                    del self._clients[client]
                self._changed.notify_all()


def _mb(size: int) -> int:
    return round(size / 2**20)


def decode_cost(image: Image.Image, scans: int, full_size: tuple[int, int]) -> int:
    """Bytes that decoding `image` takes at its peak, as measured per format and mode
    (docs/design.md#decode-memory), from its header alone: what the budget holds.

    A JPEG decodes at its draft size (`image.size` after draft()), except that a file of
    several scans (progressive, or components in separate scans) makes libjpeg keep every
    DCT coefficient of the full picture (`full_size`; 2 bytes each, 64 per 8x8 block of
    each component) until the last scan, whatever the output size. Other formats decode in
    full, then shrink (images._shrink) before their copies are made."""
    pixels = image.width * image.height
    if image.format in ("JPEG", "MPO"):
        cost = pixels * JPEG_BYTES_PER_PIXEL
        if scans > 1:
            cost += _coefficient_bytes(image, full_size)
        return cost
    mode = "RGBA" if "transparency" in image.info else image.mode
    per_pixel = DECODE_BYTES_PER_PIXEL.get((image.format, mode), MAX_BYTES_PER_PIXEL)
    return int(pixels * per_pixel)


def _coefficient_bytes(image: Image.Image, full_size: tuple[int, int]) -> int:
    width, height = full_size
    layers = getattr(image, "layer", None) or [("", 1, 1, 0)] * len(image.getbands())
    h_max = max(h for _, h, _, _ in layers) or 1
    v_max = max(v for _, _, v, _ in layers) or 1
    blocks = sum(
        -(-width * h // (8 * h_max)) * -(-height * v // (8 * v_max)) for _, h, v, _ in layers
    )
    return blocks * 64 * 2
