"""The reference engine: Keras ResNet50 under one `tf.function`, and the Keras model
builder the OpenVINO conversion uses too. TensorFlow is imported when an engine or a
model is built, never at import time."""

from __future__ import annotations

import os
import time

import numpy as np

from ..model import INPUT_SIZE
from .base import (
    RANDOM_WEIGHTS_SEED,
    ModelInfo,
    ModelLoadError,
    check_weights_setting,
    resolve_precision,
)
from .hardware import available_cpus
from .keras_graph import fold_batch_norm, standardise_random_head

# Keras ResNet50's layer names: the last block's output (before global average pooling)
# and the dense head.
FEATURES_LAYER = "conv5_block3_out"
HEAD_LAYER = "predictions"


class TensorFlowEngine:
    """Keras ResNet50 behind one `tf.function`, traced once for any batch size.

    bf16 uses oneDNN's automatic mixed precision (matmuls and convolutions in bf16)."""

    def __init__(
        self, *, weights: str = "imagenet", precision: str = "fp32", threads: int | None = None
    ) -> None:
        started = time.perf_counter()
        precision = resolve_precision(precision)
        tf, keras = import_tensorflow(threads)
        if precision == "bf16":
            tf.config.optimizer.set_experimental_options(
                {"auto_mixed_precision_onednn_bfloat16": True}
            )
        self.model = keras_resnet50(weights, threads)
        # One function, two outputs: the probabilities and the features they came from.
        both = keras.Model(
            self.model.input, [self.model.output, self.model.get_layer(FEATURES_LAYER).output]
        )
        self._forward = tf.function(
            lambda x: both(x, training=False),
            input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.float32)],
        )
        kernel, bias = self.model.get_layer(HEAD_LAYER).get_weights()
        self.head = (kernel.astype(np.float32), bias.astype(np.float32))
        self.predict(np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.float32))  # trace + warm up
        self.info = ModelInfo.loaded("tensorflow", weights, precision, started)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch)[0]

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, features = self._forward(batch)
        return probabilities.numpy(), features.numpy()


def keras_resnet50(weights: str, threads: int | None = None):
    """The served Keras ResNet50 of a weights setting (imagenet, random or a file): as
    Keras builds it, each batch normalisation folded into the convolution before it
    (fold_batch_norm: the same function, less work). The one graph that every engine
    runs and every OpenVINO IR is made from (the image's, the benchmark's, the peers'):
    two graphs of the same function round differently in bf16. ModelLoadError if the
    weights cannot be had."""
    check_weights_setting(weights)
    tf, keras = import_tensorflow(threads)
    return fold_batch_norm(keras, build_resnet50(tf, keras, weights))


def import_tensorflow(threads: int | None):
    """(tensorflow, keras), with TensorFlow's thread pools sized for this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no C++ info banners in server logs
    import keras
    import tensorflow as tf

    threads = threads or available_cpus()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        # One op at a time, each spread over all the cores: concurrent ops would only
        # split the same cores and add synchronisation.
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TensorFlow already initialised in this process (tests, benchmark): keep its pools
    return tf, keras


def build_resnet50(tf, keras, weights: str):
    """ResNet50 with `weights`; "random" is seeded and gets a standardised head."""
    if weights == "random":
        keras.utils.set_random_seed(RANDOM_WEIGHTS_SEED)
        model = keras.applications.ResNet50(weights=None)
        standardise_random_head(tf, keras, model, seed=RANDOM_WEIGHTS_SEED)
        return model
    try:
        return keras.applications.ResNet50(weights=weights)
    except Exception as exc:  # download, HDF5 and shape errors all end here
        where = "download the ImageNet weights" if weights == "imagenet" else f"load {weights!r}"
        raise ModelLoadError(
            f"Could not {where}: {type(exc).__name__}: {exc}. Set CLASSIFIER_WEIGHTS to the path "
            "of a ResNet50 weights file (.h5) for offline use, or 'random' for an untrained model."
        ) from exc
