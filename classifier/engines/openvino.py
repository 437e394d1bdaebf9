"""OpenVINO: the same Keras ResNet50 converted (at start, or from a saved IR), and the IR
export/import with the weights setting it was made from. OpenVINO is imported when an
engine is built; TensorFlow only when there is no IR to read."""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from ..model import INPUT_SIZE, MODEL_NAME, SERVED_VERSION
from ..model_dir import ModelDir
from .base import FEATURE_SHAPE, ModelInfo, ModelLoadError, model_weights, resolve_precision
from .hardware import available_cpus

IR_FILE = "resnet50.xml"
IR_METADATA = "metadata.json"


class OpenVINOEngine:
    """The same Keras ResNet50, converted to OpenVINO (in-process, or a saved IR).

    fp32 matches TensorFlow to float32 rounding; bf16 runs convolutions in bfloat16 on
    CPUs with AMX or AVX512-BF16."""

    def __init__(
        self,
        *,
        weights: str = "imagenet",
        precision: str = "fp32",
        threads: int | None = None,
        ir_path: str | None = None,
        keras_model=None,
        model: ModelDir | None = None,
    ) -> None:
        started = time.perf_counter()
        import openvino as ov

        precision = resolve_precision(precision)
        threads = threads or available_cpus()
        core = ov.Core()
        if ir_path:
            network = read_ir(core, ir_path, weights, model)
        else:
            if keras_model is None:
                from .tensorflow import keras_resnet50

                keras_model = keras_resnet50(weights, threads, model)
            network = convert_to_openvino(keras_model)
        *self.head, self._channels_first = add_features_output(network)
        compiled = core.compile_model(
            network,
            "CPU",
            {
                # One inference at a time (the batcher's thread), over all the cores.
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                "INFERENCE_NUM_THREADS": threads,
            },
        )
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()
        self.predict(np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.float32))  # warm up
        self.info = ModelInfo.loaded("openvino", weights, precision, started, model)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch)[0]

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:  # one infer request: one call at a time
            self._request.infer({0: batch})
            probabilities = self._request.get_output_tensor(0).data.copy()
            features = self._request.get_output_tensor(1).data
            if self._channels_first:
                return probabilities, np.ascontiguousarray(features.transpose(0, 2, 3, 1))
            return probabilities, features.copy()


def add_features_output(model) -> tuple[np.ndarray, np.ndarray, bool]:
    """Give `model` (ResNet50 as converted from Keras, or its IR) a second output, the
    last convolutional block's, and return its head's kernel (2048, 1000) and bias
    (1000,), and whether that output is channels-first, (N, 2048, 7, 7), rather than
    (N, 7, 7, 2048). Found by walking up from the softmax: Add(MatMul(pooled, kernel),
    bias) (the MatMul alone for a zero bias), the pooling, then the first 7x7x2048
    tensor. The same pass computes both outputs; only the features' copy out is added."""
    softmax = next(op for op in model.get_ordered_ops() if op.get_type_name() == "Softmax")
    matmul = _data_input(softmax)
    bias = None
    if matmul.get_type_name() == "Add":
        bias = _constant_input(matmul).reshape(-1)
        matmul = _data_input(matmul)
    if matmul.get_type_name() != "MatMul":
        raise ModelLoadError(
            f"Unexpected ResNet50 head: {matmul.get_type_name()} before the softmax "
            "(expected MatMul, then Add unless the bias is all zeros)."
        )
    kernel = _constant_input(matmul)
    if matmul.get_attributes().get("transpose_b"):
        kernel = kernel.T
    if bias is None:  # a zero bias: the converter drops the Add
        bias = np.zeros(kernel.shape[1], np.float32)
    # The converter may run the network channels-first: (N, 2048, 7, 7) there.
    channels_first = [FEATURE_SHAPE[2], FEATURE_SHAPE[0], FEATURE_SHAPE[1]]
    node = _data_input(matmul)
    while (shape := list(node.get_output_partial_shape(0).get_min_shape())[1:]) not in (
        list(FEATURE_SHAPE),
        channels_first,
    ):
        node = _data_input(node)
    model.add_outputs([node.output(0)])
    return kernel.astype(np.float32), bias.astype(np.float32), shape == channels_first


def _data_input(node):
    """The node feeding `node`'s first input that is not a constant."""
    for value in node.input_values():
        source = value.get_node()
        if source.get_type_name() != "Constant":
            return source
    raise ModelLoadError(f"{node.get_friendly_name()} has no data input")


def _constant_input(node) -> np.ndarray:
    for value in node.input_values():
        source = value.get_node()
        while source.get_type_name() == "Convert":  # a compressed IR's weights
            source = source.input_value(0).get_node()
        if source.get_type_name() == "Constant":
            return np.asarray(source.get_data(), dtype=np.float32)
    raise ModelLoadError(f"{node.get_friendly_name()} has no constant input")


def convert_to_openvino(keras_model):
    import openvino as ov

    with warnings.catch_warnings():
        # Keras warns that the tracer passes its input as a tuple; harmless.
        warnings.filterwarnings("ignore", message="The structure of `inputs`")
        return ov.convert_model(keras_model, input=[-1, INPUT_SIZE, INPUT_SIZE, 3])


def export_ir(keras_model, weights: str, directory: Path, model: ModelDir | None = None) -> Path:
    """Save the model as OpenVINO IR (fp32 weights) with the weights setting and the
    model (name and version: ImageNet's, or a model directory's) it came from."""
    import openvino as ov

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / IR_FILE
    ov.save_model(convert_to_openvino(keras_model), path, compress_to_fp16=False)
    (directory / IR_METADATA).write_text(json.dumps(_ir_metadata(weights, model), indent=2) + "\n")
    return path


def _ir_metadata(weights: str, model: ModelDir | None) -> dict:
    return {
        "model": model.name if model else MODEL_NAME,
        "version": model.version if model else SERVED_VERSION,
        "weights": model_weights(weights, model),
    }


def read_ir(core, ir_path: str, weights: str, model: ModelDir | None = None):
    """Load an IR made by `export_ir`, refusing one made from other weights or for
    another model."""
    path = Path(ir_path)
    if path.is_dir():
        path = path / IR_FILE
    metadata_file = path.parent / IR_METADATA
    if not path.is_file() or not metadata_file.is_file():
        raise ModelLoadError(
            f"CLASSIFIER_OPENVINO_IR={ir_path!r}: no {IR_FILE} with its {IR_METADATA} there. "
            "Make one with `python manage.py export_openvino DIR`, or unset it to convert "
            "the Keras model at start."
        )
    exported = json.loads(metadata_file.read_text())
    expected = _ir_metadata(weights, model)
    exported.setdefault("version", SERVED_VERSION)
    if exported.get("weights") != expected["weights"]:
        raise ModelLoadError(
            f"CLASSIFIER_OPENVINO_IR={ir_path!r} was exported from weights "
            f"{exported.get('weights')!r}, but CLASSIFIER_WEIGHTS={weights!r}. Export it again "
            "from these weights (`python manage.py export_openvino DIR`) or set "
            "CLASSIFIER_WEIGHTS to match."
        )
    if (exported.get("model"), exported["version"]) != (expected["model"], expected["version"]):
        raise ModelLoadError(
            f"CLASSIFIER_OPENVINO_IR={ir_path!r} holds the model {exported.get('model')!r} "
            f"version {exported['version']!r}, not {expected['model']!r} version "
            f"{expected['version']!r} (CLASSIFIER_MODEL). Export it again with this "
            "CLASSIFIER_MODEL (`python manage.py export_openvino DIR`)."
        )
    return core.read_model(path)
