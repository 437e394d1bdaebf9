"""Your own classes served everywhere ImageNet's are: a head trained by `train_head` on a
generated data set (random base weights), then served with CLASSIFIER_MODEL by both
engines (maps exact, OpenVINO fp32 equal to TensorFlow), by a real gunicorn through
/predict, /v2 (tritonclient), /v1 and /model, and in-process through the page, the
history and the admin."""

import base64
import io
import json
import os

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from django.core.management import call_command

from classifier import explain, runtime
from classifier.engines import ModelLoadError, build_engine
from classifier.engines.base import load_model
from classifier.engines.openvino import OpenVINOEngine
from classifier.images import decode_image
from classifier.model import preprocess
from classifier.models import Prediction

from . import imagegen
from .helpers import CHROMIUM, train_head, upload

CLASSES = sorted(imagegen.CLASSES)


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    """A model directory trained on the generated classes (random base weights)."""
    root = tmp_path_factory.mktemp("data")
    imagegen.data_set(root, per_class=20)
    output = tmp_path_factory.mktemp("models") / "shapes"
    train_head(root, output, "3")
    return output


@pytest.fixture(scope="module")
def own_engine(own_model):
    return build_engine(engine="tensorflow", weights="random", model=str(own_model))


@pytest.fixture
def serving_own(own_engine, own_model, settings):
    """The process serves the own model, as a server started with CLASSIFIER_MODEL."""
    settings.CLASSIFIER_MODEL = str(own_model)
    runtime.engine_slot.set(own_engine)
    yield own_engine
    runtime.engine_slot.set(None)
    runtime.shutdown()


def fresh(kind: str, count: int = 4) -> list[bytes]:
    """Pictures of `kind` the model never saw (indices past the data set's)."""
    return [imagegen.encode(imagegen.class_picture(kind, 100 + i), "JPEG") for i in range(count)]


def inputs(files: list[bytes]) -> np.ndarray:
    decoded = [decode_image(f, max_bytes=10**7, max_pixels=10**8) for f in files]
    return preprocess(np.stack([d.pixels for d in decoded]))


def test_the_engine_answers_with_the_own_classes_and_maps_stay_exact(own_engine):
    assert (own_engine.info.name, own_engine.info.version) == ("shapes", "3")
    assert own_engine.info.num_classes == 4
    kernel, bias = own_engine.head
    assert kernel.shape == (2048, 4)
    right = 0
    for label, kind in enumerate(CLASSES):
        probabilities, features = own_engine.forward(inputs(fresh(kind)))
        assert probabilities.shape == (4, 4)
        right += int((probabilities.argmax(axis=1) == label).sum())
        for p, f in zip(probabilities, features, strict=True):
            c, d = np.argsort(-p)[:2]
            gap = (
                explain.activation_map(f, kernel, c).mean()
                - explain.activation_map(f, kernel, d).mean()
                + bias[c]
                - bias[d]
            )
            assert gap == pytest.approx(np.log(p[c]) - np.log(p[d]), abs=1e-4)
    assert right >= 14  # of 16 pictures it never saw


def test_openvino_fp32_answers_equal_tensorflows_and_the_ir_remembers_the_model(
    own_engine, own_model, tmp_path, settings
):
    images = inputs([f for kind in CLASSES for f in fresh(kind, 2)])
    openvino = OpenVINOEngine(
        weights="random", keras_model=own_engine.model, model=load_model(str(own_model), "random")
    )
    np.testing.assert_allclose(openvino.predict(images), own_engine.predict(images), atol=1e-5)
    assert (openvino.info.name, openvino.info.num_classes) == ("shapes", 4)
    settings.CLASSIFIER_WEIGHTS = "random"
    settings.CLASSIFIER_MODEL = str(own_model)
    call_command("export_openvino", str(tmp_path / "ir"), stdout=io.StringIO())
    metadata = json.loads((tmp_path / "ir" / "metadata.json").read_text())
    assert metadata == {"model": "shapes", "version": "3", "weights": "random"}
    from_ir = build_engine(
        engine="openvino", weights="random", openvino_ir=str(tmp_path / "ir"), model=str(own_model)
    )
    np.testing.assert_allclose(from_ir.predict(images), own_engine.predict(images), atol=1e-5)
    with pytest.raises(ModelLoadError, match="holds the model 'shapes'"):
        build_engine(engine="openvino", weights="random", openvino_ir=str(tmp_path / "ir"))


def test_a_head_trained_on_other_base_weights_is_refused(own_model):
    with pytest.raises(ModelLoadError, match="trained on the base weights 'random'"):
        build_engine(engine="tensorflow", weights="imagenet", model=str(own_model))


@pytest.mark.django_db
def test_predict_the_page_the_history_and_the_admin_name_the_own_classes(
    client, admin_client, serving_own
):
    answer = client.post("/predict", {"image": upload(fresh("rings")[0])}).json()
    assert answer["predictions"][0]["label"] == "rings"
    assert sorted(p["label"] for p in answer["predictions"]) == CLASSES  # top 5 of 4: all
    assert all("wnid" not in p for p in answer["predictions"])  # none for your own classes
    assert (answer["model"]["name"], answer["model"]["version"]) == ("shapes", "3")
    # Trained on these features, random as the base is: no "meaningless" warning.
    assert answer["model"]["meaningful"] is True
    assert "warning" not in answer["model"]
    model = client.get("/model").json()
    assert model["labels"] == {"count": 4, "names": CLASSES}
    page = client.get("/", HTTP_ACCEPT="text/html").content.decode()
    assert "4 classes of its own (leaves, rings, stripes, sunsets)" in page
    assert "ImageNet" not in page
    assert "meaningless" not in page
    row = Prediction.objects.get()
    assert (row.top_label, row.model_name, row.model_version) == ("rings", "shapes", "3")
    listing = admin_client.get("/admin/classifier/prediction/?model_version=3").content.decode()
    assert "shapes 3" in listing
    assert "rings" in listing


@pytest.fixture(scope="module")
def own_server(own_model, django_db_setup, django_db_blocker, module_gunicorn):
    with django_db_blocker.unblock():
        return module_gunicorn(CLASSIFIER_MODEL=str(own_model))


def test_a_server_with_classifier_model_answers_with_its_classes_on_every_protocol(own_server):
    data = fresh("stripes")[1]
    answer = requests.post(f"{own_server.url}/predict", files={"image": data}, timeout=60).json()
    assert answer["predictions"][0]["label"] == "stripes"
    assert len(answer["predictions"]) == 4  # top 5 of 4 classes: all 4
    client = triton.InferenceServerClient(own_server.url.removeprefix("http://"))
    try:
        metadata = client.get_model_metadata("resnet50")
        assert metadata["outputs"][0]["shape"] == [-1, 4]
        assert client.get_model_config("resnet50")["output"][0]["dims"] == [4]
        tensor = triton.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=object))
        top = triton.InferRequestedOutput("probabilities", class_count=2)
        result = client.infer("resnet50", [tensor], outputs=[top]).as_numpy("probabilities")
        assert result[0][0].decode().split(":")[2] == "stripes"
    finally:
        client.close()
    classified = requests.post(
        f"{own_server.url}/v1/models/resnet50:classify",
        json={"instances": [{"b64": base64.b64encode(data).decode()}]},
        timeout=60,
    ).json()
    assert classified["results"][0][0][0] == "stripes"
    assert len(classified["results"][0]) == 4


@pytest.mark.slow
def test_a_resnet50_you_fine_tuned_in_keras_loads_the_same_way(tmp_path):
    """A `model.keras` (ResNet50 base nested in a model with pooling and one dense layer,
    as the Keras transfer-learning guide builds it) with its labels.txt: served with its
    own base weights and head, giving the Keras model's own answers."""
    import keras

    keras.utils.set_random_seed(5)
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(224, 224, 3))
    pictures = keras.Input((224, 224, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(base(pictures, training=False))
    logits = keras.layers.Dense(3, activation="softmax")(keras.layers.Dropout(0.2)(pooled))
    mine = keras.Model(pictures, logits)
    folder = tmp_path / "mine"
    folder.mkdir()
    mine.save(folder / "model.keras")
    (folder / "labels.txt").write_text("cat\ndog\nfox\n")

    engine = build_engine(engine="tensorflow", weights="imagenet", model=str(folder))

    images = inputs([f for kind in CLASSES for f in fresh(kind, 1)])
    np.testing.assert_allclose(engine.predict(images), mine.predict(images, verbose=0), atol=1e-4)
    assert (engine.info.name, engine.info.weights, engine.info.num_classes) == (
        "mine",
        "model.keras",
        3,
    )
    (folder / "labels.txt").write_text("cat\ndog\n")
    with pytest.raises(ModelLoadError, match="one dense layer"):
        build_engine(engine="tensorflow", weights="imagenet", model=str(folder))


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (CI installs it)",
)
def test_the_page_in_a_browser_names_the_own_classes(browser, live_server, serving_own, tmp_path):
    picture = tmp_path / "leaf.jpg"
    picture.write_bytes(fresh("leaves")[2])
    context = browser.new_context(viewport={"width": 412, "height": 900})  # a phone
    page = context.new_page()
    try:
        page.goto(live_server.url + "/")
        assert "4 classes of its own (leaves, rings, stripes, sunsets)" in page.inner_text("header")
        page.set_input_files("#image", str(picture))
        page.wait_for_selector("#results .score >> nth=3", timeout=30_000)
        labels = page.locator("#results .label").all_inner_texts()
        assert labels[0] == "leaves"
        assert sorted(labels) == CLASSES
    finally:
        context.close()
    assert Prediction.objects.get().model_name == "shapes"
