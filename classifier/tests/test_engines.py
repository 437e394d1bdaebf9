"""classifier.engines: the TensorFlow engine and its weights, batch normalisation folded
into the convolutions, the CPUs a process may use, and OpenVINO against TensorFlow (the
same Keras ResNet50, seeded random weights, the same inputs). Nothing is mocked: the
engines run the real network."""

import io
import json

import numpy as np
import pytest
from django.core.management import call_command

from classifier import runtime
from classifier.engines import ModelLoadError, base, build_engine, hardware
from classifier.engines.keras_graph import fold_batch_norm
from classifier.engines.openvino import OpenVINOEngine, export_ir
from classifier.engines.tensorflow import TensorFlowEngine
from classifier.images import decode_image
from classifier.model import preprocess
from classifier.models import Prediction

from . import imagegen
from .helpers import upload

# float32 rounding, with margin (the measured differences: docs/benchmarks.md). These
# random weights answer confidently, like a trained model (engines/keras_graph.py), and a
# softmax near p = 0.5 turns the last float32 bits into visible differences; Keras's
# default random initialisation would saturate the softmax and hide them.
FP32_TOLERANCE = 5e-5
# bf16 keeps 8 bits of mantissa.
BF16_TOLERANCE = 0.15


@pytest.fixture(scope="module")
def images():
    decoded = [
        decode_image(imagegen.jpeg(i, (320, 240)), max_bytes=10**7, max_pixels=10**8)
        for i in range(24)
    ]
    return preprocess(np.stack([d.pixels for d in decoded]))


@pytest.fixture(scope="module")
def openvino_fp32(tf_engine):
    return OpenVINOEngine(weights="random", keras_model=tf_engine.model)


def test_openvino_fp32_matches_tensorflow(tf_engine, openvino_fp32, images):
    expected = tf_engine.predict(images)
    got = openvino_fp32.predict(images)
    assert got.shape == expected.shape == (24, 1000)
    assert np.abs(got - expected).max() <= FP32_TOLERANCE
    top5 = np.argsort(-expected, axis=1)[:, :5]
    np.testing.assert_array_equal(np.argsort(-got, axis=1)[:, :5], top5)
    assert openvino_fp32.info.engine == "openvino"
    assert openvino_fp32.info.precision == "fp32"


@pytest.mark.skipif(not hardware.cpu_supports_bf16(), reason="CPU has no AMX/AVX512-BF16")
def test_openvino_bf16_stays_close_and_agrees_on_confident_answers(tf_engine, images):
    engine = OpenVINOEngine(weights="random", precision="bf16", keras_model=tf_engine.model)
    assert engine.info.precision == "bf16"
    expected = tf_engine.predict(images)
    got = engine.predict(images)
    assert np.abs(got - expected).max() <= BF16_TOLERANCE
    # Only a margin over twice the largest change bf16 may make is sure to survive it.
    ordered = np.sort(expected, axis=1)
    confident = ordered[:, -1] - ordered[:, -2] > 2 * BF16_TOLERANCE
    assert confident.sum() >= 5, "a quarter of the generated images have a clear winner"
    np.testing.assert_array_equal(got.argmax(1)[confident], expected.argmax(1)[confident])


def test_bf16_falls_back_to_fp32_where_the_cpu_lacks_it(monkeypatch, caplog):
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: False)
    assert base.resolve_precision("bf16") == "fp32"
    assert "AVX512-BF16" in caplog.text
    with pytest.raises(ModelLoadError, match="CLASSIFIER_PRECISION"):
        base.resolve_precision("fp16")


def test_exported_ir_gives_the_same_answers_and_remembers_its_weights(
    tf_engine, openvino_fp32, images, tmp_path
):
    export_ir(tf_engine.model, "random", tmp_path)
    assert json.loads((tmp_path / "metadata.json").read_text())["weights"] == "random"
    from_ir = OpenVINOEngine(weights="random", ir_path=str(tmp_path))
    np.testing.assert_allclose(from_ir.predict(images), openvino_fp32.predict(images), atol=1e-6)
    with pytest.raises(ModelLoadError, match="CLASSIFIER_WEIGHTS='imagenet'"):
        OpenVINOEngine(weights="imagenet", ir_path=str(tmp_path))


@pytest.mark.skipif(not hardware.cpu_supports_bf16(), reason="bf16 needs AVX512-BF16 or AMX")
def test_the_shipped_ir_is_the_benchmarked_one(tf_engine, images, tmp_path, settings):
    # What the image ships (`manage.py export_openvino`, as the Dockerfile runs it), what
    # an OpenVINO engine converts at start, and what the benchmark and the peers' harness
    # measure (the served Keras graph) are one graph: the same bf16 answers, where two
    # graphs of the same function would round differently.
    settings.CLASSIFIER_WEIGHTS = "random"
    call_command("export_openvino", str(tmp_path), stdout=io.StringIO())
    shipped = OpenVINOEngine(weights="random", precision="bf16", ir_path=str(tmp_path))
    converted = OpenVINOEngine(weights="random", precision="bf16")
    benchmarked = OpenVINOEngine(weights="random", precision="bf16", keras_model=tf_engine.model)

    expected = benchmarked.predict(images)
    np.testing.assert_allclose(shipped.predict(images), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(converted.predict(images), expected, rtol=0, atol=1e-6)


def test_missing_ir_names_the_setting(tmp_path):
    with pytest.raises(ModelLoadError, match="CLASSIFIER_OPENVINO_IR"):
        OpenVINOEngine(weights="random", ir_path=str(tmp_path / "nothing"))


def test_unknown_engine_names_the_setting():
    with pytest.raises(ModelLoadError, match="CLASSIFIER_ENGINE"):
        build_engine(engine="pytorch", weights="random")


@pytest.mark.django_db
def test_the_engine_in_use_is_reported_by_api_page_and_history(client, openvino_fp32):
    runtime.engine_slot.set(openvino_fp32)
    try:
        data = imagegen.jpeg(1)
        body = client.post("/predict", {"image": upload(data)}).json()
        assert body["model"]["engine"] == "openvino"
        assert client.get("/model").json()["model"]["engine"] == "openvino"
        page = client.post("/", {"image": upload(data)})
        assert b"openvino" in page.content
        assert set(Prediction.objects.values_list("engine", "precision")) == {("openvino", "fp32")}
    finally:
        runtime.engine_slot.set(None)
        runtime.shutdown()


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
