"""An image's pooled ResNet50 features, as the history keeps them for training a head
later (`manage.py train_head --from-history`): the mean of the last block's 7x7 cells,
2048 values, stored as little-endian float16 (4 kB a row; ~5e-4 relative error, far
below what a head's training notices). The same pooling as training.extract and the
engines' heads."""

from __future__ import annotations

import numpy as np

COUNT = 2048
STORED = np.dtype("<f2")
_LARGEST = float(np.finfo(STORED).max)


def pooled(last_block: np.ndarray) -> np.ndarray:
    """(..., 7, 7, 2048) last-block output -> (..., 2048) float32 pooled features."""
    return last_block.mean(axis=(-3, -2), dtype=np.float64).astype(np.float32)


def encode(values: np.ndarray) -> bytes:
    """2048 pooled features -> the stored bytes (values beyond float16's range clipped)."""
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if values.size != COUNT:
        raise ValueError(f"expected {COUNT} features, got {values.size}")
    return np.clip(values, -_LARGEST, _LARGEST).astype(STORED).tobytes()


def decode(data: bytes | memoryview) -> np.ndarray:
    """Stored bytes -> (2048,) float32."""
    values = np.frombuffer(bytes(data), dtype=STORED)
    if values.size != COUNT:
        raise ValueError(f"expected {COUNT * STORED.itemsize} bytes, got {len(bytes(data))}")
    return values.astype(np.float32)
