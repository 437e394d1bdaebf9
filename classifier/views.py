"""HTTP in, service call, HTTP out: the page, the JSON API and the health endpoints.

Every error a request can end with is a ServiceError carrying its status, code and
message (classifier.errors); `error_response` is the one place that turns it into HTTP.
The JSON API always answers JSON, errors included. Every view that classifies calls
`access.check` first (API keys, staff sessions, rate limits): a new one must too
(tests/test_security.py posts an image to every URL to hold that).
"""

from __future__ import annotations

import functools
import time

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import redirect, render
from django.utils.cache import patch_vary_headers
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt

from . import access, api, cards, feedback, metrics, reading, runtime, services
from .engines import RANDOM_WEIGHTS_WARNING
from .errors import (
    RETRY_AFTER_SECONDS,
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    ServiceError,
)
from .images import ALLOWED_FORMATS
from .model import INPUT_SIZE
from .models import Prediction

# Paths whose errors are JSON, even those Django answers before any view (404, bad Host).
API_PREFIXES = ("/predict", "/model", "/healthz", "/readyz", "/v1", "/v2")
# The paths of the model servers' protocols (TF Serving's and KServe's v1, the Open
# Inference Protocol v2), whose errors are `{"error": message}`.
PROTOCOL_PREFIXES = ("/v1", "/v2")
# What the page's file picker offers (the server decides by content, not by type).
ACCEPTED_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp")
# A refused request's unread body is drained in pieces of this size.
DISCARD_CHUNK_BYTES = 256 * 1024


def allow_methods(*allowed: str, message: str = ""):
    """Answer other methods with a JSON 405 and `Allow`. Every view of ours is wrapped in
    it under csrf_exempt (the page checks its token itself): Django's CSRF middleware
    would otherwise answer an unknown method first, with its HTML 403."""

    def decorate(view):
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args, **kwargs):
            if request.method not in allowed:
                return method_not_allowed(request, allowed, message)
            return view(request, *args, **kwargs)

        return wrapped

    return decorate


def method_not_allowed(request: HttpRequest, allowed: tuple[str, ...], message: str = ""):
    text = message or f"Use {' or '.join(allowed)} on {request.path}."
    return error_response(MethodNotAllowed(text, allowed), request)


# The API authenticates with API keys in a header only: it never reads the session or
# any cookie, so a cross-site form cannot act with a visitor's cookies and the view can
# stay CSRF-exempt. The page (index) checks its CSRF token itself, after the cheap checks.
@csrf_exempt
@allow_methods("POST", message="Use POST with an image.")
def predict(request: HttpRequest) -> JsonResponse:
    started = time.perf_counter()
    try:
        try:
            # Before parsing the body: refusals and overload answer fast.
            access.check(request, session=False)
            runtime.check_capacity()
        except ServiceError:
            discard_body(request)
            raise
        parsed = api.parse_predict_request(request)
        parse_ms = (time.perf_counter() - started) * 1000
        result = services.classify(
            uploads=parsed.uploads,
            source=Prediction.Source.API,
            k=parsed.k,
            client=access.client_network(request),
        )
    except ServiceError as exc:
        return error_response(exc, request)
    log_result(request, result)
    return JsonResponse(api.result_json(result, parse_ms, explain=parsed.explain))


@csrf_exempt  # the token is checked in the view, once the cheap refusals are done
@allow_methods("GET", "HEAD", "POST")
def index(request: HttpRequest):
    """The upload page. Without JavaScript the form posts here and the page renders the
    results, one card per image; the page's script posts the same form (its images scaled
    down in the browser) with `Accept: application/json` and gets the API's JSON. Either
    way several images are one request, and the history records source "web". The form
    asks for each image's activation map (`explain=1`, a hidden field): the script overlays
    it on the picture, and the server-rendered card shows the picture with it drawn in."""
    wants_json = _wants_json(request)
    context = _page_context(request)
    if request.method != "POST":
        if _wants_liveness(request):
            # KServe's v1 liveness check (its client's is_server_live) asks GET / for JSON.
            response = JsonResponse({"status": "alive"})
        else:
            response = render(request, "classifier/index.html", context)
        patch_vary_headers(response, ["Accept"])
        return response
    started = time.perf_counter()
    try:
        # Size and access first: neither reads the body, which the CSRF check may parse.
        reading.check_length(request, people=True)
        access.check(request, session=True)
        _check_csrf(request)
        uploads = reading.read_images(request, people=True)
        explain = reading.flag(request.POST.get("explain"), "explain")
        parse_ms = (time.perf_counter() - started) * 1000
        result = services.classify(
            uploads=uploads, source=Prediction.Source.WEB, client=access.client_network(request)
        )
    except ServiceError as exc:
        return _page_error(request, context, exc, wants_json)
    log_result(request, result)
    if wants_json:
        return JsonResponse(api.result_json(result, parse_ms, explain=explain))
    context.update(
        result=result,
        cards=cards.from_result(result, explain),
        class_names=_class_names(),
        not_stored=api.NOT_STORED_WARNING,
    )
    return render(request, "classifier/index.html", context)


@csrf_exempt  # the token is checked in the view, once the cheap refusals are done
@allow_methods("GET", "HEAD", "POST")
def page_feedback(request: HttpRequest):
    """The page's "Right?" forms under each card: records what was said, as
    POST /predictions/{id}/feedback does, with the page's CSRF token, so that a staff
    session may stand for a key. Without JavaScript the page comes back with the cards
    the form came from (`shown`: id.token of each), each with what was recorded; the
    page's script sends the same fields with `Accept: application/json` and gets that
    endpoint's JSON."""
    if request.method != "POST":
        return redirect("index")
    wants_json = _wants_json(request)
    context = _page_context(request)
    try:
        reading.check_length(request, people=True)
        access.check(request, session=True)
        _check_csrf(request)
    except ServiceError as exc:
        return _page_error(request, context, exc, wants_json)
    status = 200
    try:
        prediction_id, given, verdict = feedback.parse_form(request.POST, _label_names())
        row = feedback.record(prediction_id, given, verdict)
    except ServiceError as exc:
        if wants_json:
            return error_response(exc, request)
        _rejected(request, exc.code)
        context["feedback_error"] = exc.message
        status = exc.status
    else:
        if wants_json:
            return JsonResponse(_recorded_json(row))
    answered = request.POST.get("prediction_id", "")
    context.update(
        answered=int(answered) if answered.isdigit() else None,
        cards=cards.from_shown(request.POST.getlist("shown"), settings.CLASSIFIER_MAX_IMAGES),
        class_names=_class_names(),
    )
    return render(request, "classifier/index.html", context, status=status)


def _page_error(request: HttpRequest, context: dict, error: ServiceError, wants_json: bool):
    """A refused request of the page: the API's JSON for its script, else the page again
    with the message."""
    if wants_json:
        return error_response(error, request)
    _rejected(request, error.code)
    context["error"] = error.message
    return render(request, "classifier/index.html", context, status=error.status)


def _label_names() -> list[str]:
    return [label.name for label in services.labels()]


def _page_context(request: HttpRequest) -> dict:
    status = runtime.model_status()
    staff = request.user.is_authenticated and request.user.is_staff
    context = {
        # With API keys set, the page asks for one (its script sends it in the header),
        # unless a staff user is logged in; without JavaScript only staff can use it.
        "key_required": bool(settings.CLASSIFIER_API_KEYS) and not staff,
        "login_url": f"/{settings.ADMIN_URL}login/?next=/" if settings.ADMIN_ENABLED else "",
        "max_image_bytes": settings.CLASSIFIER_MAX_IMAGE_BYTES,
        "max_images": settings.CLASSIFIER_MAX_IMAGES,
        "max_request_bytes": settings.CLASSIFIER_MAX_REQUEST_BYTES,
        "accept": ",".join(ACCEPTED_TYPES),
        "random_weights": not status.info.meaningful
        if status.info
        else settings.CLASSIFIER_WEIGHTS == "random",
        "warning": RANDOM_WEIGHTS_WARNING,
        "predict_url": request.build_absolute_uri("/predict"),
        "model_state": status.state,
    }
    if settings.CLASSIFIER_MODEL:
        try:
            context["own_classes"] = _label_names()
            context["model_name"] = status.info.name if status.info else "This model"
        except ServiceError:  # an unreadable model: the page says the model is not ready
            pass
    return context


def _class_names() -> list[str]:
    """The classes the feedback form offers, as people read them (ImageNet's two cranes
    and two maillots are one entry each)."""
    return list(dict.fromkeys(label.name.replace("_", " ") for label in services.labels()))


@csrf_exempt  # API keys in a header only, as /predict
@allow_methods("POST", message="POST the feedback as JSON.")
def prediction_feedback(request: HttpRequest, prediction_id: int) -> JsonResponse:
    """Whether an answer was right, from whoever got it (its `feedback_token`): 200 with
    what was recorded; 403 for another token, 404 for an unknown id, 400 for a class the
    model does not have. The last word counts. Keys and rate limits as /predict."""
    try:
        try:
            access.check(request, session=False)
        except ServiceError:
            discard_body(request)
            raise
        body = reading.read_json(request, max_values=20)
        given, verdict = feedback.parse(body, _label_names())
        row = feedback.record(prediction_id, given, verdict)
    except ServiceError as exc:
        return error_response(exc, request)
    return JsonResponse(_recorded_json(row))


def _recorded_json(row: Prediction) -> dict:
    return {
        "prediction_id": row.pk,
        "predicted": row.top_label,
        "feedback": row.feedback,
        "label": row.corrected_label or None,
        "recorded_at": row.feedback_at.isoformat(),
    }


@csrf_exempt
@allow_methods("GET", "HEAD")
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Touches neither the database nor the model."""
    return JsonResponse({"status": "ok"})


@csrf_exempt
@allow_methods("GET", "HEAD")
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 once the model is loaded and warmed up, until the server drains."""
    status = runtime.model_status()
    if status.serving:
        return JsonResponse({"status": "ready", "model": status.info.as_dict()})
    body = {"status": "draining" if status.draining else status.state}
    if status.error:
        body["error"] = status.error
    response = JsonResponse(body, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


@csrf_exempt
@allow_methods("GET", "HEAD")
def model_metadata(request: HttpRequest) -> JsonResponse:
    """What the model is and what the API accepts (cf. TensorFlow Serving's metadata)."""
    status = runtime.model_status()
    body = {
        "ready": status.ready,
        "model": status.info.as_dict() if status.ready else None,
        "input": {
            "width": INPUT_SIZE,
            "height": INPUT_SIZE,
            "channels": 3,
            "formats": list(ALLOWED_FORMATS),
        },
        "labels": _labels_summary(),
        "limits": {
            "max_images": settings.CLASSIFIER_MAX_IMAGES,
            "max_image_bytes": settings.CLASSIFIER_MAX_IMAGE_BYTES,
            "max_pixels": settings.CLASSIFIER_MAX_PIXELS,
            "decode_memory_bytes": settings.CLASSIFIER_DECODE_MEMORY_MB * 2**20,
            "max_request_bytes": settings.CLASSIFIER_MAX_REQUEST_BYTES,
            "default_top_k": settings.CLASSIFIER_DEFAULT_TOP_K,
            "max_top_k": settings.CLASSIFIER_MAX_TOP_K,
        },
        "batching": runtime.batching_status(),
    }
    return JsonResponse(body, status=200 if body["ready"] else 503)


def _labels_summary() -> dict:
    """How many classes and their names, in output order (what feedback may name)."""
    labels = services.labels()
    return {"count": len(labels), "names": [label.name for label in labels]}


def bad_request(request: HttpRequest, exception=None):
    # Django answers a bad Host header (or another SuspiciousOperation) here, before any
    # view: the API still gets JSON.
    if request.path.startswith(API_PREFIXES):
        return error_response(BadRequest("Bad request (check the Host header)."), request)
    return defaults.bad_request(request, exception)


def not_found(request: HttpRequest, exception=None):
    if request.path.startswith(API_PREFIXES):
        return error_response(NotFound(f"No API endpoint at {request.path}."), request)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest):
    if request.path.startswith(API_PREFIXES):
        return error_response(ServiceError("Unexpected server error; it was logged."), request)
    return defaults.server_error(request)


def error_response(error: ServiceError, request: HttpRequest) -> JsonResponse:
    """The JSON answer to any error: its status, `{"success": false, "error": {code,
    message}}` (under /v2, the protocol's `{"error": message}`), and Retry-After on a 429
    or 503. Counted and logged by its code."""
    _rejected(request, error.code)
    if request.path in PROTOCOL_PREFIXES or request.path.startswith(
        tuple(prefix + "/" for prefix in PROTOCOL_PREFIXES)
    ):
        body = {"error": error.message}
    else:
        body = {"success": False, "error": {"code": error.code, "message": error.message}}
    response = JsonResponse(body, status=error.status)
    if error.status in (429, 503):
        response["Retry-After"] = str(error.retry_after)
    if error.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="classifier"'
    if isinstance(error, MethodNotAllowed):
        response["Allow"] = ", ".join(error.allowed)
    return response


def _wants_json(request: HttpRequest) -> bool:
    """The page's script, which asks the page's endpoints for the API's JSON."""
    return request.headers.get("Accept", "").startswith("application/json")


def _wants_liveness(request: HttpRequest) -> bool:
    """An API client (its Accept names no HTML, e.g. `*/*` or application/json), not a
    browser (text/html) or a client that sends no Accept."""
    accept = request.headers.get("Accept", "")
    return bool(accept) and "text/html" not in accept


def _check_csrf(request: HttpRequest) -> None:
    """Django's CSRF check of the page's form (the view is exempt from the middleware's,
    which would read the whole body before the size and access checks)."""
    if CsrfViewMiddleware(lambda _request: None).process_view(request, None, (), {}):
        raise Forbidden(
            "The form has expired or came from another site: reload the page and send it again."
        )


def _log(request: HttpRequest, **fields) -> None:
    """Add to the request's log line (classifier.middleware)."""
    log_extra = getattr(request, "log_extra", None)
    if log_extra is not None:
        log_extra.update(fields)


def _rejected(request: HttpRequest, code: str) -> None:
    """Count a refused request by its error code, and put the code in its log line."""
    metrics.REJECTED.labels(code).inc()
    _log(request, error=code)


def classify_files_or_tensors(
    request: HttpRequest,
    uploads: list[services.Upload] | None,
    pixels,
    source: str,
    served_as: str,
    received: float,
) -> services.ClassifyResult:
    """What the model servers' protocols (/v1, /v2) send: image files (`uploads`), else
    the model's input as tensors (`pixels`), counted under the model they named."""
    if uploads is not None:
        return services.classify(
            uploads=uploads,
            source=source,
            client=access.client_network(request),
            served_as=served_as,
            received=received,
        )
    return services.classify_pixels(
        pixels=pixels, source=source, served_as=served_as, received=received
    )


def log_result(request: HttpRequest, result: services.ClassifyResult) -> None:
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


def discard_body(request: HttpRequest) -> None:
    """Read and drop an unparsed body, so that the client, still sending it, gets our
    answer rather than a reset connection. Reading is cheap; parsing is what we skip."""
    try:
        length = reading.content_length(request)
    except ServiceError:
        return
    if 0 < length <= settings.CLASSIFIER_MAX_REQUEST_BYTES:
        try:
            while request.read(DISCARD_CHUNK_BYTES):
                pass
        except OSError:  # the client stalled or left: nothing more to drop
            pass
