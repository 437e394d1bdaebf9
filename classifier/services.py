"""Classify images and record the answers: the one path used by the page, the API and
management commands. Views never touch the engine directly."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from . import inference, metrics
from .batching import MicroBatcher
from .images import DecodedImage, ImageError, PixelBudget, decode_image
from .inference import (
    ClassScore,
    Engine,
    EngineSlot,
    Label,
    ModelInfo,
    load_labels,
    preprocess,
    top_k,
)
from .models import Prediction

logger = logging.getLogger(__name__)

engine_slot = EngineSlot()
# Set when the server stops accepting connections (gunicorn.conf.py): not ready any more.
draining = threading.Event()
_batcher: tuple[Engine, MicroBatcher] | None = None
_batcher_lock = threading.Lock()


def build_engine() -> Engine:
    return inference.build_engine(
        engine=settings.CLASSIFIER_ENGINE,
        weights=settings.CLASSIFIER_WEIGHTS,
        precision=settings.CLASSIFIER_PRECISION,
        threads=settings.CLASSIFIER_THREADS or None,
        openvino_ir=settings.CLASSIFIER_OPENVINO_IR,
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
                    metrics.timed_forward_pass(engine.predict),
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
        "pass_seconds": round(stats.pass_seconds, 3) if stats else 0.0,
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


def _ready_engine_info() -> ModelInfo | None:
    return engine_slot.get().info if engine_slot.state == "ready" else None


metrics.QUEUE_DEPTH.set_function(lambda: _batcher[1].queued_images if _batcher else 0)
metrics.MODEL_READY.set_function(lambda: 1 if engine_slot.state == "ready" else 0)
metrics.MODEL_LOAD_SECONDS.set_function(
    lambda: info.load_seconds if (info := _ready_engine_info()) else 0.0
)


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
    prediction_id: int | None  # None: not recorded (see ClassifyResult.stored)


@dataclass(frozen=True)
class ClassifyResult:
    items: list[Classification]
    model: ModelInfo
    batch_size: int  # images in the forward pass that answered this request
    # Milliseconds per stage: decode, thumbnail, preprocess, queued (waiting for the
    # forward pass), inference (the pass), topk, store (database), total.
    timings: dict[str, float]
    # False when the history could not record this answer (database down or too slow);
    # the predictions are still right.
    stored: bool = True

    @property
    def total_ms(self) -> float:
        return self.timings["total"]


def classify(*, uploads: Sequence[Upload], source: str, k: int = 5) -> ClassifyResult:
    """Decode, classify and record `uploads`, in order. All or nothing: one bad image
    rejects the request (ImageError) and nothing is stored. Raises ModelNotReady while
    the model loads, batching.Overloaded / BatchFailed when it cannot run now."""
    clock = _Stopwatch()
    engine = engine_slot.get()
    batcher = batcher_for(engine)
    # Decode in this request thread; the forward pass is shared with whatever other
    # requests are waiting (one inference thread, see batching.py).
    with batcher.incoming(len(uploads)) as ticket:
        decoded = [_decode(upload, i, len(uploads)) for i, upload in enumerate(uploads)]
        thumbnail_ms = sum(image.thumbnail_ms for image in decoded)
        clock.lap("decode", minus=thumbnail_ms)
        clock.timings["thumbnail"] = thumbnail_ms
        pixels = preprocess(np.stack([image.pixels for image in decoded]))
        clock.lap("preprocess")
        batch = batcher.submit(pixels, ticket)
    clock.lap("queued", minus=batch.inference_ms)
    clock.timings["inference"] = batch.inference_ms
    best = top_k(batch.probabilities, k, labels())
    clock.lap("topk")

    metrics.IMAGES.inc(len(uploads))

    info = engine.info
    ids = _record(uploads, decoded, best, batch, info, source, clock)
    clock.lap("store")
    clock.timings["total"] = clock.elapsed()
    return ClassifyResult(
        items=[
            Classification(upload.filename, image, scores, pk)
            for upload, image, scores, pk in zip(uploads, decoded, best, ids, strict=True)
        ],
        model=info,
        batch_size=batch.batch_size,
        timings={name: round(ms, 2) for name, ms in clock.timings.items()},
        stored=ids[0] is not None,
    )


class StoreTimeout(Exception):
    pass


def _record(uploads, decoded, best, batch, info, source, clock) -> list[int | None]:
    """Store the rows in one transaction (with those of other requests storing at the same
    time), within CLASSIFIER_STORE_TIMEOUT_MS; the ids, or Nones when the database is
    down, slow or failing. The caller has its predictions
    either way: losing a history row is better than losing the answer."""
    rows = _rows(uploads, decoded, best, batch, info, source, clock)
    try:
        _history.write(rows, settings.CLASSIFIER_STORE_TIMEOUT_MS)
        return [row.pk for row in rows]
    except (DatabaseError, StoreTimeout) as exc:
        metrics.HISTORY_WRITE_FAILURES.inc()
        logger.error(
            "Prediction not recorded (%d image(s), top label %r): %s: %s",
            len(uploads),
            best[0][0].label,
            type(exc).__name__,
            str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail",
        )
        return [None] * len(uploads)


@dataclass(eq=False)
class _Pending:
    rows: list[Prediction]
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None


class GroupCommit:
    """Writes the history one transaction at a time per process, each with the rows of
    every request waiting to store (group commit).

    The requests of a forward pass all come to store their rows at the same moment. One
    transaction each, one after the other (SQLite has a single writer; PostgreSQL flushes
    its log at every commit), answered them one by one: at 16 clients in one batch the
    last answer left ~80 ms after the pass, and the model waited for those clients to
    come back. Here the request whose turn it is writes the rows of all that are waiting,
    in one transaction; the others find theirs written (or the error that stopped them).
    Taking turns in the process also keeps SQLite's busy handler out of it, which waits
    by sleeping 1, 2, 5, 10... ms (16 writers waited 20 ms each on average)."""

    def __init__(self, commit: Callable[[list[Prediction], float], None]) -> None:
        self._commit = commit  # (rows, timeout_ms): one transaction, or raises
        self._turn = threading.Lock()
        self._lock = threading.Lock()
        self._waiting: list[_Pending] = []

    def write(self, rows: list[Prediction], timeout_ms: float) -> None:
        """Store `rows` (their pks are set), or raise DatabaseError / StoreTimeout."""
        mine = _Pending(rows)
        with self._lock:
            self._waiting.append(mine)
        if self._turn.acquire(timeout=timeout_ms / 1000):
            try:
                with self._lock:
                    group, self._waiting = self._waiting, []
                if group:  # else: the previous writer took ours too
                    self._write_group(group, timeout_ms)
            finally:
                self._turn.release()
        else:
            with self._lock:
                taken = mine not in self._waiting
                if not taken:  # no writer has ours: give up, it is never written
                    self._waiting.remove(mine)
            # Else a writer has ours in its transaction, bounded by the same timeout.
            # (Should it commit after we gave up, the row exists though the answer said not.)
            if not (taken and mine.done.wait(timeout_ms / 1000)):
                raise StoreTimeout(f"waited {timeout_ms:g} ms for the database")
        if mine.error is not None:
            raise mine.error

    def _write_group(self, group: list[_Pending], timeout_ms: float) -> None:
        error: Exception | None = None
        try:
            self._commit([row for pending in group for row in pending.rows], timeout_ms)
        except Exception as exc:  # every request of the group learns why
            error = exc
        for pending in group:
            pending.error = error
            pending.done.set()


def _commit(rows: list[Prediction], timeout_ms: float) -> None:
    if connection.vendor == "sqlite":  # another process may hold the database
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # Waiting on a lock, a full disk, a stuck server: give up in time.
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('statement_timeout', %s, true)", [str(timeout_ms)]
                )
        Prediction.objects.bulk_create(rows)


_history = GroupCommit(_commit)


def _rows(uploads, decoded, best, batch, info, source, clock) -> list[Prediction]:
    return [
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
            inference_ms=batch.inference_ms,
            total_ms=clock.elapsed(),
            model_name=info.name,
            weights=info.weights,
            engine=info.engine,
            precision=info.precision,
        )
        for upload, image, scores in zip(uploads, decoded, best, strict=True)
    ]


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


@functools.cache
def _pixel_budget(capacity: int, timeout_ms: int) -> PixelBudget:
    return PixelBudget(capacity, timeout_ms / 1000)


def _decode(upload: Upload, position: int, count: int) -> DecodedImage:
    try:
        return decode_image(
            upload.data,
            max_bytes=settings.CLASSIFIER_MAX_IMAGE_BYTES,
            max_pixels=settings.CLASSIFIER_MAX_PIXELS,
            budget=_pixel_budget(
                settings.CLASSIFIER_DECODE_PIXELS, settings.CLASSIFIER_QUEUE_TIMEOUT_MS
            ),
        )
    except ImageError as exc:
        if count > 1:  # say which one, so the client can fix its request
            name = f" ({upload.filename})" if upload.filename else ""
            exc.message = f"Image {position + 1}{name}: {exc.message}"
        raise
