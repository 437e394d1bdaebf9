"""Prometheus metrics of one server process (prometheus-client's default registry).

Served by `start_server()` on their own listener (CLASSIFIER_METRICS_BIND, e.g.
0.0.0.0:9100), never on the public port. One gunicorn worker per pod (the shipped
config) means one set of series per pod; Prometheus adds the pod label when it scrapes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

# Seconds: from a small batch's forward pass to a large batch's, plus decoding and queueing.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)

REQUESTS = Counter(
    "classifier_http_requests",
    "HTTP requests answered, by endpoint (URL name) and status code.",
    ["endpoint", "method", "status"],
)
REQUEST_LATENCY = Histogram(
    "classifier_http_request_duration_seconds",
    "Time from the request reaching Django to its response, by endpoint.",
    ["endpoint"],
    buckets=_LATENCY_BUCKETS,
)
INFERENCE_LATENCY = Histogram(
    "classifier_inference_duration_seconds",
    "One forward pass of a micro-batch.",
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "classifier_batch_size",
    "Images per forward pass.",
    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64),
)
IMAGES = Counter("classifier_images_classified", "Images classified (all sources).")
QUEUE_DEPTH = Gauge(
    "classifier_queue_depth", "Images admitted and waiting for a forward pass, now."
)
MODEL_LOAD_SECONDS = Gauge(
    "classifier_model_load_seconds", "How long loading and warming up the model took."
)
MODEL_READY = Gauge("classifier_model_ready", "1 once the model is loaded and warm.")
REJECTED = Counter(
    "classifier_rejected_requests",
    "Requests refused with a JSON error, by reason (the error code).",
    ["reason"],
)
LOGIN_LOCKOUTS = Counter(
    "classifier_login_lockouts",
    "Logins refused because the client (user name and address) is locked out after too many "
    "failures (django-axes); the first at the failure that reaches the limit.",
)
HISTORY_WRITE_FAILURES = Counter(
    "classifier_history_write_failures",
    "Predictions answered but not recorded (database down, slow or failing).",
)


def timed_forward_pass(forward: Callable[[np.ndarray], Any]):
    """Wrap an engine's forward() (or predict()) so that every forward pass is observed."""

    def run(batch: np.ndarray):
        started = time.perf_counter()
        outputs = forward(batch)
        INFERENCE_LATENCY.observe(time.perf_counter() - started)
        BATCH_SIZE.observe(len(batch))
        return outputs

    return run


_server_lock = threading.Lock()
_server_started = False


def start_server(bind: str) -> None:
    """Serve /metrics on `bind` ("host:port") from a daemon thread, once per process."""
    global _server_started
    host, _, port = bind.rpartition(":")
    with _server_lock:
        if _server_started:
            return
        try:
            start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0")  # noqa: S104
        except OSError as exc:
            # A second worker process on the same pod: the first one serves metrics.
            logger.warning("Metrics listener %s not started: %s", bind, exc)
            return
        _server_started = True
    logger.info("Prometheus metrics on http://%s/metrics", bind)
