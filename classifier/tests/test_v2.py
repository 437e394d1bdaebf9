"""The Open Inference Protocol (v2) as its users speak it: Triton's own HTTP client
(`tritonclient.http`) against a real gunicorn with the real ResNet50 (random weights),
JSON and binary tensors both ways, the classification extension; then the error answers
and the history through Django's test client."""

import base64
import json
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from django.conf import settings
from django.db import connection
from django.test import Client
from tritonclient.utils import InferenceServerException

import classifier
from classifier import images, oip, runtime, services
from classifier.errors import BatchFailed, InvalidTensor
from classifier.model import preprocess
from classifier.models import Prediction

from . import imagegen
from .helpers import upload

MODEL = "resnet50"
RGB_MODEL = "resnet50_rgb"
KEY = "v2-test-key"
INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, module_gunicorn):
    with django_db_blocker.unblock():
        return module_gunicorn(CLASSIFIER_API_KEYS=KEY)


@pytest.fixture(scope="module")
def triton_client(server):
    connection = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield connection
    connection.close()


def auth() -> dict[str, str]:
    # A new dict each time: the client adds its own headers to the one it is given.
    return {"Authorization": f"Bearer {KEY}"}


def image_input(files: list[bytes], *, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(files)], "BYTES")
    # In JSON a BYTES element is a string: an image file goes as base64.
    data = files if binary else [base64.b64encode(f) for f in files]
    tensor.set_data_from_numpy(np.array(data, dtype=object), binary_data=binary)
    return tensor


def pixels_input(files: list[bytes], *, binary: bool) -> triton.InferInput:
    """The client's own preprocessing: decoded as the server does, caffe mode."""
    rgb = np.stack([_decoded(f).pixels for f in files])
    tensor = triton.InferInput("pixels", [len(files), 224, 224, 3], "FP32")
    tensor.set_data_from_numpy(preprocess(rgb), binary_data=binary)
    return tensor


def _decoded(data: bytes) -> images.DecodedImage:
    return images.decode_image(data, max_bytes=10**8, max_pixels=10**8)


def probabilities(triton_client, tensor, *, binary: bool = True) -> np.ndarray:
    output = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = triton_client.infer(MODEL, [tensor], outputs=[output], headers=auth())
    return result.as_numpy("probabilities")


def predict_top1(server, data: bytes) -> int:
    response = requests.post(
        f"{server.url}/predict", files={"image": ("a.jpg", data)}, headers=auth(), timeout=60
    )
    return response.json()["predictions"][0]["index"]


def test_server_and_model_health_and_metadata(triton_client):
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready(MODEL)
    assert triton_client.is_model_ready(MODEL, "1")
    assert not triton_client.is_model_ready("inception")
    server = triton_client.get_server_metadata()
    assert {
        "classification",
        "binary_tensor_data",
        "model_configuration",
        "statistics",
        "model_repository",
    } <= set(server["extensions"])
    assert server["version"] == classifier.__version__
    metadata = triton_client.get_model_metadata(MODEL)
    assert metadata["versions"] == ["1"]
    assert {i["name"]: (i["datatype"], i["shape"]) for i in metadata["inputs"]} == {
        "image": ("BYTES", [-1, 1]),
        "pixels": ("FP32", [-1, 224, 224, 3]),
    }
    assert metadata["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}
    ]
    assert triton_client.get_model_metadata(MODEL, "1") == metadata
    rgb = triton_client.get_model_metadata(RGB_MODEL)
    assert rgb["inputs"] == [{"name": "rgb", "datatype": "FP32", "shape": [-1, 224, 224, 3]}]
    assert rgb["outputs"] == metadata["outputs"]


def test_model_configuration_says_what_the_server_runs(server, triton_client):
    batching = requests.get(f"{server.url}/model", timeout=10).json()["batching"]
    config = triton_client.get_model_config(MODEL)
    assert config == triton_client.get_model_config(MODEL, "1")
    assert config["name"] == MODEL
    assert config["max_batch_size"] == batching["max_batch"]
    queue = config["dynamic_batching"]["default_queue_policy"]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == (
        batching["batch_wait_ms"] * 1000
    )
    assert queue["default_timeout_microseconds"] == batching["queue_timeout_ms"] * 1000
    assert queue["max_queue_size"] == batching["max_queue"]
    assert [
        (i["name"], i["data_type"], i["dims"], i["format"], i["optional"]) for i in config["input"]
    ] == [
        ("image", "TYPE_STRING", [1], "FORMAT_NONE", True),
        ("pixels", "TYPE_FP32", [224, 224, 3], "FORMAT_NHWC", True),
    ]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("probabilities", "TYPE_FP32", [1000])
    ]
    (rgb,) = triton_client.get_model_config(RGB_MODEL)["input"]
    assert (rgb["name"], rgb["format"], rgb["dims"], rgb["optional"]) == (
        "rgb",
        "FORMAT_NHWC",
        [224, 224, 3],
        False,
    )


def test_the_repository_index_lists_both_names_of_the_model_ready(triton_client):
    assert triton_client.get_model_repository_index() == [
        {"name": MODEL, "version": "1", "state": "READY"},
        {"name": RGB_MODEL, "version": "1", "state": "READY"},
    ]


def _stats(triton_client, model: str = MODEL) -> dict:
    (stats,) = triton_client.get_inference_statistics(model)["model_stats"]
    return stats


def test_statistics_count_each_request_and_pass_where_its_time_went(triton_client):
    before = _stats(triton_client)
    files = [imagegen.jpeg(20), imagegen.jpeg(21)]
    for _ in range(3):
        probabilities(triton_client, image_input(files, binary=True))
    with pytest.raises(InferenceServerException):
        probabilities(triton_client, image_input([b"not an image"], binary=True))
    after = _stats(triton_client)
    every = triton_client.get_inference_statistics()["model_stats"]
    assert [entry["name"] for entry in every] == [MODEL, RGB_MODEL]

    def grew(part: str, by: int) -> int:
        was, now = before["inference_stats"][part], after["inference_stats"][part]
        assert now["count"] - was["count"] == by, part
        return now["ns"] - was["ns"]

    success_ns = grew("success", 3)
    parts_ns = sum(
        grew(part, 3) for part in ("queue", "compute_input", "compute_infer", "compute_output")
    )
    assert grew("fail", 1) > 0
    assert after["inference_count"] - before["inference_count"] == 6  # images
    assert 0 < parts_ns <= success_ns
    assert after["last_inference"] >= max(before["last_inference"], 1)
    passes = after["execution_count"] - before["execution_count"]
    assert 1 <= passes <= 3  # three requests of two images: one pass each, or shared
    assert (
        sum(b["compute_infer"]["count"] for b in after["batch_stats"]) == (after["execution_count"])
    )
    assert all(b["compute_infer"]["ns"] > 0 for b in after["batch_stats"])


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_are_answered_as_plain_ones(triton_client, algorithm):
    tensor = image_input([imagegen.jpeg(7)], binary=True)
    plain = probabilities(triton_client, tensor)
    output = triton.InferRequestedOutput("probabilities", binary_data=True)
    compressed = triton_client.infer(
        MODEL,
        [tensor],
        outputs=[output],
        headers=auth(),
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    np.testing.assert_array_equal(compressed.as_numpy("probabilities"), plain)


def test_the_rgb_model_takes_image_clients_tensor_and_answers_as_the_same_picture(triton_client):
    data = imagegen.jpeg(9)
    levels = np.stack([_decoded(data).pixels]).astype(np.float32)  # RGB 0-255, resized
    tensor = triton.InferInput("rgb", list(levels.shape), "FP32")
    tensor.set_data_from_numpy(levels, binary_data=True)
    output = triton.InferRequestedOutput("probabilities", binary_data=True, class_count=3)
    result = triton_client.infer(RGB_MODEL, [tensor], outputs=[output], headers=auth())
    assert result.get_response()["model_name"] == RGB_MODEL
    best = [element.decode().split(":") for element in result.as_numpy("probabilities")[0]]
    from_image = probabilities(triton_client, image_input([data], binary=True))[0]
    assert [int(index) for _, index, _ in best] == list(np.argsort(-from_image)[:3])
    assert float(best[0][0]) == pytest.approx(float(from_image.max()), abs=1e-4)
    # What image_client.py's -s VGG or -s INCEPTION would send: refused, with the reason.
    tensor.set_data_from_numpy(levels / 127.5 - 1, binary_data=True)
    with pytest.raises(InferenceServerException, match="RGB levels from 0 to 255"):
        triton_client.infer(RGB_MODEL, [tensor], headers=auth())


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_image_input_gives_the_probabilities_predict_gives(server, triton_client, binary):
    data = imagegen.jpeg(3)
    got = probabilities(triton_client, image_input([data], binary=binary), binary=binary)
    assert got.shape == (1, 1000)
    assert got.dtype == np.float32
    assert got.sum() == pytest.approx(1.0, abs=1e-3)
    assert int(got[0].argmax()) == predict_top1(server, data)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_pixels_input_equals_the_image_it_was_made_from(triton_client, binary):
    data = imagegen.jpeg(5)
    from_image = probabilities(triton_client, image_input([data], binary=True))
    from_pixels = probabilities(triton_client, pixels_input([data], binary=binary), binary=binary)
    assert from_pixels.shape == (1, 1000)
    np.testing.assert_allclose(from_pixels, from_image, atol=1e-5)


def test_several_images_in_one_request_are_answered_in_order(triton_client):
    files = [imagegen.jpeg(i) for i in range(3)]
    together = probabilities(triton_client, image_input(files, binary=True))
    alone = np.concatenate(
        [probabilities(triton_client, image_input([f], binary=True)) for f in files]
    )
    assert together.shape == (3, 1000)
    assert len({int(row.argmax()) for row in alone}) > 1, "test images must differ in top-1"
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension_gives_the_k_best_as_score_index_label(triton_client, binary):
    files = [imagegen.jpeg(1), imagegen.png(2)]
    full = probabilities(triton_client, image_input(files, binary=True))
    output = triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)
    result = triton_client.infer(
        MODEL, [image_input(files, binary=True)], outputs=[output], headers=auth()
    )
    best = result.as_numpy("probabilities")
    assert best.shape == (2, 3)
    for row, expected in zip(best, full, strict=True):
        # The client gives bytes from binary data, str from JSON.
        parsed = [(e.decode() if isinstance(e, bytes) else e).split(":", 2) for e in row]
        scores = [float(score) for score, _, _ in parsed]
        indices = [int(index) for _, index, _ in parsed]
        assert indices == list(np.argsort(-expected)[:3])
        assert scores == pytest.approx(expected[indices], abs=1e-6)
        assert scores == sorted(scores, reverse=True)
        assert all(label for _, _, label in parsed)


def test_the_request_id_and_model_come_back(triton_client):
    result = triton_client.infer(
        MODEL, [image_input([imagegen.jpeg(0)], binary=True)], request_id="abc-1", headers=auth()
    )
    response = result.get_response()
    assert response["id"] == "abc-1"
    assert (response["model_name"], response["model_version"]) == (MODEL, "1")
    assert response["parameters"]["stored"] is True


def test_the_api_key_goes_in_the_clients_headers(triton_client):
    with pytest.raises(InferenceServerException) as refused:
        triton_client.infer(MODEL, [image_input([imagegen.jpeg(0)], binary=True)])
    assert refused.value.status() == "401"
    assert "API key" in refused.value.message()
    with pytest.raises(InferenceServerException) as wrong:
        triton_client.infer(
            MODEL,
            [image_input([imagegen.jpeg(0)], binary=True)],
            headers={"Authorization": "Bearer wrong"},
        )
    assert wrong.value.status() == "401"


@pytest.mark.parametrize(
    ("files", "status", "words"),
    [
        ([b"not an image at all"], "400", "not an image"),
        ([imagegen.encode(imagegen.pattern(0), "TIFF")], "415", "TIFF"),
        ([imagegen.jpeg(0)] * 9, "413", "limit is 8"),
    ],
    ids=["undecodable", "unsupported-format", "too-many"],
)
def test_client_sees_the_servers_error(triton_client, files, status, words):
    with pytest.raises(InferenceServerException) as error:
        triton_client.infer(MODEL, [image_input(files, binary=True)], headers=auth())
    assert error.value.status() == status
    assert words in error.value.message()


def test_unknown_model_or_version_is_a_404_in_tritons_words(triton_client):
    tensor = image_input([imagegen.jpeg(0)], binary=True)
    for name, version, words in (
        ("inception", "", "Request for unknown model: 'inception' is not found"),
        (MODEL, "2", "Request for unknown model: 'resnet50' version 2 is not found"),
    ):
        with pytest.raises(InferenceServerException) as error:
            triton_client.infer(name, [tensor], model_version=version, headers=auth())
        assert error.value.status() == "404"
        assert error.value.message().startswith(words)
        with pytest.raises(InferenceServerException, match=words):
            triton_client.get_model_config(name, version)


def test_version_is_the_projects():
    pyproject = tomllib.loads((Path(settings.BASE_DIR) / "pyproject.toml").read_text())
    assert classifier.__version__ == pyproject["project"]["version"]


# Through Django's test client: exact bodies, and what the history keeps.


def post_json(client, message: dict, path: str = INFER, **headers):
    return client.post(path, json.dumps(message), content_type="application/json", **headers)


def image_message(*files: bytes, **extra) -> dict:
    return {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(files)],
                "data": [base64.b64encode(f).decode() for f in files],
            }
        ],
        **extra,
    }


def pixels_header(binary: bytes) -> bytes:
    """The JSON header of one `pixels` tensor sent as binary data (`binary` after it)."""
    tensor = {
        "name": "pixels",
        "datatype": "FP32",
        "shape": [1, 224, 224, 3],
        "parameters": {"binary_data_size": len(binary)},
    }
    return json.dumps({"inputs": [tensor]}).encode()


def assert_v2_error(response, status: int, words: str = "") -> str:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json"
    message = response.json()["error"]
    assert isinstance(message, str)
    assert words in message
    return message


@pytest.mark.django_db
def test_each_answer_is_recorded_with_its_source(client, ready_engine):
    response = post_json(client, image_message(imagegen.jpeg(0), imagegen.jpeg(1)))
    assert response.status_code == 200
    assert response.json()["parameters"]["stored"] is True
    rows = list(Prediction.objects.order_by("pk"))
    assert [(r.source, r.image_format, r.width) for r in rows] == [("v2", "JPEG", 320)] * 2
    pixels = preprocess(np.stack([_decoded(imagegen.jpeg(2)).pixels]))
    binary = pixels.astype("<f4").tobytes()
    header = pixels_header(binary)
    response = client.post(
        INFER,
        header + binary,
        content_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.content[:300]
    row = Prediction.objects.latest("pk")
    assert (row.source, row.image_format, row.width, row.height) == ("v2", "TENSOR", 224, 224)
    assert row.thumbnail.startswith(b"\xff\xd8")  # the picture the tensor stands for
    best = int(np.argmax(response.json()["outputs"][0]["data"]))
    assert row.top_label == services.labels()[best].name


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("message", "words"),
    [
        ({"inputs": []}, "exactly one input"),
        (
            {"inputs": [{"name": "photo", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
            "photo",
        ),
        (
            {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": ["x"]}]},
            "BYTES",
        ),
        (
            {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["eA=="]}]},
            "2 elements",
        ),
        (
            {
                "inputs": [
                    {"name": "pixels", "datatype": "FP32", "shape": [1, 224, 224], "data": []}
                ]
            },
            "shape",
        ),
        (
            {
                "inputs": [
                    {"name": "pixels", "datatype": "FP32", "shape": [1, 224, 224, 3], "data": [1.0]}
                ]
            },
            "150528",
        ),
        (
            {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]},
            "base64",
        ),
        ({**image_message(b"x"), "outputs": [{"name": "logits"}]}, "logits"),
        (
            {
                **image_message(b"x"),
                "outputs": [{"name": "probabilities", "parameters": {"classification": 0.5}}],
            },
            "classification",
        ),
        ({**image_message(b"x"), "id": 7}, "id"),
    ],
    ids=[
        "no-input",
        "unknown-input",
        "wrong-datatype",
        "count-mismatch",
        "wrong-shape",
        "too-few-values",
        "bad-base64",
        "unknown-output",
        "bad-class-count",
        "numeric-id",
    ],
)
def test_malformed_requests_are_400_with_the_reason(client, ready_engine, message, words):
    assert_v2_error(post_json(client, message), 400, words)
    assert Prediction.objects.count() == 0


@pytest.mark.django_db
def test_non_finite_pixels_and_bad_binary_framing_are_400(client, ready_engine):
    values = np.zeros((1, 224, 224, 3), "<f4")
    values[0, 5, 5, 1] = np.nan
    binary = values.tobytes()
    header = pixels_header(binary)
    framed = {"headers": {"Inference-Header-Content-Length": str(len(header))}}
    response = client.post(
        INFER, header + binary, content_type="application/octet-stream", **framed
    )
    assert_v2_error(response, 400, "NaN")
    response = client.post(
        INFER, header + binary[:-4], content_type="application/octet-stream", **framed
    )
    assert_v2_error(response, 400, "binary_data_size")
    response = client.post(
        INFER,
        header + binary,
        content_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header) + len(binary) + 1)},
    )
    assert_v2_error(response, 400, "Inference-Header-Content-Length")
    response = client.post(INFER, b"[" * 100_000, content_type="application/json")
    assert_v2_error(response, 400, "JSON")
    # More numbers than the largest tensor allowed: refused before they are parsed.
    numbers = b"[" + b"0," * oip.max_json_values() + b"0]"
    response = client.post(INFER, numbers, content_type="application/json")
    assert_v2_error(response, 413, "binary data")
    assert Prediction.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_poisoned_tensor_is_400_and_costs_its_neighbours_nothing(ready_engine, settings):
    """Finite but huge values (3e38) overflow the forward pass into NaN probabilities: the
    tensor is refused before it runs, and the honest requests beside it are all stored."""
    poisoned = np.full((1, 224, 224, 3), 3e38, "<f4").tobytes()
    header = pixels_header(poisoned)
    settings.CLASSIFIER_BATCH_WAIT_MS = 200  # the requests share forward passes
    answers: dict[str, tuple[int, dict]] = {}

    def send(name):
        try:
            answers[name] = post(name)
        finally:
            # Django's test client keeps a thread's connection open: return it to the pool.
            connection.close()

    def post(name):
        client = Client()
        if name == "poison":
            response = client.post(
                INFER,
                header + poisoned,
                content_type="application/octet-stream",
                headers={"Inference-Header-Content-Length": str(len(header))},
            )
        else:
            picture = upload(imagegen.jpeg(ord(name)), f"{name}.jpg")
            response = client.post("/predict", {"image": picture})
        return response.status_code, response.json()

    threads = [threading.Thread(target=send, args=(name,)) for name in ["poison", *"abcdef"]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    status, body = answers.pop("poison")
    assert status == 400
    assert "151.061" in body["error"]
    assert {name: (status, body["stored"]) for name, (status, body) in answers.items()} == {
        name: (200, True) for name in "abcdef"
    }
    assert Prediction.objects.count() == 6


def test_non_finite_probabilities_from_tensors_are_the_inputs_fault():
    probabilities = np.full((2, 1000), 0.001, np.float32)
    services._check_finite(probabilities, tensors=True)  # finite: nothing to say
    probabilities[1, 7] = np.nan
    with pytest.raises(InvalidTensor, match="Input 2"):
        services._check_finite(probabilities, tensors=True)
    with pytest.raises(BatchFailed):
        services._check_finite(probabilities, tensors=False)


@pytest.mark.django_db
def test_not_ready_is_503_with_retry_after(client):
    runtime.engine_slot.set(None)
    response = post_json(client, image_message(imagegen.jpeg(0)))
    assert_v2_error(response, 503)
    assert int(response["Retry-After"]) >= 1
    response = client.get("/v2/health/ready")
    assert (response.status_code, response.json()) == (503, {"ready": False})
    assert client.get(f"/v2/models/{MODEL}/ready").status_code == 503
    assert client.get("/v2/health/live").json() == {"live": True}


@pytest.mark.django_db
def test_wrong_method_unknown_paths_and_oversized_bodies_answer_protocol_errors(
    client, ready_engine, settings
):
    response = client.get(INFER)
    assert_v2_error(response, 405)
    assert response["Allow"] == "POST"
    assert_v2_error(client.get("/v2/models/inception"), 404, "inception")
    assert_v2_error(client.get(f"/v2/models/{MODEL}/versions/2/ready"), 404, "version")
    assert_v2_error(client.get("/v2/trace/setting"), 404)
    settings.CLASSIFIER_MAX_REQUEST_BYTES = 1024
    response = post_json(client, image_message(imagegen.jpeg(0)))
    assert_v2_error(response, 413, "limit")
