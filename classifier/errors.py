"""What a request can fail with, as a client sees it: every error carries its HTTP status,
a machine-readable code and one message, so the API and the page answer it the same way
(views.error_response) and no layer guesses. No Django imports: the image decoder, the
batcher and the runtime raise these."""

from __future__ import annotations

# Seconds a client is asked to wait before retrying a 503 (the Retry-After header).
RETRY_AFTER_SECONDS = 5


class ServiceError(Exception):
    status = 500
    code = "internal_error"
    retry_after = RETRY_AFTER_SECONDS  # sent with a 503 only

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
    """The forward pass of this request's batch raised; other batches are unaffected."""

    status = 503
    code = "inference_failed"
    retry_after = 1

    def __init__(self, detail: str) -> None:
        super().__init__(f"{detail}; retry shortly.")


class Unauthorized(ServiceError):
    """No valid API key (and no staff session where one may stand for it): access.py."""

    status = 401
    code = "unauthorized"


class RateLimited(ServiceError):
    """Over CLASSIFIER_RATE_LIMIT for this client; `retry_after` is set per request."""

    status = 429
    code = "rate_limited"


class ImageError(ServiceError):
    """An upload that is not an image the service classifies (classifier.images)."""

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
    """Too many pixels are being decoded in this process right now: retry shortly."""

    status = 503
    code = "overloaded"
