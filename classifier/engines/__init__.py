"""Inference engines: one per module behind one small interface (`base.Engine`).

No Django imports anywhere in this package. `build_engine()` picks the engine by name and
imports its module only then, so a process that serves OpenVINO never imports TensorFlow.
"""

from .base import (
    ENGINES,
    PRECISIONS,
    RANDOM_WEIGHTS_WARNING,
    Engine,
    ModelInfo,
    ModelLoadError,
    build_engine,
)

__all__ = [
    "ENGINES",
    "PRECISIONS",
    "RANDOM_WEIGHTS_WARNING",
    "Engine",
    "ModelInfo",
    "ModelLoadError",
    "build_engine",
]
