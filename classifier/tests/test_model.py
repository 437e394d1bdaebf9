"""classifier.model: the labels, the preprocessing (Keras's own, checked against it) and
the top classes."""

import numpy as np
import pytest

from classifier.images import decode_image
from classifier.model import load_labels, preprocess, top_k

from . import imagegen


def test_labels_cover_all_1000_classes_once_in_model_order():
    labels = load_labels()
    assert [label.index for label in labels] == list(range(1000))
    assert len({label.wnid for label in labels}) == 1000
    assert all(label.wnid.startswith("n") and len(label.wnid) == 9 for label in labels)


def test_labels_use_keras_names():
    labels = load_labels()
    assert labels[162].name == "beagle"
    assert labels[162].wnid == "n02088364"
    assert labels[166].name == "Walker_hound"
    assert labels[215].name == "Brittany_spaniel"
    assert labels[0].name == "tench"
    assert labels[999].name == "toilet_tissue"


def test_preprocessing_equals_keras_resnet50_preprocess_input():
    from keras.applications.resnet50 import preprocess_input

    decoded = decode_image(imagegen.jpeg(3, (500, 375)), max_bytes=10**7, max_pixels=10**8)
    batch = decoded.pixels[None, ...]
    ours = preprocess(batch)
    theirs = preprocess_input(batch.astype(np.float32))
    assert ours.dtype == np.float32
    assert ours.shape == (1, 224, 224, 3)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_top_k_returns_best_classes_in_order_with_labels():
    labels = load_labels()
    probabilities = np.full((2, 1000), 1e-4, dtype=np.float32)
    probabilities[0, [162, 7, 999]] = [0.5, 0.3, 0.1]
    probabilities[1, 5] = 0.9
    rows = top_k(probabilities, 3, labels)
    assert [s.index for s in rows[0]] == [162, 7, 999]
    assert rows[0][0].label == "beagle"
    assert rows[0][0].probability == pytest.approx(0.5)
    assert rows[1][0].index == 5
    assert all(len(row) == 3 for row in rows)
