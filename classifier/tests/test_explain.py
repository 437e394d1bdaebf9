"""Class activation maps (classifier/explain.py): exact for ResNet50 in both engines, they
follow the content, and the API, the v2 path, the history and the admin carry them."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from classifier import explain
from classifier.engines.openvino import OpenVINOEngine
from classifier.images import decode_image
from classifier.model import preprocess
from classifier.models import Prediction

from . import imagegen
from .helpers import upload


@pytest.fixture(scope="module")
def images():
    decoded = [decode_image(imagegen.jpeg(i), max_bytes=10**7, max_pixels=10**8) for i in range(6)]
    return preprocess(np.stack([d.pixels for d in decoded]))


@pytest.fixture(scope="module")
def openvino_fp32(tf_engine):
    return OpenVINOEngine(weights="random", keras_model=tf_engine.model)


@pytest.fixture(scope="module", params=["tensorflow", "openvino"])
def engine(request, tf_engine, openvino_fp32):
    return tf_engine if request.param == "tensorflow" else openvino_fp32


def test_the_maps_add_up_to_the_logits(engine, images):
    """mean(CAM_c) - mean(CAM_d) + b_c - b_d = log p_c - log p_d, with the engine's own
    head, for each image's two best classes: the map is the answer, cell by cell."""
    probabilities, features = engine.forward(images)
    assert features.shape == (len(images), 7, 7, 2048)
    kernel, bias = engine.head
    for p, f in zip(probabilities, features, strict=True):
        c, d = np.argsort(-p)[:2]
        cam_c = explain.activation_map(f, kernel, c)
        cam_d = explain.activation_map(f, kernel, d)
        difference = cam_c.mean() - cam_d.mean() + bias[c] - bias[d]
        assert difference == pytest.approx(np.log(p[c]) - np.log(p[d]), abs=1e-4)
    np.testing.assert_allclose(engine.predict(images), probabilities, atol=1e-6)


def test_tensorflow_and_openvino_draw_the_same_maps(tf_engine, openvino_fp32, images):
    p, tf_features = tf_engine.forward(images)
    _, ov_features = openvino_fp32.forward(images)
    for row, a, b in zip(p, tf_features, ov_features, strict=True):
        index = int(row.argmax())
        tf_map = explain.normalised(explain.activation_map(a, tf_engine.head[0], index))
        ov_map = explain.normalised(explain.activation_map(b, openvino_fp32.head[0], index))
        assert tf_map.max() == pytest.approx(1.0)
        np.testing.assert_allclose(ov_map, tf_map, atol=1e-3)


def test_openvino_bf16_gives_the_maps_from_the_same_pass(tf_engine, images):
    bf16 = OpenVINOEngine(weights="random", precision="bf16", keras_model=tf_engine.model)
    probabilities, features = bf16.forward(images)
    assert features.shape == (len(images), 7, 7, 2048)
    _, reference = tf_engine.forward(images)
    for p, f, r in zip(probabilities, features, reference, strict=True):
        index = int(p.argmax())
        got = explain.normalised(explain.activation_map(f, bf16.head[0], index))
        want = explain.normalised(explain.activation_map(r, tf_engine.head[0], index))
        assert np.abs(got - want).max() < 0.1  # bfloat16 keeps ~3 significant digits


def _patch_picture(top: int, left: int) -> np.ndarray:
    """A textured 80x80 patch on a flat grey 224x224 picture."""
    picture = np.full((224, 224, 3), 128, np.uint8)
    texture = np.random.default_rng(1).integers(0, 256, (80, 80, 3), dtype=np.uint8)
    picture[top : top + 80, left : left + 80] = texture
    return picture


def test_the_map_follows_the_content(tf_engine):
    """The same patch moved from the top-left corner to the bottom-right one: the peak of
    the first picture's class's map moves down and right with it."""
    pictures = np.stack([_patch_picture(8, 8), _patch_picture(136, 136)])
    probabilities, features = tf_engine.forward(preprocess(pictures))
    index = int(probabilities[0].argmax())
    peaks = [
        np.unravel_index(explain.activation_map(f, tf_engine.head[0], index).argmax(), (7, 7))
        for f in features
    ]
    (row0, col0), (row1, col1) = peaks
    assert row1 - row0 >= 2, peaks
    assert col1 - col0 >= 2, peaks


def test_normalised_maps_are_in_0_1_and_all_zero_without_positive_evidence():
    cam = np.array([[-2.0, 1.0], [3.0, 0.5]])
    np.testing.assert_allclose(explain.normalised(cam), [[0, 1 / 3], [1, 0.5 / 3]])
    assert not explain.normalised(-np.ones((7, 7))).any()


def test_the_overlay_is_brightest_where_the_map_is():
    thumbnail = io.BytesIO()
    Image.new("RGB", (160, 120), (128, 128, 128)).save(thumbnail, "JPEG")
    cells = np.zeros((7, 7))
    cells[0, 0] = 1.0
    overlay = Image.open(io.BytesIO(explain.overlay_png(thumbnail.getvalue(), cells.tolist())))
    assert overlay.size == (160, 120)
    hot, cold = overlay.getpixel((2, 2)), overlay.getpixel((157, 117))
    assert hot[0] + hot[1] > cold[0] + cold[1] + 100  # the scale's yellow end against its violet


def assert_explanation(result: dict) -> list[list[float]]:
    explanation = result["explanation"]
    assert explanation["index"] == result["predictions"][0]["index"]
    assert explanation["label"] == result["predictions"][0]["label"]
    cells = np.array(explanation["grid"])
    assert cells.shape == (7, 7)
    assert cells.min() >= 0.0
    assert cells.max() == 1.0
    return explanation["grid"]


@pytest.mark.django_db
def test_explain_adds_each_images_map_to_the_api_answer(client, ready_engine):
    plain = client.post("/predict", {"image": upload(imagegen.jpeg(0))}).json()
    assert "explanation" not in plain["results"][0]
    files = [upload(imagegen.jpeg(0)), upload(imagegen.jpeg(1))]
    form = client.post("/predict", {"image": files, "explain": "1"}).json()
    grids = [assert_explanation(result) for result in form["results"]]
    # The same images alone (a batch of one, so float rounding may differ a little).
    query = client.post("/predict?explain=true", {"image": upload(imagegen.jpeg(0))}).json()
    np.testing.assert_allclose(assert_explanation(query["results"][0]), grids[0], atol=1e-3)
    body = {"images": [base64.b64encode(imagegen.jpeg(1)).decode()], "explain": True}
    as_json = client.post("/predict", json.dumps(body), content_type="application/json").json()
    np.testing.assert_allclose(assert_explanation(as_json["results"][0]), grids[1], atol=1e-3)
    # Every answer's map is in the history, asked for or not.
    row = Prediction.objects.get(pk=query["results"][0]["prediction_id"])
    assert row.activation_map == query["results"][0]["explanation"]["grid"]
    unasked = Prediction.objects.get(pk=plain["results"][0]["prediction_id"])
    np.testing.assert_allclose(unasked.activation_map, grids[0], atol=1e-3)


@pytest.mark.django_db
def test_explain_must_be_yes_or_no(client, ready_engine):
    response = client.post("/predict", {"image": upload(imagegen.jpeg(0)), "explain": "maybe"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_parameter"
    assert Prediction.objects.count() == 0


@pytest.mark.django_db
def test_the_v2_path_gives_the_map_as_an_output(client, ready_engine):
    data = imagegen.jpeg(2)
    expected = client.post("/predict?explain=1", {"image": upload(data)}).json()
    message = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(data).decode()],
            }
        ],
        "parameters": {"explain": True},
    }
    infer = "/v2/models/resnet50/infer"
    response = client.post(infer, json.dumps(message), content_type="application/json").json()
    outputs = {output["name"]: output for output in response["outputs"]}
    assert set(outputs) == {"probabilities", "explanation"}
    assert outputs["explanation"]["shape"] == [1, 7, 7]
    np.testing.assert_allclose(
        np.reshape(outputs["explanation"]["data"], (7, 7)),
        expected["results"][0]["explanation"]["grid"],
        atol=1e-6,
    )
    message.pop("parameters")
    message["outputs"] = [{"name": "explanation"}]
    response = client.post(infer, json.dumps(message), content_type="application/json").json()
    assert [output["name"] for output in response["outputs"]] == ["explanation"]


@pytest.mark.django_db
def test_the_admin_shows_the_thumbnail_with_its_map(admin_client, client, ready_engine):
    answer = client.post("/predict", {"image": upload(imagegen.jpeg(3))}).json()
    pk = answer["results"][0]["prediction_id"]
    page = admin_client.get(f"/admin/classifier/prediction/{pk}/change/").content.decode()
    start = page.index('<img src="data:image/png;base64,')
    assert "Where the model looked for" in page[start : start + 20000]
    encoded = page[start + len('<img src="data:image/png;base64,') :].split('"', 1)[0]
    overlay = Image.open(io.BytesIO(base64.b64decode(encoded)))
    row = Prediction.objects.get(pk=pk)
    assert overlay.size == Image.open(io.BytesIO(bytes(row.thumbnail))).size
