"""The JSON API's wire format: request bodies in (multipart `image` fields or base64 in a
JSON body, every limit checked before an image is decoded) and results out (the classic
Keras REST contract, then the extras). Errors are ApiError, a ServiceError: views answer
them like any other."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFilesSent
from django.http import HttpRequest, UnreadablePostError
from django.http.multipartparser import MultiPartParserError
from django.template.defaultfilters import filesizeformat

from .errors import ServiceError
from .services import Classification, ClassifyResult, Upload

NOT_STORED_WARNING = (
    "The prediction could not be recorded in the history (database unavailable); "
    "the results are still valid."
)


class ApiError(ServiceError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def content_length(request: HttpRequest) -> int:
    """The request's declared body size; ApiError 400 if it is not a number."""
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ApiError(400, "bad_request", "Invalid Content-Length header.") from None


@dataclass(frozen=True)
class PredictRequest:
    uploads: list[Upload]
    k: int  # top-k
    explain: bool  # add each image's activation map to its result


def parse_predict_request(request: HttpRequest) -> PredictRequest:
    """The uploads and options of a POST /predict, or ApiError."""
    check_body_size(request)
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


def check_body_size(request: HttpRequest) -> None:
    """ApiError unless the body has a Content-Length within CLASSIFIER_MAX_REQUEST_BYTES."""
    length = content_length(request)
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


def read_body(request: HttpRequest) -> bytes:
    """The whole body (after `check_body_size`), or ApiError."""
    try:
        return request.body
    except RequestDataTooBig as exc:
        raise ApiError(413, "request_too_large", str(exc)) from None
    except UnreadablePostError:
        raise body_stalled() from None


def parse_page_uploads(request: HttpRequest) -> list[Upload]:
    """The images of the page's form: one or more `image` fields, in order, within the
    limits of /predict (CLASSIFIER_MAX_REQUEST_BYTES, CLASSIFIER_MAX_IMAGES,
    CLASSIFIER_MAX_IMAGE_BYTES each), with its errors in words for people."""
    length = content_length(request)
    if length > settings.CLASSIFIER_MAX_REQUEST_BYTES:  # before the body is read
        raise ApiError(
            413,
            "request_too_large",
            f"These images come to {filesizeformat(length)}; the limit is "
            f"{filesizeformat(settings.CLASSIFIER_MAX_REQUEST_BYTES)} at once.",
        )
    try:
        files = request.FILES.getlist("image")
    except TooManyFilesSent:
        raise ApiError(
            413,
            "too_many_images",
            f"Too many images; the limit is {settings.CLASSIFIER_MAX_IMAGES} at once.",
        ) from None
    except UnreadablePostError:
        raise body_stalled() from None
    except (MultiPartParserError, SuspiciousOperation):
        raise ApiError(400, "bad_request", "The form could not be read; send it again.") from None
    if not files:
        raise ApiError(400, "missing_image", "Choose an image first.")
    check_count(len(files))
    for upload in files:
        if upload.size > settings.CLASSIFIER_MAX_IMAGE_BYTES:
            name = upload.name if len(files) > 1 and upload.name else "This image"
            raise ApiError(
                413,
                "image_too_large",
                f"{name} is {filesizeformat(upload.size)}; the limit is "
                f"{filesizeformat(settings.CLASSIFIER_MAX_IMAGE_BYTES)}.",
            )
    return [Upload(data=_upload_bytes(upload), filename=upload.name or "") for upload in files]


def body_stalled() -> ApiError:
    # The client stopped sending its body for GUNICORN_CLIENT_TIMEOUT seconds.
    return ApiError(408, "request_timeout", "The request body stopped arriving; send it again.")


def result_json(result: ClassifyResult, parse_ms: float, explain: bool = False) -> dict:
    body = {
        "success": True,
        # The classic Keras REST API contract: the first image's top-k.
        "predictions": [s.as_dict() for s in result.items[0].predictions],
        # Whether the history recorded this answer (false: database down or too slow).
        "stored": result.stored,
        "results": [_result_item(item, explain) for item in result.items],
        "model": result.model.as_dict(),
        "batch_size": result.batch_size,
        "timings_ms": {"parse": round(parse_ms, 2), **result.timings},
    }
    if not result.stored:
        body["warning"] = NOT_STORED_WARNING
    return body


def _result_item(item: Classification, explain: bool) -> dict:
    body = {
        "filename": item.filename,
        "sha256": item.image.sha256,
        "width": item.image.width,
        "height": item.image.height,
        "format": item.image.format,
        "prediction_id": item.prediction_id,
        "predictions": [s.as_dict() for s in item.predictions],
    }
    if explain and item.explanation is not None:
        # Where the model looked for the top-1 class (classifier/explain.py).
        body["explanation"] = item.explanation
    return body


def _parse_form(request: HttpRequest) -> PredictRequest:
    try:
        files = request.FILES.getlist("image")
        k = _top_k(request.POST.get("top_k", request.GET.get("top_k")))
        explain = flag(request.POST.get("explain", request.GET.get("explain")), "explain")
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
    check_count(len(files))
    uploads = []
    for upload in files:
        if upload.size > settings.CLASSIFIER_MAX_IMAGE_BYTES:
            raise ApiError(
                413,
                "image_too_large",
                f"{upload.name or 'The image'} is {upload.size} bytes; the limit is "
                f"{settings.CLASSIFIER_MAX_IMAGE_BYTES} bytes.",
            )
        uploads.append(Upload(data=_upload_bytes(upload), filename=upload.name or ""))
    return PredictRequest(uploads, k, explain)


def _upload_bytes(upload) -> bytes:
    # An in-memory upload's BytesIO hands over its buffer without a copy; read() would
    # copy it (3 MB per 12 MP photo, times every request in flight).
    getvalue = getattr(upload.file, "getvalue", None)
    return getvalue() if getvalue else upload.read()


def _parse_json(request: HttpRequest) -> PredictRequest:
    body = load_json(read_body(request))
    images = body.get("images") if isinstance(body, dict) else None
    if not isinstance(images, list) or not images:
        raise ApiError(
            400, "missing_image", 'Send {"images": ["<base64 image>", ...]} in the JSON body.'
        )
    check_count(len(images))
    k = _top_k(body.get("top_k", request.GET.get("top_k")))
    explain = flag(body.get("explain", request.GET.get("explain")), "explain")
    uploads = []
    for position, encoded in enumerate(images, start=1):
        if not isinstance(encoded, str):
            raise ApiError(400, "invalid_base64", f"Image {position} must be a base64 string.")
        uploads.append(Upload(data=decode_base64(encoded, position)))
    return PredictRequest(uploads, k, explain)


def load_json(data: bytes):
    """The JSON value in `data`, or ApiError 400 (also for nesting too deep to parse)."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "The body's JSON is nested too deeply.") from None


def decode_base64(encoded: str, position: int) -> bytes:
    """The bytes of image `position` (from 1) sent as base64 or as a data: URL."""
    if encoded.startswith("data:") and "," in encoded:  # data URL from a browser
        encoded = encoded.split(",", 1)[1]
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", f"Image {position} is not valid base64.") from None


def check_count(count: int) -> None:
    if count > settings.CLASSIFIER_MAX_IMAGES:
        raise ApiError(
            413,
            "too_many_images",
            f"{count} images sent; the limit is {settings.CLASSIFIER_MAX_IMAGES} per request.",
        )


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def flag(raw, name: str) -> bool:
    """A yes/no option as a form field, query parameter or JSON value; absent: no."""
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    text = str(raw).strip().lower() if isinstance(raw, str | int) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ApiError(400, "invalid_parameter", f"{name} must be 1 or 0 (true or false).")


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
