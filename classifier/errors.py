"""What a request can fail with, as a client sees it: one class per error code, each bound
to its HTTP status here and nowhere else, with one message, so every protocol and the page
answer it the same way (views.error_response) and no layer guesses. No Django imports:
the body reader, the image decoder, the batcher and the runtime raise these."""

from __future__ import annotations

# Seconds a client is asked to wait before retrying a 503 (the Retry-After header).
RETRY_AFTER_SECONDS = 5


class ServiceError(Exception):
    status = 500
    code = "internal_error"
    retry_after = RETRY_AFTER_SECONDS  # sent with a 429 or 503 only

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- 400: the request cannot be used as sent ----------------------------------------------
class BadRequest(ServiceError):
    status = 400
    code = "bad_request"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class InvalidParameter(BadRequest):
    code = "invalid_parameter"


class MissingImage(BadRequest):
    code = "missing_image"


class InvalidBase64(BadRequest):
    code = "invalid_base64"


# The Open Inference Protocol's request structure (oip.py).
class InvalidRequest(BadRequest):
    code = "invalid_request"


class InvalidInput(BadRequest):
    code = "invalid_input"


class InvalidOutput(BadRequest):
    code = "invalid_output"


class InvalidDatatype(BadRequest):
    code = "invalid_datatype"


class InvalidShape(BadRequest):
    code = "invalid_shape"


class InvalidTensor(BadRequest):
    code = "invalid_tensor"


# --- access --------------------------------------------------------------------------------
class Unauthorized(ServiceError):
    """No valid API key (and no staff session where one may stand for it): access.py."""

    status = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    """The page's form without a valid CSRF token (a cross-site or stale form)."""

    status = 403
    code = "forbidden"


class InvalidToken(Forbidden):
    """Feedback with a token that is not the prediction's (classifier/feedback.py)."""

    code = "invalid_token"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class UnknownModel(NotFound):
    code = "unknown_model"


class UnknownVersion(NotFound):
    code = "unknown_version"


class MethodNotAllowed(ServiceError):
    """`allowed`: the methods the URL takes (the Allow header)."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allowed = allowed


class RequestTimeout(ServiceError):
    """The body did not arrive in time (stalled, or slower than its deadline allows)."""

    status = 408
    code = "request_timeout"


class LengthRequired(ServiceError):
    status = 411
    code = "length_required"


# --- 413 and 415: over a limit, or a kind we do not take ------------------------------------
class RequestTooLarge(ServiceError):
    status = 413
    code = "request_too_large"


class TooManyImages(ServiceError):
    status = 413
    code = "too_many_images"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class RateLimited(ServiceError):
    """Over CLASSIFIER_RATE_LIMIT for this client; `retry_after` is set per request."""

    status = 429
    code = "rate_limited"


# --- images (classifier.images) --------------------------------------------------------------
class ImageError(ServiceError):
    """An upload that is not an image the service classifies."""

    status = 400
    code = "invalid_image"


class InvalidImage(ImageError):
    status = 400
    code = "invalid_image"


class UnsupportedFormat(ImageError):
    status = 415
    code = "unsupported_format"


class ImageTooLarge(ImageError):
    status = 413
    code = "image_too_large"


class DecoderBusy(ImageError):
    """The decode memory budget (or this client's share of it) is in use: retry shortly."""

    status = 503
    code = "overloaded"


# --- 503: not now ------------------------------------------------------------------------------
class ModelNotReady(ServiceError):
    """The engine is still loading (or failed to load)."""

    status = 503
    code = "model_not_ready"

    def __init__(self, detail: str) -> None:
        super().__init__(f"The model is not ready: {detail}.")


class Overloaded(ServiceError):
    """The request was not run: queue full, waited too long, or shutting down."""

    status = 503
    code = "overloaded"
    retry_after = 1

    def __init__(self, detail: str) -> None:
        super().__init__(f"The server is busy ({detail}); retry shortly.")


class BatchFailed(ServiceError):
    """The forward pass of this request's batch raised, or gave probabilities that are not
    finite numbers; other batches are unaffected."""

    status = 503
    code = "inference_failed"
    retry_after = 1

    def __init__(self, detail: str) -> None:
        super().__init__(f"{detail}; retry shortly.")
