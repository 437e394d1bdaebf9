"""The reference engine: Keras ResNet50 under one `tf.function`, and the Keras model
builder the OpenVINO conversion uses too. TensorFlow is imported when an engine or a
model is built, never at import time."""

from __future__ import annotations

import os
import time

import numpy as np

from ..model import INPUT_SIZE
from ..model_dir import FEATURES, ModelDir
from .base import (
    RANDOM_WEIGHTS_SEED,
    ModelInfo,
    ModelLoadError,
    check_weights_setting,
    resolve_precision,
)
from .hardware import available_cpus
from .keras_graph import fold_batch_norm, standardise_random_head

# Keras ResNet50's layer names: the last block's output (before global average pooling),
# the pooling, and the dense head.
FEATURES_LAYER = "conv5_block3_out"
POOL_LAYER = "avg_pool"
HEAD_LAYER = "predictions"


class TensorFlowEngine:
    """Keras ResNet50 behind one `tf.function`, traced once for any batch size.

    bf16 uses oneDNN's automatic mixed precision (matmuls and convolutions in bf16)."""

    def __init__(
        self,
        *,
        weights: str = "imagenet",
        precision: str = "fp32",
        threads: int | None = None,
        model: ModelDir | None = None,
    ) -> None:
        started = time.perf_counter()
        precision = resolve_precision(precision)
        tf, keras = import_tensorflow(threads)
        if precision == "bf16":
            tf.config.optimizer.set_experimental_options(
                {"auto_mixed_precision_onednn_bfloat16": True}
            )
        self.model = keras_resnet50(weights, threads, model)
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
        self.info = ModelInfo.loaded("tensorflow", weights, precision, started, model)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch)[0]

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, features = self._forward(batch)
        return probabilities.numpy(), features.numpy()


def keras_resnet50(weights: str, threads: int | None = None, model: ModelDir | None = None):
    """The served Keras ResNet50 of a weights setting (imagenet, random or a file), with
    `model`'s head and classes if given (a model directory: its `head.npz` on these
    weights, or its own `model.keras`): as Keras builds it, each batch normalisation
    folded into the convolution before it (fold_batch_norm: the same function, less
    work). The one graph that every engine runs and every OpenVINO IR is made from (the
    image's, the benchmark's, the peers'): two graphs of the same function round
    differently in bf16. ModelLoadError if the weights cannot be had."""
    tf, keras = import_tensorflow(threads)
    if model is not None and model.keras_file is not None:
        resnet, head = from_keras_file(keras, model)
    else:
        check_weights_setting(weights)
        resnet = build_resnet50(tf, keras, weights)
        head = model.head if model is not None else None
    if head is not None:
        resnet = with_head(keras, resnet, *head)
    return fold_batch_norm(keras, resnet)


def with_head(keras, resnet, kernel, bias):
    """`resnet` with its dense layer replaced by one of `kernel` (2048, N) and `bias`:
    the same pooling, then N classes through a softmax."""
    pooled = resnet.get_layer(POOL_LAYER).output
    head = keras.layers.Dense(kernel.shape[1], activation="softmax", name=HEAD_LAYER)
    model = keras.Model(resnet.input, head(pooled), name=resnet.name)
    head.set_weights([kernel, bias])
    return model


def from_keras_file(keras, model: ModelDir):
    """(an ImageNet-shaped ResNet50 holding the base weights of a `model.keras` a user
    trained, that file's head (kernel, bias)). The file's ResNet50 may be nested (a
    Sequential or functional model around `keras.applications.ResNet50(include_top=
    False)`) or flat; its layers are matched by Keras's names. The head must be one
    dense layer on the 2048 pooled features (dropout or pooling around it is fine)."""
    path = model.keras_file
    try:
        loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many kinds for a file it cannot read
        raise ModelLoadError(f"Could not load {path}: {type(exc).__name__}: {exc}") from exc
    layers = {layer.name: layer for layer in _all_layers(loaded)}
    dense = [layer for layer in layers.values() if isinstance(layer, keras.layers.Dense)]
    if len(dense) != 1 or dense[0].kernel.shape != (FEATURES, model.num_classes):
        shapes = [tuple(layer.kernel.shape) for layer in dense]
        raise ModelLoadError(
            f"{path}: the head must be one dense layer from the {FEATURES} pooled features to "
            f"the {model.num_classes} classes of labels.txt (so that class activation maps stay "
            f"exact); this model has dense layers of shapes {shapes}."
        )
    resnet = keras.applications.ResNet50(weights=None)
    missing = []
    for layer in resnet.layers:
        if not layer.weights or layer.name == HEAD_LAYER:
            continue
        source = layers.get(layer.name)
        if source is None or [w.shape for w in source.weights] != [w.shape for w in layer.weights]:
            missing.append(layer.name)
            continue
        layer.set_weights(source.get_weights())
    if missing:
        raise ModelLoadError(
            f"{path}: not a Keras ResNet50 (keras.applications.ResNet50): no layer like "
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}."
        )
    kernel, bias = (w.astype(np.float32) for w in dense[0].get_weights())
    return resnet, (kernel, bias)


def _all_layers(model):
    """Every layer of `model`, those of nested models too (not the nested models)."""
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
        else:
            yield layer


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
