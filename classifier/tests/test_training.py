"""Your own classes: `manage.py train_head` on generated data sets with the real ResNet50
base (random weights), and what each kind of bad data set gets (classifier/training.py,
the command, classifier/model_dir.py). Unit tests of the data set's handling use a
stand-in forward pass; the training tests run the real engine."""

import json

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from classifier import model_dir, training

from . import imagegen
from .helpers import train_head


def stand_in_forward(batch: np.ndarray):
    """Features that tell the classes apart by colour: the mean of each channel, spread
    over the 2048 channels of a 7x7 grid (for unit tests of the data handling only)."""
    means = batch.mean(axis=(1, 2))  # (N, 3)
    features = np.repeat(means, 683, axis=1)[:, :2048]
    return None, np.repeat(np.repeat(features[:, None, None, :], 7, axis=1), 7, axis=2)


def extract(root):
    data = training.scan(root)
    features = training.extract(
        data, stand_in_forward, max_bytes=10 * 2**20, max_pixels=40_000_000, threads=2
    )
    return data, features


def test_a_folder_per_class_with_nested_folders_and_every_kind_of_bad_file(tmp_path):
    imagegen.data_set(tmp_path, per_class=6, classes=("rings", "stripes"))
    nested = tmp_path / "rings" / "2024" / "summer"
    nested.mkdir(parents=True)
    (nested / "deep.png").write_bytes(imagegen.encode(imagegen.class_picture("rings", 99), "PNG"))
    (tmp_path / "stripes" / "notes.txt").write_text("not a picture")
    good = imagegen.encode(imagegen.class_picture("stripes", 50), "JPEG")
    (tmp_path / "stripes" / "cut.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "stripes" / ".DS_Store").write_bytes(b"\0\0")
    (tmp_path / "README.md").write_text("loose file")
    phone = imagegen.jpeg(1, size=(4000, 3000))  # 12 MP, as a phone's photo
    (tmp_path / "stripes" / "phone.jpg").write_bytes(phone)
    (tmp_path / "stripes" / "huge.jpg").write_bytes(imagegen.noisy_jpeg((4000, 3000)))  # 23 MB

    data, features = extract(tmp_path)

    assert data.classes == ["rings", "stripes"]
    names = sorted(s.path.name for s in features.samples)
    assert "deep.png" in names  # a nested folder belongs to its top-level class
    assert "phone.jpg" in names  # a 12 MP photo is decoded as the service does
    assert features.features.shape == (14, 2048)
    skipped = {path.name: why for path, why in data.skipped}
    assert set(skipped) == {"notes.txt", "cut.jpg", "huge.jpg", "README.md"}  # not hidden ones
    assert "not in a class folder" in skipped["README.md"]
    assert "not an image" in skipped["notes.txt"]
    assert "truncated" in skipped["cut.jpg"]
    assert "the limit is 10485760 bytes" in skipped["huge.jpg"]
    assert [s.label for s in features.samples].count(0) == 7


def test_one_class_or_none_is_a_clear_error(tmp_path):
    with pytest.raises(training.TrainingError, match="no such directory"):
        training.scan(tmp_path / "missing")
    imagegen.data_set(tmp_path, per_class=3, classes=("rings",))
    with pytest.raises(training.TrainingError, match="1 class folder.*at least two"):
        training.scan(tmp_path)


def test_too_few_images_in_a_class_names_the_class(tmp_path):
    imagegen.data_set(tmp_path, per_class=6, classes=("rings", "stripes"))
    (tmp_path / "empty").mkdir()
    _, features = extract(tmp_path)
    labels = np.array([s.label for s in features.samples])
    with pytest.raises(training.TrainingError, match=r"too few in: 'empty' \(0\)"):
        training.check_counts(["empty", "rings", "stripes"], labels)


def test_the_split_holds_out_each_class_in_proportion():
    labels = np.repeat([0, 1, 2], [10, 20, 5])
    train, test = training.split(labels, 0.2)
    assert np.bincount(labels[test]).tolist() == [2, 4, 1]
    assert sorted([*train, *test]) == list(range(35))
    assert training.split(labels, 0.2)[1].tolist() == test.tolist()  # seeded


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained by the command on 4 generated classes (random base weights)."""
    root = tmp_path_factory.mktemp("data")
    imagegen.data_set(root, per_class=20)
    (root / "leaves" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    output = tmp_path_factory.mktemp("models") / "shapes"
    return root, output, train_head(root, output, "7")


def test_train_head_learns_the_classes_and_writes_what_serving_reads(trained, settings):
    root, output, printed = trained
    loaded = model_dir.load(output)
    assert [label.name for label in loaded.labels] == sorted(imagegen.CLASSES)  # folder order
    assert (loaded.name, loaded.version, loaded.base_weights) == ("shapes", "7", "random")
    kernel, bias = loaded.head
    assert kernel.shape == (2048, 4)
    assert bias.shape == (4,)
    metadata = json.loads((output / "metadata.json").read_text())
    evaluation = json.loads((output / "evaluation.json").read_text())
    # Random base weights still tell these pictures apart: held out, 16 images.
    assert metadata["held_out"] == 16
    assert evaluation["accuracy"] >= 0.9
    assert metadata["held_out_accuracy"] == evaluation["accuracy"]
    assert metadata["images"] == {"leaves": 20, "rings": 20, "stripes": 20, "sunsets": 20}
    assert metadata["skipped"] == 1
    assert len(metadata["data_sha256"]) == 64
    assert sum(map(sum, evaluation["confusion"]["matrix"])) == 16
    assert "Held-out accuracy" in printed
    assert "leaves/broken.jpg" in printed  # the skipped file is listed, with why
    assert (output / "report.txt").read_text() in printed
    assert f"CLASSIFIER_MODEL={output}" in printed


def test_the_head_on_the_raw_features_gives_the_evaluated_answers(trained, tf_engine):
    """The standardisation folded into the kernel: the saved head, applied to pooled
    features as the engines apply it, classifies the held-out images as evaluated."""
    root, output, _ = trained
    loaded = model_dir.load(output)
    data = training.scan(root)
    features = training.extract(
        data, tf_engine.forward, max_bytes=10 * 2**20, max_pixels=40_000_000, threads=2
    )
    labels = np.array([s.label for s in features.samples])
    _, test = training.split(labels, 0.2)
    head = training.Head(*loaded.head, epochs=0, seconds=0)
    evaluation = json.loads((output / "evaluation.json").read_text())
    again = training.evaluate(head, features.features[test], labels[test], data.classes)
    assert again["confusion"] == evaluation["confusion"]


def test_an_existing_model_is_not_overwritten_without_force(trained, tmp_path):
    root, output, _ = trained
    with pytest.raises(CommandError, match="--force"):
        call_command("train_head", str(root), "--output", str(output))
    with pytest.raises(CommandError, match="at least two"):
        call_command("train_head", str(root / "rings"), "--output", str(tmp_path / "m"))


def test_a_model_directory_is_checked_when_it_is_read(tmp_path):
    with pytest.raises(model_dir.ModelDirError, match="no such directory"):
        model_dir.load(tmp_path / "none")
    (tmp_path / "labels.txt").write_text("cat\n")
    with pytest.raises(model_dir.ModelDirError, match="at least two classes"):
        model_dir.load(tmp_path)
    (tmp_path / "labels.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(model_dir.ModelDirError, match="more than once: cat"):
        model_dir.load(tmp_path)
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    with pytest.raises(model_dir.ModelDirError, match="no head.npz"):
        model_dir.load(tmp_path)
    np.savez(tmp_path / "head.npz", kernel=np.zeros((2048, 3)), bias=np.zeros(3))
    (tmp_path / "metadata.json").write_text('{"base_weights": "imagenet"}')
    with pytest.raises(model_dir.ModelDirError, match="do not fit"):
        model_dir.load(tmp_path)
    np.savez(tmp_path / "head.npz", kernel=np.zeros((2048, 2)), bias=np.zeros(2))
    loaded = model_dir.load(tmp_path)
    assert (loaded.name, loaded.version, loaded.num_classes) == (tmp_path.name, "1", 2)
    assert loaded.labels[1].wnid == ""
