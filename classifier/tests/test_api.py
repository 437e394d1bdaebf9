"""The classic JSON API (`/predict`), readiness and `/model` through Django's test client
with the real model: the contract, its extras and every error answer. The page's tests:
test_page.py."""

import base64

import pytest

from classifier import runtime, services
from classifier.models import Prediction

from . import imagegen
from .helpers import assert_error, upload

pytestmark = pytest.mark.django_db


def test_classic_curl_contract(client, ready_engine):
    response = client.post("/predict", {"image": upload(imagegen.jpeg(0), "dog.jpg")})
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    predictions = body["predictions"]
    assert len(predictions) == 5
    assert all(set(p) >= {"label", "probability"} for p in predictions)
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert body["model"]["weights"] == "random"
    assert body["model"]["meaningful"] is False
    assert "meaningless" in body["model"]["warning"]


def test_top_k_can_be_chosen(client, ready_engine):
    response = client.post("/predict?top_k=1", {"image": upload(imagegen.jpeg(0))})
    assert len(response.json()["predictions"]) == 1
    response = client.post("/predict", {"image": upload(imagegen.jpeg(0)), "top_k": "20"})
    assert len(response.json()["predictions"]) == 20


@pytest.mark.parametrize("value", ["0", "21", "abc", "2.5"])
def test_invalid_top_k_is_a_400(client, ready_engine, value):
    response = client.post("/predict", {"image": upload(imagegen.jpeg(0)), "top_k": value})
    assert_error(response, 400, "invalid_parameter")
    assert Prediction.objects.count() == 0


def _top1_alone(client, data: bytes) -> str:
    return client.post("/predict", {"image": upload(data)}).json()["predictions"][0]["label"]


def test_several_images_are_answered_in_order(client, ready_engine):
    images = [imagegen.jpeg(i) for i in range(4)]
    expected = [_top1_alone(client, data) for data in images]
    assert len(set(expected)) > 1, "test images must differ in top-1 for this test to mean anything"
    files = [upload(data, f"img{i}.jpg") for i, data in enumerate(images)]
    response = client.post("/predict", {"image": files})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["img0.jpg", "img1.jpg", "img2.jpg", "img3.jpg"]
    assert [r["predictions"][0]["label"] for r in results] == expected
    assert response.json()["predictions"] == results[0]["predictions"]


def test_base64_json_body(client, ready_engine):
    images = [imagegen.png(1), imagegen.jpeg(2)]
    payload = {
        "images": [
            base64.b64encode(images[0]).decode(),
            "data:image/jpeg;base64," + base64.b64encode(images[1]).decode(),
        ],
        "top_k": 3,
    }
    response = client.post("/predict", payload, content_type="application/json")
    assert response.status_code == 200
    body = response.json()
    assert [len(r["predictions"]) for r in body["results"]] == [3, 3]
    assert [r["format"] for r in body["results"]] == ["PNG", "JPEG"]
    assert Prediction.objects.filter(source="api").count() == 2


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("not json", "invalid_json"),
        ('{"images": []}', "missing_image"),
        ('{"images": ["***"]}', "invalid_base64"),
        ('{"images": [42]}', "invalid_base64"),
        ("[1, 2]", "missing_image"),
    ],
)
def test_bad_json_bodies_are_400(client, ready_engine, payload, code):
    response = client.post("/predict", payload, content_type="application/json")
    assert_error(response, 400, code)


def test_every_classified_image_is_recorded_once(client, ready_engine):
    files = [upload(imagegen.jpeg(0, (500, 375)), "a.jpg"), upload(imagegen.png(1), "b.png")]
    body = client.post("/predict", {"image": files}).json()
    rows = list(Prediction.objects.order_by("pk"))
    assert len(rows) == 2
    first = rows[0]
    assert first.pk == body["results"][0]["prediction_id"]
    assert first.source == "api"
    assert first.filename == "a.jpg"
    assert (first.width, first.height, first.image_format) == (500, 375, "JPEG")
    assert first.sha256 == body["results"][0]["sha256"]
    assert bytes(first.thumbnail)[:2] == b"\xff\xd8"  # a JPEG thumbnail
    assert first.top_label == body["results"][0]["predictions"][0]["label"]
    assert first.top_probability == pytest.approx(
        body["results"][0]["predictions"][0]["probability"]
    )
    assert len(first.top_k) == 5
    assert first.inference_ms > 0
    assert first.total_ms >= first.inference_ms
    assert (first.model_name, first.weights, first.engine) == ("ResNet50", "random", "tensorflow")
    assert first.created_at is not None


def test_get_is_405_in_json(client, ready_engine):
    response = client.get("/predict")
    assert_error(response, 405, "method_not_allowed")
    assert response["Allow"] == "POST"


def test_missing_image_is_400(client, ready_engine):
    assert_error(
        client.post("/predict", {"picture": upload(imagegen.jpeg(0))}), 400, "missing_image"
    )


def test_undecodable_image_is_400_and_nothing_is_stored(client, ready_engine):
    files = [upload(imagegen.jpeg(0), "good.jpg"), upload(b"GIF89a garbage", "bad.gif")]
    body = assert_error(client.post("/predict", {"image": files}), 400, "invalid_image")
    assert "Image 2 (bad.gif)" in body["error"]["message"]
    assert Prediction.objects.count() == 0


def test_unsupported_format_is_415(client, ready_engine):
    tiff = imagegen.encode(imagegen.pattern(0), "TIFF")
    assert_error(
        client.post("/predict", {"image": upload(tiff, "x.tif")}), 415, "unsupported_format"
    )


def test_unsupported_body_type_is_415(client, ready_engine):
    response = client.post("/predict", imagegen.jpeg(0), content_type="image/jpeg")
    assert_error(response, 415, "unsupported_media_type")


def test_image_over_the_byte_limit_is_413(client, ready_engine, settings):
    settings.CLASSIFIER_MAX_IMAGE_BYTES = 1000
    assert_error(
        client.post("/predict", {"image": upload(imagegen.jpeg(0))}), 413, "image_too_large"
    )
    assert Prediction.objects.count() == 0


def test_too_many_images_is_413(client, ready_engine, settings):
    settings.CLASSIFIER_MAX_IMAGES = 2
    files = [upload(imagegen.jpeg(i)) for i in range(3)]
    assert_error(client.post("/predict", {"image": files}), 413, "too_many_images")


def test_multipart_parser_stops_at_the_image_limit(client, ready_engine):
    # With the shipped settings Django's parser refuses the 9th file before reading it.
    files = [upload(imagegen.jpeg(0, (32, 24))) for _ in range(9)]
    body = assert_error(client.post("/predict", {"image": files}), 413, "too_many_images")
    assert "8 images" in body["error"]["message"]
    assert Prediction.objects.count() == 0


def test_request_body_over_the_limit_is_413(client, ready_engine, settings):
    settings.CLASSIFIER_MAX_REQUEST_BYTES = 2000
    response = client.post("/predict", {"image": upload(imagegen.jpeg(0, (640, 480)))})
    assert_error(response, 413, "request_too_large")


def test_too_many_pixels_is_413(client, ready_engine, settings):
    settings.CLASSIFIER_MAX_PIXELS = 10_000
    assert_error(
        client.post("/predict", {"image": upload(imagegen.jpeg(0))}), 413, "image_too_large"
    )


def test_model_not_ready_is_503_with_retry_after(client):
    runtime.engine_slot.set(None)
    response = client.post("/predict", {"image": upload(imagegen.jpeg(0))})
    assert_error(response, 503, "model_not_ready")
    assert int(response["Retry-After"]) > 0
    assert Prediction.objects.count() == 0


def test_readiness_is_503_before_the_model_is_loaded_and_200_after(client, tf_engine):
    runtime.engine_slot.set(None)
    assert client.get("/readyz").status_code == 503
    assert client.get("/model").status_code == 503
    runtime.engine_slot.set(tf_engine)
    try:
        response = client.get("/readyz")
        assert response.status_code == 200
        assert response.json()["model"]["name"] == "ResNet50"
    finally:
        runtime.engine_slot.set(None)


def test_liveness_never_touches_the_database(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_model_metadata_describes_model_and_limits(client, ready_engine, settings):
    body = client.get("/model").json()
    assert body["ready"] is True
    assert body["model"]["name"] == "ResNet50"
    assert body["model"]["weights"] == "random"
    assert body["input"] == {
        "width": 224,
        "height": 224,
        "channels": 3,
        "formats": ["JPEG", "PNG", "WEBP", "GIF", "BMP"],
    }
    assert body["labels"]["count"] == 1000
    assert body["limits"]["max_images"] == settings.CLASSIFIER_MAX_IMAGES
    assert body["limits"]["max_image_bytes"] == settings.CLASSIFIER_MAX_IMAGE_BYTES


def test_unknown_api_path_is_json_404(client):
    assert_error(client.get("/predict/extra"), 404, "not_found")


def test_full_queue_is_503_with_retry_after_and_nothing_is_stored(client, ready_engine, settings):
    settings.CLASSIFIER_MAX_QUEUE = 1
    runtime.shutdown()  # a batcher with the small queue
    batcher = runtime.batcher_for(ready_engine)
    with batcher.incoming(1):  # another request is decoding: the queue is full
        response = client.post("/predict", {"image": upload(imagegen.jpeg(0))})
    body = assert_error(response, 503, "overloaded")
    assert "busy" in body["error"]["message"]
    assert response["Retry-After"] == "1"
    assert Prediction.objects.count() == 0
    assert client.post("/predict", {"image": upload(imagegen.jpeg(0))}).status_code == 200


def test_a_failing_forward_pass_is_503_not_500(client, ready_engine, monkeypatch):
    runtime.shutdown()

    def broken(batch):
        raise RuntimeError("simulated inference failure")

    monkeypatch.setattr(ready_engine, "forward", broken)  # what the batcher calls
    response = client.post("/predict", {"image": upload(imagegen.jpeg(0))})
    assert_error(response, 503, "inference_failed")
    assert Prediction.objects.count() == 0


def test_a_bad_host_header_on_the_api_is_json_400(client):
    response = client.post(
        "/predict", {"image": upload(imagegen.jpeg(0))}, HTTP_HOST="evil.example"
    )
    assert_error(response, 400, "bad_request")
    assert Prediction.objects.count() == 0


def test_busy_decoder_answers_503_not_a_crash(client, ready_engine, settings):
    # Other clients are decoding as much as the process allows (memory bound).
    settings.CLASSIFIER_DECODE_MEMORY_MB = 16
    settings.CLASSIFIER_QUEUE_TIMEOUT_MS = 100
    budget = services.decode_budget(16 * 2**20, 100)
    with budget.hold(8 * 2**20, "198.51.100.1"), budget.hold(8 * 2**20, "198.51.100.2"):
        response = client.post("/predict", {"image": upload(imagegen.png(0, (320, 240)))})
    body = assert_error(response, 503, "overloaded")
    assert "large images" in body["error"]["message"]
    assert response["Retry-After"]
    assert Prediction.objects.count() == 0
    after = client.post("/predict", {"image": upload(imagegen.png(0, (320, 240)))})
    assert after.status_code == 200
