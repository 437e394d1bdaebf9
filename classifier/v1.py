"""TensorFlow Serving's REST API and KServe's v1 protocol (the same paths): model status,
metadata, `:predict` and `:classify`, through the same batcher, limits, API keys and
history as /predict (source "v1"). The wire format is `tfserving`'s; errors are
`views.error_response`'s, which answers paths under /v1 with TF Serving's
`{"error": message}`."""

from __future__ import annotations

import functools
import time

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from . import access, oip, runtime, tfserving, views
from .errors import ServiceError, UnknownModel, UnknownVersion
from .models import Prediction


def check_model(name: str, version: str | None) -> None:
    """UnknownModel or UnknownVersion (404) in TF Serving's words."""
    if name not in oip.MODEL_INPUTS:
        raise UnknownModel(f"Servable not found for request: Latest({name})")
    if version not in (None, oip.MODEL_VERSION):
        raise UnknownVersion(f"Servable not found for request: Specific({name}, {version})")


def _known_model(view):
    @functools.wraps(view)
    def wrapped(request: HttpRequest, model_name: str, model_version: str | None = None):
        try:
            check_model(model_name, model_version)
        except ServiceError as exc:
            return views.error_response(exc, request)
        return view(request, model_name)

    return wrapped


@csrf_exempt
@views.allow_methods("GET", "HEAD")
def models(request: HttpRequest) -> JsonResponse:
    """KServe v1's list of models."""
    return JsonResponse({"models": list(oip.MODEL_INPUTS)})


@csrf_exempt
@views.allow_methods("GET", "HEAD")
@_known_model
def model_status(request: HttpRequest, model_name: str) -> JsonResponse:
    """TF Serving's model status and KServe v1's model readiness (200 either way, as TF
    Serving answers while a model loads; `ready` and the state say which)."""
    status = runtime.model_status()
    return JsonResponse(tfserving.model_status(model_name, status.serving, status.error))


@csrf_exempt
@views.allow_methods("GET", "HEAD")
@_known_model
def model_metadata(request: HttpRequest, model_name: str) -> JsonResponse:
    return JsonResponse(tfserving.model_metadata(model_name))


@csrf_exempt  # API keys in a header only, as /predict (views.predict says why)
@views.allow_methods("POST")
def predict(request: HttpRequest, model_name: str, model_version: str | None = None):
    return _run(request, model_name, model_version, classify=False)


@csrf_exempt
@views.allow_methods("POST")
def classify(request: HttpRequest, model_name: str, model_version: str | None = None):
    return _run(request, model_name, model_version, classify=True)


def _run(request: HttpRequest, model_name: str, model_version: str | None, *, classify: bool):
    received = time.perf_counter()
    try:
        try:
            # Before parsing the body: refusals and overload answer fast.
            access.check(request, session=False)
            check_model(model_name, model_version)
            runtime.check_capacity()
        except ServiceError:
            views.discard_body(request)
            raise
        parsed = tfserving.parse(request, model_name, classify=classify)
        result = views.classify_files_or_tensors(
            request, parsed.uploads, parsed.pixels, Prediction.Source.V1, model_name, received
        )
    except ServiceError as exc:
        return views.error_response(exc, request)
    views.log_result(request, result)
    if classify:
        return JsonResponse(tfserving.classify_response(result))
    return JsonResponse(tfserving.predict_response(parsed, result))
