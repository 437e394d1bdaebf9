"""TensorFlow Serving's REST API and KServe's v1 protocol as their users speak them: KServe's
own client (`kserve.InferenceRESTClient`, its default protocol) against a real gunicorn
with the real ResNet50 (random weights); then TF Serving's JSON (row and columnar, b64
files and tensors, `:classify` with examples), its errors and the history through
Django's test client (every answer checked against the OpenAPI description)."""

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest
import requests
from django.test import Client
from kserve import InferenceRESTClient, RESTConfig

from classifier import images
from classifier.model import preprocess
from classifier.models import Prediction

from . import imagegen
from .helpers import upload

MODEL = "resnet50"
KEY = "v1-test-key"
PREDICT = f"/v1/models/{MODEL}:predict"
CLASSIFY = f"/v1/models/{MODEL}:classify"
SIGNATURE = "serving_default"


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, module_gunicorn):
    with django_db_blocker.unblock():
        return module_gunicorn(CLASSIFIER_API_KEYS=KEY)


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def kserve(call):
    """Run `call(client)` (a coroutine) with a KServe REST client, as its users do."""

    async def run():
        client = InferenceRESTClient(RESTConfig())  # the default protocol: v1
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(run())


def v2_probabilities(server, data: bytes) -> np.ndarray:
    message = {
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(data)["b64"]]}]
    }
    response = requests.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        json=message,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    return np.array(response.json()["outputs"][0]["data"], dtype=np.float32)


def test_kserves_client_checks_liveness_and_readiness_and_predicts(server):
    data = imagegen.jpeg(4)

    async def session(client):
        live = await client.is_server_live(server.url)
        ready = await client.is_model_ready(server.url, MODEL)
        answer = await client.infer(
            server.url,
            {"instances": [b64(data), b64(imagegen.jpeg(5))]},
            model_name=MODEL,
            headers={"Authorization": f"Bearer {KEY}"},
        )
        return live, ready, answer

    live, ready, answer = kserve(session)
    assert live is True
    assert ready is True
    assert list(answer) == ["predictions"]
    rows = np.array(answer["predictions"], dtype=np.float32)
    assert rows.shape == (2, 1000)
    # The same probabilities as v2 gives (up to the last digits: a batch of 2 against 1).
    np.testing.assert_allclose(rows[0], v2_probabilities(server, data), atol=1e-4)


def test_kserves_client_sees_the_servers_errors(server):
    async def call(client, model, headers):
        return await client.infer(
            server.url, {"instances": [b64(imagegen.jpeg(1))]}, model_name=model, headers=headers
        )

    for model, headers, status, words in (
        ("inception", {"Authorization": f"Bearer {KEY}"}, 404, "Servable not found"),
        (MODEL, {}, 401, "API key"),
    ):
        with pytest.raises(httpx.HTTPStatusError) as error:
            kserve(lambda client, m=model, h=headers: call(client, m, h))
        assert error.value.response.status_code == status
        assert words in str(error.value)
    # As KServe's own server: an unknown model is a 404, which its client raises.
    with pytest.raises(httpx.HTTPStatusError, match="Latest\\(inception\\)"):
        kserve(lambda client: client.is_model_ready(server.url, "inception"))


def test_get_slash_is_the_page_to_browsers_and_liveness_to_api_clients(client):
    for accept in ("text/html,application/xhtml+xml,*/*;q=0.8", None):  # a browser, no Accept
        page = client.get("/", **({"HTTP_ACCEPT": accept} if accept else {}))
        assert page["Content-Type"].startswith("text/html")
        assert "Accept" in page["Vary"]
    for accept in ("*/*", "application/json"):  # httpx (KServe's client), curl
        liveness = client.get("/", HTTP_ACCEPT=accept)
        assert liveness.json() == {"status": "alive"}
        assert "Accept" in liveness["Vary"]


# Through Django's test client: TF Serving's JSON, exactly.


def post(client, path: str, message: dict):
    return client.post(path, json.dumps(message), content_type="application/json")


def _pixels(data: bytes) -> np.ndarray:
    decoded = images.decode_image(data, max_bytes=10**8, max_pixels=10**8)
    return preprocess(decoded.pixels[np.newaxis])[0]


@pytest.mark.django_db
def test_row_and_columnar_files_and_tensors_give_the_same_rows(client, ready_engine):
    data = imagegen.jpeg(6)
    row = post(client, PREDICT, {"instances": [b64(data)]})
    assert row.status_code == 200, row.content[:300]
    expected = np.array(row.json()["predictions"][0])
    assert expected.shape == (1000,)
    assert expected.sum() == pytest.approx(1.0, abs=1e-3)
    for path, message, key in (
        (PREDICT, {"instances": [{"image": b64(data)}]}, "predictions"),
        (PREDICT, {"inputs": [b64(data)]}, "outputs"),
        (PREDICT, {"inputs": {"image": [b64(data)]}, "signature_name": SIGNATURE}, "outputs"),
        (PREDICT, {"instances": [_pixels(data).tolist()]}, "predictions"),
        (PREDICT, {"instances": [{"pixels": _pixels(data).tolist()}]}, "predictions"),
        (f"/v1/models/{MODEL}/versions/1:predict", {"instances": [b64(data)]}, "predictions"),
    ):
        response = post(client, path, message)
        assert response.status_code == 200, (message.keys(), response.content[:300])
        assert list(response.json()) == [key]
        np.testing.assert_allclose(response.json()[key][0], expected, atol=1e-5)


@pytest.mark.django_db
def test_classify_gives_the_labels_and_scores_predict_gives(client, ready_engine):
    files = [imagegen.jpeg(7), imagegen.jpeg(8)]
    classic = [client.post("/predict", {"image": upload(f)}).json()["predictions"] for f in files]
    for message in (
        {"examples": [{"image": b64(f)} for f in files]},
        {"instances": [b64(f) for f in files]},
    ):
        response = post(client, CLASSIFY, message)
        assert response.status_code == 200, response.content[:300]
        results = response.json()["results"]
        assert [[label for label, _ in r] for r in results] == [
            [p["label"] for p in c] for c in classic
        ]
        for got, want in zip(results, classic, strict=True):
            assert [score for _, score in got] == pytest.approx(
                [p["probability"] for p in want], abs=1e-5
            )
    # Shared features come from `context`.
    shared = post(client, CLASSIFY, {"context": {"image": b64(files[0])}, "examples": [{}]})
    assert shared.json()["results"][0][0][0] == classic[0][0]["label"]


@pytest.mark.django_db
def test_answers_are_recorded_with_source_v1(client, ready_engine):
    post(client, PREDICT, {"instances": [b64(imagegen.jpeg(1)), b64(imagegen.jpeg(2))]})
    post(client, CLASSIFY, {"instances": [_pixels(imagegen.jpeg(3)).tolist()]})
    rows = list(Prediction.objects.order_by("pk"))
    assert [(r.source, r.image_format) for r in rows] == [
        ("v1", "JPEG"),
        ("v1", "JPEG"),
        ("v1", "TENSOR"),
    ]


@pytest.mark.django_db
def test_status_and_metadata_say_what_tf_servings_do(client, ready_engine):
    status = client.get(f"/v1/models/{MODEL}").json()
    assert status["ready"] is True
    assert status["model_version_status"] == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]
    assert client.get(f"/v1/models/{MODEL}/versions/1").json() == status
    metadata = client.get(f"/v1/models/{MODEL}/metadata").json()
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert {name: t["dtype"] for name, t in signature["inputs"].items()} == {
        "image": "DT_STRING",
        "pixels": "DT_FLOAT",
    }
    dims = signature["outputs"]["probabilities"]["tensor_shape"]["dim"]
    assert [d["size"] for d in dims] == ["-1", "1000"]
    assert client.get("/v1/models").json() == {"models": ["resnet50", "resnet50_rgb"]}


@pytest.mark.django_db
def test_a_loading_model_is_not_ready(client):
    status = client.get(f"/v1/models/{MODEL}")
    assert status.status_code == 200
    assert status.json()["ready"] is False
    assert status.json()["model_version_status"][0]["state"] == "LOADING"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "message", "status", "words"),
    [
        (PREDICT, {"instances": [b64(b"x")], "inputs": [b64(b"x")]}, 400, "exactly one of"),
        (PREDICT, {"examples": [{"image": b64(b"x")}]}, 400, "exactly one of"),
        (PREDICT, {"instances": [{"b64": "***"}]}, 400, "not valid base64"),
        (PREDICT, {"instances": [{"image": b64(b"x"), "pixels": []}]}, 400, "names one input"),
        (PREDICT, {"instances": [b64(b"not an image")]}, 400, "image"),
        (PREDICT, {"instances": [[1, 2, 3]]}, 400, "values"),
        (PREDICT, {"instances": [{"rgb": []}]}, 400, "Unknown input 'rgb'"),
        (PREDICT, {"instances": []}, 400, "no images"),
        (PREDICT, {"instances": [b64(b"x")], "signature_name": "other"}, 400, "signature"),
        (PREDICT, [1], 400, "JSON object"),
        (PREDICT, {"instances": [b64(b"x")] * 9}, 413, "limit"),
        ("/v1/models/inception:predict", {"instances": []}, 404, "Latest(inception)"),
        (f"/v1/models/{MODEL}/versions/2:classify", {"instances": []}, 404, "Specific"),
    ],
)
def test_bad_requests_get_tf_servings_error_shape(
    client, ready_engine, path, message, status, words
):
    response = post(client, path, message)
    assert response.status_code == status, response.content[:300]
    assert list(response.json()) == ["error"]
    assert words in response.json()["error"]
    assert Prediction.objects.count() == 0


@pytest.mark.django_db
def test_wrong_methods_and_unknown_paths_answer_json():
    client = Client()  # not the described methods: no check against the description
    for response in (client.get(PREDICT), client.post(f"/v1/models/{MODEL}")):
        assert response.status_code == 405
        assert "error" in response.json()
    unknown = client.get(f"/v1/models/{MODEL}:explode")
    assert unknown.status_code == 404
    assert "error" in unknown.json()
