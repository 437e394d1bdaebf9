"""Each history row keeps its image's pooled features (classifier/features.py): those the
engine that answered computes for that picture, for either engine, unless switched off."""

import numpy as np
import pytest

from classifier import features, runtime
from classifier.engines.openvino import OpenVINOEngine
from classifier.images import decode_image
from classifier.model import preprocess
from classifier.models import Prediction

from . import imagegen
from .helpers import upload


@pytest.fixture(scope="module")
def openvino_engine(tf_engine):
    return OpenVINOEngine(weights="random", keras_model=tf_engine.model)


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["tensorflow", "openvino"])
def test_a_row_keeps_the_features_its_engine_computes_for_that_image(
    client, tf_engine, openvino_engine, settings, name
):
    engine = tf_engine if name == "tensorflow" else openvino_engine
    runtime.engine_slot.set(engine)
    try:
        pictures = [imagegen.jpeg(5, (400, 300)), imagegen.png(6, (300, 300))]
        answer = client.post("/predict", {"image": [upload(p) for p in pictures]})
        assert answer.status_code == 200
    finally:
        runtime.engine_slot.set(None)
        runtime.shutdown()
    rows = list(Prediction.objects.order_by("id"))
    assert [row.engine for row in rows] == [name, name]
    for picture, row in zip(pictures, rows, strict=True):
        image = decode_image(
            picture,
            max_bytes=settings.CLASSIFIER_MAX_IMAGE_BYTES,
            max_pixels=settings.CLASSIFIER_MAX_PIXELS,
        )
        _, last_block = engine.forward(preprocess(image.pixels[None]))
        expected = last_block.mean(axis=(1, 2))[0]
        assert len(bytes(row.features)) == 4096  # 2048 float16
        stored = features.decode(row.features)
        np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=2e-3)
        assert np.abs(expected).max() > 1, "real features, not zeros"


@pytest.mark.django_db
def test_with_store_features_off_rows_have_none(client, ready_engine, settings):
    settings.CLASSIFIER_STORE_FEATURES = False
    assert client.post("/predict", {"image": upload(imagegen.jpeg(1))}).status_code == 200
    assert Prediction.objects.get().features is None


def test_the_encoding_is_float16_and_refuses_the_wrong_size():
    values = np.linspace(-3, 70000, features.COUNT, dtype=np.float32)
    data = features.encode(values)
    assert len(data) == 4096
    back = features.decode(data)
    assert np.isfinite(back).all(), "beyond float16's range is clipped, never inf"
    np.testing.assert_allclose(back[:100], values[:100], rtol=1e-3)
    with pytest.raises(ValueError, match="expected 2048 features, got 10"):
        features.encode(values[:10])
    with pytest.raises(ValueError, match="expected 4096 bytes, got 4094"):
        features.decode(data[:-2])
