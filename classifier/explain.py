"""Class activation maps: where in the picture the model found its answer.

ResNet50 ends in global average pooling and one dense layer, so the map of class c is
exact and needs no gradients (Zhou et al., CVPR 2016, "Learning Deep Features for
Discriminative Localization"): CAM_c(x, y) = sum_k kernel[k, c] * F_k(x, y) over the last
convolutional block's 7x7x2048 output F; its mean over the 49 cells plus bias[c] is the
class's logit. What users see is the map with negative evidence cut (ReLU) and scaled by
its maximum into [0, 1]: the brightest cell is where the evidence for the class is
strongest.

NumPy and Pillow only, no Django: the services, the admin and the page's server-side
rendering share it.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

GRID = 7
# Decimals kept of each cell in answers and in the history (1e-4 of the scale).
DECIMALS = 4
# The colour scale, low to high (viridis at five stops; static/classifier/app.js draws
# the page's overlay and legend with the same stops).
COLOUR_STOPS = np.array(
    [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float32
)
OVERLAY_OPACITY = 0.5


def activation_map(features: np.ndarray, kernel: np.ndarray, index: int) -> np.ndarray:
    """The raw map of class `index`: (7, 7, 2048) features @ kernel[:, index] -> (7, 7)."""
    return np.asarray(features, dtype=np.float32) @ kernel[:, index]


def normalised(cam: np.ndarray) -> np.ndarray:
    """ReLU, then divided by the maximum: [0, 1]; all zeros if no cell is positive."""
    positive = np.maximum(cam, 0.0)
    peak = float(positive.max())
    return positive / peak if peak > 0 else np.zeros_like(positive)


def grid(features: np.ndarray, kernel: np.ndarray, index: int) -> list[list[float]]:
    """What answers and the history carry: the normalised map as 7 rows of 7 floats."""
    values = normalised(activation_map(features, kernel, index)).astype(np.float64)
    return np.round(values, DECIMALS).tolist()


def colours(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> RGB uint8 on the colour scale, linearly between stops."""
    position = np.clip(values, 0.0, 1.0) * (len(COLOUR_STOPS) - 1)
    low = np.minimum(position.astype(int), len(COLOUR_STOPS) - 2)
    fraction = (position - low)[..., None]
    rgb = COLOUR_STOPS[low] * (1 - fraction) + COLOUR_STOPS[low + 1] * fraction
    return np.rint(rgb).astype(np.uint8)


def overlay_png(
    picture: bytes, cells: list[list[float]], opacity: float = OVERLAY_OPACITY
) -> bytes:
    """The picture (any image file, e.g. a history thumbnail) with the map over it:
    upscaled bilinearly to the picture's size, coloured, blended at `opacity`. PNG."""
    with Image.open(io.BytesIO(picture)) as opened:
        base = opened.convert("RGB")
    heat = Image.fromarray(np.asarray(cells, dtype=np.float32)).resize(
        base.size, Image.Resampling.BILINEAR
    )
    coloured = Image.fromarray(colours(np.asarray(heat)))
    out = io.BytesIO()
    Image.blend(base, coloured, opacity).save(out, "PNG")
    return out.getvalue()
