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

from .batching import MicroBatcher
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
_batcher: tuple[Engine, MicroBatcher] | None = None
_batcher_lock = threading.Lock()


def build_engine() -> Engine:
    return TensorFlowEngine(
        weights=settings.CLASSIFIER_WEIGHTS, threads=settings.CLASSIFIER_THREADS or None
    )


def start_engine(
    *, background: bool = True, on_failure: Callable[[str], None] | None = None
) -> None:
    engine_slot.start(build_engine, background=background, on_failure=on_failure)


def batcher_for(engine: Engine) -> MicroBatcher:
    """The process's one micro-batcher, feeding `engine` from its own thread."""
    global _batcher
    current = _batcher
    if current is not None and current[0] is engine:
        return current[1]
    with _batcher_lock:
        if _batcher is None or _batcher[0] is not engine:
            old = _batcher
            _batcher = (
                engine,
                MicroBatcher(
                    engine.predict,
                    max_batch=settings.CLASSIFIER_MAX_BATCH,
                    max_wait_ms=settings.CLASSIFIER_BATCH_WAIT_MS,
                    max_queue=settings.CLASSIFIER_MAX_QUEUE,
                    queue_timeout_s=settings.CLASSIFIER_QUEUE_TIMEOUT_MS / 1000,
                ),
            )
            if old is not None:
                old[1].close()
        return _batcher[1]


def check_capacity() -> None:
    """Refuse at once (ModelNotReady, Overloaded) what classify() would refuse anyway, so
    the web layer can answer before reading and parsing a large body."""
    batcher_for(engine_slot.get()).check_capacity()


def batching_status() -> dict:
    """Configuration and counters of the micro-batcher, for /model and the benchmark."""
    current = _batcher
    stats = current[1].stats if current else None
    return {
        "max_batch": settings.CLASSIFIER_MAX_BATCH,
        "batch_wait_ms": settings.CLASSIFIER_BATCH_WAIT_MS,
        "max_queue": settings.CLASSIFIER_MAX_QUEUE,
        "queue_timeout_ms": settings.CLASSIFIER_QUEUE_TIMEOUT_MS,
        "queued_images": current[1].queued_images if current else 0,
        "batches": stats.batches if stats else 0,
        "images": stats.images if stats else 0,
        "mean_batch": round(stats.mean_batch, 2) if stats else 0.0,
        "rejected_queue_full": stats.rejected_full if stats else 0,
        "rejected_queue_timeout": stats.rejected_timeout if stats else 0,
        "failed_batches": stats.failed_batches if stats else 0,
    }


def shutdown() -> None:
    """Finish queued work and stop the inference thread (gunicorn's worker_exit)."""
    global _batcher
    with _batcher_lock:
        if _batcher is not None:
            _batcher[1].close()
            _batcher = None


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
    queued_ms: float
    inference_ms: float
    total_ms: float
    batch_size: int  # images in the forward pass that answered this request


def classify(*, uploads: Sequence[Upload], source: str, k: int = 5) -> ClassifyResult:
    """Decode, classify and record `uploads`, in order. All or nothing: one bad image
    rejects the request (ImageError) and nothing is stored. Raises ModelNotReady while
    the model loads, batching.Overloaded / BatchFailed when it cannot run now."""
    started = time.perf_counter()
    engine = engine_slot.get()
    batcher = batcher_for(engine)
    # Decode in this request thread; the forward pass is shared with whatever other
    # requests are waiting (one inference thread, see batching.py).
    with batcher.incoming(len(uploads)) as ticket:
        decoded = [_decode(upload, i, len(uploads)) for i, upload in enumerate(uploads)]
        decoded_at = time.perf_counter()
        pixels = preprocess(np.stack([image.pixels for image in decoded]))
        batch = batcher.submit(pixels, ticket)
    best = top_k(batch.probabilities, k, labels())
    inference_ms = batch.inference_ms
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
        queued_ms=batch.queued_ms,
        inference_ms=inference_ms,
        total_ms=total_ms,
        batch_size=batch.batch_size,
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
