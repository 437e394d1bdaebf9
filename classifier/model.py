"""What ResNet50 takes and gives, in plain NumPy: its labels, its preprocessing, top-k.

Imports no engine and no Django: the engines, the services and the tests share it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_NAME = "ResNet50"
# The name and version the serving protocols (v2, TF Serving's v1) know the model by.
SERVED_NAME = "resnet50"
SERVED_VERSION = "1"
INPUT_SIZE = 224
NUM_CLASSES = 1000
LABELS_FILE = Path(__file__).resolve().parent / "data" / "imagenet_class_index.json"

# Keras's ResNet50 `preprocess_input` uses "caffe" mode: RGB -> BGR, then subtract the
# ImageNet channel means (BGR order), no scaling.
# keras/src/applications/imagenet_utils.py::_preprocess_numpy_input
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


class LabelsError(Exception):
    """The class index file is not the 1000 ImageNet classes in order."""


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

    def as_dict(self) -> dict:
        """As answers carry it: ImageNet's classes with their WordNet id; classes of your
        own (CLASSIFIER_MODEL) have none, and no `wnid`."""
        scores = {"label": self.label, "probability": self.probability, "wnid": self.wnid}
        if not self.wnid:
            del scores["wnid"]
        return {**scores, "index": self.index}


def load_labels(path: Path = LABELS_FILE) -> list[Label]:
    """The 1000 ImageNet classes in model output order, Keras's names and WordNet ids."""
    raw = json.loads(path.read_text())
    labels = [Label(index=int(i), wnid=wnid, name=name) for i, (wnid, name) in raw.items()]
    labels.sort(key=lambda label: label.index)
    if [label.index for label in labels] != list(range(NUM_CLASSES)):
        raise LabelsError(f"{path} must list the classes 0..{NUM_CLASSES - 1} exactly once")
    return labels


def preprocess(batch_rgb: np.ndarray) -> np.ndarray:
    """RGB pixels (N, H, W, 3), any numeric dtype -> the float32 input ResNet50 expects.

    Same arithmetic as `keras.applications.resnet50.preprocess_input` on float32 input.
    """
    bgr = np.asarray(batch_rgb)[..., ::-1].astype(np.float32)  # one copy
    bgr -= CAFFE_MEAN_BGR
    return bgr


def unpreprocess(inputs: np.ndarray) -> np.ndarray:
    """The inverse of `preprocess`: model inputs (..., H, W, 3) -> uint8 RGB pixels,
    rounded and clipped (a tensor a client made may hold values no picture has)."""
    rgb = (np.asarray(inputs, dtype=np.float32) + CAFFE_MEAN_BGR)[..., ::-1]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


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
