"""Request bodies are read within one set of bounds (classifier/reading.py), checked before
the step they guard: a JSON body is counted before it is parsed, base64 measured before it
is decoded, numbers parsed safely. Through /predict with the Django test client."""

import base64
import gzip
import json
import tracemalloc
import zlib

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


# Compressed bodies (Content-Encoding), as tritonclient sends them.


def _deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", _deflate_raw)],
    ids=["gzip", "deflate", "raw-deflate"],
)
@pytest.mark.django_db
def test_compressed_predict_bodies_are_answered_as_plain_ones(
    client, ready_engine, encoding, compress
):
    image = imagegen.jpeg(2)
    plain = client.post("/predict", {"image": upload(image)}).json()["predictions"]
    body = json.dumps({"images": [base64.b64encode(image).decode()]}).encode()
    answer = client.post(
        "/predict",
        compress(body),
        content_type="application/json",
        headers={"Content-Encoding": encoding},
    )
    assert answer.status_code == 200, answer.content[:300]
    assert answer.json()["predictions"] == plain
    # A multipart form, compressed whole.
    form = client.post("/predict", {"image": upload(image)})  # the plain form's answer
    boundary = "x-boundary"
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    answer = client.post(
        "/predict",
        compress(multipart),
        content_type=f"multipart/form-data; boundary={boundary}",
        headers={"Content-Encoding": encoding},
    )
    assert answer.status_code == 200, answer.content[:300]
    assert answer.json()["results"][0]["filename"] == "a.jpg"
    assert answer.json()["predictions"] == form.json()["predictions"]


def test_a_compression_bomb_is_refused_within_the_limits_memory():
    limit = 4 * 2**20
    bomb = gzip.compress(bytes(512 * 2**20))  # 512 MiB of zeros in ~0.5 MB
    assert len(bomb) < 1 * 2**20
    tracemalloc.start()
    with pytest.raises(RequestTooLarge, match="decompressed"):
        reading.inflate(bomb, "gzip", limit)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2 * limit  # the limit and one piece, not the 512 MiB


@pytest.mark.django_db
def test_a_bomb_a_cut_stream_and_an_unknown_encoding_are_refused(client, ready_engine, settings):
    settings.CLASSIFIER_MAX_REQUEST_BYTES = 2**20
    bomb = gzip.compress(b'{"images": ["' + b"A" * (8 * 2**20) + b'"]}')
    for body, encoding, status, code in (
        (bomb, "gzip", 413, "request_too_large"),
        (gzip.compress(b'{"images": []}')[:-6], "gzip", 400, "bad_request"),
        (b'{"images": []}', "deflate", 400, "bad_request"),
        (b'{"images": []}', "br", 415, "unsupported_media_type"),
    ):
        headers = {"Content-Encoding": encoding}
        response = client.post("/predict", body, content_type="application/json", headers=headers)
        assert_error(response, status, code)
