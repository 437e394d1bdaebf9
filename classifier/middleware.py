"""Middleware: response headers every answer carries, and per-request observability."""

from __future__ import annotations

import logging
import re
import time
import uuid

from django.urls import Resolver404, resolve

from . import metrics
from .front import FRONT_ERROR

# The page and the admin need no inline script or style: scripts and styles come from
# /static/, thumbnails are data: URIs, the page's preview is a blob: URL.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; "
    "style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

request_log = logging.getLogger("classifier.requests")

# The `method` label of the request metrics: these, and "other" for any invented method.
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))

# A client's (or proxy's) X-Request-ID is kept if it looks like an id; otherwise we make one.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class SecurityHeadersMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response


class FrontErrorMiddleware:
    """Answer a refusal that the server's front decided before Django saw the request
    (classifier/front.py: a body too slow to arrive, no room to buffer it) with the views'
    JSON error, counted and logged like any other."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        error = request.META.get(FRONT_ERROR)
        if error is not None:
            from .views import error_response

            return error_response(error, request)
        return self.get_response(request)


class RequestObservabilityMiddleware:
    """Request id, Prometheus request metrics, and one log line per request.

    Views add what they know (image sizes, top label, error code) to `request.log_extra`.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        supplied = request.headers.get("X-Request-ID", "")
        request.id = supplied if _REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex
        request.log_extra = {}
        response = self.get_response(request)
        seconds = time.perf_counter() - started
        endpoint = _endpoint(request)
        method = request.method if request.method in KNOWN_METHODS else "other"
        metrics.REQUESTS.labels(endpoint, method, str(response.status_code)).inc()
        metrics.REQUEST_LATENCY.labels(endpoint).observe(seconds)
        response["X-Request-ID"] = request.id
        request_log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "request_id": request.id,
                "method": request.method,
                "path": request.path,
                "endpoint": endpoint,
                "status": response.status_code,
                "latency_ms": round(seconds * 1000, 2),
                "request_bytes": _content_length(request),
                "remote_addr": request.META.get("REMOTE_ADDR", ""),
                **request.log_extra,
            },
        )
        return response


def _content_length(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _endpoint(request) -> str:
    # URL names, not raw paths: scanners probing random URLs must not create new series.
    match = getattr(request, "resolver_match", None)
    if match is None:
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return "unmatched"
    if match.url_name:
        return match.url_name
    return "admin" if match.app_name == "admin" else "other"
