"""The classic JSON API's wire format: a POST /predict's images and options in (multipart
`image` fields, or base64 in a JSON body, read by `reading` within its bounds) and results
out (the classic Keras REST contract, then the extras)."""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest

from . import feedback, reading
from .errors import InvalidBase64, MissingImage, UnsupportedMediaType
from .services import Classification, ClassifyResult, Upload

NOT_STORED_WARNING = (
    "The prediction could not be recorded in the history (database unavailable); "
    "the results are still valid."
)


@dataclass(frozen=True)
class PredictRequest:
    uploads: list[Upload]
    k: int  # top-k
    explain: bool  # add each image's activation map to its result


def parse_predict_request(request: HttpRequest) -> PredictRequest:
    """The uploads and options of a POST /predict (classifier.errors on any bound)."""
    reading.check_length(request)
    content_type = request.content_type or ""
    if content_type == "application/json":
        return _parse_json(request)
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        uploads = reading.read_images(request)
        k = reading.top_k(reading.form_value(request, "top_k"))
        explain = reading.flag(reading.form_value(request, "explain"), "explain")
        return PredictRequest(uploads, k, explain)
    raise UnsupportedMediaType(
        "Send multipart/form-data with an `image` field, or application/json "
        'with {"images": ["<base64>", ...]}.'
    )


def _parse_json(request: HttpRequest) -> PredictRequest:
    body = reading.read_json(request, max_values=reading.PREDICT_JSON_VALUES)
    images = body.get("images") if isinstance(body, dict) else None
    if not isinstance(images, list) or not images:
        raise MissingImage('Send {"images": ["<base64 image>", ...]} in the JSON body.')
    reading.check_count(len(images))
    k = reading.top_k(body.get("top_k", request.GET.get("top_k")))
    explain = reading.flag(body.get("explain", request.GET.get("explain")), "explain")
    uploads = []
    for position, encoded in enumerate(images, start=1):
        if not isinstance(encoded, str):
            raise InvalidBase64(f"Image {position} must be a base64 string.")
        uploads.append(Upload(data=reading.decode_base64(encoded, position)))
    return PredictRequest(uploads, k, explain)


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
        # For POST /predictions/{prediction_id}/feedback, whoever got this answer only.
        "feedback_token": (
            feedback.token(item.prediction_id) if item.prediction_id is not None else None
        ),
        "predictions": [s.as_dict() for s in item.predictions],
    }
    if explain and item.explanation is not None:
        # Where the model looked for the top-1 class (classifier/explain.py).
        body["explanation"] = item.explanation
    return body
