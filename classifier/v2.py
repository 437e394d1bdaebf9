"""The Open Inference Protocol's (v2) endpoints: server and model metadata, health, and
inference through the same batcher, limits, API keys and history as /predict (source
"v2"). The wire format is `oip`'s; errors are `views.error_response`'s, which answers
paths under /v2 with the protocol's `{"error": message}`."""

from __future__ import annotations

import functools

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from . import __version__, access, oip, runtime, services, views
from .errors import RETRY_AFTER_SECONDS, ServiceError
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
        return view(request)

    return wrapped


@csrf_exempt
@views.allow_methods("GET", "HEAD")
def server_metadata(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {"name": SERVER_NAME, "version": __version__, "extensions": list(oip.EXTENSIONS)}
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
def model_metadata(request: HttpRequest) -> JsonResponse:
    info = runtime.model_status().info
    return JsonResponse(oip.model_metadata(info.engine if info else settings.CLASSIFIER_ENGINE))


@csrf_exempt
@views.allow_methods("GET", "HEAD")
@_known_model
def model_ready(request: HttpRequest) -> JsonResponse:
    return _readiness({"name": oip.MODEL_NAME})


@csrf_exempt  # API keys in a header only, as /predict (views.predict says why)
@views.allow_methods("POST")
def infer(request: HttpRequest, model_name: str, model_version: str | None = None):
    try:
        try:
            # Before parsing the body: refusals and overload answer fast.
            access.check(request, session=False)
            oip.check_model(model_name, model_version)
            runtime.check_capacity()
        except ServiceError:
            views.discard_body(request)
            raise
        parsed = oip.parse_infer(request)
        if parsed.uploads is not None:
            result = services.classify(
                uploads=parsed.uploads,
                source=Prediction.Source.V2,
                client=access.client_network(request),
            )
        else:
            result = services.classify_pixels(pixels=parsed.pixels, source=Prediction.Source.V2)
    except ServiceError as exc:
        return views.error_response(exc, request)
    views.log_result(request, result)
    return oip.infer_response(parsed, result, services.labels())


def _readiness(body: dict) -> JsonResponse:
    ok = runtime.model_status().serving
    response = JsonResponse({**body, "ready": ok}, status=200 if ok else 503)
    if not ok:
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
