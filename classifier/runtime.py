"""The process's model at run time: its one engine (loaded once, in the background), the
micro-batcher feeding it, draining and shutdown, and `model_status()` for the views.

Server processes start it from ClassifierConfig.ready(); gunicorn.conf.py drains and
stops it. Tests install an engine directly (`engine_slot.set`).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from . import front, metrics
from .batching import MicroBatcher
from .engines import RANDOM_WEIGHTS_WARNING, Engine, ModelInfo, ModelLoadError, build_engine
from .errors import ModelNotReady
from .model_stats import Registry

logger = logging.getLogger(__name__)


class EngineSlot:
    """Holds the process's one engine: built once, in the background, then shared.

    Thread-safe and idempotent: `start()` may be called any number of times.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    @property
    def state(self) -> str:
        if self._engine is not None:
            return "ready"
        if self.error is not None:
            return "failed"
        return "loading" if self._thread is not None else "idle"

    def start(
        self,
        factory: Callable[[], Engine],
        *,
        background: bool = True,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        with self._lock:
            if self._thread is not None or self._engine is not None:
                return
            self._thread = threading.Thread(
                target=self._load, args=(factory, on_failure), name="engine-loader", daemon=True
            )
            self._thread.start()
        if not background:
            self.wait()
            if self.error is not None:
                raise ModelLoadError(self.error)

    def wait(self, timeout: float | None = None) -> None:
        """Wait until a started load has ended (loaded or failed), at most `timeout` s."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _load(self, factory: Callable[[], Engine], on_failure) -> None:
        try:
            engine = factory()
        except Exception as exc:
            self.error = (
                str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            )
            logger.critical("Model failed to load: %s", self.error)
            if on_failure is not None:
                on_failure(self.error)
            return
        self._engine = engine
        info = engine.info
        logger.info(
            "%s ready: weights=%s engine=%s precision=%s, loaded in %.1fs",
            info.name,
            info.weights,
            info.engine,
            info.precision,
            info.load_seconds,
        )
        if not info.meaningful:
            logger.warning(RANDOM_WEIGHTS_WARNING)

    def set(self, engine: Engine | None) -> None:
        """Install an engine directly (tests, benchmark)."""
        with self._lock:
            self._engine = engine
            self.error = None

    @property
    def info(self) -> ModelInfo | None:
        """What the loaded engine runs, or None before it is ready."""
        engine = self._engine
        return engine.info if engine is not None else None

    def get(self) -> Engine:
        engine = self._engine
        if engine is None:
            raise ModelNotReady(self.error or "it is still loading")
        return engine


engine_slot = EngineSlot()
# Each served model's inference statistics (Triton's statistics extension, /v2/models/stats).
statistics = Registry()
# Set when the server stops accepting connections (gunicorn.conf.py): not ready any more.
draining = threading.Event()
_batcher: tuple[Engine, MicroBatcher] | None = None
_batcher_lock = threading.Lock()


@dataclass(frozen=True)
class ModelStatus:
    state: str  # idle, loading, ready or failed
    info: ModelInfo | None  # once ready
    error: str | None  # why the load failed
    draining: bool  # the server is stopping: not ready for new work

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def serving(self) -> bool:
        """Readiness for /readyz and the v2 probes: loaded and warm, and not draining."""
        return self.ready and not self.draining


def model_status() -> ModelStatus:
    """Where the process's model is, for /readyz, /model and the page."""
    return ModelStatus(
        state=engine_slot.state,
        info=engine_slot.info,
        error=engine_slot.error,
        draining=draining.is_set(),
    )


def load_configured_engine() -> Engine:
    """Build and load the engine the settings name (CLASSIFIER_ENGINE, _WEIGHTS, _MODEL,
    _PRECISION, _THREADS, _OPENVINO_IR); ModelLoadError if it cannot be loaded."""
    return build_engine(
        engine=settings.CLASSIFIER_ENGINE,
        weights=settings.CLASSIFIER_WEIGHTS,
        precision=settings.CLASSIFIER_PRECISION,
        threads=settings.CLASSIFIER_THREADS or None,
        openvino_ir=settings.CLASSIFIER_OPENVINO_IR,
        model=settings.CLASSIFIER_MODEL or None,
    )


def start_engine(
    *, background: bool = True, on_failure: Callable[[str], None] | None = None
) -> None:
    engine_slot.start(load_configured_engine, background=background, on_failure=on_failure)


def batcher_for(engine: Engine) -> MicroBatcher:
    """The process's one micro-batcher, feeding `engine` from its own thread."""
    global _batcher
    current = _batcher
    if current is not None and current[0] is engine:
        return current[1]
    with _batcher_lock:
        if _batcher is None or _batcher[0] is not engine:
            old = _batcher
            # A burst is the uploads that started arriving within one arrival gap.
            gap_s = (settings.CLASSIFIER_BATCH_ARRIVAL_GAP_MS or 30) / 1000
            _batcher = (
                engine,
                MicroBatcher(
                    metrics.timed_forward_pass(engine.forward),
                    max_batch=settings.CLASSIFIER_MAX_BATCH,
                    max_wait_ms=settings.CLASSIFIER_BATCH_WAIT_MS,
                    arrival_gap_ms=settings.CLASSIFIER_BATCH_ARRIVAL_GAP_MS or None,
                    max_queue=settings.CLASSIFIER_MAX_QUEUE,
                    queue_timeout_s=settings.CLASSIFIER_QUEUE_TIMEOUT_MS / 1000,
                    requests_coming=functools.partial(front.uploads_on_their_way, gap_s),
                    on_batch=statistics.executed,
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
        "batch_arrival_gap_ms": settings.CLASSIFIER_BATCH_ARRIVAL_GAP_MS,
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


def model_activity() -> tuple[int, int]:
    """(forward passes so far, images waiting for one): the model served between two
    calls if the first changed, or is about to if the second is not 0."""
    current = _batcher
    if current is None:
        return 0, 0
    return current[1].stats.batches, current[1].queued_images


def shutdown() -> None:
    """Finish queued work and stop the inference thread (gunicorn's worker_exit)."""
    global _batcher
    with _batcher_lock:
        if _batcher is not None:
            _batcher[1].close()
            _batcher = None


metrics.QUEUE_DEPTH.set_function(lambda: _batcher[1].queued_images if _batcher else 0)
metrics.MODEL_READY.set_function(lambda: 1 if engine_slot.state == "ready" else 0)
metrics.MODEL_LOAD_SECONDS.set_function(
    lambda: info.load_seconds if (info := model_status().info) else 0.0
)
