"""Database faults, Prometheus metrics and JSON logs, on a real gunicorn and in-process."""

import contextlib
import json
import logging
import time

import pytest
import requests
from django.db import connection, connections

from classifier.models import Prediction
from loadtest.server import free_port

from . import imagegen
from .helpers import upload


def metric(text: str, name: str) -> float:
    """The value of one sample (`name` with its labels, as exposed) in a scrape."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the scrape")


@pytest.fixture(scope="module")
def server_without_database(module_gunicorn):
    """gunicorn whose PostgreSQL is down (nothing listens on its port), JSON logs, metrics."""
    metrics_port = free_port()
    server = module_gunicorn(
        DATABASE_URL=f"postgresql://classifier:x@127.0.0.1:{free_port()}/classifier",
        DATABASE_CONNECT_TIMEOUT="2",
        LOG_FORMAT="json",
        CLASSIFIER_METRICS_BIND=f"127.0.0.1:{metrics_port}",
    )
    return server, server.url, f"http://127.0.0.1:{metrics_port}/metrics"


@pytest.mark.timeout(300)
def test_database_down_still_answers_and_says_so(server_without_database):
    server, url, metrics_url = server_without_database
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    started = time.monotonic()
    response = requests.post(
        f"{url}/predict",
        files={"image": ("dog.jpg", imagegen.jpeg(0, (500, 375)), "image/jpeg")},
        headers={"X-Request-ID": "db-down-1"},
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert len(body["predictions"]) == 5
    assert body["stored"] is False
    assert "could not be recorded" in body["warning"]
    assert body["results"][0]["prediction_id"] is None
    assert elapsed < 15  # bounded by the pool and store timeouts, not minutes
    # Liveness and readiness do not depend on the database: no restarts, no traffic loss.
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{url}/readyz", timeout=10).status_code == 200

    scrape = requests.get(metrics_url, timeout=10).text
    assert metric(scrape, "classifier_history_write_failures_total") == 1.0
    server.log.flush()
    server.log.seek(0)
    lines = [json.loads(line) for line in server.log if line.startswith("{")]
    failure = [line for line in lines if "Prediction not recorded" in line["message"]]
    assert failure
    assert failure[0]["level"] == "ERROR"
    [request_line] = [line for line in lines if line.get("request_id") == "db-down-1"]
    assert request_line["status"] == 200
    assert request_line["stored"] is False


@pytest.mark.timeout(300)
def test_metrics_on_their_own_port_only(server_without_database):
    _, url, metrics_url = server_without_database
    requests.post(
        f"{url}/predict", files={"image": ("notes.txt", b"not an image", "text/plain")}, timeout=30
    )
    requests.post(
        f"{url}/predict",
        files={"image": ("a.tiff", imagegen.encode(imagegen.pattern(1), "TIFF"), "image/tiff")},
        timeout=30,
    )
    assert requests.get(f"{url}/metrics", timeout=10).status_code == 404
    response = requests.get(metrics_url, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    scrape = response.text
    assert metric(scrape, 'classifier_rejected_requests_total{reason="invalid_image"}') >= 1
    assert metric(scrape, 'classifier_rejected_requests_total{reason="unsupported_format"}') >= 1
    status_400 = 'classifier_http_requests_total{endpoint="predict",method="POST",status="400"}'
    assert metric(scrape, status_400) >= 1
    assert metric(scrape, "classifier_model_ready") == 1.0
    assert metric(scrape, "classifier_model_load_seconds") > 0
    assert metric(scrape, "classifier_queue_depth") == 0
    assert metric(scrape, "classifier_batch_size_count") >= 1
    assert metric(scrape, "classifier_inference_duration_seconds_count") >= 1
    assert metric(scrape, 'classifier_http_request_duration_seconds_count{endpoint="predict"}') >= 1


@pytest.mark.timeout(300)
def test_json_request_log_never_holds_image_bytes(server_without_database):
    server, url, _ = server_without_database
    image = imagegen.jpeg(3, (320, 240))
    requests.post(
        f"{url}/predict",
        files={"image": ("x.jpg", image, "image/jpeg")},
        headers={"X-Request-ID": "log-check-7"},
        timeout=60,
    )
    server.log.flush()
    server.log.seek(0)
    text = server.log.read()
    [line] = [json.loads(raw) for raw in text.splitlines() if '"log-check-7"' in raw]
    assert line["logger"] == "classifier.requests"
    assert line["images"] == [{"width": 320, "height": 240, "format": "JPEG"}]
    assert line["top_label"]
    assert line["latency_ms"] > 0
    assert line["request_bytes"] > len(image)
    assert len(json.dumps(line)) < 1000
    assert "/9j/" not in text
    assert "\\u00ff\\u00d8" not in text


@contextlib.contextmanager
def history_table_held():
    """Another connection holds the history table (a long migration, a stuck writer)."""
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("BEGIN")
                cursor.execute("LOCK TABLE classifier_prediction IN ACCESS EXCLUSIVE MODE")
            else:
                cursor.execute("BEGIN IMMEDIATE")
            yield
            cursor.execute("ROLLBACK")
    finally:
        other.close()


@pytest.fixture
def database_held_by_another_writer(transactional_db):
    with history_table_held():
        yield


@pytest.mark.timeout(120)
def test_slow_database_answer_is_returned_unstored(
    client, ready_engine, settings, database_held_by_another_writer
):
    settings.CLASSIFIER_STORE_TIMEOUT_MS = 500
    picture = upload(imagegen.jpeg(2), "a.jpg")
    started = time.monotonic()
    response = client.post("/predict", {"image": picture})
    assert response.status_code == 200
    assert response.json()["stored"] is False
    assert time.monotonic() - started < 5
    page = client.post("/", {"image": upload(imagegen.jpeg(2), "b.jpg")})
    assert page.status_code == 200
    assert b"could not be recorded" in page.content


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_history_recovers_when_the_database_does(client, ready_engine, settings):
    settings.CLASSIFIER_STORE_TIMEOUT_MS = 500
    with history_table_held():
        blocked = client.post("/predict", {"image": upload(imagegen.jpeg(4), "c.jpg")})
    assert blocked.json()["stored"] is False
    after = client.post("/predict", {"image": upload(imagegen.jpeg(4), "d.jpg")})
    body = after.json()
    assert body["stored"] is True
    assert Prediction.objects.filter(pk=body["results"][0]["prediction_id"]).exists()
    assert Prediction.objects.count() == 1


@pytest.mark.parametrize(
    ("logger", "status", "shown"),
    [
        ("django.request", 400, False),
        ("django.request", 413, False),
        ("django.request", 503, False),
        ("django.security.DisallowedHost", None, False),
        ("django.request", 500, True),  # an unhandled exception: always shown
        ("classifier.services", None, True),
    ],
)
def test_answered_errors_are_not_logged_twice(logger, status, shown):
    from classifier.logs import DropAnsweredErrors

    record = logging.LogRecord(logger, logging.ERROR, __file__, 1, "message", None, None)
    if status is not None:
        record.status_code = status
    assert DropAnsweredErrors().filter(record) is shown


@pytest.mark.django_db
def test_invented_methods_share_one_metric_series(client):
    from prometheus_client import REGISTRY

    def count(method):
        labels = {"endpoint": "healthz", "method": method, "status": "405"}
        return REGISTRY.get_sample_value("classifier_http_requests_total", labels) or 0.0

    before = count("other")
    for method in ("BREW", "FOO1", "X-ANYTHING"):
        client.generic(method, "/healthz")
    assert count("other") == before + 3
    assert count("BREW") == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/v2", "v2-server"),
        ("/v2/health/ready", "v2-ready"),
        ("/v2/models/resnet50", "v2-model"),
        ("/v2/models/resnet50/versions/1", "v2-model"),
        ("/v2/models/resnet50/ready", "v2-model-ready"),
        ("/v2/models/resnet50/versions/1/infer", "v2-infer"),
    ],
)
def test_v2_requests_are_counted_by_their_route(client, path, endpoint):
    from prometheus_client import REGISTRY

    def count(status):
        labels = {"endpoint": endpoint, "method": "DELETE", "status": status}
        return REGISTRY.get_sample_value("classifier_http_requests_total", labels) or 0.0

    before = count("405")
    client.delete(path)
    assert count("405") == before + 1
