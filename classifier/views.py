"""HTTP in, service call, HTTP out. The JSON API always answers JSON, errors included."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFilesSent
from django.http import HttpRequest, JsonResponse, UnreadablePostError
from django.http.multipartparser import MultiPartParserError
from django.shortcuts import render
from django.template.defaultfilters import filesizeformat
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from . import metrics, services
from .batching import BatchFailed, Overloaded
from .images import ALLOWED_FORMATS, ImageError
from .inference import INPUT_SIZE, NUM_CLASSES, RANDOM_WEIGHTS_WARNING, ModelNotReady

RETRY_AFTER_SECONDS = 5


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    retry_after: int = RETRY_AFTER_SECONDS,
    request: HttpRequest | None = None,
) -> JsonResponse:
    if request is not None:
        _rejected(request, code)
    else:
        metrics.REJECTED.labels(code).inc()
    response = JsonResponse(
        {"success": False, "error": {"code": code, "message": message}}, status=status
    )
    if status == 503:
        response["Retry-After"] = str(retry_after)
    return response


# The API authenticates with API keys in a header only: it never reads the session or
# any cookie, so a cross-site form cannot act with a visitor's cookies and the view can
# stay CSRF-exempt. The page (index) is a separate view with Django's CSRF protection.
@csrf_exempt
def predict(request: HttpRequest) -> JsonResponse:
    started = time.perf_counter()
    if request.method != "POST":
        response = error_response(
            405, "method_not_allowed", "Use POST with an image.", request=request
        )
        response["Allow"] = "POST"
        return response
    if not _authorized(request):
        _discard_body(request)
        response = error_response(
            401,
            "unauthorized",
            "This API needs a key: send `Authorization: Bearer <key>`.",
            request=request,
        )
        response["WWW-Authenticate"] = 'Bearer realm="classifier"'
        return response
    try:
        try:
            services.check_capacity()  # before parsing the body: overload answers fast
        except (Overloaded, ModelNotReady):
            _discard_body(request)
            raise
        uploads, k = _parse_predict_request(request)
        parse_ms = (time.perf_counter() - started) * 1000
        result = services.classify(uploads=uploads, source="api", k=k)
    except (ApiError, ImageError) as exc:
        return error_response(exc.status, exc.code, exc.message, request=request)
    except ModelNotReady as exc:
        return error_response(
            503, "model_not_ready", f"The model is not ready: {exc}.", request=request
        )
    except Overloaded as exc:
        return error_response(
            503, "overloaded", f"The server is busy ({exc}); retry shortly.",
            retry_after=exc.retry_after, request=request,
        )  # fmt: skip
    except BatchFailed as exc:
        return error_response(
            503, "inference_failed", f"{exc}; retry shortly.", retry_after=1, request=request
        )
    _log_result(request, result)
    return JsonResponse(_result_json(result, parse_ms))


def _authorized(request: HttpRequest) -> bool:
    keys = settings.CLASSIFIER_API_KEYS
    if not keys:
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    # Constant time: compare fixed-length digests, and compare with every key.
    given = hashlib.sha256(token.encode()).digest()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, hashlib.sha256(key.encode()).digest())
    return matched


def _log(request: HttpRequest, **fields) -> None:
    """Add to the request's log line (classifier.middleware)."""
    log_extra = getattr(request, "log_extra", None)
    if log_extra is not None:
        log_extra.update(fields)


NOT_STORED_WARNING = (
    "The prediction could not be recorded in the history (database unavailable); "
    "the results are still valid."
)


def _rejected(request: HttpRequest, code: str) -> None:
    """Count a refused request by its error code, and put the code in its log line."""
    metrics.REJECTED.labels(code).inc()
    _log(request, error=code)


def _log_result(request: HttpRequest, result: services.ClassifyResult) -> None:
    _log(
        request,
        images=[
            {"width": i.image.width, "height": i.image.height, "format": i.image.format}
            for i in result.items
        ],
        top_label=result.items[0].predictions[0].label,
        stored=result.stored,
        batch_size=result.batch_size,
        inference_ms=result.timings.get("inference"),
    )


def _result_json(result: services.ClassifyResult, parse_ms: float) -> dict:
    body = {
        "success": True,
        # The classic Keras REST API contract: the first image's top-k.
        "predictions": [_score_json(s) for s in result.items[0].predictions],
        # Whether the history recorded this answer (false: database down or too slow).
        "stored": result.stored,
        "results": [
            {
                "filename": item.filename,
                "sha256": item.image.sha256,
                "width": item.image.width,
                "height": item.image.height,
                "format": item.image.format,
                "prediction_id": item.prediction_id,
                "predictions": [_score_json(s) for s in item.predictions],
            }
            for item in result.items
        ],
        "model": result.model.as_dict(),
        "batch_size": result.batch_size,
        "timings_ms": {"parse": round(parse_ms, 2), **result.timings},
    }
    if not result.stored:
        body["warning"] = NOT_STORED_WARNING
    return body


def _discard_body(request: HttpRequest) -> None:
    """Read and drop an unparsed body, so that the client, still sending it, gets our
    answer rather than a reset connection. Reading is cheap; parsing is what we skip."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    if 0 < length <= settings.CLASSIFIER_MAX_REQUEST_BYTES:
        try:
            while request.read(256 * 1024):
                pass
        except OSError:  # the client stalled or left: nothing more to drop
            pass


def _score_json(score) -> dict:
    return {
        "label": score.label,
        "probability": score.probability,
        "wnid": score.wnid,
        "index": score.index,
    }


def _parse_predict_request(request: HttpRequest) -> tuple[list[services.Upload], int]:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ApiError(400, "bad_request", "Invalid Content-Length header.") from None
    if not length and "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        # Django reads a body up to its Content-Length only: a chunked one would look empty.
        raise ApiError(
            411,
            "length_required",
            "Send the body with a Content-Length header (chunked uploads are not accepted).",
        )
    if length > settings.CLASSIFIER_MAX_REQUEST_BYTES:
        raise ApiError(
            413,
            "request_too_large",
            f"The request body is {length} bytes; the limit is "
            f"{settings.CLASSIFIER_MAX_REQUEST_BYTES} bytes.",
        )
    content_type = request.content_type or ""
    if content_type == "application/json":
        return _parse_json(request)
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return _parse_form(request)
    raise ApiError(
        415,
        "unsupported_media_type",
        "Send multipart/form-data with an `image` field, or application/json "
        'with {"images": ["<base64>", ...]}.',
    )


def _parse_form(request: HttpRequest) -> tuple[list[services.Upload], int]:
    try:
        files = request.FILES.getlist("image")
        k = _top_k(request.POST.get("top_k", request.GET.get("top_k")))
    except TooManyFilesSent:
        raise ApiError(
            413,
            "too_many_images",
            f"Too many files; the limit is {settings.CLASSIFIER_MAX_IMAGES} images per request.",
        ) from None
    except RequestDataTooBig as exc:
        raise ApiError(413, "request_too_large", str(exc)) from None
    except UnreadablePostError:
        raise body_stalled() from None
    except (MultiPartParserError, SuspiciousOperation) as exc:
        raise ApiError(400, "bad_request", f"Malformed form data: {exc}") from None
    if not files:
        raise ApiError(400, "missing_image", "Send the image in a form field named `image`.")
    _check_count(len(files))
    uploads = []
    for upload in files:
        if upload.size > settings.CLASSIFIER_MAX_IMAGE_BYTES:
            raise ApiError(
                413,
                "image_too_large",
                f"{upload.name or 'The image'} is {upload.size} bytes; the limit is "
                f"{settings.CLASSIFIER_MAX_IMAGE_BYTES} bytes.",
            )
        uploads.append(services.Upload(data=_upload_bytes(upload), filename=upload.name or ""))
    return uploads, k


def _upload_bytes(upload) -> bytes:
    # An in-memory upload's BytesIO hands over its buffer without a copy; read() would
    # copy it (3 MB per 12 MP photo, times every request in flight).
    getvalue = getattr(upload.file, "getvalue", None)
    return getvalue() if getvalue else upload.read()


def _parse_json(request: HttpRequest) -> tuple[list[services.Upload], int]:
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {exc}") from None
    except RequestDataTooBig as exc:
        raise ApiError(413, "request_too_large", str(exc)) from None
    except UnreadablePostError:
        raise body_stalled() from None
    images = body.get("images") if isinstance(body, dict) else None
    if not isinstance(images, list) or not images:
        raise ApiError(
            400, "missing_image", 'Send {"images": ["<base64 image>", ...]} in the JSON body.'
        )
    _check_count(len(images))
    k = _top_k(body.get("top_k", request.GET.get("top_k")))
    uploads = []
    for position, encoded in enumerate(images, start=1):
        if not isinstance(encoded, str):
            raise ApiError(400, "invalid_base64", f"Image {position} must be a base64 string.")
        if encoded.startswith("data:") and "," in encoded:  # data URL from a browser
            encoded = encoded.split(",", 1)[1]
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(
                400, "invalid_base64", f"Image {position} is not valid base64."
            ) from None
        uploads.append(services.Upload(data=data))
    return uploads, k


def body_stalled() -> ApiError:
    # The client stopped sending its body for GUNICORN_CLIENT_TIMEOUT seconds.
    return ApiError(408, "request_timeout", "The request body stopped arriving; send it again.")


def _check_count(count: int) -> None:
    if count > settings.CLASSIFIER_MAX_IMAGES:
        raise ApiError(
            413,
            "too_many_images",
            f"{count} images sent; the limit is {settings.CLASSIFIER_MAX_IMAGES} per request.",
        )


def _top_k(raw) -> int:
    if raw is None or raw == "":
        return settings.CLASSIFIER_DEFAULT_TOP_K
    try:
        k = int(raw)
    except (TypeError, ValueError):
        k = 0
    if isinstance(raw, bool) or not 1 <= k <= settings.CLASSIFIER_MAX_TOP_K:
        raise ApiError(
            400,
            "invalid_parameter",
            f"top_k must be a whole number from 1 to {settings.CLASSIFIER_MAX_TOP_K}.",
        )
    return k


@require_http_methods(["GET", "HEAD"])
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Touches neither the database nor the model."""
    return JsonResponse({"status": "ok"})


@require_http_methods(["GET", "HEAD"])
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 once the model is loaded and warmed up."""
    slot = services.engine_slot
    if slot.state == "ready" and not services.draining.is_set():
        return JsonResponse({"status": "ready", "model": slot.get().info.as_dict()})
    body = {"status": "draining" if services.draining.is_set() else slot.state}
    if slot.error:
        body["error"] = slot.error
    response = JsonResponse(body, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


@require_http_methods(["GET", "HEAD"])
def model_metadata(request: HttpRequest) -> JsonResponse:
    """What the model is and what the API accepts (cf. TensorFlow Serving's metadata)."""
    slot = services.engine_slot
    body = {
        "ready": slot.state == "ready",
        "model": slot.get().info.as_dict() if slot.state == "ready" else None,
        "input": {
            "width": INPUT_SIZE,
            "height": INPUT_SIZE,
            "channels": 3,
            "formats": list(ALLOWED_FORMATS),
        },
        "labels": {"count": NUM_CLASSES, "names": "Keras ImageNet class index (WordNet ids)"},
        "limits": {
            "max_images": settings.CLASSIFIER_MAX_IMAGES,
            "max_image_bytes": settings.CLASSIFIER_MAX_IMAGE_BYTES,
            "max_pixels": settings.CLASSIFIER_MAX_PIXELS,
            "decode_pixels": settings.CLASSIFIER_DECODE_PIXELS,
            "max_request_bytes": settings.CLASSIFIER_MAX_REQUEST_BYTES,
            "default_top_k": settings.CLASSIFIER_DEFAULT_TOP_K,
            "max_top_k": settings.CLASSIFIER_MAX_TOP_K,
        },
        "batching": services.batching_status(),
    }
    return JsonResponse(body, status=200 if body["ready"] else 503)


def index(request: HttpRequest):
    """The upload page. Without JavaScript the form posts here and the page renders the
    results; the page's script posts the same form with `Accept: application/json` and
    gets the API's JSON. Either way the history records source "web"."""
    wants_json = request.headers.get("Accept", "").startswith("application/json")
    slot = services.engine_slot
    context = {
        "max_image_bytes": settings.CLASSIFIER_MAX_IMAGE_BYTES,
        "accept": ",".join(ACCEPTED_TYPES),
        "random_weights": not slot.get().info.meaningful
        if slot.state == "ready"
        else settings.CLASSIFIER_WEIGHTS == "random",
        "warning": RANDOM_WEIGHTS_WARNING,
        "predict_url": request.build_absolute_uri("/predict"),
        "model_state": services.engine_slot.state,
    }
    if request.method != "POST":
        return render(request, "classifier/index.html", context)
    started = time.perf_counter()
    try:
        try:
            upload = request.FILES.get("image")
        except UnreadablePostError:
            raise body_stalled() from None
        if upload is None:
            raise ApiError(400, "missing_image", "Choose an image first.")
        if upload.size > settings.CLASSIFIER_MAX_IMAGE_BYTES:
            raise ApiError(
                413,
                "image_too_large",
                f"This image is {filesizeformat(upload.size)}; the limit is "
                f"{filesizeformat(settings.CLASSIFIER_MAX_IMAGE_BYTES)}.",
            )
        uploads = [services.Upload(data=_upload_bytes(upload), filename=upload.name or "")]
        parse_ms = (time.perf_counter() - started) * 1000
        result = services.classify(uploads=uploads, source="web")
    except (ApiError, ImageError) as exc:
        status, code, message = exc.status, exc.code, exc.message
    except ModelNotReady:
        status, code = 503, "model_not_ready"
        message = "The model is still loading; try again in a few seconds."
    except (Overloaded, BatchFailed):
        status, code, message = 503, "overloaded", "The server is busy; try again in a moment."
    else:
        _log_result(request, result)
        if wants_json:
            return JsonResponse(_result_json(result, parse_ms))
        context.update(result=result, item=result.items[0], not_stored=NOT_STORED_WARNING)
        return render(request, "classifier/index.html", context)
    if wants_json:
        return error_response(status, code, message, request=request)
    _rejected(request, code)
    context["error"] = message
    return render(request, "classifier/index.html", context, status=status)


# What the page's file picker offers (the server decides by content, not by type).
ACCEPTED_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp")


API_PREFIXES = ("/predict", "/model", "/healthz", "/readyz")


def bad_request(request: HttpRequest, exception=None):
    # Django answers a bad Host header (or another SuspiciousOperation) here, before any
    # view: the API still gets JSON.
    if request.path.startswith(API_PREFIXES):
        return error_response(
            400, "bad_request", "Bad request (check the Host header).", request=request
        )
    from django.views.defaults import bad_request as html_bad_request

    return html_bad_request(request, exception)


def not_found(request: HttpRequest, exception=None):
    if request.path.startswith(API_PREFIXES):
        return error_response(
            404, "not_found", f"No API endpoint at {request.path}.", request=request
        )
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def server_error(request: HttpRequest):
    if request.path.startswith(API_PREFIXES):
        return error_response(
            500, "internal_error", "Unexpected server error; it was logged.", request=request
        )
    from django.views.defaults import server_error as html_server_error

    return html_server_error(request)
