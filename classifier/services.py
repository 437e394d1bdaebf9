"""Classify images and record the answers: the one path used by the page, the API and
management commands. Views never touch the engine directly."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from .images import DecodedImage, ImageError, decode_image
from .inference import (
    ClassScore,
    Engine,
    EngineSlot,
    Label,
    ModelInfo,
    TensorFlowEngine,
    load_labels,
    preprocess,
    top_k,
)
from .models import Prediction

engine_slot = EngineSlot()
# One forward pass at a time: concurrent passes only fight over the same cores.
_forward_lock = threading.Lock()


def build_engine() -> Engine:
    return TensorFlowEngine(
        weights=settings.CLASSIFIER_WEIGHTS, threads=settings.CLASSIFIER_THREADS or None
    )


def start_engine(
    *, background: bool = True, on_failure: Callable[[str], None] | None = None
) -> None:
    engine_slot.start(build_engine, background=background, on_failure=on_failure)


@functools.cache
def labels() -> list[Label]:
    return load_labels()


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str = ""


@dataclass(frozen=True)
class Classification:
    filename: str
    image: DecodedImage
    predictions: list[ClassScore]
    prediction_id: int | None


@dataclass(frozen=True)
class ClassifyResult:
    items: list[Classification]
    model: ModelInfo
    decode_ms: float
    inference_ms: float
    total_ms: float
    batch_size: int  # images in the forward pass that answered this request


def classify(*, uploads: Sequence[Upload], source: str, k: int = 5) -> ClassifyResult:
    """Decode, classify and record `uploads`, in order. All or nothing: one bad image
    rejects the request (ImageError) and nothing is stored. Raises ModelNotReady while
    the model loads."""
    started = time.perf_counter()
    engine = engine_slot.get()
    decoded = [_decode(upload, position, len(uploads)) for position, upload in enumerate(uploads)]
    decoded_at = time.perf_counter()

    batch = preprocess(np.stack([image.pixels for image in decoded]))
    with _forward_lock:
        forward_started = time.perf_counter()
        probabilities = engine.predict(batch)
        inference_ms = (time.perf_counter() - forward_started) * 1000
    best = top_k(probabilities, k, labels())
    total_ms = (time.perf_counter() - started) * 1000

    info = engine.info
    rows = Prediction.objects.bulk_create(
        [
            Prediction(
                source=source,
                filename=upload.filename[:255],
                sha256=image.sha256,
                width=image.width,
                height=image.height,
                image_format=image.format,
                thumbnail=image.thumbnail,
                top_k=[score.__dict__ for score in scores],
                top_label=scores[0].label,
                top_probability=scores[0].probability,
                inference_ms=inference_ms,
                total_ms=total_ms,
                model_name=info.name,
                weights=info.weights,
                engine=info.engine,
            )
            for upload, image, scores in zip(uploads, decoded, best, strict=True)
        ]
    )
    return ClassifyResult(
        items=[
            Classification(upload.filename, image, scores, row.pk)
            for upload, image, scores, row in zip(uploads, decoded, best, rows, strict=True)
        ],
        model=info,
        decode_ms=(decoded_at - started) * 1000,
        inference_ms=inference_ms,
        total_ms=total_ms,
        batch_size=len(batch),
    )


def _decode(upload: Upload, position: int, count: int) -> DecodedImage:
    try:
        return decode_image(
            upload.data,
            max_bytes=settings.CLASSIFIER_MAX_IMAGE_BYTES,
            max_pixels=settings.CLASSIFIER_MAX_PIXELS,
        )
    except ImageError as exc:
        if count > 1:  # say which one, so the client can fix its request
            name = f" ({upload.filename})" if upload.filename else ""
            exc.message = f"Image {position + 1}{name}: {exc.message}"
        raise
