"""The upload page through Django's test client with the real model: with and without
JavaScript, its errors in words, several images. In a real browser: test_page_browser.py."""

import pytest

from classifier.models import Prediction

from . import imagegen
from .helpers import assert_error, upload

pytestmark = pytest.mark.django_db


def test_page_without_javascript_classifies_and_records_a_web_prediction(client, ready_engine):
    page = client.get("/")
    assert page.status_code == 200
    assert b'name="image"' in page.content
    response = client.post("/", {"image": upload(imagegen.jpeg(1), "cat.jpg")})
    assert response.status_code == 200
    assert response.content.count(b'class="label"') == 5
    assert b"meaningless" in response.content
    assert Prediction.objects.get().source == "web"


def test_page_post_without_csrf_token_is_rejected(ready_engine):
    from django.test import Client

    response = Client(enforce_csrf_checks=True).post("/", {"image": upload(imagegen.jpeg(1))})
    assert response.status_code == 403
    assert Prediction.objects.count() == 0


def test_page_shows_errors_in_words(client, ready_engine):
    response = client.post("/", {"image": upload(b"hello", "notes.txt", "text/plain")})
    assert response.status_code == 400
    assert b"not an image" in response.content


def test_page_script_gets_json_and_records_a_web_prediction(client, ready_engine):
    response = client.post(
        "/", {"image": upload(imagegen.jpeg(2), "x.jpg")}, HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert len(body["predictions"]) == 5
    assert Prediction.objects.get().source == "web"


def test_page_script_gets_json_errors_in_plain_words(client, ready_engine, settings):
    settings.CLASSIFIER_MAX_IMAGE_BYTES = 1000
    response = client.post("/", {"image": upload(imagegen.jpeg(2))}, HTTP_ACCEPT="application/json")
    body = assert_error(response, 413, "image_too_large")
    assert "the limit is 1000" in body["error"]["message"]
    assert Prediction.objects.count() == 0


def test_page_script_sends_several_images_in_one_request_and_gets_one_result_each(
    client, ready_engine
):
    names = ["a.jpg", "b.png", "c.jpg"]
    files = [
        upload(imagegen.jpeg(0), names[0]),
        upload(imagegen.png(1), names[1], "image/png"),
        upload(imagegen.jpeg(2, (200, 300)), names[2]),
    ]
    response = client.post("/", {"image": files}, HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    body = response.json()
    assert [r["filename"] for r in body["results"]] == names
    assert [(r["width"], r["height"]) for r in body["results"]][2] == (200, 300)
    assert body["batch_size"] == 3
    rows = Prediction.objects.order_by("id")
    assert [(row.filename, row.source) for row in rows] == [(name, "web") for name in names]


def test_page_without_javascript_renders_one_card_per_image(client, ready_engine):
    files = [upload(imagegen.jpeg(0), "dog.jpg"), upload(imagegen.jpeg(1), "cat.jpg")]
    response = client.post("/", {"image": files})
    assert response.status_code == 200
    page = response.content.decode()
    assert page.count('class="card"') == 2
    assert page.count('class="label"') == 10
    assert page.index("Top 5 for dog.jpg") < page.index("Top 5 for cat.jpg")
    assert page.count('src="data:image/jpeg;base64,') == 2  # the history's thumbnails
    assert Prediction.objects.count() == 2


def test_page_refuses_more_images_than_the_limit_in_words(client, ready_engine, settings):
    # Django's parser stops at the shipped limit (8) before reading the 9th file.
    files = [upload(imagegen.jpeg(0, (32, 24))) for _ in range(9)]
    page = client.post("/", {"image": files})
    assert page.status_code == 413
    assert b"Too many images; the limit is 8 at once." in page.content
    settings.CLASSIFIER_MAX_IMAGES = 2
    files = [upload(imagegen.jpeg(i, (32, 24))) for i in range(3)]
    body = assert_error(
        client.post("/", {"image": files}, HTTP_ACCEPT="application/json"), 413, "too_many_images"
    )
    assert "the limit is 2" in body["error"]["message"]
    assert Prediction.objects.count() == 0


def test_page_names_the_image_over_the_size_limit(client, ready_engine, settings):
    settings.CLASSIFIER_MAX_IMAGE_BYTES = 20_000

    def files():
        return [
            upload(imagegen.jpeg(0, (32, 24)), "small.jpg"),
            upload(imagegen.jpeg(1, (640, 480)), "large.jpg"),
        ]

    body = assert_error(
        client.post("/", {"image": files()}, HTTP_ACCEPT="application/json"),
        413,
        "image_too_large",
    )
    assert body["error"]["message"].startswith("large.jpg is ")
    assert "the limit is 19.5\xa0KB" in body["error"]["message"]
    settings.CLASSIFIER_MAX_REQUEST_BYTES = 2000
    body = assert_error(
        client.post("/", {"image": files()}, HTTP_ACCEPT="application/json"),
        413,
        "request_too_large",
    )
    assert "These images come to" in body["error"]["message"]
    assert Prediction.objects.count() == 0


def test_page_offers_the_curl_command_for_this_host(client):
    page = client.get("/", HTTP_HOST="localhost")
    assert b"curl -X POST -F image=@dog.jpg http://localhost/predict" in page.content


def test_pages_carry_a_content_security_policy_and_security_headers(client):
    response = client.get("/")
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
