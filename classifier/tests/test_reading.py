"""Request bodies are read within one set of bounds (classifier/reading.py), checked before
the step they guard: a JSON body is counted before it is parsed, base64 measured before it
is decoded, numbers parsed safely. Through /predict with the Django test client."""

import base64
import json
import tracemalloc

import pytest

from classifier import reading
from classifier.errors import ImageTooLarge, RequestTooLarge

from . import imagegen
from .helpers import assert_error, upload


def post_json(client, body: bytes):
    return client.post("/predict", body, content_type="application/json")


def padded(count: int) -> bytes:
    """A valid /predict body padded with `count` empty objects (each a 64-byte dict)."""
    image = base64.b64encode(imagegen.jpeg(0)).decode()
    return b'{"images":["' + image.encode() + b'"],"pad":[' + b",".join([b"{}"] * count) + b"]}"


@pytest.mark.django_db
def test_a_json_body_of_many_small_values_is_413_before_it_is_parsed(client, ready_engine):
    response = post_json(client, padded(200_000))  # 600 kB: ~13 MB once parsed
    body = assert_error(response, 413, "request_too_large")
    assert "values" in body["error"]["message"]


def test_counting_costs_no_memory_for_what_parsing_would_cost():
    bomb = b'{"images":["AA=="],"pad":[' + b",".join([b"{}"] * 1_000_000) + b"]}"
    tracemalloc.start()
    with pytest.raises(RequestTooLarge):
        reading.load_json(bomb, max_values=reading.PREDICT_JSON_VALUES)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000, f"refusing a 3 MB bomb took {peak} bytes"
    # The same bytes parsed: what the bound spares (tens of MB).
    tracemalloc.start()
    json.loads(bomb)
    _, parsed_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert parsed_peak > 30 * peak


@pytest.mark.django_db
def test_a_few_extra_fields_are_still_accepted(client, ready_engine):
    response = post_json(client, padded(50))
    assert response.status_code == 200, response.content[:300]


@pytest.mark.django_db
@pytest.mark.parametrize("top_k", [b"1e999", b"-1e999", b"NaN", b"Infinity", b"1" * 5000])
def test_numbers_out_of_range_are_400_not_500(client, ready_engine, top_k):
    image = base64.b64encode(imagegen.jpeg(0))
    response = post_json(client, b'{"images":["' + image + b'"],"top_k":' + top_k + b"}")
    assert_error(response, 400, "invalid_json")


@pytest.mark.django_db
@pytest.mark.parametrize("top_k", ["1e999", "3.5", "0x3", "\u0663", "99999999999"])
def test_a_top_k_that_is_not_a_small_whole_number_is_400(client, ready_engine, top_k):
    response = client.post("/predict", {"image": upload(imagegen.jpeg(0)), "top_k": top_k})
    assert_error(response, 400, "invalid_parameter")


@pytest.mark.django_db
def test_whole_floats_are_a_top_k(client, ready_engine):
    image = base64.b64encode(imagegen.jpeg(0)).decode()
    response = post_json(client, json.dumps({"images": [image], "top_k": 3.0}).encode())
    assert len(response.json()["predictions"]) == 3


def test_base64_is_measured_before_it_is_decoded(settings):
    settings.CLASSIFIER_MAX_IMAGE_BYTES = 1000
    with pytest.raises(ImageTooLarge, match="1001 bytes"):
        reading.decode_base64("A" * 1336 + "==", 1)
    assert len(reading.decode_base64("A" * 1332, 1)) == 999
