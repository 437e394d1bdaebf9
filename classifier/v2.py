"""The Open Inference Protocol's (v2) endpoints: server and model metadata, health, and
inference through the same batcher, limits, API keys and history as /predict (source
"v2"); and Triton's model configuration, statistics and repository index. The wire format
is `oip`'s and `triton`'s; errors are `views.error_response`'s, which answers paths under
/v2 with the protocol's `{"error": message}`."""

from __future__ import annotations

import functools
import time

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from . import __version__, access, oip, reading, runtime, services, triton, views
from .errors import RETRY_AFTER_SECONDS, InvalidRequest, ServiceError
from .models import Prediction

SERVER_NAME = "resnet50-classifier"


def _known_model(view):
    """Answer 404 for a model or version this server does not have."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, model_name: str, model_version: str | None = None):
        try:
            oip.check_model(model_name, model_version)
        except ServiceError as exc:
            return views.error_response(exc, request)
        return view(request, model_name)

    return wrapped


@csrf_exempt
@views.allow_methods("GET", "HEAD")
def server_metadata(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "name": SERVER_NAME,
            "version": __version__,
            "extensions": [*oip.EXTENSIONS, *triton.EXTENSIONS],
        }
    )


@csrf_exempt
@views.allow_methods("GET", "HEAD")
def live(request: HttpRequest) -> JsonResponse:
    """As /healthz: the process answers."""
    return JsonResponse({"live": True})


@csrf_exempt
@views.allow_methods("GET", "HEAD")
def ready(request: HttpRequest) -> JsonResponse:
    """As /readyz: the model is loaded and warmed up, and the server is not draining."""
    return _readiness({})


@csrf_exempt
@views.allow_methods("GET", "HEAD")
@_known_model
def model_metadata(request: HttpRequest, model_name: str) -> JsonResponse:
    return JsonResponse(oip.model_metadata(model_name, _platform()))


@csrf_exempt
@views.allow_methods("GET", "HEAD")
@_known_model
def model_config(request: HttpRequest, model_name: str) -> JsonResponse:
    """Triton's model configuration extension."""
    return JsonResponse(triton.model_config(model_name, _platform()))


@csrf_exempt
@views.allow_methods("GET", "HEAD")
@_known_model
def model_statistics(request: HttpRequest, model_name: str) -> JsonResponse:
    """Triton's statistics extension, for one model."""
    return JsonResponse(triton.statistics(runtime.statistics, [model_name]))


@csrf_exempt
@views.allow_methods("GET", "HEAD")
def statistics(request: HttpRequest) -> JsonResponse:
    """Triton's statistics extension, for every model."""
    return JsonResponse(triton.statistics(runtime.statistics, list(oip.MODEL_INPUTS)))


@csrf_exempt
@views.allow_methods("POST")
def repository_index(request: HttpRequest) -> JsonResponse:
    """Triton's model repository extension: the models and their state. The body may be
    empty or `{"ready": true}` (only the models ready for inference)."""
    try:
        body = reading.read_body(request)
        options = reading.load_json(body, max_values=100) if body.strip() else {}
        ready_only = options.get("ready", False) if isinstance(options, dict) else None
        if not isinstance(ready_only, bool):
            raise InvalidRequest('The body is empty, or {"ready": true|false}.')
    except ServiceError as exc:
        return views.error_response(exc, request)
    status = runtime.model_status()
    state = "loading" if status.state == "idle" else status.state
    return JsonResponse(
        triton.repository_index(state, status.error, ready_only=ready_only), safe=False
    )


@csrf_exempt
@views.allow_methods("GET", "HEAD")
@_known_model
def model_ready(request: HttpRequest, model_name: str) -> JsonResponse:
    return _readiness({"name": model_name})


@csrf_exempt  # API keys in a header only, as /predict (views.predict says why)
@views.allow_methods("POST")
def infer(request: HttpRequest, model_name: str, model_version: str | None = None):
    received = time.perf_counter()
    try:
        try:
            # Before parsing the body: refusals and overload answer fast.
            access.check(request, session=False)
            oip.check_model(model_name, model_version)
            runtime.check_capacity()
        except ServiceError:
            views.discard_body(request)
            raise
        parsed = oip.parse_infer(request, model_name)
        result = views.classify_files_or_tensors(
            request, parsed.uploads, parsed.pixels, Prediction.Source.V2, model_name, received
        )
    except ServiceError as exc:
        return views.error_response(exc, request)
    views.log_result(request, result)
    return oip.infer_response(parsed, result, services.labels())


def _platform() -> str:
    """The engine that runs the model (tensorflow or openvino)."""
    info = runtime.model_status().info
    return info.engine if info else settings.CLASSIFIER_ENGINE


def _readiness(body: dict) -> JsonResponse:
    ok = runtime.model_status().serving
    response = JsonResponse({**body, "ready": ok}, status=200 if ok else 503)
    if not ok:
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
