"""Classify images and record the answers: the one path used by the page, the API and
management commands. Views never touch the engine, the batcher or the history directly."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from . import explain, features, history, metrics, model_dir, runtime
from .decode_memory import DecodeBudget
from .engines import ModelInfo
from .errors import BatchFailed, ImageError, InvalidTensor, ModelNotReady, ServiceError
from .images import DecodedImage, decode_image, tensor_image
from .model import SERVED_NAME, ClassScore, Label, load_labels, preprocess, top_k
from .model_stats import RequestTimes


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str = ""


@dataclass(frozen=True)
class Classification:
    filename: str
    image: DecodedImage
    predictions: list[ClassScore]
    prediction_id: int | None  # None: not recorded (see ClassifyResult.stored)
    probabilities: np.ndarray  # (NUM_CLASSES,) float32, every class
    # Where the model looked for its top-1 class (explain.py): 7 rows of 7 values in [0, 1].
    activation_map: list[list[float]] | None = None

    @property
    def explanation(self) -> dict | None:
        if self.activation_map is None:
            return None
        best = self.predictions[0]
        return {"index": best.index, "label": best.label, "grid": self.activation_map}


@dataclass(frozen=True)
class ClassifyResult:
    items: list[Classification]
    model: ModelInfo
    batch_size: int  # images in the forward pass that answered this request
    # Milliseconds per stage: decode, thumbnail, preprocess, queued (waiting for the
    # forward pass), inference (the pass), topk, explain (the activation maps), store
    # (database), total.
    timings: dict[str, float]
    # False when the history could not record this answer (database down or too slow);
    # the predictions are still right.
    stored: bool = True

    @property
    def total_ms(self) -> float:
        return self.timings["total"]


def classify(
    *,
    uploads: Sequence[Upload],
    source: str,
    k: int | None = None,
    client: str = "",
    served_as: str = SERVED_NAME,
    received: float | None = None,
) -> ClassifyResult:
    """Decode, classify and record `uploads`, in order; `k` classes each (default
    CLASSIFIER_DEFAULT_TOP_K). `client` (access.client_network) decodes within its share of
    the decode budget. All or nothing: one bad image rejects the request
    (ImageError) and nothing is stored. Raises ModelNotReady while the model loads,
    Overloaded / BatchFailed when it cannot run now (all classifier.errors).

    The request counts in the statistics of the model it was `served_as`
    (runtime.statistics), from `received` (time.perf_counter() when the view got it;
    default: now)."""

    def decode() -> list[DecodedImage]:
        return [_decode(upload, i, len(uploads), client) for i, upload in enumerate(uploads)]

    def to_batch(decoded: list[DecodedImage]) -> np.ndarray:
        return preprocess(np.stack([image.pixels for image in decoded]))

    filenames = [u.filename for u in uploads]
    return _counted(
        served_as, received, lambda: _classify(decode, to_batch, filenames, source, k, served_as)
    )


def classify_pixels(
    *,
    pixels: np.ndarray,
    source: str,
    k: int | None = None,
    served_as: str = SERVED_NAME,
    received: float | None = None,
) -> ClassifyResult:
    """Classify and record already preprocessed inputs, (N, 224, 224, 3) float32 as
    `model.preprocess` makes them, like `classify`. The history shows each as the picture
    it stands for (`model.unpreprocess`), format TENSOR; its SHA-256 is of its float32
    bytes."""

    def decode() -> list[DecodedImage]:
        return [tensor_image(tensor) for tensor in pixels]

    def to_batch(decoded: list[DecodedImage]) -> np.ndarray:
        return pixels  # already the model's input

    filenames = [""] * len(pixels)
    return _counted(
        served_as,
        received,
        lambda: _classify(decode, to_batch, filenames, source, k, served_as, tensors=True),
    )


def _counted(
    served_as: str, received: float | None, classify: Callable[[], ClassifyResult]
) -> ClassifyResult:
    """`classify()`, counted in the statistics of the model `served_as`: a success with
    its time by part (model_stats's docstring says which is which), or a failure."""
    started = received if received is not None else time.perf_counter()
    statistics = runtime.statistics[served_as]
    try:
        result = classify()
    except ServiceError:
        statistics.failed(time.perf_counter() - started)
        raise
    ms = result.timings
    statistics.succeeded(
        len(result.items),
        RequestTimes(
            total=time.perf_counter() - started,
            compute_input=(ms["decode"] + ms["thumbnail"] + ms["preprocess"]) / 1000,
            queue=ms["queued"] / 1000,
            compute_infer=ms["inference"] / 1000,
            compute_output=(ms["topk"] + ms["explain"]) / 1000,
        ),
    )
    return result


def _classify(
    decode: Callable[[], list[DecodedImage]],
    to_batch: Callable[[list[DecodedImage]], np.ndarray],
    filenames: list[str],
    source: str,
    k: int | None,
    served_as: str,
    *,
    tensors: bool = False,
) -> ClassifyResult:
    """`decode()` the request's images (in this thread, within the decode budget), turn
    them into the model's input with `to_batch`, share a forward pass, then rank, explain
    and record. `tensors`: the client sent model inputs, not image files."""
    clock = _Stopwatch()
    engine = runtime.engine_slot.get()
    batcher = runtime.batcher_for(engine)
    # Decode in this request thread; the forward pass is shared with whatever other
    # requests are waiting (one inference thread, see batching.py). The request stays
    # admitted until it is recorded: a forming batch waits for the clients of the last
    # pass until their requests are done with (MicroBatcher.incoming).
    count = len(filenames)
    with batcher.incoming(count) as ticket:
        decoded = decode()
        thumbnail_ms = sum(image.thumbnail_ms for image in decoded)
        clock.lap("decode", minus=thumbnail_ms)
        clock.timings["thumbnail"] = thumbnail_ms
        model_input = to_batch(decoded)
        clock.lap("preprocess")
        batch = batcher.submit(model_input, ticket, tag=served_as)
        clock.lap("queued", minus=batch.inference_ms)
        clock.timings["inference"] = batch.inference_ms
        _check_finite(batch.probabilities, tensors=tensors)
        best = top_k(batch.probabilities, k or settings.CLASSIFIER_DEFAULT_TOP_K, labels())
        clock.lap("topk")
        # In this request thread, not the inference thread: 7x7x2048 @ 2048 per image.
        maps = (
            [
                explain.grid(f, engine.head[0], scores[0].index)
                for f, scores in zip(batch.features, best, strict=True)
            ]
            if batch.features is not None
            else [None] * count
        )
        clock.lap("explain")
        kept = (
            [features.encode(v) for v in features.pooled(batch.features)]
            if settings.CLASSIFIER_STORE_FEATURES and batch.features is not None
            else [None] * count
        )

        metrics.IMAGES.inc(count)

        info = engine.info
        rows = history.prediction_rows(
            items=list(zip(filenames, decoded, best, maps, kept, strict=True)),
            info=info,
            source=source,
            inference_ms=batch.inference_ms,
            total_ms=clock.elapsed(),
        )
        ids = history.record(rows)
        clock.lap("store")
    clock.timings["total"] = clock.elapsed()
    return ClassifyResult(
        items=[
            Classification(filename, image, scores, pk, probabilities, cells)
            for filename, image, scores, pk, probabilities, cells in zip(
                filenames, decoded, best, ids, batch.probabilities, maps, strict=True
            )
        ],
        model=info,
        batch_size=batch.batch_size,
        timings={name: round(ms, 2) for name, ms in clock.timings.items()},
        stored=ids[0] is not None,
    )


def _check_finite(probabilities: np.ndarray, *, tensors: bool) -> None:
    """NaN or infinite probabilities never reach an answer or the history. From a client's
    tensors they are the input's fault (400); from decoded pictures, whose values are
    bounded, the engine's (503, logged by the caller's error count)."""
    finite = np.isfinite(probabilities).all(axis=1)
    if finite.all():
        return
    first = int(np.argmin(finite)) + 1
    if tensors:
        raise InvalidTensor(
            f"Input {first} gives probabilities that are not finite numbers; send tensors "
            "preprocessed as the model expects."
        )
    raise BatchFailed(f"The forward pass gave probabilities that are not finite (image {first})")


def labels() -> list[Label]:
    """The served classes in output order: ImageNet's 1000, or CLASSIFIER_MODEL's."""
    return _labels(settings.CLASSIFIER_MODEL)


@functools.cache
def _labels(model: str) -> list[Label]:
    if not model:
        return load_labels()
    try:
        return model_dir.load(model).labels
    except model_dir.ModelDirError as exc:  # the engine's load fails on it too, and says so
        raise ModelNotReady(f"CLASSIFIER_MODEL cannot be served: {exc}") from exc


@functools.cache
def decode_budget(capacity: int, timeout_ms: int) -> DecodeBudget:
    """The process's decoding budget for these settings (one per process in practice)."""
    return DecodeBudget(capacity, timeout_ms / 1000)


class _Stopwatch:
    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, name: str, *, minus: float = 0.0) -> None:
        now = time.perf_counter()
        self.timings[name] = (now - self.last) * 1000 - minus
        self.last = now

    def elapsed(self) -> float:
        return (time.perf_counter() - self.started) * 1000


def _decode(upload: Upload, position: int, count: int, client: str) -> DecodedImage:
    try:
        return decode_image(
            upload.data,
            max_bytes=settings.CLASSIFIER_MAX_IMAGE_BYTES,
            max_pixels=settings.CLASSIFIER_MAX_PIXELS,
            budget=decode_budget(
                settings.CLASSIFIER_DECODE_MEMORY_MB * 2**20, settings.CLASSIFIER_QUEUE_TIMEOUT_MS
            ),
            client=client,
        )
    except ImageError as exc:
        if count > 1:  # say which one, so the client can fix its request
            name = f" ({upload.filename})" if upload.filename else ""
            exc.message = f"Image {position + 1}{name}: {exc.message}"
        raise
