"""The real thing: gunicorn with the shipped config, the real ResNet50 (random weights),
the test database, driven over loopback the way users drive it (curl)."""

import json
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from classifier.models import Prediction

from . import imagegen


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, module_gunicorn):
    with django_db_blocker.unblock():
        return module_gunicorn().url


def curl_predict(url: str, path: Path, *extra: str) -> tuple[int, dict]:
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            "-F",
            f"image=@{path}",
            *extra,
            "-w",
            "\n%{http_code}",
            f"{url}/predict",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    body, status = result.stdout.rsplit("\n", 1)
    return int(status), json.loads(body)


@pytest.mark.django_db(transaction=True)
def test_gunicorn_answers_the_classic_curl_contract(server, tmp_path):
    image = tmp_path / "dog.jpg"
    image.write_bytes(imagegen.jpeg(0, (500, 375)))
    status, body = curl_predict(server, image)
    assert status == 200
    assert body["success"] is True
    probabilities = [p["probability"] for p in body["predictions"]]
    assert len(probabilities) == 5
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0 <= p <= 1 for p in probabilities)
    assert all(isinstance(p["label"], str) and p["label"] for p in body["predictions"])
    row = Prediction.objects.get(pk=body["results"][0]["prediction_id"])
    assert row.filename == "dog.jpg"
    assert row.top_label == body["predictions"][0]["label"]


@pytest.mark.django_db(transaction=True)
def test_gunicorn_is_live_and_ready_once_loaded(server):
    assert requests.get(f"{server}/readyz", timeout=5).status_code == 200
    assert requests.get(f"{server}/healthz", timeout=5).json() == {"status": "ok"}


@pytest.mark.django_db(transaction=True)
def test_gunicorn_errors_are_json_never_html(server, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    status, body = curl_predict(server, text)
    assert (status, body["error"]["code"]) == (400, "invalid_image")
    response = requests.get(f"{server}/predict", timeout=5)
    assert response.status_code == 405
    assert response.headers["Content-Type"] == "application/json"
    # A chunked upload (no Content-Length): Django would see an empty body; say why.
    status, body = curl_predict(server, text, "-H", "Transfer-Encoding: chunked")
    assert (status, body["error"]["code"]) == (411, "length_required")
    assert Prediction.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server):
    images = [imagegen.jpeg(i, (400, 300)) for i in range(4)]

    def post(data: bytes) -> dict:
        files = {"image": ("x.jpg", data, "image/jpeg")}
        response = requests.post(f"{server}/predict", files=files, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()

    expected = [post(data)["predictions"][0]["label"] for data in images]
    assert len(set(expected)) >= 3, "the images must differ in top-1 for this to mean anything"
    before = requests.get(f"{server}/model", timeout=10).json()["batching"]
    jobs = [i % len(images) for i in range(16)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda i: post(images[i]), jobs))
    elapsed = time.monotonic() - started
    after = requests.get(f"{server}/model", timeout=10).json()["batching"]
    assert [a["predictions"][0]["label"] for a in answers] == [expected[i] for i in jobs]
    assert after["images"] - before["images"] == 16
    batches = after["batches"] - before["batches"]
    assert (after["images"] - before["images"]) / batches > 1, "concurrent requests share passes"
    assert max(a["batch_size"] for a in answers) > 1
    # The model's busy time is reported, and is the passes' own: within the burst's wall time.
    in_passes = after["pass_seconds"] - before["pass_seconds"]
    assert 0 < in_passes <= elapsed
    # `pass_seconds` is rounded to the millisecond, before and after (the 16 may share one
    # pass, so the two sides can be that close).
    assert in_passes + 0.001 >= max(a["timings_ms"]["inference"] for a in answers) / 1000
    assert Prediction.objects.count() == 4 + 16


def test_server_answers_503_while_the_model_loads(gunicorn, django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        server = gunicorn(ready=False)
    seen = server.wait_ready()
    server.stop()
    assert seen[0] == 503, "the worker answers (503) before the model is ready"
    assert seen[-1] == 200


@pytest.mark.parametrize("content", [None, b"this is not an HDF5 file"])
def test_bad_weights_stop_the_server_with_a_clear_message(gunicorn, tmp_path, content):
    weights = tmp_path / "weights.h5"
    if content is not None:
        weights.write_bytes(content)
    server = gunicorn(ready=False, CLASSIFIER_WEIGHTS=str(weights), DATABASE_URL="sqlite://")
    server.process.wait(120)
    output = server.stop()
    assert server.process.returncode != 0
    assert "CLASSIFIER_WEIGHTS" in output
    assert "Traceback" not in output


@pytest.mark.django_db(transaction=True)
def test_gunicorn_serves_openvino_from_an_exported_ir(gunicorn, tf_engine, tmp_path):
    from classifier.engines.openvino import export_ir

    export_ir(tf_engine.model, "random", tmp_path / "ir")
    server = gunicorn(CLASSIFIER_ENGINE="openvino", CLASSIFIER_OPENVINO_IR=str(tmp_path / "ir"))
    image = tmp_path / "dog.jpg"
    image.write_bytes(imagegen.jpeg(0, (500, 375)))
    status, body = curl_predict(server.url, image)
    server.stop()
    assert status == 200
    assert (body["model"]["engine"], body["model"]["precision"]) == ("openvino", "fp32")
    assert len(body["predictions"]) == 5
    assert Prediction.objects.get().engine == "openvino"


@pytest.mark.django_db(transaction=True)
def test_a_body_declared_over_the_limit_is_refused_without_being_sent(server):
    # The front does not read a body larger than any view takes: the answer comes from
    # the headers alone, while the client has sent none of its 40 MB.
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 40000000\r\n\r\n"
        )
        started = time.monotonic()
        answer = b""
        while b"}}" not in answer and (chunk := client.recv(4096)):
            answer += chunk
    assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"request_too_large"' in answer
