import threading

import numpy as np
import pytest

from classifier.engines import ModelInfo, ModelLoadError, hardware
from classifier.engines.keras_graph import fold_batch_norm
from classifier.engines.tensorflow import TensorFlowEngine
from classifier.errors import ModelNotReady
from classifier.images import decode_image
from classifier.model import load_labels, preprocess, top_k
from classifier.runtime import EngineSlot

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


def test_available_cpus_follows_the_cgroup_quota(monkeypatch):
    monkeypatch.setattr(hardware, "cgroup_cpu_quota", lambda: 1.0)
    assert hardware.available_cpus() == 1
    monkeypatch.setattr(hardware, "cgroup_cpu_quota", lambda: None)
    assert hardware.available_cpus() == len(__import__("os").sched_getaffinity(0))


def test_missing_weights_file_fails_naming_the_setting(tmp_path):
    with pytest.raises(ModelLoadError, match="CLASSIFIER_WEIGHTS"):
        TensorFlowEngine(weights=str(tmp_path / "nope.h5"))


def test_imagenet_weights_are_never_downloaded_in_tests():
    # Sockets are disabled for the suite: the download fails fast and clearly, not a hang.
    with pytest.raises(ModelLoadError, match="CLASSIFIER_WEIGHTS"):
        TensorFlowEngine(weights="imagenet")


def test_random_engine_gives_different_answers_for_different_images(tf_engine):
    images = [decode_image(imagegen.jpeg(i), max_bytes=10**7, max_pixels=10**8) for i in range(5)]
    probabilities = tf_engine.predict(preprocess(np.stack([i.pixels for i in images])))
    assert probabilities.shape == (5, 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert len(set(probabilities.argmax(axis=1).tolist())) >= 3
    assert tf_engine.info.weights == "random"
    assert not tf_engine.info.meaningful


def test_batched_forward_pass_matches_single_image_passes(tf_engine):
    images = [decode_image(imagegen.png(i), max_bytes=10**7, max_pixels=10**8) for i in range(3)]
    batch = preprocess(np.stack([i.pixels for i in images]))
    together = tf_engine.predict(batch)
    alone = np.concatenate([tf_engine.predict(batch[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(together, alone, atol=1e-4)  # oneDNN blocks by batch


class _FakeEngine:
    info = ModelInfo(
        name="Fake",
        weights="random",
        engine="fake",
        precision="fp32",
        input_size=224,
        num_classes=1000,
        load_seconds=0.0,
    )

    def predict(self, batch):
        return batch


def test_engine_slot_loads_once_however_often_started():
    calls = []
    gate = threading.Event()

    def factory():
        calls.append(1)
        gate.wait(5)
        return _FakeEngine()

    slot = EngineSlot()
    slot.start(factory)
    slot.start(factory)
    assert slot.state == "loading"
    with pytest.raises(ModelNotReady):
        slot.get()
    gate.set()
    slot.wait(5)
    slot.start(factory)
    assert slot.state == "ready"
    assert isinstance(slot.get(), _FakeEngine)
    assert len(calls) == 1


def test_engine_slot_reports_a_failed_load():
    def factory():
        raise ModelLoadError("bad weights; set CLASSIFIER_WEIGHTS")

    seen = []
    slot = EngineSlot()
    with pytest.raises(ModelLoadError):
        slot.start(factory, background=False, on_failure=seen.append)
    assert slot.state == "failed"
    assert seen == ["bad weights; set CLASSIFIER_WEIGHTS"]
    with pytest.raises(ModelNotReady, match="CLASSIFIER_WEIGHTS"):
        slot.get()


def _resnet50_with_trained_like_statistics(seed: int):
    """A ResNet50 whose every batch normalisation scales and shifts its channels, as
    trained ones do (the seeded random weights have the identity statistics, which would
    hide a wrong fold)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.applications.ResNet50(weights=None)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, channels),
                    rng.normal(0, 0.2, channels),
                    rng.normal(0, 0.2, channels),
                    rng.uniform(0.5, 2.0, channels),
                ]
            )
    return model


def test_folding_batch_norm_into_the_convolutions_keeps_resnet50s_answers(tf_engine):
    import keras

    model = _resnet50_with_trained_like_statistics(7)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    folded = fold_batch_norm(keras, model)

    assert len(norms) == 53
    served = tf_engine.model.layers  # what the engine runs is folded too
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in served)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert folded.count_params() == model.count_params() - sum(
        layer.count_params() for layer in norms
    )
    images = [decode_image(imagegen.jpeg(i), max_bytes=10**7, max_pixels=10**8) for i in range(4)]
    batch = preprocess(np.stack([i.pixels for i in images]))

    def features(network):
        pooled = keras.Model(network.input, network.get_layer("avg_pool").output)
        return pooled(batch, training=False).numpy()

    expected, got = features(model), features(folded)
    # Same function up to float32 rounding: relative to the features' own scale.
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    for layer in norms:  # what a fold that ignored the statistics would compute
        channels = layer.moving_mean.shape[0]
        layer.set_weights(
            [np.ones(channels), np.zeros(channels), np.zeros(channels), np.ones(channels)]
        )
    assert np.abs(features(model) - expected).max() > 0.1 * np.abs(expected).max()


@pytest.mark.slow  # collectstatic / a Keras ResNet50 of its own: seconds
def test_a_weights_file_like_kerass_imagenet_one_serves_that_models_answers(tmp_path):
    # The format of Keras's resnet50_weights_tf_dim_ordering_tf_kernels.h5 (what
    # CLASSIFIER_WEIGHTS=imagenet downloads, and what a local file usually is): Keras's
    # legacy HDF5 layout, written with Keras's own writer.
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    model = _resnet50_with_trained_like_statistics(3)
    path = tmp_path / "resnet50_weights.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    engine = TensorFlowEngine(weights=str(path))

    images = [decode_image(imagegen.jpeg(i), max_bytes=10**7, max_pixels=10**8) for i in range(3)]
    batch = preprocess(np.stack([i.pixels for i in images]))
    expected, got = model(batch, training=False).numpy(), engine.predict(batch)
    top5 = np.argsort(-expected, axis=1)[:, :5]
    np.testing.assert_array_equal(np.argsort(-got, axis=1)[:, :5], top5)
    rows = np.arange(len(images))[:, None]
    np.testing.assert_allclose(got[rows, top5], expected[rows, top5], rtol=1e-3)
    assert engine.info.weights == "resnet50_weights.h5"
