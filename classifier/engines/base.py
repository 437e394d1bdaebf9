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

from ..model import INPUT_SIZE, MODEL_NAME, NUM_CLASSES, SERVED_VERSION
from ..model_dir import ModelDir, ModelDirError
from ..model_dir import load as load_model_dir
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
    name: str  # ResNet50 (ImageNet's classes), or your model's name (CLASSIFIER_MODEL)
    weights: str  # "imagenet", "random" or the file name of a local weights file
    engine: str
    precision: str
    input_size: int
    num_classes: int
    load_seconds: float
    version: str = SERVED_VERSION  # your model's version; "1" for ImageNet's

    @classmethod
    def loaded(
        cls,
        engine: str,
        weights: str,
        precision: str,
        started: float,
        model: ModelDir | None = None,
    ) -> ModelInfo:
        """The ResNet50 an engine just loaded (with `model`'s classes, if given);
        `started` is its perf_counter() start."""
        return cls(
            name=model.name if model else MODEL_NAME,
            weights=model_weights(weights, model),
            engine=engine,
            precision=precision,
            input_size=INPUT_SIZE,
            num_classes=model.num_classes if model else NUM_CLASSES,
            load_seconds=round(time.perf_counter() - started, 3),
            version=model.version if model else SERVED_VERSION,
        )

    @property
    def meaningful(self) -> bool:
        """False for ImageNet's head on untrained (`random`) weights. A head of your own
        classes was trained on the features it serves, whatever the base: meaningful."""
        return self.weights != "random" or self.name != MODEL_NAME

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


def model_weights(weights: str, model: ModelDir | None) -> str:
    """The base weights an engine runs: the setting's, or a `model.keras`'s own."""
    if model is not None and model.keras_file is not None:
        return model.keras_file.name
    return weights_name(weights)


def load_model(path: str | None, weights: str) -> ModelDir | None:
    """The model directory CLASSIFIER_MODEL names (None: ImageNet's classes), checked
    against the base weights its head was trained on (ModelLoadError if not)."""
    if not path:
        return None
    try:
        model = load_model_dir(path)
    except ModelDirError as exc:
        raise ModelLoadError(f"CLASSIFIER_MODEL: {exc}") from exc
    if model.base_weights is not None and model.base_weights != weights_name(weights):
        raise ModelLoadError(
            f"CLASSIFIER_MODEL={path!r} was trained on the base weights {model.base_weights!r}, "
            f"but CLASSIFIER_WEIGHTS={weights!r}: its head would read other features. Set "
            "CLASSIFIER_WEIGHTS to match, or train it again (`manage.py train_head`)."
        )
    return model


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
    model: str | None = None,
) -> Engine:
    """The engine named by the settings, loaded and warmed up (ModelLoadError if not);
    `model`: a model directory with your own classes (CLASSIFIER_MODEL)."""
    if engine not in ENGINES:
        raise ModelLoadError(f"CLASSIFIER_ENGINE={engine!r}: use one of {ENGINES}")
    classes = load_model(model, weights)
    if engine == "tensorflow":
        from .tensorflow import TensorFlowEngine

        return TensorFlowEngine(
            weights=weights, precision=precision, threads=threads, model=classes
        )
    from .openvino import OpenVINOEngine

    return OpenVINOEngine(
        weights=weights,
        precision=precision,
        threads=threads,
        ir_path=openvino_ir or None,
        model=classes,
    )
