"""ResNet50 inference: weights, labels, preprocessing, a compiled forward pass, top-k.

Plain Python + NumPy (+ TensorFlow, imported lazily inside the engine). This module must
not import Django: the benchmark, tests and any future worker use it on its own.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

MODEL_NAME = "ResNet50"
INPUT_SIZE = 224
NUM_CLASSES = 1000
LABELS_FILE = Path(__file__).resolve().parent / "data" / "imagenet_class_index.json"

# Keras's ResNet50 `preprocess_input` uses "caffe" mode: RGB -> BGR, then subtract the
# ImageNet channel means (BGR order), no scaling.
# keras/src/applications/imagenet_utils.py::_preprocess_numpy_input
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)

# Seed of the untrained weights, so every process (and every engine) gets the same ones.
RANDOM_WEIGHTS_SEED = 20240101


class ModelLoadError(Exception):
    """The model or its weights could not be loaded; the message says what to change."""


class ModelNotReady(Exception):
    """The engine is still loading (or failed to load)."""


@dataclass(frozen=True)
class Label:
    index: int
    wnid: str
    name: str


@dataclass(frozen=True)
class ClassScore:
    label: str
    probability: float
    wnid: str
    index: int


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


RANDOM_WEIGHTS_WARNING = (
    "CLASSIFIER_WEIGHTS=random: the model is untrained, its predictions are meaningless. "
    "Use CLASSIFIER_WEIGHTS=imagenet or a weights file for real answers."
)


class Engine(Protocol):
    """What the rest of the service needs from an inference engine."""

    info: ModelInfo

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, 224, 224, 3) float32 preprocessed -> (N, 1000) float32 probabilities."""
        ...


def load_labels(path: Path = LABELS_FILE) -> list[Label]:
    """The 1000 ImageNet classes in model output order, Keras's names and WordNet ids."""
    raw = json.loads(path.read_text())
    labels = [Label(index=int(i), wnid=wnid, name=name) for i, (wnid, name) in raw.items()]
    labels.sort(key=lambda label: label.index)
    if [label.index for label in labels] != list(range(NUM_CLASSES)):
        raise ModelLoadError(f"{path} must list the classes 0..{NUM_CLASSES - 1} exactly once")
    return labels


def preprocess(batch_rgb: np.ndarray) -> np.ndarray:
    """RGB pixels (N, H, W, 3), any numeric dtype -> the float32 input ResNet50 expects.

    Same arithmetic as `keras.applications.resnet50.preprocess_input` on float32 input.
    """
    bgr = np.asarray(batch_rgb)[..., ::-1].astype(np.float32)  # one copy
    bgr -= CAFFE_MEAN_BGR
    return bgr


def top_k(probabilities: np.ndarray, k: int, labels: list[Label]) -> list[list[ClassScore]]:
    """(N, C) probabilities -> for each row the k best classes, most probable first."""
    k = min(k, probabilities.shape[1])
    best = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    rows = []
    for row, candidates in zip(probabilities, best, strict=True):
        ordered = candidates[np.argsort(-row[candidates], kind="stable")]
        rows.append(
            [
                ClassScore(
                    label=labels[i].name,
                    probability=float(row[i]),
                    wnid=labels[i].wnid,
                    index=int(i),
                )
                for i in ordered
            ]
        )
    return rows


def available_cpus() -> int:
    """CPUs this process may really use: affinity mask and cgroup v2/v1 CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, int(quota + 0.5)))
    return max(1, cpus)


def _cgroup_cpu_quota() -> float | None:
    try:  # cgroup v2: "max 100000" or "150000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def check_weights_setting(weights: str) -> None:
    """Fail fast, before TensorFlow is imported, on a setting that cannot work."""
    if weights in ("imagenet", "random"):
        return
    path = Path(weights)
    if not path.is_file():
        raise ModelLoadError(
            f"CLASSIFIER_WEIGHTS={weights!r}: no such file. Set CLASSIFIER_WEIGHTS to 'imagenet' "
            "(downloaded once by Keras), 'random' (untrained, for tests) or the path of a "
            "ResNet50 weights file (.h5)."
        )


ENGINES = ("tensorflow", "openvino")
PRECISIONS = ("fp32", "bf16")


def weights_name(weights: str) -> str:
    """How a weights setting is reported: imagenet, random, or the file's name."""
    return weights if weights in ("imagenet", "random") else Path(weights).name


def cpu_supports_bf16() -> bool:
    """AMX or AVX512-BF16: the instructions that make bf16 inference fast on a CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ModelLoadError(f"CLASSIFIER_PRECISION={precision!r}: use one of {PRECISIONS}")
    if precision == "bf16" and not cpu_supports_bf16():
        logger.warning(
            "CLASSIFIER_PRECISION=bf16: this CPU has neither AMX nor AVX512-BF16, where bf16 "
            "would be slower than fp32; using fp32."
        )
        return "fp32"
    return precision


class TensorFlowEngine:
    """Keras ResNet50 behind one `tf.function`, traced once for any batch size.

    bf16 uses oneDNN's automatic mixed precision (matmuls and convolutions in bf16)."""

    def __init__(
        self, *, weights: str = "imagenet", precision: str = "fp32", threads: int | None = None
    ) -> None:
        started = time.perf_counter()
        check_weights_setting(weights)
        precision = resolve_precision(precision)
        tf, keras = _import_tensorflow(threads)
        if precision == "bf16":
            tf.config.optimizer.set_experimental_options(
                {"auto_mixed_precision_onednn_bfloat16": True}
            )
        # The network as Keras builds it, each batch normalisation folded into the
        # convolution before it (see fold_batch_norm): the same function, less work.
        self.model = fold_batch_norm(keras, _build_resnet50(tf, keras, weights))
        self._forward = tf.function(
            lambda x: self.model(x, training=False),
            input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.float32)],
        )
        self.predict(np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.float32))  # trace + warm up
        self.info = ModelInfo.loaded("tensorflow", weights, precision, started)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._forward(batch).numpy()


IR_FILE = "resnet50.xml"
IR_METADATA = "metadata.json"


class OpenVINOEngine:
    """The same Keras ResNet50, converted to OpenVINO (in-process, or a saved IR).

    fp32 matches TensorFlow to float32 rounding (1.4e-5 here); bf16 runs convolutions in
    bfloat16 on CPUs with AMX or AVX512-BF16."""

    def __init__(
        self,
        *,
        weights: str = "imagenet",
        precision: str = "fp32",
        threads: int | None = None,
        ir_path: str | None = None,
        keras_model=None,
    ) -> None:
        started = time.perf_counter()
        import openvino as ov

        precision = resolve_precision(precision)
        threads = threads or available_cpus()
        core = ov.Core()
        if ir_path:
            model = read_ir(core, ir_path, weights)
        else:
            if keras_model is None:
                check_weights_setting(weights)
                tf, keras = _import_tensorflow(threads)
                keras_model = _build_resnet50(tf, keras, weights)
            model = convert_to_openvino(keras_model)
        compiled = core.compile_model(
            model,
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
        self.info = ModelInfo.loaded("openvino", weights, precision, started)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:  # one infer request: one call at a time
            self._request.infer({0: batch})
            return self._request.get_output_tensor(0).data.copy()


def convert_to_openvino(keras_model):
    import openvino as ov

    with warnings.catch_warnings():
        # Keras warns that the tracer passes its input as a tuple; harmless.
        warnings.filterwarnings("ignore", message="The structure of `inputs`")
        return ov.convert_model(keras_model, input=[-1, INPUT_SIZE, INPUT_SIZE, 3])


def export_ir(keras_model, weights: str, directory: Path) -> Path:
    """Save the model as OpenVINO IR (fp32 weights) with the weights setting it came from."""
    import openvino as ov

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / IR_FILE
    ov.save_model(convert_to_openvino(keras_model), path, compress_to_fp16=False)
    metadata = {"model": MODEL_NAME, "weights": weights_name(weights)}
    (directory / IR_METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    return path


def read_ir(core, ir_path: str, weights: str):
    """Load an IR made by `export_ir`, refusing one made from other weights."""
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
    exported_from = json.loads(metadata_file.read_text()).get("weights")
    if exported_from != weights_name(weights):
        raise ModelLoadError(
            f"CLASSIFIER_OPENVINO_IR={ir_path!r} was exported from weights {exported_from!r}, "
            f"but CLASSIFIER_WEIGHTS={weights!r}. Export it again from these weights "
            "(`python manage.py export_openvino DIR`) or set CLASSIFIER_WEIGHTS to match."
        )
    return core.read_model(path)


def build_engine(
    *,
    engine: str,
    weights: str,
    precision: str = "fp32",
    threads: int | None = None,
    openvino_ir: str | None = None,
) -> Engine:
    if engine == "tensorflow":
        return TensorFlowEngine(weights=weights, precision=precision, threads=threads)
    if engine == "openvino":
        return OpenVINOEngine(
            weights=weights, precision=precision, threads=threads, ir_path=openvino_ir or None
        )
    raise ModelLoadError(f"CLASSIFIER_ENGINE={engine!r}: use one of {ENGINES}")


def _import_tensorflow(threads: int | None):
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


def _build_resnet50(tf, keras, weights: str):
    if weights == "random":
        keras.utils.set_random_seed(RANDOM_WEIGHTS_SEED)
        model = keras.applications.ResNet50(weights=None)
        _standardise_random_head(tf, keras, model)
        return model
    try:
        return keras.applications.ResNet50(weights=weights)
    except Exception as exc:  # download, HDF5 and shape errors all end here
        where = "download the ImageNet weights" if weights == "imagenet" else f"load {weights!r}"
        raise ModelLoadError(
            f"Could not {where}: {type(exc).__name__}: {exc}. Set CLASSIFIER_WEIGHTS to the path "
            "of a ResNet50 weights file (.h5) for offline use, or 'random' for an untrained model."
        ) from exc


def _standardise_random_head(tf, keras, model) -> None:
    """Make an untrained ResNet50 give different answers for different images.

    With freshly initialised weights, every image's pooled features share one large common
    component and the softmax picks the same class for all inputs. Standardising the
    classifier head's inputs over a few synthetic images (a change of the last layer's
    weights only; the compute is unchanged) spreads the answers across classes, which the
    serving tests need to check that each response belongs to its image.
    """
    rng = np.random.default_rng(RANDOM_WEIGHTS_SEED)
    yy, xx = np.mgrid[0:INPUT_SIZE, 0:INPUT_SIZE].astype(np.float32)
    images = []
    for _ in range(8):
        a, b, c = rng.uniform(0, 1, 3)
        f = rng.uniform(0.01, 0.2)
        red = 127 + 127 * np.sin(f * (a * xx + b * yy))
        green = 127 + 127 * np.cos(f * c * yy)
        blue = np.full_like(xx, rng.uniform(0, 255))
        images.append(np.stack([red, green, blue], axis=-1))
    features_model = keras.Model(model.input, model.get_layer("avg_pool").output)
    # Compiled, not eager: an eager pass over 8 images leaves ~1.2 GB of RSS behind.
    features = tf.function(lambda x: features_model(x, training=False))(
        preprocess(np.stack(images))
    ).numpy()
    dense = model.get_layer("predictions")
    kernel, _ = dense.get_weights()
    # Centre the head's input (remove the component every image shares) and equalise the
    # features' scales, without blowing up near-constant ones: dividing by a tiny std
    # would turn rounding differences between engines into visible ones.
    mean, std = features.mean(axis=0), features.std(axis=0)
    std = np.maximum(std, std.mean())
    kernel = kernel / std[:, None]
    bias = -mean @ kernel
    logits = features @ kernel + bias
    scale = logits.std() / 3.0  # softmax neither flat nor saturated
    dense.set_weights([kernel / scale, bias / scale])


def fold_batch_norm(keras, model):
    """A copy of `model` in which every BatchNormalization that directly follows a Conv2D
    is folded into that convolution's kernel and bias, and becomes a pass-through.

    At inference a batch normalisation is an affine map per channel, y = x * s + t with
    s = gamma / sqrt(variance + epsilon) and t = beta - mean * s, so conv(x, W) + b then
    normalised equals conv(x, W * s) + (b * s + t): the same function up to float32
    rounding. Keras runs each one as elementwise passes over the activations (a
    multiply and an add, 53 times in ResNet50, ~12 % of the CPU time of a pass); folded,
    they are gone. Measured here, TensorFlow fp32: batch 1 19.1 -> 22.6 img/s, batch 9
    22.7 -> 25.3, batch 32 23.1 -> 26.9.
    """
    folds = {}  # convolution name -> the batch normalisation it alone feeds
    for layer in model.layers:
        conv = _only_input(layer) if isinstance(layer, keras.layers.BatchNormalization) else None
        if (
            isinstance(conv, keras.layers.Conv2D)
            and conv.use_bias
            and conv.data_format == "channels_last"
            and layer.axis in (-1, 3)
            and len(conv._outbound_nodes) == 1
        ):
            folds[conv.name] = layer
    folded_names = {bn.name for bn in folds.values()}

    def clone(layer):
        if layer.name in folded_names:
            return _pass_through()(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    folded = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if not layer.weights or layer.name in folded_names:
            continue
        target = folded.get_layer(layer.name)
        if layer.name in folds:
            bn = folds[layer.name]
            kernel, bias = layer.get_weights()
            gamma, beta, mean, variance = (w.astype(np.float64) for w in _batch_norm_weights(bn))
            scale = gamma / np.sqrt(variance + bn.epsilon)
            target.set_weights(
                [
                    (kernel * scale).astype(np.float32),
                    ((bias - mean) * scale + beta).astype(np.float32),
                ]
            )
        else:
            target.set_weights(layer.get_weights())
    return folded


def _only_input(layer):
    """The layer whose output is `layer`'s one input, or None (shared or multi-input
    layers). Keras's graph of nodes: internal, but what clone_model itself walks."""
    nodes = layer._inbound_nodes
    if len(nodes) != 1 or len(nodes[0].parent_nodes) != 1:
        return None
    return nodes[0].parent_nodes[0].operation


def _batch_norm_weights(bn) -> list[np.ndarray]:
    """gamma, beta, moving mean, moving variance (ones, zeros where the layer has no scale
    or no centre)."""
    weights = iter(bn.get_weights())
    channels = bn.moving_mean.shape[0]
    gamma = next(weights) if bn.scale else np.ones(channels, np.float32)
    beta = next(weights) if bn.center else np.zeros(channels, np.float32)
    return [gamma, beta, *weights]


@functools.cache
def _pass_through():
    import keras

    class PassThrough(keras.layers.Layer):
        """Stands in for a batch normalisation folded into the convolution before it."""

        def call(self, inputs, training=None, mask=None):
            return inputs

    return PassThrough


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
            self._thread.join()
            if self.error is not None:
                raise ModelLoadError(self.error)

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

    def get(self) -> Engine:
        engine = self._engine
        if engine is None:
            raise ModelNotReady(self.error or "the model is still loading")
        return engine
