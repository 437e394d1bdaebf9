"""Your own classes: a new head on the ResNet50 base, trained on a folder of labelled
photos (`manage.py train_head`).

DATA_DIR holds one folder per class (the layout of Keras's `image_dataset_from_directory`
and torchvision's `ImageFolder`): the class is the folder's name, its images are every
file in it and in folders below it. Each image goes through the service's own decoding
and preprocessing (images.decode_image, model.preprocess: no training/serving skew), then
once through the frozen base, whose last block's output, averaged over the 7x7 grid, is
the image's 2048 features (the same pass the engines serve). A softmax regression on
those features (standardised while it learns; the scaling is folded into the kernel, so
the head is one dense layer on the raw pooled features, as the engines run it and class
activation maps need) is trained on a stratified part of the images and evaluated on the
rest (held out).

No Django. TensorFlow (Keras) is imported to train, the engine by the caller.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ImageError
from .features import pooled
from .images import decode_image
from .model import preprocess

# Each class needs this many usable images: one held out, the rest to learn from.
MIN_IMAGES_PER_CLASS = 5
# Images per forward pass while features are computed.
FEATURE_BATCH = 32
SEED = 20240101


class TrainingError(Exception):
    """The data set cannot make a model; the message says what to change."""


@dataclass(frozen=True)
class Sample:
    path: Path  # the file
    label: int  # its class's index


@dataclass
class DataSet:
    root: Path
    classes: list[str]
    samples: list[Sample]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for sample in self.samples:
            counts[self.classes[sample.label]] += 1
        return counts


def scan(root: Path) -> DataSet:
    """The classes (sorted folder names) and their files, hidden files left out."""
    if not root.is_dir():
        raise TrainingError(f"{root}: no such directory.")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    skipped = [
        (p, "not in a class folder")
        for p in sorted(root.iterdir())
        if p.is_file() and not p.name.startswith(".")
    ]
    if len(folders) < 2:
        raise TrainingError(
            f"{root} has {len(folders)} class folder(s); a classifier needs at least two: "
            "one folder per class, named after it, holding its images."
        )
    samples = []
    for label, folder in enumerate(folders):
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            samples += [
                Sample(Path(dirpath) / name, label)
                for name in sorted(filenames)
                if not name.startswith(".")
            ]
    return DataSet(root, [f.name for f in folders], samples, skipped)


@dataclass
class Features:
    samples: list[Sample]  # those that decoded, in order
    features: np.ndarray  # (len(samples), 2048) float32: pooled last-block output
    data_sha256: str  # of every usable file's relative path and bytes, in order
    seconds: float  # decoding and the forward passes


def extract(
    data: DataSet,
    forward: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    *,
    max_bytes: int,
    max_pixels: int,
    threads: int,
    progress: Callable[[int], None] | None = None,
) -> Features:
    """Decode every file as the service does (files it would refuse are added to
    `data.skipped` with the reason), and run the usable ones through `forward` (an
    engine's: probabilities and the last block's output) in batches. Decoding runs in
    `threads` threads while the passes run. `progress(n)`: n more files done."""
    started = time.perf_counter()

    def decode(sample: Sample):
        try:
            raw = sample.path.read_bytes()
            image = decode_image(raw, max_bytes=max_bytes, max_pixels=max_pixels)
        except ImageError as exc:
            return sample, None, exc.message
        except OSError as exc:
            return sample, None, f"unreadable: {exc.strerror or exc}"
        return sample, (image.pixels, hashlib.sha256(raw).digest()), None

    kept, rows, digest = [], [], hashlib.sha256()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for chunk in _chunks(pool.map(decode, data.samples), FEATURE_BATCH):
            batch = []
            for sample, decoded, error in chunk:
                if decoded is None:
                    data.skipped.append((sample.path, error))
                    continue
                pixels, file_hash = decoded
                kept.append(sample)
                batch.append(pixels)
                digest.update(str(sample.path.relative_to(data.root)).encode() + b"\0" + file_hash)
            if batch:
                _, last_block = forward(preprocess(np.stack(batch)))
                rows.append(pooled(last_block))
            if progress is not None:
                progress(len(chunk))
    features = np.concatenate(rows) if rows else np.zeros((0, 2048), np.float32)
    return Features(kept, features, digest.hexdigest(), time.perf_counter() - started)


def _chunks(items, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def check_counts(classes: list[str], labels: np.ndarray) -> None:
    """Every class has MIN_IMAGES_PER_CLASS usable images (TrainingError naming those
    that do not)."""
    counts = np.bincount(labels, minlength=len(classes))
    short = [
        f"{name!r} ({count})"
        for name, count in zip(classes, counts, strict=True)
        if count < MIN_IMAGES_PER_CLASS
    ]
    if short:
        raise TrainingError(
            f"Each class needs at least {MIN_IMAGES_PER_CLASS} usable images (one is held out "
            f"to test the model); too few in: {', '.join(short)}."
        )


def split(labels: np.ndarray, held_out: float, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Stratified: (training indices, held-out indices), `held_out` of each class (at
    least one image) held out, chosen at random with `seed`."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = min(max(1, round(len(members) * held_out)), len(members) - 1)
        test += members[:count].tolist()
        train += members[count:].tolist()
    return np.sort(train), np.sort(test)


@dataclass(frozen=True)
class Head:
    kernel: np.ndarray  # (2048, N): on the raw pooled features
    bias: np.ndarray  # (N,)
    epochs: int
    seconds: float

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        logits = features.astype(np.float64) @ self.kernel + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def train(
    features: np.ndarray,
    labels: np.ndarray,
    classes: int,
    *,
    epochs: int = 200,
    l2: float = 1e-3,
    seed: int = SEED,
) -> Head:
    """A softmax regression from the pooled features to the classes, with Keras: one
    dense layer on the standardised features, classes weighted by their inverse
    frequency, L2 on the kernel; then the standardisation folded into the kernel and
    bias (exact: an affine map before a linear one)."""
    started = time.perf_counter()
    import keras

    keras.utils.set_random_seed(seed)
    mean = features.mean(axis=0, dtype=np.float64)
    std = features.std(axis=0, dtype=np.float64)
    std = np.maximum(std, max(std.mean() * 1e-3, 1e-12))  # near-constant features stay put
    standardised = ((features - mean) / std).astype(np.float32)
    counts = np.bincount(labels, minlength=classes)
    weights = {c: len(labels) / (classes * count) for c, count in enumerate(counts) if count}
    model = keras.Sequential(
        [
            keras.Input((features.shape[1],)),
            keras.layers.Dense(
                classes, activation="softmax", kernel_regularizer=keras.regularizers.L2(l2)
            ),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(
        standardised,
        labels,
        epochs=epochs,
        batch_size=min(64, len(labels)),
        class_weight=weights,
        shuffle=True,
        verbose=0,
    )
    kernel, bias = (w.astype(np.float64) for w in model.layers[-1].get_weights())
    raw_kernel = kernel / std[:, None]
    raw_bias = bias - (mean / std) @ kernel
    return Head(
        raw_kernel.astype(np.float32),
        raw_bias.astype(np.float32),
        epochs,
        time.perf_counter() - started,
    )


def evaluate(head: Head, features: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class precision and recall, and the confusion matrix (rows: the true
    class, columns: the predicted one) on `features`."""
    predicted = head.probabilities(features).argmax(axis=1)
    n = len(classes)
    confusion = np.zeros((n, n), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for i, name in enumerate(classes):
        true_positive = int(confusion[i, i])
        predicted_i, actual_i = int(confusion[:, i].sum()), int(confusion[i].sum())
        per_class[name] = {
            "precision": round(true_positive / predicted_i, 4) if predicted_i else None,
            "recall": round(true_positive / actual_i, 4) if actual_i else None,
            "images": actual_i,
        }
    return {
        "images": int(len(labels)),
        "accuracy": round(float((predicted == labels).mean()), 4) if len(labels) else None,
        "per_class": per_class,
        "confusion": {"classes": classes, "matrix": confusion.tolist()},
    }


def report(evaluation: dict) -> str:
    """The evaluation as text for people: accuracy, a table per class, the confusion
    matrix."""
    classes = evaluation["confusion"]["classes"]
    width = max(8, *(len(name) for name in classes))
    lines = [
        f"Held-out accuracy: {evaluation['accuracy']:.1%} of {evaluation['images']} images",
        "",
        f"{'class':<{width}}  precision  recall  images",
    ]
    for name, row in evaluation["per_class"].items():
        precision = "-" if row["precision"] is None else f"{row['precision']:.1%}"
        recall = "-" if row["recall"] is None else f"{row['recall']:.1%}"
        lines.append(f"{name:<{width}}  {precision:>9}  {recall:>6}  {row['images']:>6}")
    lines += ["", "Confusion (rows: true class, columns: predicted):"]
    cell = max(5, *(len(name) for name in classes))
    lines.append(" " * width + "  " + "  ".join(f"{name[:cell]:>{cell}}" for name in classes))
    for name, row in zip(classes, evaluation["confusion"]["matrix"], strict=True):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{count:>{cell}}" for count in row))
    return "\n".join(lines) + "\n"


def compare(
    old: tuple[Head, list[str]] | None,
    new: Head,
    features: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    from_history: np.ndarray,
) -> dict:
    """Accuracy of the old head (with its own classes, matched to `classes` by name: an
    answer it cannot give is wrong) and of the new one on the same held-out rows: all of
    them, those from the data set, those from the history, and each class's history rows.
    An accuracy is None where there are no rows."""

    def accuracy(predicted: np.ndarray, rows: np.ndarray) -> float | None:
        return round(float((predicted[rows] == labels[rows]).mean()), 4) if rows.any() else None

    heads = {"new": new.probabilities(features).argmax(axis=1)}
    if old is not None:
        head, names = old
        position = {name: i for i, name in enumerate(classes)}
        mapped = np.array([position.get(name, -1) for name in names])
        heads["old"] = mapped[head.probabilities(features).argmax(axis=1)]
    parts = {
        "all": np.ones(len(labels), dtype=bool),
        "data set": ~from_history,
        "history": from_history,
    }
    result = {
        "rows": {part: int(rows.sum()) for part, rows in parts.items()},
        "accuracy": {
            which: {part: accuracy(predicted, rows) for part, rows in parts.items()}
            for which, predicted in heads.items()
        },
        "history_per_class": {},
    }
    for i, name in enumerate(classes):
        rows = from_history & (labels == i)
        if rows.any():
            result["history_per_class"][name] = {
                "rows": int(rows.sum()),
                **{which: accuracy(predicted, rows) for which, predicted in heads.items()},
            }
    return result


def comparison_report(comparison: dict, old_name: str | None) -> str:
    """The comparison as text: a line per part, a column per head."""
    old = "old" in comparison["accuracy"]
    columns = ([f"old ({old_name})"] if old else []) + ["new"]
    width = max(16, *(len(name) + 2 for name in comparison["history_per_class"]))
    cell = max(10, *(len(c) for c in columns))

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    lines = [
        "Held-out accuracy, the same rows for both heads:",
        f"{'':<{width}}  {'rows':>5}  " + "  ".join(f"{c:>{cell}}" for c in columns),
    ]
    for part, count in comparison["rows"].items():
        values = [comparison["accuracy"][w][part] for w in (["old"] if old else []) + ["new"]]
        lines.append(
            f"{part:<{width}}  {count:>5}  " + "  ".join(f"{percent(v):>{cell}}" for v in values)
        )
    for name, row in comparison["history_per_class"].items():
        values = [row[w] for w in (["old"] if old else []) + ["new"]]
        lines.append(
            f"{'  ' + name:<{width}}  {row['rows']:>5}  "
            + "  ".join(f"{percent(v):>{cell}}" for v in values)
        )
    return "\n".join(lines) + "\n"
