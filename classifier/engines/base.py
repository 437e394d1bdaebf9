"""The engine contract: what every engine gives the service, how it reports what it
loaded, how it fails, and `build_engine()`, the one place that reads the engine,
precision and weights settings. No Django; imports the engine modules lazily."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..model import INPUT_SIZE, MODEL_NAME, NUM_CLASSES
from . import hardware

logger = logging.getLogger(__name__)

ENGINES = ("tensorflow", "openvino")
PRECISIONS = ("fp32", "bf16")
# Seed of the untrained weights, so every process (and every engine) gets the same ones.
RANDOM_WEIGHTS_SEED = 20240101
RANDOM_WEIGHTS_WARNING = (
    "CLASSIFIER_WEIGHTS=random: the model is untrained, its predictions are meaningless. "
    "Use CLASSIFIER_WEIGHTS=imagenet or a weights file for real answers."
)


class ModelLoadError(Exception):
    """The model or its weights could not be loaded; the message says what to change."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    weights: str  # "imagenet", "random" or the file name of a local weights file
    engine: str
    precision: str
    input_size: int
    num_classes: int
    load_seconds: float

    @classmethod
    def loaded(cls, engine: str, weights: str, precision: str, started: float) -> ModelInfo:
        """The ResNet50 an engine just loaded; `started` is its perf_counter() start."""
        return cls(
            name=MODEL_NAME,
            weights=weights_name(weights),
            engine=engine,
            precision=precision,
            input_size=INPUT_SIZE,
            num_classes=NUM_CLASSES,
            load_seconds=round(time.perf_counter() - started, 3),
        )

    @property
    def meaningful(self) -> bool:
        return self.weights != "random"

    def as_dict(self) -> dict:
        data = asdict(self)
        data["meaningful"] = self.meaningful
        if not self.meaningful:
            data["warning"] = RANDOM_WEIGHTS_WARNING
        return data


# The last convolutional block's output, which global average pooling and the one dense
# layer (the head) turn into the logits: what class activation maps are made of.
FEATURE_SHAPE = (7, 7, 2048)


class Engine(Protocol):
    """What the rest of the service needs from an inference engine."""

    info: ModelInfo
    # The head, the classifier's dense layer: kernel (2048, 1000) and bias (1000,), float32,
    # as this engine runs it (logits = mean of the features over the 7x7 cells @ kernel + bias).
    head: tuple[np.ndarray, np.ndarray]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, 224, 224, 3) float32 preprocessed -> (N, 1000) float32 probabilities."""
        ...

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`predict`'s probabilities and, from the same pass, the last convolutional
        block's output (N, 7, 7, 2048) float32."""
        ...


def check_weights_setting(weights: str) -> None:
    """Fail fast, before TensorFlow is imported, on a setting that cannot work."""
    if weights in ("imagenet", "random"):
        return
    if not Path(weights).is_file():
        raise ModelLoadError(
            f"CLASSIFIER_WEIGHTS={weights!r}: no such file. Set CLASSIFIER_WEIGHTS to 'imagenet' "
            "(downloaded once by Keras), 'random' (untrained, for tests) or the path of a "
            "ResNet50 weights file (.h5)."
        )


def weights_name(weights: str) -> str:
    """How a weights setting is reported: imagenet, random, or the file's name."""
    return weights if weights in ("imagenet", "random") else Path(weights).name


def resolve_precision(precision: str) -> str:
    """The precision to run: as asked, except bf16 on a CPU that would run it slower."""
    if precision not in PRECISIONS:
        raise ModelLoadError(f"CLASSIFIER_PRECISION={precision!r}: use one of {PRECISIONS}")
    if precision == "bf16" and not hardware.cpu_supports_bf16():
        logger.warning(
            "CLASSIFIER_PRECISION=bf16: this CPU has neither AMX nor AVX512-BF16, where bf16 "
            "would be slower than fp32; using fp32."
        )
        return "fp32"
    return precision


def build_engine(
    *,
    engine: str,
    weights: str,
    precision: str = "fp32",
    threads: int | None = None,
    openvino_ir: str | None = None,
) -> Engine:
    """The engine named by the settings, loaded and warmed up (ModelLoadError if not)."""
    if engine == "tensorflow":
        from .tensorflow import TensorFlowEngine

        return TensorFlowEngine(weights=weights, precision=precision, threads=threads)
    if engine == "openvino":
        from .openvino import OpenVINOEngine

        return OpenVINOEngine(
            weights=weights, precision=precision, threads=threads, ir_path=openvino_ir or None
        )
    raise ModelLoadError(f"CLASSIFIER_ENGINE={engine!r}: use one of {ENGINES}")
