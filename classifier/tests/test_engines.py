"""OpenVINO against TensorFlow: the same Keras ResNet50 (seeded random weights), the same
inputs. Nothing is mocked: both engines run the real network."""

import json

import numpy as np
import pytest

from classifier import runtime
from classifier.engines import ModelLoadError, base, build_engine, hardware
from classifier.engines.openvino import OpenVINOEngine, export_ir
from classifier.images import decode_image
from classifier.model import preprocess
from classifier.models import Prediction

from . import imagegen

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
        body = client.post("/predict", {"image": imagegen_upload(data)}).json()
        assert body["model"]["engine"] == "openvino"
        assert client.get("/model").json()["model"]["engine"] == "openvino"
        page = client.post("/", {"image": imagegen_upload(data)})
        assert b"openvino" in page.content
        assert set(Prediction.objects.values_list("engine", "precision")) == {("openvino", "fp32")}
    finally:
        runtime.engine_slot.set(None)
        runtime.shutdown()


def imagegen_upload(data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("picture.jpg", data, content_type="image/jpeg")
