"""A model directory: your own classes on the ResNet50 base (CLASSIFIER_MODEL).

`manage.py train_head` writes one; the engines serve it in place of ImageNet's 1000
classes. The base (everything up to the last convolutional block, then global average
pooling) stays as CLASSIFIER_WEIGHTS has it; the directory brings the head, one dense
layer with a softmax, so class activation maps stay exact (explain.py). Files:

- `labels.txt`: the class names, one per line, in the head's output order;
- `head.npz`: `kernel` (2048, N) and `bias` (N,), float32, applied to the pooled features
  as the engines run them (`train_head` writes it); or
- `model.keras`: a Keras ResNet50 with global average pooling and one dense layer that
  you trained or fine-tuned yourself; its base weights then come from it, not from
  CLASSIFIER_WEIGHTS;
- `metadata.json`: name, version, base weights, classes and image counts, when it was
  made, held-out accuracy, a hash of the data (all optional for a `model.keras`);
- `evaluation.json`, `report.txt`: `train_head`'s held-out evaluation (not read here).

No Django; no TensorFlow (the engines build the Keras model: engines/tensorflow.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .model import Label

LABELS_FILE = "labels.txt"
HEAD_FILE = "head.npz"
KERAS_FILE = "model.keras"
METADATA_FILE = "metadata.json"
EVALUATION_FILE = "evaluation.json"
REPORT_FILE = "report.txt"
# What the base gives the head: the last block's 2048 channels, averaged over the grid.
FEATURES = 2048
# A name or version as rows and answers carry it.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ModelDirError(Exception):
    """The directory is not a model this service can serve; the message says why."""


@dataclass(frozen=True)
class ModelDir:
    path: Path
    name: str
    version: str
    labels: list[Label]
    # The head (kernel (2048, N), bias (N,)), or None when `keras_file` brings its own.
    head: tuple[np.ndarray, np.ndarray] | None
    keras_file: Path | None
    # The base weights the head was trained on (imagenet, random or a file's name); None
    # for a `model.keras`, which carries its base.
    base_weights: str | None
    metadata: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def load(path: str | Path) -> ModelDir:
    """The model directory at `path`, checked (ModelDirError with the reason)."""
    directory = Path(path)
    if not directory.is_dir():
        raise ModelDirError(f"CLASSIFIER_MODEL={str(path)!r}: no such directory.")
    labels = read_labels(directory / LABELS_FILE)
    metadata = _read_metadata(directory / METADATA_FILE)
    head, keras_file = None, None
    if (directory / HEAD_FILE).is_file():
        head = _read_head(directory / HEAD_FILE, len(labels))
    elif (directory / KERAS_FILE).is_file():
        keras_file = directory / KERAS_FILE
    else:
        raise ModelDirError(
            f"{directory}: no {HEAD_FILE} (made by `manage.py train_head`) or {KERAS_FILE} "
            "(your own Keras ResNet50 with a pooling + dense head)."
        )
    name = str(metadata.get("name") or directory.name)
    version = str(metadata.get("version") or "1")
    for what, value in (("name", name), ("version", version)):
        check_name(what, value)
    base = metadata.get("base_weights") if head is not None else None
    if head is not None and not isinstance(base, str):
        raise ModelDirError(f"{directory}/{METADATA_FILE} must say the `base_weights` of the head.")
    return ModelDir(directory, name, version, labels, head, keras_file, base, metadata)


def check_name(what: str, value: str) -> None:
    """A model's name or version as rows and answers carry it (ModelDirError if not)."""
    if not _NAME.match(value):
        raise ModelDirError(
            f"The model's {what} {value!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )


def read_labels(path: Path) -> list[Label]:
    """Class names, one per line, in output order (blank lines and surrounding spaces
    ignored); at least two, no repeats."""
    if not path.is_file():
        raise ModelDirError(f"{path}: missing (the class names, one per line, in output order).")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [name for name in names if name]
    if len(names) < 2:
        raise ModelDirError(
            f"{path}: a classifier needs at least two classes; it has {len(names)}."
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ModelDirError(f"{path}: classes named more than once: {', '.join(repeated)}.")
    too_long = [name for name in names if len(name) > 64]
    if too_long:
        raise ModelDirError(f"{path}: class names of at most 64 characters: {too_long[0]!r}.")
    return [Label(index=i, wnid="", name=name) for i, name in enumerate(names)]


def save(
    directory: Path,
    *,
    labels: list[str],
    kernel: np.ndarray,
    bias: np.ndarray,
    metadata: dict,
    evaluation: dict,
    report: str,
) -> None:
    """Write a model directory `train_head` made (into `directory`, which must not hold
    another model)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / LABELS_FILE).write_text("".join(f"{name}\n" for name in labels), encoding="utf-8")
    np.savez(directory / HEAD_FILE, kernel=kernel.astype(np.float32), bias=bias.astype(np.float32))
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    (directory / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2) + "\n")
    (directory / REPORT_FILE).write_text(report)


def _read_metadata(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        metadata = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{path}: not valid JSON ({exc}).") from None
    if not isinstance(metadata, dict):
        raise ModelDirError(f"{path}: must hold a JSON object.")
    return metadata


def _read_head(path: Path, classes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            kernel, bias = arrays["kernel"], arrays["bias"]
    except (OSError, KeyError, ValueError) as exc:
        raise ModelDirError(f"{path}: not a head `train_head` wrote ({exc}).") from None
    if kernel.shape != (FEATURES, classes) or bias.shape != (classes,):
        raise ModelDirError(
            f"{path}: kernel {kernel.shape} and bias {bias.shape} do not fit {FEATURES} features "
            f"and the {classes} classes of {LABELS_FILE}."
        )
    if not (np.isfinite(kernel).all() and np.isfinite(bias).all()):
        raise ModelDirError(f"{path}: the head holds NaN or infinite values.")
    return kernel.astype(np.float32), bias.astype(np.float32)
